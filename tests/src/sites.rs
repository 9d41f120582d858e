//! Two sites of a synchronously replicated volume set, each a real `gateway` daemon with its
//! own data directory, config and ports, for the replication tests.
//!
//! [`TwoSites::new`] picks free ports, writes both configs (site `A` produces volume set `vs1`
//! of one export `vol0` on a file backend; site `B` holds the recovery copy), and starts A,
//! then B. Helpers run `gateway ctl` at either site, read its JSON status, wait for a state,
//! read a site's backing file, and kill or restart a site. A's data link (and optionally its
//! control link) can go through a [`Proxy`] so a test can cut the link without killing B.
//!
//! Also here: a libnbd writer that records every write before sending it and every
//! acknowledgement as it arrives ([`WRITER`], [`Writer`]), and the check that an image holds,
//! for every block, its last acknowledged content or an in-flight write's ([`Expect`]).

use std::collections::HashMap;
use std::io::Read;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{gateway_bin, Gateway};

/// The volume set and export every [`TwoSites`] defines.
pub const SET: &str = "vs1";
pub const VOLUME: &str = "vol0";

/// One of the two sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    A,
    B,
}

impl Site {
    pub fn name(self) -> &'static str {
        match self {
            Site::A => "A",
            Site::B => "B",
        }
    }

    pub fn other(self) -> Site {
        match self {
            Site::A => Site::B,
            Site::B => Site::A,
        }
    }

    fn idx(self) -> usize {
        match self {
            Site::A => 0,
            Site::B => 1,
        }
    }
}

/// A free TCP port on 127.0.0.1 for a daemon to listen on.
///
/// Taken below the kernel's ephemeral range (32768-60999 by default), not from it: a port
/// from that range, released until the daemon binds it, may meanwhile become the source port
/// of some outgoing connection (the daemons of a test open many). Each test process starts
/// at its own place in 20000-31999 and never hands out a port twice.
pub fn free_port() -> u16 {
    const FIRST: u32 = 20000;
    const SPAN: u32 = 12000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port in {FIRST}..{}", FIRST + SPAN);
}

/// How the two sites are configured.
#[derive(Debug, Clone)]
pub struct Options {
    /// Size of `vol0` at both sites (e.g. "32MiB").
    pub size: String,
    /// Size of `vol0` at B if it should differ (to test `verify-config`).
    pub size_b: Option<String>,
    /// `on_link_loss` of the set ("continue" or "freeze").
    pub on_link_loss: String,
    pub freeze_timeout_ms: Option<u64>,
    pub region_size: Option<String>,
    pub auto_resync: Option<bool>,
    /// The export's backing file name in each data directory.
    pub image: String,
    /// Route A's data link (`peer_replication`) through a [`Proxy`].
    pub proxy_data: bool,
    /// Route A's control requests (`peer_control`) through a second [`Proxy`].
    pub proxy_control: bool,
    /// Start the daemons in [`TwoSites::new`] (else call [`TwoSites::start`]).
    pub start: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            size: "32MiB".into(),
            size_b: None,
            on_link_loss: "continue".into(),
            freeze_timeout_ms: None,
            region_size: None,
            auto_resync: None,
            image: "vol0.img".into(),
            proxy_data: false,
            proxy_control: false,
            start: true,
        }
    }
}

struct SiteProc {
    dir: PathBuf,
    config: String,
    replication: u16,
    control: u16,
    gw: Option<Gateway>,
}

/// Two daemons replicating `vs1` (see the module doc). Both are killed when dropped.
pub struct TwoSites {
    pub opts: Options,
    sites: [SiteProc; 2],
    /// A's data link to B, when `proxy_data`.
    pub proxy: Option<Proxy>,
    /// A's control link to B, when `proxy_control`.
    pub control_proxy: Option<Proxy>,
    _tmp: tempfile::TempDir,
}

