//! Hostile or broken clients only lose their own connection: random bytes during the
//! handshake, random bytes instead of a request after a valid handshake (bad request magic),
//! a request header or write payload cut short by a close, and a write claiming a 1 GiB
//! payload each make the server close that connection (EOF within seconds, logged as
//! `connection closed: ...`), while a connection opened before keeps working and fresh
//! clients (`nbdinfo`, a new raw connection) are served correctly afterwards.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use gateway_tests::{assert_same, pattern, raw, require_tool, run, Gateway};
use nbd::client::{handshake, NbdClient};

const CLOSE_WITHIN: Duration = Duration::from_secs(5);
const CONFIG: &str = "[[export]]\nname = \"mem\"\nsize = \"16MiB\"\n[export.backend]\ntype = \"memory\"\n";

/// The long-lived good connection: write then read back a block unique to `step`.
fn good_io(c: &mut NbdClient<&mut TcpStream>, step: u64) {
    let data = pattern(1000 + step, 8192);
    let off = (step % 64) * 65536 + 512;
    c.seek(SeekFrom::Start(off)).unwrap();
    c.write_all(&data).unwrap();
    c.seek(SeekFrom::Start(off)).unwrap();
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).unwrap();
    assert_same(&format!("good connection after step {step}"), &got, &data);
}

fn wait_for_log(g: &Gateway, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = g.log();
        if log.matches(needle).count() >= count || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn garbage_closes_only_the_offending_connection() {
    require_tool("nbdinfo");
    let mut g = Gateway::start(CONFIG).unwrap();
    let mut good_stream = TcpStream::connect(g.addr()).unwrap();
    good_stream.set_nodelay(true).unwrap(); // the nbd crate sends each header field separately
    good_stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let e = handshake(&mut good_stream, b"mem").unwrap();
    let mut good = NbdClient::new(&mut good_stream, &e);
    good_io(&mut good, 0);
    let mut step = 1;
    let mut violations = 0;

    // 1. Random bytes during the handshake, with and without reading the greeting first,
    //    and after valid client flags (so the option magic is what is wrong).
    for seed in 1..=6u64 {
        let mut s = raw::connect(&g.addr()).unwrap();
        if seed % 2 == 0 {
            raw::greeting(&mut s).unwrap();
        }
        if seed > 3 {
            raw::client_flags(&mut s).unwrap();
        }
        s.write_all(&pattern(seed, 64 + seed as usize * 37)).unwrap();
        raw::expect_closed(&mut s, CLOSE_WITHIN).unwrap_or_else(|e| panic!("handshake garbage seed {seed}: {e:#}"));
        violations += 1;
        good_io(&mut good, step);
        step += 1;
    }
    // An option claiming a payload far over the limit is refused before reading it.
    let mut s = raw::connect(&g.addr()).unwrap();
    raw::greeting(&mut s).unwrap();
    raw::client_flags(&mut s).unwrap();
    let mut opt = raw::option(raw::OPT_GO, &[]);
    opt[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&opt).unwrap();
    raw::expect_closed(&mut s, CLOSE_WITHIN).unwrap();
    violations += 1;

    // 2. After a valid handshake: random bytes where a request header belongs.
    for seed in 10..=14u64 {
        let (mut s, _) = raw::open(&g.addr(), "mem").unwrap();
        let mut junk = pattern(seed, 28 * 3);
        junk[0] ^= 0x80; // never the request magic
        s.write_all(&junk).unwrap();
        raw::expect_closed(&mut s, CLOSE_WITHIN).unwrap_or_else(|e| panic!("request garbage seed {seed}: {e:#}"));
        violations += 1;
        good_io(&mut good, step);
        step += 1;
    }

    // 3. A request header cut short, then the client hangs up.
    let (mut s, _) = raw::open(&g.addr(), "mem").unwrap();
    s.write_all(&raw::request(0, raw::CMD_READ, 1, 0, 4096)[..11]).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    raw::expect_closed(&mut s, CLOSE_WITHIN).unwrap();
    good_io(&mut good, step);
    step += 1;
    //    A write whose payload is cut short: nothing of it may land.
    let (mut s, _) = raw::open(&g.addr(), "mem").unwrap();
    let mut w = raw::request(0, raw::CMD_WRITE, 2, 12 << 20, 4096);
    w.extend_from_slice(&[0xee; 100]);
    s.write_all(&w).unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    raw::expect_closed(&mut s, CLOSE_WITHIN).unwrap();

    // 4. A write header claiming a 1 GiB payload: refused without reading it.
    let (mut s, _) = raw::open(&g.addr(), "mem").unwrap();
    s.write_all(&raw::request(0, raw::CMD_WRITE, 3, 0, 1 << 30)).unwrap();
    s.write_all(&[0xcc; 4096]).unwrap();
    raw::expect_closed(&mut s, CLOSE_WITHIN).unwrap();
    good_io(&mut good, step);
    step += 1;

    // The daemon is alive, serves new clients, and the good connection still works.
    assert!(g.alive(), "daemon died; log:\n{}", g.log());
    let out = run(Command::new("nbdinfo").args(["--size", &g.uri("mem")])).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (16u64 << 20).to_string());
    let (mut s, size) = raw::open(&g.addr(), "mem").unwrap();
    assert_eq!(size, 16 << 20);
    assert_eq!(raw::read(&mut s, 1, 12 << 20, 4096).unwrap().unwrap(), vec![0u8; 4096], "truncated write landed");
    let data = pattern(77, 65536);
    assert_eq!(raw::write(&mut s, 2, 3 << 20, &data).unwrap(), 0);
    assert_eq!(raw::read(&mut s, 3, 3 << 20, 65536).unwrap().unwrap(), data);
    good_io(&mut good, step);
    // The fresh connection's write is visible on the old one.
    let mut got = vec![0u8; 65536];
    good.seek(SeekFrom::Start(3 << 20)).unwrap();
    good.read_exact(&mut got).unwrap();
    assert_same("fresh write seen by the old connection", &got, &data);

    let log = wait_for_log(&g, "connection closed: protocol violation", violations);
    assert!(
        log.matches("connection closed: protocol violation").count() >= violations,
        "expected {violations} `connection closed: protocol violation` lines; log:\n{log}"
    );
    let log = wait_for_log(&g, "1073741824", 1);
    assert!(
        log.lines().any(|l| l.contains("connection closed") && l.contains("1073741824")),
        "no log line about the 1 GiB write; log:\n{log}"
    );
    assert!(g.stop().unwrap().success());
}

#[test]
fn many_garbage_connections_at_once() {
    let g = Gateway::start(CONFIG).unwrap();
    let addr = g.addr();
    let threads: Vec<_> = (0..16u64)
        .map(|seed| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let (mut s, _) = raw::open(&addr, "mem").unwrap();
                let data = pattern(seed, 4096);
                assert_eq!(raw::write(&mut s, seed, seed * 4096, &data).unwrap(), 0);
                s.write_all(&pattern(seed + 500, 1000)).unwrap();
                raw::expect_closed(&mut s, CLOSE_WITHIN).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Every write acknowledged before the garbage is there.
    let (mut s, _) = raw::open(&g.addr(), "mem").unwrap();
    let all = raw::read(&mut s, 1, 0, 16 * 4096).unwrap().unwrap();
    for seed in 0..16u64 {
        let at = seed as usize * 4096;
        assert_same(&format!("block {seed}"), &all[at..at + 4096], &pattern(seed, 4096));
    }
}
