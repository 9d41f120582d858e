//! The control connection between sites, separate from the data link: JSON requests and
//! responses (state queries, promote on swap, bitmap exchange, configuration checks) carried in
//! the same checked frames. One short connection per request keeps it simple and robust:
//! there is no session to lose.

use std::net::SocketAddr;
use std::sync::Arc;

use gateway_replication::frame::{Channel, FrameError, Message, CURRENT_VERSION};
use serde_json::Value;
use tokio::io::BufWriter;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::link::{self, FrameReader, LinkError, CONNECT_TIMEOUT, LINK_TIMEOUT};
use super::Engine;

pub async fn serve(listener: TcpListener, engine: Arc<Engine>, shutdown: CancellationToken) {
    link::accept_loop(listener, shutdown, "control", |stream, peer| {
        let engine = engine.clone();
        async move {
            if let Err(e) = session(stream, &engine).await {
                tracing::warn!(%peer, "control connection closed: {e}");
            }
        }
    })
    .await
}

async fn session(stream: TcpStream, engine: &Arc<Engine>) -> Result<(), LinkError> {
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = BufWriter::new(w);
    let hello = match reader.next(LINK_TIMEOUT).await {
        Ok(m) => m,
        Err(LinkError::Frame(FrameError::Version { got })) => {
            let reason = format!(
                "replication protocol version {got} is not supported; this node speaks version {CURRENT_VERSION}"
            );
            let _ = link::send(&mut writer, &Message::Refused { reason: reason.clone() }).await;
            return Err(LinkError::Refused(reason));
        }
        Err(e) => return Err(e),
    };
    let Message::Hello { channel: Channel::Control, node, .. } = hello else {
        let reason = "expected a control-channel hello".to_string();
        let _ = link::send(&mut writer, &Message::Refused { reason: reason.clone() }).await;
        return Err(LinkError::Refused(reason));
    };
    link::send(&mut writer, &Message::Welcome { node: engine.site().to_owned(), generation: 0 }).await?;
    loop {
        let msg = match reader.next(LINK_TIMEOUT).await {
            Ok(m) => m,
            Err(LinkError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let Message::Request { id, body } = msg else {
            return Err(LinkError::Unexpected("frame on the control link"));
        };
        let reply = match serde_json::from_str::<Value>(&body) {
            Ok(req) if req["op"] == "quorum-attach" => {
                // A controller: from here on the connection carries reports and commands.
                return crate::quorum::agent::attach(engine, &node, id, req, reader, writer).await;
            }
            Ok(req) => engine.control(&node, req).await,
            Err(e) => serde_json::json!({"ok": false, "error": format!("request is not JSON: {e}")}),
        };
        link::send(&mut writer, &Message::Response { id, body: reply.to_string() }).await?;
    }
}

pub type ControlReader = FrameReader<tokio::net::tcp::OwnedReadHalf>;
pub type ControlWriter = BufWriter<tokio::net::tcp::OwnedWriteHalf>;

/// Connect to a control port (a peer site's, or a server's for a quorum controller) and say
/// hello as `node`; the connection is ready for requests once this returns.
pub async fn dial(addr: SocketAddr, node: &str, volume_set: &str) -> Result<(ControlReader, ControlWriter), LinkError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await.map_err(|_| {
        LinkError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer within {CONNECT_TIMEOUT:?}"),
        ))
    })??;
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut reader = FrameReader::new(r);
    let mut writer = BufWriter::new(w);
    let hello = Message::Hello {
        node: node.to_owned(),
        channel: Channel::Control,
        volume_set: volume_set.to_owned(),
        generation: 0,
    };
    link::send(&mut writer, &hello).await?;
    match reader.next(LINK_TIMEOUT).await? {
        Message::Welcome { .. } => Ok((reader, writer)),
        Message::Refused { reason } => Err(LinkError::Refused(reason)),
        _ => Err(LinkError::Unexpected("reply to hello")),
    }
}

/// Send one request to a peer's control port and return its JSON response.
pub async fn request(addr: SocketAddr, site: &str, volume_set: &str, body: Value) -> Result<Value, String> {
    let io = |e: LinkError| match e {
        LinkError::Refused(reason) => format!("control port {addr} refused: {reason}"),
        e => format!("control port {addr}: {e}"),
    };
    let (mut reader, mut writer) = dial(addr, site, volume_set).await.map_err(io)?;
    link::send(&mut writer, &Message::Request { id: 1, body: body.to_string() }).await.map_err(io)?;
    // Swaps wait for a flush at the peer; allow them longer than a heartbeat.
    match reader.next(LINK_TIMEOUT * 6).await.map_err(io)? {
        Message::Response { body, .. } => {
            serde_json::from_str(&body).map_err(|e| format!("control response is not JSON: {e}"))
        }
        _ => Err(format!("control port {addr}: unexpected reply")),
    }
}
