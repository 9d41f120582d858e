//! Requests a well-behaved client would never send get the exact NBD error the protocol and
//! the server's rules call for, and the connection stays usable after every refusal: libnbd
//! with strict mode off (out-of-range read/trim/cache/block-status → EINVAL, out-of-range
//! write/zero → ENOSPC, a write to a read-only export → EPERM, a flag a command does not take
//! → EINVAL, a read over 32 MiB → EINVAL), FUA accepted on every command as the protocol
//! requires, and raw requests libnbd cannot send (unknown
//! command, a write with an invalid flag whose payload must still be consumed).

use std::io::Write;
use std::time::Duration;

use gateway_tests::{pattern, python, raw, Gateway};

const CONFIG: &str = r#"
[[export]]
name = "disk"
size = "16MiB"
[export.backend]
type = "file"
path = "disk.img"

[[export]]
name = "mem"
size = "16MiB"
[export.backend]
type = "memory"

[[export]]
name = "ro"
size = "1MiB"
read_only = true
[export.backend]
type = "file"
path = "ro.img"
"#;

/// Prints `ERR <tag> errno=<n>` or `OK <tag>` for each attempt, then `ALIVE <tag> ok` after a
/// valid request on the same handle.
const SCRIPT: &str = r#"
import errno, sys, nbd

def open_h(uri):
    h = nbd.NBD()
    h.set_strict_mode(0)
    h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    h.connect_uri(uri)
    return h

def num(e):
    return e if isinstance(e, int) else getattr(errno, str(e), -1)

h = open_h(sys.argv[1])
ro = open_h(sys.argv[2])
size = h.get_size()
print("SIZE", size, ro.get_size(), flush=True)
count = 0

def alive(handle, tag, writable):
    global count
    count += 1
    data = bytes((count * 31 + i) % 253 for i in range(4096))
    if writable:
        handle.pwrite(data, 8192)
        back = handle.pread(4096, 8192)
        ok = back == data
    else:
        ok = len(handle.pread(4096, 0)) == 4096
    print("ALIVE", tag, "ok" if ok else "MISMATCH", flush=True)

def attempt(tag, fn, handle=h, writable=True):
    try:
        fn()
        print("OK", tag, flush=True)
    except nbd.Error as e:
        print("ERR %s errno=%d" % (tag, num(e.errno)), flush=True)
    alive(handle, tag, writable)

def cb(*args):
    return 0

attempt("pread", lambda: h.pread(4096, size))
attempt("pread_straddle", lambda: h.pread(2, size - 1))
attempt("pread_huge_offset", lambda: h.pread(512, 2**63 - 256))
attempt("pwrite", lambda: h.pwrite(b"x" * 4096, size))
attempt("pwrite_end", lambda: h.pwrite(b"xy", size - 1))
attempt("trim", lambda: h.trim(4096, size))
attempt("zero", lambda: h.zero(4096, size))
attempt("cache", lambda: h.cache(4096, size))
attempt("block_status", lambda: h.block_status(4096, size, cb))
attempt("pread_unknown_flag", lambda: h.pread(4096, 0, flags=1 << 7))
attempt("pread_req_one", lambda: h.pread(4096, 0, flags=nbd.CMD_FLAG_REQ_ONE))
attempt("pwrite_no_hole", lambda: h.pwrite(b"q" * 512, 0, flags=nbd.CMD_FLAG_NO_HOLE))
attempt("flush_unknown_flag", lambda: h.flush(flags=1 << 15))
attempt("pread_big", lambda: h.pread(33 * 1024 * 1024, 0))
attempt("pwrite_last_byte", lambda: h.pwrite(b"z", size - 1))
attempt("zero_last_block", lambda: h.zero(4096, size - 4096))
attempt("flush", lambda: h.flush())
attempt("ro_pwrite", lambda: ro.pwrite(b"x" * 512, 0), ro, False)
attempt("ro_trim", lambda: ro.trim(4096, 0), ro, False)
attempt("ro_zero", lambda: ro.zero(4096, 0), ro, False)
attempt("ro_pwrite_out_of_range", lambda: ro.pwrite(b"x", 2**30), ro, False)
attempt("ro_pread", lambda: ro.pread(4096, 4096), ro, False)
h.shutdown()
ro.shutdown()
print("DONE", flush=True)
"#;

