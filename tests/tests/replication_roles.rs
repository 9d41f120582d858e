//! Moving production between the sites, with a real file system on the volume:
//!
//! * an ext4 image made locally (`mke2fs -d` with files of known content) is copied onto A's
//!   export with nbdcopy; B's copy checks clean (`e2fsck -fn`) with the same files;
//! * `swap` at A: B is production (accepts writes, mirrors them to A; A refuses host writes);
//!   a file added at B; `swap` at B hands production back; A's copy has every file;
//! * `offline --moving-across-site` at A hands the set to B, `online` at A takes it back;
//! * commands in a wrong state fail naming the command, the set and its state, and change
//!   nothing: `run` while InSync, `failover` at the production site, `resync` at the recovery
//!   site, `swap` while OutOfSync, `failback` at the home site; `wait-for-state` succeeds on
//!   the current state and fails naming it otherwise;
//! * A killed: `failover` at B makes B production (RecoverySite-ForceSwap, writable); A
//!   restarted does not come back as production (B has a newer generation): it steps down,
//!   its export refuses writes; `join-cleanup` at B resyncs A (InSync, identical images);
//!   `failback` at B moves production home to A, InSync;
//! * `verify-config` succeeds for matching sites and reports a volume size mismatch;
//! * after each swap both sites show the link up;
//! * a swap while a libnbd writer keeps writing at A: every acknowledged write is at B, writes
//!   after the swap are refused (EPERM), and the images end identical;
//! * the old production site rejoining after a failover does not claim InSync before the
//!   join-cleanup resync brought it up to date.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use gateway_tests::sites::{block_hashes, Expect, Options, Site, TwoSites, Writer, VOLUME};
use gateway_tests::{pattern, raw, require_tool, run};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const T: Duration = Duration::from_secs(30);

/// Files of the file system: (name, content).
fn files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("small.txt".into(), b"two sites, one volume\n".to_vec()),
        ("random.bin".into(), pattern(11, 300_000)),
        ("big.bin".into(), pattern(12, 3 << 20)),
    ]
}

fn make_fs(dir: &Path) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    for (name, data) in files() {
        std::fs::write(src.join(name), data).unwrap();
    }
    let img = dir.join("fs.img");
    run(Command::new("mke2fs").args(["-q", "-F", "-t", "ext4", "-d"]).arg(&src).arg(&img).arg("32M")).unwrap();
    img
}

/// `e2fsck -fn` finds the file system clean and every file (plus `extra`) has its content.
#[track_caller]
fn check_fs(img: &Path, extra: &[(String, Vec<u8>)], what: &str) {
    let out = Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: e2fsck -fn {} failed ({}):\n{}{}",
        img.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, data) in files().iter().chain(extra) {
        let out = Command::new("debugfs").arg("-R").arg(format!("cat /{name}")).arg(img).output().unwrap();
        assert!(out.status.success(), "{what}: debugfs cat /{name}: {out:?}");
        assert!(out.stdout == *data, "{what}: /{name} has {} bytes, not its {} bytes", out.stdout.len(), data.len());
    }
}

/// Copy a site's export out with nbdcopy and check the file system on it.
#[track_caller]
fn check_export(sites: &TwoSites, s: Site, dir: &Path, extra: &[(String, Vec<u8>)], what: &str) {
    let out = dir.join(format!("out-{}.img", s.name()));
    let _ = std::fs::remove_file(&out);
    run(Command::new("nbdcopy").arg(sites.uri(s)).arg(&out)).unwrap();
    check_fs(&out, extra, what);
}

/// Is a site's export writable for hosts: (read-only flag advertised, write refused with EPERM).
fn host_write_refused(sites: &TwoSites, s: Site) -> bool {
    let mut c = raw::connect(&sites.gw(s).addr()).unwrap();
    let (_, flags) = raw::handshake(&mut c, VOLUME).unwrap();
    let ro = flags & 2 != 0;
    // A write past the file system's used area: block 31 MiB, content of what is there already.
    let off = 31 * MIB;
    let cur = raw::read(&mut c, 1, off, 4096).unwrap().unwrap();
    let err = raw::write(&mut c, 2, off, &cur).unwrap();
    assert_eq!(ro, err == raw::EPERM, "site {}: read-only flag {ro} but write answered errno {err}", s.name());
    ro
}

/// (state, production, role) at a site, or `None` if it is down.
fn key(sites: &TwoSites, s: Site) -> Option<(Value, Value, Value)> {
    sites.try_vs(s).ok().map(|v| (v["state"].clone(), v["production"].clone(), v["role"].clone()))
}

