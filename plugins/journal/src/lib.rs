//! The journal backup component: an append-only, checksummed local file holding every update
//! of the volumes it is attached to, written before the host's write is acknowledged; and
//! `journal-replay`, which rebuilds a volume image from it.
//!
//! # Configuration
//!
//! ```toml
//! [[export.component]]
//! plugin = "journal"
//! config = { path = "/var/lib/gateway/vol.journal", sync = "always", max_batch = 1024 }
//! ```
//!
//! * `path` (required): the journal file. One file per component instance; every volume the
//!   instance serves goes in it and each record names its volume. The file is locked
//!   (`flock`) while open, so two exports (or two gateways) can never append to one journal.
//!   A relative path is relative to the gateway's working directory (the host does not pass
//!   its data directory to plugins), so prefer absolute paths.
//! * `sync` (default `"always"`):
//!   * `"always"`: an update is completed only once it is durable in the journal. A writer
//!     thread takes every queued record (up to `max_batch`), writes them with one `pwrite`,
//!     calls `fdatasync` once and then completes the whole batch (group commit). Since the
//!     host acknowledges a write only after every component completed it, an acknowledged
//!     write is in the journal even across a power loss.
//!   * `"batch"`: an update is completed once the writer has written it to the file (it
//!     survives a crash of the gateway, not of the machine); `fdatasync` runs for FUA
//!     updates and flush barriers, which complete only after it — the block device
//!     contract.
//! * `max_batch` (default 1024): most records one group commit takes.
//!
//! A flush barrier completes once everything submitted before it is durable. After an I/O
//! error the journal fails every later update and flush (fail-stop): a journal with a gap
//! would replay to a state the volume never had.
//!
//! # Opening an existing journal
//!
//! The header is checked (a file that is not a journal, or of another format version, is
//! refused), then every record is read and checksummed. A bad or incomplete record at the end
//! (a crash in the middle of an append) is a torn tail: the file is truncated after the last
//! good record, with a warning in the log. If valid records follow the bad one (damage in the
//! middle, not a torn append), the bytes from the bad record on are first copied to
//! `PATH.damaged-OFFSET`, then the journal is truncated the same way, with an error in the
//! log. Each open then appends a session record.
//!
//! Sequence numbers: the host numbers a volume's updates from 1 each time it starts. The
//! journal stores `seq = base + host seq`, where `base` is the highest sequence number the
//! journal held for the volume when it was opened, so a volume's sequence numbers keep
//! increasing across restarts and `journal-replay --upto SEQ` is unambiguous.
//!
//! # File format (version 1, all integers little-endian)
//!
//! File header, 32 bytes:
//!
//! | offset | size | field                                             |
//! |-------:|-----:|---------------------------------------------------|
//! | 0      | 8    | magic `GWJOURNL`                                  |
//! | 8      | 4    | format version (1)                                |
//! | 12     | 4    | header length (32)                                |
//! | 16     | 12   | flags and reserved, zero                          |
//! | 28     | 4    | CRC32C of bytes 0..28                             |
//!
//! Then records, back to back:
//!
//! | offset   | size | field                                                          |
//! |---------:|-----:|----------------------------------------------------------------|
//! | 0        | 4    | magic `GWJR`                                                   |
//! | 4        | 4    | record length, this header to the trailing CRC inclusive       |
//! | 8        | 1    | kind: 1 write, 2 trim, 3 zero, 16 boundary, 17 session          |
//! | 9        | 1    | flags: bit 0 FUA, bit 1 may-trim (zero only)                    |
//! | 10       | 2    | volume name length `V` (at most 4096)                          |
//! | 12       | 8    | seq (boundary: last seq of the set; session: session number)   |
//! | 20       | 8    | offset (boundary: set id; session: start time, Unix seconds)   |
//! | 28       | 8    | length in bytes (session: process id; boundary: 0)             |
//! | 36       | 4    | data length `D` (= length for writes, 0 otherwise)             |
//! | 40       | 4    | CRC32C of bytes 0..40 (so the lengths are checked before use)  |
//! | 44       | V    | volume name, UTF-8 (empty for a session record)                |
//! | 44+V     | D    | data                                                           |
//! | 44+V+D   | 4    | CRC32C of bytes 0..44+V+D                                      |
//!
//! A reader trusts a record only when both checksums match and the fields agree with each
//! other ([`format::parse_record`]); CRC32C detects every single-bit error and every burst
//! of up to 32 bits, so a torn or damaged record is never mistaken for a valid one.

