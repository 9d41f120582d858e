//! Incremental resync: copy the regions the change bitmaps mark from the production site to
//! the peer, then report the set in sync.
//!
//! Host writes keep flowing while a resync runs (the set is `Mirroring`): they are sent on
//! the same ordered link. Each region is read under the volume's exclusive gate, so every
//! host write admitted before the read has finished its local I/O (the read sees it) and was
//! queued to the peer before the region's data; every later write is queued after it. The
//! peer applies in order, so older resync data never overwrites a newer write.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::sync::oneshot;

use super::set::{Flow, Item, Progress, Role, VolumeSet};
use super::Events;

/// Regions in flight at once (keeps the link busy without unbounded memory).
const WINDOW: usize = 16;
/// The window while an `expedite` shutdown waits for the resync (quorum recovery).
const EXPEDITE_WINDOW: usize = 4 * WINDOW;

pub async fn run(set: Arc<VolumeSet>, events: Events) {
    let total = set.dirty_bytes();
    set.update(|s| s.resync = Some(Progress { total_bytes: total, done_bytes: 0, started: Some(Instant::now()) }));
    tracing::info!(set = set.name(), bytes = total, "resync started");
    match copy(&set).await {
        Ok(()) => {
            set.update(|s| s.resync = None);
            tracing::info!(set = set.name(), bytes = total, "resync complete");
            events.send(set.name(), "resync_complete", &format!("{total} bytes"));
        }
        Err(e) => {
            set.update(|s| {
                s.resync = None;
                s.last_error = Some(e.clone());
            });
            tracing::warn!(set = set.name(), "resync stopped: {e}");
            events.send(set.name(), "resync_failed", &e);
        }
    }
}

type Pending = (Arc<gateway_replication::bitmap::ChangeBitmap>, u64, u64, oneshot::Receiver<Result<(), String>>);

async fn settle(set: &VolumeSet, p: Pending) -> Result<(), String> {
    let (bm, region, len, rx) = p;
    rx.await.map_err(|_| "link closed".to_string())??;
    bm.clear(region);
    set.update(|s| {
        if let Some(p) = s.resync.as_mut() {
            p.done_bytes += len;
        }
    });
    Ok(())
}

async fn copy(set: &Arc<VolumeSet>) -> Result<(), String> {
    // Bits can be set again while we copy (a link blip converts writes to tracking), so go
    // round until a pass finds nothing left.
    for _pass in 0..100 {
        let mut window: VecDeque<Pending> = VecDeque::new();
        let mut any = false;
        for volume in &set.volumes {
            let Some(bm) = set.bitmaps.get(volume.name()).cloned() else { continue };
            for region in bm.dirty_regions() {
                any = true;
                let st = set.state();
                if st.role != Role::Primary || st.flow != Flow::Mirroring {
                    return Err(format!("interrupted: set is {:?} / {:?}", st.role, st.flow));
                }
                let (offset, len) = bm.region_extent(region);
                let (tx, rx) = oneshot::channel();
                let data = volume
                    .exclusive(async {
                        let buf = BytesMut::zeroed(len as usize);
                        let data = volume
                            .read(buf, offset)
                            .await
                            .map_err(|e| format!("reading {} at {offset}: {e}", volume.name()))?;
                        set.enqueue(Item::Resync {
                            volume: volume.name().to_owned(),
                            offset,
                            data: data.freeze(),
                            done: tx,
                        });
                        Ok::<(), String>(())
                    })
                    .await;
                data?;
                window.push_back((bm.clone(), region, len, rx));
                let limit =
                    if set.expedite.load(std::sync::atomic::Ordering::Relaxed) { EXPEDITE_WINDOW } else { WINDOW };
                if window.len() >= limit {
                    if let Some(p) = window.pop_front() {
                        settle(set, p).await?;
                    }
                }
            }
        }
        while let Some(p) = window.pop_front() {
            settle(set, p).await?;
        }
        for bm in set.bitmaps.values() {
            let bm = bm.clone();
            tokio::task::spawn_blocking(move || bm.persist())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        if !any || set.dirty_bytes() == 0 {
            return Ok(());
        }
    }
    Err("regions kept getting dirty; giving up after 100 passes".into())
}
