//! Frames over sockets: read and write whole replication frames, with a deadline on reads so
//! a silent peer (SIGSTOPped, cable cut without a reset) is noticed.

use std::time::Duration;

use bytes::BytesMut;
use gateway_replication::frame::{self, FrameError, Message};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame: {0}")]
    Frame(#[from] FrameError),
    #[error("peer closed the connection")]
    Closed,
    #[error("no frame from the peer for {0:?}")]
    Silent(Duration),
    #[error("peer refused: {0}")]
    Refused(String),
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
}

/// Reads frames from a byte stream, keeping partial input between calls.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, buf: BytesMut::with_capacity(256 * 1024) }
    }

    /// The next whole frame, waiting at most `deadline` for it to start arriving.
    pub async fn next(&mut self, deadline: Duration) -> Result<Message, LinkError> {
        loop {
            if let Some((msg, used)) = frame::decode(&self.buf)? {
                let _ = self.buf.split_to(used);
                return Ok(msg);
            }
            if self.buf.capacity() - self.buf.len() < 64 * 1024 {
                self.buf.reserve(256 * 1024);
            }
            let n = match tokio::time::timeout(deadline, self.inner.read_buf(&mut self.buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(LinkError::Silent(deadline)),
            };
            if n == 0 {
                return Err(LinkError::Closed);
            }
        }
    }
}

pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> Result<(), LinkError> {
    let mut b = BytesMut::new();
    frame::encode(msg, &mut b);
    w.write_all(&b).await?;
    w.flush().await?;
    Ok(())
}

/// How long a link may be silent before it is declared lost; heartbeats keep an idle link
/// talking at a third of this.
pub const LINK_TIMEOUT: Duration = Duration::from_secs(5);
pub const HEARTBEAT: Duration = Duration::from_millis(1500);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Accept connections until `shutdown`, handing each to `handle` on its own task; a failed
/// accept (e.g. out of descriptors) backs off instead of spinning.
pub async fn accept_loop<F, Fut>(
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
    what: &'static str,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, std::net::SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("{what} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(handle(stream, peer));
    }
}
