//! The built-in **peer** backup component: attached to every volume of a replicated set, it
//! routes each admitted update to the set (mirror, track or hold; see `set.rs`) and makes the
//! host's acknowledgement wait for the verdict.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use gateway_replication::frame::{UpdateOp, UPDATE_FLAG_FUA, UPDATE_FLAG_MAY_TRIM};
use tokio::sync::oneshot;

use super::set::{Flow, Item, VolumeSet};
use crate::volume::{Completion, ObserverError, Update, UpdateKind, UpdateObserver};

/// Created before its volume (which needs it at construction), bound to the set after.
#[derive(Default)]
pub struct PeerObserver {
    set: OnceLock<Arc<VolumeSet>>,
}

impl PeerObserver {
    pub fn bind(&self, set: Arc<VolumeSet>) {
        let _ = self.set.set(set);
    }
}

fn unbound() -> Completion {
    Box::pin(async {
        Err(ObserverError { observer: "peer component".into(), message: "volume set not started".into() })
    })
}

fn verdict(set: &str, rx: oneshot::Receiver<Result<(), String>>) -> Completion {
    let observer = format!("peer component of volume set {set}");
    Box::pin(async move {
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(ObserverError { observer, message }),
            Err(_) => Err(ObserverError { observer, message: "replication engine stopped".into() }),
        }
    })
}

impl UpdateObserver for PeerObserver {
    fn on_update(&self, volume: &str, u: &Update) -> Completion {
        let Some(set) = self.set.get() else { return unbound() };
        let mut flags = if u.fua { UPDATE_FLAG_FUA } else { 0 };
        let (op, length, data) = match &u.kind {
            UpdateKind::Write(d) => (UpdateOp::Write, d.len() as u64, d.clone()),
            UpdateKind::Trim { length } => (UpdateOp::Trim, *length, Bytes::new()),
            UpdateKind::Zero { length, may_trim } => {
                if *may_trim {
                    flags |= UPDATE_FLAG_MAY_TRIM;
                }
                (UpdateOp::Zero, *length, Bytes::new())
            }
        };
        let (seq, offset, vol) = (u.seq, u.offset, volume.to_owned());
        let rx = set.route(
            move |done| Item::Update { volume: vol, seq, offset, op, flags, length, data, done },
            volume,
            u.offset,
            length,
        );
        verdict(set.name(), rx)
    }

    fn on_flush(&self, _volume: &str, _upto: u64) -> Completion {
        let Some(set) = self.set.get() else { return unbound() };
        let (tx, rx) = oneshot::channel();
        let st = set.state();
        if st.sends() && st.flow == Flow::Mirroring {
            // Behind every update queued before it: resolves once the peer made them durable.
            set.enqueue(Item::Flush { done: tx });
        } else {
            // Tracked regions are already durable in the bitmap; nothing is owed to the peer.
            let _ = tx.send(Ok(()));
        }
        verdict(set.name(), rx)
    }
}
