//! Misbehaving plugins (the `testkit` backend) are contained: in one daemon with a good
//! built-in export, a plugin that panics on write fails that write with EIO, the daemon stays
//! up, and the instance is marked failed so later requests fail too; a plugin that returns an
//! error on read fails the read with EIO and its message; a plugin whose write never returns
//! fails that write with EIO after the export's 1 s call timeout, and every later request at
//! once; and the good export keeps serving correct data throughout, also while the stuck
//! write's thread is still blocked in the plugin. At startup the gateway refuses, with exit
//! status 1 and a message saying why: a plugin that does not exist (naming it and the
//! directory searched), a group/world-writable plugin file, a filter plugin in a backend slot,
//! a shared library that is not a plugin, and a plugin that panics in `open`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gateway_tests::{gateway_bin, python, require_tool, Gateway};

const PY: &str = r#"
import errno, nbd, os, sys, time

def connect(uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    return h

def outcome(f):
    """ok, or errno=N, with the call's duration in seconds."""
    start = time.monotonic()
    try:
        f()
        r = "ok"
    except nbd.Error as e:
        n = e.errno
        if isinstance(n, str):
            n = getattr(errno, n, -1)
        r = "errno=%d" % n
    return "%s %.3f" % (r, time.monotonic() - start)
"#;

/// Run a libnbd script; returns (stdout, stderr).
fn py_out(script: &str, args: &[&str]) -> (String, String) {
    let out = python(&format!("{PY}\n{script}"), args, Duration::from_secs(60)).unwrap();
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn py(script: &str, args: &[&str]) -> String {
    py_out(script, args).0
}

/// Parse `ok 0.001` / `errno=5 1.002` into (outcome, seconds).
fn outcome(line: &str) -> (&str, f64) {
    let (what, secs) = line.trim().rsplit_once(' ').unwrap_or_else(|| panic!("bad outcome line `{line}`"));
    (what, secs.parse().unwrap_or_else(|_| panic!("bad duration in `{line}`")))
}

/// Write fresh random data to the good export and read it back: it must be intact.
fn good_serves(g: &Gateway, seed: u64) {
    let out = py(
        r#"
import random
h = connect(sys.argv[1])
rnd = random.Random(int(sys.argv[2]))
for i in range(8):
    data = bytes(rnd.getrandbits(8) for _ in range(4096)) * 4
    off = rnd.randrange(0, 256) * 16384
    h.pwrite(data, off)
    assert h.pread(len(data), off) == data, "mismatch at %d" % off
h.flush()
print("good ok")
h.shutdown()
"#,
        &[&g.uri("good"), &seed.to_string()],
    );
    assert_eq!(out.trim(), "good ok");
}

fn testkit(name: &str, mode: &str, extra: &str) -> String {
    format!(
        "[[export]]\nname = \"{name}\"\n{extra}[export.backend]\ntype = \"plugin\"\nplugin = \"testkit\"\n\
         config = {{ mode = \"{mode}\", size = \"16MiB\" }}\n\n"
    )
}

fn wait_for_log(g: &Gateway, needle: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !g.log().contains(needle) {
        assert!(Instant::now() < deadline, "`{needle}` not logged within {timeout:?}:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn misbehaving_plugins_are_contained() {
    require_tool("qemu-io");
    let cfg = "[[export]]\nname = \"good\"\nsize = \"16MiB\"\n[export.backend]\ntype = \"memory\"\n\n".to_owned()
        + &testkit("panicky", "panic-on-write", "")
        + &testkit("slow", "block-on-write", "plugin_call_timeout_ms = 1000\n")
        + &testkit("erring", "error-on-read", "");
    let mut g = Gateway::start(&cfg).unwrap();
    good_serves(&g, 1);

    // A panic in the plugin: EIO for the write, seen by qemu-io.
    let out = Command::new("timeout")
        .args(["-k", "5", "60", "qemu-io", "-f", "raw"])
        .arg(g.uri("panicky"))
        .args(["-c", "write -P 0x5a 0 4k"])
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("write failed: Input/output error"), "qemu-io:\n{text}");
    assert!(g.alive(), "the daemon died of a plugin panic:\n{}", g.log());
    // The instance is failed: reads (which the plugin would serve) fail now too.
    let out = py(
        r#"
h = connect(sys.argv[1])
print(outcome(lambda: h.pread(4096, 0)))
print(outcome(lambda: h.pwrite(b"x" * 4096, 0)))
h.shutdown()
"#,
        &[&g.uri("panicky")],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(outcome(lines[0]).0, "errno=5", "read after the panic: {out}");
    assert_eq!(outcome(lines[1]).0, "errno=5", "write after the panic: {out}");
    let log = g.log();
    assert!(log.contains("plugin panicked: testkit: panic on write; instance marked failed"), "{log}");
    assert!(log.contains("testkit: plugin failed earlier; refusing write"), "{log}");
    good_serves(&g, 2);

    // An error returned by the plugin: EIO with the plugin's message (which the server sends
    // in its structured error reply; libnbd shows it in its debug output); writes still work.
    let (out, debug) = py_out(
        r#"
h = connect(sys.argv[1])
print(outcome(lambda: h.pwrite(b"e" * 4096, 0)))
h.set_debug(True)
print(outcome(lambda: h.pread(4096, 0)))
h.set_debug(False)
h.shutdown()
"#,
        &[&g.uri("erring")],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.iter().map(|l| outcome(l).0).collect::<Vec<_>>(), ["ok", "errno=5"], "{out}");
    assert!(
        debug.contains("structured error server message: testkit: read: testkit: injected read error"),
        "libnbd debug output:\n{debug}"
    );
    good_serves(&g, 3);

    // A write that never returns: EIO after the 1 s call timeout. Meanwhile (once the write
    // is known to be stuck in the plugin) the good export keeps serving.
    let uri = g.uri("slow");
    let stuck = std::thread::spawn(move || {
        py(
            r#"
h = connect(sys.argv[1])
print(outcome(lambda: h.pwrite(b"s" * 4096, 0)))
h.shutdown()
"#,
            &[&uri],
        )
    });
    wait_for_log(&g, "testkit: write blocked forever", Duration::from_secs(20));
    good_serves(&g, 4);
    let out = stuck.join().unwrap();
    let (what, secs) = outcome(out.trim());
    assert_eq!(what, "errno=5", "{out}");
    assert!((0.9..10.0).contains(&secs), "the stuck write failed after {secs} s, want about 1 s");
    // The export is failed: later requests fail at once, well within another timeout.
    let out = py(
        r#"
h = connect(sys.argv[1])
print(outcome(lambda: h.pread(4096, 0)))
print(outcome(lambda: h.pwrite(b"t" * 4096, 8192)))
print(outcome(lambda: h.flush()))
h.shutdown()
"#,
        &[&g.uri("slow")],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for l in &lines {
        let (what, secs) = outcome(l);
        assert_eq!(what, "errno=5", "{out}");
        assert!(secs < 0.9, "a request to the failed export took {secs} s: {out}");
    }
    let log = g.log();
    assert!(log.contains("backend call timed out after 1s; export marked failed"), "{log}");
    // The plugin's thread is still blocked (it never returns); the good export still serves.
    good_serves(&g, 5);
    assert!(g.alive(), "{}", g.log());
}

#[test]
fn sigterm_ends_the_daemon_despite_a_stuck_plugin_call() {
    let mut g = Gateway::start(&testkit("slow", "block-on-write", "plugin_call_timeout_ms = 1000\n")).unwrap();
    let out = py(
        r#"
h = connect(sys.argv[1])
print(outcome(lambda: h.pwrite(b"s" * 4096, 0)))
h.shutdown()
"#,
        &[&g.uri("slow")],
    );
    assert_eq!(outcome(out.trim()).0, "errno=5", "{out}");
    let status = Command::new("kill").args(["-TERM", &g.pid().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.alive() {
        assert!(Instant::now() < deadline, "still running 10 s after SIGTERM:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run `gateway serve` with `config`; it must refuse to start (exit 1) without serving.
/// Returns its stderr.
fn refused(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new("timeout")
        .args(["-k", "5", "30"])
        .arg(gateway_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "gateway serve should refuse this config:\n{config}\nstderr:\n{stderr}");
    assert!(!stderr.contains("gateway ready"), "{stderr}");
    stderr
}

fn plugin_backend(plugin: &str, config: &str) -> String {
    format!(
        "[[export]]\nname = \"vol\"\n[export.backend]\ntype = \"plugin\"\nplugin = \"{plugin}\"\nconfig = {config}\n"
    )
}

fn built_plugin(name: &str) -> PathBuf {
    let p = gateway_bin().parent().unwrap().join(format!("libgw_{name}.so"));
    assert!(p.exists(), "{} is missing: run `cargo build --workspace`", p.display());
    p
}

fn copy_to(src: &Path, dir: &Path, name: &str, mode: u32) -> PathBuf {
    let dst = dir.join(name);
    std::fs::copy(src, &dst).unwrap();
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode)).unwrap();
    dst
}

#[test]
fn refuses_a_plugin_that_does_not_exist() {
    let err = refused(&plugin_backend("nosuchplugin", "{}"));
    assert!(err.contains("no plugin named `nosuchplugin`"), "{err}");
    // The directory searched: the gateway executable's (the default plugin directory).
    let dir = gateway_bin().parent().unwrap().canonicalize().unwrap();
    assert!(err.contains(&format!("in {} (looked for libgw_nosuchplugin.so", dir.display())), "{err}");
}

#[test]
fn refuses_a_world_writable_plugin_file() {
    let dir = tempfile::tempdir().unwrap();
    let lib = copy_to(&built_plugin("memory"), dir.path(), "libgw_memory.so", 0o666);
    let err = refused(&plugin_backend(lib.to_str().unwrap(), "{ size = 1048576 }"));
    assert!(err.contains("group- or world-writable") && err.contains(lib.to_str().unwrap()), "{err}");
    // The same file, fixed as the message says, loads (so the refusal was the mode).
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
    let g = Gateway::start(&plugin_backend(lib.to_str().unwrap(), "{ size = 1048576 }")).unwrap();
    assert!(g.log().contains("plugin loaded plugin=\"memory\""), "{}", g.log());
}

#[test]
fn refuses_a_filter_in_the_backend_slot() {
    let err = refused(&plugin_backend("fault", "{}"));
    assert!(err.contains("is a filter plugin, but this slot takes a backend plugin"), "{err}");
    assert!(err.contains("libgw_fault.so"), "{err}");
}

#[test]
fn refuses_a_library_that_is_not_a_plugin() {
    let system_lib = ["/usr/lib/x86_64-linux-gnu/libz.so.1", "/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib64/libz.so.1"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.exists())
        .expect("no libz.so.1 found to use as a non-plugin library");
    let dir = tempfile::tempdir().unwrap();
    copy_to(system_lib, dir.path(), "libgw_bogus.so", 0o644);
    let cfg = format!("[server]\nplugin_dir = \"{}\"\n{}", dir.path().display(), plugin_backend("bogus", "{}"));
    let err = refused(&cfg);
    assert!(err.contains("no entry symbol `gw_plugin_entry_v1`: not a gateway plugin"), "{err}");
    assert!(err.contains("libgw_bogus.so"), "{err}");
}

#[test]
fn refuses_a_plugin_that_panics_in_open() {
    let err = refused(&plugin_backend("testkit", "{ mode = \"panic-in-open\" }"));
    assert!(err.contains("panicked in open: testkit: panic in open, as configured"), "{err}");
    assert!(err.contains("export `vol`"), "{err}");
}

#[test]
fn refuses_a_bad_testkit_mode() {
    let err = refused(&plugin_backend("testkit", "{ mode = \"explode-on-write\" }"));
    assert!(err.contains("unknown mode `explode-on-write`"), "{err}");
}
