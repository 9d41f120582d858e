//! Faults around the quorum controllers (four controllers, default threshold 2: 3 must elect).
//!
//! * `command_reaches_every_controller`: a shutdown with an unknown mode is refused (non-zero
//!   exit naming the mode) and changes nothing; `shutdown --server both --mode immediate` given
//!   to c2 alone reaches c1 and c3 (each shows the mode and both servers held) and takes both
//!   servers out (exit 0); c4, stopped during the command, learns it when it starts again.
//! * `corrupt_key_never_votes_yes`: c2's saved key (`quorum.key`) is corrupted while it is
//!   stopped; started again, its status says key "missing" and it never elects yes. With c1
//!   and c2 up, B returned alone stays offline ("1 of 4 controllers elected"); with c3 as well
//!   still offline ("2 of 4"): c2 does not count; c4 makes it 3 of 4 and the server goes online.
//! * `controller_killed_mid_vote`: `return` of the secondary S given to c2, and c1 (the first to
//!   start an election) killed with SIGKILL ~100 ms later, in the middle of the vote. c2..c4
//!   are still more than the threshold: S goes online alone, deterministically. c1 started
//!   again learns the outcome; P's return resyncs it as S's secondary; images identical.
//! * `primary_killed_resumes_its_promotion`: the primary P of the online pair is killed with
//!   SIGKILL (no final report); for 5 s S never reports `online: primary` and no controller
//!   says "online S"; P started again (no `return`) is primary again with the same `epoch`
//!   (its promotion resumed, no new epoch record) and S its secondary; more data is written and
//!   synced, both stop cleanly, images identical with every pattern.
//! * `controller_sigstop_mid_election`: as `controller_killed_mid_vote`, but c1 is frozen with
//!   SIGSTOP ~100 ms after the `return` of S: c2..c4 bring S online alone; after SIGCONT, c1
//!   reports the same outcome and it stays at all four; P returns as S's secondary; images
//!   identical.
//! * `garbage_and_strangers_on_quorum_ports`: random bytes, a truncated hello and a hello with a
//!   flipped CRC byte, at c1's controller port and both servers' control ports: each connection
//!   is closed, never welcomed, and the logs name the bad magic and the CRC mismatch; a valid
//!   hello from unknown controller c9 is refused naming c9 (or closed); `quorum-attach` of set
//!   `nope` answers `{"ok": false, "error": "volume set `nope` is not quorum-managed at site
//!   P"}`. Afterwards every daemon runs, no controller link dropped, the outcome is unchanged,
//!   and a new write through P is mirrored (synced; images identical after a clean stop).
//! * `key_copies_on_both_servers`: with the pair online both servers' `quorum.keys` list
//!   c1..c4; after `shutdown --server both --mode expedite` the controllers are stopped and
//!   both servers restarted (no `return`): from their own disks they still list the four copies,
//!   each with mode "expedite"; with the controllers back they stay held and keep them.
//! * `server_address_mismatch_is_reported`: c1's config swaps A's and B's control addresses. c1
//!   never counts either connection (both servers "not connected" in its status), its log (at
//!   the default level) says which address is which site, the servers keep no key copy of c1,
//!   and c2..c4 place the pair online.
//! * `corrupt_server_ledger_is_never_trusted`: S's ledger corrupted while down: S starts at
//!   position 0 with `ledger_lost` in its status, stays offline after `return`; P's return
//!   brings the pair online with S resynced; images identical.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use gateway_replication::frame::{self, Channel, Message};
use gateway_tests::pattern;
use gateway_tests::quorum::{
    corrupt_file, held, online, outcome, pair_primary, reason, wait_file, Cluster, ClusterOptions, MIB, WAIT,
};
use gateway_tests::sites::{Site, SET};
use serde_json::{json, Value};

/// Does a status show controller `id` electing yes?
fn elects_yes(v: &Value, id: &str) -> bool {
    v["elections"][id].as_str().is_some_and(|e| e.trim_start().starts_with("yes"))
}

