//! FIG. 4 of the quorum recovery method: both servers of the pair shut down by one command,
//! then brought back one at a time; the controllers decide whether the first one back may go
//! online alone.
//!
//! Every test is a fresh [`Cluster`]: servers A and B replicating `vs1` with
//! `recovery = "quorum"`, four controllers at the default threshold ("more than 50 %" of 4:
//! threshold 2, so 3 controllers must elect yes). After bootstrap the controllers place the
//! pair online ("online P+S"); a pattern is written through the primary P.
//!
//! * `fig4_<mode>`, for each of normal, expedite, immediate, force: `shutdown --server both
//!   --mode <mode>` given to c1 only; both server processes exit 0; every controller shows the
//!   mode and both servers held. c4 is stopped; only the secondary S starts again (held
//!   offline: an NBD read waits); `return --server S`:
//!   - normal / expedite: both servers finished their pending copies and sent their final
//!     reports, so S has every acknowledged write and 3 of 4 controllers elect it: "online S",
//!     and the held read is answered with the pattern;
//!   - immediate: the copies left pending are only those in flight; the test waits until none
//!     is pending before the command, so both final positions are equal and S goes online too;
//!   - force: the servers stop at once without final reports, so nothing ends the controllers'
//!     claim that P is serving (P may hold acknowledged writes S lacks, as far as they can
//!     know): no controller elects S and the outcome stays "offline". Then P's return places P
//!     online again (its promotion is still in force) with S resynced as its secondary.
//!
//!   c4 starts again and learns the outcome. P starts again and is returned: "online S+P" (or
//!   "online P+S" after force), the returning server resynced as the secondary, never a second
//!   primary. More data is written through the primary, both servers are shut down cleanly,
//!   and their image files are identical and hold every pattern.
//! * `fig4_immediate_leaves_copies_pending`: S killed, P writes alone, both shut down
//!   `immediate`: S back alone is not current and stays offline; P back: online, S resynced.
//! * `fig4_one_of_four_controllers_stays_offline`: after a normal shutdown of both, with only
//!   c1 running, S returned stays "offline" and c1's reason says "1 of 4 controllers elected"
//!   with "threshold 2"; two more controllers bring S online.

use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use gateway_tests::assert_same;
use gateway_tests::quorum::{online, outcome, reason, Cluster, ClusterOptions, MIB, WAIT};

fn fig4(mode: &str) -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    let first = c.write_pattern(p, MIB, 1, 512 << 10)?;
    c.wait_synced(WAIT)?;

    // Both servers out, the command given to one controller.
    c.shutdown_both(1, mode)?;
    c.wait_outcome_all(|v| outcome(v) == "offline", WAIT)?;

    // One controller out; S alone comes back, held offline.
    c.controller_stop(4)?;
    c.server_start(s)?;
    let state = c.server_online(s)?;
    ensure!(state == "offline", "{} restarted after a shutdown is {state}, not held offline\n{}", s.name(), c.diag());
    c.expect_stays(
        &[1, 2, 3],
        "offline before the return command",
        |v| outcome(v) == "offline",
        Duration::from_secs(1),
    )?;
    let held_read = c.spawn_read(s, MIB, 64 << 10);
    match held_read.recv_timeout(Duration::from_millis(1500)) {
        Err(RecvTimeoutError::Timeout) => {}
        Ok(r) => bail!("{} answered a read while held offline: {:?}\n{}", s.name(), r.map(|d| d.len()), c.diag()),
        Err(RecvTimeoutError::Disconnected) => bail!("the reader thread died"),
    }
    c.return_servers(1, s.name())?;

    if mode == "force" {
        // No final reports after a forced shutdown: the claim on P stands, nobody elects S.
        c.expect_stays(
            &[1, 2, 3],
            "offline with S alone after a forced shutdown",
            |v| outcome(v) == "offline",
            Duration::from_secs(8),
        )?;
        let state = c.server_online(s)?;
        ensure!(state == "offline", "{} went {state} alone after a forced shutdown\n{}", s.name(), c.diag());
        ensure!(
            matches!(held_read.try_recv(), Err(std::sync::mpsc::TryRecvError::Empty)),
            "{} answered a read although it never went online\n{}",
            s.name(),
            c.diag()
        );
        // A late controller learns that S was returned (P is still held).
        c.controller_start(4)?;
        c.wait_outcome(4, |v| gateway_tests::quorum::held(v) == [p.name()], WAIT)?;
    } else {
        c.wait_alone_online(s, WAIT)?;
        let v = c.quorum_status(1)?;
        ensure!(
            reason(&v).contains("of 4 controllers elected"),
            "c1's reason for {} does not give the tally: {v}\n{}",
            outcome(&v),
            c.diag()
        );
        match held_read.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(data)) => assert_same("the read held while S was offline", &data, &first[..64 << 10]),
            Ok(Err(e)) => bail!("the held read failed once {} went online: {e:#}\n{}", s.name(), c.diag()),
            Err(e) => bail!("the held read was not answered after {} went online: {e}\n{}", s.name(), c.diag()),
        }
        c.check_reads(s)?;
        c.write_pattern(s, 9 * MIB, 3, 512 << 10)?;
        // A late controller learns the outcome.
        c.controller_start(4)?;
        c.wait_outcome(4, |v| outcome(v) == online(s, None), WAIT)?;
    }

    // P comes back: resynced as the secondary.
    c.server_start(p)?;
    c.return_servers(2, p.name())?;
    let primary = if mode == "force" { p } else { s };
    c.wait_pair_online_with(primary, WAIT)?;
    c.write_pattern(primary, 13 * MIB, 4, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.check_reads(primary)?;
    c.stop_cleanly()?;
    c.check_images()
}

