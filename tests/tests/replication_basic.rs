//! Two sites mirroring one volume set synchronously: after the initial copy, a workload at the
//! production site A (fio random writes with crc32c verification, 32 in flight; qemu-io
//! pattern writes, FUA writes, write-zeroes with and without unmap, discards) leaves A's and
//! B's backing files byte-identical, and B (the recovery site) advertises its export
//! read-only and refuses host writes with EPERM, naming why.

use std::process::Command;
use std::time::{Duration, Instant};

use gateway_tests::raw;
use gateway_tests::sites::{Options, Site, TwoSites, VOLUME};
use gateway_tests::{fio_verify, qemu_io, qemu_io_ok, require_tool};

const MIB: u64 = 1 << 20;

const WRITES: &[&str] = &[
    "write -P 0xab 0 1M",
    "write -f -P 0xcd 1M 1M",
    "write -P 0xee 2M 1M",
    "write -z 2M 1M",
    "write -P 0xee 3M 1M",
    "write -z -u 3M 1M",
    "write -P 0x77 4M 1M",
    "discard 4M 1M",
    "write -P 0x11 5M 64k",
    "write -f -P 0x22 6143k 2k",
    "write -P 0x33 33554431 1",
    "flush",
];

const READS: &[&str] = &[
    "read -P 0xab 0 1M",
    "read -P 0xcd 1M 1M",
    "read -P 0 2M 1M",
    "read -P 0 3M 1M",
    "read -P 0 4M 1M",
    "read -P 0x11 5M 64k",
    "read -P 0x22 6143k 2k",
    "read -P 0x33 33554431 1",
];

#[test]
fn replication_basic() {
    for t in ["fio", "qemu-io"] {
        require_tool(t);
    }
    let t0 = Instant::now();
    let mut sites = TwoSites::new(Options { size: "64MiB".into(), ..Default::default() }).unwrap();
    let a = sites.wait_in_sync(Site::A, Duration::from_secs(30));
    eprintln!("InSync after {:?}: A {a}\nB {}", t0.elapsed(), sites.vs(Site::B));
    assert_eq!(a["role"], "primary", "{a}");
    assert_eq!(a["direction"], "A -> B", "{a}");
    assert_eq!(a["dirty_bytes"], 0, "{a}");
    assert!(a["resync_bytes_sent"].as_u64().unwrap() >= 64 * MIB, "the initial copy sends the volume: {a}");
    let b = sites.vs(Site::B);
    assert_eq!(b["role"], "secondary", "{b}");
    assert_eq!(b["production"], "A", "{b}");
    sites.assert_identical("after the initial copy");

    // fio: every 4 KiB block of the first 32 MiB, 32 in flight, verified by reading back at A.
    let text = fio_verify(&sites.uri(Site::A), "repl", &["--rw=randwrite", "--size=32M"]);
    assert!(text.contains("issued rwts: total=8192,8192"), "{text}");
    let after_fio = sites.vs(Site::A);
    assert_eq!(after_fio["state"], "InSync", "{after_fio}");
    assert!(after_fio["updates_mirrored"].as_u64().unwrap() >= 8192, "{after_fio}");
    sites.assert_identical("after fio randwrite");

    // fio's verify pass again, at B, reading the mirrored copy (read-only).
    let cwd = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .current_dir(cwd.path())
        .args(["90", "fio", "--name", "repl", "--ioengine=nbd", &format!("--uri={}", sites.uri(Site::B))])
        .args(["--bs=4k", "--iodepth=32", "--verify=crc32c", "--verify_only", "--rw=randwrite", "--size=32M"])
        .args(["--verify_fatal=1", "--verify_state_save=0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !text.contains("verify:") && text.contains("read: IOPS") && text.contains("(32.0MiB/"),
        "fio verify at B:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // qemu-io patterns, then read back at both sites.
    qemu_io_ok(&sites.uri(Site::A), false, WRITES);
    qemu_io_ok(&sites.uri(Site::A), true, READS);
    qemu_io_ok(&sites.uri(Site::B), true, READS);
    sites.assert_identical("after qemu-io writes, zeroes and discards");
    let a = sites.vs(Site::A);
    assert_eq!(a["state"], "InSync", "{a}");
    assert_eq!(a["dirty_bytes"], 0, "{a}");

    // B refuses host writes: read-only flag, EPERM from the server, and qemu-io cannot write.
    let (mut s, size, flags) = {
        let mut s = raw::connect(&sites.gw(Site::B).addr()).unwrap();
        let (size, flags) = raw::handshake(&mut s, VOLUME).unwrap();
        (s, size, flags)
    };
    assert_eq!(size, 64 * MIB);
    assert_ne!(flags & 2, 0, "B's export does not advertise NBD_FLAG_READ_ONLY (flags {flags:#x})");
    let before = sites.image(Site::B);
    assert_eq!(raw::write(&mut s, 1, 0, &[0x5a; 4096]).unwrap(), raw::EPERM, "B accepted a host write");
    let (_, a_flags) = {
        let mut s = raw::connect(&sites.gw(Site::A).addr()).unwrap();
        raw::handshake(&mut s, VOLUME).unwrap()
    };
    assert_eq!(a_flags & 2, 0, "A's export is read-only (flags {a_flags:#x})");
    let (ok, text) = qemu_io(&sites.uri(Site::B), false, &["write -P 0x5a 0 4k"]);
    eprintln!("qemu-io write at B: {text}");
    let lower = text.to_lowercase();
    assert!(
        !ok || lower.contains("permission denied") || lower.contains("read-only") || lower.contains("not permitted"),
        "qemu-io wrote to B:\n{text}"
    );
    assert!(
        lower.contains("permission denied") || lower.contains("read-only") || lower.contains("not permitted"),
        "qemu-io's refusal at B does not say why:\n{text}"
    );
    assert!(before == sites.image(Site::B), "B's image changed after refused host writes");
    assert!(sites.alive(Site::A) && sites.alive(Site::B), "a daemon died:\n{}", sites.logs(40));
    eprintln!("replication_basic: {:?}", t0.elapsed());
}
