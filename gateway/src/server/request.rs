//! One transmission request: checked against the export (pure), then executed against the
//! volume, producing the complete reply bytes for that request.
//!
//! Each reply is built as one contiguous buffer so the writer task can send replies of
//! different requests in any order without ever interleaving the bytes of two of them.

use bytes::{BufMut, Bytes, BytesMut};
use gateway_backend::{ErrorKind, ZeroFlags};
use nbd_proto::consts::*;
use nbd_proto::transmission::{
    encode_block_status, encode_error_chunk, encode_offset_data_header, encode_offset_hole, encode_simple_reply,
    Command, RequestHeader,
};

use super::negotiate::{Selected, BASE_ALLOCATION_ID, MAX_PAYLOAD};
use crate::volume::VolumeError;

/// A refused or failed request: the wire error and a message for the client's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub errno: u32,
    pub message: String,
}

fn refuse(errno: u32, message: impl Into<String>) -> Refusal {
    Refusal { errno, message: message.into() }
}

/// Check a request against the protocol and the export before doing anything.
pub fn check(req: &RequestHeader, sel: &Selected) -> Result<(), Refusal> {
    let cmd = req.command;
    if let Command::Unknown(c) = cmd {
        return Err(refuse(EINVAL, format!("unknown command {c}")));
    }
    let bad_flags = req.flags & !cmd.allowed_flags();
    if bad_flags != 0 {
        return Err(refuse(EINVAL, format!("flags {bad_flags:#x} are not valid for {cmd:?}")));
    }
    if req.has(CMD_FLAG_DF) && !sel.structured {
        return Err(refuse(EINVAL, "DF needs structured replies"));
    }
    let mutating = matches!(cmd, Command::Write | Command::Trim | Command::WriteZeroes);
    if mutating {
        if let Some(why) = sel.volume.host_write_refusal() {
            return Err(refuse(EPERM, why));
        }
    }
    if cmd == Command::Trim && sel.flags & TFLAG_SEND_TRIM == 0 {
        return Err(refuse(EINVAL, "trim was not advertised for this export"));
    }
    if cmd == Command::BlockStatus && !sel.base_allocation {
        return Err(refuse(EINVAL, "no metadata context was negotiated for this export"));
    }
    if matches!(cmd, Command::Read | Command::Write) && req.length > MAX_PAYLOAD {
        return Err(refuse(EINVAL, format!("length {} exceeds the maximum payload {MAX_PAYLOAD}", req.length)));
    }
    if matches!(cmd, Command::Disc | Command::Flush) {
        return Ok(());
    }
    let size = sel.volume.size();
    let in_range = req.offset.checked_add(req.length as u64).is_some_and(|end| end <= size);
    if !in_range {
        let errno = if matches!(cmd, Command::Write | Command::WriteZeroes) { ENOSPC } else { EINVAL };
        return Err(refuse(
            errno,
            format!("offset {} + length {} is beyond the export size {size}", req.offset, req.length),
        ));
    }
    if cmd == Command::BlockStatus && req.length == 0 {
        return Err(refuse(EINVAL, "block status of zero length"));
    }
    Ok(())
}

/// The reply bytes for a refused or failed request.
pub fn error_reply(req: &RequestHeader, structured: bool, r: &Refusal) -> Bytes {
    let mut b = BytesMut::with_capacity(64 + r.message.len());
    if structured {
        encode_error_chunk(&mut b, req.cookie, true, r.errno, &r.message);
    } else {
        encode_simple_reply(&mut b, req.cookie, r.errno);
    }
    b.freeze()
}

fn volume_refusal(e: VolumeError) -> Refusal {
    let errno = match e.kind() {
        ErrorKind::NoSpace => ENOSPC,
        ErrorKind::ReadOnly => EPERM,
        ErrorKind::Invalid => EINVAL,
        ErrorKind::NotSupported => ENOTSUP,
        ErrorKind::Shutdown => ESHUTDOWN,
        _ => EIO,
    };
    refuse(errno, e.to_string())
}

