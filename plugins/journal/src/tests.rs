//! Tests of the component through the real ABI table (open, submit, flush, boundary, close),
//! of recovery on open, of replay, and properties of the format.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use gateway_sdk::abi::{GwError, GwInstance, GwStr, GW_OK};
use gateway_sdk::component::{component_vtable, ImportedComponent};
use gateway_sdk::serde_json::{json, Value};
use gateway_sdk::{Update, UpdateKind};
use proptest::prelude::*;

use super::*;
use crate::format::{encode_file_header, parse_record, ParseError, FILE_HEADER_LEN};
use crate::replay::{dump, replay, Options};
use crate::scan::Stop;

fn open(config: &Value) -> Result<ImportedComponent, String> {
    let vt = component_vtable::<Journal>();
    let open = vt.open.ok_or("no open")?;
    let text = config.to_string();
    let mut out: GwInstance = std::ptr::null_mut();
    let mut err = GwError::default();
    // SAFETY: our own table's open; every pointer is valid for the call (a null host table
    // means standalone logging, a null `next` is right for a component).
    let code = unsafe { open(std::ptr::null(), GwStr::new(&text), std::ptr::null(), &mut out, &mut err) };
    if code != GW_OK {
        return Err(err.message());
    }
    // SAFETY: `out` came from this table's open and is owned by the result from here on.
    unsafe { ImportedComponent::new(vt, out, "journal".into()) }
}

fn cfg(path: &Path) -> Value {
    json!({ "path": path.to_str().unwrap() })
}

/// Submit and return a receiver for the verdict.
fn submit(
    c: &ImportedComponent,
    volume: &str,
    seq: u64,
    offset: u64,
    kind: UpdateKind<'_>,
    fua: bool,
) -> mpsc::Receiver<Result<(), String>> {
    let (tx, rx) = mpsc::channel();
    c.submit(
        &Update { volume, seq, offset, kind, fua },
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx
}

fn wait(rx: mpsc::Receiver<Result<(), String>>) -> Result<(), String> {
    rx.recv_timeout(Duration::from_secs(20)).expect("completion within 20 s")
}

fn flush(c: &ImportedComponent, volume: &str, upto: u64) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    c.flush(
        volume,
        upto,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    wait(rx)
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Owned {
    at: u64,
    volume: String,
    seq: u64,
    kind: &'static str,
    a: u64,
    data: Vec<u8>,
}

/// Every record of a journal file, and where reading stopped.
fn read_all(path: &Path) -> (Vec<Owned>, Option<Stop>) {
    let bytes = std::fs::read(path).unwrap();
    read_bytes(&bytes)
}

fn read_bytes(bytes: &[u8]) -> (Vec<Owned>, Option<Stop>) {
    let (mut s, _) = Scanner::open(bytes).unwrap();
    let mut out = Vec::new();
    loop {
        match s.next_record().unwrap() {
            Next::Record(at, r) => {
                let (a, data) = match r.body {
                    Body::Write { offset, data, .. } => (offset, data.to_vec()),
                    Body::Trim { offset, .. } | Body::Zero { offset, .. } => (offset, Vec::new()),
                    Body::Boundary { set_id } => (set_id, Vec::new()),
                    Body::Session { .. } => (0, Vec::new()),
                };
                out.push(Owned { at, volume: r.volume.into(), seq: r.seq, kind: r.kind_name(), a, data })
            }
            Next::End => return (out, None),
            Next::Stop(st) => return (out, Some(st)),
        }
    }
}

fn block(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 * 7) % 251) as u8).collect()
}

