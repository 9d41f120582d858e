//! FIG. 5 of the quorum recovery method: one server shut down, the other keeps serving and
//! takes more writes, then it is shut down too; which one may come back alone?
//!
//! Both tests start like this, on a fresh [`Cluster`] (four controllers, default threshold 2):
//! the pair goes online, a pattern is written through the primary; `shutdown --server A --mode
//! normal` (A exits 0, held everywhere); B serves alone ("online B": it was the primary, or A's
//! final report ends A's claim and B, which has everything A acknowledged, is elected alone);
//! a second pattern is written through B (A lacks it); `shutdown --server B --mode normal`
//! given to another controller (B exits 0, both held).
//!
//! * `fig5_current_server_returns_alone` (elections reported by broadcast): only B starts
//!   again; held offline until `return --server B`, then "online B" (B is current: its final
//!   position is the highest) with both patterns readable. A's return then resyncs A as B's
//!   secondary ("online B+A"); after more writes and a clean stop the images are identical.
//! * `fig5_lagging_server_stays_offline` (elections by poll): only A starts again and is
//!   returned: A lacks B's later writes, so no controller elects it; every controller stays
//!   "offline" with a reason, A stays held (a read sent to it is never answered, not even once
//!   it is B's secondary). B's return then places B online as primary with A resynced from it;
//!   the images end identical with every pattern.

use std::sync::mpsc::TryRecvError;
use std::time::Duration;

use anyhow::{ensure, Result};
use gateway_tests::quorum::{held, outcome, reason, Cluster, ClusterOptions, MIB, WAIT};
use gateway_tests::sites::Site;

/// A down first, B takes more writes alone, then B down.
fn a_then_b_down(c: &mut Cluster) -> Result<()> {
    let p = c.wait_pair_online(WAIT)?;
    c.write_pattern(p, MIB, 21, 512 << 10)?;
    c.wait_synced(WAIT)?;

    c.shutdown(1, "A", "normal")?;
    c.wait_server_exit_ok(Site::A, WAIT)?;
    c.wait_held_everywhere("normal", &[Site::A], WAIT)?;
    c.wait_alone_online(Site::B, WAIT)?;
    for v in c.wait_outcome_all(|v| !held(v).iter().any(|h| h == "B"), WAIT)? {
        ensure!(held(&v) == ["A"], "only A is held after A's shutdown: {v}");
    }
    c.write_pattern(Site::B, 5 * MIB, 22, 512 << 10)?;
    c.check_reads(Site::B)?;

    c.shutdown(2, "B", "normal")?;
    c.wait_server_exit_ok(Site::B, WAIT)?;
    c.wait_held_everywhere("normal", &[Site::A, Site::B], WAIT)?;
    c.wait_outcome_all(|v| outcome(v) == "offline", WAIT)?;
    Ok(())
}

#[test]
fn fig5_current_server_returns_alone() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions { report_by: "broadcast", ..ClusterOptions::default() })?;
    a_then_b_down(&mut c)?;

    c.server_start(Site::B)?;
    let state = c.server_online(Site::B)?;
    ensure!(state == "offline", "B restarted after its shutdown is {state}, not held\n{}", c.diag());
    c.expect_stays(&[1, 2, 3, 4], "offline before B's return", |v| outcome(v) == "offline", Duration::from_secs(1))?;
    c.return_servers(3, "B")?;
    c.wait_alone_online(Site::B, WAIT)?;
    c.check_reads(Site::B)?;

    c.server_start(Site::A)?;
    c.return_servers(1, "A")?;
    c.wait_pair_online_with(Site::B, WAIT)?;
    c.write_pattern(Site::B, 9 * MIB, 23, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.check_reads(Site::B)?;
    c.stop_cleanly()?;
    c.check_images()
}

#[test]
fn fig5_lagging_server_stays_offline() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    a_then_b_down(&mut c)?;

    c.server_start(Site::A)?;
    let held_read = c.spawn_read(Site::A, 5 * MIB, 4096);
    c.return_servers(1, "A")?;
    c.expect_stays(
        &[1, 2, 3, 4],
        "offline with only the lagging server A back",
        |v| outcome(v) == "offline" && !reason(v).is_empty(),
        Duration::from_secs(8),
    )?;
    for v in c.wait_outcome_all(|v| held(v) == ["B"], WAIT)? {
        ensure!(outcome(&v) == "offline", "{v}");
    }
    let state = c.server_online(Site::A)?;
    ensure!(state == "offline", "A, lacking B's writes, is {state}\n{}", c.diag());
    ensure!(
        matches!(held_read.try_recv(), Err(TryRecvError::Empty)),
        "A answered a read while it may lack acknowledged writes\n{}",
        c.diag()
    );

    c.server_start(Site::B)?;
    c.return_servers(2, "B")?;
    c.wait_pair_online_with(Site::B, WAIT)?;
    c.check_reads(Site::B)?;
    c.write_pattern(Site::B, 9 * MIB, 24, 512 << 10)?;
    c.wait_synced(WAIT)?;
    ensure!(
        matches!(held_read.try_recv(), Err(TryRecvError::Empty)),
        "A answered a host read as the secondary (it holds host I/O)\n{}",
        c.diag()
    );
    c.stop_cleanly()?;
    c.check_images()
}
