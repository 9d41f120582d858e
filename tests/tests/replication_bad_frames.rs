//! The replication ports against bytes a peer should never send. Frames are built here from
//! the wire format (16-byte header: magic "GWRL", version u16, type u16, length u32, CRC32C
//! of the first 12 header bytes and the payload; big-endian; strings are a u16 length plus
//! UTF-8), not with the engine's encoder.
//!
//! Against recovery site B's data port and control port: random garbage; a frame with a valid
//! CRC but a wrong magic; a Hello of protocol version 9; a data Hello from a site that is not
//! the peer; a data-channel Hello on the control port; a request from a foreign site; a
//! correct Hello followed by an Update with a corrupted CRC, or cut off in the middle. Each
//! time B answers `Refused` with a readable reason (a version mismatch names both versions)
//! or closes the connection, logs why, and applies nothing (its image is unchanged). Both
//! daemons keep running and still mirror a write from A afterwards.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use gateway_tests::pattern;
use gateway_tests::sites::{Options, Site, TwoSites};

const MAGIC: u32 = 0x4757_524c;
const T_HELLO: u16 = 1;
const T_WELCOME: u16 = 2;
const T_REFUSED: u16 = 3;
const T_UPDATE: u16 = 10;
const T_REQUEST: u16 = 30;
const T_RESPONSE: u16 = 31;

fn frame_raw(magic: u32, version: u16, ty: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(16 + payload.len());
    f.extend_from_slice(&magic.to_be_bytes());
    f.extend_from_slice(&version.to_be_bytes());
    f.extend_from_slice(&ty.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&f[..12]), payload);
    f.extend_from_slice(&crc.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn frame(ty: u16, payload: &[u8]) -> Vec<u8> {
    frame_raw(MAGIC, 1, ty, payload)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn hello(node: &str, channel: u8, set: &str, generation: u64) -> Vec<u8> {
    let mut p = Vec::new();
    put_str(&mut p, node);
    p.push(channel);
    put_str(&mut p, set);
    p.extend_from_slice(&generation.to_be_bytes());
    p
}

fn update(volume: &str, seq: u64, offset: u64, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    put_str(&mut p, volume);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&offset.to_be_bytes());
    p.push(1); // write
    p.push(0); // flags
    p.extend_from_slice(&(data.len() as u64).to_be_bytes());
    p.extend_from_slice(&(data.len() as u32).to_be_bytes());
    p.extend_from_slice(data);
    frame(T_UPDATE, &p)
}

fn request(id: u64, body: &str) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&(body.len() as u32).to_be_bytes());
    p.extend_from_slice(body.as_bytes());
    frame(T_REQUEST, &p)
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Read until the peer closes (or `timeout`): the bytes, and whether it closed.
fn read_to_close(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => return (got, true),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading: {e}"),
        }
        if Instant::now() > deadline {
            return (got, false);
        }
    }
}

/// Read exactly one frame (type, payload), checking its magic and CRC.
fn read_frame(s: &mut TcpStream, timeout: Duration) -> Option<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if got.len() >= 16 {
            let len = u32::from_be_bytes(got[8..12].try_into().unwrap()) as usize;
            if got.len() >= 16 + len {
                return Some(parse_frame(&got[..16 + len]));
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
        if Instant::now() > deadline {
            return None;
        }
    }
}

fn parse_frame(f: &[u8]) -> (u16, Vec<u8>) {
    assert!(f.len() >= 16, "short frame {f:02x?}");
    assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()), MAGIC, "bad magic in {f:02x?}");
    assert_eq!(u16::from_be_bytes([f[4], f[5]]), 1, "reply version");
    let ty = u16::from_be_bytes([f[6], f[7]]);
    let len = u32::from_be_bytes(f[8..12].try_into().unwrap()) as usize;
    assert_eq!(f.len(), 16 + len, "frame length");
    let crc = u32::from_be_bytes(f[12..16].try_into().unwrap());
    assert_eq!(crc, crc32c::crc32c_append(crc32c::crc32c(&f[..12]), &f[16..]), "reply CRC");
    (ty, f[16..].to_vec())
}

