//! Helpers shared by the integration tests: start the real `gateway` daemon on an ephemeral
//! port with a config written to a temporary directory, find the port it bound from its log,
//! and run external tools (libnbd, qemu, fio) against it.
//!
//! The daemon binary is `$GATEWAY_BIN`, or `target/debug/gateway` of this workspace; the test
//! command (`scripts/test`) builds it first. External tools are installed by
//! `scripts/setup`; a missing tool fails the test with a message saying so, it never skips.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

pub fn gateway_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let p = workspace_root().join("target/debug/gateway");
    assert!(p.exists(), "{} is missing: run `cargo build -p gateway` first (scripts/test does)", p.display());
    p
}

/// Fail loudly when an external tool is missing: the test command installs them all.
pub fn require_tool(name: &str) {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().map(|o| o.status.success());
    assert!(matches!(found, Ok(true)), "`{name}` is not installed: run scripts/setup (the README's test command does)");
}

/// A running daemon, killed when dropped.
pub struct Gateway {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    log: PathBuf,
    config: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Start with `config` (TOML; its `[server] listen` is overridden by an ephemeral port) in a
    /// fresh temporary data directory.
    pub fn start(config: &str) -> Result<Gateway> {
        let tmp = tempfile::tempdir().context("tempdir")?;
        let dir = tmp.path().to_path_buf();
        let mut g = Self::start_in(&dir, config)?;
        g._tmp = Some(tmp);
        Ok(g)
    }

    /// Start with `config` using `dir` as the data directory (kept after the daemon stops, so a
    /// test can restart on the same data).
    pub fn start_in(dir: &Path, config: &str) -> Result<Gateway> {
        let cfg = dir.join("gateway.toml");
        std::fs::write(&cfg, config).context("writing config")?;
        Self::spawn(dir, cfg, None)
    }

    fn spawn(dir: &Path, config: PathBuf, port: Option<u16>) -> Result<Gateway> {
        let log = dir.join(format!("gateway-{}.log", std::process::id()));
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(&log).context("log file")?;
        let start_len = logf.metadata().map(|m| m.len()).unwrap_or(0);
        let listen = format!("127.0.0.1:{}", port.unwrap_or(0));
        let child = Command::new(gateway_bin())
            .args(["serve", "--config"])
            .arg(&config)
            .args(["--listen", &listen, "--data-dir"])
            .arg(dir)
            .env("GATEWAY_LOG", std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .context("spawning gateway")?;
        let mut g = Gateway { child: Some(child), port: 0, dir: dir.to_path_buf(), log, config, _tmp: None };
        g.port = g.wait_for_port(start_len)?;
        Ok(g)
    }

    fn wait_for_port(&mut self, from: u64) -> Result<u16> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = self.log_from(from);
            if let Some(rest) = text.split("listening on nbd://127.0.0.1:").nth(1) {
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                if text.contains("gateway ready") {
                    return digits.parse().context("port in log");
                }
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("gateway exited with {status} before it was ready; log:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("gateway not ready after 20 s; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_from(&self, from: u64) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s.get(from as usize..).unwrap_or("").to_owned()
    }

    /// Everything the daemon has logged (all runs in this data directory).
    pub fn log(&self) -> String {
        self.log_from(0)
    }

    pub fn uri(&self, export: &str) -> String {
        format!("nbd://127.0.0.1:{}/{}", self.port, export)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Is the daemon process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("gateway did not exit within 30 s of SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same data directory, config and port.
    pub fn restart(&mut self) -> Result<()> {
        if self.child.is_some() {
            self.stop()?;
        }
        let port = self.port;
        let mut g = Self::spawn(&self.dir, self.config.clone(), Some(port))?;
        self.child = g.child.take();
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

/// Run a command, returning its output; fails with the command line, status, stdout and
/// stderr when it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} exited with {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// A config with one export of the given backend TOML fragment, e.g.
/// `one_export("vol", "256MiB", "type = \"memory\"")`.
pub fn one_export(name: &str, size: &str, backend: &str) -> String {
    format!("[[export]]\nname = \"{name}\"\nsize = \"{size}\"\n[export.backend]\n{backend}\n")
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}
