//! Helpers shared by the SDK's integration tests: compiling C plugins, running the real
//! daemon (`<workspace>/target/debug/gateway`, built by `cargo build -p gateway` first, as
//! `scripts/test` does) and `qemu-io` against it.
#![allow(dead_code)]

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn workspace_root() -> PathBuf {
    sdk_dir().parent().expect("sdk has a parent").to_path_buf()
}

pub fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let p = workspace_root().join("target/debug/gateway");
    assert!(p.exists(), "{} is missing: run `cargo build -p gateway` first (scripts/test does)", p.display());
    p
}

/// Fail loudly when an external tool is missing (scripts/setup installs them all).
pub fn require_tool(name: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().map(|o| o.status.success());
    assert!(matches!(found, Ok(true)), "`{name}` is not installed: run scripts/setup");
}

/// Run a command; panic with its command line, status and output unless it exits 0.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Compile C sources into a shared library at `out` (mode 0755: the loader refuses group- or
/// world-writable files), with extra compiler arguments such as `-DGW_ENTRY=...`.
pub fn build_c_plugin(sources: &[&Path], include: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    require_tool("gcc");
    let mut cmd = Command::new("gcc");
    cmd.args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-O2", "-pthread"])
        .arg("-I")
        .arg(include)
        .args(extra)
        .arg("-o")
        .arg(out)
        .args(sources);
    run(&mut cmd);
    std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o755)).expect("chmod 0755");
    out.to_path_buf()
}

/// The frozen 1.0 fixture (`sdk/abi/v1.0/fixture_backend.c`), built into `dir`.
pub fn build_fixture10(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let v10 = sdk_dir().join("abi/v1.0");
    build_c_plugin(&[&v10.join("fixture_backend.c")], &v10, &dir.join(name), extra)
}

/// A running daemon, killed when dropped.
pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    log: PathBuf,
}

impl Daemon {
    /// Start `gateway serve` with `config` (its listen address is overridden by an ephemeral
    /// port) and `dir` as the data directory; wait until it is ready.
    pub fn start(dir: &Path, config: &str) -> Daemon {
        let cfg = dir.join("gateway.toml");
        std::fs::write(&cfg, config).expect("writing config");
        let log = dir.join("gateway.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let child = Command::new(gateway_bin())
            .args(["serve", "--config"])
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("GATEWAY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().expect("log fd"))
            .stderr(logf)
            .spawn()
            .expect("spawning gateway");
        let mut d = Daemon { child: Some(child), port: 0, log };
        d.port = d.wait_ready();
        d
    }

    fn wait_ready(&mut self) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.log();
            if text.contains("gateway ready") {
                if let Some(rest) = text.split("listening on nbd://127.0.0.1:").nth(1) {
                    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                    return digits.parse().expect("port in log");
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("gateway exited with {status} before it was ready; log:\n{text}");
            }
            assert!(Instant::now() < deadline, "gateway not ready after 20 s; log:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{export}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Run `qemu-io -f raw <uri> -c ...` (bounded by a timeout), returning whether it exited 0
/// and its combined output. Some qemu-io versions exit 0 even when a command fails, so
/// callers inspect the text too; see [`qemu_io_ok`].
pub fn qemu_io(uri: &str, cmds: &[&str]) -> (bool, String) {
    require_tool("qemu-io");
    let mut c = Command::new("timeout");
    c.args(["-k", "5", "60", "qemu-io", "-f", "raw"]).arg(uri);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// [`qemu_io`], asserting that it exited 0, no command failed and every pattern verified.
pub fn qemu_io_ok(uri: &str, cmds: &[&str]) -> String {
    let (ok, text) = qemu_io(uri, cmds);
    assert!(ok, "qemu-io {cmds:?} failed:\n{text}");
    for bad in ["Pattern verification failed", "failed:", "error", "Error"] {
        assert!(!text.contains(bad), "qemu-io {cmds:?} reported `{bad}`:\n{text}");
    }
    text
}
