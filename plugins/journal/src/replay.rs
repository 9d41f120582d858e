//! Rebuilding a volume image from a journal, and listing a journal: the library behind the
//! `journal-replay` tool.
//!
//! Replay reads the journal twice: first to index one volume's updates and find where the
//! valid records end (a torn or damaged record stops the index there: nothing after it is
//! applied, and the summary says where and why), then to apply the indexed updates in
//! sequence order, each record read again and checksummed again as it is applied. Writes are
//! `pwrite`s; trims and zeroes punch holes (`fallocate`), or write zeroes where that is not
//! supported, so both read back as zeroes.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use gateway_sdk::serde_json::{json, Value};

use crate::format::{parse_record, Body, ParseError};
use crate::scan::{Next, Scanner};

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The volume to replay; may be left out when the journal holds only one.
    pub volume: Option<String>,
    /// Apply only updates with `seq <= upto`.
    pub upto: Option<u64>,
}

/// Where reading stopped before the end of the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    pub offset: u64,
    pub reason: String,
    /// The record was cut short by the end of the file.
    pub truncated: bool,
    /// The next offset where a valid record starts, if any: damage in the middle of the
    /// journal rather than a torn append. Records from there on are not applied.
    pub next_valid: Option<u64>,
    /// Bytes from `offset` to the end of the file.
    pub bytes_after: u64,
}

impl Tail {
    fn describe(&self) -> String {
        let what = match self.next_valid {
            Some(n) => format!(
                "damaged journal: a valid record follows at offset {n}; nothing from offset {} on was applied",
                self.offset
            ),
            None => "torn tail (nothing valid follows); the records before it were applied".into(),
        };
        format!(
            "stopped at offset {}: {} ({} bytes to end of file) - {what}",
            self.offset, self.reason, self.bytes_after
        )
    }

    fn to_json(&self) -> Value {
        json!({
            "clean": false,
            "offset": self.offset,
            "reason": self.reason,
            "truncated": self.truncated,
            "next_valid_offset": self.next_valid,
            "bytes_after": self.bytes_after,
        })
    }
}

/// Per volume: what the journal holds and what was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeSummary {
    /// Valid update records in the journal.
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// Updates applied to the image.
    pub applied: u64,
    pub writes: u64,
    pub trims: u64,
    pub zeroes: u64,
    pub bytes_written: u64,
    pub bytes_zeroed: u64,
    pub last_applied_seq: Option<u64>,
    /// Updates whose seq was not above the one before them in the file (should be 0).
    pub out_of_order: u64,
    /// Boundaries: (set id, last seq of the set).
    pub boundaries: Vec<(u64, u64)>,
}

/// The outcome of a replay.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub version: u32,
    /// Valid records read (all kinds, all volumes).
    pub records: u64,
    pub sessions: u64,
    /// The volume that was applied (`None` when the journal holds no updates).
    pub volume: Option<String>,
    pub upto: Option<u64>,
    pub volumes: BTreeMap<String, VolumeSummary>,
    /// `None` when the journal ended exactly after a valid record.
    pub tail: Option<Tail>,
    /// Where the valid records end.
    pub end: u64,
}

impl Summary {
    pub fn to_json(&self) -> Value {
        let volumes: BTreeMap<&String, Value> = self
            .volumes
            .iter()
            .map(|(name, v)| {
                (
                    name,
                    json!({
                        "records": v.records,
                        "first_seq": v.first_seq,
                        "last_seq": v.last_seq,
                        "applied": v.applied,
                        "writes": v.writes,
                        "trims": v.trims,
                        "zeroes": v.zeroes,
                        "bytes_written": v.bytes_written,
                        "bytes_zeroed": v.bytes_zeroed,
                        "last_applied_seq": v.last_applied_seq,
                        "out_of_order": v.out_of_order,
                        "boundaries": v.boundaries.iter().map(|(s, u)| json!({"set_id": s, "upto": u})).collect::<Vec<_>>(),
                    }),
                )
            })
            .collect();
        json!({
            "format_version": self.version,
            "records": self.records,
            "sessions": self.sessions,
            "volume": self.volume,
            "upto": self.upto,
            "volumes": volumes,
            "valid_end": self.end,
            "tail": self.tail.as_ref().map_or_else(|| json!({"clean": true}), Tail::to_json),
        })
    }