#[allow(clippy::too_many_arguments)]
fn site_config(
    o: &Options,
    site: &str,
    peer: &str,
    size: &str,
    repl: u16,
    ctrl: u16,
    peer_repl: u16,
    peer_ctrl: u16,
) -> String {
    let mut c = format!(
        "[node]\nsite = \"{site}\"\nreplication_listen = \"127.0.0.1:{repl}\"\ncontrol_listen = \"127.0.0.1:{ctrl}\"\n\n\
         [[export]]\nname = \"{VOLUME}\"\nsize = \"{size}\"\n[export.backend]\ntype = \"file\"\npath = \"{}\"\n\n\
         [[volume_set]]\nname = \"{SET}\"\nvolumes = [\"{VOLUME}\"]\nproduction = \"A\"\npeer_site = \"{peer}\"\n\
         peer_replication = \"127.0.0.1:{peer_repl}\"\npeer_control = \"127.0.0.1:{peer_ctrl}\"\n\
         on_link_loss = \"{}\"\n",
        o.image, o.on_link_loss
    );
    if let Some(t) = o.freeze_timeout_ms {
        c.push_str(&format!("freeze_timeout_ms = {t}\n"));
    }
    if let Some(r) = &o.region_size {
        c.push_str(&format!("region_size = \"{r}\"\n"));
    }
    if let Some(a) = o.auto_resync {
        c.push_str(&format!("auto_resync = {a}\n"));
    }
    c
}

impl TwoSites {
    pub fn new(opts: Options) -> Result<TwoSites> {
        let tmp = tempfile::tempdir().context("tempdir")?;
        let (a_repl, a_ctrl, b_repl, b_ctrl) = (free_port(), free_port(), free_port(), free_port());
        let proxy = if opts.proxy_data { Some(Proxy::start(format!("127.0.0.1:{b_repl}").parse()?)?) } else { None };
        let control_proxy =
            if opts.proxy_control { Some(Proxy::start(format!("127.0.0.1:{b_ctrl}").parse()?)?) } else { None };
        let a_peer_repl = proxy.as_ref().map_or(b_repl, |p| p.port);
        let a_peer_ctrl = control_proxy.as_ref().map_or(b_ctrl, |p| p.port);
        let size_b = opts.size_b.clone().unwrap_or_else(|| opts.size.clone());
        let a_cfg = site_config(&opts, "A", "B", &opts.size, a_repl, a_ctrl, a_peer_repl, a_peer_ctrl);
        let b_cfg = site_config(&opts, "B", "A", &size_b, b_repl, b_ctrl, a_repl, a_ctrl);
        let mk = |name: &str, config: String, replication: u16, control: u16| -> Result<SiteProc> {
            let dir = tmp.path().join(name);
            std::fs::create_dir_all(&dir)?;
            Ok(SiteProc { dir, config, replication, control, gw: None })
        };
        let sites = [mk("A", a_cfg, a_repl, a_ctrl)?, mk("B", b_cfg, b_repl, b_ctrl)?];
        let start = opts.start;
        let mut t = TwoSites { opts, sites, proxy, control_proxy, _tmp: tmp };
        if start {
            t.start(Site::A)?;
            t.start(Site::B)?;
        }
        Ok(t)
    }

    fn site(&self, s: Site) -> &SiteProc {
        &self.sites[s.idx()]
    }

    fn site_mut(&mut self, s: Site) -> &mut SiteProc {
        &mut self.sites[s.idx()]
    }

    /// Start (or start again, on the same data directory and NBD port) a site's daemon.
    pub fn start(&mut self, s: Site) -> Result<()> {
        let p = self.site_mut(s);
        match &mut p.gw {
            Some(g) => g.restart().with_context(|| format!("restarting site {}", s.name())),
            None => {
                p.gw =
                    Some(Gateway::start_in(&p.dir, &p.config).with_context(|| format!("starting site {}", s.name()))?);
                Ok(())
            }
        }
    }

    /// Alias of [`TwoSites::start`] for a site that was stopped or killed.
    pub fn restart(&mut self, s: Site) -> Result<()> {
        self.start(s)
    }

    /// SIGKILL a site.
    pub fn kill9(&mut self, s: Site) {
        if let Some(g) = &mut self.site_mut(s).gw {
            g.kill9();
        }
    }

