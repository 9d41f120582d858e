//! A durable JSON record in a file, for what quorum recovery must never misread: a
//! controller's shutdown key (seed 000 steps 420/530; a controller without a key never elects
//! yes), the servers' copies of those keys, and a server's position ledger. One record per
//! file, written so that a crash, a torn write or a flipped bit is always detected and read
//! back as "no record", never as a record.
//!
//! Record layout (little endian): magic `GWQK`, format version (u32), payload length (u64),
//! CRC32C of the payload (u32), then the payload (the key as JSON). A save writes a temporary
//! file, fsyncs it, renames it over the old one and fsyncs the directory, so the file holds
//! either the old record or the new one; the checksum catches whatever the storage does after.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

const MAGIC: &[u8; 4] = b"GWQK";
const VERSION: u32 = 1;
const HEADER: usize = 4 + 4 + 8 + 4;
/// Keys are small (a few KiB); anything claiming more is corrupt.
const MAX_PAYLOAD: u64 = 16 << 20;

/// What loading found.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    Found(Value),
    Missing,
    /// The file exists but does not hold a valid record; why.
    Corrupt(String),
}

impl Loaded {
    pub fn key(&self) -> Option<&Value> {
        match self {
            Loaded::Found(v) => Some(v),
            _ => None,
        }
    }

    /// For status: `valid`, `missing`, or `corrupt: <why>`.
    pub fn describe(&self) -> String {
        match self {
            Loaded::Found(_) => "valid".into(),
            Loaded::Missing => "missing".into(),
            Loaded::Corrupt(why) => format!("corrupt: {why}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct StoreError {
    path: String,
    source: std::io::Error,
}

pub struct RecordFile {
    path: PathBuf,
}

impl RecordFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn load(&self) -> Loaded {
        match std::fs::read(&self.path) {
            Ok(bytes) => decode(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Loaded::Missing,
            Err(e) => Loaded::Corrupt(format!("cannot read: {e}")),
        }
    }

    /// Save `key` durably: when this returns Ok, a crash at any later moment loads it back.
    pub fn save(&self, key: &Value) -> Result<(), StoreError> {
        let err = |source| StoreError { path: self.path.display().to_string(), source };
        let bytes = encode(key);
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp).map_err(err)?;
            f.write_all(&bytes).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
    }
}

pub fn encode(key: &Value) -> Vec<u8> {
    let payload = key.to_string().into_bytes();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

pub fn decode(bytes: &[u8]) -> Loaded {
    let corrupt = |why: String| Loaded::Corrupt(why);
    if bytes.len() < HEADER {
        return corrupt(format!("{} bytes, shorter than the {HEADER}-byte header (torn write)", bytes.len()));
    }
    if &bytes[0..4] != MAGIC {
        return corrupt("bad magic: not a quorum record".into());
    }
    let word = |r: std::ops::Range<usize>| bytes[r].iter().rev().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let version = word(4..8);
    if version != u64::from(VERSION) {
        return corrupt(format!("record format {version}, this gateway reads format {VERSION}"));
    }
    let len = word(8..16);
    let crc = word(16..20) as u32;
    let body = &bytes[HEADER..];
    if len > MAX_PAYLOAD || len != body.len() as u64 {
        return corrupt(format!("length field says {len} bytes, the file holds {} (torn write)", body.len()));
    }
    if crc32c::crc32c(body) != crc {
        return corrupt("checksum mismatch".into());
    }
    match serde_json::from_slice(body) {
        Ok(v) => Loaded::Found(v),
        Err(e) => corrupt(format!("checksummed payload is not JSON: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn round_trip_and_missing() {
        let dir = tempfile::tempdir().unwrap();
        let store = RecordFile::new(dir.path().join("quorum.key"));
        assert_eq!(store.load(), Loaded::Missing);
        let key = json!({"gen": 7, "servers": {"A": {"position": 3}}});
        store.save(&key).unwrap();
        assert_eq!(store.load(), Loaded::Found(key.clone()));
        let newer = json!({"gen": 8});
        store.save(&newer).unwrap();
        assert_eq!(store.load().key(), Some(&newer));
        assert!(!dir.path().join("quorum.tmp").exists());
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = encode(&json!({"gen": 1, "claims": [1, 2, 3]}));
        for cut in 0..bytes.len() {
            assert!(matches!(decode(&bytes[..cut]), Loaded::Corrupt(_)), "truncated at {cut} read as valid");
        }
    }

    #[test]
    fn messages_say_what_is_wrong() {
        let mut bytes = encode(&json!({"gen": 1}));
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert_eq!(decode(&bytes), Loaded::Corrupt("checksum mismatch".into()));
        assert!(decode(b"XXXX0000000000000000").describe().contains("bad magic"));
        assert!(decode(b"GW").describe().contains("torn write"));
    }

    proptest! {
        #[test]
        fn any_single_bit_flip_is_detected(pos in 0usize..64, bit in 0u8..8) {
            let mut bytes = encode(&json!({"gen": 42, "hw": 9, "servers": {"A": {"high": 3}}}));
            let pos = pos % bytes.len();
            bytes[pos] ^= 1 << bit;
            prop_assert!(matches!(decode(&bytes), Loaded::Corrupt(_)));
        }
    }
}