/// Execute a checked request and build its reply.
pub async fn execute(req: RequestHeader, payload: BytesMut, sel: &Selected) -> Bytes {
    if let Err(e) = sel.volume.host_io_allowed().await {
        return error_reply(&req, sel.structured, &volume_refusal(e));
    }
    let result = match req.command {
        Command::Read => return read(&req, sel).await,
        Command::BlockStatus => block_status(&req, sel).await,
        Command::Write => {
            sel.volume.write(payload.freeze(), req.offset, req.has(CMD_FLAG_FUA)).await.map(|()| ok(&req))
        }
        Command::Flush => sel.volume.flush().await.map(|()| ok(&req)),
        Command::Trim => sel.volume.trim(req.offset, req.length as u64, req.has(CMD_FLAG_FUA)).await.map(|()| ok(&req)),
        Command::WriteZeroes => {
            let flags = ZeroFlags {
                may_trim: !req.has(CMD_FLAG_NO_HOLE),
                fast_only: req.has(CMD_FLAG_FAST_ZERO),
                fua: req.has(CMD_FLAG_FUA),
            };
            sel.volume.zero(req.offset, req.length as u64, flags).await.map(|()| ok(&req))
        }
        Command::Cache => sel.volume.cache(req.offset, req.length as u64).await.map(|()| ok(&req)),
        // DISC never reaches here; unknown commands were refused by `check`.
        Command::Disc | Command::Unknown(_) => Ok(ok(&req)),
    };
    result.unwrap_or_else(|e| {
        let r = volume_refusal(e);
        tracing::warn!(export = sel.volume.name(), cookie = req.cookie, "{:?} failed: {}", req.command, r.message);
        error_reply(&req, sel.structured, &r)
    })
}

fn ok(req: &RequestHeader) -> Bytes {
    let mut b = BytesMut::with_capacity(16);
    encode_simple_reply(&mut b, req.cookie, 0);
    b.freeze()
}

/// Header room reserved in front of read data: the larger of a simple reply header and a
/// structured OFFSET_DATA header (chunk header plus offset).
const READ_HEADROOM: usize = CHUNK_HEADER_LEN + 8;
/// Holes are detected and sent as hole chunks at this granularity.
const HOLE_GRANULE: usize = 4096;

async fn read(req: &RequestHeader, sel: &Selected) -> Bytes {
    let len = req.length as usize;
    let mut buf = BytesMut::with_capacity(READ_HEADROOM + len);
    buf.resize(READ_HEADROOM, 0);
    let data = buf.split_off(READ_HEADROOM);
    let mut data = match sel.volume.read(zeroed(data, len), req.offset).await {
        Ok(d) => d,
        Err(e) => {
            let r = volume_refusal(e);
            tracing::warn!(export = sel.volume.name(), cookie = req.cookie, "Read failed: {}", r.message);
            return error_reply(req, sel.structured, &r);
        }
    };
    if !sel.structured {
        let start = READ_HEADROOM - SIMPLE_REPLY_LEN;
        let mut hdr = BytesMut::with_capacity(SIMPLE_REPLY_LEN);
        encode_simple_reply(&mut hdr, req.cookie, 0);
        buf[start..].copy_from_slice(&hdr);
        buf.unsplit(data);
        return buf.split_off(start).freeze();
    }
    let df = req.has(CMD_FLAG_DF);
    let zero_runs = if len == 0 { Vec::new() } else { zero_runs(&data) };
    if zero_runs.is_empty() {
        let mut hdr = BytesMut::with_capacity(READ_HEADROOM);
        encode_offset_data_header(&mut hdr, req.cookie, true, req.offset, len as u32);
        buf.copy_from_slice(&hdr);
        buf.unsplit(data);
        return buf.freeze();
    }
    if zero_runs == [(0, len)] || !df {
        return chunked(req, &mut data, &zero_runs);
    }
    // DF with mixed data and holes: one data chunk with the zeroes in it.
    let mut hdr = BytesMut::with_capacity(READ_HEADROOM);
    encode_offset_data_header(&mut hdr, req.cookie, true, req.offset, len as u32);
    buf.copy_from_slice(&hdr);
    buf.unsplit(data);
    buf.freeze()
}

fn zeroed(mut b: BytesMut, len: usize) -> BytesMut {
    b.resize(len, 0);
    b
}

/// Data and hole chunks for a read whose zero runs are known.
fn chunked(req: &RequestHeader, data: &mut BytesMut, runs: &[(usize, usize)]) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + 64 * (runs.len() + 1));
    let mut pos = 0;
    let last = data.len();
    for (i, &(start, end)) in runs.iter().enumerate() {
        if start > pos {
            encode_offset_data_header(&mut out, req.cookie, false, req.offset + pos as u64, (start - pos) as u32);
            out.put_slice(&data[pos..start]);
        }
        let done = i + 1 == runs.len() && end == last;
        encode_offset_hole(&mut out, req.cookie, done, req.offset + start as u64, (end - start) as u32);
        pos = end;
    }
    if pos < last {
        encode_offset_data_header(&mut out, req.cookie, true, req.offset + pos as u64, (last - pos) as u32);
        out.put_slice(&data[pos..]);
    }
    out.freeze()
}

