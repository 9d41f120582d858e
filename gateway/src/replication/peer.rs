//! What the peer and the operator ask of the engine: control-link requests from the peer
//! site, the status report, and the configuration comparison.

use std::sync::Arc;

use serde_json::{json, Value};

use super::set::{Flow, Role};
use super::{control, Engine};

impl Engine {
    /// Requests from the peer's control connection.
    pub async fn control(self: &Arc<Self>, from: &str, req: Value) -> Value {
        let name = req["volume_set"].as_str().unwrap_or_default();
        let Some(set) = self.set(name) else {
            return json!({"ok": false, "error": format!("unknown volume set `{name}` at site {}", self.site())});
        };
        if from != set.cfg.peer_site {
            return json!({"ok": false, "error": format!("site `{from}` is not the peer of {name}")});
        }
        let st = set.state();
        match req["op"].as_str().unwrap_or_default() {
            op @ ("quorum-position" | "quorum-state") => match self.agent(name) {
                Some(agent) => agent.peer_request(op, &req).await,
                None => {
                    json!({"ok": false, "error": format!("volume set {name} is not quorum-managed at site {}", self.site())})
                }
            },
            "state" => json!({
                "ok": true, "role": st.role, "production": st.production, "generation": st.generation,
                "state": st.logical, "link_up": st.link_up,
            }),
            "promote" => {
                let g = req["generation"].as_u64().unwrap_or(st.generation + 1);
                if st.role == Role::Primary {
                    return json!({"ok": false, "error": format!("site {} is already production of {name}", self.site())});
                }
                self.promote(&set, g.max(st.generation + 1), Flow::Mirroring);
                json!({"ok": true})
            }
            "swap" => match self.swap_out(&set).await {
                Ok(()) => json!({"ok": true}),
                Err(e) => json!({"ok": false, "error": e}),
            },
            "peer-state" => {
                let state = req["state"].as_str().unwrap_or_default();
                self.events.send(name, "peer_state", state);
                json!({"ok": true})
            }
            "bitmap" => match set.bitmaps.get(req["volume"].as_str().unwrap_or_default()) {
                Some(bm) => json!({"ok": true, "words": bm.words()}),
                None => json!({"ok": false, "error": "no such volume in the set"}),
            },
            "bitmap-clear" => match set.bitmaps.get(req["volume"].as_str().unwrap_or_default()) {
                Some(bm) if st.role == Role::Secondary => {
                    bm.clear_all();
                    match bm.persist() {
                        Ok(()) => json!({"ok": true}),
                        Err(e) => json!({"ok": false, "error": e.to_string()}),
                    }
                }
                Some(_) => json!({"ok": false, "error": "only the recovery site hands its bitmap over"}),
                None => json!({"ok": false, "error": "no such volume in the set"}),
            },
            "config" => json!({
                "ok": true,
                "site": self.site(),
                "peer_site": set.cfg.peer_site,
                "volumes": set.volumes.iter().map(|v| json!({"name": v.name(), "size": v.size()})).collect::<Vec<_>>(),
                "region_size": set.cfg.region_size,
            }),
            other => json!({"ok": false, "error": format!("unknown control request `{other}`")}),
        }
    }

    /// Status of every set, for `gateway ctl status`.
    pub fn status(&self) -> Value {
        let sets: Vec<Value> = self
            .sets
            .iter()
            .map(|s| {
                let st = s.state();
                json!({
                    "name": s.name(),
                    "state": st.logical,
                    "role": st.role,
                    "production": st.production,
                    "direction": if st.role == Role::Primary { format!("{} -> {}", self.site(), s.cfg.peer_site) } else { format!("{} -> {}", s.cfg.peer_site, self.site()) },
                    "flow": st.flow,
                    "link_up": st.link_up,
                    "generation": st.generation,
                    "dirty_bytes": s.dirty_bytes(),
                    "resync": st.resync.as_ref().map(|p| json!({
                        "done_bytes": p.done_bytes, "total_bytes": p.total_bytes,
                        "rate_bytes_per_sec": p.rate(), "eta_secs": p.eta_secs(),
                    })),
                    "resync_bytes_sent": s.resync_bytes_sent.load(std::sync::atomic::Ordering::Relaxed),
                    "updates_mirrored": s.updates_sent.load(std::sync::atomic::Ordering::Relaxed),
                    "last_error": st.last_error,
                    "volumes": s.volumes.iter().map(|v| v.name().to_owned()).collect::<Vec<_>>(),
                    "quorum": self.agent(s.name()).map(|a| a.status()),
                })
            })
            .collect();
        json!({ "site": self.site(), "volume_sets": sets })
    }

    /// Compare this site's definition of each set with the peer's.
    pub async fn verify_config(&self) -> Value {
        let mut problems = Vec::new();
        for set in &self.sets {
            let req = json!({"op": "config", "volume_set": set.name()});
            match control::request(set.cfg.peer_control, self.site(), set.name(), req).await {
                Err(e) => problems.push(format!("{}: peer unreachable: {e}", set.name())),
                Ok(r) if r["ok"] != true => problems.push(format!("{}: peer says: {}", set.name(), r["error"])),
                Ok(r) => {
                    if r["site"] != set.cfg.peer_site.as_str() {
                        problems.push(format!(
                            "{}: peer calls itself {} but is configured as {}",
                            set.name(),
                            r["site"],
                            set.cfg.peer_site
                        ));
                    }
                    if r["peer_site"] != self.site() {
                        problems.push(format!(
                            "{}: peer names its peer {} instead of {}",
                            set.name(),
                            r["peer_site"],
                            self.site()
                        ));
                    }
                    if r["region_size"] != set.cfg.region_size {
                        problems.push(format!(
                            "{}: region size differs ({} here, {} at the peer)",
                            set.name(),
                            set.cfg.region_size,
                            r["region_size"]
                        ));
                    }
                    let theirs: Vec<(String, u64)> = r["volumes"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|v| (v["name"].as_str().unwrap_or("").to_owned(), v["size"].as_u64().unwrap_or(0)))
                                .collect()
                        })
                        .unwrap_or_default();
                    let ours: Vec<(String, u64)> =
                        set.volumes.iter().map(|v| (v.name().to_owned(), v.size())).collect();
                    if theirs != ours {
                        problems.push(format!("{}: volumes differ (here {ours:?}, peer {theirs:?})", set.name()));
                    }
                }
            }
        }
        json!({"ok": problems.is_empty(), "problems": problems})
    }
}