pub mod format;
pub mod replay;
pub mod scan;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use gateway_sdk::serde_json::Value;
use gateway_sdk::{BackupComponent, Completion, Host, Update, UpdateKind};

use format::{encode_file_header, encode_record, Body, Record, FILE_HEADER_LEN};
use scan::{Next, Scanner};

const PLUGIN: &str = "journal";
/// Most bytes one group commit gathers before writing.
const MAX_BATCH_BYTES: usize = 64 << 20;
const DEFAULT_MAX_BATCH: usize = 1024;

/// When an update counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// Durable (written and `fdatasync`ed) before completion.
    Always,
    /// Written before completion; durable at FUA updates and flush barriers.
    Batch,
}

/// The component's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub sync: SyncMode,
    pub max_batch: usize,
}

impl Config {
    pub fn parse(v: &Value) -> Result<Config, String> {
        let obj = v.as_object().ok_or("config must be a table")?;
        for key in obj.keys() {
            if !matches!(key.as_str(), "path" | "sync" | "max_batch") {
                return Err(format!("unknown config key `{key}` (expected `path`, `sync`, `max_batch`)"));
            }
        }
        let path = match obj.get("path") {
            Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
            Some(_) => return Err("`path` must be a non-empty string".into()),
            None => return Err("missing `path` (the journal file)".into()),
        };
        let sync = match obj.get("sync") {
            None => SyncMode::Always,
            Some(Value::String(s)) if s == "always" => SyncMode::Always,
            Some(Value::String(s)) if s == "batch" => SyncMode::Batch,
            Some(other) => return Err(format!("`sync` must be \"always\" or \"batch\", not {other}")),
        };
        let max_batch = match obj.get("max_batch") {
            None => DEFAULT_MAX_BATCH,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=1 << 20).contains(&n) => n as usize,
                _ => return Err(format!("`max_batch` must be a number of records from 1 to 1048576, not {v}")),
            },
        };
        Ok(Config { path, sync, max_batch })
    }
}

/// What the writer thread is asked to do, in order.
enum Msg {
    /// An encoded record; `done` (absent for boundaries) completes once it is written
    /// (durably, in `always` mode or when `fua`).
    Record { bytes: Vec<u8>, done: Option<Completion>, fua: bool },
    /// Complete once everything before is durable.
    Flush { done: Completion },
    /// Finish what is queued, sync, and exit.
    Shutdown,
}

struct Shared {
    host: Host,
    path: PathBuf,
    /// Set once, at the first I/O error; every later request fails with it.
    failed: OnceLock<String>,
}

impl Shared {
    fn log(&self, level: u32, msg: &str) {
        self.host.log(level, PLUGIN, msg);
    }
}

/// The backup component.
pub struct Journal {
    shared: Arc<Shared>,
    tx: Sender<Msg>,
    writer: Option<JoinHandle<()>>,
    /// Per volume: the highest sequence number in the journal when it was opened.
    bases: HashMap<String, u64>,
}

/// What reading an existing journal found.
#[derive(Debug, Default)]
struct Existing {
    records: u64,
    /// Highest sequence number per volume, over every valid record in the file.
    last_seq: HashMap<String, u64>,
    sessions: u64,
    /// Where the good records end.
    end: u64,
}

impl BackupComponent for Journal {
    fn open(host: &Host, config: &Value) -> Result<Self, String> {
        let cfg = Config::parse(config)?;
        Journal::open_with(*host, cfg)
    }

