//! The journal backup component in the real daemon, and its replay tool.
//!
//! * `kill -9` at a random moment while a libnbd client (8 writes in flight, random 4 KiB
//!   aligned blocks and contents, some FUA) records each write before sending it and each
//!   acknowledgement as it arrives: replaying the journal onto a zero image gives, for every
//!   block, the content of its last acknowledged write (or of a write that was in flight at the
//!   kill, which may or may not have made it). Several seeds, `sync = "always"` and `"batch"`.
//!   The restarted daemon reopens the journal (cutting a torn tail) and appends.
//! * After clean stops (two sessions, with writes, FUA writes, trims, zeroes and flushes),
//!   replaying the whole journal gives an image byte-identical to the export's backing file,
//!   and `--upto` the last sequence number of the first session gives the file as it was then.
//! * A byte flipped in the middle of the journal: replay stops at that record, reports it
//!   (offset, checksum, the next valid record) and has applied exactly everything before it;
//!   the daemon restarted on it saves the damaged part aside and truncates.
//! * With the journal attached, qemu-io pattern writes and reads work, `nbdinfo` shows the
//!   same as for an export without it, and the journal replays to the backing file.
//! * Two exports naming one journal file: the daemon refuses to start, saying why.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::sites::Expect;
use gateway_tests::{assert_same, gateway_bin, python, require_tool, run, Gateway};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const SIZE: u64 = 64 * MIB;
const BS: usize = 4096;

fn config(dir: &Path, component_extra: &str) -> String {
    format!(
        "[[export]]\nname = \"vol\"\nsize = \"64MiB\"\n[export.backend]\ntype = \"file\"\npath = \"vol.img\"\n\
         [[export.component]]\nplugin = \"journal\"\nconfig = {{ path = \"{}\"{component_extra} }}\n",
        journal_path(dir).display()
    )
}

fn journal_path(dir: &Path) -> PathBuf {
    dir.join("vol.journal")
}

fn replay_bin() -> PathBuf {
    let p = gateway_bin().with_file_name("journal-replay");
    assert!(p.exists(), "{} is missing: run `cargo build --workspace` first", p.display());
    p
}

fn zero_image(path: &Path) {
    std::fs::File::create(path).unwrap().set_len(SIZE).unwrap();
}

