//! fio's NBD engine (libnbd, 32 requests in flight) writes 4 KiB blocks at random offsets
//! with crc32c verification headers and then reads every block back and verifies it; a mixed
//! random read/write job verifies too. Both must finish with `err= 0` and no verify error.

use std::process::Command;

use gateway_tests::{require_tool, run, Gateway};

fn fio(uri: &str, name: &str, extra: &[&str]) -> String {
    // fio may leave verify state files in its working directory.
    let cwd = tempfile::tempdir().unwrap();
    let out = run(Command::new("timeout")
        .current_dir(cwd.path())
        .args(["120", "fio", "--name", name, "--ioengine=nbd"])
        .arg(format!("--uri={uri}"))
        .args(["--bs=4k", "--iodepth=32", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--runtime=60"])
        .args(["--exitall_on_error=1", "--continue_on_error=none", "--verify_state_save=0"])
        .args(extra))
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errs: Vec<&str> =
        text.split("err=").skip(1).map(|s| s.trim_start().split([' ', ':', ',']).next().unwrap_or("")).collect();
    assert!(!errs.is_empty(), "no `err=` in fio output:\n{text}");
    assert!(errs.iter().all(|e| *e == "0"), "fio reported errors {errs:?}:\n{text}");
    assert!(!text.contains("verify:") && !text.contains("bad magic"), "verify failure:\n{text}");
    text
}

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
    let text = fio(&g.uri("disk"), "randwrite", &["--rw=randwrite", "--size=64M"]);
    // Every 4 KiB block of the 64 MiB was written once and read back once by the verify pass.
    assert_eq!(issued(&text), (16384, 16384), "{text}");
}

#[test]
fn fio_randrw_verify_memory() {
    require_tool("fio");
    let cfg = "[[export]]\nname = \"mem\"\nsize = \"64MiB\"\n[export.backend]\ntype = \"memory\"\n";
    let g = Gateway::start(cfg).unwrap();
    let text = fio(&g.uri("mem"), "randrw", &["--rw=randrw", "--rwmixread=50", "--size=32M"]);
    // Reads are the mixed reads plus one verify read per written block.
    let (reads, writes) = issued(&text);
    assert!(writes > 1000 && reads > writes, "issued {reads} reads, {writes} writes:\n{text}");
}
