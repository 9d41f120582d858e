//! Mechanisms the recovery policy asks for: suspend, freeze/run, resync, swap, failover,
//! demote; and the freeze timer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::set::{Flow, Item, Progress, Role, VolumeSet};
use super::{control, resync, Engine, Events};

impl Engine {
    /// Carry out one mechanism on a set.
    pub async fn mechanism(self: &Arc<Self>, name: &str, op: &str) -> Result<(), String> {
        let set = self.set(name).ok_or_else(|| format!("unknown volume set {name}"))?;
        let st = set.state();
        match op {
            "suspend" => {
                set.update(|s| {
                    if s.flow == Flow::Mirroring {
                        s.flow = Flow::Tracking;
                    }
                });
                Ok(())
            }
            "freeze" => {
                set.update(|s| {
                    s.flow = Flow::Frozen;
                    s.frozen_since = Some(Instant::now());
                });
                self.events.send(name, "frozen", "freeze command");
                arm_freeze_timer(&set, &self.events);
                Ok(())
            }
            "run" => {
                let was = set.update(|s| {
                    let was = s.flow == Flow::Frozen;
                    if was {
                        s.flow = Flow::Tracking;
                        s.frozen_since = None;
                    }
                    was
                });
                if was {
                    self.events.send(name, "released", "run command");
                }
                Ok(())
            }
            "resync" => {
                if st.role != Role::Primary {
                    return Err(format!("resync of {name} must run at the production site ({})", st.production));
                }
                if !st.link_up {
                    return Err(format!("resync of {name}: the data link to {} is down", set.cfg.peer_site));
                }
                // Claim the resync before the first await: a policy's automatic resync and a
                // command may ask at the same moment, and only one copier may run.
                let claimed = set.update(|s| {
                    let free = s.resync.is_none();
                    if free {
                        s.resync = Some(Progress { total_bytes: 0, done_bytes: 0, started: None });
                    }
                    free
                });
                if !claimed {
                    return Ok(());
                }
                if let Err(e) = self.fetch_peer_bitmaps(&set).await {
                    set.update(|s| s.resync = None);
                    return Err(e);
                }
                set.update(|s| s.flow = Flow::Mirroring);
                tokio::spawn(resync::run(set.clone(), self.events.clone()));
                Ok(())
            }
            "swap" => match st.role {
                Role::Primary => self.swap_out(&set).await,
                Role::Secondary => {
                    let r = control::request(
                        set.cfg.peer_control,
                        self.site(),
                        name,
                        json!({"op": "swap", "volume_set": name}),
                    )
                    .await?;
                    ok_or(r)
                }
            },
            "failover" => {
                if st.role == Role::Primary {
                    return Ok(());
                }
                self.promote(&set, st.generation + 1, Flow::Tracking);
                tracing::warn!(
                    set = name,
                    "failover: this site is production now; changes are tracked for the old site"
                );
                Ok(())
            }
            "demote" => {
                self.demote(&set, st.generation);
                Ok(())
            }
            other => Err(format!("unknown replication mechanism `{other}`")),
        }
    }

    /// Planned swap from this (production) site: stop host writes, drain and flush the link,
    /// have the peer take over with the next generation, then step down.
    pub(super) async fn swap_out(self: &Arc<Self>, set: &Arc<VolumeSet>) -> Result<(), String> {
        let st = set.state();
        if st.flow != Flow::Mirroring || !st.link_up {
            return Err(format!(
                "swap of {} needs it mirroring with the link up (flow {:?}, link up {})",
                set.name(),
                st.flow,
                st.link_up
            ));
        }
        if st.resync.is_some() || set.dirty_bytes() > 0 {
            return Err(format!(
                "swap of {}: the peer's copy is not complete yet ({} bytes to resync); wait for InSync",
                set.name(),
                set.dirty_bytes()
            ));
        }
        let reason = format!("volume set {}: swap in progress", set.name());
        for v in &set.volumes {
            v.block_host_writes(Some(reason.clone()));
        }
        let restore = |why: String| {
            for v in &set.volumes {
                v.block_host_writes(None);
            }
            Err(why)
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        set.enqueue(Item::Flush { done: tx });
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return restore(format!("swap of {}: draining to the peer failed: {e}", set.name())),
            _ => return restore(format!("swap of {}: the peer did not confirm the drain", set.name())),
        }
        if set.state().flow != Flow::Mirroring {
            return restore(format!("swap of {}: the link failed while draining", set.name()));
        }
        let generation = st.generation + 1;
        let req = json!({"op": "promote", "volume_set": set.name(), "generation": generation});
        match control::request(set.cfg.peer_control, self.site(), set.name(), req).await.and_then(ok_or) {
            Ok(()) => {
                self.demote(set, generation);
                tracing::info!(set = set.name(), production = %set.cfg.peer_site, "swap done");
                Ok(())
            }
            Err(e) => restore(format!("swap of {}: the peer did not take over: {e}", set.name())),
        }
    }

    /// Merge the peer's change bitmaps (regions it may hold differently, e.g. an old
    /// production site's last writes before a force swap) into ours before a resync.
    pub(super) async fn fetch_peer_bitmaps(&self, set: &Arc<VolumeSet>) -> Result<(), String> {
        for (volume, bm) in &set.bitmaps {
            let req = json!({"op": "bitmap", "volume_set": set.name(), "volume": volume});
            let r = control::request(set.cfg.peer_control, self.site(), set.name(), req).await?;
            if r["ok"] != true {
                return Err(format!("peer bitmap of {volume}: {}", r["error"]));
            }
            let words: Vec<u64> = serde_json::from_value(r["words"].clone()).map_err(|e| e.to_string())?;
            if words.iter().any(|w| *w != 0) {
                tracing::info!(set = set.name(), volume, "merging the peer's change bitmap into the resync");
                bm.merge_words(&words);
                let bm2 = bm.clone();
                tokio::task::spawn_blocking(move || bm2.persist())
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
            }
            let req = json!({"op": "bitmap-clear", "volume_set": set.name(), "volume": volume});
            control::request(set.cfg.peer_control, self.site(), set.name(), req).await.and_then(ok_or)?;
        }
        Ok(())
    }
}

/// Release a freeze that nobody released within the set's freeze timeout: host I/O resumes
/// and changes are tracked (PPRC: freeze, then run after the timeout).
pub fn arm_freeze_timer(set: &Arc<VolumeSet>, events: &Events) {
    let (set, events) = (set.clone(), events.clone());
    let timeout = set.cfg.freeze_timeout;
    tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let released = set.update(|s| {
            let expired = s.flow == Flow::Frozen && s.frozen_since.is_some_and(|t| t.elapsed() >= timeout);
            if expired {
                s.flow = Flow::Tracking;
                s.frozen_since = None;
            }
            expired
        });
        if released {
            tracing::warn!(set = set.name(), "freeze timed out after {timeout:?}: host I/O released, changes tracked");
            events.send(set.name(), "released", "freeze timeout");
        }
    });
}

pub(super) fn ok_or(r: Value) -> Result<(), String> {
    if r["ok"] == true {
        Ok(())
    } else {
        Err(r["error"].as_str().unwrap_or("peer refused").to_owned())
    }
}
