//! A quorum-managed server's **position** for one volume set, and the records the controllers'
//! decisions rely on (the host side of the vtc-quorum contract, see `plugins/vtc-quorum`).
//!
//! A position names a state of the set's content. Two servers at the same position hold the
//! same acknowledged writes; a server at a higher position may hold writes the other lacks.
//! Sync mirroring keeps both at one position, so it only moves when content can diverge:
//! * **tracking**: the first write acknowledged without the peer's ack (the link is down, the
//!   set is suspended) moves the position on, durably, before that write is acknowledged;
//!   later tracked writes share the new position until it is **sealed** again;
//! * **seal**: when the peer holds everything (mirroring, nothing left to resync), the primary
//!   seals its position and hands it to the peer, which **adopts** it; the next tracked write
//!   moves on from there;
//! * **promotion** (`GoOnline P@p`): an epoch record at `p + 1`, only if the position is exactly
//!   `p`; or the last promotion **resumed** after a crash or a forced stop (the epoch record is
//!   at or below `p + 1` and no graceful stop came since);
//! * **final report**: a graceful stop records its position; the server sends that final
//!   report first on every control connection until it is promoted again.
//!
//! [`Ledger`] is the pure state machine; [`LedgerFile`] keeps it durable (fsync'd,
//! checksummed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::record::{Loaded, RecordFile};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub position: u64,
    /// The position of the last epoch record (written at a promotion).
    pub epoch: Option<u64>,
    /// A graceful stop (with a final report) happened since that epoch record.
    pub graceful_since_epoch: bool,
    /// The last final report's position, until the next promotion.
    pub last_final: Option<u64>,
    /// Tracked writes at or below this position must move the position on first. Not
    /// persisted: after a restart everything counts as sealed (one extra step is harmless).
    #[serde(skip)]
    pub sealed: u64,
}

/// How a guarded promotion went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// A new epoch record at this position.
    Fresh(u64),
    /// The last promotion resumed (nothing written).
    Resumed,
}

impl Ledger {
    /// A write is about to be acknowledged without the peer: true if that moved the position.
    pub fn track(&mut self) -> bool {
        if self.position <= self.sealed {
            self.position += 1;
            true
        } else {
            false
        }
    }

    /// The peer holds everything: seal the position and return it (to hand to the peer).
    pub fn seal(&mut self) -> u64 {
        self.sealed = self.position;
        self.position
    }

    /// `GoOnline X@g` (`guard`), or an unguarded promotion (`None`, operator-forced).
    pub fn promote(&mut self, guard: Option<u64>) -> Result<Promotion, String> {
        let fresh = |l: &mut Ledger| {
            l.position += 1;
            l.epoch = Some(l.position);
            l.graceful_since_epoch = false;
            l.last_final = None;
            Promotion::Fresh(l.position)
        };
        let Some(g) = guard else { return Ok(fresh(self)) };
        if self.position == g {
            return Ok(fresh(self));
        }
        let resumable = self.position > g && self.epoch.is_some_and(|e| e <= g + 1) && !self.graceful_since_epoch;
        if resumable {
            self.last_final = None;
            return Ok(Promotion::Resumed);
        }
        Err(format!(
            "at position {}, not {g} (epoch record {}, graceful stop since: {})",
            self.position,
            self.epoch.map_or("none".into(), |e| e.to_string()),
            self.graceful_since_epoch
        ))
    }

    /// A graceful stop: returns the final report's position.
    pub fn final_stop(&mut self) -> u64 {
        self.graceful_since_epoch = true;
        self.last_final = Some(self.position);
        self.position
    }

    /// As the secondary, the primary's sealed position once everything up to it is here.
    pub fn adopt(&mut self, position: u64) -> bool {
        if position > self.position {
            self.position = position;
            true
        } else {
            false
        }
    }
}

/// The ledger of one volume set, kept in `<data_dir>/<set>.quorum.ledger` as a checksummed
/// [`RecordFile`].
pub struct LedgerFile {
    file: RecordFile,
    state: Mutex<Ledger>,
    /// The highest position known durable; writes that rely on a higher one wait for a save.
    durable: AtomicU64,
    /// Saves run one at a time (in blocking threads).
    saving: Mutex<()>,
    /// Why the saved ledger could not be used at start, if it could not.
    lost: Option<String>,
}

