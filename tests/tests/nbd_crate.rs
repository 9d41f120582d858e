//! The `nbd` crate (crates.io, 0.3), a client we did not write, talks to the gateway: its
//! fixed-newstyle `NBD_OPT_EXPORT_NAME` handshake gets the right size and flags, data written
//! at aligned and unaligned offsets (including the last bytes of the export) reads back byte
//! for byte on the same and on a second connection, flush succeeds, and a read-only export
//! refuses writes with EPERM.

use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::net::TcpStream;
use std::time::Duration;

use gateway_tests::{assert_same, pattern, Gateway};
use nbd::client::{handshake, NbdClient};

const MIB: u64 = 1 << 20;

fn config() -> String {
    r#"
[[export]]
name = "mem"
size = "64MiB"
[export.backend]
type = "memory"

[[export]]
name = "disk"
size = "32MiB"
[export.backend]
type = "file"
path = "disk.img"

[[export]]
name = "ro"
size = "8MiB"
read_only = true
[export.backend]
type = "file"
path = "ro.img"
"#
    .into()
}

fn stream(g: &Gateway) -> TcpStream {
    let s = TcpStream::connect(g.addr()).unwrap();
    s.set_nodelay(true).unwrap(); // the nbd crate sends each header field separately
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn round_trip(g: &Gateway, export: &str, size: u64) {
    let mut s = stream(g);
    let e = handshake(&mut s, export.as_bytes()).unwrap();
    assert_eq!(e.size, size, "size reported to the nbd crate for `{export}`");
    assert!(!e.readonly, "`{export}` is writable");
    assert!(e.send_flush, "`{export}` advertises flush");
    assert!(e.send_trim, "`{export}` advertises trim");
    let mut c = NbdClient::new(&mut s, &e);

    // (offset, length): aligned, unaligned and straddling 4 KiB blocks, large, and the tail.
    let spots: Vec<(u64, usize)> =
        vec![(0, 4096), (3 * 4096 + 17, 10_000), (5 * MIB - 1, 3), (size / 2, MIB as usize), (size - 4099, 4099)];
    for (i, &(off, len)) in spots.iter().enumerate() {
        c.seek(SeekFrom::Start(off)).unwrap();
        c.write_all(&pattern(i as u64 + 1, len)).unwrap();
    }
    c.flush().unwrap();
    for (i, &(off, len)) in spots.iter().enumerate() {
        let mut got = vec![0u8; len];
        c.seek(SeekFrom::Start(off)).unwrap();
        c.read_exact(&mut got).unwrap();
        assert_same(&format!("{export}: read back at {off}"), &got, &pattern(i as u64 + 1, len));
    }
    // Never written: zeroes.
    let mut hole = vec![0xffu8; 8192];
    c.seek(SeekFrom::Start(2 * MIB)).unwrap();
    c.read_exact(&mut hole).unwrap();
    assert!(hole.iter().all(|&b| b == 0), "{export}: unwritten range does not read as zeroes");

    // A second, independent connection sees the same bytes.
    let mut s2 = stream(g);
    let e2 = handshake(&mut s2, export.as_bytes()).unwrap();
    let mut c2 = NbdClient::new(&mut s2, &e2);
    for (i, &(off, len)) in spots.iter().enumerate() {
        let mut got = vec![0u8; len];
        c2.seek(SeekFrom::Start(off)).unwrap();
        c2.read_exact(&mut got).unwrap();
        assert_same(&format!("{export}: second connection at {off}"), &got, &pattern(i as u64 + 1, len));
    }
}

#[test]
fn nbd_crate_round_trips_on_memory_and_file_exports() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ro.img"), pattern(99, 8 << 20)).unwrap();
    let g = Gateway::start_in(dir.path(), &config()).unwrap();
    round_trip(&g, "mem", 64 * MIB);
    round_trip(&g, "disk", 32 * MIB);

    // The read-only export: flag set, content is the file's, writes refused with EPERM
    // (which the crate maps to PermissionDenied), and the connection still reads after.
    let mut s = stream(&g);
    let e = handshake(&mut s, b"ro").unwrap();
    assert!(e.readonly, "read-only export without NBD_FLAG_READ_ONLY");
    assert!(!e.send_trim, "read-only export advertises trim");
    assert_eq!(e.size, 8 << 20);
    let mut c = NbdClient::new(&mut s, &e);
    let err = c.write(&[1, 2, 3]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    let mut got = vec![0u8; 65536];
    c.seek(SeekFrom::Start(MIB)).unwrap();
    c.read_exact(&mut got).unwrap();
    assert_same("ro export content", &got, &pattern(99, 8 << 20)[MIB as usize..MIB as usize + 65536]);
}

#[test]
fn nbd_crate_unknown_export_name_is_refused() {
    let g = Gateway::start(&gateway_tests::one_export("mem", "1MiB", "type = \"memory\"")).unwrap();
    let mut s = stream(&g);
    // NBD_OPT_EXPORT_NAME has no error reply: the server must close the connection.
    let err = handshake(&mut s, b"no-such-export").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
}