    pub fn to_text(&self) -> String {
        let mut s = format!(
            "journal format {}: {} valid record(s), {} session(s), {} volume(s)\n",
            self.version,
            self.records,
            self.sessions,
            self.volumes.len()
        );
        for (name, v) in &self.volumes {
            let seqs = match (v.first_seq, v.last_seq) {
                (Some(a), Some(b)) => format!("seq {a}..{b}"),
                _ => "no updates".into(),
            };
            if Some(name) == self.volume.as_ref() {
                s += &format!(
                    "volume {name}: applied {} of {} update(s) ({} write(s), {} trim(s), {} zero(es)), {seqs}, \
                     last applied seq {}, {} byte(s) written, {} byte(s) zeroed{}\n",
                    v.applied,
                    v.records,
                    v.writes,
                    v.trims,
                    v.zeroes,
                    v.last_applied_seq.map_or("-".into(), |q| q.to_string()),
                    v.bytes_written,
                    v.bytes_zeroed,
                    self.upto.map_or(String::new(), |u| format!(" (--upto {u})")),
                );
                if v.out_of_order > 0 {
                    s += &format!("  warning: {} update(s) out of sequence order in the file\n", v.out_of_order);
                }
            } else {
                s += &format!("volume {name}: not selected ({} update(s), {seqs})\n", v.records);
            }
            for (set, upto) in &v.boundaries {
                s += &format!("  boundary: set {set} ends at seq {upto}\n");
            }
        }
        match &self.tail {
            None => s += &format!("tail: clean (valid records end at offset {})\n", self.end),
            Some(t) => s += &format!("tail: {}\n", t.describe()),
        }
        s
    }
}

/// One indexed update: (seq, file offset, record length).
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    at: u64,
    len: usize,
}

fn open_journal(path: &Path) -> Result<(Scanner<File>, u32), String> {
    let f = File::open(path).map_err(|e| format!("{}: cannot open: {e}", path.display()))?;
    Scanner::open(f).map_err(|e| format!("{}: {e}", path.display()))
}