const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;
const EPERM: u32 = 1;

fn expected() -> Vec<(&'static str, Option<u32>)> {
    vec![
        ("pread", Some(EINVAL)),
        ("pread_straddle", Some(EINVAL)),
        ("pread_huge_offset", Some(EINVAL)),
        ("pwrite", Some(ENOSPC)),
        ("pwrite_end", Some(ENOSPC)),
        ("trim", Some(EINVAL)),
        ("zero", Some(ENOSPC)),
        ("cache", Some(EINVAL)),
        ("block_status", Some(EINVAL)),
        ("pread_unknown_flag", Some(EINVAL)),
        ("pread_req_one", Some(EINVAL)),
        ("pwrite_no_hole", Some(EINVAL)),
        ("flush_unknown_flag", Some(EINVAL)),
        ("pread_big", Some(EINVAL)),
        ("pwrite_last_byte", None),
        ("zero_last_block", None),
        ("flush", None),
        // The read-only check comes before the range check.
        ("ro_pwrite", Some(EPERM)),
        ("ro_trim", Some(EPERM)),
        ("ro_zero", Some(EPERM)),
        ("ro_pwrite_out_of_range", Some(EPERM)),
        ("ro_pread", None),
    ]
}

fn check_export(g: &Gateway, export: &str) {
    let out = python(SCRIPT, &[&g.uri(export), &g.uri("ro")], Duration::from_secs(60)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("SIZE 16777216 1048576"), "{text}");
    for (tag, errno) in expected() {
        let want = match errno {
            Some(e) => format!("ERR {tag} errno={e}"),
            None => format!("OK {tag}"),
        };
        assert_eq!(lines.next(), Some(want.as_str()), "{export}: {tag}:\n{text}");
        let want = format!("ALIVE {tag} ok");
        assert_eq!(lines.next(), Some(want.as_str()), "{export}: connection unusable after {tag}:\n{text}");
    }
    assert_eq!(lines.next(), Some("DONE"), "{text}");
}

/// The gateway with CONFIG, the read-only export's image created first.
fn start() -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ro.img"), pattern(5, 1 << 20)).unwrap();
    let g = Gateway::start_in(dir.path(), CONFIG).unwrap();
    (dir, g)
}

#[test]
fn libnbd_strict_mode_off_gets_exact_errors() {
    let (_dir, g) = start();
    check_export(&g, "disk");
    check_export(&g, "mem");
}

