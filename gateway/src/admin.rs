//! The admin interface: a unix socket (owner-only, mode 0600) taking one JSON request per
//! line and answering one JSON response per line. `gateway ctl` is its client.
//!
//! Requests: `{"command": "status"}`, `{"command": "wait-for-state", "volume_set": "vs1",
//! "state": "InSync", "timeout_ms": 60000}`, `{"command": "verify-config"}`, and the
//! replication commands that go through the recovery policy (`freeze`, `run`, `suspend`,
//! `resync`, `swap`, `failover`, `failback`, `recover`, `online`, `offline`,
//! `join-cleanup`) with `"volume_set"` and their arguments; on a quorum controller,
//! `shutdown` (`servers`, `mode`), `return` (`servers`), `quorum-bootstrap` and
//! `quorum-status`. Responses: `{"ok": true,
//! "result": ...}` or `{"ok": false, "error": "..."}`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;

use crate::quorum::controller::Controller;
use crate::replication::Engine;
use crate::server::Exports;

pub struct Admin {
    pub exports: Exports,
    pub engine: Option<Arc<Engine>>,
    pub controller: Option<Arc<Controller>>,
}

pub async fn serve(path: PathBuf, admin: Arc<Admin>, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Ok(m) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::FileTypeExt;
        anyhow::ensure!(m.file_type().is_socket(), "{} exists and is not a socket", path.display());
        std::fs::remove_file(&path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(&path).with_context(|| format!("admin socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))?;
    tracing::info!(socket = %path.display(), "admin interface ready");
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!("admin accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let admin = admin.clone();
            tokio::spawn(async move {
                if let Err(e) = session(stream, &admin).await {
                    tracing::debug!("admin connection: {e}");
                }
            });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn session(stream: UnixStream, admin: &Admin) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Value>(&line) {
            Ok(req) => handle(admin, req).await,
            Err(e) => Err(format!("request is not JSON: {e}")),
        };
        let out = match reply {
            Ok(result) => json!({"ok": true, "result": result}),
            Err(error) => json!({"ok": false, "error": error}),
        };
        w.write_all(format!("{out}\n").as_bytes()).await?;
    }
    Ok(())
}

async fn handle(admin: &Admin, req: Value) -> Result<Value, String> {
    let command = req["command"].as_str().ok_or("request has no `command`")?.to_owned();
    if command == "status" {
        let exports: Vec<Value> = admin
            .exports
            .volumes()
            .iter()
            .map(|v| {
                json!({
                    "name": v.name(), "size": v.size(), "backend": v.backend_kind(),
                    "writable": v.host_write_refusal().is_none(), "failed": v.failed(), "last_seq": v.last_seq(),
                })
            })
            .collect();
        let replication = admin.engine.as_ref().map(|e| e.status());
        let quorum = admin.controller.as_ref().map(|c| c.status());
        return Ok(json!({"exports": exports, "replication": replication, "quorum": quorum}));
    }
    if matches!(command.as_str(), "shutdown" | "return" | "quorum-bootstrap" | "quorum-status") {
        let c = admin.controller.as_ref().ok_or_else(|| {
            format!("`{command}` goes to a quorum controller; this node has no [controller] section in its config")
        })?;
        return c.admin(&command, &req).await;
    }
    let engine =
        admin.engine.as_ref().ok_or("this node has no volume sets ([node] and [[volume_set]] in its config)")?;
    match command.as_str() {
        "verify-config" => Ok(engine.verify_config().await),
        "wait-for-state" => {
            let name = req["volume_set"].as_str().ok_or("wait-for-state needs `volume_set`")?;
            let want = req["state"].as_str().ok_or("wait-for-state needs `state`")?.to_owned();
            let set = engine.set(name).ok_or_else(|| format!("unknown volume set `{name}`"))?;
            let timeout = Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(60_000));
            engine
                .wait_for(&set, timeout, |st| st.logical == want)
                .await
                .map(|()| json!({"volume_set": name, "state": want}))
                .map_err(|now| format!("volume set {name} is {now}, not {want}, after {timeout:?}"))
        }
        "freeze" | "run" | "suspend" | "resync" | "swap" | "failover" | "failback" | "recover" | "online"
        | "offline" | "join-cleanup" => engine.command(&command, req).await,
        other => Err(format!("unknown command `{other}`")),
    }
}

/// Client side: send one request and return the response.
pub async fn request(socket: &Path, req: &Value) -> anyhow::Result<Value> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!("cannot reach the gateway's admin socket {} (is the daemon running?)", socket.display())
    })?;
    let (r, mut w) = stream.into_split();
    w.write_all(format!("{req}\n").as_bytes()).await?;
    let mut lines = BufReader::new(r).lines();
    let line = lines.next_line().await?.context("the daemon closed the admin connection without answering")?;
    serde_json::from_str(&line).context("admin response is not JSON")
}

