//! The daemon starts on an ephemeral port, `nbdinfo` sees the export, SIGTERM exits 0.

use gateway_tests::{one_export, require_tool, run, Gateway};
use std::process::Command;

#[test]
fn serves_and_stops_cleanly() {
    require_tool("nbdinfo");
    let mut g = Gateway::start(&one_export("vol", "64MiB", "type = \"memory\"")).unwrap();
    let out = run(Command::new("nbdinfo").arg("--size").arg(g.uri("vol"))).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), (64u64 << 20).to_string());
    let status = g.stop().unwrap();
    assert!(status.success(), "exit status {status}; log:\n{}", g.log());
    assert!(g.log().contains("all exports flushed"), "{}", g.log());
}