fn string_at(p: &[u8]) -> String {
    let n = u16::from_be_bytes([p[0], p[1]]) as usize;
    String::from_utf8(p[2..2 + n].to_vec()).expect("UTF-8 reason")
}

/// Send `bytes`; B must close, either with nothing or with one `Refused` frame. Returns the
/// reason, if any.
#[track_caller]
fn expect_refused_or_closed(port: u16, bytes: &[u8], what: &str) -> Option<String> {
    let mut s = connect(port);
    let _ = s.write_all(bytes);
    let (got, closed) = read_to_close(&mut s, Duration::from_secs(8));
    assert!(closed, "{what}: B did not close the connection (got {} bytes)", got.len());
    if got.is_empty() {
        return None;
    }
    let (ty, payload) = parse_frame(&got);
    assert_eq!(ty, T_REFUSED, "{what}: B answered frame type {ty}, not Refused");
    let reason = string_at(&payload);
    eprintln!("{what}: refused: {reason}");
    Some(reason)
}

fn image_hash(sites: &TwoSites) -> Vec<u8> {
    sites.image(Site::B)
}

#[test]
fn replication_bad_frames() {
    let t0 = Instant::now();
    let mut sites = TwoSites::new(Options::default()).unwrap();
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    let (data_port, control_port) = sites.ports(Site::B);
    let before = image_hash(&sites);
    let generation = sites.vs(Site::B)["generation"].as_u64().unwrap();

    // Data port.
    let junk = pattern(99, 4096);
    expect_refused_or_closed(data_port, &junk, "data: garbage");
    let wrong_magic = frame_raw(0x4757_5258, 1, T_HELLO, &hello("A", 0, "vs1", generation));
    expect_refused_or_closed(data_port, &wrong_magic, "data: wrong magic");
    let v9 = frame_raw(MAGIC, 9, T_HELLO, &hello("A", 0, "vs1", generation));
    let reason = expect_refused_or_closed(data_port, &v9, "data: version 9")
        .expect("B closed without saying why it refuses protocol version 9");
    assert!(reason.contains('9') && reason.contains('1') && reason.contains("version"), "{reason}");
    let reason =
        expect_refused_or_closed(data_port, &frame(T_HELLO, &hello("C", 0, "vs1", generation)), "data: site C")
            .expect("B closed without saying why it refuses site C");
    assert!(reason.contains("`C`") && reason.contains("vs1"), "{reason}");
    let reason =
        expect_refused_or_closed(data_port, &frame(T_HELLO, &hello("A", 0, "nope", generation)), "data: unknown set")
            .expect("no reason for an unknown set");
    assert!(reason.contains("nope"), "{reason}");
    let reason =
        expect_refused_or_closed(data_port, &frame(T_HELLO, &hello("A", 1, "vs1", generation)), "data: control hello")
            .expect("no reason for a control hello on the data port");
    assert!(reason.contains("data"), "{reason}");
    let reason =
        expect_refused_or_closed(data_port, &frame(T_HELLO, &hello("A", 0, "vs1", 0)), "data: stale generation")
            .expect("no reason for a stale generation");
    assert!(reason.contains("generation"), "{reason}");
    let reason = expect_refused_or_closed(data_port, &update("vol0", 1, 0, &[0xee; 4096]), "data: update before hello")
        .expect("no reason for an update without a hello");
    assert!(reason.contains("hello"), "{reason}");

    // A correct Hello (as site A, the current generation), then a corrupted or cut-off Update.
    for (what, cut) in [("update with a corrupted CRC", false), ("update cut off mid-frame", true)] {
        let mut s = connect(data_port);
        s.write_all(&frame(T_HELLO, &hello("A", 0, "vs1", generation))).unwrap();
        let (ty, _) = read_frame(&mut s, Duration::from_secs(5)).expect("no answer to a correct Hello");
        assert_eq!(ty, T_WELCOME, "{what}: B did not welcome a correct Hello");
        let mut u = update("vol0", 1, 0, &[0xee; 4096]);
        if cut {
            u.truncate(16 + 2000);
            s.write_all(&u).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
        } else {
            let n = u.len();
            u[n - 100] ^= 0x40;
            s.write_all(&u).unwrap();
        }
        let (got, closed) = read_to_close(&mut s, Duration::from_secs(8));
        assert!(closed, "data: {what}: B did not close");
        assert!(got.is_empty(), "data: {what}: B answered {got:02x?}");
    }

    // Control port.
    expect_refused_or_closed(control_port, &junk, "control: garbage");
    expect_refused_or_closed(control_port, &wrong_magic, "control: wrong magic");
    let v9c = frame_raw(MAGIC, 9, T_HELLO, &hello("A", 1, "vs1", 0));
    let reason = expect_refused_or_closed(control_port, &v9c, "control: version 9")
        .expect("B's control port closed without saying why it refuses version 9");
    assert!(reason.contains('9') && reason.contains('1') && reason.contains("version"), "{reason}");
    let reason = expect_refused_or_closed(
        control_port,
        &frame(T_HELLO, &hello("A", 0, "vs1", generation)),
        "control: data hello",
    )
    .expect("no reason for a data hello on the control port");
    assert!(reason.contains("control"), "{reason}");
    // A foreign site may say hello but cannot promote B.
    {
        let mut s = connect(control_port);
        s.write_all(&frame(T_HELLO, &hello("C", 1, "vs1", 0))).unwrap();
        let (ty, payload) = read_frame(&mut s, Duration::from_secs(5)).expect("no answer to a control hello");
        if ty == T_WELCOME {
            s.write_all(&request(1, r#"{"op":"promote","volume_set":"vs1","generation":99}"#)).unwrap();
            let (ty, payload) = read_frame(&mut s, Duration::from_secs(5)).expect("no response to a request");
            assert_eq!(ty, T_RESPONSE);
            let body: serde_json::Value = serde_json::from_slice(&payload[12..]).unwrap();
            assert_eq!(body["ok"], false, "site C promoted B: {body}");
            assert!(body["error"].as_str().unwrap().contains("`C`"), "{body}");
            // Not JSON.
            s.write_all(&request(2, "{not json")).unwrap();
            let (ty, payload) = read_frame(&mut s, Duration::from_secs(5)).expect("no response to a bad request");
            assert_eq!(ty, T_RESPONSE);
            let body: serde_json::Value = serde_json::from_slice(&payload[12..]).unwrap();
            assert_eq!(body["ok"], false, "{body}");
            // A request with a corrupted CRC: closed.
            let mut r = request(3, r#"{"op":"state","volume_set":"vs1"}"#);
            let n = r.len();
            r[n - 3] ^= 1;
            s.write_all(&r).unwrap();
            let (got, closed) = read_to_close(&mut s, Duration::from_secs(8));
            assert!(closed && got.is_empty(), "control: corrupted request: closed {closed}, got {got:02x?}");
        } else {
            assert_eq!(ty, T_REFUSED, "control hello from C answered with type {ty}");
            eprintln!("control: site C refused: {}", string_at(&payload));
        }
    }

    // Nothing applied, nobody died, B still the recovery site.
    assert!(sites.alive(Site::A) && sites.alive(Site::B), "a daemon died:\n{}", sites.logs(40));
    assert!(image_hash(&sites) == before, "B's image changed after bad frames:\n{}", sites.logs(40));
    let b = sites.vs(Site::B);
    assert_eq!(b["role"], "secondary", "{b}");
    assert_eq!(b["production"], "A", "{b}");
    let log = sites.log(Site::B);
    for needle in ["bad frame magic", "CRC32C mismatch", "version 9"] {
        assert!(log.contains(needle), "B's log does not mention `{needle}`:\n{}", sites.logs(40));
    }

    // Replication still works.
    sites.wait_in_sync(Site::A, Duration::from_secs(30));
    let q = Command::new("qemu-io")
        .args(["-f", "raw", &sites.uri(Site::A), "-c", "write -P 0x42 8M 64k"])
        .output()
        .unwrap();
    assert!(q.status.success(), "{q:?}");
    assert_eq!(sites.image(Site::B)[8 << 20], 0x42, "a write at A after the bad frames did not reach B");
    sites.assert_identical("after the bad frames");
    eprintln!("replication_bad_frames: {:?}", t0.elapsed());
}
