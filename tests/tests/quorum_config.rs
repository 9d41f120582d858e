//! A controller's configuration refused up front, before it takes part in any decision.
//!
//! * `policy_plugin_missing_or_wrong_kind`: `policy = "no-such-policy"` makes `gateway serve`
//!   exit non-zero at once with an error naming `no-such-policy` (no plugin of that name);
//!   `policy = "memory"` (a backend plugin) exits non-zero saying it is a backend plugin where a
//!   recovery policy plugin belongs. The same config with `policy = "vtc-quorum"` starts.
//! * `config_check_names_the_controller_key`: `gateway config check` accepts a good controller
//!   config (`FILE: ok`) and refuses three servers, a duplicate peer id, `threshold = "150%"` and
//!   an unknown key `controler_id` with exit 1 and `FILE:LINE:COL: key `KEY`: ...` at the exact
//!   line and column of the offending key.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use gateway_tests::gateway_bin;
use gateway_tests::quorum::Daemon;
use gateway_tests::sites::free_port;

/// A controller config (c1 of two, servers A and B) with `extra` lines at the end of
/// `[controller]` (line 6 onwards).
fn controller_config(dir: &Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\ndata_dir = \"{}\"\n\n\
         [controller]\nid = \"c1\"\nlisten = \"127.0.0.1:{}\"\nvolume_set = \"vs1\"\n{extra}\n\
         [[controller.peer]]\nid = \"c2\"\naddress = \"127.0.0.1:{}\"\n\n\
         [[controller.server]]\nname = \"A\"\ncontrol = \"127.0.0.1:{}\"\n\n\
         [[controller.server]]\nname = \"B\"\ncontrol = \"127.0.0.1:{}\"\n",
        free_port(),
        dir.display(),
        free_port(),
        free_port(),
        free_port(),
        free_port()
    )
}

/// `gateway serve` with `config`, bounded at 20 s.
fn serve(dir: &Path, config: &str) -> Result<Output> {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, config)?;
    Command::new("timeout")
        .args(["-k", "5", "20"])
        .arg(gateway_bin())
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir)
        .output()
        .context("running gateway serve")
}

#[test]
fn policy_plugin_missing_or_wrong_kind() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    for (policy, wants) in [
        ("no-such-policy", &["policy `no-such-policy`", "no plugin named `no-such-policy`"][..]),
        ("memory", &["policy `memory`", "is a backend plugin", "recovery policy plugin"][..]),
    ] {
        let dir = tmp.path().join(policy);
        std::fs::create_dir_all(&dir)?;
        let started = Instant::now();
        let out = serve(&dir, &controller_config(&dir, &format!("policy = \"{policy}\"\n")))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && out.status.code() != Some(124) && out.status.code() != Some(137),
            "a controller with policy `{policy}` exited with {} after {:?} (expected a refusal at start)\nstderr:\n{stderr}",
            out.status,
            started.elapsed()
        );
        let error = stderr.lines().find(|l| l.starts_with("gateway: error:")).unwrap_or_default();
        for want in wants {
            ensure!(
                error.contains(want),
                "policy `{policy}`: the error does not say `{want}`: {error:?}\nstderr:\n{stderr}"
            );
        }
    }

    // The same config with the real policy starts.
    let dir = tmp.path().join("vtc-quorum");
    let mut d = Daemon::new("controller c1", &dir, &controller_config(&dir, "policy = \"vtc-quorum\"\n"))?;
    d.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.run_log().contains("quorum controller listening") {
        ensure!(d.alive(), "the controller with policy `vtc-quorum` exited: {:?}\n{}", d.exit_status(), d.run_log());
        ensure!(Instant::now() < deadline, "the controller with policy `vtc-quorum` did not start\n{}", d.run_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let st = d.stop()?;
    ensure!(st.success(), "the controller exited with {st} after SIGTERM\n{}", d.run_log());
    Ok(())
}

/// The good config of [`config_check_names_the_controller_key`] (line numbers matter).
const GOOD: &str = r#"[controller]
id = "c1"
listen = "127.0.0.1:7300"
volume_set = "vs1"

[[controller.peer]]
id = "c2"
address = "127.0.0.1:7310"

[[controller.server]]
name = "A"
control = "127.0.0.1:7001"

[[controller.server]]
name = "B"
control = "127.0.0.1:7101"
"#;

#[test]
fn config_check_names_the_controller_key() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let check = |name: &str, text: &str| -> Result<(Output, String)> {
        let path = tmp.path().join(name);
        std::fs::write(&path, text)?;
        let out = Command::new(gateway_bin()).args(["config", "check"]).arg(&path).output()?;
        Ok((out, path.display().to_string()))
    };

    let (out, path) = check("good.toml", GOOD)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim() == format!("{path}: ok (0 exports)"),
        "the good controller config: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    let three = format!("{GOOD}\n[[controller.server]]\nname = \"C\"\ncontrol = \"127.0.0.1:7201\"\n");
    let dup = format!("{GOOD}\n[[controller.peer]]\nid = \"c2\"\naddress = \"127.0.0.1:7320\"\n");
    let threshold = GOOD.replace("volume_set = \"vs1\"\n", "volume_set = \"vs1\"\nthreshold = \"150%\"\n");
    let unknown = GOOD.replace("volume_set = \"vs1\"\n", "volume_set = \"vs1\"\ncontroler_id = \"c1\"\n");
    let cases = [
        ("three-servers.toml", three, 10, 1, "controller.server", "a quorum pair has exactly two servers, found 3"),
        ("duplicate-peer.toml", dup, 19, 6, "controller.peer[1].id", "duplicate controller id `c2`"),
        (
            "threshold.toml",
            threshold,
            5,
            13,
            "controller.threshold",
            "expected a count (e.g. 2) or a percentage (e.g. \"50%\")",
        ),
        ("unknown-key.toml", unknown, 5, 1, "controler_id", "unknown field `controler_id`"),
    ];
    for (name, text, line, col, key, rest) in cases {
        let (out, path) = check(name, &text)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.code() == Some(1), "{name}: exit {} (expected 1)\nstderr: {stderr}", out.status);
        let want = format!("gateway: error: {path}:{line}:{col}: key `{key}`: {rest}");
        ensure!(stderr.starts_with(&want), "{name}:\n got: {stderr}\nwant: {want}...");
        ensure!(out.stdout.is_empty(), "{name}: printed to stdout: {}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}