/// A command that must be refused at `s`: non-zero exit, stderr naming `words` (the command,
/// the set, the state), and nothing changed at either site.
#[track_caller]
fn refused(sites: &TwoSites, s: Site, args: &[&str], words: &[&str]) {
    let before = (key(sites, Site::A), key(sites, Site::B));
    let (st, out, err) = sites.ctl(s, args);
    assert!(!st.success(), "`ctl {}` at {} succeeded in a wrong state: {out}", args.join(" "), s.name());
    for w in words {
        assert!(err.contains(w), "`ctl {}` at {}: the error does not name `{w}`: {err}", args.join(" "), s.name());
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = (key(sites, Site::A), key(sites, Site::B));
    assert_eq!(
        before,
        after,
        "`ctl {}` at {} was refused but changed (state, production, role)",
        args.join(" "),
        s.name()
    );
}

fn generation(v: &Value) -> u64 {
    v["generation"].as_u64().unwrap()
}

/// `s` is production, InSync and mirroring; the other site is its writable-refusing secondary.
#[track_caller]
fn assert_production(sites: &TwoSites, s: Site, what: &str) -> u64 {
    let p = sites.wait_in_sync(s, T);
    assert_eq!(p["role"], "primary", "{what}: {p}");
    // (`link_up` at the recovery site is checked by `replication_swap_link_status`.)
    let o = sites.wait_until(s.other(), "the recovery site", T, |v| {
        v["role"] == "secondary" && v["production"] == s.name() && v["state"] == "InSync"
    });
    assert_eq!(o["generation"], p["generation"], "{what}: generations differ: {p} / {o}");
    assert!(!host_write_refused(sites, s), "{what}: production site {} refuses host writes", s.name());
    assert!(host_write_refused(sites, s.other()), "{what}: recovery site {} accepts host writes", s.other().name());
    generation(&p)
}

#[test]
fn replication_roles() {
    for t in ["mke2fs", "e2fsck", "debugfs", "nbdcopy", "qemu-io"] {
        require_tool(t);
    }
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut sites = TwoSites::new(Options::default()).unwrap();
    let g0 = assert_production(&sites, Site::A, "after the initial copy");

    // verify-config: the sites agree.
    let out = sites.ctl_ok(Site::A, &["--json", "verify-config"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"]["ok"], true, "{v}");
    sites.ctl_ok(Site::B, &["verify-config"]);

    // A file system onto A; B's copy has it.
    let img = make_fs(dir);
    check_fs(&img, &[], "the local image");
    run(Command::new("nbdcopy").arg(&img).arg(sites.uri(Site::A))).unwrap();
    sites.assert_identical("after nbdcopy onto A");
    let snap = dir.join("b-copy.img");
    std::fs::write(&snap, sites.image(Site::B)).unwrap();
    check_fs(&snap, &[], "B's backing file");

    // Wrong-state commands while InSync at A.
    refused(&sites, Site::A, &["run", "vs1"], &["run", "vs1", "InSync"]);
    refused(&sites, Site::A, &["failover", "vs1"], &["failover", "vs1", "InSync"]);
    refused(&sites, Site::B, &["resync", "vs1"], &["resync", "vs1"]);
    refused(&sites, Site::A, &["failback", "vs1"], &["failback", "vs1", "InSync"]);
    sites.ctl_ok(Site::A, &["wait-for-state", "vs1", "InSync", "--timeout", "5"]);
    let (st, _, err) = sites.ctl(Site::A, &["swap", "nope"]);
    assert!(!st.success() && err.contains("nope"), "swap of an unknown set: {err}");
    let (st, _, err) = sites.ctl(Site::B, &["wait-for-state", "nope", "InSync", "--timeout", "1"]);
    assert!(!st.success() && err.contains("nope"), "wait-for-state of an unknown set: {err}");
    let (st, _, err) = sites.ctl(Site::A, &["wait-for-state", "vs1", "Resyncing", "--timeout", "1"]);
    assert!(!st.success() && err.contains("InSync"), "wait-for-state Resyncing while InSync: {err}");

    // swap at A: B is production.
    sites.ctl_ok(Site::A, &["swap", "vs1"]);
    let g1 = assert_production(&sites, Site::B, "after swap at A");
    assert!(g1 > g0, "generation {g1} after the swap, {g0} before");
    check_export(&sites, Site::B, dir, &[], "B's export after the swap");
    // A file added at B (on a local copy of B's export, copied back).
    let new_file = ("added-at-b.bin".to_owned(), pattern(13, 200_000));
    let work = dir.join("work.img");
    run(Command::new("nbdcopy").arg(sites.uri(Site::B)).arg(&work)).unwrap();
    std::fs::write(dir.join("added"), &new_file.1).unwrap();
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} /{}", dir.join("added").display(), new_file.0))
        .arg(&work))
    .unwrap();
    run(Command::new("nbdcopy").arg(&work).arg(sites.uri(Site::B))).unwrap();
    sites.assert_identical("after writes at B");
    let extra = [new_file];

    // swap at B: A is production again and has the new file.
    sites.ctl_ok(Site::B, &["swap", "vs1"]);
    let g2 = assert_production(&sites, Site::A, "after swap at B");
    assert!(g2 > g1);
    check_export(&sites, Site::A, dir, &extra, "A's export after swapping back");

    // offline --moving-across-site at A, then online at A.
    sites.ctl_ok(Site::A, &["offline", "vs1"]);
    assert_production(&sites, Site::A, "after offline without moving");
    sites.ctl_ok(Site::A, &["offline", "vs1", "--moving-across-site"]);
    let g3 = assert_production(&sites, Site::B, "after offline --moving-across-site at A");
    assert!(g3 > g2);
    sites.ctl_ok(Site::A, &["online", "vs1", "--timeout", "30"]);
    let g4 = assert_production(&sites, Site::A, "after online at A");
    assert!(g4 > g3);
    check_export(&sites, Site::A, dir, &extra, "A's export after offline/online");

    // B down: A OutOfSync; swap is refused, wait-for-state InSync fails naming OutOfSync.
    sites.kill9(Site::B);
    sites.wait_state(Site::A, "OutOfSync", T);
    refused(&sites, Site::A, &["swap", "vs1"], &["swap", "vs1", "OutOfSync"]);
    let (st, _, err) = sites.ctl(Site::A, &["wait-for-state", "vs1", "InSync", "--timeout", "1"]);
    assert!(!st.success() && err.contains("OutOfSync"), "wait-for-state InSync while OutOfSync: {err}");
    sites.restart(Site::B).unwrap();
    let g5 = assert_production(&sites, Site::A, "after B's return");
    sites.assert_identical("after B's return");

    // A lost: failover at B.
    sites.kill9(Site::A);
    sites.wait_until(Site::B, "without a link", T, |v| v["link_up"] == false);
    sites.ctl_ok(Site::B, &["failover", "vs1"]);
    let b = sites.wait_state(Site::B, "RecoverySite-ForceSwap", T);
    assert_eq!(b["role"], "primary", "{b}");
    assert_eq!(b["production"], "B", "{b}");
    assert!(generation(&b) > g5, "{b}");
    assert!(!host_write_refused(&sites, Site::B), "B refuses writes after failover");
    let q = Command::new("qemu-io")
        .args(["-f", "raw", &sites.uri(Site::B), "-c", "write -P 0x3c 30M 1M"])
        .output()
        .unwrap();
    assert!(q.status.success(), "write at B after failover: {q:?}");
    let b = sites.vs(Site::B);
    assert!(b["dirty_bytes"].as_u64().unwrap() >= MIB, "B does not track its changes for A: {b}");
    refused(&sites, Site::B, &["failover", "vs1"], &["failover", "vs1", "RecoverySite-ForceSwap"]);

    // A returns and steps down.
    sites.restart(Site::A).unwrap();
    let a = sites.wait_until(Site::A, "the recovery site", T, |v| v["role"] == "secondary");
    assert_eq!(a["production"], "B", "{a}");
    assert!(host_write_refused(&sites, Site::A), "A came back writable after B's failover");
    assert!(sites.log(Site::A).contains("stepping down"), "A's log does not say it stepped down:\n{}", sites.logs(20));
    let b = sites.vs(Site::B);
    assert_eq!(b["state"], "RecoverySite-ForceSwap", "B left RecoverySite-ForceSwap by itself: {b}");

    // join-cleanup at B (once its link to A is up): A is resynced.
    sites.wait_until(Site::B, "linked to A", T, |v| v["link_up"] == true);
    sites.ctl_ok(Site::B, &["join-cleanup", "vs1"]);
    assert_production(&sites, Site::B, "after join-cleanup");
    sites.assert_identical("after join-cleanup");
    assert_eq!(sites.image(Site::A)[30 * MIB as usize], 0x3c);

    // failback at B: production home at A.
    sites.ctl_ok(Site::B, &["failback", "vs1"]);
    assert_production(&sites, Site::A, "after failback");
    sites.assert_identical("after failback");
    check_export(&sites, Site::A, dir, &extra, "A's export after failback");
    eprintln!("replication_roles: {:?}", t0.elapsed());
}

/// After each swap, both sites show the data link up (the new recovery site's receiver
/// accepted it), and stay so.
#[test]
fn replication_swap_link_status() {
    let sites = TwoSites::new(Options::default()).unwrap();
    sites.wait_in_sync(Site::A, T);
    for (at, to) in [(Site::A, Site::B), (Site::B, Site::A), (Site::A, Site::B), (Site::B, Site::A)] {
        sites.ctl_ok(at, &["swap", "vs1"]);
        sites.wait_in_sync(to, T);
        std::thread::sleep(Duration::from_millis(500));
        let p = sites.vs(to);
        let o = sites.vs(at);
        assert!(
            p["link_up"] == true && o["link_up"] == true && o["role"] == "secondary",
            "after swap at {}: production {} shows {p}\nrecovery site {} shows {o}\n{}",
            at.name(),
            to.name(),
            at.name(),
            sites.logs(12)
        );
    }
}

#[test]
fn replication_verify_config_size_mismatch() {
    let sites =
        TwoSites::new(Options { size: "32MiB".into(), size_b: Some("48MiB".into()), ..Default::default() }).unwrap();
    let (st, out, err) = sites.ctl(Site::A, &["verify-config"]);
    let text = format!("{out}{err}");
    assert!(text.contains("volumes differ") && text.contains("vol0"), "verify-config does not report the size: {text}");
    assert!(text.contains(&(32 * MIB).to_string()) && text.contains(&(48 * MIB).to_string()), "{text}");
    assert!(!st.success(), "verify-config found a problem but exited 0: {text}");
}

#[test]
fn replication_swap_under_load() {
    let sites = TwoSites::new(Options::default()).unwrap();
    sites.wait_in_sync(Site::A, T);
    let log = sites.dir(Site::A).join("writer.log");
    let mut writer = Writer::spawn(&sites.uri(Site::A), 5, 60, &log, 8, None);
    writer.wait_acks(300, T);
    sites.ctl_ok(Site::A, &["swap", "vs1"]);
    let acks_at_swap = writer.acks();
    std::thread::sleep(Duration::from_millis(300));
    let stderr = writer.kill();
    let expect = Expect::parse(&std::fs::read_to_string(&log).unwrap());
    assert!(expect.error.is_none(), "the writer's connection broke: {:?} {stderr}", expect.error);
    // Writes after the swap are refused (EPERM), never lost silently.
    assert!(!expect.failed_writes.is_empty(), "A kept accepting writes after the swap");
    let not_eperm: Vec<&String> = expect.failed_writes.iter().filter(|f| !f.contains("EPERM")).take(3).collect();
    assert!(not_eperm.is_empty(), "writes failed with other errors than EPERM: {not_eperm:?}");
    assert!(
        expect.acked_writes <= acks_at_swap + 8,
        "{} writes acknowledged after the swap",
        expect.acked_writes - acks_at_swap
    );
    sites.wait_in_sync(Site::B, T);
    let (bad, landed) = expect.check(&block_hashes(&sites.image_path(Site::B)), &[]);
    assert!(bad.is_empty(), "{} blocks of B miss acknowledged writes, first {:?}", bad.len(), bad.first());
    sites.assert_identical("after a swap under load");
    eprintln!(
        "swap under load: {} writes acknowledged, {} refused, {landed} in flight landed",
        expect.acked_writes,
        expect.failed_writes.len()
    );
}

#[test]
fn replication_rejoin_state() {
    let mut sites = TwoSites::new(Options::default()).unwrap();
    sites.wait_in_sync(Site::A, T);
    sites.kill9(Site::A);
    sites.wait_until(Site::B, "without a link", T, |v| v["link_up"] == false);
    sites.ctl_ok(Site::B, &["failover", "vs1"]);
    sites.wait_state(Site::B, "RecoverySite-ForceSwap", T);
    let q = Command::new("qemu-io")
        .args(["-f", "raw", &sites.uri(Site::B), "-c", "write -P 0x3c 30M 1M"])
        .output()
        .unwrap();
    assert!(q.status.success(), "{q:?}");
    sites.restart(Site::A).unwrap();
    sites.wait_until(Site::A, "the recovery site", T, |v| v["role"] == "secondary");
    sites.wait_until(Site::B, "linked to A", T, |v| v["link_up"] == true);
    std::thread::sleep(Duration::from_secs(1));
    let (a, b) = (sites.vs(Site::A), sites.vs(Site::B));
    assert_ne!(
        sites.image(Site::A)[30 * MIB as usize],
        0x3c,
        "A already has B's write before join-cleanup (the test needs it not to)"
    );
    assert!(
        a["state"] != "InSync",
        "A (the old production, rejoined) claims InSync before join-cleanup, while it lacks B's writes and B is {} \
         with {} dirty bytes: A {a}\nB {b}\n{}",
        b["state"],
        b["dirty_bytes"],
        sites.logs(12)
    );
    sites.ctl_ok(Site::B, &["join-cleanup", "vs1"]);
    sites.wait_in_sync(Site::B, T);
    sites.wait_state(Site::A, "InSync", T);
    sites.assert_identical("after join-cleanup");
}
