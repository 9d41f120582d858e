//! fio's NBD engine (libnbd, 32 requests in flight) writes 4 KiB blocks at random offsets
//! with crc32c verification headers and then reads every block back and verifies it; a mixed
//! random read/write job verifies too. Both must finish with `err= 0` and no verify error.

use gateway_tests::{fio_verify, require_tool, Gateway};

/// (reads, writes) from fio's `issued rwts: total=R,W,...` line.
fn issued(text: &str) -> (u64, u64) {
    let line = text.split("issued rwts: total=").nth(1).unwrap_or_else(|| panic!("no issued line:\n{text}"));
    let mut n = line.split([',', ' ']).map(|x| x.parse::<u64>().unwrap_or(u64::MAX));
    (n.next().unwrap_or(0), n.next().unwrap_or(0))
}

#[test]
fn fio_randwrite_verify() {
    require_tool("fio");
    let cfg = "[[export]]\nname = \"disk\"\nsize = \"64MiB\"\n[export.backend]\ntype = \"file\"\npath = \"disk.img\"\n";
    let g = Gateway::start(cfg).unwrap();
    let text = fio_verify(&g.uri("disk"), "randwrite", &["--rw=randwrite", "--size=64M"]);
    // Every 4 KiB block of the 64 MiB was written once and read back once by the verify pass.
    assert_eq!(issued(&text), (16384, 16384), "{text}");
}

#[test]
fn fio_randrw_verify_memory() {
    require_tool("fio");
    let cfg = "[[export]]\nname = \"mem\"\nsize = \"64MiB\"\n[export.backend]\ntype = \"memory\"\n";
    let g = Gateway::start(cfg).unwrap();
    let text = fio_verify(&g.uri("mem"), "randrw", &["--rw=randrw", "--rwmixread=50", "--size=32M"]);
    // Reads are the mixed reads plus one verify read per written block.
    let (reads, writes) = issued(&text);
    assert!(writes > 1000 && reads > writes, "issued {reads} reads, {writes} writes:\n{text}");
}
