//! `nbdinfo` (libnbd) sees exactly what the gateway advertises: every export flag, the
//! block size constraints, the `base:allocation` context and the description, for a memory,
//! a file and a read-only export; `--list` shows every export; an unknown export name is
//! refused with NBD_REP_ERR_UNKNOWN (libnbd: ENOENT) naming the export.

use std::process::Command;

use gateway_tests::raw;
use gateway_tests::{require_tool, run, Gateway};
use serde_json::Value;
use std::io::Write;

const CONFIG: &str = r#"
[[export]]
name = "mem"
description = "scratch in RAM"
size = "64MiB"
[export.backend]
type = "memory"

[[export]]
name = "disk"
description = "a sparse file"
size = "32MiB"
[export.backend]
type = "file"
path = "disk.img"

[[export]]
name = "golden"
description = "read-only image"
read_only = true
[export.backend]
type = "file"
path = "golden.img"
"#;

fn start() -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(dir.path().join("golden.img")).unwrap();
    f.set_len(16 << 20).unwrap();
    let g = Gateway::start_in(dir.path(), CONFIG).unwrap();
    (dir, g)
}

fn info(uri: &str) -> Value {
    let out = run(Command::new("nbdinfo").args(["--json", "--no-content", uri])).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["protocol"], "newstyle-fixed", "{v}");
    assert_eq!(v["structured"], true, "{v}");
    let exports = v["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 1, "{v}");
    exports[0].clone()
}

fn check(e: &Value, name: &str, description: &str, size: u64, writable: bool) {
    assert_eq!(e["export-name"], name, "{e}");
    assert_eq!(e["description"], description, "{e}");
    assert_eq!(e["export-size"], size, "{e}");
    assert_eq!(e["is_read_only"], !writable, "{e}");
    assert_eq!(e["is_rotational"], false, "{e}");
    for always in ["can_flush", "can_fua", "can_df", "can_multi_conn", "can_cache"] {
        assert_eq!(e[always], true, "{name}: {always}: {e}");
    }
    for rw in ["can_trim", "can_zero", "can_fast_zero"] {
        assert_eq!(e[rw], writable, "{name}: {rw}: {e}");
    }
    assert_eq!(e["block_size_minimum"], 1, "{e}");
    assert_eq!(e["block_size_preferred"], 4096, "{e}");
    assert_eq!(e["block_size_maximum"], 33_554_432, "{e}");
    let contexts: Vec<&str> = e["contexts"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(contexts, vec!["base:allocation"], "{e}");
}

#[test]
fn nbdinfo_reports_every_flag() {
    require_tool("nbdinfo");
    let (_dir, g) = start();
    check(&info(&g.uri("mem")), "mem", "scratch in RAM", 64 << 20, true);
    check(&info(&g.uri("disk")), "disk", "a sparse file", 32 << 20, true);
    check(&info(&g.uri("golden")), "golden", "read-only image", 16 << 20, false);
    // The default export (empty name) is the first configured one.
    let e = info(&format!("nbd://127.0.0.1:{}", g.port));
    assert_eq!(e["export-size"], 64u64 << 20, "{e}");
    assert_eq!(e["description"], "scratch in RAM", "{e}");
}

#[test]
fn nbdinfo_list_shows_every_export() {
    require_tool("nbdinfo");
    let (_dir, g) = start();
    let out = run(Command::new("nbdinfo").args(["--list", "--json", "--no-content"]).arg(g.uri(""))).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<(String, String, u64)> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().unwrap_or("?").to_owned(),
                e["description"].as_str().unwrap_or("").to_owned(),
                e["export-size"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    let want = [
        ("mem", "scratch in RAM", 64u64 << 20),
        ("disk", "a sparse file", 32 << 20),
        ("golden", "read-only image", 16 << 20),
    ];
    let want: Vec<(String, String, u64)> = want.iter().map(|(n, d, s)| (n.to_string(), d.to_string(), *s)).collect();
    assert_eq!(got, want, "{v}");

    let text = run(Command::new("nbdinfo").args(["--list", "--no-content"]).arg(g.uri(""))).unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    for (name, desc, _) in &want {
        assert!(text.contains(&format!("export=\"{name}\"")), "{text}");
        assert!(text.contains(&format!("description: {desc}")), "{text}");
    }
}

#[test]
fn unknown_export_is_refused_by_name() {
    require_tool("nbdinfo");
    let (_dir, mut g) = start();
    let out = Command::new("nbdinfo").arg(g.uri("no-such-export")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nbdinfo succeeded on an unknown export:\n{stderr}");
    assert!(stderr.contains("no-such-export"), "message does not name the export:\n{stderr}");
    // libnbd maps NBD_REP_ERR_UNKNOWN to ENOENT.
    assert!(stderr.contains("No such file or directory"), "not NBD_REP_ERR_UNKNOWN:\n{stderr}");

    // The same on the wire: NBD_OPT_GO on an unknown name gets NBD_REP_ERR_UNKNOWN with a
    // message naming it, and the option phase continues (a GO for a real export then works).
    let mut s = raw::connect(&g.addr()).unwrap();
    raw::greeting(&mut s).unwrap();
    raw::client_flags(&mut s).unwrap();
    let go = |name: &str| {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&0u16.to_be_bytes());
        raw::option(raw::OPT_GO, &d)
    };
    s.write_all(&go("no-such-export")).unwrap();
    let (opt, ty, data) = raw::option_reply(&mut s).unwrap();
    assert_eq!((opt, ty), (raw::OPT_GO, raw::REP_ERR_UNKNOWN));
    assert!(String::from_utf8_lossy(&data).contains("no-such-export"), "{:?}", String::from_utf8_lossy(&data));
    s.write_all(&go("disk")).unwrap();
    let mut types = Vec::new();
    for _ in 0..8 {
        let (opt, ty, data) = raw::option_reply(&mut s).unwrap();
        assert_eq!(opt, raw::OPT_GO);
        if ty == raw::REP_INFO && u16::from_be_bytes([data[0], data[1]]) == 0 {
            assert_eq!(u64::from_be_bytes(data[2..10].try_into().unwrap()), 32 << 20);
        }
        types.push(ty);
        if ty == raw::REP_ACK {
            break;
        }
    }
    assert_eq!(types.last(), Some(&raw::REP_ACK), "{types:?}");
    assert!(types.contains(&raw::REP_INFO), "{types:?}");
    assert!(g.alive());
}