#[test]
fn fig4_normal() -> Result<()> {
    fig4("normal")
}

#[test]
fn fig4_expedite() -> Result<()> {
    fig4("expedite")
}

#[test]
fn fig4_immediate() -> Result<()> {
    fig4("immediate")
}

#[test]
fn fig4_force() -> Result<()> {
    fig4("force")
}

#[test]
fn fig4_one_of_four_controllers_stays_offline() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    c.write_pattern(p, MIB, 11, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.shutdown_both(1, "normal")?;
    for i in [2, 3, 4] {
        c.controller_stop(i)?;
    }

    c.server_start(s)?;
    c.return_servers(1, s.name())?;
    let v = c.wait_outcome(1, |v| reason(v).contains("1 of 4 controllers elected"), WAIT)?;
    ensure!(outcome(&v) == "offline", "one controller of four placed a server online: {v}\n{}", c.diag());
    ensure!(reason(&v).contains("threshold 2"), "the reason does not name the threshold: {v}\n{}", c.diag());
    ensure!(v["threshold"] == 2 && v["controllers"] == 4, "threshold/controllers in {v}");
    c.expect_stays(&[1], "offline with one controller", |v| outcome(v) == "offline", Duration::from_secs(4))?;
    let state = c.server_online(s)?;
    ensure!(state == "offline", "{} is {state} with one controller of four\n{}", s.name(), c.diag());

    // Three controllers of four: more than the threshold.
    c.controller_start(2)?;
    c.controller_start(3)?;
    c.wait_alone_online(s, WAIT)?;
    c.check_reads(s)?;

    c.controller_start(4)?;
    c.server_start(p)?;
    c.return_servers(4, p.name())?;
    c.wait_pair_online_with(s, WAIT)?;
    c.write_pattern(s, 5 * MIB, 12, 512 << 10)?;
    c.wait_synced(WAIT)?;
    c.stop_cleanly()?;
    c.check_images()
}

/// `immediate` leaves the copies pending: S was killed, P took writes alone (pending towards
/// S), then both were shut down with `immediate`. S back alone is not current (P's final
/// position is above S's), so it stays offline with that reason; P's return places P online
/// and S is resynced from it (the pending copies resumed), images identical.
#[test]
fn fig4_immediate_leaves_copies_pending() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    c.write_pattern(p, MIB, 21, 512 << 10)?;
    c.wait_synced(WAIT)?;

    c.server_kill9(s);
    c.write_pattern(p, 5 * MIB, 22, 512 << 10)?;
    c.shutdown(1, "both", "immediate")?;
    c.wait_server_exit_ok(p, WAIT)?;

    c.server_start(s)?;
    c.return_servers(2, s.name())?;
    let v = c.wait_outcome(1, |v| reason(v).contains("not current"), WAIT)?;
    ensure!(outcome(&v) == "offline", "S went online without P's last writes: {v}\n{}", c.diag());
    c.expect_stays(
        &[1, 2, 3, 4],
        "offline without the pending copies",
        |v| outcome(v) == "offline",
        Duration::from_secs(3),
    )?;
    let state = c.server_online(s)?;
    ensure!(state == "offline", "{} is {state} while it lacks acknowledged writes\n{}", s.name(), c.diag());

    c.server_start(p)?;
    c.return_servers(3, p.name())?;
    c.wait_pair_online_with(p, WAIT)?;
    c.wait_synced(WAIT)?;
    c.stop_cleanly()?;
    c.check_images()
}

/// `normal` finishes a resync that is running when the command arrives: S was killed, P took
/// writes alone, S came back with slow writes (a fault filter delays every write 50 ms) and
/// the resync started; `shutdown both normal` then waits for it. S holds everything, so S
/// back alone goes online, with every pattern.
#[test]
fn fig4_normal_finishes_a_running_resync() -> Result<()> {
    let mut c = Cluster::new(ClusterOptions::default())?;
    let p = c.wait_pair_online(WAIT)?;
    let s = p.other();
    c.write_pattern(p, MIB, 31, 512 << 10)?;
    c.wait_synced(WAIT)?;

    c.server_kill9(s);
    c.write_pattern(p, 4 * MIB, 32, 8 * MIB as usize)?;
    c.edit_server(s, Some("\n[[export.filter]]\nplugin = \"fault\"\nconfig = { delay_ms = { write = 50 } }\n"))?;
    c.server_start(s)?;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let st = c.server_status(p)?;
        let set = gateway_tests::quorum::find_set(&st).cloned().unwrap_or_default();
        if set["resync"].is_object() {
            break;
        }
        ensure!(std::time::Instant::now() < deadline, "no resync towards {} started\n{}", s.name(), c.diag());
        std::thread::sleep(Duration::from_millis(20));
    }
    c.shutdown(1, "both", "normal")?;
    c.wait_server_exit_ok(p, WAIT)?;
    c.wait_server_exit_ok(s, WAIT)?;
    let log = c.server_ref(p).daemon.run_log();
    ensure!(log.contains("pending copies finished"), "{} stopped without finishing the resync:\n{log}", p.name());

    c.edit_server(s, None)?;
    c.server_start(s)?;
    c.return_servers(2, s.name())?;
    c.wait_alone_online(s, WAIT)?;
    c.check_reads(s)?;
    c.server_start(p)?;
    c.return_servers(3, p.name())?;
    c.wait_pair_online_with(s, WAIT)?;
    c.wait_synced(WAIT)?;
    c.stop_cleanly()?;
    c.check_images()
}