#[test]
fn config_is_checked() {
    let bad = [
        (json!({}), "missing `path`"),
        (json!({"path": ""}), "non-empty"),
        (json!({"path": "x", "sync": "sometimes"}), "`sync`"),
        (json!({"path": "x", "max_batch": 0}), "`max_batch`"),
        (json!({"path": "x", "bogus": 1}), "unknown config key `bogus`"),
        (json!([1]), "table"),
    ];
    for (v, want) in bad {
        let e = Config::parse(&v).unwrap_err();
        assert!(e.contains(want), "{v}: {e}");
    }
    let c = Config::parse(&json!({"path": "/j", "sync": "batch", "max_batch": 8})).unwrap();
    assert_eq!(c, Config { path: "/j".into(), sync: SyncMode::Batch, max_batch: 8 });
    assert_eq!(Config::parse(&json!({"path": "/j"})).unwrap().sync, SyncMode::Always);
}

#[test]
fn updates_land_in_order_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let c = open(&cfg(&path)).unwrap();
    let mut pending = Vec::new();
    for seq in 1..=200u64 {
        let data = block(seq, 100 + seq as usize);
        let kind = match seq % 10 {
            3 => UpdateKind::Trim { length: 4096 },
            7 => UpdateKind::Zero { length: 8192, may_trim: true },
            _ => UpdateKind::Write(&data),
        };
        pending.push(submit(&c, "vol", seq, seq * 4096, kind, seq % 5 == 0));
    }
    flush(&c, "vol", 200).unwrap();
    for p in pending {
        wait(p).unwrap();
    }
    c.set_boundary("vol", 9, 150);
    drop(c);
    let (recs, stop) = read_all(&path);
    assert_eq!(stop, None);
    assert_eq!(recs[0].kind, "session");
    assert_eq!(recs[0].seq, 1);
    assert_eq!(recs.len(), 202);
    for (i, r) in recs[1..201].iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!((r.volume.as_str(), r.seq, r.a), ("vol", seq, seq * 4096));
        match seq % 10 {
            3 => assert_eq!(r.kind, "trim"),
            7 => assert_eq!(r.kind, "zero"),
            _ => assert_eq!((r.kind, &r.data), ("write", &block(seq, 100 + seq as usize))),
        }
    }
    assert_eq!((recs[201].kind, recs[201].seq, recs[201].a), ("boundary", 150, 9));
}

#[test]
fn batch_mode_and_concurrent_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let c =
        std::sync::Arc::new(open(&json!({"path": path.to_str().unwrap(), "sync": "batch", "max_batch": 3})).unwrap());
    let threads: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|v| {
            let c = c.clone();
            std::thread::spawn(move || {
                let rxs: Vec<_> = (1..=300u64)
                    .map(|seq| submit(&c, v, seq, seq * 512, UpdateKind::Write(&block(seq, 512)), seq == 150))
                    .collect();
                flush(&c, v, 300).unwrap();
                for rx in rxs {
                    wait(rx).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    drop(c);
    let (recs, stop) = read_all(&path);
    assert_eq!(stop, None);
    for v in ["a", "b", "c"] {
        let seqs: Vec<u64> = recs.iter().filter(|r| r.volume == v).map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=300).collect::<Vec<_>>(), "volume {v}");
    }
}

#[test]
fn reopening_appends_a_session_and_keeps_seq_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    for round in 0..3u64 {
        let c = open(&cfg(&path)).unwrap();
        let rxs: Vec<_> =
            (1..=5u64).map(|seq| submit(&c, "vol", seq, round * 100 + seq, UpdateKind::Write(b"abc"), false)).collect();
        for rx in rxs {
            wait(rx).unwrap();
        }
    }
    let (recs, stop) = read_all(&path);
    assert_eq!(stop, None);
    let sessions: Vec<u64> = recs.iter().filter(|r| r.kind == "session").map(|r| r.seq).collect();
    assert_eq!(sessions, [1, 2, 3]);
    let seqs: Vec<(u64, u64)> = recs.iter().filter(|r| r.kind == "write").map(|r| (r.seq, r.a)).collect();
    let want: Vec<(u64, u64)> = (0..3u64).flat_map(|r| (1..=5).map(move |s| (r * 5 + s, r * 100 + s))).collect();
    assert_eq!(seqs, want);
}

