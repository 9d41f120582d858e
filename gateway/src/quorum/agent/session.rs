//! The controllers' connections to a server: reports out, commands in (see the parent
//! module for the wire format).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gateway_replication::frame::Message;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::Agent;

/// How often a controller connection looks for changes of the set to report.
const REPORT_CHECK: Duration = Duration::from_millis(100);
/// Every this many checks, the report goes out even if nothing changed (a heartbeat).
const HEARTBEAT_CHECKS: u32 = 10;
use crate::replication::link::{self, FrameReader, LinkError, LINK_TIMEOUT};
use crate::replication::Engine;

impl Agent {
    async fn session<R, W>(
        self: Arc<Self>,
        controller: String,
        reader: FrameReader<R>,
        mut writer: W,
    ) -> Result<(), LinkError>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin,
    {
        let (tx, mut commands) = mpsc::channel::<Value>(64);
        let reader_task = tokio::spawn(read_bodies(reader, tx));
        self.attached.lock().push(controller.clone());
        let result = self.session_loop(&controller, &mut commands, &mut writer).await;
        {
            let mut a = self.attached.lock();
            if let Some(i) = a.iter().position(|c| *c == controller) {
                a.swap_remove(i);
            }
        }
        reader_task.abort();
        result
    }

    async fn session_loop<W: AsyncWrite + Unpin>(
        self: &Arc<Self>,
        controller: &str,
        commands: &mut mpsc::Receiver<Value>,
        writer: &mut W,
    ) -> Result<(), LinkError> {
        let send = |body: Value| Message::Request { id: 0, body: body.to_string() };
        let l = self.ledger.get();
        if let Some(f) = l.last_final {
            // Not promoted since the last graceful stop: that final report comes first.
            link::send(writer, &send(self.report(false, f))).await?;
        }
        let mut last = self.report(true, l.position);
        link::send(writer, &send(last.clone())).await?;
        let mut changed = self.changed.subscribe();
        let mut set_changed = self.set.subscribe();
        let mut fin = self.final_report.subscribe();
        // The set changes on every resync step: look at it (and report what changed) at most
        // every REPORT_CHECK; the agent's own changes are reported at once; every
        // HEARTBEAT_CHECKS checks, the report goes out anyway.
        let mut tick = tokio::time::interval(REPORT_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checks = 0u32;
        loop {
            let look = tokio::select! {
                body = commands.recv() => match body {
                    Some(b) => {
                        self.command(controller, &b).await;
                        false
                    }
                    None => return Ok(()),
                },
                _ = fin.changed() => {
                    let report = fin.borrow().clone();
                    if let Some(r) = report {
                        // The last report; commands (key copies) are still taken until the
                        // daemon stops.
                        link::send(writer, &send(r)).await?;
                        self.finals_sent.fetch_add(1, Ordering::AcqRel);
                    }
                    false
                }
                _ = changed.changed() => true,
                _ = tick.tick() => {
                    checks += 1;
                    if checks.is_multiple_of(HEARTBEAT_CHECKS) {
                        last = Value::Null;
                    }
                    let moved = set_changed.has_changed().unwrap_or(false);
                    set_changed.borrow_and_update();
                    moved || last.is_null()
                }
            };
            if !look || fin.borrow().is_some() {
                continue;
            }
            let now = self.report(true, self.ledger.get().position);
            if now != last {
                link::send(writer, &send(now.clone())).await?;
                last = now;
            }
        }
    }
}

async fn read_bodies<R: AsyncRead + Unpin>(mut reader: FrameReader<R>, tx: mpsc::Sender<Value>) {
    loop {
        match reader.next(LINK_TIMEOUT).await {
            Ok(Message::Request { body, .. }) => match serde_json::from_str(&body) {
                Ok(v) => {
                    if tx.send(v).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("quorum connection: a frame that is not JSON ({e}); closing");
                    return;
                }
            },
            Ok(_) => {
                tracing::warn!("quorum connection: unexpected frame; closing");
                return;
            }
            Err(LinkError::Closed) => return,
            Err(e) => {
                tracing::info!("quorum connection ended: {e}");
                return;
            }
        }
    }
}

/// A controller attached on the control port (`{"op": "quorum-attach"}`, request `id`).
pub async fn attach<R, W>(
    engine: &Arc<Engine>,
    controller: &str,
    id: u64,
    req: Value,
    reader: FrameReader<R>,
    mut writer: W,
) -> Result<(), LinkError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let name = req["volume_set"].as_str().unwrap_or_default();
    let Some(agent) = engine.agent(name) else {
        let error = format!("volume set `{name}` is not quorum-managed at site {}", engine.site());
        let body = json!({"ok": false, "error": error}).to_string();
        link::send(&mut writer, &Message::Response { id, body }).await?;
        return Err(LinkError::Refused(error));
    };
    let body = json!({"ok": true, "server": engine.site()}).to_string();
    link::send(&mut writer, &Message::Response { id, body }).await?;
    tracing::info!(set = name, controller, "quorum controller attached");
    let r = agent.session(controller.to_owned(), reader, writer).await;
    tracing::info!(set = name, controller, "quorum controller detached");
    r
}
