//! `nbdcopy --connections=4` (libnbd, multi-connection, many requests in flight, zero
//! detection) copies a 64 MiB file with random data and a zero run into a file export and a
//! memory export, over data already there, and back out; both copies match the source byte
//! for byte.

use std::process::Command;

use gateway_tests::{assert_same, pattern, require_tool, run, Gateway};

const SIZE: usize = 64 << 20;

fn copy(from: &str, to: &str) {
    run(Command::new("timeout").args(["120", "nbdcopy", "--connections=4", "--requests=16", "--flush", from, to]))
        .unwrap();
}

#[test]
fn nbdcopy_round_trip_file_and_memory() {
    require_tool("nbdcopy");
    let cfg =
        "[[export]]\nname = \"disk\"\nsize = \"64MiB\"\n[export.backend]\ntype = \"file\"\npath = \"disk.img\"\n\n\
               [[export]]\nname = \"mem\"\nsize = \"64MiB\"\n[export.backend]\ntype = \"memory\"\n";
    let g = Gateway::start(cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.img");
    let junk = dir.path().join("junk.img");
    let mut data = pattern(1234, SIZE);
    // Zero runs (aligned and not) that nbdcopy sends as write-zeroes, or skips.
    data[8 << 20..12 << 20].fill(0);
    data[(40 << 20) + 100..(41 << 20) + 7].fill(0);
    std::fs::write(&src, &data).unwrap();
    std::fs::write(&junk, vec![0x5au8; SIZE]).unwrap();
    let src = src.to_str().unwrap();
    for export in ["disk", "mem"] {
        let uri = g.uri(export);
        // First fill the export with non-zero junk, so that a zero run in the source that
        // was skipped instead of written would show.
        copy(junk.to_str().unwrap(), &uri);
        copy(src, &uri);
        let out = dir.path().join(format!("{export}.out"));
        copy(&uri, out.to_str().unwrap());
        assert_same(&format!("{export}: copied out"), &std::fs::read(&out).unwrap(), &data);
    }
    // And export to export: disk -> mem over the network, both ways through the gateway.
    copy(&g.uri("disk"), &g.uri("mem"));
    let out = dir.path().join("mem2.out");
    copy(&g.uri("mem"), out.to_str().unwrap());
    assert_same("disk -> mem -> file", &std::fs::read(&out).unwrap(), &data);
}
