//! QEMU's NBD client against the gateway: `qemu-io` pattern writes (plain, FUA, write-zeroes
//! with and without unmap, discard) read back with the right patterns on the file and memory
//! backends; `nbdinfo --map` then shows discarded and unmapped-zero ranges as `hole,zero` and
//! written ones as allocated data; `qemu-img convert -n` copies a local image into an export
//! and `qemu-img compare` finds them identical, and finds the one byte changed afterwards.

use std::process::Command;

use gateway_tests::{pattern, qemu_io_ok, require_tool, run, Gateway};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// (offset, length, type) from `nbdinfo --map --json`.
fn map(uri: &str) -> Vec<(u64, u64, u64)> {
    let out = run(Command::new("nbdinfo").args(["--map", "--json", uri])).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap(), e["type"].as_u64().unwrap()))
        .collect()
}

/// The set of extent types covering `off..off + len`.
fn types_in(m: &[(u64, u64, u64)], off: u64, len: u64) -> Vec<u64> {
    let mut t: Vec<u64> = m.iter().filter(|&&(o, l, _)| o < off + len && off < o + l).map(|&(_, _, ty)| ty).collect();
    t.sort();
    t.dedup();
    t
}

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
    "flush",
];

const READS: &[&str] = &[
    "read -P 0xab 0 1M",
    "read -P 0xcd 1M 1M",
    "read -P 0 2M 1M",
    "read -P 0 3M 1M",
    "read -P 0x11 5M 64k",
    "read -P 0x22 6143k 2k",
    "read -P 0 5184k 959k",
    "read -P 0 6145k 1M",
    "read -P 0 28M 4M",
];

#[test]
fn qemu_io_patterns_and_allocation_map() {
    require_tool("qemu-io");
    require_tool("nbdinfo");
    let cfg =
        "[[export]]\nname = \"disk\"\nsize = \"32MiB\"\n[export.backend]\ntype = \"file\"\npath = \"disk.img\"\n\n\
               [[export]]\nname = \"mem\"\nsize = \"32MiB\"\n[export.backend]\ntype = \"memory\"\n";
    let g = Gateway::start(cfg).unwrap();
    for export in ["disk", "mem"] {
        let uri = g.uri(export);
        let text = qemu_io_ok(&uri, false, WRITES);
        assert_eq!(text.matches("wrote ").count(), 9, "{export}: {text}");
        assert_eq!(text.matches("discard ").count(), 1, "{export}: {text}");
        let text = qemu_io_ok(&uri, false, READS);
        assert_eq!(text.matches("read ").count(), READS.len(), "{export}: {text}");
        // A wrong pattern must be detected (this proves the checks above can fail).
        let out = Command::new("qemu-io").args(["-f", "raw", &uri, "-c", "read -P 0xab 1M 4k"]).output().unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(all.contains("Pattern verification failed"), "{export}: {all}");
    }

    // The file backend on this filesystem punches holes: allocation is exact per MiB.
    let m = map(&g.uri("disk"));
    assert_eq!(m.first().map(|e| e.0), Some(0), "{m:?}");
    assert_eq!(m.iter().map(|e| e.1).sum::<u64>(), 32 * MIB, "map does not cover the export: {m:?}");
    assert_eq!(types_in(&m, 0, 2 * MIB), vec![0], "written data: {m:?}");
    assert_eq!(
        types_in(&m, 2 * MIB, MIB).iter().filter(|t| *t & 1 != 0).count(),
        0,
        "zero without unmap punched a hole: {m:?}"
    );
    assert_eq!(types_in(&m, 3 * MIB, MIB), vec![3], "write -z -u: {m:?}");
    assert_eq!(types_in(&m, 4 * MIB, MIB), vec![3], "discard: {m:?}");
    assert_eq!(types_in(&m, 5 * MIB, 64 << 10), vec![0], "{m:?}");
    assert_eq!(types_in(&m, 6143 << 10, 2 << 10), vec![0], "{m:?}");
    assert_eq!(types_in(&m, 8 * MIB, 24 * MIB), vec![3], "never written: {m:?}");

    // The memory backend reports the same for the unmapped ranges.
    let m = map(&g.uri("mem"));
    assert_eq!(m.iter().map(|e| e.1).sum::<u64>(), 32 * MIB, "{m:?}");
    assert_eq!(types_in(&m, 0, 2 * MIB), vec![0], "{m:?}");
    assert_eq!(types_in(&m, 8 * MIB, 24 * MIB), vec![3], "{m:?}");
}

#[test]
fn qemu_img_convert_and_compare() {
    require_tool("qemu-img");
    require_tool("qemu-io");
    let size = 16 * MIB as usize;
    let cfg = "[[export]]\nname = \"img\"\nsize = \"16MiB\"\n[export.backend]\ntype = \"file\"\npath = \"img.img\"\n";
    let g = Gateway::start(cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.raw");
    let mut data = pattern(7, size);
    // A zero run in the middle, so qemu-img sends write-zeroes too.
    data[4 * MIB as usize..6 * MIB as usize].fill(0);
    std::fs::write(&local, &data).unwrap();
    // Fill the export with something else first, so zeroes must really be written.
    qemu_io_ok(&g.uri("img"), false, &["write -P 0x5a 0 16M"]);

    run(Command::new("qemu-img").args(["convert", "-n", "-f", "raw", "-O", "raw"]).arg(&local).arg(g.uri("img")))
        .unwrap();
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&local)
        .arg(g.uri("img"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "qemu-img compare: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Images are identical"), "{text}");

    // Change one byte through the export: compare must point at it.
    let at = 9 * MIB + 12345;
    let b = data[at as usize] ^ 0xff;
    qemu_io_ok(&g.uri("img"), false, &[&format!("write -P {b:#x} {at} 1")]);
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(&local)
        .arg(g.uri("img"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "qemu-img compare: {text}{}", String::from_utf8_lossy(&out.stderr));
    // qemu-img compares in 512-byte sectors and names the sector's first byte.
    assert!(text.contains(&format!("Content mismatch at offset {}!", at / 512 * 512)), "{text}");
}