#[test]
fn command_reaches_every_controller() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions { report_by: "broadcast", ..ClusterOptions::default() })?;
    let p = c.wait_pair_online(WAIT)?;
    c.write_pattern(p, MIB, 31, 256 << 10)?;

    // An unknown mode: refused, nothing changes.
    let out = c.ctl(2, &["shutdown", "--server", "both", "--mode", "bogus"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "shutdown with mode `bogus` was accepted\n{}", c.diag());
    ensure!(err.contains("bogus"), "the refusal does not name the mode: {err}");
    std::thread::sleep(Duration::from_millis(500));
    ensure!(c.server_alive(Site::A) && c.server_alive(Site::B), "a refused shutdown stopped a server\n{}", c.diag());
    let want = online(p, Some(p.other()));
    for i in 1..=4 {
        let v = c.quorum_status(i)?;
        ensure!(held(&v).is_empty() && outcome(&v) == want, "c{i} after a refused shutdown: {v}\n{}", c.diag());
    }

    // The command to c2 alone; c4 is down meanwhile.
    c.controller_stop(4)?;
    c.shutdown(2, "both", "immediate")?;
    c.wait_server_exit_ok(Site::A, WAIT)?;
    c.wait_server_exit_ok(Site::B, WAIT)?;
    for (k, v) in c.wait_held_everywhere("immediate", &[Site::A, Site::B], WAIT)?.iter().enumerate() {
        ensure!(outcome(v) != want, "controller #{k} still shows {want} with both servers out: {v}");
    }
    c.wait_outcome_all(|v| outcome(v) == "offline", WAIT)?;

    // The late controller learns it.
    c.controller_start(4)?;
    c.wait_outcome(4, |v| v["mode"] == "immediate" && held(v) == ["A", "B"] && outcome(v) == "offline", WAIT)?;
    Ok(())
}

#[test]
fn corrupt_key_never_votes_yes() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    c.write_pattern(p, MIB, 41, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.shutdown_both(1, "normal")?;

    // c2's key corrupted while it is down.
    let key = c.key_path(2);
    wait_file(&key, Duration::from_secs(5))?;
    c.controller_stop(2)?;
    corrupt_file(&key, 16)?;
    c.controller_start(2)?;
    let v = c.wait_outcome(2, |v| v["key"] == "missing", WAIT)?;
    ensure!(!elects_yes(&v, "c2"), "{v}");
    let v = c.quorum_status(1)?;
    ensure!(v["key"] == "valid", "c1's key: {v}");

    // c1 (valid key) and c2 (none) up: B alone stays offline.
    c.controller_stop(3)?;
    c.controller_stop(4)?;
    c.server_start(s)?;
    c.return_servers(1, s.name())?;
    let no_yes_from_c2 = |v: &Value| outcome(v) == "offline" && !elects_yes(v, "c2");
    let v = c.wait_outcome(1, |v| reason(v).contains("1 of 4 controllers elected"), WAIT)?;
    ensure!(no_yes_from_c2(&v), "{v}\n{}", c.diag());
    c.expect_stays(&[1, 2], "offline, c2 not electing yes", no_yes_from_c2, Duration::from_secs(4))?;

    // c3 too: two valid keys of four, still exactly the threshold at most.
    c.controller_start(3)?;
    let v = c.wait_outcome(1, |v| reason(v).contains("2 of 4 controllers elected"), WAIT)?;
    ensure!(no_yes_from_c2(&v), "{v}\n{}", c.diag());
    c.expect_stays(&[1, 2, 3], "offline, c2 not electing yes", no_yes_from_c2, Duration::from_secs(4))?;
    let state = c.server_online(s)?;
    ensure!(state == "offline", "{} is {state} with two valid keys of four\n{}", s.name(), c.diag());

    // c4: three valid keys elect.
    c.controller_start(4)?;
    c.wait_alone_online(s, WAIT)?;
    for i in 1..=4 {
        let v = c.quorum_status(i)?;
        ensure!(!elects_yes(&v, "c2"), "c2 (no key) elected yes in the view of c{i}: {v}\n{}", c.diag());
    }
    let v = c.quorum_status(2)?;
    ensure!(v["key"] == "missing", "c2 got a key back without a bootstrap: {v}");
    c.check_reads(s)
}

