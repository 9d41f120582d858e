//! Synchronous mirroring loses no acknowledged write: a libnbd client (8 writes in flight,
//! random 4 KiB-aligned blocks and contents) records every write before sending it and every
//! acknowledgement as it arrives, against production site A; A is killed with SIGKILL at a
//! moment chosen by the seed. Then B's backing file holds, for every block, the content of its
//! last acknowledged write (or of a write still in flight at the kill, which may or may not
//! have made it), for several seeds. B keeps running and sees the link go down.

use std::time::{Duration, Instant};

use gateway_tests::sites::{block_hashes, Expect, Lcg, Options, Site, TwoSites, Writer};

fn crash_round(seed: u64) {
    let t0 = Instant::now();
    let mut sites = TwoSites::new(Options::default()).unwrap();
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    let log = sites.dir(Site::A).join("writer.log");
    let mut writer = Writer::spawn(&sites.uri(Site::A), seed, 40, &log, 8, None);
    let mut rng = Lcg(seed);
    let min_acks = 50 + rng.next(1500) as usize;
    writer.wait_acks(min_acks, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(rng.next(300)));
    sites.kill9(Site::A);
    let stderr = writer.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    let expect = Expect::parse(&text);
    assert!(!expect.done, "seed {seed}: the writer finished before the kill; {stderr}");
    assert!(expect.acked_writes >= min_acks, "seed {seed}: {} acks", expect.acked_writes);
    // Writes in flight at the kill fail with the connection; no write may fail otherwise.
    let other: Vec<&String> = expect
        .failed_writes
        .iter()
        .filter(|f| !["ENOTCONN", "ECONNRESET", "EPIPE", "ESHUTDOWN"].iter().any(|e| f.contains(e)))
        .collect();
    assert!(other.is_empty(), "seed {seed}: writes failed before the kill: {other:?}");

    let got = block_hashes(&sites.image_path(Site::B));
    assert_eq!(got.len(), 32 << 8, "B's image has {} blocks", got.len());
    let (bad, landed) = expect.check(&got, &[]);
    if let Some(b) = bad.first() {
        panic!(
            "seed {seed}: {} block(s) of B's image, the first {b} (offset {}), hold neither their last acknowledged \
             content nor an in-flight write's ({} writes acknowledged, {} sent)\n{}",
            bad.len(),
            b * 4096,
            expect.acked_writes,
            expect.sent_writes,
            sites.logs(30)
        );
    }
    // The check has teeth: a copy that missed the writes fails it.
    let zeroes = vec![gateway_tests::sites::ZERO_BLOCK_SHA256.to_owned(); got.len()];
    assert!(!expect.check(&zeroes, &[]).0.is_empty(), "seed {seed}: an empty image passed the check");

    // B is still alive, holding the recovery copy, and noticed the link went down.
    assert!(sites.alive(Site::B), "B died:\n{}", sites.log(Site::B));
    let b = sites.wait_until(Site::B, "without a link", Duration::from_secs(15), |v| v["link_up"] == false);
    assert_eq!(b["role"], "secondary", "{b}");
    eprintln!(
        "seed {seed}: {} writes acknowledged, {} sent, {landed} in-flight blocks landed at B; B {b}; {:?}",
        expect.acked_writes,
        expect.sent_writes,
        t0.elapsed()
    );
}

#[test]
fn replication_no_ack_lost() {
    for seed in [1, 2, 3] {
        crash_round(seed);
    }
}