/// The `status` answer as tables for people.
pub fn status_table(status: &Value) -> String {
    let mut out = String::new();
    let row = |cols: &[String], widths: &[usize]| {
        let mut line = String::new();
        for (c, w) in cols.iter().zip(widths) {
            line.push_str(&format!("{c:<w$}  ", w = *w));
        }
        line.trim_end().to_owned() + "\n"
    };
    let table = |header: &[&str], rows: Vec<Vec<String>>| {
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let mut t = row(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>(), &widths);
        for r in rows {
            t.push_str(&row(&r, &widths));
        }
        t
    };
    let s = cell;
    let exports: Vec<Vec<String>> = status["exports"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    vec![
                        s(&e["name"]),
                        bytes(e["size"].as_u64().unwrap_or(0)),
                        s(&e["backend"]),
                        if e["writable"] == true { "read-write".into() } else { "read-only".into() },
                        if e["failed"] == true { "FAILED".into() } else { "ok".into() },
                        s(&e["last_seq"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    out.push_str(&table(&["EXPORT", "SIZE", "BACKEND", "ACCESS", "HEALTH", "UPDATES"], exports));
    if let Some(sets) = status["replication"]["volume_sets"].as_array() {
        out.push('\n');
        let rows = sets
            .iter()
            .map(|v| {
                let resync = match v["resync"].as_object() {
                    None => "-".to_string(),
                    Some(r) => format!(
                        "{}/{} at {}/s, eta {}",
                        bytes(r["done_bytes"].as_u64().unwrap_or(0)),
                        bytes(r["total_bytes"].as_u64().unwrap_or(0)),
                        bytes(r["rate_bytes_per_sec"].as_f64().unwrap_or(0.0) as u64),
                        r["eta_secs"].as_f64().map(|e| format!("{e:.0}s")).unwrap_or_else(|| "-".into())
                    ),
                };
                vec![
                    s(&v["name"]),
                    s(&v["state"]),
                    s(&v["direction"]),
                    s(&v["flow"]),
                    if v["link_up"] == true { "up".into() } else { "down".into() },
                    bytes(v["dirty_bytes"].as_u64().unwrap_or(0)),
                    resync,
                    s(&v["last_error"]),
                ]
            })
            .collect();
        out.push_str(&table(
            &["VOLUME SET", "STATE", "DIRECTION", "FLOW", "LINK", "DIRTY", "RESYNC", "LAST ERROR"],
            rows,
        ));
        let quorum: Vec<Vec<String>> = sets
            .iter()
            .filter(|v| v["quorum"].is_object())
            .map(|v| {
                let q = &v["quorum"];
                vec![
                    s(&v["name"]),
                    s(&q["online"]),
                    s(&q["position"]),
                    s(&q["epoch"]),
                    s(&q["last_final"]),
                    s(&q["controllers"]),
                    q["keys"].as_object().map_or("-".into(), |k| {
                        k.iter().map(|(c, v)| format!("{c}:{}", s(&v["gen"]))).collect::<Vec<_>>().join(" ")
                    }),
                    s(&q["shutting_down"]),
                ]
            })
            .collect();
        if !quorum.is_empty() {
            out.push('\n');
            out.push_str(&table(
                &[
                    "QUORUM SET",
                    "ONLINE",
                    "POSITION",
                    "EPOCH",
                    "LAST FINAL",
                    "CONTROLLERS",
                    "KEY COPIES (gen)",
                    "SHUTTING DOWN",
                ],
                quorum,
            ));
        }
    }
    if status["quorum"].is_object() {
        out.push('\n');
        out.push_str(&quorum_table(&status["quorum"]));
    }
    out
}

/// A controller's `quorum-status` answer for people: the outcome and why, the servers as this
/// controller sees them, each controller's link and election, and the saved key.
pub fn quorum_table(q: &Value) -> String {
    let s = cell;
    let key = &q["saved_key"];
    let mut out = format!(
        "controller {} (volume set {}): {}\nreason: {}\nthreshold: more than {} of {} controllers must elect\nkey: {} (generation {}, last shutdown mode {}, held: {})\n\n",
        s(&q["controller"]),
        s(&q["volume_set"]),
        s(&q["outcome"]),
        s(&q["reason"]),
        s(&q["threshold"]),
        s(&q["controllers"]),
        s(&q["key_store"]),
        s(&key["gen"]),
        s(&q["mode"]),
        q["held"].as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join("+")).filter(|h| !h.is_empty()).unwrap_or_else(|| "none".into()),
    );
    let mut t = format!(
        "{:<8} {:<10} {:<12} {:<10} {:<9} {:<8} {}\n",
        "SERVER", "CONNECTED", "OPERATIONAL", "ONLINE", "POSITION", "PENDING", "IN KEY (position/high/final)"
    );
    if let Some(servers) = q["servers"].as_object() {
        for (name, v) in servers {
            let rec = &key["servers"][name];
            let in_key = format!("{}/{}/{}", s(&rec["position"]), s(&rec["high"]), s(&key["finals"][name]));
            t.push_str(&format!(
                "{:<8} {:<10} {:<12} {:<10} {:<9} {:<8} {}\n",
                name,
                if v["connected"] == true { "yes" } else { "no" },
                s(&v["operational"]),
                s(&v["online"]),
                s(&v["position"]),
                s(&v["copies_pending"]),
                in_key
            ));
        }
    }
    out.push_str(&t);
    out.push('\n');
    // Every controller's saved key, as the copies the servers hold show it (the newest).
    let mut copies: std::collections::BTreeMap<String, &Value> = Default::default();
    if let Some(servers) = q["servers"].as_object() {
        for v in servers.values() {
            for (c, k) in v["keys"].as_object().into_iter().flatten() {
                let newer = copies.get(c).is_none_or(|old| old["gen"].as_u64() < k["gen"].as_u64());
                if newer {
                    copies.insert(c.clone(), k);
                }
            }
        }
    }
    out.push_str(&format!(
        "{:<12} {:<6} {:<32} {:<11} {}\n",
        "CONTROLLER", "LINK", "ELECTION", "KEY GEN", "KEY MODE / OUTCOME"
    ));
    let me = s(&q["controller"]);
    let mut names: Vec<String> = vec![me.clone()];
    if let Some(p) = q["peers"].as_object() {
        names.extend(p.keys().cloned());
    }
    for n in names {
        let link = if n == me {
            "self".to_string()
        } else if q["peers"][&n] == true {
            "up".into()
        } else {
            "down".into()
        };
        let (gen, rest) = match copies.get(&n) {
            Some(k) => (s(&k["gen"]), format!("{} / {}", s(&k["mode"]), outcome_text(&k["outcome"]))),
            None => ("-".into(), "-".into()),
        };
        out.push_str(&format!("{:<12} {:<6} {:<32} {:<11} {}\n", n, link, s(&q["elections"][&n]), gen, rest));
    }
    out
}

/// A passed election as a key records it: `A+B@0 (3 of 4 yes)`.
fn outcome_text(o: &Value) -> String {
    let v = &o["value"];
    match v["primary"].as_str() {
        None => "-".into(),
        Some(p) => {
            let s = v["secondary"].as_str().map(|s| format!("+{s}")).unwrap_or_default();
            format!("{p}{s}@{} ({} of {} yes)", cell(&v["position"]), cell(&o["yes"]), cell(&o["of"]))
        }
    }
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