    /// SIGTERM a site and wait for it to exit; fails unless it exits 0.
    pub fn stop(&mut self, s: Site) -> Result<()> {
        let g = self.site_mut(s).gw.as_mut().context("site never started")?;
        let st = g.stop()?;
        if !st.success() {
            bail!("site {} exited with {st} after SIGTERM; log:\n{}", s.name(), g.log());
        }
        Ok(())
    }

    pub fn alive(&mut self, s: Site) -> bool {
        self.site_mut(s).gw.as_mut().is_some_and(|g| g.alive())
    }

    pub fn gw(&self, s: Site) -> &Gateway {
        self.site(s).gw.as_ref().expect("site never started")
    }

    /// The NBD URI of `vol0` at a site.
    pub fn uri(&self, s: Site) -> String {
        self.gw(s).uri(VOLUME)
    }

    pub fn dir(&self, s: Site) -> &Path {
        &self.site(s).dir
    }

    pub fn config(&self, s: Site) -> &str {
        &self.site(s).config
    }

    /// The site's own replication and control listen ports.
    pub fn ports(&self, s: Site) -> (u16, u16) {
        (self.site(s).replication, self.site(s).control)
    }

    pub fn image_path(&self, s: Site) -> PathBuf {
        self.dir(s).join(&self.opts.image)
    }

    /// The site's backing file as it is now (a running daemon's writes are in the page cache,
    /// which reads see).
    pub fn image(&self, s: Site) -> Vec<u8> {
        std::fs::read(self.image_path(s)).unwrap_or_else(|e| panic!("reading {}: {e}", self.image_path(s).display()))
    }

    pub fn log(&self, s: Site) -> String {
        self.site(s).gw.as_ref().map(|g| g.log()).unwrap_or_default()
    }

    /// The last `lines` lines of both logs, for failure messages.
    pub fn logs(&self, lines: usize) -> String {
        let tail = |s: Site| {
            let l = self.log(s);
            let v: Vec<&str> = l.lines().collect();
            v[v.len().saturating_sub(lines)..].join("\n")
        };
        format!("--- site A log (tail) ---\n{}\n--- site B log (tail) ---\n{}", tail(Site::A), tail(Site::B))
    }