fn write_some(path: &Path, n: u64) {
    let c = open(&cfg(path)).unwrap();
    let rxs: Vec<_> =
        (1..=n).map(|seq| submit(&c, "vol", seq, seq * 4096, UpdateKind::Write(&block(seq, 1000)), false)).collect();
    for rx in rxs {
        wait(rx).unwrap();
    }
}

#[test]
fn torn_tail_is_cut_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    write_some(&path, 10);
    let good = std::fs::read(&path).unwrap();
    // A record cut short, as a crash in the middle of an append leaves it.
    let mut torn = Vec::new();
    let rec = Record { volume: "vol", seq: 11, body: Body::Write { offset: 0, data: &[1; 3000], fua: false } };
    encode_record(&rec, &mut torn).unwrap();
    let mut bytes = good.clone();
    bytes.extend_from_slice(&torn[..1777]);
    std::fs::write(&path, &bytes).unwrap();
    let c = open(&cfg(&path)).unwrap();
    wait(submit(&c, "vol", 1, 0, UpdateKind::Write(b"after"), false)).unwrap();
    drop(c);
    let after = std::fs::read(&path).unwrap();
    assert_eq!(&after[..good.len()], &good[..], "the good records are kept as they were");
    let (recs, stop) = read_all(&path);
    assert_eq!(stop, None);
    let tail: Vec<(&str, u64)> = recs[11..].iter().map(|r| (r.kind, r.seq)).collect();
    assert_eq!(tail, [("session", 2), ("write", 11)]);
    assert!(!dir.path().join(format!("j.damaged-{}", good.len())).exists());
}

#[test]
fn damage_in_the_middle_is_saved_aside_then_cut() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    write_some(&path, 10);
    let mut bytes = std::fs::read(&path).unwrap();
    let (recs, _) = read_bytes(&bytes);
    let bad_at = recs[4].at as usize;
    bytes[bad_at + 500] ^= 0x08;
    std::fs::write(&path, &bytes).unwrap();
    let c = open(&cfg(&path)).unwrap();
    // Sequence numbers continue after the highest one in the file, salvaged ones included.
    wait(submit(&c, "vol", 1, 0, UpdateKind::Write(b"x"), false)).unwrap();
    drop(c);
    let side = dir.path().join(format!("j.damaged-{bad_at}"));
    assert_eq!(std::fs::read(&side).unwrap(), &bytes[bad_at..]);
    let (recs, stop) = read_all(&path);
    assert_eq!(stop, None);
    let kinds: Vec<(&str, u64)> = recs.iter().map(|r| (r.kind, r.seq)).collect();
    assert_eq!(kinds, [("session", 1), ("write", 1), ("write", 2), ("write", 3), ("session", 2), ("write", 11)]);
}

#[test]
fn refuses_other_files_and_a_second_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "dear diary, today I was not a journal of block updates").unwrap();
    let e = open(&cfg(&path)).err().unwrap();
    assert!(e.contains("not a gateway journal"), "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "dear diary, today I was not a journal of block updates");

    let short = dir.path().join("short");
    std::fs::write(&short, b"hi").unwrap();
    let e = open(&cfg(&short)).err().unwrap();
    assert!(e.contains("not a gateway journal"), "{e}");

    let mut v2 = encode_file_header();
    v2[8] = 9;
    let crc = crc32c::crc32c(&v2[..28]);
    v2[28..].copy_from_slice(&crc.to_le_bytes());
    let future = dir.path().join("future");
    std::fs::write(&future, v2).unwrap();
    let e = open(&cfg(&future)).err().unwrap();
    assert!(e.contains("version 9 is not supported"), "{e}");

    let j = dir.path().join("j");
    let first = open(&cfg(&j)).unwrap();
    let e = open(&cfg(&j)).err().unwrap();
    assert!(e.contains("in use"), "{e}");
    drop(first);
    open(&cfg(&j)).unwrap();

    // A header cut short by a crash at creation is started anew.
    let fresh = dir.path().join("fresh");
    std::fs::write(&fresh, &encode_file_header()[..10]).unwrap();
    drop(open(&cfg(&fresh)).unwrap());
    let (recs, stop) = read_all(&fresh);
    assert_eq!((recs.len(), stop), (1, None));
}

