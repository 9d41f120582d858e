//! `on_link_loss = "freeze"`: when the data link is cut (at a proxy; both daemons stay up),
//! production site A holds host writes (PPRC freeze; the set is SplitSite) so B keeps a
//! consistent image:
//!
//! * with a long freeze timeout, a host write does not complete within 2 s; `gateway ctl run
//!   vs1` at A releases it (SplitSite → OutOfSync, the write tracked); restoring the link
//!   resyncs to InSync with identical images;
//! * with `freeze_timeout_ms = 1500`, the held write completes by itself after the timeout
//!   (not before), and the set is OutOfSync.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_tests::sites::{Options, Site, TwoSites};

/// Connect, say so, write one 4 KiB block, say so.
const ONE_WRITE: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("connected", flush=True)
try:
    h.pwrite(b"\x6b" * 4096, int(sys.argv[2]))
    print("written", flush=True)
except nbd.Error as e:
    print("failed %s" % e, flush=True)
"#;

/// A one-write libnbd client in the background; its output lines with the time each arrived.
struct OneWrite {
    child: Child,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl OneWrite {
    fn start(uri: &str, offset: u64) -> OneWrite {
        let mut child = Command::new("timeout")
            .args(["-k", "5", "120", "/usr/bin/python3", "-c", ONE_WRITE, uri, &offset.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push((Instant::now(), line));
            }
        });
        OneWrite { child, lines }
    }

    fn line(&self, prefix: &str) -> Option<(Instant, String)> {
        self.lines.lock().unwrap().iter().find(|(_, l)| l.starts_with(prefix)).cloned()
    }

    fn wait_line(&self, prefix: &str, timeout: Duration) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.line(prefix) {
                return Some(l);
            }
            if let Some(f) = self.line("failed") {
                panic!("the write failed: {}", f.1);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for OneWrite {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn frozen_sites(timeout_ms: u64) -> TwoSites {
    let sites = TwoSites::new(Options {
        on_link_loss: "freeze".into(),
        freeze_timeout_ms: Some(timeout_ms),
        proxy_data: true,
        ..Default::default()
    })
    .unwrap();
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    sites.proxy.as_ref().unwrap().cut();
    let a = sites.wait_state(Site::A, "SplitSite", Duration::from_secs(15));
    assert_eq!(a["flow"], "frozen", "{a}");
    assert_eq!(a["link_up"], false, "{a}");
    sites
}

#[test]
fn replication_freeze_run_releases() {
    let t0 = Instant::now();
    let sites = frozen_sites(60_000);
    let w = OneWrite::start(&sites.uri(Site::A), 1 << 20);
    assert!(w.wait_line("connected", Duration::from_secs(10)).is_some(), "the client could not connect to A");
    let held = w.wait_line("written", Duration::from_secs(2));
    assert!(held.is_none(), "a host write completed while the set is frozen:\n{}", sites.logs(20));
    let a = sites.vs(Site::A);
    assert_eq!(a["state"], "SplitSite", "{a}");

    let released_at = Instant::now();
    let out = sites.ctl_ok(Site::A, &["run", "vs1"]);
    let (done, _) = w
        .wait_line("written", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("`run` did not release the held write ({out}):\n{}", sites.logs(20)));
    eprintln!("released {:?} after `run`", done.saturating_duration_since(released_at));
    let a = sites.wait_state(Site::A, "OutOfSync", Duration::from_secs(5));
    assert_eq!(a["flow"], "tracking", "{a}");
    assert!(a["dirty_bytes"].as_u64().unwrap() >= 4096, "the released write is not tracked: {a}");

    // The link returns: resync, InSync, same images.
    sites.proxy.as_ref().unwrap().restore();
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    sites.assert_identical("after run and resync");
    assert_eq!(sites.image(Site::B)[1 << 20], 0x6b);
    eprintln!("replication_freeze_run_releases: {:?}", t0.elapsed());
}

#[test]
fn replication_freeze_times_out() {
    let t0 = Instant::now();
    let sites = frozen_sites(1500);
    let frozen_at = Instant::now();
    let w = OneWrite::start(&sites.uri(Site::A), 2 << 20);
    assert!(w.wait_line("connected", Duration::from_secs(10)).is_some(), "the client could not connect to A");
    let (done, _) = w.wait_line("written", Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "a write held by the link-loss freeze did not complete 10 s after the freeze (freeze_timeout_ms = 1500); \
             A: {}\n{}",
            sites.vs(Site::A),
            sites.logs(20)
        )
    });
    let held = done.saturating_duration_since(frozen_at);
    // The freeze began at most ~50 ms before `frozen_at` (the status poll interval).
    assert!(held >= Duration::from_millis(1000), "the write completed only {held:?} after the freeze");
    let a = sites.wait_state(Site::A, "OutOfSync", Duration::from_secs(5));
    assert_eq!(a["flow"], "tracking", "{a}");
    sites.proxy.as_ref().unwrap().restore();
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    sites.assert_identical("after the freeze timed out and a resync");
    eprintln!("replication_freeze_times_out: held {held:?}; {:?}", t0.elapsed());
}

/// `freeze` by command (link up): writes held, `run` releases them (OutOfSync, tracked),
/// `resync` brings the set back to InSync; `suspend` / `resync` likewise without the hold.
#[test]
fn replication_freeze_and_suspend_commands() {
    let sites = TwoSites::new(Options { freeze_timeout_ms: Some(60_000), ..Default::default() }).unwrap();
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    sites.ctl_ok(Site::A, &["freeze", "vs1"]);
    let a = sites.wait_state(Site::A, "SplitSite", Duration::from_secs(5));
    assert_eq!(a["flow"], "frozen", "{a}");
    let w = OneWrite::start(&sites.uri(Site::A), 3 << 20);
    assert!(w.wait_line("connected", Duration::from_secs(10)).is_some());
    assert!(w.wait_line("written", Duration::from_secs(2)).is_none(), "a write completed while frozen by command");
    sites.ctl_ok(Site::A, &["run", "vs1"]);
    assert!(w.wait_line("written", Duration::from_secs(5)).is_some(), "`run` did not release the write");
    let a = sites.wait_state(Site::A, "OutOfSync", Duration::from_secs(5));
    assert_eq!(a["flow"], "tracking", "{a}");
    assert!(a["dirty_bytes"].as_u64().unwrap() > 0, "{a}");
    sites.ctl_ok(Site::A, &["resync", "vs1"]);
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    sites.assert_identical("after freeze, run, resync");
    assert_eq!(sites.image(Site::B)[3 << 20], 0x6b);

    sites.ctl_ok(Site::A, &["suspend", "vs1"]);
    let a = sites.wait_state(Site::A, "OutOfSync", Duration::from_secs(5));
    assert_eq!(a["flow"], "tracking", "{a}");
    let w = OneWrite::start(&sites.uri(Site::A), 5 << 20);
    assert!(w.wait_line("written", Duration::from_secs(10)).is_some(), "a write while suspended did not complete");
    assert_eq!(sites.image(Site::B)[5 << 20], 0, "a write while suspended reached B");
    let a = sites.vs(Site::A);
    assert_eq!(a["dirty_bytes"], 65536, "{a}");
    assert_eq!(a["state"], "OutOfSync", "suspend must not resync by itself: {a}");
    sites.ctl_ok(Site::A, &["resync", "vs1"]);
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    sites.assert_identical("after suspend, resync");
}
