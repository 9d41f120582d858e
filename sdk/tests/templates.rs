//! The plugin templates of `sdk/templates/` (shown in `sdk/README.md`) build on their own and
//! work in the real gateway:
//!
//! * each template is copied into a temporary directory outside the workspace, its
//!   `SDK_PATH` placeholder replaced by this sdk's absolute path, and built with `cargo build
//!   --offline` into a shared target directory (`target/template-build`, so the sdk's
//!   dependencies compile once for all three), bounded by a timeout;
//! * the backend template is served by the daemon and written and read by `qemu-io`;
//! * the filter template is stacked over a memory export with `[[export.filter]]`, and its
//!   write limit is observed through `qemu-io`;
//! * the policy template is opened with the host's `open_policy`, fed replication errors, and
//!   goes offline on the third only; the daemon also loads it by name from `plugin_dir`;
//! * the README shows exactly the template sources, and the templates are not workspace members.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gateway::plugin::{load, open_policy};
use gateway_sdk::{Action, Event};

const TEMPLATES: [&str; 3] = ["backend", "filter", "policy"];
/// Upper bound on building all three (the first build compiles the sdk's dependencies).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The built templates: `libtemplate_<kind>.so` copied into a directory of their own.
struct Built {
    _dir: tempfile::TempDir,
    libs: Vec<(&'static str, PathBuf)>,
}

impl Built {
    fn lib(&self, kind: &str) -> &Path {
        &self.libs.iter().find(|(k, _)| *k == kind).expect("built").1
    }
}

fn built() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    match BUILT.get_or_init(build_all) {
        Ok(b) => b,
        Err(e) => panic!("building the templates failed:\n{e}"),
    }
}

/// Run `cargo <args> [--offline]` in `dir` with the shared target directory, bounded by
/// `deadline`; returns stdout.
fn cargo(dir: &Path, args: &[&str], offline: bool, deadline: Instant) -> Result<String, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let left = deadline.saturating_duration_since(Instant::now()).as_secs().max(1);
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "10", &left.to_string(), &cargo]).args(args).arg("--quiet");
    if offline {
        cmd.arg("--offline");
    }
    let target = common::workspace_root().join("target/template-build");
    cmd.current_dir(dir).env("CARGO_TARGET_DIR", target).env_remove("CARGO_BUILD_TARGET");
    let out = cmd.output().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(format!(
        "{cmd:?} in {} exited with {}{}\n{}{}",
        dir.display(),
        out.status,
        if out.status.code() == Some(124) { " (timed out)" } else { "" },
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// `cargo <args> --offline` (the dependencies are in the local registry cache), falling back
/// to a networked run if that fails.
fn cargo_offline_first(dir: &Path, args: &[&str], deadline: Instant) -> Result<String, String> {
    cargo(dir, args, true, deadline).or_else(|offline| {
        cargo(dir, args, false, deadline).map_err(|online| format!("offline:\n{offline}\nonline:\n{online}"))
    })
}

/// Copy template `kind` into `dest` as a crate of its own: `SDK_PATH` replaced by this sdk's
/// absolute path, and the workspace's lock file, which pins the dependency versions the
/// gateway builds with (cargo drops what the template does not use), so --offline finds them.
fn copy_template(kind: &str, dest: &Path) -> Result<(), String> {
    let sdk = common::sdk_dir();
    let src = sdk.join("templates").join(kind);
    std::fs::create_dir_all(dest.join("src")).map_err(|e| e.to_string())?;
    let manifest = std::fs::read_to_string(src.join("Cargo.toml")).map_err(|e| e.to_string())?;
    if !manifest.contains("path = \"SDK_PATH\"") {
        return Err(format!("templates/{kind}/Cargo.toml has no SDK_PATH placeholder"));
    }
    let manifest = manifest.replace("SDK_PATH", sdk.to_str().ok_or("non-UTF-8 sdk path")?);
    std::fs::write(dest.join("Cargo.toml"), manifest).map_err(|e| e.to_string())?;
    std::fs::copy(src.join("src/lib.rs"), dest.join("src/lib.rs")).map_err(|e| e.to_string())?;
    std::fs::copy(common::workspace_root().join("Cargo.lock"), dest.join("Cargo.lock")).map_err(|e| e.to_string())?;
    Ok(())
}

/// A temporary directory outside the workspace.
fn outside_tempdir() -> Result<tempfile::TempDir, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    if dir.path().starts_with(common::workspace_root()) {
        return Err(format!("temporary directory {} is inside the workspace", dir.path().display()));
    }
    Ok(dir)
}

fn build_all() -> Result<Built, String> {
    let started = Instant::now();
    let deadline = started + BUILD_TIMEOUT;
    let target = common::workspace_root().join("target/template-build");
    let dir = outside_tempdir()?;
    let mut libs = Vec::new();
    for kind in TEMPLATES {
        let crate_dir = dir.path().join(kind);
        copy_template(kind, &crate_dir)?;
        cargo_offline_first(&crate_dir, &["build"], deadline)?;
        let so = format!("libtemplate_{kind}.so");
        let lib = dir.path().join(&so);
        std::fs::copy(target.join("debug").join(&so), &lib).map_err(|e| format!("{so}: {e}"))?;
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
        libs.push((kind, lib));
    }
    eprintln!("templates built in {:.1?}", started.elapsed());
    Ok(Built { _dir: dir, libs })
}

#[test]
fn backend_template_served_by_the_daemon() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "[[export]]\nname = \"ram\"\n[export.backend]\ntype = \"plugin\"\nplugin = \"{}\"\n\
         [export.backend.config]\nsize = {}\n",
        b.lib("backend").display(),
        32 << 20
    );
    let d = common::Daemon::start(tmp.path(), &config);
    let uri = d.uri("ram");
    common::qemu_io_ok(
        &uri,
        &["write -P 0x5a 0 4M", "write -z 1M 1M", "write -f -P 0xa5 3M 512k", "write -P 0x33 31M 1M", "flush"],
    );
    common::qemu_io_ok(
        &uri,
        &["read -P 0x5a 0 1M", "read -P 0 1M 1M", "read -P 0x5a 2M 1M", "read -P 0xa5 3M 512k", "read -P 0x33 31M 1M"],
    );
    let log = d.log();
    assert!(log.contains("ramdisk"), "the daemon did not log the plugin:\n{log}");
}

