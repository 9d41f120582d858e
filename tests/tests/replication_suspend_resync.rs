//! Losing the recovery site (or the link to it) under load, and coming back:
//!
//! * a libnbd writer keeps writing at production site A (random blocks in the first 16 MiB);
//!   B is killed with SIGKILL (or the data link is cut at a proxy, B staying up): A keeps
//!   serving, writes keep succeeding, the set is OutOfSync, its flow tracking, the link down,
//!   and dirty_bytes grows (by exactly 1 MiB for a 1 MiB write outside the writer's range);
//! * A stopped with SIGTERM and restarted while B is still unreachable: dirty_bytes is the
//!   same after the restart (the change bitmap is durable);
//! * B restarted (or the link restored): A resyncs by itself, sending exactly the dirty
//!   bytes (not the volume), reaches InSync, and the two backing files are identical, holding
//!   every acknowledged write.
//! * B returns while the writer keeps writing: the resync runs under load, reaches InSync, and
//!   the images end identical with every acknowledged write at B;
//! * data link restored while the control link (a second proxy) is still cut: the recovery
//!   site does not claim InSync while A still has dirty regions for it, and once the control
//!   link is back too, A resyncs to InSync by itself.

use std::process::Command;
use std::time::{Duration, Instant};

use gateway_tests::sites::{block_hashes, Expect, Options, Site, TwoSites, Writer};

const MIB: u64 = 1 << 20;

fn dirty(v: &serde_json::Value) -> u64 {
    v["dirty_bytes"].as_u64().unwrap_or_else(|| panic!("no dirty_bytes in {v}"))
}

/// dirty_bytes at A once it stops changing.
fn settled_dirty(sites: &TwoSites) -> u64 {
    let mut last = dirty(&sites.vs(Site::A));
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(200));
        let now = dirty(&sites.vs(Site::A));
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("dirty_bytes at A keeps changing: {}", sites.vs(Site::A));
}

fn round(cut: bool) {
    let what = if cut { "link cut" } else { "B killed" };
    let t0 = Instant::now();
    let mut sites = TwoSites::new(Options { proxy_data: cut, ..Default::default() }).unwrap();
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    let log = sites.dir(Site::A).join("writer.log");
    let mut writer = Writer::spawn(&sites.uri(Site::A), 7, 60, &log, 8, Some(16 * MIB));
    writer.wait_acks(200, Duration::from_secs(30));
    let before = sites.vs(Site::A);
    assert_eq!(before["state"], "InSync", "{what}: {before}");
    assert_eq!(dirty(&before), 0, "{what}: {before}");

    if cut {
        sites.proxy.as_ref().unwrap().cut();
    } else {
        sites.kill9(Site::B);
    }
    let acks_at_loss = writer.acks();
    let a = sites.wait_until(Site::A, "OutOfSync and tracking", Duration::from_secs(15), |v| {
        v["state"] == "OutOfSync" && v["flow"] == "tracking" && v["link_up"] == false && dirty(v) > 0
    });
    assert_eq!(a["role"], "primary", "{what}: {a}");
    assert!(!a["last_error"].is_null(), "{what}: no last_error after losing the link: {a}");
    // A keeps serving: writes go on being acknowledged.
    writer.wait_acks(acks_at_loss + 300, Duration::from_secs(15));
    let stderr = writer.kill();
    let expect = Expect::parse(&std::fs::read_to_string(&log).unwrap());
    assert!(
        expect.failed_writes.is_empty() && expect.error.is_none(),
        "{what}: host writes at A failed when the link was lost: {:?} {:?} {stderr}\n{}",
        expect.failed_writes,
        expect.error,
        sites.logs(30)
    );

    let d1 = settled_dirty(&sites);
    assert!(d1 > 0 && d1 <= 16 * MIB, "{what}: dirty {d1} after random writes in the first 16 MiB");
    let q = Command::new("qemu-io")
        .args(["-f", "raw", &sites.uri(Site::A), "-c", "write -P 0x5c 24M 1M"])
        .output()
        .unwrap();
    assert!(q.status.success(), "{what}: qemu-io write at A: {q:?}");
    let d2 = dirty(&sites.vs(Site::A));
    assert_eq!(d2, d1 + MIB, "{what}: a 1 MiB write on clean regions should add 1 MiB to dirty_bytes");

    // A restarts while B is unreachable: the dirty set survives.
    sites.stop(Site::A).unwrap();
    sites.restart(Site::A).unwrap();
    let a = sites.wait_until(Site::A, "serving as production", Duration::from_secs(15), |v| {
        v["role"] == "primary" && v["state"] == "OutOfSync"
    });
    assert_eq!(dirty(&a), d2, "{what}: dirty_bytes after A's restart: {a}");
    assert_eq!(a["resync_bytes_sent"], 0, "{what}: {a}");
    std::thread::sleep(Duration::from_millis(1500));
    let a = sites.vs(Site::A);
    assert_eq!(dirty(&a), d2, "{what}: dirty_bytes changed while B is unreachable: {a}");

    // B returns: an automatic resync of exactly the dirty regions.
    if cut {
        sites.proxy.as_ref().unwrap().restore();
    } else {
        sites.restart(Site::B).unwrap();
    }
    let a = sites.wait_in_sync(Site::A, Duration::from_secs(30));
    assert_eq!(dirty(&a), 0, "{what}: {a}");
    assert_eq!(
        a["resync_bytes_sent"].as_u64().unwrap(),
        d2,
        "{what}: the resync should send the {d2} dirty bytes (volume: {} bytes): {a}",
        32 * MIB
    );
    assert!(a["last_error"].is_null(), "{what}: {a}");
    sites.assert_identical(what);
    // The writer's range (the 1 MiB at 24 MiB is qemu-io's).
    let (bad, _) = expect.check(&block_hashes(&sites.image_path(Site::B))[..4096], &[]);
    assert!(bad.is_empty(), "{what}: {} blocks of B miss acknowledged writes, first {:?}", bad.len(), bad.first());
    let b = sites.vs(Site::B);
    assert_eq!(b["role"], "secondary", "{what}: {b}");
    assert_eq!(b["link_up"], true, "{what}: {b}");
    eprintln!("{what}: dirty {d1} + 1 MiB resynced; B {b}; {:?}", t0.elapsed());
}

