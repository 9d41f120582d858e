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

use std::time::Duration;

use anyhow::{ensure, Result};
use gateway_tests::quorum::{
    corrupt_file, held, online, outcome, reason, wait_file, Cluster, ClusterOptions, MIB, WAIT,
};
use gateway_tests::sites::Site;
use serde_json::Value;

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
