//! One client connection: negotiation, then the transmission loop.
//!
//! Transmission runs as a reader (this task), one task per in-flight request, and a writer
//! task that sends complete replies in completion order. Memory per connection is bounded by
//! a byte budget that each request holds from before its payload is read until its reply is
//! written, so a client can have many requests in flight but never more than
//! [`INFLIGHT_BUDGET`] bytes of them.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use nbd_proto::consts::{REQUEST_HEADER_LEN, SIMPLE_REPLY_LEN};
use nbd_proto::handshake::{encode_greeting, parse_client_flags, parse_option, GREETING_LEN};
use nbd_proto::transmission::{parse_request, Command, RequestHeader};
use nbd_proto::ProtoError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::negotiate::{Catalog, Negotiation, Selected, Verdict, MAX_PAYLOAD};
use super::request::{check, error_reply, execute};

/// The largest request run in line on a RAM-speed volume (see `completes_inline`).
const INLINE_MAX: u32 = 128 * 1024;

/// Bytes of request and reply payload one connection may hold in memory at once.
pub const INFLIGHT_BUDGET: usize = 64 * 1024 * 1024;
/// The budget is counted in units of this many bytes (the semaphore counts units).
const UNIT: usize = 1024;
/// Replies queued for the writer; the byte budget is the real bound, this only keeps the
/// queue from growing with tiny replies.
const REPLY_QUEUE: usize = 1024;

/// Why a connection ended, for the log.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol violation: {0}")]
    Proto(#[from] ProtoError),
    #[error("{0}")]
    Refused(String),
}

pub async fn serve<R, W, C>(read: R, write: W, catalog: C, shutdown: CancellationToken) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
    C: Catalog,
{
    let mut reader = BufReader::with_capacity(256 * 1024, read);
    let mut writer = BufWriter::with_capacity(256 * 1024, write);
    let sel = tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        r = negotiate(&mut reader, &mut writer, catalog) => match r? {
            Some(sel) => sel,
            None => return Ok(()),
        },
    };
    tracing::debug!(export = sel.volume.name(), structured = sel.structured, "entering transmission");
    transmission(reader, writer, sel, shutdown).await
}

/// Negotiation reads exactly one frame at a time: the bytes after the option that enters
/// transmission belong to the transmission phase, so nothing may be read past it.
async fn negotiate<R, W, C>(reader: &mut R, writer: &mut W, catalog: C) -> Result<Option<Selected>, ConnError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    C: Catalog,
{
    let mut out = BytesMut::with_capacity(GREETING_LEN);
    encode_greeting(&mut out);
    writer.write_all(&out).await?;
    writer.flush().await?;

    let mut head = [0u8; 4];
    reader.read_exact(&mut head).await?;
    let (flags, _) = parse_client_flags(&head)?.ok_or(ConnError::Refused("short client flags".into()))?;
    let mut neg = Negotiation::new(catalog, flags.no_zeroes);
    loop {
        // Header first (16 bytes), then exactly the payload it announces.
        let mut frame = vec![0u8; 16];
        reader.read_exact(&mut frame).await?;
        let need = match parse_option(&frame) {
            Ok(Some(_)) => 0,
            Ok(None) => u32::from_be_bytes([frame[12], frame[13], frame[14], frame[15]]) as usize,
            Err(e) => return Err(e.into()),
        };
        if need > 0 {
            frame.resize(16 + need, 0);
            reader.read_exact(&mut frame[16..]).await?;
        }
        let Some((raw, _)) = parse_option(&frame)? else {
            return Err(ConnError::Refused("incomplete option after reading its length".into()));
        };
        out.clear();
        let verdict = neg.handle(&raw, &mut out);
        writer.write_all(&out).await?;
        writer.flush().await?;
        match verdict {
            Verdict::Continue => {}
            Verdict::Close(why) => {
                tracing::info!("negotiation ended: {why}");
                return Ok(None);
            }
            Verdict::Transmit(sel) => return Ok(Some(sel)),
        }
    }
}

fn units(bytes: usize) -> u32 {
    (bytes / UNIT).max(1) as u32
}

