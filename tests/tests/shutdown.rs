//! SIGTERM with many requests in flight (fio random writes at queue depth 32, plus a client
//! writing and counting acknowledged blocks) drains promptly: the daemon exits 0 well before
//! its 30 s drain timeout, logs "all exports flushed", and every write it acknowledged is
//! there after a restart on the same data, which also serves fresh writes and reads.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_tests::{assert_same, one_export, pattern, require_tool, Gateway};
use nbd::client::{handshake, NbdClient};

const BLOCK: usize = 64 * 1024;
/// The counting client writes blocks from here on (fio uses the first 32 MiB).
const BASE: u64 = 32 << 20;
const MAX_BLOCKS: u64 = 400;

#[test]
fn sigterm_under_load_drains_and_flushes() {
    require_tool("fio");
    let dir = tempfile::tempdir().unwrap();
    let mut g =
        Gateway::start_in(dir.path(), &one_export("vol", "64MiB", "type = \"file\"\npath = \"vol.img\"")).unwrap();

    let fio_dir = tempfile::tempdir().unwrap();
    let mut fio = Command::new("timeout")
        .current_dir(fio_dir.path())
        .args(["60", "fio", "--name=load", "--ioengine=nbd"])
        .arg(format!("--uri={}", g.uri("vol")))
        .args(["--rw=randwrite", "--bs=4k", "--iodepth=32", "--size=32M", "--time_based", "--runtime=30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // A client that writes distinct blocks one after another and counts the acknowledged ones.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = g.addr();
    let stop2 = stop.clone();
    let counter = std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap(); // the nbd crate sends each header field separately
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        let e = handshake(&mut s, b"vol").unwrap();
        let mut c = NbdClient::new(&mut s, &e);
        let mut acked = 0u64;
        while acked < MAX_BLOCKS && !stop2.load(Ordering::Relaxed) {
            let off = BASE + acked * BLOCK as u64;
            if c.seek(SeekFrom::Start(off)).is_err() || c.write_all(&pattern(acked, BLOCK)).is_err() {
                break;
            }
            acked += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        acked
    });

    // Let the load build up, then make sure fio is really running.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(fio.try_wait().unwrap().is_none(), "fio ended before SIGTERM");
    let t0 = Instant::now();
    let status = g.stop().unwrap();
    let took = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    assert!(status.success(), "exit status {status}; log:\n{}", g.log());
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}; log:\n{}", g.log());
    let log = g.log();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("all exports flushed"), "{log}");
    assert!(!log.contains("still busy"), "shutdown hit the drain timeout:\n{log}");

    let acked = counter.join().unwrap();
    assert!(acked > 0, "the counting client never got a write acknowledged");
    // fio sees the disconnect (an error exit is expected); it must end promptly either way.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fio.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = fio.kill();
            panic!("fio still running 20 s after the gateway exited");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    g.restart().unwrap();
    let mut s = TcpStream::connect(g.addr()).unwrap();
    s.set_nodelay(true).unwrap(); // the nbd crate sends each header field separately
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let e = handshake(&mut s, b"vol").unwrap();
    let mut c = NbdClient::new(&mut s, &e);
    for i in 0..acked {
        let mut got = vec![0u8; BLOCK];
        c.seek(SeekFrom::Start(BASE + i * BLOCK as u64)).unwrap();
        c.read_exact(&mut got).unwrap();
        assert_same(&format!("acknowledged block {i} of {acked}"), &got, &pattern(i, BLOCK));
    }
    // And the restarted daemon takes new writes.
    let fresh = pattern(999, 3 * BLOCK);
    c.seek(SeekFrom::Start(5 << 20)).unwrap();
    c.write_all(&fresh).unwrap();
    c.flush().unwrap();
    let mut got = vec![0u8; fresh.len()];
    c.seek(SeekFrom::Start(5 << 20)).unwrap();
    c.read_exact(&mut got).unwrap();
    assert_same("fresh write after restart", &got, &fresh);
    assert!(g.stop().unwrap().success());
}
