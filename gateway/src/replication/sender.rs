//! The production site's end of the data link: connects to the peer, sends queued updates,
//! barriers and resync blocks in order, matches the peer's acks (which come in the same
//! order), and on any failure converts everything unacknowledged to tracking.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use gateway_replication::frame::{self, Channel, Message};
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::link::{self, FrameReader, LinkError, CONNECT_TIMEOUT, HEARTBEAT, LINK_TIMEOUT};
use super::set::{Flow, Inflight, Item, Role, VolumeSet};
use super::Events;

/// Why a session ended.
enum End {
    /// This site stopped being production (swap, demote) or the daemon is stopping.
    Deliberate,
    Lost(String),
}

pub async fn run(set: Arc<VolumeSet>, events: Events, shutdown: CancellationToken) {
    let Some(mut rx) = set.take_queue() else { return };
    let mut changed = set.subscribe();
    // The same refusal (e.g. a peer held offline by its quorum controllers) is logged once.
    let mut last_refusal: Option<String> = None;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        if !set.state().sends() {
            drain(&set, &mut rx);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changed.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let stream = match connect(&set).await {
            Ok(s) => s,
            Err(e) => {
                let why = format!("cannot reach peer {} at {}: {e}", set.cfg.peer_site, set.cfg.peer_replication);
                if set.state().flow == Flow::Mirroring {
                    lost(&set, &events, &mut rx, &Mutex::new(Inflight::default()), &why);
                } else {
                    set.update(|st| st.last_error = Some(why.clone()));
                }
                drain(&set, &mut rx);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = set.reconnect.notified() => {}
                }
                continue;
            }
        };
        let (r, w) = stream.into_split();
        let mut reader = FrameReader::new(r);
        let mut writer = BufWriter::with_capacity(1 << 20, w);
        match handshake(&set, &mut reader, &mut writer).await {
            Ok(()) => {}
            Err(LinkError::Refused(reason)) => {
                if last_refusal.as_deref() != Some(reason.as_str()) {
                    tracing::warn!(set = set.name(), "peer refused the data link: {reason}");
                    last_refusal = Some(reason.clone());
                }
                set.update(|st| st.last_error = Some(format!("peer refused: {reason}")));
                if reason.starts_with("stale") {
                    events.send(set.name(), "peer_is_production", &reason);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = set.reconnect.notified() => {}
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(set = set.name(), "data link handshake failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        last_refusal = None;
        set.update(|st| {
            st.link_up = true;
            st.last_error = None;
        });
        tracing::info!(set = set.name(), peer = %set.cfg.peer_replication, "data link up");
        events.send(set.name(), "link_up", "");
        let inflight = Mutex::new(Inflight::default());
        let end = session(&set, &mut rx, &inflight, reader, writer, &shutdown).await;
        match end {
            End::Deliberate => {
                // Once this site is the recovery site, `link_up` describes the inbound link.
                // A production site that stopped sending (held offline) tracks from now on.
                set.update(|st| {
                    if st.role == Role::Primary {
                        st.link_up = false;
                        if st.flow == Flow::Mirroring {
                            st.flow = Flow::Tracking;
                        }
                    }
                });
                for item in take_all(&inflight) {
                    set.track(item);
                }
                drain(&set, &mut rx);
                tracing::info!(set = set.name(), "data link closed (this site is no longer production or is stopping)");
            }
            End::Lost(why) => {
                tracing::warn!(set = set.name(), "data link lost: {why}");
                lost(&set, &events, &mut rx, &inflight, &why);
            }
        }
    }
    // Stopping: nothing more goes to the peer. What is still queued is tracked and barriers
    // complete, so a flush at shutdown does not wait for a link that is gone.
    rx.close();
    drain(&set, &mut rx);
}

fn take_all(inflight: &Mutex<Inflight>) -> Vec<Item> {
    inflight.lock().items.drain(..).collect()
}

/// The link is gone: switch flow per policy, then track everything not acknowledged.
fn lost(
    set: &Arc<VolumeSet>,
    events: &Events,
    rx: &mut mpsc::UnboundedReceiver<Item>,
    inflight: &Mutex<Inflight>,
    why: &str,
) {
    let flow = set.on_link_lost(why);
    let pending = take_all(inflight);
    drain(set, rx);
    for item in pending {
        set.track(item);
    }
    drain(set, rx);
    events.send(set.name(), "link_down", why);
    if flow == Flow::Frozen {
        events.send(set.name(), "frozen", "link lost with on_link_loss = freeze");
        super::arm_freeze_timer(set, events);
    }
}

/// Track whatever is queued.
fn drain(set: &Arc<VolumeSet>, rx: &mut mpsc::UnboundedReceiver<Item>) {
    while let Ok(item) = rx.try_recv() {
        set.track(item);
    }
}

async fn connect(set: &VolumeSet) -> Result<TcpStream, String> {
    let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(set.cfg.peer_replication))
        .await
        .map_err(|_| format!("no answer within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

async fn handshake<R, W>(set: &VolumeSet, reader: &mut FrameReader<R>, writer: &mut W) -> Result<(), LinkError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let generation = set.state().generation;
    let hello = Message::Hello {
        node: set.site.clone(),
        channel: Channel::Data,
        volume_set: set.name().to_owned(),
        generation,
    };
    link::send(writer, &hello).await?;
    match reader.next(LINK_TIMEOUT).await? {
        Message::Welcome { .. } => Ok(()),
        Message::Refused { reason } => Err(LinkError::Refused(reason)),
        _ => Err(LinkError::Unexpected("handshake reply")),
    }
}

/// Append the frame for an item; data is copied once, straight into the frame.
fn encode_item(item: &Item, token: u64, out: &mut BytesMut) {
    match item {
        Item::Update { volume, seq, offset, op, flags, length, data, .. } => {
            frame::encode_update(out, volume, *seq, *offset, *op, *flags, *length, data)
        }
        Item::Flush { .. } => frame::encode(&Message::Flush { token }, out),
        Item::Resync { volume, offset, data, .. } => frame::encode_resync(out, volume, token, *offset, data),
    }
}

async fn session<R, W>(
    set: &Arc<VolumeSet>,
    rx: &mut mpsc::UnboundedReceiver<Item>,
    inflight: &Mutex<Inflight>,
    mut reader: FrameReader<R>,
    mut writer: BufWriter<W>,
    shutdown: &CancellationToken,
) -> End
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut changed = set.subscribe();
    let write_side = async {
        let mut token = 0u64;
        let mut hb = tokio::time::interval(HEARTBEAT);
        let mut buf = BytesMut::with_capacity(1 << 20);
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return End::Deliberate,
                _ = changed.changed() => {
                    if !set.state().sends() {
                        return End::Deliberate;
                    }
                    continue;
                }
                item = rx.recv() => match item {
                    Some(i) => i,
                    None => return End::Deliberate,
                },
                _ = hb.tick() => {
                    frame::encode(&Message::Heartbeat { nonce: token }, &mut buf);
                    if let Err(e) = writer.write_all(&buf).await.and(writer.flush().await) {
                        return End::Lost(format!("sending heartbeat: {e}"));
                    }
                    buf.clear();
                    continue;
                }
            };
            let mut next = Some(first);
            while let Some(item) = next.take() {
                token += 1;
                encode_item(&item, token, &mut buf);
                // Registered before it is sent, so the ack always finds it.
                inflight.lock().items.push_back(item);
                if buf.len() >= 1 << 20 {
                    if let Err(e) = writer.write_all(&buf).await {
                        return End::Lost(format!("sending: {e}"));
                    }
                    buf.clear();
                }
                next = rx.try_recv().ok();
            }
            if let Err(e) = writer.write_all(&buf).await.and(writer.flush().await) {
                return End::Lost(format!("sending: {e}"));
            }
            buf.clear();
        }
    };
    let read_side = async {
        loop {
            let msg = match reader.next(LINK_TIMEOUT).await {
                Ok(m) => m,
                Err(e) => return End::Lost(e.to_string()),
            };
            if let Err(why) = settle(set, inflight, msg) {
                return End::Lost(why);
            }
        }
    };
    tokio::select! {
        e = write_side => e,
        e = read_side => e,
    }
}

/// Match one reply from the peer to the oldest item in flight.
fn settle(set: &VolumeSet, inflight: &Mutex<Inflight>, msg: Message) -> Result<(), String> {
    if let Message::HeartbeatAck { .. } = msg {
        return Ok(());
    }
    let mut q = inflight.lock();
    let front = q.items.pop_front().ok_or_else(|| "reply with nothing in flight".to_string())?;
    match (msg, front) {
        (Message::Ack { volume, seq }, Item::Update { volume: v, seq: s, done, .. }) if volume == v && seq == s => {
            set.updates_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _ = done.send(Ok(()));
            Ok(())
        }
        (Message::Nack { volume, seq, errno, message }, item) => {
            q.items.push_front(item);
            Err(format!("peer could not apply update {seq} of {volume} (errno {errno}): {message}"))
        }
        (Message::FlushAck { ok, message, .. }, Item::Flush { done }) => {
            if ok {
                let _ = done.send(Ok(()));
                Ok(())
            } else {
                // The peer may have lost writes it had acknowledged: resync everything.
                for b in set.bitmaps.values() {
                    b.set_all();
                }
                let _ = done.send(Err(format!("peer flush failed: {message}")));
                Err(format!("peer flush failed: {message}; full resync needed"))
            }
        }
        (Message::ResyncAck { ok, message, .. }, Item::Resync { done, data, .. }) => {
            if ok {
                set.resync_bytes_sent.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                let _ = done.send(Ok(()));
                Ok(())
            } else {
                let _ = done.send(Err(message.clone()));
                Err(format!("peer could not apply resync data: {message}"))
            }
        }
        (other, item) => {
            q.items.push_front(item);
            Err(format!("reply out of order: {}", describe(&other)))
        }
    }
}

/// A reply, shortened for a log line (replies carry no data, but stay bounded anyway).
fn describe(m: &Message) -> String {
    format!("{m:?}").chars().take(200).collect()
}
