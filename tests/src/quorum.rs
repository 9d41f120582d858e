//! A replicated server pair recovered by controller agreement (`recovery = "quorum"`, the
//! `vtc-quorum` method of seeds 000/001, FIG. 4 and FIG. 5), for the `quorum_*` tests.
//!
//! A [`Cluster`] owns a temporary directory with:
//!
//! * two **servers**, sites `A` and `B`: real `gateway` daemons replicating volume set `vs1`
//!   (one export `vol0` on a file backend, 16 MiB by default) exactly like
//!   [`crate::sites::TwoSites`], plus `recovery = "quorum"` in their `[[volume_set]]`. Such a
//!   server holds all host I/O until a controller places it online; a `shutdown` command makes
//!   its process exit by itself (exit code 0). Each server's NBD, replication and control ports
//!   are fixed in its config, so a server started again (on the same data directory) is where
//!   it was;
//! * `N` **controllers** `c1`..`cN` (numbered from 1 in this API, as their ids): `gateway`
//!   processes with only a `[controller]` section, each with its own data directory (its
//!   shutdown key is `<dir>/quorum.key`) and admin socket.
//!
//! [`Cluster::new`] writes every config, starts both servers, then every controller, and runs
//! `quorum bootstrap` at each controller (a blank key, as at a first setup). Helpers start,
//! stop (SIGTERM), kill (SIGKILL) either kind of process, run `gateway ctl` at any of them,
//! read a controller's `quorum status` and a server's `quorum` status of `vs1`, wait (always
//! bounded) for an outcome, write patterns through the primary with the in-repo raw NBD client
//! (remembering them), and compare the two servers' image files after a clean stop.
//!
//! Every failure message ends with [`Cluster::diag`]: the status of every running process and
//! the tail of every log.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use crate::sites::{free_port, Site, SET, VOLUME};
use crate::{first_mismatch, gateway_bin, pattern, raw};

pub const MIB: u64 = 1 << 20;
/// The bound of most waits in these tests.
pub const WAIT: Duration = Duration::from_secs(60);
/// The four shutdown modes, in the order the patent lists them.
pub const MODES: [&str; 4] = ["normal", "expedite", "immediate", "force"];
/// The image file of `vol0` in each server's data directory.
pub const IMAGE: &str = "vol0.img";

/// How often the waits poll.
const POLL: Duration = Duration::from_millis(200);
/// How many log lines of each daemon a failure message shows.
const TAIL: usize = 40;

// ----- one daemon process -------------------------------------------------------------------

/// One `gateway serve` process (a server or a controller) with its data directory, config and
/// log (`daemon.log`, appended to by every run). Killed when dropped.
pub struct Daemon {
    pub name: String,
    pub dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    exit: Option<ExitStatus>,
    /// Length of the log when the current run started.
    run_from: u64,
}

