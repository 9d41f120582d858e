//! Backup component plugins attached to a volume's write path: each admitted update is handed
//! to the component, and the host's acknowledgement waits for the component's completion.

use gateway_sdk::component::{ImportedComponent, Update as SdkUpdate, UpdateKind as SdkKind};

use crate::volume::{Completion, ObserverError, Update, UpdateKind, UpdateObserver};

pub struct ComponentObserver {
    component: ImportedComponent,
}

impl ComponentObserver {
    pub fn new(component: ImportedComponent) -> Self {
        Self { component }
    }

    fn completion(&self, rx: tokio::sync::oneshot::Receiver<Result<(), String>>) -> Completion {
        let observer = self.component.name().to_owned();
        Box::pin(async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(ObserverError { observer, message }),
                Err(_) => Err(ObserverError { observer, message: "completion was dropped".into() }),
            }
        })
    }
}

impl UpdateObserver for ComponentObserver {
    fn on_update(&self, volume: &str, u: &Update) -> Completion {
        let kind = match &u.kind {
            UpdateKind::Write(data) => SdkKind::Write(data),
            UpdateKind::Trim { length } => SdkKind::Trim { length: *length },
            UpdateKind::Zero { length, may_trim } => SdkKind::Zero { length: *length, may_trim: *may_trim },
        };
        let update = SdkUpdate { volume, seq: u.seq, offset: u.offset, kind, fua: u.fua };
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.component.submit(
            &update,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        self.completion(rx)
    }

    fn on_flush(&self, volume: &str, upto: u64) -> Completion {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.component.flush(
            volume,
            upto,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        self.completion(rx)
    }
}