/// Replay `journal` onto `image` (created if missing). Errors are for a journal that cannot
/// be read at all (bad header, I/O), an ambiguous volume, or a failing image; a torn or
/// damaged tail is reported in the summary.
pub fn replay(journal: &Path, image: &Path, opts: &Options) -> Result<Summary, String> {
    let (mut scanner, version) = open_journal(journal)?;
    let mut sum = Summary { version, upto: opts.upto, ..Default::default() };
    let mut index: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
    loop {
        let next = scanner.next_record().map_err(|e| format!("{}: read error: {e}", journal.display()))?;
        match next {
            Next::Record(at, r) => {
                sum.records += 1;
                match r.body {
                    Body::Session { .. } => sum.sessions += 1,
                    Body::Boundary { set_id } => {
                        sum.volumes.entry(r.volume.to_owned()).or_default().boundaries.push((set_id, r.seq))
                    }
                    _ => {
                        let v = sum.volumes.entry(r.volume.to_owned()).or_default();
                        v.records += 1;
                        if v.last_seq.is_some_and(|last| r.seq <= last) {
                            v.out_of_order += 1;
                        }
                        v.first_seq = Some(v.first_seq.map_or(r.seq, |f| f.min(r.seq)));
                        v.last_seq = Some(v.last_seq.map_or(r.seq, |l| l.max(r.seq)));
                        index.entry(r.volume.to_owned()).or_default().push(Entry {
                            seq: r.seq,
                            at,
                            len: r.encoded_len(),
                        });
                    }
                }
            }
            Next::End => {
                sum.end = scanner.offset();
                break;
            }
            Next::Stop(stop) => {
                sum.end = stop.offset;
                let file_len = std::fs::metadata(journal).map(|m| m.len()).unwrap_or(stop.offset);
                let next_valid = scanner.resync().map_err(|e| format!("{}: read error: {e}", journal.display()))?;
                sum.tail = Some(Tail {
                    offset: stop.offset,
                    reason: stop.error.to_string(),
                    truncated: stop.at_eof(),
                    next_valid,
                    bytes_after: file_len.saturating_sub(stop.offset),
                });
                break;
            }
        }
    }
    let names: Vec<&String> = index.keys().collect();
    sum.volume = match &opts.volume {
        Some(v) => Some(v.clone()),
        None if names.len() > 1 => {
            let list = names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
            return Err(format!("the journal holds updates of several volumes ({list}): choose one with --volume"));
        }
        None => names.first().map(|s| (*s).clone()),
    };
    let Some(volume) = sum.volume.clone() else { return Ok(sum) };
    let mut entries = index.remove(&volume).unwrap_or_default();
    // File order is sequence order by construction; sort anyway (stable, so equal seqs keep
    // their file order), as the tool promises sequence order.
    entries.sort_by_key(|e| e.seq);
    let img = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(image)
        .map_err(|e| format!("{}: cannot open image: {e}", image.display()))?;
    let jf = File::open(journal).map_err(|e| format!("{}: cannot open: {e}", journal.display()))?;
    let Some(vs) = sum.volumes.get_mut(&volume) else {
        // Nothing of this volume in the journal: the image is left as it is.
        return Ok(sum);
    };
    let mut buf = Vec::new();
    for e in entries {
        if opts.upto.is_some_and(|u| e.seq > u) {
            continue;
        }
        buf.resize(e.len, 0);
        jf.read_exact_at(&mut buf, e.at).map_err(|err| format!("{}: read error: {err}", journal.display()))?;
        let (r, _) = parse_record(&buf).map_err(|err: ParseError| {
            format!("{}: record at offset {} changed during replay: {err}", journal.display(), e.at)
        })?;
        let io = |err: std::io::Error| format!("{}: seq {}: {err}", image.display(), r.seq);
        match r.body {
            Body::Write { offset, data, .. } => {
                img.write_all_at(data, offset).map_err(io)?;
                vs.writes += 1;
                vs.bytes_written += data.len() as u64;
            }
            Body::Trim { offset, length, .. } => {
                zero_range(&img, offset, length).map_err(io)?;
                vs.trims += 1;
                vs.bytes_zeroed += length;
            }
            Body::Zero { offset, length, .. } => {
                zero_range(&img, offset, length).map_err(io)?;
                vs.zeroes += 1;
                vs.bytes_zeroed += length;
            }
            _ => continue,
        }
        vs.applied += 1;
        vs.last_applied_seq = Some(r.seq);
    }
    img.sync_all().map_err(|e| format!("{}: fsync: {e}", image.display()))?;
    Ok(sum)
}