impl Daemon {
    /// A daemon named `name` (for messages) whose config `config_text` is written to
    /// `<dir>/gateway.toml`; not started.
    pub fn new(name: &str, dir: &Path, config_text: &str) -> Result<Daemon> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let config = dir.join("gateway.toml");
        std::fs::write(&config, config_text).with_context(|| format!("writing {}", config.display()))?;
        Ok(Daemon {
            name: name.to_owned(),
            dir: dir.to_path_buf(),
            config,
            log: dir.join("daemon.log"),
            child: None,
            exit: None,
            run_from: 0,
        })
    }

    /// Start the process (`gateway serve --config <dir>/gateway.toml --data-dir <dir>`) without
    /// waiting for anything.
    pub fn spawn(&mut self) -> Result<()> {
        ensure!(!self.alive(), "{} is already running", self.name);
        let logf = OpenOptions::new().create(true).append(true).open(&self.log).context("opening the log")?;
        self.run_from = logf.metadata().map(|m| m.len()).unwrap_or(0);
        let child = Command::new(gateway_bin())
            .args(["serve", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.dir)
            .env("GATEWAY_LOG", std::env::var("GATEWAY_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(logf.try_clone().context("log file")?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("spawning {}", self.name))?;
        self.child = Some(child);
        self.exit = None;
        Ok(())
    }

    fn reap(&mut self) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                self.exit = Some(st);
                self.child = None;
            }
        }
    }

    /// Is the process running?
    pub fn alive(&mut self) -> bool {
        self.reap();
        self.child.is_some()
    }

    /// How the last run ended, if it has.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.reap();
        self.exit
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Wait (bounded) for the process to exit by itself; `None` if it still runs at `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.alive() {
                return self.exit;
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait (30 s) for the exit; SIGKILL and an error if it does not come.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if !self.alive() {
            return self.exit.with_context(|| format!("{} was never started", self.name));
        }
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        match self.wait_exit(Duration::from_secs(30)) {
            Some(st) => Ok(st),
            None => {
                self.kill9();
                bail!("{} did not exit within 30 s of SIGTERM; log tail:\n{}", self.name, self.tail(TAIL))
            }
        }
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.exit = c.wait().ok();
        }
    }

    /// Everything this daemon logged (all runs).
    pub fn log(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// What the current (or last) run logged.
    pub fn run_log(&self) -> String {
        let all = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(all.get(self.run_from as usize..).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines of the log.
    pub fn tail(&self, n: usize) -> String {
        let l = self.log();
        let v: Vec<&str> = l.lines().collect();
        v[v.len().saturating_sub(n)..].join("\n")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("admin.sock")
    }

    /// The config file (`<dir>/gateway.toml`).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Replace the config file's text; the next [`Daemon::spawn`] reads it.
    pub fn write_config(&self, text: &str) -> Result<()> {
        std::fs::write(&self.config, text).with_context(|| format!("writing {}", self.config.display()))
    }

    /// Send signal `sig` (a `kill` name: "STOP", "CONT", "TERM"...) to the running process.
    pub fn signal(&mut self, sig: &str) -> Result<()> {
        ensure!(self.alive(), "{} is not running (signal {sig})", self.name);
        let pid = self.pid().context("no pid")?;
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .with_context(|| format!("kill -{sig} {pid}"))?;
        ensure!(st.success(), "kill -{sig} {pid} ({}) failed: {st}", self.name);
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ----- gateway ctl and its JSON ---------------------------------------------------------------

/// `gateway ctl --socket <dir>/admin.sock ARGS...`, bounded at `secs` seconds; the output
/// whatever the exit status (an error only if it cannot be run).
pub fn ctl_at(dir: &Path, args: &[&str], secs: u64) -> Result<Output> {
    Command::new("timeout")
        .args(["-k", "5", &secs.to_string()])
        .arg(gateway_bin())
        .arg("ctl")
        .arg("--socket")
        .arg(dir.join("admin.sock"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running gateway ctl {}", args.join(" ")))
}

/// The answer of a `ctl --json ...` call: its `result` when it prints the daemon's whole reply
/// (`{"ok": true, "result": ...}`), else the printed object itself. An error if the call
/// failed or the reply says `"ok": false`.
pub fn json_result(args: &[&str], out: &Output) -> Result<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "`ctl {}` failed ({}): {stdout}{stderr}", args.join(" "), out.status);
    let v: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("`ctl {}` did not print JSON: {stdout}{stderr}", args.join(" ")))?;
    if let Some(ok) = v.get("ok") {
        ensure!(ok == &Value::Bool(true), "`ctl {}` answered {v}", args.join(" "));
    }
    Ok(match v.get("result") {
        Some(r) => r.clone(),
        None => v,
    })
}

/// Find the `quorum` object of volume set `vs1` anywhere in a server's status (normally
/// `replication.volume_sets[i].quorum` for the set whose `name` is `vs1`; also accepted: a
/// map keyed by set name).
pub fn find_set_quorum(v: &Value) -> Option<&Value> {
    match v {
        Value::Object(m) => {
            if m.get("name").and_then(Value::as_str) == Some(SET) {
                if let Some(q) = m.get("quorum").filter(|q| q.is_object()) {
                    return Some(q);
                }
            }
            if let Some(q) = m.get(SET).and_then(|s| s.get("quorum")).filter(|q| q.is_object()) {
                return Some(q);
            }
            m.values().find_map(find_set_quorum)
        }
        Value::Array(a) => a.iter().find_map(find_set_quorum),
        _ => None,
    }
}

/// Find the replication status of `vs1` (the object whose `name` is `vs1`) in a server's status.
pub fn find_set(v: &Value) -> Option<&Value> {
    match v {
        Value::Object(m) => {
            if m.get("name").and_then(Value::as_str) == Some(SET)
                && (m.contains_key("state") || m.contains_key("quorum"))
            {
                return Some(v);
            }
            m.values().find_map(find_set)
        }
        Value::Array(a) => a.iter().find_map(find_set),
        _ => None,
    }
}

/// A controller status's `outcome` ("" if absent).
pub fn outcome(v: &Value) -> &str {
    v["outcome"].as_str().unwrap_or_default()
}

/// A controller status's `reason` ("" if absent).
pub fn reason(v: &Value) -> &str {
    v["reason"].as_str().unwrap_or_default()
}

/// The servers a controller status says are held by a shutdown command.
pub fn held(v: &Value) -> Vec<String> {
    v["held"].as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// The primary of an "online P+S" outcome.
pub fn pair_primary(v: &Value) -> Option<Site> {
    let rest = outcome(v).strip_prefix("online ")?;
    let (p, s) = rest.split_once('+')?;
    match (site(p)?, site(s)?) {
        (p, s) if p != s => Some(p),
        _ => None,
    }
}

/// `Site` by name.
pub fn site(name: &str) -> Option<Site> {
    match name {
        "A" => Some(Site::A),
        "B" => Some(Site::B),
        _ => None,
    }
}

/// The outcome string for `p` alone ("online B") or `p` primary with `s` ("online B+A").
pub fn online(p: Site, s: Option<Site>) -> String {
    match s {
        Some(s) => format!("online {}+{}", p.name(), s.name()),
        None => format!("online {}", p.name()),
    }
}

fn toml_str(p: &Path) -> String {
    p.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
}

// ----- configs --------------------------------------------------------------------------------

/// Ports of one server.
#[derive(Debug, Clone, Copy)]
pub struct ServerPorts {
    pub nbd: u16,
    pub replication: u16,
    pub control: u16,
}

/// A server's config: [`crate::sites::TwoSites`]' site config (production `A`, file backend,
/// `on_link_loss = "continue"`) plus `recovery = "quorum"`, its NBD port in `[server] listen`.
pub fn server_config(me: Site, ports: [ServerPorts; 2], size: &str, dir: &Path) -> String {
    let (mine, peer) = match me {
        Site::A => (ports[0], ports[1]),
        Site::B => (ports[1], ports[0]),
    };
    format!(
        "[server]\nlisten = [\"127.0.0.1:{nbd}\"]\ndata_dir = \"{dir}\"\n\n\
         [node]\nsite = \"{site}\"\nreplication_listen = \"127.0.0.1:{repl}\"\ncontrol_listen = \"127.0.0.1:{ctrl}\"\n\n\
         [[export]]\nname = \"{VOLUME}\"\nsize = \"{size}\"\n[export.backend]\ntype = \"file\"\npath = \"{IMAGE}\"\n\n\
         [[volume_set]]\nname = \"{SET}\"\nvolumes = [\"{VOLUME}\"]\nproduction = \"A\"\npeer_site = \"{peer_site}\"\n\
         peer_replication = \"127.0.0.1:{peer_repl}\"\npeer_control = \"127.0.0.1:{peer_ctrl}\"\n\
         on_link_loss = \"continue\"\nrecovery = \"quorum\"\n",
        nbd = mine.nbd,
        dir = toml_str(dir),
        site = me.name(),
        repl = mine.replication,
        ctrl = mine.control,
        peer_site = me.other().name(),
        peer_repl = peer.replication,
        peer_ctrl = peer.control,
    )
}

/// What one controller's config says.
#[derive(Debug, Clone)]
pub struct ControllerSpec {
    pub id: String,
    /// Where the other controllers connect.
    pub listen: u16,
    /// A port for `[server] listen` (a controller serves no exports, but the key is required
    /// to be non-empty without a unix socket).
    pub nbd: u16,
    pub dir: PathBuf,
    /// Raw TOML value of `threshold` (`2`, `"75%"`), or none for the default.
    pub threshold: Option<String>,
    pub report_by: String,
    /// Lines of `[controller.timing]` (raw TOML), or empty for none.
    pub timing: String,
    /// The other controllers: (id, listen port).
    pub peers: Vec<(String, u16)>,
    /// The control ports of servers A and B.
    pub servers: [u16; 2],
}

impl ControllerSpec {
    pub fn toml(&self) -> String {
        let mut c = format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\ndata_dir = \"{}\"\n\n\
             [controller]\nid = \"{}\"\nlisten = \"127.0.0.1:{}\"\nvolume_set = \"{SET}\"\nreport_by = \"{}\"\n",
            self.nbd,
            toml_str(&self.dir),
            self.id,
            self.listen,
            self.report_by
        );
        if let Some(t) = &self.threshold {
            c.push_str(&format!("threshold = {t}\n"));
        }
        if !self.timing.trim().is_empty() {
            c.push_str(&format!("[controller.timing]\n{}\n", self.timing.trim_end()));
        }
        for (id, port) in &self.peers {
            c.push_str(&format!("\n[[controller.peer]]\nid = \"{id}\"\naddress = \"127.0.0.1:{port}\"\n"));
        }
        for (name, port) in ["A", "B"].iter().zip(self.servers) {
            c.push_str(&format!("\n[[controller.server]]\nname = \"{name}\"\ncontrol = \"127.0.0.1:{port}\"\n"));
        }
        c
    }
}

// ----- the cluster ----------------------------------------------------------------------------

/// How a [`Cluster`] is configured.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of controllers (`c1`..`cN`).
    pub controllers: usize,
    /// Raw TOML value of the controllers' `threshold` (`Some("2".into())`,
    /// `Some("\"75%\"".into())`), or `None` for the default ("more than 50 %").
    pub threshold: Option<String>,
    /// `"poll"` or `"broadcast"`.
    pub report_by: &'static str,
    /// Lines of `[controller.timing]` (raw TOML; empty for none).
    pub timing: String,
    /// Size of `vol0`.
    pub size: String,
    /// Start everything and bootstrap every controller in [`Cluster::new`].
    pub start: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            controllers: 4,
            threshold: None,
            report_by: "poll",
            timing:
                "election_timeout_ms = 2000\nretry_ms = 1000\nexchange_ms = 500\nstagger_ms = 200\nstuck_ms = 3000\n"
                    .into(),
            size: "16MiB".into(),
            start: true,
        }
    }
}

/// A server of the pair.
pub struct Server {
    pub site: Site,
    pub ports: ServerPorts,
    pub daemon: Daemon,
}

/// A controller.
pub struct Controller {
    pub id: String,
    pub spec: ControllerSpec,
    pub daemon: Daemon,
}

/// Two quorum-recovered servers and their controllers (see the module doc). Every process is
/// killed when dropped.
pub struct Cluster {
    pub opts: ClusterOptions,
    servers: [Server; 2],
    controllers: Vec<Controller>,
    /// Every pattern written through [`Cluster::write_pattern`]: (offset, data).
    written: Vec<(u64, Vec<u8>)>,
    tmp: tempfile::TempDir,
}

fn si(s: Site) -> usize {
    match s {
        Site::A => 0,
        Site::B => 1,
    }
}

impl Cluster {
    /// Write every config; with `opts.start`, start both servers, then every controller, and
    /// bootstrap every controller's key.
    pub fn new(opts: ClusterOptions) -> Result<Cluster> {
        ensure!(opts.controllers >= 1, "a cluster needs controllers");
        let tmp = tempfile::tempdir().context("tempdir")?;
        let ports = [
            ServerPorts { nbd: free_port(), replication: free_port(), control: free_port() },
            ServerPorts { nbd: free_port(), replication: free_port(), control: free_port() },
        ];
        let mk_server = |s: Site| -> Result<Server> {
            let dir = tmp.path().join(s.name());
            let daemon =
                Daemon::new(&format!("server {}", s.name()), &dir, &server_config(s, ports, &opts.size, &dir))?;
            Ok(Server { site: s, ports: ports[si(s)], daemon })
        };
        let servers = [mk_server(Site::A)?, mk_server(Site::B)?];
        let ids: Vec<(String, u16)> = (1..=opts.controllers).map(|i| (format!("c{i}"), free_port())).collect();
        let mut controllers = Vec::new();
        for (id, listen) in &ids {
            let dir = tmp.path().join(id);
            let spec = ControllerSpec {
                id: id.clone(),
                listen: *listen,
                nbd: free_port(),
                dir: dir.clone(),
                threshold: opts.threshold.clone(),
                report_by: opts.report_by.to_owned(),
                timing: opts.timing.clone(),
                peers: ids.iter().filter(|(o, _)| o != id).cloned().collect(),
                servers: [ports[0].control, ports[1].control],
            };
            let daemon = Daemon::new(&format!("controller {id}"), &dir, &spec.toml())?;
            controllers.push(Controller { id: id.clone(), spec, daemon });
        }
        let start = opts.start;
        let mut c = Cluster { opts, servers, controllers, written: Vec::new(), tmp };
        if start {
            c.start_all()?;
        }
        Ok(c)
    }

    /// Start both servers, then every controller, then bootstrap every controller.
    pub fn start_all(&mut self) -> Result<()> {
        self.server(Site::A).daemon.spawn()?;
        self.server(Site::B).daemon.spawn()?;
        self.wait_server_ready(Site::A)?;
        self.wait_server_ready(Site::B)?;
        for i in 1..=self.controllers.len() {
            self.controller_spawn(i)?;
        }
        for i in 1..=self.controllers.len() {
            self.wait_controller_ready(i)?;
        }
        for i in 1..=self.controllers.len() {
            self.bootstrap(i)?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn server(&mut self, s: Site) -> &mut Server {
        &mut self.servers[si(s)]
    }

    pub fn server_ref(&self, s: Site) -> &Server {
        &self.servers[si(s)]
    }

    fn ctrl(&self, i: usize) -> Result<&Controller> {
        i.checked_sub(1).and_then(|k| self.controllers.get(k)).with_context(|| format!("no controller {i}"))
    }

    fn ctrl_mut(&mut self, i: usize) -> Result<&mut Controller> {
        i.checked_sub(1).and_then(|k| self.controllers.get_mut(k)).ok_or_else(|| anyhow!("no controller {i}"))
    }

    /// What controller `i`'s config says (its listen port, peers, servers...).
    pub fn controller_spec(&self, i: usize) -> Result<&ControllerSpec> {
        Ok(&self.ctrl(i)?.spec)
    }

    /// Change controller `i`'s config (`edit` gets its spec, or replaces the generated text by
    /// returning `Some`); written at once, read at its next start.
    pub fn edit_controller(
        &mut self,
        i: usize,
        edit: impl FnOnce(&mut ControllerSpec) -> Option<String>,
    ) -> Result<()> {
        let c = self.ctrl_mut(i)?;
        let text = edit(&mut c.spec).unwrap_or_else(|| c.spec.toml());
        c.daemon.write_config(&text)
    }

    /// Append `extra` (raw TOML, e.g. an `[[export.filter]]` for `vol0`) to server `s`'s
    /// config, or restore the original config with `None`; the next start reads it.
    pub fn edit_server(&mut self, s: Site, extra: Option<&str>) -> Result<()> {
        let dir = self.server_ref(s).daemon.dir.clone();
        let mut text = server_config(s, [self.servers[0].ports, self.servers[1].ports], &self.opts.size, &dir);
        if let Some(e) = extra {
            text.push_str(e);
        }
        self.servers[si(s)].daemon.write_config(&text)
    }

    /// Controller `i`'s listen address (where the other controllers connect).
    pub fn controller_addr(&self, i: usize) -> Result<String> {
        Ok(format!("127.0.0.1:{}", self.ctrl(i)?.spec.listen))
    }

    /// Server `s`'s control address (`[node] control_listen`).
    pub fn control_addr(&self, s: Site) -> String {
        format!("127.0.0.1:{}", self.server_ref(s).ports.control)
    }

    pub fn controller_count(&self) -> usize {
        self.controllers.len()
    }

    /// A controller's id (`c<i>`).
    pub fn id(&self, i: usize) -> String {
        format!("c{i}")
    }

    // ----- servers ----------------------------------------------------------------------------

    /// Start a server's process (again, on the same data directory and ports) and wait until it
    /// is ready: it logged "gateway ready" and its admin socket answers `status`.
    pub fn server_start(&mut self, s: Site) -> Result<()> {
        self.server(s).daemon.spawn()?;
        self.wait_server_ready(s)
    }

    fn wait_server_ready(&mut self, s: Site) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = &mut self.server(s).daemon;
            if !d.alive() {
                bail!("server {} exited ({:?}) before it was ready; log:\n{}", s.name(), d.exit, d.run_log());
            }
            if d.run_log().contains("gateway ready") && self.server_status(s).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("server {} not ready after 30 s\n{}", s.name(), self.diag());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM a server; fails unless it exits 0.
    pub fn server_stop(&mut self, s: Site) -> Result<()> {
        let st = self.server(s).daemon.stop()?;
        ensure!(st.success(), "server {} exited with {st} after SIGTERM\n{}", s.name(), self.diag());
        Ok(())
    }

    pub fn server_kill9(&mut self, s: Site) {
        self.server(s).daemon.kill9();
    }

    pub fn server_alive(&mut self, s: Site) -> bool {
        self.server(s).daemon.alive()
    }

    /// Wait for a server to exit by itself (after a shutdown command); its exit status.
    pub fn wait_server_exit(&mut self, s: Site, timeout: Duration) -> Result<ExitStatus> {
        match self.server(s).daemon.wait_exit(timeout) {
            Some(st) => Ok(st),
            None => bail!("server {} still runs {timeout:?} after it was told to shut down\n{}", s.name(), self.diag()),
        }
    }

    /// Wait for a server to exit by itself with exit code 0.
    pub fn wait_server_exit_ok(&mut self, s: Site, timeout: Duration) -> Result<()> {
        let st = self.wait_server_exit(s, timeout)?;
        ensure!(st.success(), "server {} exited with {st} after a shutdown command\n{}", s.name(), self.diag());
        Ok(())
    }

    /// `ctl --json status` at a server: its `result`.
    pub fn server_status(&self, s: Site) -> Result<Value> {
        let args = ["--json", "status"];
        let out = ctl_at(&self.server_ref(s).daemon.dir, &args, 30)?;
        json_result(&args, &out).with_context(|| format!("status of server {}", s.name()))
    }

    /// The `quorum` object of `vs1` in a server's status.
    pub fn server_quorum(&self, s: Site) -> Result<Value> {
        let st = self.server_status(s)?;
        find_set_quorum(&st)
            .cloned()
            .with_context(|| format!("no `quorum` for {SET} in the status of {}: {st}", s.name()))
    }

    /// Poll a server's `quorum` object of `vs1` every 200 ms until `pred` holds; fails after
    /// `timeout` (saying `what` was awaited) with the last one and [`Cluster::diag`].
    pub fn wait_server_quorum(
        &self,
        s: Site,
        what: &str,
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.server_quorum(s) {
                Ok(q) if pred(&q) => return Ok(q),
                Ok(q) => q.to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "server {}: not {what} after {timeout:?} (last quorum status: {last})\n{}",
                    s.name(),
                    self.diag()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// A server's `quorum.online` for `vs1`: "primary", "secondary" or "offline".
    pub fn server_online(&self, s: Site) -> Result<String> {
        let q = self.server_quorum(s)?;
        q["online"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no `online` in the quorum status of {}: {q}", s.name()))
    }

    /// Wait until a server's `quorum.online` is `want`.
    pub fn wait_server_online(&self, s: Site, want: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.server_online(s) {
                Ok(o) if o == want => return Ok(()),
                Ok(o) => o,
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("server {} not {want} after {timeout:?} (last: {last})\n{}", s.name(), self.diag());
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn nbd_addr(&self, s: Site) -> String {
        format!("127.0.0.1:{}", self.server_ref(s).ports.nbd)
    }

    pub fn uri(&self, s: Site) -> String {
        format!("nbd://{}/{VOLUME}", self.nbd_addr(s))
    }

    pub fn image_path(&self, s: Site) -> PathBuf {
        self.server_ref(s).daemon.dir.join(IMAGE)
    }

    pub fn image(&self, s: Site) -> Result<Vec<u8>> {
        let p = self.image_path(s);
        std::fs::read(&p).with_context(|| format!("reading {}", p.display()))
    }

    // ----- controllers ------------------------------------------------------------------------

    /// Start controller `i` (again) and wait until it answers `quorum status`.
    pub fn controller_start(&mut self, i: usize) -> Result<()> {
        self.controller_spawn(i)?;
        self.wait_controller_ready(i)
    }

    /// Start controller `i`'s process without waiting for anything.
    pub fn controller_spawn(&mut self, i: usize) -> Result<()> {
        self.ctrl_mut(i)?.daemon.spawn()
    }

    /// The process of controller `i` (to read its log, wait for its exit...).
    pub fn controller_daemon(&mut self, i: usize) -> Result<&mut Daemon> {
        Ok(&mut self.ctrl_mut(i)?.daemon)
    }

    fn wait_controller_ready(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = &mut self.ctrl_mut(i)?.daemon;
            if !d.alive() {
                bail!("controller c{i} exited ({:?}) before it was ready; log:\n{}", d.exit, d.run_log());
            }
            let last = match self.quorum_status(i) {
                Ok(v) if v.get("outcome").is_some() => return Ok(()),
                Ok(v) => v.to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("controller c{i} does not answer `quorum status` after 30 s (last: {last})\n{}", self.diag());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM controller `i`; fails unless it exits 0.
    pub fn controller_stop(&mut self, i: usize) -> Result<()> {
        let st = self.ctrl_mut(i)?.daemon.stop()?;
        ensure!(st.success(), "controller c{i} exited with {st} after SIGTERM\n{}", self.diag());
        Ok(())
    }

    pub fn controller_kill9(&mut self, i: usize) -> Result<()> {
        self.ctrl_mut(i)?.daemon.kill9();
        Ok(())
    }

    /// Send signal `sig` ("STOP", "CONT"...) to controller `i`'s process. A stopped controller
    /// answers nothing: wait with [`Cluster::wait_outcome_at`] on the others, not with
    /// [`Cluster::wait_outcome_all`].
    pub fn controller_signal(&mut self, i: usize, sig: &str) -> Result<()> {
        self.ctrl_mut(i)?.daemon.signal(sig)
    }

    pub fn controller_alive(&mut self, i: usize) -> bool {
        self.ctrl_mut(i).map(|c| c.daemon.alive()).unwrap_or(false)
    }

    /// The numbers of the controllers whose process runs.
    pub fn running_controllers(&mut self) -> Vec<usize> {
        (1..=self.controllers.len()).filter(|&i| self.controllers[i - 1].daemon.alive()).collect()
    }

    /// Controller `i`'s saved shutdown key.
    pub fn key_path(&self, i: usize) -> PathBuf {
        self.controllers.get(i.wrapping_sub(1)).map(|c| c.daemon.dir.join("quorum.key")).unwrap_or_default()
    }

    /// `gateway ctl ARGS...` at controller `i` (bounded at 30 s), whatever its exit status.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Result<Output> {
        ctl_at(&self.ctrl(i)?.daemon.dir, args, 30)
    }

    /// `gateway ctl ARGS...` at a server, whatever its exit status.
    pub fn ctl_server(&self, s: Site, args: &[&str]) -> Result<Output> {
        ctl_at(&self.server_ref(s).daemon.dir, args, 30)
    }

    /// `gateway ctl ARGS...` at controller `i` that must exit 0; its stdout.
    pub fn ctl_ok(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = self.ctl(i, args)?;
        if !out.status.success() {
            bail!(
                "`gateway ctl {}` at c{i} failed ({})\nstdout: {}\nstderr: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.diag()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `quorum bootstrap` at controller `i` (must succeed).
    pub fn bootstrap(&self, i: usize) -> Result<()> {
        self.ctl_ok(i, &["quorum", "bootstrap"]).map(drop)
    }

    /// `shutdown --server SERVERS --mode MODE` given to controller `i` (must be accepted).
    pub fn shutdown(&self, i: usize, servers: &str, mode: &str) -> Result<()> {
        self.ctl_ok(i, &["shutdown", "--server", servers, "--mode", mode]).map(drop)
    }

    /// `return --server SERVERS` given to controller `i` (must be accepted).
    pub fn return_servers(&self, i: usize, servers: &str) -> Result<()> {
        self.ctl_ok(i, &["return", "--server", servers]).map(drop)
    }

    /// `ctl --json quorum status` at controller `i`: the status object (`outcome`, `reason`,
    /// `threshold`, `controllers`, `key`, `elections`, `mode`, `held`, `servers`, `peers`...).
    pub fn quorum_status(&self, i: usize) -> Result<Value> {
        let args = ["--json", "quorum", "status"];
        let out = self.ctl(i, &args)?;
        let v = json_result(&args, &out).with_context(|| format!("quorum status of c{i}"))?;
        // Accept the status nested one level down as well (`{"quorum": {...}}`).
        if v.get("outcome").is_none() {
            if let Some(q) = v.get("quorum").filter(|q| q.get("outcome").is_some()) {
                return Ok(q.clone());
            }
        }
        Ok(v)
    }

    /// Poll controller `i`'s quorum status every 200 ms until `pred` holds; fails after
    /// `timeout` with the last status and [`Cluster::diag`].
    pub fn wait_outcome(&self, i: usize, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.quorum_status(i) {
                Ok(v) if pred(&v) => return Ok(v),
                Ok(v) => v.to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "c{i}: the awaited quorum status did not come within {timeout:?}; last status: {last}\n{}",
                    self.diag()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`Cluster::wait_outcome`] at every running controller (one after the other, all within
    /// `timeout`); their statuses.
    pub fn wait_outcome_all(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        for i in self.running_controllers() {
            let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
            out.push(self.wait_outcome(i, &pred, left)?);
        }
        Ok(out)
    }

    /// [`Cluster::wait_outcome`] at each controller of `which` (one after the other, all within
    /// `timeout`); their statuses.
    pub fn wait_outcome_at(
        &self,
        which: &[usize],
        pred: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        for &i in which {
            let left = deadline.saturating_duration_since(Instant::now()).max(POLL);
            out.push(self.wait_outcome(i, &pred, left)?);
        }
        Ok(out)
    }

    /// Check, every 200 ms for `dur`, that `pred` holds at every controller in `which`; fails at
    /// the first status where it does not.
    pub fn expect_stays(
        &self,
        which: &[usize],
        what: &str,
        pred: impl Fn(&Value) -> bool,
        dur: Duration,
    ) -> Result<()> {
        let end = Instant::now() + dur;
        loop {
            for &i in which {
                let v = self.quorum_status(i)?;
                ensure!(pred(&v), "c{i} is no longer {what}: {v}\n{}", self.diag());
            }
            if Instant::now() > end {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Wait until every running controller says "online P+S" for one pair and the servers
    /// agree (P primary, S secondary); P.
    pub fn wait_pair_online(&mut self, timeout: Duration) -> Result<Site> {
        let deadline = Instant::now() + timeout;
        let first = *self.running_controllers().first().context("no controller is running")?;
        let v = self.wait_outcome(first, |v| pair_primary(v).is_some(), timeout)?;
        let p = pair_primary(&v).context("pair outcome")?;
        let want = online(p, Some(p.other()));
        let left = || deadline.saturating_duration_since(Instant::now()).max(POLL);
        self.wait_outcome_all(|v| outcome(v) == want, left())?;
        self.wait_server_online(p, "primary", left())?;
        self.wait_server_online(p.other(), "secondary", left())?;
        Ok(p)
    }

    /// Wait until every running controller says "online P+S" with `p` primary, and the servers
    /// agree.
    pub fn wait_pair_online_with(&mut self, p: Site, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let want = online(p, Some(p.other()));
        self.wait_outcome_all(|v| outcome(v) == want, timeout)?;
        let left = || deadline.saturating_duration_since(Instant::now()).max(POLL);
        self.wait_server_online(p, "primary", left())?;
        self.wait_server_online(p.other(), "secondary", left())
    }

    /// Wait until every running controller says "online S" (`s` alone) and `s` is primary.
    pub fn wait_alone_online(&mut self, s: Site, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let want = online(s, None);
        self.wait_outcome_all(|v| outcome(v) == want, timeout)?;
        self.wait_server_online(s, "primary", deadline.saturating_duration_since(Instant::now()).max(POLL))
    }

    /// Wait until nothing is left to copy between the servers, twice in a row 200 ms apart
    /// (see [`Cluster::synced_now`]).
    pub fn wait_synced(&mut self, timeout: Duration) -> Result<()> {
        let i = *self.running_controllers().first().context("no controller is running")?;
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.synced_now(i) {
                Ok(()) => {
                    std::thread::sleep(POLL);
                    match self.synced_now(i) {
                        Ok(()) => return Ok(()),
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            if Instant::now() > deadline {
                bail!("the servers are not in sync after {timeout:?}: {last:#}\n{}", self.diag());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Is the pair in sync now, seen from controller `i`? Its outcome is "online P+S"; both
    /// servers are connected and operational with no copies pending and at the same position;
    /// and P's replication status of `vs1` is `InSync`, mirroring, with no dirty bytes and no
    /// resync in progress.
    pub fn synced_now(&self, i: usize) -> Result<()> {
        let v = self.quorum_status(i)?;
        let p = pair_primary(&v).with_context(|| format!("c{i}'s outcome is not a pair: {v}"))?;
        for s in ["A", "B"] {
            let x = &v["servers"][s];
            ensure!(
                x["connected"] == true && x["operational"] == true && x["copies_pending"].as_u64() == Some(0),
                "c{i} sees server {s} as {x}"
            );
        }
        let (a, b) = (&v["servers"]["A"]["position"], &v["servers"]["B"]["position"]);
        ensure!(a.is_u64() && a == b, "c{i} sees the servers at different positions (A {a}, B {b})");
        let st = self.server_status(p)?;
        let set = find_set(&st).with_context(|| format!("no {SET} in the status of {}: {st}", p.name()))?;
        ensure!(
            set["state"] == "InSync"
                && set["resync"].is_null()
                && set["dirty_bytes"].as_u64().unwrap_or(0) == 0
                && set.get("flow").is_none_or(|f| f == "mirroring"),
            "the primary {} is not in sync: {set}",
            p.name()
        );
        Ok(())
    }

    /// Wait until every running controller shows shutdown mode `mode` and holds every server of
    /// `servers`.
    pub fn wait_held_everywhere(&mut self, mode: &str, servers: &[Site], timeout: Duration) -> Result<Vec<Value>> {
        self.wait_outcome_all(
            |v| v["mode"] == mode && servers.iter().all(|s| held(v).iter().any(|h| h == s.name())),
            timeout,
        )
    }

    /// `shutdown --server both --mode MODE` at controller `i`; both servers exit 0; every
    /// running controller shows the mode and both servers held.
    pub fn shutdown_both(&mut self, i: usize, mode: &str) -> Result<()> {
        self.shutdown(i, "both", mode)?;
        self.wait_server_exit_ok(Site::A, WAIT)?;
        self.wait_server_exit_ok(Site::B, WAIT)?;
        self.wait_held_everywhere(mode, &[Site::A, Site::B], WAIT).map(drop)
    }

    /// A clean stop of both servers: `shutdown --server both --mode normal` at the first running
    /// controller, both exit 0.
    pub fn stop_cleanly(&mut self) -> Result<()> {
        let i = *self.running_controllers().first().context("no controller is running")?;
        self.shutdown(i, "both", "normal")?;
        self.wait_server_exit_ok(Site::A, WAIT)?;
        self.wait_server_exit_ok(Site::B, WAIT)
    }

    // ----- data -------------------------------------------------------------------------------

    /// Write `pattern(seed, len)` at `offset` of `vol0` through server `s` (raw NBD client,
    /// 256 KiB writes, then a flush); remembered for [`Cluster::check_images`]. The data.
    pub fn write_pattern(&mut self, s: Site, offset: u64, seed: u64, len: usize) -> Result<Vec<u8>> {
        let data = pattern(seed, len);
        let addr = self.nbd_addr(s);
        let r: Result<()> = (|| {
            let (mut c, size) = raw::open(&addr, VOLUME)?;
            ensure!(offset + len as u64 <= size, "write of {len} at {offset} past the end ({size})");
            for (k, chunk) in data.chunks(256 << 10).enumerate() {
                let at = offset + (k as u64) * (256 << 10);
                let err = raw::write(&mut c, k as u64 + 1, at, chunk)?;
                ensure!(err == 0, "write at {at} answered errno {err}");
            }
            c.write_all(&raw::request(0, raw::CMD_FLUSH, 9999, 0, 0))?;
            let (err, _) = raw::simple_reply(&mut c)?;
            ensure!(err == 0, "flush answered errno {err}");
            c.write_all(&raw::request(0, raw::CMD_DISC, 10000, 0, 0))?;
            Ok(())
        })();
        r.with_context(|| format!("writing pattern {seed} through server {}\n{}", s.name(), self.diag()))?;
        self.written.push((offset, data.clone()));
        Ok(data)
    }

    /// Read `len` bytes at `offset` of `vol0` through server `s`.
    pub fn read(&self, s: Site, offset: u64, len: u32) -> Result<Vec<u8>> {
        let r: Result<Vec<u8>> = (|| {
            let (mut c, _) = raw::open(&self.nbd_addr(s), VOLUME)?;
            let data = raw::read(&mut c, 1, offset, len)?.map_err(|e| anyhow!("read answered errno {e}"))?;
            let _ = c.write_all(&raw::request(0, raw::CMD_DISC, 2, 0, 0));
            Ok(data)
        })();
        r.with_context(|| format!("reading {len} bytes at {offset} through server {}\n{}", s.name(), self.diag()))
    }

    /// Start a read in the background (socket timeouts 90 s): the receiver gets its data when
    /// the server answers. For showing that a held server holds reads and answers them once
    /// it is online.
    pub fn spawn_read(&self, s: Site, offset: u64, len: u32) -> mpsc::Receiver<Result<Vec<u8>>> {
        let addr = self.nbd_addr(s);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let r: Result<Vec<u8>> = (|| {
                let mut c = raw::connect(&addr)?;
                c.set_read_timeout(Some(Duration::from_secs(90)))?;
                raw::handshake(&mut c, VOLUME)?;
                let data = raw::read(&mut c, 1, offset, len)?.map_err(|e| anyhow!("read answered errno {e}"))?;
                let _ = c.write_all(&raw::request(0, raw::CMD_DISC, 2, 0, 0));
                Ok(data)
            })();
            let _ = tx.send(r);
        });
        rx
    }

    /// The patterns written so far: (offset, data).
    pub fn written(&self) -> &[(u64, Vec<u8>)] {
        &self.written
    }

    /// After a clean stop: both image files are byte-identical and hold every pattern written.
    pub fn check_images(&self) -> Result<()> {
        let (a, b) = (self.image(Site::A)?, self.image(Site::B)?);
        if let Some(at) = first_mismatch(&a, &b) {
            let blocks = a.chunks(4096).zip(b.chunks(4096)).filter(|(x, y)| x != y).count();
            bail!(
                "A's and B's images differ, first at offset {at} ({blocks} 4 KiB blocks differ; sizes {} and {})\n{}",
                a.len(),
                b.len(),
                self.diag()
            );
        }
        for (off, data) in &self.written {
            let (o, end) = (*off as usize, *off as usize + data.len());
            let got = a.get(o..end).unwrap_or_default();
            if let Some(at) = first_mismatch(got, data) {
                bail!("the images lack the pattern written at {off}: it differs at +{at}\n{}", self.diag());
            }
        }
        Ok(())
    }

    /// Check that every pattern written so far reads back through server `s`.
    pub fn check_reads(&self, s: Site) -> Result<()> {
        for (off, data) in &self.written {
            let got = self.read(s, *off, data.len() as u32)?;
            if let Some(at) = first_mismatch(&got, data) {
                bail!(
                    "server {} returns other data for the pattern at {off}: differs at +{at}\n{}",
                    s.name(),
                    self.diag()
                );
            }
        }
        Ok(())
    }

    // ----- diagnostics ------------------------------------------------------------------------

    /// The status of every running process and the tail of every log, for failure messages.
    pub fn diag(&self) -> String {
        let mut out = String::from("\n===== cluster state =====\n");
        for s in &self.servers {
            let st = ctl_at(&s.daemon.dir, &["--json", "status"], 5)
                .ok()
                .and_then(|o| json_result(&["status"], &o).ok())
                .map(|v| find_set(&v).cloned().unwrap_or(v).to_string())
                .unwrap_or_else(|| "(no answer)".into());
            out.push_str(&format!("--- server {} status: {st}\n", s.site.name()));
        }
        for c in &self.controllers {
            let args = ["--json", "quorum", "status"];
            let st = ctl_at(&c.daemon.dir, &args, 5)
                .ok()
                .and_then(|o| json_result(&args, &o).ok())
                .map(|v| v.to_string())
                .unwrap_or_else(|| "(no answer)".into());
            out.push_str(&format!("--- controller {} status: {st}\n", c.id));
        }
        for s in &self.servers {
            out.push_str(&format!("--- server {} log (tail) ---\n{}\n", s.site.name(), s.daemon.tail(TAIL)));
        }
        for c in &self.controllers {
            out.push_str(&format!("--- controller {} log (tail) ---\n{}\n", c.id, c.daemon.tail(TAIL)));
        }
        out
    }
}

/// Flip `n` bytes in the middle of a file (XOR 0xA5), e.g. to corrupt a saved key.
pub fn corrupt_file(path: &Path, n: usize) -> Result<()> {
    let mut b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(!b.is_empty(), "{} is empty", path.display());
    let start = (b.len() / 2).saturating_sub(n / 2);
    let end = (start + n).min(b.len());
    for x in &mut b[start..end] {
        *x ^= 0xA5;
    }
    std::fs::write(path, &b).with_context(|| format!("writing {}", path.display()))
}

/// Wait (bounded) until a file exists and is not empty.
pub fn wait_file(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while std::fs::metadata(path).map(|m| m.len() == 0).unwrap_or(true) {
        ensure!(Instant::now() < deadline, "{} does not exist (or is empty) after {timeout:?}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