#[test]
fn missing_directory_is_an_open_error() {
    let e = open(&json!({"path": "/nonexistent-dir-for-journal-test/j"})).err().unwrap();
    assert!(e.contains("cannot open"), "{e}");
}

unsafe extern "C" fn verdict(ctx: *mut std::ffi::c_void, status: i32, msg: GwStr) {
    // SAFETY: ctx is the sender boxed in `completion`, consumed exactly once here; the message
    // is valid for this call.
    let (tx, msg) = unsafe { (Box::from_raw(ctx as *mut mpsc::Sender<(i32, String)>), msg.as_str().to_owned()) };
    let _ = tx.send((status, msg));
}

/// A completion as the host makes them, reporting (status, message).
fn completion() -> (Completion, mpsc::Receiver<(i32, String)>) {
    let (tx, rx) = mpsc::channel();
    let raw = gateway_sdk::abi::GwCompletion {
        ctx: Box::into_raw(Box::new(tx)) as *mut std::ffi::c_void,
        complete: Some(verdict),
    };
    // SAFETY: a fresh completion whose callback consumes its context once.
    (unsafe { Completion::from_raw(raw) }, rx)
}

#[test]
fn an_io_error_fails_this_and_every_later_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    std::fs::write(&path, encode_file_header()).unwrap();
    // A read-only descriptor: every write fails (EBADF), as a full or failing disk would.
    let file = File::open(&path).unwrap();
    let shared = Arc::new(Shared { host: Host::standalone(), path: path.clone(), failed: OnceLock::new() });
    let (tx, rx) = mpsc::channel();
    let writer = Writer {
        shared: shared.clone(),
        file,
        pos: FILE_HEADER_LEN as u64,
        dirty: false,
        mode: SyncMode::Always,
        max_batch: 16,
        rx,
        buf: Vec::new(),
    };
    let t = std::thread::spawn(move || writer.run());
    let mut verdicts = Vec::new();
    for seq in 1..=3u64 {
        let mut bytes = Vec::new();
        let rec = Record { volume: "v", seq, body: Body::Write { offset: 0, data: b"data", fua: false } };
        encode_record(&rec, &mut bytes).unwrap();
        let (done, rx) = completion();
        tx.send(Msg::Record { bytes, done: Some(done), fua: false }).unwrap();
        verdicts.push(rx);
    }
    let (done, flushed) = completion();
    tx.send(Msg::Flush { done }).unwrap();
    verdicts.push(flushed);
    for rx in verdicts {
        let (status, msg) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_ne!(status, GW_OK);
        assert!(
            msg.contains("journal") && (msg.contains("write at offset 32") || msg.contains("failed earlier")),
            "{msg}"
        );
    }
    assert!(shared.failed.get().is_some());
    tx.send(Msg::Shutdown).unwrap();
    t.join().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), encode_file_header(), "nothing was appended");
}

/// A model of the image: apply the same updates to a byte vector.
fn model_apply(img: &mut Vec<u8>, offset: u64, kind: &UpdateKind<'_>) {
    let (off, len) = (
        offset as usize,
        match kind {
            UpdateKind::Write(d) => d.len(),
            UpdateKind::Trim { length } | UpdateKind::Zero { length, .. } => *length as usize,
        },
    );
    if img.len() < off + len {
        img.resize(off + len, 0);
    }
    match kind {
        UpdateKind::Write(d) => img[off..off + len].copy_from_slice(d),
        _ => img[off..off + len].fill(0),
    }
}