#[test]
fn filter_template_stacked_over_a_memory_export() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "[[export]]\nname = \"limited\"\nsize = \"16MiB\"\n[export.backend]\ntype = \"memory\"\n\
         [[export.filter]]\nplugin = \"{}\"\n[export.filter.config]\nmax_writes = 2\n\n\
         [[export]]\nname = \"free\"\nsize = \"16MiB\"\n[export.backend]\ntype = \"memory\"\n",
        b.lib("filter").display()
    );
    let d = common::Daemon::start(tmp.path(), &config);
    let uri = d.uri("limited");
    common::qemu_io_ok(&uri, &["write -P 0x11 0 64k", "write -P 0x22 64k 64k"]);
    // The third write is refused by the filter: EPERM reaches the client.
    let (_, out) = common::qemu_io(&uri, &["write -P 0x33 128k 64k"]);
    assert!(out.contains("write failed") && out.contains("Operation not permitted"), "third write:\n{out}");
    // Reads pass through: the first two writes landed, the third did not.
    common::qemu_io_ok(&uri, &["read -P 0x11 0 64k", "read -P 0x22 64k 64k", "read -P 0 128k 64k"]);
    // The export without the filter is unaffected.
    let free = d.uri("free");
    common::qemu_io_ok(&free, &["write -P 1 0 4k", "write -P 2 4k 4k", "write -P 3 8k 4k", "read -P 3 8k 4k"]);
    let log = d.log();
    assert!(log.contains("refusing writes from now on"), "the filter's host log line is missing:\n{log}");
}

fn replication_error(volume_set: &str, code: i32) -> Event {
    Event::ReplicationError { volume_set: volume_set.into(), code, message: "link down".into() }
}

