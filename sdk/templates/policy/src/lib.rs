//! A recovery policy that takes a volume set offline after `max_errors` (default 3)
//! replication errors on it, logging each one. Config: `{ "max_errors": <n> }`.
use std::collections::HashMap;

use gateway_sdk::serde_json::Value;
use gateway_sdk::{Action, Event, Host, RecoveryPolicy};

pub struct OfflineAfterErrors {
    max_errors: u64,
    errors: HashMap<String, u64>,
}

impl RecoveryPolicy for OfflineAfterErrors {
    fn open(_host: &Host, config: &Value) -> Result<Self, String> {
        let max_errors = match config.get("max_errors") {
            None => 3,
            Some(v) => v.as_u64().filter(|n| *n > 0).ok_or("`max_errors` must be a positive number")?,
        };
        Ok(OfflineAfterErrors { max_errors, errors: HashMap::new() })
    }

    /// A pure state machine: no I/O, no clock; everything it wants done is an action.
    fn on_event(&mut self, event: &Event) -> Vec<Action> {
        let Event::ReplicationError { volume_set, code, message } = event else {
            return Vec::new(); // Other events, including ones newer than this SDK, are ignored.
        };
        let n = self.errors.entry(volume_set.clone()).or_insert(0);
        *n += 1;
        let text = format!("replication error {n}/{} on {volume_set}: {message} ({code})", self.max_errors);
        let mut actions = vec![Action::Log { level: "warn".into(), message: text }];
        if *n == self.max_errors {
            let reason = format!("{n} replication errors");
            actions.push(Action::GoOffline { target: volume_set.clone(), reason });
        }
        actions
    }
}

gateway_sdk::declare_plugin!(recovery_policy, OfflineAfterErrors, "offline-after-errors", env!("CARGO_PKG_VERSION"));
