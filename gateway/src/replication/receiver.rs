//! The recovery site's end of the data link: accepts the production site's connection, applies
//! each update to the local volume in order through its write path, and acknowledges it.
//! Nothing is applied from a frame that fails its checks: the connection is reset and logged.

use std::sync::Arc;

use bytes::Bytes;
use gateway_backend::ZeroFlags;
use gateway_replication::frame::{
    Channel, FrameError, Message, UpdateOp, CURRENT_VERSION, UPDATE_FLAG_FUA, UPDATE_FLAG_MAY_TRIM,
};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::link::{self, FrameReader, LinkError, LINK_TIMEOUT};
use super::set::{Role, VolumeSet};
use super::Engine;

pub async fn serve(listener: TcpListener, engine: Arc<Engine>, shutdown: CancellationToken) {
    link::accept_loop(listener, shutdown.clone(), "replication", |stream, peer| {
        let _ = stream.set_nodelay(true);
        let (engine, shutdown) = (engine.clone(), shutdown.clone());
        async move {
            if let Err(e) = session(stream, &engine, shutdown).await {
                tracing::warn!(%peer, "replication data connection closed: {e}");
            }
        }
    })
    .await
}

/// Answer a first frame that is not a usable Hello with a refusal that says why.
async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, reason: String) -> LinkError {
    let _ = link::send(w, &Message::Refused { reason: reason.clone() }).await;
    LinkError::Refused(reason)
}

async fn session(stream: TcpStream, engine: &Arc<Engine>, shutdown: CancellationToken) -> Result<(), LinkError> {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = BufWriter::with_capacity(256 * 1024, w);
    let hello = match reader.next(LINK_TIMEOUT).await {
        Ok(m) => m,
        Err(LinkError::Frame(FrameError::Version { got })) => {
            return Err(refuse(
                &mut writer,
                format!(
                    "replication protocol version {got} is not supported; this node speaks version {CURRENT_VERSION}"
                ),
            )
            .await);
        }
        Err(e) => return Err(e),
    };
    let Message::Hello { node, channel: Channel::Data, volume_set, generation } = hello else {
        return Err(refuse(&mut writer, "expected a data-channel hello".into()).await);
    };
    let Some(set) = engine.set(&volume_set) else {
        return Err(refuse(&mut writer, format!("unknown volume set `{volume_set}` at site {}", engine.site())).await);
    };
    if node != set.cfg.peer_site {
        return Err(refuse(
            &mut writer,
            format!("site `{node}` is not the peer of {volume_set} (expected `{}`)", set.cfg.peer_site),
        )
        .await);
    }
    if let Err(reason) = engine.accept_primary(&set, generation).await {
        return Err(refuse(&mut writer, reason).await);
    }
    link::send(&mut writer, &Message::Welcome { node: engine.site().to_owned(), generation: set.state().generation })
        .await?;
    let session = CancellationToken::new();
    engine.replace_session(set.name(), session.clone());
    set.update(|st| {
        st.link_up = true;
        st.last_error = None;
    });
    // The recovery site's state is the production site's: ask it, so a link that merely came
    // up is not mistaken for a complete copy. Unknown counts as not in sync.
    let req = serde_json::json!({"op": "state", "volume_set": set.name()});
    let production_state = match super::control::request(set.cfg.peer_control, engine.site(), set.name(), req).await {
        Ok(v) if v["ok"] == true => v["state"].as_str().unwrap_or("OutOfSync").to_owned(),
        _ => "OutOfSync".to_owned(),
    };
    engine.events().send(set.name(), "link_up", &production_state);
    tracing::info!(set = set.name(), %node, "replication data link accepted");
    let result = apply_loop(&set, &mut reader, &mut writer, &session, &shutdown).await;
    // Once this site is production, the inbound link's end says nothing about the link
    // that matters (the outbound one); only a recovery site reports it.
    let still_secondary = set.update(|st| {
        let secondary = st.role == Role::Secondary;
        if secondary {
            st.link_up = false;
            if let Err(e) = &result {
                st.last_error = Some(e.to_string());
            }
        }
        secondary
    });
    if still_secondary && !session.is_cancelled() {
        let why = result.as_ref().err().map(|e| e.to_string()).unwrap_or_else(|| "closed".into());
        engine.events().send(set.name(), "link_down", &why);
    }
    result
}

/// Updates applied at once. Non-overlapping updates are independent, so they run in
/// parallel; an update that overlaps one still running waits for it (the production site's
/// order is kept wherever it matters), and replies go back in arrival order, which is how the
/// production site matches them.
const APPLY_WINDOW: usize = 64;

struct Running {
    volume: String,
    start: u64,
    end: u64,
    done: watch::Receiver<bool>,
}

async fn wait_for(running: &mut Vec<Running>, overlaps: impl Fn(&Running) -> bool) {
    for r in running.iter_mut().filter(|r| overlaps(r)) {
        let _ = r.done.wait_for(|d| *d).await;
    }
    running.retain(|r| !*r.done.borrow());
}

