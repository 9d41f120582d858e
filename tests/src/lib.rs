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

/// Run `qemu-io -f raw` (read-only with `read_only`) on `uri` with one `-c` per command,
/// bounded to 60 s. Returns whether it exited 0 and its stdout and stderr together: qemu-io
/// exits non-zero after a failed command, and reports some failures only in its output.
pub fn qemu_io(uri: &str, read_only: bool, cmds: &[&str]) -> (bool, String) {
    let mut c = Command::new("timeout");
    c.args(["-k", "5", "60", "qemu-io", "-f", "raw"]);
    if read_only {
        c.arg("-r");
    }
    c.arg(uri);
    for cmd in cmds {
        c.arg("-c").arg(cmd);
    }
    let out = c.output().unwrap_or_else(|e| panic!("running qemu-io: {e}"));
    assert_ne!(out.status.code(), Some(124), "qemu-io {cmds:?} timed out");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// [`qemu_io`] that must succeed: exit 0, no I/O error and no failed pattern verification in
/// its output. Returns the output.
#[track_caller]
pub fn qemu_io_ok(uri: &str, read_only: bool, cmds: &[&str]) -> String {
    let (ok, text) = qemu_io(uri, read_only, cmds);
    assert!(ok, "qemu-io {cmds:?} failed:\n{text}");
    for bad in ["Pattern verification failed", "failed:", "error", "Error"] {
        assert!(!text.contains(bad), "qemu-io {cmds:?} reported `{bad}`:\n{text}");
    }
    text
}

/// fio's nbd engine on `uri` with 4 KiB blocks at QD32 and `--verify=crc32c` (plus `extra`),
/// bounded to 120 s; fails on any fio error or verification failure. Returns fio's output.
#[track_caller]
pub fn fio_verify(uri: &str, name: &str, extra: &[&str]) -> String {
    // fio may leave verify state files in its working directory.
    let cwd = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let out = run(Command::new("timeout")
        .current_dir(cwd.path())
        .args(["120", "fio", "--name", name, "--ioengine=nbd"])
        .arg(format!("--uri={uri}"))
        .args(["--bs=4k", "--iodepth=32", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--runtime=60"])
        .args(["--exitall_on_error=1", "--continue_on_error=none", "--verify_state_save=0"])
        .args(extra))
    .unwrap_or_else(|e| panic!("{e:#}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errs: Vec<&str> =
        text.split("err=").skip(1).map(|s| s.trim_start().split([' ', ':', ',']).next().unwrap_or("")).collect();
    assert!(!errs.is_empty(), "no `err=` in fio output:\n{text}");
    assert!(errs.iter().all(|e| *e == "0"), "fio reported errors {errs:?}:\n{text}");
    assert!(!text.contains("verify:") && !text.contains("bad magic"), "verify failure:\n{text}");
    text
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

/// Offset of the first byte where `a` and `b` differ (or where the shorter one ends), so a
/// failed comparison of megabytes reports one number instead of a dump.
pub fn first_mismatch(a: &[u8], b: &[u8]) -> Option<usize> {
    let n = a.len().min(b.len());
    a[..n].iter().zip(&b[..n]).position(|(x, y)| x != y).or((a.len() != b.len()).then_some(n))
}

/// Assert two byte strings are equal, reporting the first differing offset.
#[track_caller]
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if let Some(at) = first_mismatch(got, want) {
        panic!(
            "{what}: differs at offset {at} (got {} bytes, want {} bytes; got {:?}, want {:?})",
            got.len(),
            want.len(),
            got.get(at),
            want.get(at)
        );
    }
}

/// Run `/usr/bin/python3` (the Debian interpreter that has the libnbd bindings; a pyenv
/// `python3` on PATH may not) with `script` and `args`, bounded by `timeout`.
pub fn python(script: &str, args: &[&str], timeout: Duration) -> Result<Output> {
    let py = Path::new("/usr/bin/python3");
    assert!(py.exists(), "/usr/bin/python3 is missing: install python3-libnbd (scripts/setup)");
    let mut cmd = Command::new("timeout");
    cmd.arg("-k").arg("5").arg(timeout.as_secs().max(1).to_string()).arg(py).arg("-c").arg(script).args(args);
    run(&mut cmd)
}

/// A minimal NBD client written from the protocol document, for sending exactly the bytes a
/// test wants (including wrong ones): fixed-newstyle handshake with `NBD_OPT_EXPORT_NAME`,
/// simple replies only.
pub mod raw {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    use anyhow::{bail, ensure, Context, Result};

    pub const NBDMAGIC: &[u8; 8] = b"NBDMAGIC";
    pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
    pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
    pub const REQUEST_MAGIC: u32 = 0x2560_9513;
    pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
    pub const OPT_EXPORT_NAME: u32 = 1;
    pub const OPT_ABORT: u32 = 2;
    pub const OPT_GO: u32 = 7;
    pub const REP_ACK: u32 = 1;
    pub const REP_INFO: u32 = 3;
    pub const REP_ERR_UNKNOWN: u32 = 0x8000_0006;
    pub const CMD_READ: u16 = 0;
    pub const CMD_WRITE: u16 = 1;
    pub const CMD_DISC: u16 = 2;
    pub const CMD_FLUSH: u16 = 3;
    pub const CMD_FLAG_FUA: u16 = 1;
    pub const EPERM: u32 = 1;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;

    /// Connect with read/write timeouts, so no test can hang on a silent server.
    pub fn connect(addr: &str) -> Result<TcpStream> {
        let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// Read the server greeting; returns the handshake flags.
    pub fn greeting(s: &mut TcpStream) -> Result<u16> {
        let mut g = [0u8; 18];
        s.read_exact(&mut g).context("reading greeting")?;
        ensure!(&g[..8] == NBDMAGIC && g[8..16] == IHAVEOPT.to_be_bytes(), "bad greeting {g:02x?}");
        Ok(u16::from_be_bytes([g[16], g[17]]))
    }

    /// Send client flags (FIXED_NEWSTYLE | NO_ZEROES).
    pub fn client_flags(s: &mut TcpStream) -> Result<()> {
        s.write_all(&3u32.to_be_bytes())?;
        Ok(())
    }

    pub fn option(code: u32, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(16 + data.len());
        b.extend_from_slice(&IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        b
    }

    /// One option reply: (option, reply type, data).
    pub fn option_reply(s: &mut TcpStream) -> Result<(u32, u32, Vec<u8>)> {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).context("reading option reply")?;
        let magic = u64::from_be_bytes(h[..8].try_into()?);
        ensure!(magic == OPT_REPLY_MAGIC, "bad option reply magic {magic:#x}");
        let opt = u32::from_be_bytes(h[8..12].try_into()?);
        let ty = u32::from_be_bytes(h[12..16].try_into()?);
        let len = u32::from_be_bytes(h[16..20].try_into()?);
        ensure!(len <= 1 << 20, "option reply of {len} bytes");
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        Ok((opt, ty, data))
    }

    /// Full handshake selecting `export` with NBD_OPT_EXPORT_NAME; returns (size, flags).
    pub fn handshake(s: &mut TcpStream, export: &str) -> Result<(u64, u16)> {
        greeting(s)?;
        client_flags(s)?;
        s.write_all(&option(OPT_EXPORT_NAME, export.as_bytes()))?;
        let mut r = [0u8; 10];
        s.read_exact(&mut r).context("reading EXPORT_NAME reply")?;
        Ok((u64::from_be_bytes(r[..8].try_into()?), u16::from_be_bytes([r[8], r[9]])))
    }

    /// Connect and hand-shake in one step.
    pub fn open(addr: &str, export: &str) -> Result<(TcpStream, u64)> {
        let mut s = connect(addr)?;
        let (size, _) = handshake(&mut s, export)?;
        Ok((s, size))
    }

    pub fn request(flags: u16, cmd: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
        let mut b = Vec::with_capacity(28);
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&length.to_be_bytes());
        b
    }

    /// A simple reply: (error, cookie).
    pub fn simple_reply(s: &mut TcpStream) -> Result<(u32, u64)> {
        let mut r = [0u8; 16];
        s.read_exact(&mut r).context("reading simple reply")?;
        let magic = u32::from_be_bytes(r[..4].try_into()?);
        ensure!(magic == SIMPLE_REPLY_MAGIC, "bad reply magic {magic:#x}");
        Ok((u32::from_be_bytes(r[4..8].try_into()?), u64::from_be_bytes(r[8..].try_into()?)))
    }

    /// Write `data` at `offset`; returns the reply's error.
    pub fn write(s: &mut TcpStream, cookie: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let mut b = request(0, CMD_WRITE, cookie, offset, data.len() as u32);
        b.extend_from_slice(data);
        s.write_all(&b)?;
        let (err, c) = simple_reply(s)?;
        ensure!(c == cookie, "reply cookie {c} for request {cookie}");
        Ok(err)
    }

    /// Read `len` bytes at `offset`; the data, or the reply's error.
    pub fn read(s: &mut TcpStream, cookie: u64, offset: u64, len: u32) -> Result<std::result::Result<Vec<u8>, u32>> {
        s.write_all(&request(0, CMD_READ, cookie, offset, len))?;
        let (err, c) = simple_reply(s)?;
        ensure!(c == cookie, "reply cookie {c} for request {cookie}");
        if err != 0 {
            return Ok(Err(err));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        Ok(Ok(data))
    }

    /// Wait until the server closes the connection: reads (discarding anything it still
    /// sends, at most 64 MiB) until EOF or a reset. Fails if it is still open at `timeout`.
    pub fn expect_closed(s: &mut TcpStream, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = vec![0u8; 65536];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    total += n;
                    ensure!(total <= 64 << 20, "server keeps sending ({total} bytes) instead of closing");
                }
                Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => return Ok(()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) => return Err(e).context("waiting for the server to close"),
            }
            if Instant::now() > deadline {
                bail!("the server did not close the connection within {timeout:?} (read {total} bytes)");
            }
        }
    }
}
pub mod quorum;
pub mod sites;