async fn transmission<R, W>(
    mut reader: BufReader<R>,
    writer: BufWriter<W>,
    sel: Selected,
    shutdown: CancellationToken,
) -> Result<(), ConnError>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let sel = Arc::new(sel);
    let budget = Arc::new(Semaphore::new(INFLIGHT_BUDGET / UNIT));
    let (tx, rx) = mpsc::channel::<(Bytes, OwnedSemaphorePermit)>(REPLY_QUEUE);
    let writer_task = tokio::spawn(write_replies(writer, rx));
    let mut header = [0u8; REQUEST_HEADER_LEN];
    let result = loop {
        let got = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            r = reader.read_exact(&mut header) => r,
        };
        if let Err(e) = got {
            // EOF between requests is how many clients hang up; not an error.
            break if e.kind() == std::io::ErrorKind::UnexpectedEof { Ok(()) } else { Err(e.into()) };
        }
        let req = match parse_request(&header) {
            Ok(Some((req, _))) => req,
            Ok(None) => break Err(ConnError::Refused("short request header".into())),
            Err(e) => break Err(e.into()),
        };
        if req.command == Command::Disc {
            tracing::debug!("client sent DISC");
            break Ok(());
        }
        if req.command == Command::Write && req.length > MAX_PAYLOAD {
            // Reading (or skipping) an arbitrarily large payload is a denial of service; the
            // protocol lets the server disconnect here.
            break Err(ConnError::Refused(format!("write payload of {} bytes exceeds {MAX_PAYLOAD}", req.length)));
        }
        // Check first: a refused request needs no budget beyond its payload (a READ larger
        // than the whole budget would otherwise wait for it forever).
        let verdict = check(&req, &sel);
        let cost = match (req.command, &verdict) {
            (Command::Write, _) | (Command::Read, Ok(())) => req.length as usize + SIMPLE_REPLY_LEN,
            _ => 0,
        };
        let Ok(permit) = budget.clone().acquire_many_owned(units(cost)).await else {
            break Ok(());
        };
        // Read even a refused write's payload: it is on the wire and must be consumed.
        let payload = match read_payload(&mut reader, req.payload_len()).await {
            Ok(p) => p,
            Err(e) => break Err(e.into()),
        };
        if let Err(refusal) = verdict {
            tracing::debug!(cookie = req.cookie, "refused {:?}: {}", req.command, refusal.message);
            if tx.send((error_reply(&req, sel.structured, &refusal), permit)).await.is_err() {
                break Ok(());
            }
            continue;
        }
        if sel.volume.completes_inline() && req.length <= INLINE_MAX {
            // RAM-speed work with nothing to wait for: a task hand-off would cost more than
            // the request itself. Large requests still go to a task, so their copying runs
            // beside the reading of the next request.
            let reply = execute(req, payload, &sel).await;
            if tx.send((reply, permit)).await.is_err() {
                break Ok(());
            }
            continue;
        }
        spawn_request(req, payload, sel.clone(), tx.clone(), permit);
    };
    // In-flight requests hold clones of `tx`; the writer ends once they have all replied.
    drop(tx);
    let written = writer_task.await.map_err(|e| ConnError::Refused(format!("writer task failed: {e}")))?;
    result.and(written)
}

/// Read exactly `len` payload bytes into fresh spare capacity (`read_buf` fills it without
/// zeroing first, which matters for 32 MiB writes).
async fn read_payload<R: AsyncRead + Unpin>(reader: &mut R, len: usize) -> std::io::Result<BytesMut> {
    let mut payload = BytesMut::with_capacity(len);
    while payload.len() < len {
        let want = (len - payload.len()) as u64;
        if reader.take(want).read_buf(&mut payload).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(payload)
}

fn spawn_request(
    req: RequestHeader,
    payload: BytesMut,
    sel: Arc<Selected>,
    tx: mpsc::Sender<(Bytes, OwnedSemaphorePermit)>,
    permit: OwnedSemaphorePermit,
) {
    tokio::spawn(async move {
        let reply = execute(req, payload, &sel).await;
        // A closed channel means the writer failed; its error is reported there.
        let _ = tx.send((reply, permit)).await;
    });
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut writer: BufWriter<W>,
    mut rx: mpsc::Receiver<(Bytes, OwnedSemaphorePermit)>,
) -> Result<(), ConnError> {
    while let Some((reply, permit)) = rx.recv().await {
        writer.write_all(&reply).await?;
        drop(permit);
        // Batch replies that are already queued into one syscall; flush when the queue drains.
        if rx.is_empty() {
            writer.flush().await?;
        }
    }
    writer.flush().await?;
    Ok(())
}
