//! `gateway config check FILE` accepts the shipped configs (exit 0, `FILE: ok (N exports)`)
//! and refuses broken ones with exit 1 and an error of the form `FILE:LINE:COL: key ...`
//! pointing at the exact line and column: an unknown key (in `[server]`, in `[[export]]` and
//! in `[export.backend]`), a bad size unit, a duplicate export name, and a memory export
//! without a size.

use std::path::Path;
use std::process::Command;

use gateway_tests::{gateway_bin, workspace_root};

fn check(path: &Path) -> (bool, String, String) {
    let out = Command::new(gateway_bin()).args(["config", "check"]).arg(path).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Check `text` written to a file: exit 1, and stderr is `gateway: error: FILE:LINE:COL: key
/// `KEY`...`.
fn refused(name: &str, text: &str, line: usize, col: usize, key: &str, rest: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let out = Command::new(gateway_bin()).args(["config", "check"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{name}: stderr:\n{stderr}");
    let want = format!("gateway: error: {}:{line}:{col}: key `{key}`: {rest}", path.display());
    assert!(stderr.starts_with(&want), "{name}:\n got: {stderr}\nwant: {want}...");
    assert!(out.stdout.is_empty(), "{name}: printed to stdout: {}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn shipped_configs_pass() {
    for (file, n) in [("config/default.toml", "1 export"), ("config/example.toml", "4 exports")] {
        let path = workspace_root().join(file);
        let (ok, stdout, stderr) = check(&path);
        assert!(ok, "{file}: {stderr}");
        assert_eq!(stdout.trim(), format!("{}: ok ({n})", path.display()), "{file}");
    }
}

#[test]
fn unknown_keys() {
    refused(
        "export.toml",
        "[server]\nlisten = [\"127.0.0.1:10809\"]\n\n[[export]]\nname = \"a\"\nsize = \"1GiB\"\nsizze = 3\n[export.backend]\ntype = \"memory\"\n",
        7,
        1,
        "sizze",
        "unknown field `sizze`",
    );
    refused(
        "server.toml",
        "# comment\n[server]\nbogus = 1\n[[export]]\nname = \"a\"\nsize = \"1M\"\n[export.backend]\ntype = \"memory\"\n",
        3,
        1,
        "bogus",
        "unknown field `bogus`",
    );
}

#[test]
fn unknown_backend_key() {
    refused(
        "backend.toml",
        "[[export]]\nname = \"a\"\nsize = \"1GiB\"\n[export.backend]\ntype = \"file\"\npath = \"a.img\"\nmode = \"rw\"\n",
        7,
        1,
        "mode",
        "unknown field `mode`",
    );
}

#[test]
fn bad_size_unit() {
    refused(
        "unit.toml",
        "[[export]]\nname = \"a\"\n\nsize = \"10 GB\"\n[export.backend]\ntype = \"memory\"\n",
        4,
        8,
        "export[0].size",
        "unknown size unit `GB`",
    );
    refused(
        "unit2.toml",
        "[[export]]\nname = \"a\"\nsize = \"1M\"\n[export.backend]\ntype = \"memory\"\n[[export]]\nname = \"b\"\nsize   =   \"3q\"\n[export.backend]\ntype = \"memory\"\n",
        8,
        12,
        "export[1].size",
        "unknown size unit `q`",
    );
}

#[test]
fn duplicate_export() {
    let one = |n: &str| format!("[[export]]\nname = \"{n}\"\nsize = \"1M\"\n[export.backend]\ntype = \"memory\"\n\n");
    // The third export (lines 13..) repeats the first one's name on its line 14, column 10.
    let text = format!(
        "{}{}[[export]]\n  name = \"a\"\nsize = \"1M\"\n[export.backend]\ntype = \"memory\"\n",
        one("a"),
        one("b")
    );
    refused("dup.toml", &text, 14, 10, "export[2].name", "export `a` is defined twice");
}

#[test]
fn memory_export_without_size() {
    refused(
        "nosize.toml",
        "[[export]]\nname = \"a\"\nsize = \"1M\"\n[export.backend]\ntype = \"memory\"\n\n[[export]]\nname = \"m\"\n[export.backend]\ntype = \"memory\"\n",
        9,
        1,
        "export[1].size",
        "a memory backend needs a size",
    );
}

#[test]
fn unreadable_file_is_refused() {
    let (ok, _, stderr) = check(Path::new("/nonexistent/gateway.toml"));
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/gateway.toml") && stderr.contains("No such file"), "{stderr}");
}