#[test]
fn replay_rebuilds_the_image_and_honours_upto_and_volume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let c = open(&cfg(&path)).unwrap();
    let mut model = vec![0u8; 1 << 20];
    let mut at_50 = Vec::new();
    let mut rxs = Vec::new();
    for seq in 1..=120u64 {
        let data = block(seq, 3000 + (seq as usize * 13) % 5000);
        let off = (seq * 7919) % ((1 << 20) - 8192);
        let kind = match seq % 9 {
            4 => UpdateKind::Trim { length: 5000 },
            8 => UpdateKind::Zero { length: 4096 * 3, may_trim: false },
            _ => UpdateKind::Write(&data),
        };
        model_apply(&mut model, off, &kind);
        rxs.push(submit(&c, "vol", seq, off, kind, false));
        rxs.push(submit(&c, "other", seq, 0, UpdateKind::Write(b"other volume"), false));
        if seq == 50 {
            at_50 = model.clone();
        }
    }
    for rx in rxs {
        wait(rx).unwrap();
    }
    drop(c);
    let zero_image = |name: &str| {
        let p = dir.path().join(name);
        std::fs::File::create(&p).unwrap().set_len(1 << 20).unwrap();
        p
    };
    let img = zero_image("all.img");
    let opts = Options { volume: Some("vol".into()), upto: None };
    let s = replay(&path, &img, &opts).unwrap();
    assert_eq!(std::fs::read(&img).unwrap(), model);
    let v = &s.volumes["vol"];
    assert_eq!((v.applied, v.records, v.last_applied_seq, v.out_of_order), (120, 120, Some(120), 0));
    assert_eq!(v.trims, 13);
    assert!(s.tail.is_none());
    assert_eq!(s.volumes["other"].applied, 0);

    let img = zero_image("50.img");
    let s = replay(&path, &img, &Options { volume: Some("vol".into()), upto: Some(50) }).unwrap();
    assert_eq!(std::fs::read(&img).unwrap(), at_50);
    assert_eq!(s.volumes["vol"].last_applied_seq, Some(50));

    let e = replay(&path, &zero_image("x.img"), &Options::default()).unwrap_err();
    assert!(e.contains("several volumes (other, vol)"), "{e}");

    let other = dir.path().join("other.img");
    replay(&path, &other, &Options { volume: Some("other".into()), upto: None }).unwrap();
    assert_eq!(std::fs::read(&other).unwrap(), b"other volume");

    let mut out = Vec::new();
    let d = dump(&path, &mut out, false).unwrap();
    assert_eq!(d, replay::DumpSummary { records: 241, damaged: 0 });
    let text = String::from_utf8(out).unwrap();
    assert!(text.lines().any(|l| l.contains("trim") && l.contains(" vol ")), "{text}");

    let e = replay(&dir.path().join("all.img"), &zero_image("y.img"), &Options::default()).unwrap_err();
    assert!(e.contains("not a gateway journal"), "{e}");
}

#[test]
fn replay_stops_at_damage_and_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    write_some(&path, 20);
    let mut bytes = std::fs::read(&path).unwrap();
    let (recs, _) = read_bytes(&bytes);
    let victim = &recs[12]; // seq 12
    assert_eq!(victim.seq, 12);
    bytes[victim.at as usize + 300] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let img = dir.path().join("img");
    let s = replay(&path, &img, &Options::default()).unwrap();
    let v = &s.volumes["vol"];
    assert_eq!((v.applied, v.last_applied_seq), (11, Some(11)));
    let t = s.tail.clone().unwrap();
    assert_eq!(t.offset, victim.at);
    assert!(t.reason.contains("checksum mismatch"), "{t:?}");
    assert_eq!(t.next_valid, Some(recs[13].at));
    assert!(!t.truncated);
    let j = s.to_json();
    assert_eq!(j["tail"]["offset"], victim.at);
    assert!(s.to_text().contains("damaged journal"), "{}", s.to_text());
    let mut out = Vec::new();
    let d = dump(&path, &mut out, true).unwrap();
    assert_eq!(d, replay::DumpSummary { records: 20, damaged: 1 });
    let lines: Vec<Value> =
        String::from_utf8(out).unwrap().lines().map(|l| gateway_sdk::serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[12]["crc_ok"], false);
    assert_eq!(lines[12]["at"], victim.at);
    assert_eq!(lines[13]["seq"], 13);

    // A torn tail instead: cut in the middle of the last record.
    let path2 = dir.path().join("j2");
    write_some(&path2, 5);
    let full = std::fs::read(&path2).unwrap();
    std::fs::write(&path2, &full[..full.len() - 10]).unwrap();
    let s = replay(&path2, &dir.path().join("img2"), &Options::default()).unwrap();
    let t = s.tail.unwrap();
    assert!(t.truncated && t.next_valid.is_none(), "{t:?}");
    assert_eq!(s.volumes["vol"].applied, 4);
}