    /// `gateway ctl --data-dir DIR ARGS...` at a site (bounded at 120 s): exit status, stdout,
    /// stderr.
    pub fn ctl(&self, s: Site, args: &[&str]) -> (ExitStatus, String, String) {
        let out = Command::new("timeout")
            .args(["-k", "5", "120"])
            .arg(gateway_bin())
            .arg("ctl")
            .arg("--data-dir")
            .arg(self.dir(s))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running gateway ctl");
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `ctl` that must succeed; its stdout.
    #[track_caller]
    pub fn ctl_ok(&self, s: Site, args: &[&str]) -> String {
        let (st, out, err) = self.ctl(s, args);
        if !st.success() {
            panic!(
                "`gateway ctl {}` at site {} failed ({st})\nstdout: {out}\nstderr: {err}\nstatus A: {}\nstatus B: {}\n{}",
                args.join(" "),
                s.name(),
                self.try_vs(Site::A).map(|v| v.to_string()).unwrap_or_default(),
                self.try_vs(Site::B).map(|v| v.to_string()).unwrap_or_default(),
                self.logs(40)
            );
        }
        out
    }

    /// `ctl --json status`'s `result`.
    pub fn try_status(&self, s: Site) -> Result<Value> {
        let (st, out, err) = self.ctl(s, &["--json", "status"]);
        if !st.success() {
            bail!("ctl status at {} failed ({st}): {out}{err}", s.name());
        }
        let v: Value = serde_json::from_str(&out).with_context(|| format!("status is not JSON: {out}"))?;
        if v["ok"] != true {
            bail!("ctl status at {}: {v}", s.name());
        }
        Ok(v["result"].clone())
    }

    #[track_caller]
    pub fn status(&self, s: Site) -> Value {
        match self.try_status(s) {
            Ok(v) => v,
            Err(e) => panic!("{e:#}\n{}", self.logs(40)),
        }
    }

    /// The status of `vs1` at a site (`result.replication.volume_sets[0]`).
    pub fn try_vs(&self, s: Site) -> Result<Value> {
        let st = self.try_status(s)?;
        let v = &st["replication"]["volume_sets"][0];
        if v["name"] != SET {
            bail!("no volume set {SET} in the status of {}: {st}", s.name());
        }
        Ok(v.clone())
    }

    #[track_caller]
    pub fn vs(&self, s: Site) -> Value {
        match self.try_vs(s) {
            Ok(v) => v,
            Err(e) => panic!("{e:#}\n{}", self.logs(40)),
        }
    }

    /// Poll a site's `vs1` status (every 50 ms) until `ok` holds; panics with both statuses and
    /// log tails after `timeout`.
    #[track_caller]
    pub fn wait_until(&self, s: Site, what: &str, timeout: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        let mut last = Value::Null;
        loop {
            if let Ok(v) = self.try_vs(s) {
                if ok(&v) {
                    return v;
                }
                last = v;
            }
            if Instant::now() > deadline {
                panic!(
                    "site {} not {what} after {timeout:?}; its status: {last}\nstatus of {}: {}\n{}",
                    s.name(),
                    s.other().name(),
                    self.try_vs(s.other()).map(|v| v.to_string()).unwrap_or_else(|e| e.to_string()),
                    self.logs(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until `vs1` is in `state` at a site.
    #[track_caller]
    pub fn wait_state(&self, s: Site, state: &str, timeout: Duration) -> Value {
        self.wait_until(s, state, timeout, |v| v["state"] == state)
    }

    /// Wait until `vs1` is InSync at its production site `s`, mirroring with the link up.
    #[track_caller]
    pub fn wait_in_sync(&self, s: Site, timeout: Duration) -> Value {
        self.wait_until(s, "InSync and mirroring", timeout, |v| {
            v["state"] == "InSync" && v["flow"] == "mirroring" && v["link_up"] == true && v["production"] == s.name()
        })
    }

    /// Assert both backing files are byte-identical.
    #[track_caller]
    pub fn assert_identical(&self, what: &str) {
        let (a, b) = (self.image(Site::A), self.image(Site::B));
        if let Some(at) = crate::first_mismatch(&a, &b) {
            let blocks = a.chunks(4096).zip(b.chunks(4096)).filter(|(x, y)| x != y).count();
            panic!(
                "{what}: A's and B's images differ, first at offset {at} ({blocks} 4 KiB blocks differ; sizes {} and {})\n\
                 status A: {}\nstatus B: {}\n{}",
                a.len(),
                b.len(),
                self.try_vs(Site::A).map(|v| v.to_string()).unwrap_or_default(),
                self.try_vs(Site::B).map(|v| v.to_string()).unwrap_or_default(),
                self.logs(30)
            );
        }
    }
}

/// A TCP proxy on 127.0.0.1 (std threads) in front of `target`: [`Proxy::cut`] closes every
/// connection and refuses new ones (accepts and closes at once); [`Proxy::restore`] forwards
/// again.
pub struct Proxy {
    pub port: u16,
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    target: SocketAddr,
    cut: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

impl ProxyInner {
    fn close_all(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Proxy {
    pub fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let inner = Arc::new(ProxyInner {
            target,
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let i2 = inner.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if i2.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                if i2.cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect_timeout(&i2.target, Duration::from_secs(2)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut conns = i2.conns.lock().unwrap();
                    // Cut between the check above and here: do not let it through.
                    if i2.cut.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        let _ = server.shutdown(Shutdown::Both);
                        continue;
                    }
                    if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                        conns.push(c);
                        conns.push(s);
                    }
                }
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut from, mut to) = match (from.try_clone(), to.try_clone()) {
                        (Ok(f), Ok(t)) => (f, t),
                        _ => continue,
                    };
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = from.shutdown(Shutdown::Both);
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Ok(Proxy { port, inner })
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Close every connection through the proxy and refuse new ones.
    pub fn cut(&self) {
        self.inner.cut.store(true, Ordering::SeqCst);
        self.inner.close_all();
    }

    /// Forward new connections again.
    pub fn restore(&self) {
        self.inner.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.inner.close_all();
        // Wake the accept loop so its thread ends.
        let _ =
            TcpStream::connect_timeout(&format!("127.0.0.1:{}", self.port).parse().unwrap(), Duration::from_secs(1));
    }
}

/// A libnbd writer: `WRITER URI SEED SECONDS OUT_PATH [QD] [SPAN_BYTES]`. Writes 4 KiB-aligned
/// blocks (1 to 4 blocks each) of random content at random offsets within the first
/// SPAN_BYTES (default: the whole export), QD requests in flight (default 8), never two in
/// flight on one block. Before sending a write it records `P id block sha256...` (one digest
/// per 4 KiB block), and when its acknowledgement arrives `A id` (line-buffered, so a line is
/// out before the next write is sent). A failed write is recorded as `F id message`; at the
/// end `DONE`, or `E message` if the connection broke.
pub const WRITER: &str = r#"
import nbd, sys, random, hashlib, time
uri, seed, secs, out_path = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
qd = int(sys.argv[5]) if len(sys.argv) > 5 else 8
BS = 4096
rng = random.Random(seed)
out = open(out_path, "w", buffering=1)
h = nbd.NBD()
h.connect_uri(uri)
span = int(sys.argv[6]) if len(sys.argv) > 6 else h.get_size()
nblocks = span // BS
inflight = {}
busy = set()
wid = 0

def reap():
    for cookie in list(inflight):
        try:
            done = h.aio_command_completed(cookie)
        except nbd.Error as e:
            w, blocks, _ = inflight.pop(cookie)
            busy.difference_update(blocks)
            out.write("F %d %s\n" % (w, str(e).replace("\n", " ")))
            continue
        if done:
            w, blocks, _ = inflight.pop(cookie)
            busy.difference_update(blocks)
            out.write("A %d\n" % w)

deadline = time.monotonic() + secs
try:
    while time.monotonic() < deadline:
        while len(inflight) < qd:
            n = rng.randint(1, 4)
            b = rng.randrange(nblocks - n + 1)
            blocks = range(b, b + n)
            if busy.intersection(blocks):
                continue
            data = rng.randbytes(n * BS)
            wid += 1
            sums = " ".join(hashlib.sha256(data[i * BS:(i + 1) * BS]).hexdigest() for i in range(n))
            out.write("P %d %d %s\n" % (wid, b, sums))
            buf = nbd.Buffer.from_bytearray(bytearray(data))
            cookie = h.aio_pwrite(buf, b * BS)
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

/// A [`WRITER`] running in the background, its log in a file.
pub struct Writer {
    child: Child,
    pub log: PathBuf,
}

impl Writer {
    /// Start a writer against `uri` for at most `secs` seconds, logging to `log`.
    pub fn spawn(uri: &str, seed: u64, secs: u64, log: &Path, qd: usize, span: Option<u64>) -> Writer {
        let mut args =
            vec![uri.to_owned(), seed.to_string(), secs.to_string(), log.display().to_string(), qd.to_string()];
        if let Some(s) = span {
            args.push(s.to_string());
        }
        let child = Command::new("timeout")
            .args(["-k", "5", &(secs + 30).to_string(), "/usr/bin/python3", "-c", WRITER])
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning the python writer");
        Writer { child, log: log.to_path_buf() }
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Acknowledged writes so far.
    pub fn acks(&self) -> usize {
        self.text().lines().filter(|l| l.starts_with("A ")).count()
    }

    /// Has it exited?
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Wait until it has `n` acknowledgements (panics if it exits first or after `timeout`).
    #[track_caller]
    pub fn wait_acks(&mut self, n: usize, timeout: Duration) {
        let t0 = Instant::now();
        while self.acks() < n {
            if let Some(st) = self.exited() {
                panic!("writer exited ({st}) after {} acks, wanted {n}; log tail:\n{}", self.acks(), self.tail(10));
            }
            assert!(t0.elapsed() < timeout, "writer has {} acks after {timeout:?}, wanted {n}", self.acks());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stop it (SIGTERM to `timeout`, which passes it on to python) and wait; returns its
    /// stderr.
    pub fn kill(self) -> String {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.finish()
    }

    /// Wait for it to end by itself (bounded by its own timeout); returns its stderr.
    pub fn finish(mut self) -> String {
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    pub fn tail(&self, n: usize) -> String {
        let t = self.text();
        let v: Vec<&str> = t.lines().collect();
        v[v.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let _ = self.child.wait();
        }
    }
}

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

/// sha256 of every 4 KiB block of `image`.
pub fn block_hashes(image: &Path) -> Vec<String> {
    let out = crate::python(HASHES, &[image.to_str().unwrap()], Duration::from_secs(60)).unwrap();
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_owned).collect()
}

/// sha256 of 4096 zero bytes.
pub const ZERO_BLOCK_SHA256: &str = "ad7facb2586fc6e966c004d7d1d16b024f5805ff7cb47c7a85dabd8b48892ca7";

/// What each block may hold, from a [`WRITER`] log: its last acknowledged content (or what
/// it held before), and the content of a write to it that was still in flight.
#[derive(Default, Debug)]
pub struct Expect {
    pub acked: HashMap<u64, String>,
    pub pending: HashMap<u64, String>,
    /// Contents of failed (never acknowledged) writes since the block's last acknowledgement.
    pub maybe: HashMap<u64, Vec<String>>,
    pub acked_writes: usize,
    pub sent_writes: usize,
    pub failed_writes: Vec<String>,
    pub error: Option<String>,
    pub done: bool,
}

impl Expect {
    pub fn parse(text: &str) -> Expect {
        let mut e = Expect::default();
        let mut writes: HashMap<u64, (u64, Vec<String>)> = HashMap::new();
        // Only complete lines: the writer may have been cut off in the middle of one.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for line in complete.lines() {
            let mut f = line.split_whitespace();
            match f.next() {
                Some("P") => {
                    let id: u64 = f.next().unwrap().parse().unwrap();
                    let block: u64 = f.next().unwrap().parse().unwrap();
                    let sums: Vec<String> = f.map(str::to_owned).collect();
                    for (k, s) in sums.iter().enumerate() {
                        let old = e.pending.insert(block + k as u64, s.clone());
                        assert!(old.is_none(), "two writes in flight on block {}", block + k as u64);
                    }
                    writes.insert(id, (block, sums));
                    e.sent_writes += 1;
                }
                Some("A") => {
                    let id: u64 = f.next().unwrap().parse().unwrap();
                    let (block, sums) = writes.get(&id).unwrap();
                    for (k, s) in sums.iter().enumerate() {
                        e.pending.remove(&(block + k as u64));
                        e.maybe.remove(&(block + k as u64));
                        e.acked.insert(block + k as u64, s.clone());
                    }
                    e.acked_writes += 1;
                }
                Some("F") => {
                    // Not acknowledged: the block may hold either content.
                    let id: u64 = f.next().unwrap().parse().unwrap();
                    let (block, sums) = writes.get(&id).unwrap();
                    for (k, s) in sums.iter().enumerate() {
                        e.pending.remove(&(block + k as u64));
                        e.maybe.entry(block + k as u64).or_default().push(s.clone());
                    }
                    e.failed_writes.push(line.to_owned());
                }
                Some("E") => e.error = Some(line.to_owned()),
                Some("DONE") => e.done = true,
                _ => {}
            }
        }
        e
    }

    /// Blocks of `got` (block hashes) whose content is neither the last acknowledged one (or
    /// `before`'s, for blocks never acknowledged) nor an in-flight write's; and how many
    /// blocks hold an in-flight write's content.
    pub fn check(&self, got: &[String], before: &[String]) -> (Vec<u64>, usize) {
        let mut bad = Vec::new();
        let mut landed = 0;
        for (b, h) in got.iter().enumerate() {
            let b = b as u64;
            let acked = self.acked.get(&b).or_else(|| before.get(b as usize)).map_or(ZERO_BLOCK_SHA256, String::as_str);
            if h == acked {
                continue;
            }
            if self.pending.get(&b) == Some(h) || self.maybe.get(&b).is_some_and(|m| m.contains(h)) {
                landed += 1;
                continue;
            }
            bad.push(b);
        }
        (bad, landed)
    }
}

/// A small deterministic generator (so a failing seed reproduces).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % bound.max(1)
    }
}
