//! The controller's links: to every other controller (outbound: its messages and
//! `ControllerUp`/`Down`; inbound: theirs) and to each server's control port (reports in,
//! commands out). Each reconnects by itself.

use std::sync::Arc;

use gateway_replication::frame::{Channel, Message};
use gateway_sdk::policy::Event;
use serde_json::{json, Value};
use tokio::io::BufWriter;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Controller, PING, RECONNECT, REFUSED_PAUSE};
use crate::replication::control;
use crate::replication::link::{self, FrameReader, LinkError, LINK_TIMEOUT};

impl Controller {
    // ----- other controllers -------------------------------------------------------------------

    pub(super) async fn outbound(
        self: Arc<Self>,
        peer: String,
        mut rx: mpsc::Receiver<Value>,
        stop: CancellationToken,
    ) {
        let Some(addr) = self.cfg.peers.iter().find(|p| p.id == peer).map(|p| p.address) else { return };
        let mut logged = String::new();
        loop {
            let r = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.peer_session(&peer, addr, &mut rx) => r,
            };
            let refused = matches!(r, Err(LinkError::Refused(_)));
            let why = match r {
                Ok(()) => "closed".to_string(),
                Err(e) => e.to_string(),
            };
            if self.view.lock().peers.insert(peer.clone(), false) == Some(true) {
                tracing::warn!(controller = %self.cfg.id, peer, "controller link down: {why}");
                self.event(Event::ControllerDown { controller: peer.clone() });
            } else if why != logged && refused {
                tracing::warn!(controller = %self.cfg.id, peer, "controller refused the link: {why}");
            } else if why != logged {
                tracing::debug!(controller = %self.cfg.id, peer, "controller not reachable: {why}");
            }
            logged = why;
            let pause = if refused { REFUSED_PAUSE } else { RECONNECT };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn peer_session(
        &self,
        peer: &str,
        addr: std::net::SocketAddr,
        rx: &mut mpsc::Receiver<Value>,
    ) -> Result<(), LinkError> {
        let (mut reader, mut writer) = control::dial(addr, &self.cfg.id, &self.cfg.volume_set).await?;
        self.view.lock().peers.insert(peer.to_owned(), true);
        tracing::info!(controller = %self.cfg.id, peer, "controller link up");
        self.event(Event::ControllerUp { controller: peer.to_owned() });
        let mut ping = tokio::time::interval(PING);
        loop {
            let body = tokio::select! {
                m = rx.recv() => match m {
                    Some(b) => json!({"body": b}),
                    None => return Ok(()),
                },
                _ = ping.tick() => json!({"ping": true}),
                // The other side pings too: a silent or closed link ends the session.
                r = reader.next(LINK_TIMEOUT) => { r?; continue; }
            };
            link::send(&mut writer, &Message::Request { id: 0, body: body.to_string() }).await?;
        }
    }

    /// A connection from another controller: its messages to this one.
    pub(super) async fn inbound(&self, stream: TcpStream) -> Result<(), LinkError> {
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r);
        let mut writer = BufWriter::new(w);
        let from = match reader.next(LINK_TIMEOUT).await? {
            Message::Hello { node, channel: Channel::Control, .. } if self.peer_queues.contains_key(&node) => node,
            Message::Hello { node, .. } => {
                let reason = format!("`{node}` is not a controller this controller ({}) knows", self.cfg.id);
                let _ = link::send(&mut writer, &Message::Refused { reason: reason.clone() }).await;
                return Err(LinkError::Refused(reason));
            }
            _ => return Err(LinkError::Unexpected("a controller connection must start with a hello")),
        };
        link::send(&mut writer, &Message::Welcome { node: self.cfg.id.clone(), generation: 0 }).await?;
        let mut ping = tokio::time::interval(PING);
        loop {
            let msg = tokio::select! {
                _ = ping.tick() => {
                    let body = json!({"ping": true}).to_string();
                    link::send(&mut writer, &Message::Request { id: 0, body }).await?;
                    continue;
                }
                m = reader.next(LINK_TIMEOUT) => m?,
            };
            let Message::Request { body, .. } = msg else {
                return Err(LinkError::Unexpected("frame on a controller link"));
            };
            let v: Value = serde_json::from_str(&body).map_err(|_| LinkError::Unexpected("a body that is not JSON"))?;
            if let Some(b) = v.get("body") {
                self.event(Event::ControllerMessage { from: from.clone(), body: b.clone() });
            }
        }
    }