#[test]
fn replication_suspend_resync_peer_killed() {
    round(false);
}

#[test]
fn replication_suspend_resync_link_cut() {
    round(true);
}

#[test]
fn replication_resync_under_load() {
    let t0 = Instant::now();
    let mut sites = TwoSites::new(Options::default()).unwrap();
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    let log = sites.dir(Site::A).join("writer.log");
    let mut writer = Writer::spawn(&sites.uri(Site::A), 21, 60, &log, 8, None);
    writer.wait_acks(200, Duration::from_secs(30));
    sites.kill9(Site::B);
    let n = writer.acks();
    writer.wait_acks(n + 1000, Duration::from_secs(30));
    let dirty_before = dirty(&sites.vs(Site::A));
    assert!(dirty_before > 0);
    sites.restart(Site::B).unwrap();
    // Writes go on while A resyncs.
    let a = sites.wait_in_sync(Site::A, Duration::from_secs(60));
    let n = writer.acks();
    writer.wait_acks(n + 500, Duration::from_secs(30));
    let stderr = writer.kill();
    let expect = Expect::parse(&std::fs::read_to_string(&log).unwrap());
    assert!(
        expect.failed_writes.is_empty() && expect.error.is_none(),
        "writes failed: {:?} {:?} {stderr}",
        expect.failed_writes.iter().take(3).collect::<Vec<_>>(),
        expect.error
    );
    // Let the last writes (in flight when the writer was stopped) settle.
    let mut last = sites.vs(Site::A)["updates_mirrored"].clone();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = sites.vs(Site::A)["updates_mirrored"].clone();
        if now == last {
            break;
        }
        last = now;
    }
    let a2 = sites.vs(Site::A);
    assert_eq!(a2["state"], "InSync", "{a2}");
    assert_eq!(dirty(&a2), 0, "{a2}");
    sites.assert_identical("after a resync under load");
    let (bad, _) = expect.check(&block_hashes(&sites.image_path(Site::B)), &[]);
    assert!(bad.is_empty(), "{} blocks of B miss acknowledged writes, first {:?}", bad.len(), bad.first());
    eprintln!(
        "resync under load: {} writes acknowledged, dirty {dirty_before} when B returned, resync sent {}; {:?}",
        expect.acked_writes,
        a["resync_bytes_sent"],
        t0.elapsed()
    );
}

#[test]
fn replication_control_link_cut() {
    let sites = TwoSites::new(Options { proxy_data: true, proxy_control: true, ..Default::default() }).unwrap();
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    let (data, control) = (sites.proxy.as_ref().unwrap(), sites.control_proxy.as_ref().unwrap());
    data.cut();
    control.cut();
    sites.wait_state(Site::A, "OutOfSync", Duration::from_secs(15));
    let q = Command::new("qemu-io")
        .args(["-f", "raw", &sites.uri(Site::A), "-c", "write -P 0x42 8M 64k"])
        .output()
        .unwrap();
    assert!(q.status.success(), "{q:?}");
    // The data link returns, the control link not yet.
    data.restore();
    sites.wait_until(Site::A, "linked", Duration::from_secs(15), |v| v["link_up"] == true);
    std::thread::sleep(Duration::from_secs(2));
    let (a1, b1) = (sites.vs(Site::A), sites.vs(Site::B));
    // Then the control link returns too.
    control.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut a2 = sites.vs(Site::A);
    while Instant::now() < deadline && !(a2["state"] == "InSync" && a2["flow"] == "mirroring") {
        std::thread::sleep(Duration::from_millis(100));
        a2 = sites.vs(Site::A);
    }
    let mut problems = Vec::new();
    if b1["state"] == "InSync" && dirty(&a1) > 0 {
        problems.push(format!(
            "with the control link cut, B claims InSync while A has {} dirty bytes for it (A {a1}; B {b1})",
            dirty(&a1)
        ));
    }
    if a1["state"] == "Resyncing" && a1["resync"].is_null() {
        problems.push(format!("A says Resyncing but no resync runs: {a1}"));
    }
    if !(a2["state"] == "InSync" && a2["flow"] == "mirroring") {
        problems.push(format!("A is not InSync 20 s after the control link returned: {a2}"));
    }
    assert!(problems.is_empty(), "{}\n{}", problems.join("\n"), sites.logs(15));
    sites.assert_identical("after the control link returned");
}
