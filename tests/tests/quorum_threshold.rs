//! The agreement threshold (steps 462/466 and 562/566): a server goes online alone only when
//! MORE controllers than the threshold elect it; exactly the threshold is not enough.
//!
//! * `count_2_of_4`: `threshold = 2` with four controllers; after both servers were shut down
//!   normally, the secondary S is returned with only c1 and c2 running: "2 of 4 controllers
//!   elected ...; threshold 2", offline; c3 starting makes it 3 of 4: "online S".
//! * `percent_75_of_4` (elections reported by broadcast): `threshold = "75%"` of four is 3; with
//!   c1..c3 running S stays offline ("3 of 4 controllers elected", "threshold 3"); c4 brings it
//!   online.
//! * `threshold_two_groups_could_exceed_is_refused`: a threshold that two disjoint groups of
//!   controllers could both exceed (count 1 of 4, "25%" of 4) would let two groups that cannot
//!   talk place different servers online: the controller refuses it (it exits non-zero, or
//!   logs an error) naming the threshold. The same controller with `threshold = 2` starts.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use gateway_tests::quorum::{outcome, reason, Cluster, ClusterOptions, MIB, WAIT};

/// Both servers out (normal), controllers `down` stopped, the secondary S returned alone: wait
/// until a running controller's reason gives `tally` ("2 of 4 controllers elected") and
/// `threshold` ("threshold 2"), check it stays offline; then start `down` again: S online.
fn exactly_the_threshold(opts: ClusterOptions, threshold: u64, down: &[usize]) -> Result<()> {
    let mut c = Cluster::new(opts)?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    let v = c.quorum_status(1)?;
    ensure!(v["threshold"] == threshold && v["controllers"] == 4, "threshold/controllers in the status: {v}");
    c.write_pattern(p, MIB, 61, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.shutdown_both(1, "normal")?;
    for &i in down {
        c.controller_stop(i)?;
    }
    let up = c.running_controllers();
    let tally = format!("{} of 4 controllers elected", up.len());
    let thr = format!("threshold {threshold}");

    c.server_start(s)?;
    c.return_servers(up[0], s.name())?;
    // Any running controller may have counted the election; wait for one to show the tally.
    let deadline = Instant::now() + WAIT;
    'found: loop {
        for &i in &up {
            let v = c.quorum_status(i)?;
            if reason(&v).contains(&tally) {
                ensure!(outcome(&v) == "offline", "exactly the threshold placed a server online: {v}\n{}", c.diag());
                ensure!(reason(&v).contains(&thr), "the reason does not name `{thr}`: {v}\n{}", c.diag());
                break 'found;
            }
        }
        if Instant::now() > deadline {
            bail!("no controller reports `{tally}` after {WAIT:?}\n{}", c.diag());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    c.expect_stays(&up, "offline at exactly the threshold", |v| outcome(v) == "offline", Duration::from_secs(4))?;
    let state = c.server_online(s)?;
    ensure!(state == "offline", "{} is {state} at exactly the threshold\n{}", s.name(), c.diag());

    // One more controller: more than the threshold.
    c.controller_start(down[0])?;
    c.wait_alone_online(s, WAIT)?;
    c.check_reads(s)
}

#[test]
fn count_2_of_4() -> Result<()> {
    exactly_the_threshold(ClusterOptions { threshold: Some("2".into()), ..ClusterOptions::default() }, 2, &[3, 4])
}

#[test]
fn percent_75_of_4() -> Result<()> {
    let opts =
        ClusterOptions { threshold: Some("\"75%\"".into()), report_by: "broadcast", ..ClusterOptions::default() };
    exactly_the_threshold(opts, 3, &[4])
}

#[test]
fn threshold_two_groups_could_exceed_is_refused() -> Result<()> {
    for bad in ["1", "\"25%\""] {
        let mut c =
            Cluster::new(ClusterOptions { threshold: Some(bad.into()), start: false, ..ClusterOptions::default() })?;
        c.controller_spawn(1)?;
        let d = c.controller_daemon(1)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = d.exit_status() {
                ensure!(!st.success(), "c1 with threshold {bad} of 4 exited 0; log:\n{}", d.log());
                ensure!(
                    d.log().contains("threshold"),
                    "c1 refused threshold {bad} of 4 without naming it:\n{}",
                    d.log()
                );
                break;
            }
            let log = d.log();
            if log.contains("threshold") && log.to_lowercase().contains("error") {
                break;
            }
            ensure!(Instant::now() < deadline, "c1 runs with threshold {bad} of 4 and logs no error about it:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The same setup with an acceptable threshold starts.
    let mut c =
        Cluster::new(ClusterOptions { threshold: Some("2".into()), start: false, ..ClusterOptions::default() })?;
    c.controller_start(1)?;
    let v = c.quorum_status(1)?;
    ensure!(v["threshold"] == 2 && v["controllers"] == 4, "{v}");
    Ok(())
}