impl LedgerFile {
    /// Open (or create) the ledger. A torn or corrupt one is replaced by position 0 with no
    /// epoch record and no final report, and [`LedgerFile::lost`] says why: the server then
    /// looks behind to every controller that saw it further on ("it lost data"), so it is
    /// never placed online alone on a position it cannot vouch for; it can still rejoin as a
    /// secondary and be resynced.
    pub fn open(path: PathBuf) -> anyhow::Result<LedgerFile> {
        let file = RecordFile::new(path);
        let (mut ledger, lost) = match file.load() {
            Loaded::Found(v) => match serde_json::from_value::<Ledger>(v) {
                Ok(l) => (l, None),
                Err(e) => (Ledger::default(), Some(format!("checksummed but not a ledger: {e}"))),
            },
            Loaded::Missing => (Ledger::default(), None),
            Loaded::Corrupt(why) => (Ledger::default(), Some(why)),
        };
        if let Some(why) = &lost {
            tracing::error!(ledger = %file.path().display(), "quorum ledger unusable ({why}): starting from position 0; this server will not be placed online alone until resynced");
        }
        ledger.sealed = ledger.position;
        let durable = AtomicU64::new(ledger.position);
        let f = LedgerFile { file, state: Mutex::new(ledger), durable, saving: Mutex::new(()), lost };
        f.save()?;
        Ok(f)
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Why the saved ledger was unusable at start, if it was.
    pub fn lost(&self) -> Option<&str> {
        self.lost.as_deref()
    }

    pub fn get(&self) -> Ledger {
        self.state.lock().clone()
    }

    /// Change the ledger under its lock (`f` may also change what must move with it
    /// atomically, e.g. mark the change bitmap). Call [`LedgerFile::save`] before relying on it.
    pub fn update<T>(&self, f: impl FnOnce(&mut Ledger) -> T) -> T {
        f(&mut self.state.lock())
    }

    /// Whether the position in memory is ahead of the saved one.
    pub fn needs_save(&self) -> bool {
        self.state.lock().position > self.durable.load(Ordering::Acquire)
    }

    /// Write the ledger durably (blocking).
    pub fn save(&self) -> anyhow::Result<()> {
        let _one = self.saving.lock();
        let snapshot = self.get();
        self.file.save(&serde_json::to_value(&snapshot)?)?;
        self.durable.fetch_max(snapshot.position, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracking_moves_once_per_seal() {
        let mut l = Ledger::default();
        assert!(l.track());
        assert!(!l.track(), "later tracked writes share the new position");
        assert_eq!(l.position, 1);
        assert_eq!(l.seal(), 1);
        assert!(l.track());
        assert_eq!(l.position, 2);
    }

    #[test]
    fn promotion_is_guarded_and_resumable() {
        let mut l = Ledger { position: 4, sealed: 4, ..Default::default() };
        assert!(l.promote(Some(3)).unwrap_err().contains("at position 4, not 3"));
        assert_eq!(l.promote(Some(4)), Ok(Promotion::Fresh(5)));
        assert_eq!(l.epoch, Some(5));
        // Writes while alone, then a crash: the same election resumes it.
        assert!(!l.track(), "the epoch record already moved past the seal");
        l.position = 9;
        assert_eq!(l.promote(Some(4)), Ok(Promotion::Resumed));
        // After a graceful stop it does not: the controllers must elect it again at 9.
        assert_eq!(l.final_stop(), 9);
        assert!(l.promote(Some(4)).is_err());
        assert_eq!(l.last_final, Some(9));
        assert_eq!(l.promote(Some(9)), Ok(Promotion::Fresh(10)));
        assert_eq!(l.last_final, None);
    }

    #[test]
    fn adopt_never_goes_back() {
        let mut l = Ledger { position: 6, ..Default::default() };
        assert!(!l.adopt(5));
        assert!(l.adopt(8));
        assert_eq!(l.position, 8);
    }

    #[test]
    fn a_corrupt_ledger_starts_from_zero_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vs1.quorum.ledger");
        let f = LedgerFile::open(path.clone()).unwrap();
        f.update(|l| l.promote(Some(0))).unwrap();
        f.save().unwrap();
        drop(f);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let g = LedgerFile::open(path.clone()).unwrap();
        assert_eq!(g.get(), Ledger::default());
        assert_eq!(g.lost(), Some("checksum mismatch"));
        // The replacement is saved: the next start is clean.
        assert_eq!(LedgerFile::open(path).unwrap().lost(), None);
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vs1.quorum.ledger");
        let f = LedgerFile::open(path.clone()).unwrap();
        f.update(|l| l.promote(Some(0))).unwrap();
        assert!(f.needs_save());
        f.save().unwrap();
        assert!(!f.needs_save());
        f.update(|l| l.final_stop());
        f.save().unwrap();
        let g = LedgerFile::open(path).unwrap().get();
        assert_eq!(
            (g.position, g.epoch, g.last_final, g.graceful_since_epoch, g.sealed),
            (1, Some(1), Some(1), true, 1)
        );
    }
}