fn offline(actions: &[Action]) -> Vec<&str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::GoOffline { target, .. } => Some(target.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn policy_template_goes_offline_on_the_third_error() {
    let b = built();
    let path = b.lib("policy").to_str().unwrap().to_owned();
    let plugin = load(&path, Path::new("/nonexistent")).unwrap();
    assert_eq!(plugin.name(), "offline-after-errors");
    let mut policy = open_policy(&plugin, &serde_json::json!({})).unwrap();

    assert_eq!(policy.on_event(&Event::Started { node: "n1".into(), role: "server".into() }).unwrap(), vec![]);
    for i in 1..=2 {
        let actions = policy.on_event(&replication_error("vs1", 5)).unwrap();
        assert!(offline(&actions).is_empty(), "error {i}: went offline early: {actions:?}");
        assert!(matches!(&actions[..], [Action::Log { level, .. }] if level == "warn"), "error {i}: {actions:?}");
    }
    // Another volume set counts on its own.
    let other = policy.on_event(&replication_error("vs2", 5)).unwrap();
    assert!(offline(&other).is_empty(), "{other:?}");
    let third = policy.on_event(&replication_error("vs1", 5)).unwrap();
    assert_eq!(offline(&third), vec!["vs1"], "{third:?}");
    assert!(third.iter().any(|a| matches!(a, Action::Log { message, .. } if message.contains("3/3"))), "{third:?}");
    // Offline once: a fourth error only logs.
    let fourth = policy.on_event(&replication_error("vs1", 5)).unwrap();
    assert!(offline(&fourth).is_empty(), "{fourth:?}");
    // Events this SDK does not know are ignored, not errors.
    let unknown = Event::Unknown(serde_json::json!({ "type": "from_the_future", "x": 1 }));
    assert_eq!(policy.on_event(&unknown).unwrap(), vec![]);

    // Its config is checked, and the refusal reaches the operator.
    let e = open_policy(&plugin, &serde_json::json!({ "max_errors": 0 })).err().unwrap().to_string();
    assert!(e.contains("`max_errors` must be a positive number"), "{e}");
    let mut one = open_policy(&plugin, &serde_json::json!({ "max_errors": 1 })).unwrap();
    assert_eq!(offline(&one.on_event(&replication_error("vs9", 1)).unwrap()), vec!["vs9"]);
}

#[test]
fn policy_template_loaded_by_name_from_plugin_dir() {
    let b = built();
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let so = plugins.join("libgw_offline-after-errors.so");
    std::fs::copy(b.lib("policy"), &so).unwrap();
    std::fs::set_permissions(&so, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = format!(
        "[server]\nplugin_dir = \"{}\"\n\n[[policy]]\nplugin = \"offline-after-errors\"\n[policy.config]\nmax_errors = 5\n\n\
         [[export]]\nname = \"m\"\nsize = \"1MiB\"\n[export.backend]\ntype = \"memory\"\n",
        plugins.display()
    );
    let d = common::Daemon::start(tmp.path(), &config);
    let log = d.log();
    assert!(log.contains("offline-after-errors") && log.contains("recovery policy"), "policy not loaded:\n{log}");
}

/// The README shows the templates exactly as they are in `sdk/templates/`.
#[test]
fn readme_shows_the_template_sources() {
    let readme = include_str!("../README.md");
    let sources = [
        ("backend/src/lib.rs", include_str!("../templates/backend/src/lib.rs")),
        ("filter/src/lib.rs", include_str!("../templates/filter/src/lib.rs")),
        ("policy/src/lib.rs", include_str!("../templates/policy/src/lib.rs")),
        ("backend/Cargo.toml", include_str!("../templates/backend/Cargo.toml")),
    ];
    for (name, text) in sources {
        let fence = if name.ends_with(".rs") { "rust" } else { "toml" };
        let block = format!("```{fence}\n{text}```\n");
        assert!(readme.contains(&block), "sdk/README.md does not show templates/{name} verbatim in a ```{fence} block");
    }
    // The other two manifests differ from the backend's only in the package name.
    for kind in ["filter", "policy"] {
        let manifest =
            std::fs::read_to_string(common::sdk_dir().join("templates").join(kind).join("Cargo.toml")).unwrap();
        let backend =
            include_str!("../templates/backend/Cargo.toml").replace("template-backend", &format!("template-{kind}"));
        assert_eq!(manifest, backend, "templates/{kind}/Cargo.toml differs from the backend's beyond the name");
    }
}

/// The README's unit-test example, appended to the backend template, passes `cargo test`.
#[test]
fn readme_unit_test_example_passes() {
    let readme = include_str!("../README.md");
    let start = readme.find("```rust\n#[cfg(test)]").expect("the README has a unit-test example") + 8;
    let example = &readme[start..start + readme[start..].find("```").unwrap()];
    let dir = outside_tempdir().unwrap();
    let crate_dir = dir.path().join("backend");
    copy_template("backend", &crate_dir).unwrap();
    let lib = crate_dir.join("src/lib.rs");
    let source = std::fs::read_to_string(&lib).unwrap();
    std::fs::write(&lib, format!("{source}\n{example}")).unwrap();
    let out = cargo_offline_first(&crate_dir, &["test"], Instant::now() + BUILD_TIMEOUT)
        .unwrap_or_else(|e| panic!("cargo test of the README example failed:\n{e}"));
    assert!(out.contains("test result: ok. 1 passed"), "{out}");
}

/// Every configuration example in the README that names an export is a valid config.
#[test]
fn readme_config_examples_parse() {
    let readme = include_str!("../README.md");
    let mut checked = 0;
    for block in readme.split("```toml\n").skip(1) {
        let text = &block[..block.find("```").expect("closed fence")];
        if !text.contains("[[export]]") {
            continue;
        }
        if let Err(e) = gateway::config::Config::parse(text, "README example") {
            panic!("README example does not parse: {e}\n{text}");
        }
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} config examples found");
}

/// The templates build on their own: no workspace member lives under sdk/templates.
#[test]
fn templates_are_not_workspace_members() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = common::run(
        Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps", "--offline", "--manifest-path"])
            .arg(common::workspace_root().join("Cargo.toml")),
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let templates = common::sdk_dir().join("templates");
    for p in meta["packages"].as_array().unwrap() {
        let manifest = p["manifest_path"].as_str().unwrap();
        assert!(!Path::new(manifest).starts_with(&templates), "{manifest} is a workspace member");
    }
    for kind in TEMPLATES {
        let manifest = std::fs::read_to_string(templates.join(kind).join("Cargo.toml")).unwrap();
        assert!(manifest.contains("\n[workspace]\n"), "templates/{kind}/Cargo.toml must declare its own [workspace]");
        assert!(manifest.contains("crate-type = [\"cdylib\"]"), "templates/{kind} must build a cdylib");
    }
}
