//! The `fault` filter plugin through the real daemon, seen by clients we did not write
//! (qemu-io, libnbd's Python bindings, fio): an injected ENOSPC on writes reaches qemu-io as
//! "No space left on device" while reads keep working; each injectable error arrives as its
//! errno; a flush-only rule fails flushes and nothing else; a trigger file switches a rule on
//! and off under one live connection; a read delay shows in the latency of sequential reads; a
//! dropped write is detected as lost when read back; a hung write waits for its trigger file
//! and then completes; the rate generator is deterministic per seed; a bad config is refused
//! at startup naming the key; and with an empty config fio's verified random writes pass
//! through untouched.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gateway_tests::{gateway_bin, python, require_tool, run, Gateway};

/// Python prelude: connect, and run a call reporting `ok` or `errno=N`.
const PY: &str = r#"
import errno, nbd, os, sys, time

def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h

def errno_num(e):
    n = e.errno
    if isinstance(n, str):
        n = getattr(errno, n, -1)
    return n

def outcome(f):
    try:
        f()
        return "ok"
    except nbd.Error as e:
        return "errno=%d" % errno_num(e)
"#;

fn py(script: &str, args: &[&str]) -> String {
    let out = python(&format!("{PY}\n{script}"), args, Duration::from_secs(60)).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One export named `name` of 16 MiB in RAM behind the fault filter with `config` (an inline
/// TOML table, or empty for none).
fn faulty(name: &str, config: &str) -> String {
    let config = if config.is_empty() { String::new() } else { format!("config = {config}\n") };
    format!(
        "[[export]]\nname = \"{name}\"\nsize = \"16MiB\"\n[export.backend]\ntype = \"memory\"\n\
         [[export.filter]]\nplugin = \"fault\"\n{config}\n"
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

/// qemu-io's output; it exits non-zero after a failed command, and the output says which.
fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    gateway_tests::qemu_io(uri, false, cmds).1
}

#[test]
fn enospc_on_write_reaches_qemu_io_and_reads_still_work() {
    require_tool("qemu-io");
    let g = Gateway::start(&faulty("vol", r#"{ rules = [{ op = "write", error = "ENOSPC", after = 1 }] }"#)).unwrap();
    let text = qemu_io(
        &g.uri("vol"),
        &["write -P 0xab 0 64k", "write -P 0xcd 64k 64k", "read -P 0xab 0 64k", "read -P 0 64k 64k"],
    );
    assert!(text.contains("wrote 65536/65536 bytes at offset 0"), "the first write (after = 1) passes:\n{text}");
    assert!(text.contains("write failed: No space left on device"), "{text}");
    assert_eq!(text.matches("wrote ").count(), 1, "{text}");
    assert_eq!(text.matches("read 65536/65536").count(), 2, "{text}");
    assert!(!text.contains("Pattern verification failed"), "{text}");
    let log = g.log();
    assert!(log.contains("fault filter: rule 0: ENOSPC on op write, after 1"), "rule set not logged:\n{log}");
    assert!(log.contains("fault injected: ENOSPC on write"), "{log}");
}

#[test]
fn each_error_arrives_as_its_errno() {
    let errors = [("EIO", 5), ("ENOSPC", 28), ("EPERM", 1), ("EINVAL", 22), ("ENOTSUP", 95), ("ESHUTDOWN", 108)];
    let cfg: String = errors
        .iter()
        .map(|(e, _)| faulty(e, &format!(r#"{{ rules = [{{ op = "read", error = "{e}" }}] }}"#)))
        .collect();
    let g = Gateway::start(&cfg).unwrap();
    let uris: Vec<String> = errors.iter().map(|(e, _)| g.uri(e)).collect();
    let args: Vec<&str> = uris.iter().map(String::as_str).collect();
    let out = py(
        r#"
for uri in sys.argv[1:]:
    h = connect(uri)
    print(uri.rsplit("/", 1)[1], "write", outcome(lambda: h.pwrite(b"x" * 4096, 0)),
          "read", outcome(lambda: h.pread(4096, 0)))
    h.shutdown()
"#,
        &args,
    );
    for (name, errno) in errors {
        let want = format!("{name} write ok read errno={errno}");
        assert!(out.lines().any(|l| l == want), "want `{want}` in:\n{out}");
    }
}

#[test]
fn flush_rule_fails_flush_only() {
    let g = Gateway::start(&faulty("vol", r#"{ rules = [{ op = "flush", error = "EIO" }] }"#)).unwrap();
    let out = py(
        r#"
h = connect(sys.argv[1])
assert h.can_flush()
data = os.urandom(65536)
print("write", outcome(lambda: h.pwrite(data, 8192)))
print("fua-write", outcome(lambda: h.pwrite(data, 8192, nbd.CMD_FLAG_FUA)))
print("read", "same" if h.pread(65536, 8192) == data else "DIFFERENT")
print("trim", outcome(lambda: h.trim(4096, 0)))
print("zero", outcome(lambda: h.zero(4096, 4096)))
print("flush", outcome(lambda: h.flush()))
print("flush", outcome(lambda: h.flush()))
print("read", outcome(lambda: h.pread(4096, 0)))
h.shutdown()
"#,
        &[&g.uri("vol")],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["write ok", "fua-write ok", "read same", "trim ok", "zero ok", "flush errno=5", "flush errno=5", "read ok"],
        "{out}"
    );
    assert!(g.log().contains("fault injected: EIO on flush"), "{}", g.log());
}

#[test]
fn trigger_file_toggles_a_rule_on_a_live_connection() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("fail-reads");
    let cfg = faulty(
        "vol",
        &format!(r#"{{ rules = [{{ op = "read", error = "EIO", trigger_file = "{}" }}] }}"#, path_str(&trigger)),
    );
    let g = Gateway::start(&cfg).unwrap();
    let out = py(
        r#"
h = connect(sys.argv[1])
trigger = sys.argv[2]
seen = []
for i in range(3):
    seen.append(outcome(lambda: h.pread(4096, 0)))
    open(trigger, "w").close()
    seen.append(outcome(lambda: h.pread(4096, 0)))
    seen.append(outcome(lambda: h.pwrite(b"w" * 4096, 0)))
    os.remove(trigger)
seen.append(outcome(lambda: h.pread(4096, 0)))
print(" ".join(seen))
h.shutdown()
"#,
        &[&g.uri("vol"), path_str(&trigger)],
    );
    assert_eq!(out.trim(), ["ok errno=5 ok"; 3].join(" ") + " ok", "read, (trigger on) read + write, ...");
}

#[test]
fn read_delay_shows_in_latency() {
    let cfg = faulty("slow", r#"{ delay_ms = { read = 50 } }"#)
        + "[[export]]\nname = \"plain\"\nsize = \"16MiB\"\n[export.backend]\ntype = \"memory\"\n";
    let g = Gateway::start(&cfg).unwrap();
    let script = r#"
h = connect(sys.argv[1])
h.pwrite(b"d" * 4096, 0)
start = time.monotonic()
for i in range(10):
    assert h.pread(4096, i * 4096)
print("%.3f" % (time.monotonic() - start))
h.shutdown()
"#;
    let slow: f64 = py(script, &[&g.uri("slow")]).trim().parse().unwrap();
    let plain: f64 = py(script, &[&g.uri("plain")]).trim().parse().unwrap();
    eprintln!("10 sequential reads: {slow:.3} s with delay_ms.read = 50, {plain:.3} s without the filter");
    // A lower bound from the injected delay (10 x 50 ms), not a performance threshold.
    assert!(slow >= 0.45, "10 reads delayed 50 ms each took only {slow} s");
}

#[test]
fn dropped_write_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("drop-writes");
    let cfg = faulty("vol", &format!(r#"{{ drop = {{ op = "write", trigger_file = "{}" }} }}"#, path_str(&trigger)));
    let g = Gateway::start(&cfg).unwrap();
    let out = py(
        r#"
h = connect(sys.argv[1])
trigger = sys.argv[2]
a, b, c = (bytes([x]) * 65536 for x in (0xAA, 0xBB, 0xCC))
h.pwrite(a, 1 << 20)
h.flush()
open(trigger, "w").close()
print("write B", outcome(lambda: h.pwrite(b, 1 << 20)))
print("flush", outcome(lambda: h.flush()))
os.remove(trigger)
got = bytes(h.pread(65536, 1 << 20))
print("read back", {a: "A", b: "B"}.get(got, "other"))
h.pwrite(c, 1 << 20)
print("after trigger removed", "C" if h.pread(65536, 1 << 20) == c else "not C")
h.shutdown()
"#,
        &[&g.uri("vol"), path_str(&trigger)],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["write B ok", "flush ok", "read back A", "after trigger removed C"],
        "the dropped write B must report success and leave A in place:\n{out}"
    );
}

#[test]
fn hung_write_waits_for_its_trigger_then_completes() {
    let dir = tempfile::tempdir().unwrap();
    let trigger = dir.path().join("hang-writes");
    std::fs::write(&trigger, b"").unwrap();
    let cfg = faulty("vol", &format!(r#"{{ hang = {{ op = "write", trigger_file = "{}" }} }}"#, path_str(&trigger)));
    let g = Gateway::start(&cfg).unwrap();
    let out = py(
        r#"
h = connect(sys.argv[1])
trigger = sys.argv[2]
data = os.urandom(4096)
buf = nbd.Buffer.from_bytearray(bytearray(data))
cookie = h.aio_pwrite(buf, 0)
# While the trigger exists the write stays in flight, and other requests are served.
deadline = time.monotonic() + 0.5
while time.monotonic() < deadline:
    h.poll(50)
pending = not h.aio_command_completed(cookie)
print("pending", pending)
other = connect(sys.argv[1])
print("read while hung", outcome(lambda: other.pread(4096, 8192)))
os.remove(trigger)
deadline = time.monotonic() + 20
done = not pending
while not done and time.monotonic() < deadline:
    h.poll(100)
    try:
        done = h.aio_command_completed(cookie)
    except nbd.Error as e:
        print("write failed", errno_num(e))
        break
print("completed", done)
print("data", "same" if other.pread(4096, 0) == data else "DIFFERENT")
h.shutdown()
other.shutdown()
"#,
        &[&g.uri("vol"), path_str(&trigger)],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["pending True", "read while hung ok", "completed True", "data same"],
        "{out}"
    );
    let log = g.log();
    assert!(log.contains("hangs while") && log.contains("resumes after"), "{log}");
}

#[test]
fn rate_is_deterministic_per_seed() {
    let rule = |seed: u64| format!(r#"{{ seed = {seed}, rules = [{{ op = "read", error = "EIO", rate = 0.5 }}] }}"#);
    let cfg = faulty("a", &rule(1)) + &faulty("b", &rule(1)) + &faulty("c", &rule(2));
    let g = Gateway::start(&cfg).unwrap();
    let out = py(
        r#"
for uri in sys.argv[1:]:
    h = connect(uri)
    print("".join("x" if outcome(lambda: h.pread(512, 0)) != "ok" else "." for i in range(64)))
    h.shutdown()
"#,
        &[&g.uri("a"), &g.uri("b"), &g.uri("c")],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], lines[1], "same seed, same failures");
    assert_ne!(lines[0], lines[2], "another seed, other failures");
    for l in &lines {
        let n = l.matches('x').count();
        assert!((10..=54).contains(&n), "{n} of 64 reads failed at rate 0.5: {l}");
    }
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, faulty("vol", r#"{ rules = [{ op = "write", eror = "EIO" }] }"#)).unwrap();
    let out = Command::new("timeout")
        .args(["-k", "5", "30"])
        .arg(gateway_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("`fault`: open failed: unknown key `rules[0].eror`"), "{stderr}");
    assert!(!stderr.contains("gateway ready"), "{stderr}");
}

#[test]
fn empty_config_passes_fio_verified_writes_through() {
    require_tool("fio");
    let cfg = "[[export]]\nname = \"disk\"\nsize = \"32MiB\"\n[export.backend]\ntype = \"file\"\npath = \"disk.img\"\n\
               [[export.filter]]\nplugin = \"fault\"\n";
    let g = Gateway::start(cfg).unwrap();
    assert!(g.log().contains("fault filter: no faults configured (pass-through)"), "{}", g.log());
    let cwd = tempfile::tempdir().unwrap();
    let out = run(Command::new("timeout")
        .current_dir(cwd.path())
        .args(["-k", "5", "120", "fio", "--name=passthrough", "--ioengine=nbd"])
        .arg(format!("--uri={}", g.uri("disk")))
        .args(["--rw=randwrite", "--size=32M", "--bs=4k", "--iodepth=32", "--verify=crc32c", "--do_verify=1"])
        .args(["--verify_fatal=1", "--exitall_on_error=1", "--continue_on_error=none", "--verify_state_save=0"]))
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let errs: Vec<&str> =
        text.split("err=").skip(1).map(|s| s.trim_start().split([' ', ':', ',']).next().unwrap_or("")).collect();
    assert!(!errs.is_empty() && errs.iter().all(|e| *e == "0"), "fio reported errors {errs:?}:\n{text}");
    assert!(!text.contains("verify:") && !text.contains("bad magic"), "verify failure:\n{text}");
    // Every 4 KiB block written once and read back once by the verify pass.
    assert!(text.contains("issued rwts: total=8192,8192,"), "{text}");
}