    fn submit(&self, u: Update<'_>, done: Completion) {
        if let Some(why) = self.shared.failed.get() {
            return done.complete(Err(format!("journal {} failed earlier: {why}", self.shared.path.display())));
        }
        let body = match u.kind {
            UpdateKind::Write(data) => Body::Write { offset: u.offset, data, fua: u.fua },
            UpdateKind::Trim { length } => Body::Trim { offset: u.offset, length, fua: u.fua },
            UpdateKind::Zero { length, may_trim } => Body::Zero { offset: u.offset, length, may_trim, fua: u.fua },
        };
        let Some(seq) = self.journal_seq(u.volume, u.seq) else {
            return done.complete(Err(format!("journal: sequence number {} overflows", u.seq)));
        };
        let rec = Record { volume: u.volume, seq, body };
        let mut bytes = Vec::with_capacity(rec.encoded_len());
        if let Err(e) = encode_record(&rec, &mut bytes) {
            return done.complete(Err(format!("journal: cannot record update {}: {e}", u.seq)));
        }
        self.send(Msg::Record { bytes, done: Some(done), fua: u.fua });
    }

    fn flush(&self, _volume: &str, _upto: u64, done: Completion) {
        // Records are written in submission order, so "everything queued before this" covers
        // every update of the volume up to `upto` (and of the other volumes, which is fine).
        self.send(Msg::Flush { done });
    }

    fn set_boundary(&self, volume: &str, set_id: u64, upto: u64) {
        if self.shared.failed.get().is_some() {
            return;
        }
        let Some(seq) = self.journal_seq(volume, upto) else { return };
        let rec = Record { volume, seq, body: Body::Boundary { set_id } };
        let mut bytes = Vec::with_capacity(rec.encoded_len());
        match encode_record(&rec, &mut bytes) {
            Ok(()) => self.send(Msg::Record { bytes, done: None, fua: false }),
            Err(e) => self.shared.log(1, &format!("cannot record boundary {set_id} of `{volume}`: {e}")),
        }
    }
}

impl Journal {
    /// Open (creating, or validating and repairing) the journal and start its writer.
    pub fn open_with(host: Host, cfg: Config) -> Result<Journal, String> {
        let path = cfg.path.clone();
        let shown = path.display().to_string();
        let shared = Arc::new(Shared { host, path: path.clone(), failed: OnceLock::new() });
        let (file, existing) = open_file(&shared, &path).map_err(|e| format!("journal {shown}: {e}"))?;
        let session = existing.sessions + 1;
        let started_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut bytes = Vec::new();
        let rec =
            Record { volume: "", seq: session, body: Body::Session { started_unix, pid: std::process::id() as u64 } };
        encode_record(&rec, &mut bytes).map_err(|e| format!("journal {shown}: {e}"))?;
        file.write_all_at(&bytes, existing.end)
            .and_then(|()| file.sync_data())
            .map_err(|e| format!("journal {shown}: writing the session record: {e}"))?;
        let pos = existing.end + bytes.len() as u64;
        shared.log(
            3,
            &format!(
                "journal {shown}: session {session}, {} earlier records of {} volume(s), sync={}, max_batch={}",
                existing.records,
                existing.last_seq.len(),
                if cfg.sync == SyncMode::Always { "always" } else { "batch" },
                cfg.max_batch
            ),
        );
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            file,
            pos,
            dirty: false,
            mode: cfg.sync,
            max_batch: cfg.max_batch,
            rx,
            buf: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("gw-journal".into())
            .spawn(move || writer.run())
            .map_err(|e| format!("journal {shown}: starting the writer thread: {e}"))?;
        Ok(Journal { shared, tx, writer: Some(handle), bases: existing.last_seq })
    }

    fn journal_seq(&self, volume: &str, host_seq: u64) -> Option<u64> {
        self.bases.get(volume).copied().unwrap_or(0).checked_add(host_seq)
    }

    fn send(&self, msg: Msg) {
        if let Err(mpsc::SendError(msg)) = self.tx.send(msg) {
            let why = format!("journal {}: writer thread has stopped", self.shared.path.display());
            match msg {
                Msg::Record { done: Some(d), .. } | Msg::Flush { done: d } => d.complete(Err(why)),
                _ => {}
            }
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Shutdown);
        if let Some(h) = self.writer.take() {
            let _ = h.join();
        }
    }
}