/// `journal-replay JOURNAL IMAGE ARGS --json`, parsed.
fn replay(journal: &Path, image: &Path, args: &[&str]) -> Value {
    let out = run(Command::new(replay_bin()).arg(journal).arg(image).args(args).arg("--json")).unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `journal-replay --dump --json`, one value per record (or damaged spot).
fn dump(journal: &Path) -> Vec<Value> {
    let out = run(Command::new(replay_bin()).arg("--dump").arg(journal).arg("--json")).unwrap();
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// A small deterministic generator for test choices (not the data: Python makes that).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Random 1..=4 block writes at random 4 KiB aligned blocks, up to 8 in flight, never two in
/// flight on one block. Logs `P id block sha256...` before sending a write and `A id` once it
/// is acknowledged; each line reaches the file as it is written (line buffering).
const WRITER: &str = r#"
import nbd, sys, random, hashlib, time
uri, seed, secs, out_path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
BS = 4096
rng = random.Random(seed)
out = open(out_path, "w", buffering=1)
h = nbd.NBD()
h.connect_uri(uri)
nblocks = h.get_size() // BS
fua_ok = h.can_fua()
inflight = {}
busy = set()
wid = 0

def reap():
    for cookie in list(inflight):
        try:
            done = h.aio_command_completed(cookie)
        except nbd.Error:
            w, blocks, _ = inflight.pop(cookie)
            busy.difference_update(blocks)
            continue
        if done:
            w, blocks, _ = inflight.pop(cookie)
            busy.difference_update(blocks)
            out.write("A %d\n" % w)

deadline = time.monotonic() + secs
try:
    while time.monotonic() < deadline:
        while len(inflight) < 8:
            n = rng.randint(1, 4)
            b = rng.randrange(nblocks - n + 1)
            blocks = range(b, b + n)
            if busy.intersection(blocks):
                continue
            data = rng.randbytes(n * BS)
            wid += 1
            sums = " ".join(hashlib.sha256(data[i * BS:(i + 1) * BS]).hexdigest() for i in range(n))
            out.write("P %d %d %s\n" % (wid, b, sums))
            buf = nbd.Buffer.from_bytearray(data)
            flags = nbd.CMD_FLAG_FUA if fua_ok and rng.random() < 0.05 else 0
            cookie = h.aio_pwrite(buf, b * BS, flags=flags)
            inflight[cookie] = (wid, blocks, buf)
            busy.update(blocks)
        h.poll(-1)
        reap()
    while inflight:
        h.poll(-1)
        reap()
    out.write("DONE\n")
except nbd.Error as e:
    try:
        reap()
    except Exception:
        pass
    out.write("E %s\n" % str(e).replace("\n", " "))
"#;

/// sha256 of every 4 KiB block of a file, one hex digest per line.
const HASHES: &str = r#"
import sys, hashlib
with open(sys.argv[1], "rb") as f:
    while True:
        b = f.read(4096)
        if not b:
            break
        print(hashlib.sha256(b).hexdigest())
"#;

fn block_hashes(image: &Path) -> Vec<String> {
    let out = python(HASHES, &[image.to_str().unwrap()], Duration::from_secs(60)).unwrap();
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

fn count_acks(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.starts_with("A ")).count()
}

/// One crash: write, kill -9 at a moment chosen by `seed`, replay, check every block.
fn crash_round(seed: u64, sync: &str) {
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(", sync = \"{sync}\"");
    let mut g = Gateway::start_in(dir.path(), &config(dir.path(), &extra)).unwrap();
    let log = dir.path().join("writer.log");
    let mut writer = Command::new("timeout")
        .args(["-k", "5", "60", "/usr/bin/python3", "-c", WRITER])
        .args([&g.uri("vol"), &seed.to_string(), "40", log.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rng = Lcg(seed);
    let min_acks = 20 + rng.next(400) as usize;
    let t0 = Instant::now();
    while count_acks(&log) < min_acks {
        if let Ok(Some(status)) = writer.try_wait() {
            panic!(
                "seed {seed}: writer exited early ({status}); log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "seed {seed}: writer made no progress; daemon log:\n{}",
            g.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(rng.next(300)));
    g.kill9();
    let out = writer.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("DONE"),
        "seed {seed}: the writer finished before the kill\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expect = Expect::parse(&text);
    assert!(expect.acked_writes >= min_acks, "seed {seed}: {} acks", expect.acked_writes);

    let image = dir.path().join("replayed.img");
    zero_image(&image);
    let s = replay(&journal_path(dir.path()), &image, &[]);
    // A kill in the middle of an append may leave a torn record; never damage before the end.
    let tail = &s["tail"];
    assert!(
        tail["clean"] == true || (tail["truncated"] == true && tail["next_valid_offset"].is_null()),
        "seed {seed}: {s}"
    );
    let applied = s["volumes"]["vol"]["applied"].as_u64().unwrap() as usize;
    assert!(
        applied >= expect.acked_writes,
        "seed {seed}: applied {applied} < acknowledged {}: {s}",
        expect.acked_writes
    );
    assert!(applied <= expect.sent_writes, "seed {seed}: applied {applied} > sent {}: {s}", expect.sent_writes);

    let (bad, in_flight_landed) = check_blocks(&expect, &block_hashes(&image));
    if let Some(b) = bad.first() {
        panic!(
            "seed {seed} ({sync}): {} block(s), the first {b} (offset {}), of the replayed image hold neither their \
             last acknowledged content nor an in-flight write's; acknowledged writes {}, replay summary {s}",
            bad.len(),
            b * BS as u64,
            expect.acked_writes
        );
    }
    if seed == 1 {
        // The check has teeth: a replay that stops halfway misses acknowledged writes.
        let half = dir.path().join("half.img");
        zero_image(&half);
        let upto = (applied / 2).to_string();
        replay(&journal_path(dir.path()), &half, &["--upto", &upto]);
        let (bad, _) = check_blocks(&expect, &block_hashes(&half));
        assert!(!bad.is_empty(), "seed {seed}: a half replay passed the check");
    }
    eprintln!(
        "seed {seed} ({sync}): {} writes acknowledged, {} sent, {applied} replayed, {in_flight_landed} in-flight blocks landed, \
         tail {tail}",
        expect.acked_writes, expect.sent_writes
    );

    // The daemon reopens the journal after the crash (cutting a torn tail) and appends to it.
    g.restart().unwrap();
    let log_text = g.log();
    assert!(log_text.contains("session 2"), "{log_text}");
    if tail["truncated"] == true {
        assert!(log_text.contains("torn tail"), "{log_text}");
    }
    let q = Command::new("qemu-io").args(["-f", "raw", &g.uri("vol"), "-c", "write -P 0x5a 0 64k"]).output().unwrap();
    assert!(q.status.success(), "{q:?}");
    g.stop().unwrap();
    let again = dir.path().join("again.img");
    zero_image(&again);
    let s2 = replay(&journal_path(dir.path()), &again, &[]);
    assert_eq!(s2["tail"]["clean"], true, "{s2}");
    assert_eq!(s2["sessions"], 2, "{s2}");
    assert_eq!(s2["volumes"]["vol"]["applied"].as_u64().unwrap() as usize, applied + 1, "{s2}");
}

/// Blocks whose content is neither the last acknowledged (or zeroes) nor an in-flight write's,
/// and how many blocks hold an in-flight write's content.
fn check_blocks(expect: &Expect, got: &[String]) -> (Vec<u64>, usize) {
    assert_eq!(got.len(), SIZE as usize / BS);
    expect.check(got, &[])
}

#[test]
fn kill9_then_replay_holds_every_acknowledged_write() {
    require_tool("qemu-io");
    let t0 = Instant::now();
    for seed in 1..=4 {
        crash_round(seed, "always");
    }
    crash_round(5, "batch");
    eprintln!("5 crash rounds in {:?}", t0.elapsed());
}

/// Writes, FUA writes, trims, zeroes (with and without holes) and flushes, one at a time.
const MIXED: &str = r#"
import nbd, sys, random
uri, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
ops = 0
for i in range(count):
    r = rng.random()
    length = rng.choice([1, 512, 4096, 5000, 65536, 300000])
    off = rng.randrange(size - length)
    if r < 0.7:
        flags = nbd.CMD_FLAG_FUA if h.can_fua() and rng.random() < 0.2 else 0
        h.pwrite(rng.randbytes(length), off, flags)
    elif r < 0.8 and h.can_trim():
        h.trim(length, off)
    elif r < 0.9 and h.can_zero():
        h.zero(length, off, rng.choice([0, nbd.CMD_FLAG_NO_HOLE]))
    elif r < 0.95:
        h.flush()
        continue
    else:
        continue
    ops += 1
h.flush()
h.shutdown()
print(ops)
"#;

fn mixed(g: &Gateway, seed: u64, count: u64) -> u64 {
    let out = python(MIXED, &[&g.uri("vol"), &seed.to_string(), &count.to_string()], Duration::from_secs(120)).unwrap();
    String::from_utf8(out.stdout).unwrap().trim().parse().unwrap()
}

#[test]
fn clean_stop_replay_is_byte_identical_to_the_backing_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_in(dir.path(), &config(dir.path(), "")).unwrap();
    let ops1 = mixed(&g, 11, 400);
    let status = g.stop().unwrap();
    assert!(status.success(), "{}", g.log());
    let first = std::fs::read(dir.path().join("vol.img")).unwrap();
    g.restart().unwrap();
    let ops2 = mixed(&g, 12, 300);
    let status = g.stop().unwrap();
    assert!(status.success(), "{}", g.log());
    let backing = std::fs::read(dir.path().join("vol.img")).unwrap();
    assert_eq!(backing.len() as u64, SIZE);

    let journal = journal_path(dir.path());
    let image = dir.path().join("replayed.img");
    zero_image(&image);
    let s = replay(&journal, &image, &["--volume", "vol"]);
    assert_eq!(s["tail"]["clean"], true, "{s}");
    assert_eq!(s["sessions"], 2, "{s}");
    let v = &s["volumes"]["vol"];
    assert_eq!(v["applied"], ops1 + ops2, "{s}");
    assert_eq!(v["last_applied_seq"], ops1 + ops2, "sequence numbers continue across restarts: {s}");
    assert_eq!(v["out_of_order"], 0, "{s}");
    assert!(v["trims"].as_u64().unwrap() > 0 && v["zeroes"].as_u64().unwrap() > 0, "{s}");
    assert_same("replay of the whole journal vs the backing file", &std::fs::read(&image).unwrap(), &backing);

    // Up to the end of the first session: the backing file as the first stop left it.
    let upto = dir.path().join("upto.img");
    zero_image(&upto);
    let s = replay(&journal, &upto, &["--upto", &ops1.to_string()]);
    assert_eq!(s["volumes"]["vol"]["applied"], ops1, "{s}");
    assert_same("replay --upto the first session vs the file after it", &std::fs::read(&upto).unwrap(), &first);

    // The listing shows every record: two sessions and the updates, all checksums good.
    let d = dump(&journal);
    assert_eq!(d.len() as u64, 2 + ops1 + ops2);
    assert!(d.iter().all(|r| r["crc_ok"] == true));
    assert_eq!(d.iter().filter(|r| r["kind"] == "session").count(), 2);
    assert!(d.iter().any(|r| r["kind"] == "write" && r["fua"] == true), "no FUA write recorded");
}

#[test]
fn flipped_byte_stops_replay_at_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_in(dir.path(), &config(dir.path(), "")).unwrap();
    let ops = mixed(&g, 21, 300);
    g.stop().unwrap();
    let journal = journal_path(dir.path());
    let records = dump(&journal);
    let len = std::fs::metadata(&journal).unwrap().len();
    // The write record holding the middle of the file (or the first write after it).
    let ends: Vec<u64> = records.iter().skip(1).map(|r| r["at"].as_u64().unwrap()).chain([len]).collect();
    let (i, victim) = records
        .iter()
        .enumerate()
        .find(|(i, r)| r["kind"] == "write" && ends[*i] > len / 2 && ends[*i] - r["at"].as_u64().unwrap() > 100)
        .unwrap();
    let at = victim["at"].as_u64().unwrap();
    let flip = at + (ends[i] - at) / 2;
    let seq = victim["seq"].as_u64().unwrap();
    let updates_before = records[..i].iter().filter(|r| r["kind"] != "session" && r["kind"] != "boundary").count();

    let pristine = dir.path().join("pristine.journal");
    std::fs::copy(&journal, &pristine).unwrap();
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[flip as usize] ^= 0x20;
    std::fs::write(&journal, &bytes).unwrap();

    let damaged = dir.path().join("damaged.img");
    zero_image(&damaged);
    let s = replay(&journal, &damaged, &[]);
    let tail = &s["tail"];
    assert_eq!(tail["clean"], false, "{s}");
    assert_eq!(tail["offset"], at, "{s}");
    assert!(tail["reason"].as_str().unwrap().contains("checksum mismatch"), "{s}");
    assert_eq!(tail["next_valid_offset"], ends[i], "{s}");
    assert_eq!(tail["truncated"], false, "{s}");
    assert_eq!(s["volumes"]["vol"]["applied"], updates_before as u64, "{s}");
    assert_eq!(s["volumes"]["vol"]["last_applied_seq"], seq - 1, "{s}");

    // Exactly what the undamaged journal gives up to the record before.
    let reference = dir.path().join("reference.img");
    zero_image(&reference);
    replay(&pristine, &reference, &["--upto", &(seq - 1).to_string()]);
    assert_same(
        "damaged replay vs replay --upto",
        &std::fs::read(&damaged).unwrap(),
        &std::fs::read(&reference).unwrap(),
    );

    // The text summary and the listing say the same.
    let out = run(Command::new(replay_bin()).arg(&journal).arg(dir.path().join("t.img"))).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("stopped at offset {at}")) && text.contains("damaged journal"), "{text}");
    let listing = run(Command::new(replay_bin()).arg("--dump").arg(&journal)).unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains(&format!("{at} BAD: record checksum mismatch")), "{listing}");
    assert!(listing.contains(&format!("next valid record at offset {}", ends[i])), "{listing}");
    assert_eq!(dump(&journal).len(), records.len(), "the listing resumes after the damage");

    // The daemon restarted on the damaged journal keeps the damaged part aside and appends.
    g.restart().unwrap();
    assert!(g.log().contains("damaged record at offset"), "{}", g.log());
    g.stop().unwrap();
    let side = std::fs::read(dir.path().join(format!("vol.journal.damaged-{at}"))).unwrap();
    assert_eq!(side, &bytes[at as usize..]);
    assert_eq!(ops as usize + 1, records.len());
}

fn info(uri: &str) -> Value {
    let out = run(Command::new("nbdinfo").args(["--json", "--no-content", uri])).unwrap();
    let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut e = v["exports"][0].take();
    let o = e.as_object_mut().unwrap();
    o.remove("export-name");
    o.remove("uri");
    e
}

#[test]
fn qemu_io_and_nbdinfo_with_the_journal() {
    require_tool("qemu-io");
    require_tool("nbdinfo");
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "{}\n[[export]]\nname = \"plain\"\nsize = \"64MiB\"\n[export.backend]\ntype = \"file\"\npath = \"plain.img\"\n",
        config(dir.path(), "")
    );
    let mut g = Gateway::start_in(dir.path(), &cfg).unwrap();
    let with = info(&g.uri("vol"));
    let without = info(&g.uri("plain"));
    assert_eq!(with, without, "nbdinfo differs with the journal attached");
    assert_eq!(with["export-size"], SIZE);

    let writes = [
        "write -P 0xab 0 1M",
        "write -f -P 0xcd 1M 1M",
        "write -z 2M 1M",
        "write -z -u 3M 1M",
        "write -P 0x77 4M 1M",
        "discard 4M 512k",
        "write -P 0x11 5M 64k",
        "write -f -P 0x22 6143k 2k",
        "flush",
    ];
    let reads = [
        "read -P 0xab 0 1M",
        "read -P 0xcd 1M 1M",
        "read -P 0 2M 2M",
        "read -P 0 4M 512k",
        "read -P 0x77 4608k 512k",
        "read -P 0x11 5M 64k",
        "read -P 0x22 6143k 2k",
        "read -P 0 60M 4M",
    ];
    for (what, cmds) in [("writes", &writes[..]), ("reads", &reads[..])] {
        let mut c = Command::new("qemu-io");
        // Writeback cache mode: only `write -f` asks for FUA (writethrough sets it on all).
        c.args(["-f", "raw", "-t", "writeback", &g.uri("vol")]);
        for cmd in cmds {
            c.arg("-c").arg(cmd);
        }
        let out = run(&mut c).unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        for bad in ["Pattern verification failed", "failed:", "error", "Error"] {
            assert!(!text.contains(bad), "qemu-io {what}: `{bad}`:\n{text}");
        }
    }
    assert_eq!(info(&g.uri("vol")), without, "nbdinfo after writes");
    g.stop().unwrap();

    let image = dir.path().join("replayed.img");
    zero_image(&image);
    let s = replay(&journal_path(dir.path()), &image, &[]);
    assert_eq!(s["volumes"]["vol"]["applied"], 8, "{s}");
    assert_same(
        "replay vs backing file",
        &std::fs::read(&image).unwrap(),
        &std::fs::read(dir.path().join("vol.img")).unwrap(),
    );
    let fua: Vec<u64> = dump(&journal_path(dir.path()))
        .iter()
        .filter(|r| r["fua"] == true)
        .map(|r| r["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(fua, [MIB, 6143 << 10], "FUA writes are marked in the journal");
}

#[test]
fn one_journal_file_cannot_serve_two_exports() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal_path(dir.path());
    let cfg = format!(
        "{}\n[[export]]\nname = \"two\"\nsize = \"1MiB\"\n[export.backend]\ntype = \"memory\"\n\
         [[export.component]]\nplugin = \"journal\"\nconfig = {{ path = \"{}\" }}\n",
        config(dir.path(), ""),
        j.display()
    );
    let err = match Gateway::start_in(dir.path(), &cfg) {
        Ok(_) => panic!("the daemon started with one journal for two exports"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("in use"), "{err}");
    assert!(err.contains(&j.display().to_string()), "{err}");
}
