//! The copies of the controllers' shutdown keys a server keeps (seed 000, step 420: each
//! controller's key is saved in the controller and in each operational server).
//!
//! Every controller sends its key to the servers it is connected to each time it saves it;
//! the server keeps the latest per controller in `<data_dir>/<set>.keys/<controller>.key`, in
//! the controller's own record format (fsync'd, checksummed: [`super::record`]). The copies
//! are a record for the operator (server status lists them); a controller never takes its key
//! back from a server, because a copy may be older than a yes vote the controller gave since.

use std::collections::BTreeMap;
use std::path::PathBuf;

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::record::{Loaded, RecordFile};

pub struct KeyCopies {
    dir: PathBuf,
    latest: Mutex<BTreeMap<String, Value>>,
}

/// A controller id that is safe as a file name.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl KeyCopies {
    /// Open the directory, reading the copies already there (unreadable ones are skipped).
    pub fn open(dir: PathBuf) -> KeyCopies {
        let mut latest = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let path = e.path();
                let Some(id) = path.file_stem().and_then(|s| s.to_str()).filter(|s| valid_id(s)) else { continue };
                if path.extension().is_some_and(|x| x == "key") {
                    if let Loaded::Found(k) = RecordFile::new(path.clone()).load() {
                        latest.insert(id.to_owned(), k);
                    }
                }
            }
        }
        KeyCopies { dir, latest: Mutex::new(latest) }
    }

    /// Keep `key` as `controller`'s latest, durably (blocking). Returns whether it was new.
    pub fn save(&self, controller: &str, key: &Value) -> Result<bool, String> {
        if !valid_id(controller) {
            return Err(format!("controller id {controller:?} is not usable as a file name"));
        }
        if self.latest.lock().get(controller) == Some(key) {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        RecordFile::new(self.dir.join(format!("{controller}.key"))).save(key).map_err(|e| e.to_string())?;
        self.latest.lock().insert(controller.to_owned(), key.clone());
        Ok(true)
    }

    /// For status: per controller, the key's generation, last shutdown mode and outcome.
    pub fn summary(&self) -> Value {
        self.latest
            .lock()
            .iter()
            .map(|(id, k)| (id.clone(), json!({"gen": k["gen"], "mode": k["mode"], "outcome": k["outcome"]})))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_survive_a_restart_and_bad_ids_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let copies = KeyCopies::open(dir.path().join("vs1.keys"));
        let k = json!({"gen": 4, "mode": "normal", "outcome": null});
        assert_eq!(copies.save("c1", &k), Ok(true));
        assert_eq!(copies.save("c1", &k), Ok(false), "an unchanged key is not written again");
        assert!(copies.save("../evil", &k).unwrap_err().contains("file name"));
        let again = KeyCopies::open(dir.path().join("vs1.keys"));
        assert_eq!(again.summary(), json!({"c1": {"gen": 4, "mode": "normal", "outcome": null}}));
    }
}