/// Take the journal's lock: two writers appending to one journal would interleave records.
fn lock(file: &File) -> Result<(), String> {
    // SAFETY: flock on a descriptor we own for the duration of the call; no memory involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err("in use: another export or another gateway has this journal open (one file per component instance)".into())
    } else {
        Err(format!("cannot lock: {e}"))
    }
}

/// Open the file, lock it, create the header or check it and the records after it, and cut
/// a torn tail. Returns the file and what it holds.
fn open_file(shared: &Shared, path: &Path) -> Result<(File, Existing), String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("cannot open: {e}"))?;
    lock(&file)?;
    let len = file.metadata().map_err(|e| format!("cannot stat: {e}"))?.len();
    if len < FILE_HEADER_LEN as u64 {
        // New, or created by a gateway that died before the header was durable: anything but
        // a prefix of a header (or zeroes) is someone else's file.
        let mut head = vec![0u8; len as usize];
        file.read_exact_at(&mut head, 0).map_err(|e| format!("cannot read: {e}"))?;
        let header = encode_file_header();
        if !(head.iter().all(|&b| b == 0) || header.starts_with(&head)) {
            return Err(format::parse_file_header(&head).err().map_or("not a journal".into(), |e| e.to_string()));
        }
        if len > 0 {
            shared.log(2, &format!("journal {}: incomplete header ({len} bytes); starting it anew", path.display()));
        }
        file.set_len(0)
            .and_then(|()| file.write_all_at(&header, 0))
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write the header: {e}"))?;
        sync_parent(path);
        return Ok((file, Existing { end: FILE_HEADER_LEN as u64, ..Default::default() }));
    }
    let existing = recover(shared, path, &file, len)?;
    Ok((file, existing))
}

/// Read every record; cut the file after the last good one (keeping a copy of damaged data
/// that valid records follow).
fn recover(shared: &Shared, path: &Path, file: &File, len: u64) -> Result<Existing, String> {
    let (mut scanner, _version) = Scanner::open(file).map_err(|e| e.to_string())?;
    let mut ex = Existing::default();
    let mut first_stop = None;
    let mut salvaged = 0u64;
    loop {
        match scanner.next_record().map_err(|e| format!("cannot read: {e}"))? {
            Next::Record(_, r) => {
                if first_stop.is_none() {
                    ex.records += 1;
                } else {
                    salvaged += 1;
                }
                match r.body {
                    Body::Session { .. } => ex.sessions = ex.sessions.max(r.seq),
                    _ => {
                        let last = ex.last_seq.entry(r.volume.to_owned()).or_insert(0);
                        *last = (*last).max(r.seq);
                    }
                }
            }
            Next::End => break,
            Next::Stop(stop) => {
                if first_stop.is_none() {
                    first_stop = Some(stop);
                }
                if scanner.resync().map_err(|e| format!("cannot read: {e}"))?.is_none() {
                    break;
                }
            }
        }
    }
    ex.end = len;
    let Some(stop) = first_stop else { return Ok(ex) };
    ex.end = stop.offset;
    let cut = len - stop.offset;
    if salvaged > 0 {
        let side = PathBuf::from(format!("{}.damaged-{}", path.display(), stop.offset));
        copy_tail(file, stop.offset, len, &side).map_err(|e| {
            format!("damaged at offset {} ({}); saving the rest to {}: {e}", stop.offset, stop.error, side.display())
        })?;
        shared.log(
            1,
            &format!(
                "journal {}: damaged record at offset {} ({}) with {salvaged} valid record(s) after it: \
                 saved bytes {}..{len} to {} and truncated the journal at {}",
                path.display(),
                stop.offset,
                stop.error,
                stop.offset,
                side.display(),
                stop.offset
            ),
        );
    } else {
        shared.log(
            2,
            &format!(
                "journal {}: torn tail at offset {} ({}): truncating {cut} byte(s) after the last good record",
                path.display(),
                stop.offset,
                stop.error
            ),
        );
    }
    file.set_len(stop.offset).and_then(|()| file.sync_all()).map_err(|e| format!("cannot truncate: {e}"))?;
    Ok(ex)
}