    // ----- servers -----------------------------------------------------------------------------

    pub(super) async fn server_link(
        self: Arc<Self>,
        name: String,
        addr: std::net::SocketAddr,
        stop: CancellationToken,
    ) {
        let mut logged = String::new();
        loop {
            let (tx, rx) = mpsc::unbounded_channel();
            let r = tokio::select! {
                _ = stop.cancelled() => return,
                r = self.server_session(&name, addr, tx, rx) => r,
            };
            self.server_queues.lock().remove(&name);
            let refused = matches!(r, Err(LinkError::Refused(_)));
            let why = match r {
                Ok(()) => "closed".to_string(),
                Err(e) => e.to_string(),
            };
            let was = {
                let mut v = self.view.lock();
                let entry = v.servers.entry(name.clone()).or_insert((false, Value::Null));
                if !entry.1.is_object() {
                    entry.1 = json!({});
                }
                entry.1["last_error"] = json!(why);
                std::mem::replace(&mut entry.0, false)
            };
            if was {
                tracing::warn!(controller = %self.cfg.id, server = %name, "server connection down: {why}");
                self.event(Event::PeerDown { peer: name.clone(), reason: why.clone() });
            } else if why != logged && refused {
                // A configuration problem (wrong address, set not quorum-managed): say so.
                tracing::warn!(controller = %self.cfg.id, server = %name, "server refused: {why}");
            } else if why != logged {
                tracing::debug!(controller = %self.cfg.id, server = %name, "server not reachable: {why}");
            }
            logged = why;
            let pause = if refused { REFUSED_PAUSE } else { RECONNECT };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn server_session(
        &self,
        name: &str,
        addr: std::net::SocketAddr,
        tx: mpsc::UnboundedSender<Value>,
        mut rx: mpsc::UnboundedReceiver<Value>,
    ) -> Result<(), LinkError> {
        let (mut reader, mut writer) = control::dial(addr, &self.cfg.id, &self.cfg.volume_set).await?;
        let attach = json!({"op": "quorum-attach", "volume_set": self.cfg.volume_set, "controller": self.cfg.id});
        link::send(&mut writer, &Message::Request { id: 1, body: attach.to_string() }).await?;
        match reader.next(LINK_TIMEOUT).await? {
            Message::Response { body, .. } => {
                let r: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                if r["ok"] != true {
                    return Err(LinkError::Refused(r["error"].as_str().unwrap_or("attach refused").to_owned()));
                }
                if r["server"] != name {
                    return Err(LinkError::Refused(format!(
                        "{addr} is site {}, but this controller's config says server {name} is there",
                        r["server"].as_str().unwrap_or("?")
                    )));
                }
            }
            _ => return Err(LinkError::Unexpected("reply to quorum-attach")),
        }
        self.view.lock().servers.insert(name.to_owned(), (true, Value::Null));
        if let Some(key) = self.view.lock().key.clone() {
            let _ = tx.send(json!({"command": "save_key", "key": key}));
        }
        self.server_queues.lock().insert(name.to_owned(), tx);
        tracing::info!(controller = %self.cfg.id, server = name, "server connected");
        self.event(Event::PeerUp { peer: name.to_owned() });
        let mut ping = tokio::time::interval(PING);
        loop {
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(body) = cmd else { return Ok(()) };
                    link::send(&mut writer, &Message::Request { id: 0, body: body.to_string() }).await?;
                }
                _ = ping.tick() => {
                    let body = json!({"ping": true}).to_string();
                    link::send(&mut writer, &Message::Request { id: 0, body }).await?;
                }
                m = reader.next(LINK_TIMEOUT) => {
                    let Message::Request { body, .. } = m? else {
                        return Err(LinkError::Unexpected("frame on a quorum connection"));
                    };
                    let v: Value = serde_json::from_str(&body).map_err(|_| LinkError::Unexpected("a report that is not JSON"))?;
                    let r = &v["report"];
                    let (Some(operational), Some(position)) = (r["operational"].as_bool(), r["position"].as_u64()) else {
                        return Err(LinkError::Unexpected("a report without operational/position"));
                    };
                    let copies_pending = r["copies_pending"].as_u64().unwrap_or(0);
                    self.view.lock().servers.insert(name.to_owned(), (true, r.clone()));
                    self.event(Event::ServerReport { server: name.to_owned(), operational, position, copies_pending });
                }
            }
        }
    }
}
