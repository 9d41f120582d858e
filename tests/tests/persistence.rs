//! Data written through the file backend survives the daemon: after SIGTERM (exit 0, "all
//! exports flushed") and a restart on the same data directory it reads back byte for byte,
//! and is in the image file itself; after `kill -9` following a FUA write (qemu-io
//! `write -f`) or a flush, it is there too. A config whose existing image has a different
//! size is refused at start (non-zero exit, the error names the path and both sizes) and the
//! image is left untouched.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::{assert_same, gateway_bin, one_export, pattern, require_tool, run, Gateway};
use nbd::client::{handshake, NbdClient};

const MIB: u64 = 1 << 20;

fn config() -> String {
    one_export("vol", "32MiB", "type = \"file\"\npath = \"vol.img\"")
}

/// (offset, length, seed) of the writes of one round; each round writes different data.
fn spots(round: u64) -> Vec<(u64, usize, u64)> {
    let r = round * 10;
    vec![(0, 4096, r + 1), (MIB + 333, 70_000, r + 2), (17 * MIB, MIB as usize, r + 3), (32 * MIB - 5, 5, r + 4)]
}

fn write_spots(g: &Gateway, round: u64, flush: bool) {
    let mut s = TcpStream::connect(g.addr()).unwrap();
    s.set_nodelay(true).unwrap(); // the nbd crate sends each header field separately
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let e = handshake(&mut s, b"vol").unwrap();
    let mut c = NbdClient::new(&mut s, &e);
    for (off, len, seed) in spots(round) {
        c.seek(SeekFrom::Start(off)).unwrap();
        c.write_all(&pattern(seed, len)).unwrap();
    }
    if flush {
        c.flush().unwrap();
    }
}

fn check_spots(g: &Gateway, round: u64, what: &str) {
    let mut s = TcpStream::connect(g.addr()).unwrap();
    s.set_nodelay(true).unwrap(); // the nbd crate sends each header field separately
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let e = handshake(&mut s, b"vol").unwrap();
    assert_eq!(e.size, 32 * MIB);
    let mut c = NbdClient::new(&mut s, &e);
    for (off, len, seed) in spots(round) {
        let mut got = vec![0u8; len];
        c.seek(SeekFrom::Start(off)).unwrap();
        c.read_exact(&mut got).unwrap();
        assert_same(&format!("{what}: at {off}"), &got, &pattern(seed, len));
    }
    let mut untouched = vec![0xffu8; 65536];
    c.seek(SeekFrom::Start(10 * MIB)).unwrap();
    c.read_exact(&mut untouched).unwrap();
    assert!(untouched.iter().all(|&b| b == 0), "{what}: never-written range is not zero");
}

#[test]
fn sigterm_then_restart_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_in(dir.path(), &config()).unwrap();
    write_spots(&g, 0, false);
    let status = g.stop().unwrap();
    assert!(status.success(), "exit status {status}; log:\n{}", g.log());
    assert!(g.log().contains("all exports flushed"), "{}", g.log());
    // The image on disk holds the data at the same offsets.
    let img = std::fs::read(dir.path().join("vol.img")).unwrap();
    assert_eq!(img.len() as u64, 32 * MIB);
    for (off, len, seed) in spots(0) {
        assert_same(&format!("image file at {off}"), &img[off as usize..off as usize + len], &pattern(seed, len));
    }
    g.restart().unwrap();
    check_spots(&g, 0, "after SIGTERM and restart");
    // And once more, with an overwrite in between.
    write_spots(&g, 1, false);
    g.restart().unwrap();
    check_spots(&g, 1, "after an overwrite and a second restart");
}

#[test]
fn kill9_after_flush_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_in(dir.path(), &config()).unwrap();
    write_spots(&g, 2, true);
    g.kill9();
    g.restart().unwrap();
    check_spots(&g, 2, "after flush, kill -9 and restart");
}

#[test]
fn kill9_after_fua_write_keeps_data() {
    require_tool("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_in(dir.path(), &config()).unwrap();
    let uri = g.uri("vol");
    run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "write -f -P 0x5c 3M 2M",
        "-c",
        "write -f -P 0xc5 31M 1M",
    ]))
    .unwrap();
    g.kill9();
    g.restart().unwrap();
    let out = run(Command::new("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "read -P 0x5c 3M 2M",
        "-c",
        "read -P 0xc5 31M 1M",
        "-c",
        "read -P 0 5M 26M",
    ]))
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("Pattern verification failed"), "{text}");
    assert_eq!(text.matches("read ").count(), 3, "{text}");
}

#[test]
fn refuses_an_image_of_another_size() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    let content = pattern(9, 16 * MIB as usize);
    std::fs::write(&img, &content).unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, config()).unwrap();
    let mut child = Command::new(gateway_bin())
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the gateway started with a 16 MiB image configured as 32 MiB");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(!status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(stderr.contains(&img.display().to_string()), "error does not name the image path:\n{stderr}");
    assert!(stderr.contains("16777216") && stderr.contains("33554432"), "error does not name both sizes:\n{stderr}");
    assert!(stderr.contains("export `vol`"), "error does not name the export:\n{stderr}");
    // The image was neither truncated nor grown nor changed.
    assert_same("image after the refused start", &std::fs::read(&img).unwrap(), &content);
}