fn copy_tail(file: &File, from: u64, to: u64, side: &Path) -> std::io::Result<()> {
    let out = OpenOptions::new().write(true).create_new(true).mode(0o600).open(side)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    let mut reader = file;
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(from))?;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        reader.read_exact(&mut buf[..n])?;
        out.write_all_at(&buf[..n], at - from)?;
        at += n as u64;
    }
    out.sync_all()?;
    sync_parent(side);
    Ok(())
}

/// Make a new directory entry durable (best effort: some filesystems refuse).
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(parent) {
        let _ = d.sync_all();
    }
}

/// The thread that owns the file: group commit of queued records.
struct Writer {
    shared: Arc<Shared>,
    file: File,
    /// Where the next record goes.
    pos: u64,
    /// Written since the last `fdatasync`.
    dirty: bool,
    mode: SyncMode,
    max_batch: usize,
    rx: Receiver<Msg>,
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::new();
        let mut shutdown = false;
        while !shutdown {
            let Ok(first) = self.rx.recv() else { break };
            batch.push(first);
            let mut bytes = 0;
            while batch.len() < self.max_batch && bytes < MAX_BATCH_BYTES {
                match self.rx.try_recv() {
                    Ok(m) => {
                        if let Msg::Record { bytes: b, .. } = &m {
                            bytes += b.len();
                        }
                        batch.push(m);
                    }
                    Err(_) => break,
                }
            }
            shutdown = self.commit(&mut batch);
        }
        // Anything still queued after a shutdown (nothing, if the host closed us properly).
        while let Ok(m) = self.rx.try_recv() {
            batch.push(m);
            self.commit(&mut batch);
        }
        if self.dirty && self.shared.failed.get().is_none() {
            if let Err(e) = self.file.sync_data() {
                self.fail(format!("fdatasync at close: {e}"));
            }
        }
    }

    /// Write a batch, sync it as the mode requires, complete it. Returns whether it held a
    /// shutdown request.
    fn commit(&mut self, batch: &mut Vec<Msg>) -> bool {
        self.buf.clear();
        let mut shutdown = false;
        let mut wants_sync = false;
        for m in batch.iter() {
            match m {
                Msg::Record { bytes, fua, .. } => {
                    self.buf.extend_from_slice(bytes);
                    wants_sync |= *fua || self.mode == SyncMode::Always;
                }
                Msg::Flush { .. } => wants_sync = true,
                Msg::Shutdown => {
                    shutdown = true;
                    wants_sync = true;
                }
            }
        }
        let result = self.write_and_sync(wants_sync);
        for m in batch.drain(..) {
            match m {
                Msg::Record { done: Some(d), .. } | Msg::Flush { done: d } => d.complete(result.clone()),
                _ => {}
            }
        }
        shutdown
    }

    fn write_and_sync(&mut self, wants_sync: bool) -> Result<(), String> {
        if let Some(why) = self.shared.failed.get() {
            return Err(format!("journal {} failed earlier: {why}", self.shared.path.display()));
        }
        if !self.buf.is_empty() {
            if let Err(e) = self.file.write_all_at(&self.buf, self.pos) {
                // Cut what part of the batch got in, so the file still ends on a record.
                let _ = self.file.set_len(self.pos);
                return Err(self.fail(format!("write at offset {}: {e}", self.pos)));
            }
            self.pos += self.buf.len() as u64;
            self.dirty = true;
        }
        if wants_sync && self.dirty {
            if let Err(e) = self.file.sync_data() {
                return Err(self.fail(format!("fdatasync: {e}")));
            }
            self.dirty = false;
        }
        Ok(())
    }

    fn fail(&self, why: String) -> String {
        let msg = format!("journal {}: {why}; failing every later update", self.shared.path.display());
        if self.shared.failed.set(why).is_ok() {
            self.shared.log(1, &msg);
        }
        msg
    }
}

gateway_sdk::declare_plugin!(backup_component, Journal, "journal", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests;