// ---- properties of the format ----

#[derive(Debug, Clone)]
enum Gen {
    Write(u64, Vec<u8>, bool),
    Trim(u64, u64, bool),
    Zero(u64, u64, bool, bool),
    Boundary(u64),
    Session(u64, u64),
}

fn gen_record() -> impl Strategy<Value = (usize, u64, Gen)> {
    let body = prop_oneof![
        4 => (0u64..1 << 50, proptest::collection::vec(any::<u8>(), 0..400), any::<bool>())
            .prop_map(|(o, d, f)| Gen::Write(o, d, f)),
        1 => (0u64..1 << 50, 0u64..1 << 40, any::<bool>()).prop_map(|(o, l, f)| Gen::Trim(o, l, f)),
        1 => (0u64..1 << 50, 0u64..1 << 40, any::<bool>(), any::<bool>()).prop_map(|(o, l, m, f)| Gen::Zero(o, l, m, f)),
        1 => any::<u64>().prop_map(Gen::Boundary),
        1 => (any::<u64>(), any::<u64>()).prop_map(|(t, p)| Gen::Session(t, p)),
    ];
    (0usize..3, any::<u64>(), body)
}

const VOLUMES: [&str; 3] = ["vol", "b", "ボリューム"];

fn as_record(g: &(usize, u64, Gen)) -> Record<'_> {
    let (v, seq, body) = g;
    let volume = VOLUMES[*v];
    match body {
        Gen::Write(o, d, f) => Record { volume, seq: *seq, body: Body::Write { offset: *o, data: d, fua: *f } },
        Gen::Trim(o, l, f) => Record { volume, seq: *seq, body: Body::Trim { offset: *o, length: *l, fua: *f } },
        Gen::Zero(o, l, m, f) => {
            Record { volume, seq: *seq, body: Body::Zero { offset: *o, length: *l, may_trim: *m, fua: *f } }
        }
        Gen::Boundary(s) => Record { volume, seq: *seq, body: Body::Boundary { set_id: *s } },
        Gen::Session(t, p) => Record { volume: "", seq: *seq, body: Body::Session { started_unix: *t, pid: *p } },
    }
}

/// A journal of these records, and the offset where each starts.
fn build(gens: &[(usize, u64, Gen)]) -> (Vec<u8>, Vec<usize>) {
    let mut b = encode_file_header().to_vec();
    let mut starts = Vec::new();
    for g in gens {
        starts.push(b.len());
        encode_record(&as_record(g), &mut b).unwrap();
    }
    (b, starts)
}