/// Runs of whole all-zero granules, as `(start, end)` byte offsets into `data`, merged.
pub(crate) fn zero_runs(data: &[u8]) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, granule) in data.chunks(HOLE_GRANULE).enumerate() {
        if !is_zero(granule) {
            continue;
        }
        let start = i * HOLE_GRANULE;
        let end = start + granule.len();
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

fn is_zero(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(16);
    let wide = words.by_ref().all(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])) == 0);
    wide && words.remainder().iter().all(|&x| x == 0)
}

/// Largest extent length one descriptor carries (32-bit field, kept block aligned).
const MAX_DESCRIPTOR: u64 = (u32::MAX as u64) & !(PREFERRED_ALIGN - 1);
const PREFERRED_ALIGN: u64 = 4096;

async fn block_status(req: &RequestHeader, sel: &Selected) -> Result<Bytes, VolumeError> {
    let extents = sel.volume.extents(req.offset, req.length as u64).await?;
    let mut descriptors = Vec::with_capacity(extents.len());
    let mut covered = 0u64;
    for e in extents {
        let remaining = req.length as u64 - covered;
        let len = e.length.min(remaining).min(MAX_DESCRIPTOR);
        if len == 0 {
            break;
        }
        let flags = if e.hole { STATE_HOLE } else { 0 } | if e.zero { STATE_ZERO } else { 0 };
        match descriptors.last_mut() {
            Some((l, f)) if *f == flags && (*l as u64 + len) <= MAX_DESCRIPTOR => *l += len as u32,
            _ => descriptors.push((len as u32, flags)),
        }
        covered += len;
        if req.has(CMD_FLAG_REQ_ONE) {
            descriptors.truncate(1);
            break;
        }
    }
    if descriptors.is_empty() {
        // A backend that reported nothing: describe the range as allocated data, which is
        // always a truthful answer.
        descriptors.push((req.length, 0));
    }
    let mut b = BytesMut::with_capacity(CHUNK_HEADER_LEN + 4 + 8 * descriptors.len());
    encode_block_status(&mut b, req.cookie, true, BASE_ALLOCATION_ID, &descriptors);
    Ok(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::server::negotiate::transmission_flags;
    use crate::volume::Volume;
    use gateway_backend::memory::MemoryBackend;
    use nbd_proto::transmission::{parse_reply, Reply};

    fn sel(ro: bool, structured: bool) -> Selected {
        let volume = Arc::new(Volume::new("v".into(), String::new(), ro, Arc::new(MemoryBackend::new(1 << 20))));
        Selected { flags: transmission_flags(&volume, structured), volume, structured, base_allocation: structured }
    }

    fn req(command: Command, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader { flags, command, cookie: 42, offset, length }
    }

    #[test]
    fn checks_follow_the_protocol() {
        let s = sel(false, false);
        let errno = |r: RequestHeader, s: &Selected| check(&r, s).err().map(|e| e.errno);
        assert_eq!(errno(req(Command::Read, 0, 0, 4096), &s), None);
        assert_eq!(errno(req(Command::Read, 0, (1 << 20) - 1, 2), &s), Some(EINVAL));
        assert_eq!(errno(req(Command::Write, 0, 1 << 20, 1), &s), Some(ENOSPC));
        assert_eq!(errno(req(Command::WriteZeroes, 0, u64::MAX, 1), &s), Some(ENOSPC));
        assert_eq!(errno(req(Command::Trim, 0, u64::MAX - 1, 4), &s), Some(EINVAL));
        assert_eq!(errno(req(Command::Read, CMD_FLAG_DF, 0, 1), &s), Some(EINVAL));
        assert_eq!(errno(req(Command::Read, CMD_FLAG_FUA, 0, 1), &s), None);
        assert_eq!(errno(req(Command::Read, CMD_FLAG_REQ_ONE, 0, 1), &s), Some(EINVAL));
        assert_eq!(errno(req(Command::Flush, 1 << 7, 0, 0), &s), Some(EINVAL));
        assert_eq!(errno(req(Command::Unknown(99), 0, 0, 0), &s), Some(EINVAL));
        assert_eq!(errno(req(Command::BlockStatus, 0, 0, 1), &s), Some(EINVAL));
        assert_eq!(errno(req(Command::Read, 0, 0, MAX_PAYLOAD + 1), &s), Some(EINVAL));
        assert_eq!(errno(req(Command::Flush, 0, u64::MAX, 9), &s), None);
        let ro = sel(true, true);
        assert_eq!(errno(req(Command::Write, 0, 0, 1), &ro), Some(EPERM));
        assert_eq!(errno(req(Command::Read, CMD_FLAG_DF, 0, 1), &ro), None);
        assert_eq!(errno(req(Command::BlockStatus, CMD_FLAG_REQ_ONE, 0, 1), &ro), None);
        assert_eq!(errno(req(Command::BlockStatus, 0, 0, 0), &ro), Some(EINVAL));
    }

    #[test]
    fn zero_run_detection() {
        let mut d = vec![0u8; 5 * HOLE_GRANULE + 100];
        d[HOLE_GRANULE + 7] = 1;
        d[3 * HOLE_GRANULE] = 1;
        assert_eq!(
            zero_runs(&d),
            vec![(0, HOLE_GRANULE), (2 * HOLE_GRANULE, 3 * HOLE_GRANULE), (4 * HOLE_GRANULE, d.len())]
        );
        assert!(zero_runs(&[1u8; 10]).is_empty());
        assert_eq!(zero_runs(&[0u8; 10]), vec![(0, 10)]);
    }

    fn chunks(mut b: &[u8]) -> Vec<(u16, u16, Vec<u8>)> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (r, n) = parse_reply(b).unwrap().unwrap();
            let Reply::Chunk { flags, ty, payload, .. } = r else { panic!("simple reply in structured mode") };
            out.push((flags, ty, payload));
            b = &b[n..];
        }
        out
    }

    #[tokio::test]
    async fn structured_reads_send_holes_and_honour_df() {
        let s = sel(false, true);
        s.volume.write(Bytes::from(vec![7u8; 4096]), 8192, false).await.unwrap();
        let r = read(&req(Command::Read, 0, 0, 16384), &s).await;
        let c = chunks(&r);
        let types: Vec<u16> = c.iter().map(|c| c.1).collect();
        assert_eq!(types, vec![REPLY_TYPE_OFFSET_HOLE, REPLY_TYPE_OFFSET_DATA, REPLY_TYPE_OFFSET_HOLE]);
        assert_eq!(c.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0, 0, REPLY_FLAG_DONE]);
        assert_eq!(&c[1].2[..8], &8192u64.to_be_bytes());
        assert!(c[1].2[8..].iter().all(|&x| x == 7));
        let r = read(&req(Command::Read, CMD_FLAG_DF, 0, 16384), &s).await;
        let c = chunks(&r);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].0, c[0].1, c[0].2.len()), (REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, 8 + 16384));
        let plain = sel(false, false);
        plain.volume.write(Bytes::from_static(b"hey"), 0, false).await.unwrap();
        let r = read(&req(Command::Read, 0, 0, 3), &plain).await;
        assert_eq!(&r[SIMPLE_REPLY_LEN..], b"hey");
        assert_eq!(parse_reply(&r).unwrap().unwrap().0, Reply::Simple { cookie: 42, error: 0 });
    }

    #[tokio::test]
    async fn block_status_reports_holes_and_req_one() {
        let s = sel(false, true);
        s.volume.write(Bytes::from(vec![1u8; 65536]), 65536, false).await.unwrap();
        let r = block_status(&req(Command::BlockStatus, 0, 0, 4 * 65536), &s).await.unwrap();
        let c = chunks(&r);
        let p = &c[0].2;
        let desc: Vec<(u32, u32)> = p[4..]
            .chunks(8)
            .map(|d| (u32::from_be_bytes(d[..4].try_into().unwrap()), u32::from_be_bytes(d[4..].try_into().unwrap())))
            .collect();
        assert_eq!(desc, vec![(65536, STATE_HOLE | STATE_ZERO), (65536, 0), (131072, STATE_HOLE | STATE_ZERO)]);
        let r = block_status(&req(Command::BlockStatus, CMD_FLAG_REQ_ONE, 0, 4 * 65536), &s).await.unwrap();
        assert_eq!(chunks(&r)[0].2.len(), 4 + 8);
    }
}