/// Make `offset..offset + length` of `f` read as zeroes: extend a regular file to cover it,
/// punch a hole, or write zeroes where holes are not supported.
fn zero_range(f: &File, offset: u64, length: u64) -> std::io::Result<()> {
    if length == 0 {
        return Ok(());
    }
    let end = offset.checked_add(length).ok_or_else(|| std::io::Error::other("range overflows"))?;
    let meta = f.metadata()?;
    let mut size = meta.len();
    if meta.is_file() && end > size {
        f.set_len(end)?; // the new part reads as zeroes already
        size = size.max(offset);
    }
    let stop = end.min(size);
    if offset >= stop {
        return Ok(());
    }
    if punch(f, offset, stop - offset) {
        return Ok(());
    }
    let zeroes = vec![0u8; (1 << 20).min(stop - offset) as usize];
    let mut at = offset;
    while at < stop {
        let n = ((stop - at) as usize).min(zeroes.len());
        f.write_all_at(&zeroes[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

fn punch(f: &File, offset: u64, length: u64) -> bool {
    let (Ok(off), Ok(len)) = (i64::try_from(offset), i64::try_from(length)) else { return false };
    // SAFETY: fallocate on a descriptor we own for the call; no memory is passed.
    let rc =
        unsafe { libc::fallocate(f.as_raw_fd(), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, off, len) };
    rc == 0
}

/// What `dump` found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DumpSummary {
    pub records: u64,
    /// Bad records met (each followed by a search for the next valid one).
    pub damaged: u64,
}

/// List every record of `journal` on `out`: one line each (JSON objects with `json`). A bad
/// record is listed with the reason, and listing resumes at the next valid record, if any.
pub fn dump(journal: &Path, out: &mut dyn Write, json: bool) -> Result<DumpSummary, String> {
    let (mut scanner, version) = open_journal(journal)?;
    let mut sum = DumpSummary::default();
    let werr = |e: std::io::Error| format!("writing the listing: {e}");
    if !json {
        writeln!(out, "# {}: journal format {version}", journal.display()).map_err(werr)?;
        writeln!(
            out,
            "# {:>12} {:>10} {:<8} {:<16} {:>14} {:>12} {:<9} crc",
            "at", "seq", "kind", "volume", "offset", "length", "flags"
        )
        .map_err(werr)?;
    }
    loop {
        let next = scanner.next_record().map_err(|e| format!("{}: read error: {e}", journal.display()))?;
        match next {
            Next::Record(at, r) => {
                sum.records += 1;
                let line = if json { dump_json(at, &r).to_string() } else { dump_text(at, &r) };
                writeln!(out, "{line}").map_err(werr)?;
            }
            Next::End => break,
            Next::Stop(stop) => {
                sum.damaged += 1;
                let next = scanner.resync().map_err(|e| format!("{}: read error: {e}", journal.display()))?;
                if json {
                    let v = json!({
                        "at": stop.offset, "crc_ok": false, "error": stop.error.to_string(),
                        "truncated": stop.at_eof(), "next_valid_offset": next,
                    });
                    writeln!(out, "{v}").map_err(werr)?;
                } else {
                    let then = match next {
                        Some(n) => format!("next valid record at offset {n}"),
                        None => "nothing valid follows".into(),
                    };
                    writeln!(out, "  {:>12} BAD: {} ({then})", stop.offset, stop.error).map_err(werr)?;
                }
                if next.is_none() {
                    break;
                }
            }
        }
    }
    Ok(sum)
}

fn dump_json(at: u64, r: &crate::format::Record<'_>) -> Value {
    let mut v = json!({ "at": at, "seq": r.seq, "kind": r.kind_name(), "volume": r.volume, "crc_ok": true });
    match r.body {
        Body::Boundary { set_id } => v["set_id"] = json!(set_id),
        Body::Session { started_unix, pid } => {
            v["started_unix"] = json!(started_unix);
            v["pid"] = json!(pid);
        }
        Body::Write { fua, .. } | Body::Trim { fua, .. } | Body::Zero { fua, .. } => {
            let (offset, length) = r.range().unwrap_or_default();
            v["offset"] = json!(offset);
            v["length"] = json!(length);
            v["fua"] = json!(fua);
            v["may_trim"] = json!(matches!(r.body, Body::Zero { may_trim: true, .. }));
        }
    }
    v
}

fn dump_text(at: u64, r: &crate::format::Record<'_>) -> String {
    let head = format!("  {at:>12} {:>10} {:<8}", r.seq, r.kind_name());
    match r.body {
        Body::Session { started_unix, pid } => {
            format!("{head} {:<16} started at unix time {started_unix}, pid {pid}   ok", "-")
        }
        Body::Boundary { set_id } => format!("{head} {:<16} consistency set {set_id} ends here   ok", r.volume),
        Body::Write { fua, .. } | Body::Trim { fua, .. } | Body::Zero { fua, .. } => {
            let (offset, length) = r.range().unwrap_or_default();
            let may_trim = matches!(r.body, Body::Zero { may_trim: true, .. });
            let flags = match (fua, may_trim) {
                (true, true) => "fua,trim",
                (true, false) => "fua",
                (false, true) => "may_trim",
                (false, false) => "-",
            };
            format!("{head} {:<16} {offset:>14} {length:>12} {flags:<9} ok", r.volume)
        }
    }
}