/// Scan `bytes`; every record returned must equal the one encoded at that offset.
fn scan_checked(bytes: &[u8], gens: &[(usize, u64, Gen)], starts: &[usize]) -> (usize, Option<Stop>) {
    let (mut s, _) = Scanner::open(bytes).unwrap();
    let mut n = 0;
    loop {
        match s.next_record().unwrap() {
            Next::Record(at, r) => {
                assert!(n < gens.len(), "more records than were written");
                assert_eq!(at as usize, starts[n]);
                assert_eq!(r, as_record(&gens[n]), "record {n} read back differently");
                n += 1;
            }
            Next::End => return (n, None),
            Next::Stop(st) => return (n, Some(st)),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(gens in proptest::collection::vec(gen_record(), 0..20)) {
        let (bytes, starts) = build(&gens);
        let (n, stop) = scan_checked(&bytes, &gens, &starts);
        prop_assert_eq!(n, gens.len());
        prop_assert_eq!(stop, None);
    }

    #[test]
    fn any_truncation_is_detected(gens in proptest::collection::vec(gen_record(), 1..12), cut in any::<prop::sample::Index>()) {
        let (bytes, starts) = build(&gens);
        let cut = FILE_HEADER_LEN + cut.index(bytes.len() - FILE_HEADER_LEN);
        let (n, stop) = scan_checked(&bytes[..cut], &gens, &starts);
        // Exactly the records wholly before the cut.
        let whole = starts.iter().zip(starts.iter().skip(1).chain([&bytes.len()])).filter(|(_, &end)| end <= cut).count();
        prop_assert_eq!(n, whole);
        if starts.contains(&cut) {
            prop_assert_eq!(stop, None);
        } else {
            let stop = stop.expect("a cut inside a record is reported");
            prop_assert_eq!(stop.offset as usize, starts[whole]);
            prop_assert!(stop.at_eof(), "{:?}", stop);
        }
    }

    #[test]
    fn any_single_bit_flip_is_detected(gens in proptest::collection::vec(gen_record(), 1..12), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (mut bytes, starts) = build(&gens);
        let pos = FILE_HEADER_LEN + at.index(bytes.len() - FILE_HEADER_LEN);
        bytes[pos] ^= 1 << bit;
        let victim = starts.iter().rposition(|&s| s <= pos).unwrap();
        let (n, stop) = scan_checked(&bytes, &gens, &starts);
        prop_assert_eq!(n, victim);
        let stop = stop.expect("damage is reported");
        prop_assert_eq!(stop.offset as usize, starts[victim]);
        prop_assert!(!stop.at_eof(), "a flipped bit is damage, never a truncation: {:?}", stop);
    }

    #[test]
    fn flip_in_the_last_record_keeps_all_before(gens in proptest::collection::vec(gen_record(), 1..8), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (mut bytes, starts) = build(&gens);
        let last = *starts.last().unwrap();
        let pos = last + at.index(bytes.len() - last);
        bytes[pos] ^= 1 << bit;
        let (n, stop) = scan_checked(&bytes, &gens, &starts);
        prop_assert_eq!(n, gens.len() - 1);
        prop_assert_eq!(stop.map(|s| s.offset as usize), Some(last));
    }

    #[test]
    fn header_damage_is_an_error(at in 0usize..FILE_HEADER_LEN, bit in 0u8..8) {
        let mut bytes = encode_file_header().to_vec();
        bytes[at] ^= 1 << bit;
        prop_assert!(Scanner::open(&bytes[..]).is_err());
    }

    #[test]
    fn garbage_never_panics_and_anything_accepted_is_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..200), magic in any::<bool>()) {
        let mut b = bytes;
        if magic && b.len() >= 4 {
            b[..4].copy_from_slice(b"GWJR");
        }
        if let Ok((r, n)) = parse_record(&b) {
            let mut again = Vec::new();
            encode_record(&r, &mut again).unwrap();
            prop_assert_eq!(&again[..], &b[..n]);
        }
        let _ = crate::format::find_next_record(&b, 0);
        if let Ok((mut s, _)) = Scanner::open(&b[..]) {
            while let Next::Record(..) = s.next_record().unwrap() {}
        }
    }
}

#[test]
fn truncation_errors_say_truncated() {
    let gens = vec![(0, 1, Gen::Write(0, vec![1, 2, 3], false))];
    let (bytes, _) = build(&gens);
    for cut in FILE_HEADER_LEN + 1..bytes.len() {
        let (n, stop) = scan_checked(&bytes[..cut], &gens, &[FILE_HEADER_LEN]);
        assert_eq!(n, 0);
        assert!(matches!(stop.unwrap().error, ParseError::Truncated { .. }));
    }
}