#[test]
fn raw_invalid_requests_keep_the_connection() {
    let (_dir, g) = start();
    let (mut s, size) = raw::open(&g.addr(), "mem").unwrap();
    assert_eq!(size, 16 << 20);
    let data = pattern(11, 4096);
    assert_eq!(raw::write(&mut s, 1, 4096, &data).unwrap(), 0);

    // Unknown command types.
    for (i, cmd) in [7u16, 9, 99, 0xffff].into_iter().enumerate() {
        let cookie = 100 + i as u64;
        s.write_all(&raw::request(0, cmd, cookie, 0, 0)).unwrap();
        assert_eq!(raw::simple_reply(&mut s).unwrap(), (EINVAL, cookie), "command {cmd}");
    }
    // A write with a flag writes do not take (REQ_ONE): refused, but its payload is read so
    // the next request is parsed from the right place.
    let mut w = raw::request(1 << 3, raw::CMD_WRITE, 200, 0, 4096);
    w.extend_from_slice(&pattern(12, 4096));
    s.write_all(&w).unwrap();
    assert_eq!(raw::simple_reply(&mut s).unwrap(), (EINVAL, 200));
    // So is an out-of-range write's.
    let mut w = raw::request(0, raw::CMD_WRITE, 201, size - 100, 4096);
    w.extend_from_slice(&pattern(13, 4096));
    s.write_all(&w).unwrap();
    assert_eq!(raw::simple_reply(&mut s).unwrap(), (ENOSPC, 201));
    // DF without structured replies.
    s.write_all(&raw::request(1 << 2, raw::CMD_READ, 202, 0, 512)).unwrap();
    assert_eq!(raw::simple_reply(&mut s).unwrap(), (EINVAL, 202));
    // Nothing above changed the data, and the connection still works.
    assert_eq!(raw::read(&mut s, 203, 0, 8192).unwrap().unwrap()[..4096], vec![0u8; 4096][..]);
    assert_eq!(raw::read(&mut s, 204, 4096, 4096).unwrap().unwrap(), data);
    // Zero-length read and write are fine.
    assert_eq!(raw::read(&mut s, 205, size, 0).unwrap().unwrap(), Vec::<u8>::new());
    assert_eq!(raw::write(&mut s, 206, size, &[]).unwrap(), 0);
    s.write_all(&raw::request(0, raw::CMD_FLUSH, 207, 0, 0)).unwrap();
    assert_eq!(raw::simple_reply(&mut s).unwrap(), (0, 207));
    s.write_all(&raw::request(0, raw::CMD_DISC, 208, 0, 0)).unwrap();
    raw::expect_closed(&mut s, Duration::from_secs(5)).unwrap();
}

#[test]
fn raw_oversized_read_gets_einval() {
    let (_dir, g) = start();
    let (mut s, _) = raw::open(&g.addr(), "mem").unwrap();
    for (cookie, len) in [(1u64, (32u32 << 20) + 1), (2, 65 << 20), (3, 128 << 20), (4, u32::MAX)] {
        assert_eq!(raw::read(&mut s, cookie, 0, len).unwrap(), Err(EINVAL), "read of {len} bytes");
    }
    assert_eq!(raw::read(&mut s, 5, 0, 16).unwrap().unwrap(), vec![0u8; 16]);
}

/// The protocol: "bit 0, NBD_CMD_FLAG_FUA; This flag is valid for all commands, provided
/// NBD_FLAG_SEND_FUA has been negotiated, in which case the server MUST accept all commands
/// with this bit set (even by ignoring the bit) ... existing clients are known to set this bit
/// on other commands" (old QEMU sends FLUSH with FUA).
const FUA_SCRIPT: &str = r#"
import sys, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
for tag, fn in [("pread", lambda: h.pread(512, 0, flags=nbd.CMD_FLAG_FUA)),
                ("flush", lambda: h.flush(flags=nbd.CMD_FLAG_FUA)),
                ("cache", lambda: h.cache(512, 0, flags=nbd.CMD_FLAG_FUA)),
                ("block_status", lambda: h.block_status(512, 0, lambda *a: 0, flags=nbd.CMD_FLAG_FUA)),
                ("pwrite", lambda: h.pwrite(b"f" * 512, 0, flags=nbd.CMD_FLAG_FUA)),
                ("trim", lambda: h.trim(512, 0, flags=nbd.CMD_FLAG_FUA)),
                ("zero", lambda: h.zero(512, 0, flags=nbd.CMD_FLAG_FUA))]:
    try:
        fn()
        print("OK", tag)
    except nbd.Error as e:
        print("ERR", tag, e.errno)
"#;

#[test]
fn fua_is_accepted_on_every_command() {
    let (_dir, g) = start();
    let out = python(FUA_SCRIPT, &[&g.uri("mem")], Duration::from_secs(30)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let want = ["pread", "flush", "cache", "block_status", "pwrite", "trim", "zero"].map(|t| format!("OK {t}"));
    assert_eq!(text.lines().collect::<Vec<_>>(), want.iter().map(String::as_str).collect::<Vec<_>>(), "{text}");
}