#[test]
fn controller_killed_mid_vote() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    c.write_pattern(p, MIB, 51, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.shutdown_both(1, "normal")?;

    c.server_start(s)?;
    c.return_servers(2, s.name())?;
    std::thread::sleep(Duration::from_millis(100));
    c.controller_kill9(1)?;
    // c2, c3, c4: three of four, more than the threshold.
    c.wait_alone_online(s, WAIT)?;
    c.check_reads(s)?;

    // c1 comes back and learns the outcome.
    c.controller_start(1)?;
    c.wait_outcome(1, |v| outcome(v) == online(s, None), WAIT)?;

    c.server_start(p)?;
    c.return_servers(1, p.name())?;
    c.wait_pair_online_with(s, WAIT)?;
    c.write_pattern(s, 5 * MIB, 52, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.stop_cleanly()?;
    c.check_images()
}

#[test]
fn primary_killed_resumes_its_promotion() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    c.write_pattern(p, MIB, 71, 512 << 10)?;
    c.wait_synced(WAIT)?;
    let before = c.server_quorum(p)?;
    let epoch = before["epoch"].clone();
    ensure!(epoch.is_u64(), "{} is primary without an epoch record: {before}\n{}", p.name(), c.diag());

    // P dies with no final report: the claim on it stands, S is never placed online alone.
    c.server_kill9(p);
    let alone = online(s, None);
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let state = c.server_online(s)?;
        ensure!(state != "primary", "{} became primary while {} was down\n{}", s.name(), p.name(), c.diag());
        for i in 1..=4 {
            let v = c.quorum_status(i)?;
            ensure!(
                outcome(&v) != alone,
                "c{i} placed {} online alone after a crash of {}: {v}\n{}",
                s.name(),
                p.name(),
                c.diag()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // P back (no `return`: it was never shut down by command): it resumes its promotion.
    c.server_start(p)?;
    c.wait_pair_online_with(p, WAIT)?;
    let after = c.server_quorum(p)?;
    ensure!(
        after["epoch"] == epoch,
        "{} resumed with epoch {} (was {epoch}): a new epoch record instead of the resumed promotion: {after}\n{}",
        p.name(),
        after["epoch"],
        c.diag()
    );
    let log = c.server_ref(p).daemon.run_log();
    ensure!(
        log.contains("the last promotion resumed"),
        "{}'s log does not say it resumed its promotion\n{}",
        p.name(),
        c.diag()
    );
    c.check_reads(p)?;
    c.write_pattern(p, 5 * MIB, 72, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.stop_cleanly()?;
    c.check_images()
}

#[test]
fn controller_sigstop_mid_election() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    c.write_pattern(p, MIB, 81, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.shutdown_both(1, "normal")?;

    c.server_start(s)?;
    c.return_servers(2, s.name())?;
    std::thread::sleep(Duration::from_millis(100));
    c.controller_signal(1, "STOP")?;
    let want = online(s, None);
    // c2, c3, c4: three of four, more than the threshold; c1 is frozen, not gone.
    let r = c
        .wait_outcome_at(&[2, 3, 4], |v| outcome(v) == want, WAIT)
        .and_then(|_| c.wait_server_online(s, "primary", WAIT))
        .and_then(|()| c.check_reads(s));
    c.controller_signal(1, "CONT")?;
    r?;

    // c1 thaws (with stale timers and links) and reports the same outcome; nothing changes.
    c.wait_outcome(1, |v| outcome(v) == want, WAIT)?;
    c.expect_stays(&[1, 2, 3, 4], &format!("`{want}`"), |v| outcome(v) == want, Duration::from_secs(3))?;
    let state = c.server_online(s)?;
    ensure!(state == "primary", "{} is {state} after c1 thawed\n{}", s.name(), c.diag());

    c.server_start(p)?;
    c.return_servers(1, p.name())?;
    c.wait_pair_online_with(s, WAIT)?;
    c.write_pattern(s, 5 * MIB, 82, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.stop_cleanly()?;
    c.check_images()
}

// ----- raw frames on the quorum ports -------------------------------------------------------

fn encode(m: &Message) -> Vec<u8> {
    let mut b = Default::default();
    frame::encode(m, &mut b);
    b.to_vec()
}

fn hello(node: &str) -> Message {
    Message::Hello { node: node.into(), channel: Channel::Control, volume_set: SET.into(), generation: 0 }
}

/// What a port answered to some bytes.
#[derive(Debug)]
struct Answer {
    frames: Vec<Message>,
    /// The daemon closed (or reset) the connection.
    closed: bool,
    /// Bytes that did not decode as a frame.
    junk: Option<String>,
}

/// Connect to `addr`, write `bytes`, then (after `then` answered frames, if any) write
/// `then_bytes`; read until the daemon closes or `timeout` passes.
fn probe(addr: &str, bytes: &[u8], then_bytes: Option<Vec<u8>>, timeout: Duration) -> Result<Answer> {
    let mut sock = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    sock.write_all(bytes)?;
    let mut then_bytes = then_bytes;
    let (mut buf, mut frames, mut closed, mut junk) = (Vec::new(), Vec::new(), false, None);
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline && !closed {
        match sock.read(&mut chunk) {
            Ok(0) => closed = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => closed = true,
        }
        loop {
            match frame::decode(&buf) {
                Ok(Some((m, used))) => {
                    buf.drain(..used);
                    frames.push(m);
                    if let Some(b) = then_bytes.take() {
                        sock.write_all(&b)?;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    junk = Some(e.to_string());
                    buf.clear();
                    break;
                }
            }
        }
    }
    Ok(Answer { frames, closed, junk })
}

/// Garbage, a truncated frame and a frame with a bad CRC: the port closes the connection
/// without welcoming it (within `LINK_TIMEOUT` for the truncated one, which just goes silent).
fn garbage_probes(addr: &str) -> Vec<(&'static str, std::thread::JoinHandle<Result<Answer>>)> {
    let mut random = pattern(0xBAD_F00D, 4096);
    random[0] ^= 0x5A; // whatever the pattern, not the magic
    let h = encode(&hello("c2"));
    let truncated = h[..h.len() / 2].to_vec();
    let mut bad_crc = h.clone();
    bad_crc[13] ^= 0x01;
    [("random bytes", random), ("a truncated hello", truncated), ("a hello with a flipped CRC byte", bad_crc)]
        .into_iter()
        .map(|(what, bytes)| {
            let addr = addr.to_owned();
            (what, std::thread::spawn(move || probe(&addr, &bytes, None, Duration::from_secs(12))))
        })
        .collect()
}

#[test]
fn garbage_and_strangers_on_quorum_ports() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    c.write_pattern(p, MIB, 91, 256 << 10)?;
    c.wait_synced(WAIT)?;
    let want = online(p, Some(p.other()));
    let ctl_addr = c.controller_addr(1)?;
    let targets = [
        ("controller c1", ctl_addr.clone()),
        ("the primary's control port", c.control_addr(p)),
        ("the secondary's control port", c.control_addr(s)),
    ];

    // Garbage everywhere at once (the truncated frames take a link timeout to be dropped).
    let mut running = Vec::new();
    for (who, addr) in &targets {
        for (what, h) in garbage_probes(addr) {
            running.push((*who, what, h));
        }
    }
    for (who, what, h) in running {
        let a = h.join().map_err(|_| anyhow!("probe thread panicked"))??;
        ensure!(
            a.closed && a.junk.is_none() && !a.frames.iter().any(|m| matches!(m, Message::Welcome { .. })),
            "{who} after {what}: {a:?} (expected the connection closed, no welcome)\n{}",
            c.diag()
        );
    }

    // A stranger (c9) at a controller: refused by name, or closed.
    let a = probe(&ctl_addr, &encode(&hello("c9")), None, Duration::from_secs(10))?;
    ensure!(
        a.closed && a.junk.is_none(),
        "controller c1 kept a connection from unknown controller c9 open: {a:?}\n{}",
        c.diag()
    );
    for m in &a.frames {
        match m {
            Message::Refused { reason } if reason.contains("c9") => {}
            other => bail!("controller c1 answered unknown controller c9 with {other:?}\n{}", c.diag()),
        }
    }

    // A stranger attaching to a volume set the server does not manage.
    let attach = Message::Request { id: 7, body: json!({"op": "quorum-attach", "volume_set": "nope"}).to_string() };
    let a = probe(&c.control_addr(p), &encode(&hello("c9")), Some(encode(&attach)), Duration::from_secs(10))?;
    let want_err = format!("volume set `nope` is not quorum-managed at site {}", p.name());
    match a.frames.as_slice() {
        [Message::Welcome { .. }, Message::Response { id: 7, body }] => {
            let v: Value = serde_json::from_str(body).with_context(|| format!("response body {body}"))?;
            ensure!(v == json!({"ok": false, "error": want_err}), "quorum-attach of `nope` answered {v}\n{}", c.diag());
        }
        other => bail!("quorum-attach of `nope` at {}: {other:?} (closed {})\n{}", p.name(), a.closed, c.diag()),
    }

    // The daemons said why they dropped the bad connections.
    for (who, log) in
        [("server", c.server_ref(p).daemon.run_log()), ("controller c1", c.controller_daemon(1)?.run_log())]
    {
        for why in ["bad frame magic", "CRC32C mismatch"] {
            ensure!(log.contains(why), "the log of {who} does not say `{why}`\n{}", c.diag());
        }
    }

    // Nothing else changed: every daemon runs, the outcome stands, the pair still mirrors.
    ensure!(c.server_alive(Site::A) && c.server_alive(Site::B), "a server died\n{}", c.diag());
    for i in 1..=4 {
        ensure!(c.controller_alive(i), "controller c{i} died\n{}", c.diag());
        let v = c.quorum_status(i)?;
        ensure!(outcome(&v) == want, "c{i}'s outcome changed: {v}\n{}", c.diag());
        let down: Vec<_> = v["peers"].as_object().into_iter().flatten().filter(|(_, up)| **up != true).collect();
        ensure!(down.is_empty(), "c{i} lost controller links: {down:?}\n{}", c.diag());
    }
    ensure!(c.server_online(p)? == "primary" && c.server_online(s)? == "secondary", "roles changed\n{}", c.diag());
    c.write_pattern(p, 3 * MIB, 92, 256 << 10)?;
    c.wait_synced(WAIT)?;
    c.stop_cleanly()?;
    c.check_images()
}

/// The ids of the key copies in a server's quorum status.
fn key_ids(q: &Value) -> Vec<String> {
    q["keys"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

#[test]
fn key_copies_on_both_servers() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    c.wait_pair_online(WAIT)?;
    let all: Vec<String> = (1..=4).map(|i| c.id(i)).collect();
    for s in [Site::A, Site::B] {
        let q = c.wait_server_quorum(s, "keeping c1..c4's keys", |q| key_ids(q) == all, Duration::from_secs(10))?;
        for id in &all {
            ensure!(q["keys"][id]["gen"].is_u64(), "{}'s copy of {id}'s key has no generation: {q}", s.name());
        }
    }

    c.shutdown_both(1, "expedite")?;
    // Every controller's own key says expedite; the servers' copies were written before they exited.
    let mut saved = Vec::new();
    for i in 1..=4 {
        let v = c.quorum_status(i)?;
        ensure!(v["saved_key"]["mode"] == "expedite", "c{i}'s saved key: {}\n{}", v["saved_key"], c.diag());
        saved.push(format!("c{i}: gen {}", v["saved_key"]["gen"]));
    }
    // The controllers are stopped: what the restarted servers list comes from their disks.
    for i in 1..=4 {
        c.controller_stop(i)?;
    }
    let mut stale = Vec::new();
    for s in [Site::A, Site::B] {
        for id in &all {
            let f = c.server_ref(s).daemon.dir.join(format!("vs1.keys/{id}.key"));
            ensure!(f.is_file(), "{} is missing\n{}", f.display(), c.diag());
        }
        c.server_start(s)?;
        let q = c.server_quorum(s)?;
        ensure!(q["online"] == "offline" && q["controllers"] == 0, "{} after the restart: {q}\n{}", s.name(), c.diag());
        ensure!(
            key_ids(&q) == all,
            "{} lists the key copies {:?} after a restart: {q}\n{}",
            s.name(),
            key_ids(&q),
            c.diag()
        );
        for id in &all {
            let k = &q["keys"][id];
            if k["mode"] != "expedite" {
                stale.push(format!("{}'s copy of {id} (gen {}, mode {})", s.name(), k["gen"], k["mode"]));
            }
        }
    }
    ensure!(
        stale.is_empty(),
        "key copies without the shutdown's mode `expedite` after the restart: {}; the controllers' own keys \
         (all mode expedite): {}\n{}",
        stale.join(", "),
        saved.join(", "),
        c.diag()
    );

    // The controllers back: still held (no return), still four copies in expedite.
    for i in 1..=4 {
        c.controller_start(i)?;
    }
    for s in [Site::A, Site::B] {
        c.wait_server_quorum(s, "attached to 4 controllers", |q| q["controllers"] == 4, WAIT)?;
    }
    c.expect_stays(
        &[1, 2, 3, 4],
        "offline, both held",
        |v| outcome(v) == "offline" && held(v) == ["A", "B"],
        Duration::from_secs(2),
    )?;
    for s in [Site::A, Site::B] {
        let q = c.server_quorum(s)?;
        ensure!(q["online"] == "offline", "{} went {} without a return command\n{}", s.name(), q["online"], c.diag());
        ensure!(
            key_ids(&q) == all && all.iter().all(|id| q["keys"][id]["mode"] == "expedite"),
            "{}'s key copies with the controllers back: {}\n{}",
            s.name(),
            q["keys"],
            c.diag()
        );
    }
    Ok(())
}

#[test]
fn server_address_mismatch_is_reported() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions { start: false, ..ClusterOptions::default() })?;
    // c1 believes A is at B's control port and B at A's.
    c.edit_controller(1, |spec| {
        spec.servers.swap(0, 1);
        None
    })?;
    c.start_all()?;
    let v = c.wait_outcome(2, |v| pair_primary(v).is_some(), WAIT)?;
    let p = pair_primary(&v).context("pair")?;
    let want = online(p, Some(p.other()));
    c.wait_outcome_at(&[2, 3, 4], |v| outcome(v) == want, WAIT)?;
    c.wait_server_online(p, "primary", WAIT)?;
    c.wait_server_online(p.other(), "secondary", WAIT)?;

    let not_connected = |v: &Value| v["servers"]["A"]["connected"] == false && v["servers"]["B"]["connected"] == false;
    c.expect_stays(&[1], "without server connections", not_connected, Duration::from_secs(3))?;
    let (a, b) = (c.control_addr(Site::A), c.control_addr(Site::B));
    for (addr, site, name) in [(&b, "B", "A"), (&a, "A", "B")] {
        let needle = format!("server {name} is there");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = c.controller_daemon(1)?.run_log();
            if log
                .lines()
                .any(|l| l.contains(addr.as_str()) && l.contains("is site") && l.contains(site) && l.contains(&needle))
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "c1's log does not say that {addr} is site {site}, not server {name}\n{}",
                c.diag()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The others never counted c1's wrong connections either way: it holds no key copy there.
    for s in [Site::A, Site::B] {
        let q = c.server_quorum(s)?;
        ensure!(
            q["keys"].get("c1").is_none(),
            "{} keeps a key copy of c1, which never attached properly: {q}",
            s.name()
        );
    }
    c.write_pattern(p, MIB, 101, 256 << 10)?;
    c.check_reads(p)
}

/// A server whose position ledger was corrupted while it was down starts from position 0,
/// says so in its status, and is never placed online alone (the controllers' keys recorded
/// it further on: "it lost data"); the other server's return brings the pair online and the
/// damaged one is resynced as the secondary.
#[test]
fn corrupt_server_ledger_is_never_trusted() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    c.write_pattern(p, MIB, 71, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.shutdown_both(1, "normal")?;

    let ledger = c.server_ref(s).daemon.dir.join("vs1.quorum.ledger");
    corrupt_file(&ledger, 8)?;
    c.server_start(s)?;
    let q = c.server_quorum(s)?;
    ensure!(q["position"] == 0, "{} kept a position from a corrupt ledger: {q}", s.name());
    ensure!(
        q["ledger_lost"].as_str().is_some_and(|w| !w.is_empty()),
        "the status does not say the ledger was lost: {q}"
    );
    c.return_servers(1, s.name())?;
    c.expect_stays(
        &[1, 2, 3, 4],
        "offline with a server that lost its ledger",
        |v| outcome(v) == "offline",
        Duration::from_secs(5),
    )?;
    let state = c.server_online(s)?;
    ensure!(state == "offline", "{} went {state} on a position it cannot vouch for\n{}", s.name(), c.diag());

    c.server_start(p)?;
    c.return_servers(2, p.name())?;
    c.wait_pair_online_with(p, WAIT)?;
    c.wait_synced(WAIT)?;
    c.stop_cleanly()?;
    c.check_images()
}