/// Apply in the background; `reply` turns the outcome into the frame for the peer.
#[allow(clippy::too_many_arguments)]
fn spawn_apply(
    set: &Arc<VolumeSet>,
    volume: String,
    offset: u64,
    op: UpdateOp,
    flags: u8,
    length: u64,
    data: Vec<u8>,
    tx: oneshot::Sender<Message>,
    reply: impl FnOnce(Result<(), String>) -> Message + Send + 'static,
) -> watch::Receiver<bool> {
    let (done_tx, done_rx) = watch::channel(false);
    let set = set.clone();
    tokio::spawn(async move {
        let r = apply(&set, &volume, offset, op, flags, length, data).await;
        let _ = tx.send(reply(r));
        let _ = done_tx.send(true);
    });
    done_rx
}

async fn apply_loop<R, W>(
    set: &Arc<VolumeSet>,
    reader: &mut FrameReader<R>,
    writer: &mut W,
    session: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), LinkError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (acks, mut pending) = mpsc::channel::<oneshot::Receiver<Message>>(APPLY_WINDOW);
    let receive = async move {
        let mut running: Vec<Running> = Vec::new();
        loop {
            let msg = tokio::select! {
                _ = session.cancelled() => return Ok(()),
                _ = shutdown.cancelled() => return Ok(()),
                m = reader.next(LINK_TIMEOUT) => m?,
            };
            if set.state().role != Role::Secondary {
                return Err(LinkError::Refused(format!(
                    "site is now production of {}; closing the inbound link",
                    set.name()
                )));
            }
            running.retain(|r| !*r.done.borrow());
            let (tx, rx) = oneshot::channel();
            match msg {
                Message::Update { volume, seq, offset, op, flags, length, data } => {
                    let end = offset.saturating_add(length.max(1));
                    wait_for(&mut running, |r| r.volume == volume && r.start < end && offset < r.end).await;
                    let v = volume.clone();
                    let done =
                        spawn_apply(set, volume.clone(), offset, op, flags, length, data, tx, move |r| match r {
                            Ok(()) => Message::Ack { volume: v, seq },
                            Err(message) => Message::Nack { volume: v, seq, errno: 5, message },
                        });
                    running.push(Running { volume, start: offset, end, done });
                }
                Message::ResyncData { volume, token, offset, data } => {
                    let len = data.len() as u64;
                    let end = offset.saturating_add(len.max(1));
                    wait_for(&mut running, |r| r.volume == volume && r.start < end && offset < r.end).await;
                    let done = spawn_apply(set, volume.clone(), offset, UpdateOp::Write, 0, len, data, tx, move |r| {
                        let (ok, message) = match r {
                            Ok(()) => (true, String::new()),
                            Err(m) => (false, m),
                        };
                        Message::ResyncAck { token, ok, message }
                    });
                    running.push(Running { volume, start: offset, end, done });
                }
                Message::Flush { token } => {
                    // A barrier: everything before it is applied, then made durable.
                    wait_for(&mut running, |_| true).await;
                    let mut failed = Vec::new();
                    for v in &set.volumes {
                        if let Err(e) = v.flush().await {
                            failed.push(format!("{}: {e}", v.name()));
                        }
                    }
                    let _ = tx.send(Message::FlushAck { token, ok: failed.is_empty(), message: failed.join("; ") });
                }
                Message::Heartbeat { nonce } => {
                    let _ = tx.send(Message::HeartbeatAck { nonce });
                }
                _ => return Err(LinkError::Unexpected("frame on the data link")),
            }
            if acks.send(rx).await.is_err() {
                return Ok(());
            }
        }
    };
    let send = async move {
        let mut buf = bytes::BytesMut::new();
        while let Some(rx) = pending.recv().await {
            let reply = rx.await.map_err(|_| LinkError::Unexpected("apply task ended without a reply"))?;
            gateway_replication::frame::encode(&reply, &mut buf);
            // Batch replies that are ready behind this one into one write.
            if pending.is_empty() || buf.len() >= 64 * 1024 {
                writer.write_all(&buf).await?;
                writer.flush().await?;
                buf.clear();
            }
        }
        Ok::<(), LinkError>(())
    };
    let (r, w) = tokio::join!(receive, send);
    r.and(w)
}

async fn apply(
    set: &VolumeSet,
    volume: &str,
    offset: u64,
    op: UpdateOp,
    flags: u8,
    length: u64,
    data: Vec<u8>,
) -> Result<(), String> {
    let v = set.volume(volume).ok_or_else(|| format!("volume `{volume}` is not in set {}", set.name()))?;
    if offset.checked_add(length).is_none_or(|end| end > v.size()) {
        return Err(format!("update {offset}+{length} is beyond `{volume}` (size {})", v.size()));
    }
    let fua = flags & UPDATE_FLAG_FUA != 0;
    let r = match op {
        UpdateOp::Write => v.write(Bytes::from(data), offset, fua).await,
        UpdateOp::Trim => v.trim(offset, length, fua).await,
        UpdateOp::Zero => {
            let flags = ZeroFlags { may_trim: flags & UPDATE_FLAG_MAY_TRIM != 0, fast_only: false, fua };
            v.zero(offset, length, flags).await
        }
    };
    r.map_err(|e| e.to_string())
}
