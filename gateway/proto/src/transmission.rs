//! Transmission phase: request headers, simple replies, structured reply chunks.
//!
//! A WRITE's payload follows its header on the wire; [`RequestHeader::payload_len`] says how
//! many bytes the caller must take (or skip) after the header before the next request.

use bytes::{BufMut, BytesMut};

use crate::consts::*;
use crate::{Parsed, ProtoError, Reader};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Read,
    Write,
    Disc,
    Flush,
    Trim,
    Cache,
    WriteZeroes,
    BlockStatus,
    Unknown(u16),
}

impl Command {
    pub fn from_wire(v: u16) -> Self {
        match v {
            CMD_READ => Self::Read,
            CMD_WRITE => Self::Write,
            CMD_DISC => Self::Disc,
            CMD_FLUSH => Self::Flush,
            CMD_TRIM => Self::Trim,
            CMD_CACHE => Self::Cache,
            CMD_WRITE_ZEROES => Self::WriteZeroes,
            CMD_BLOCK_STATUS => Self::BlockStatus,
            other => Self::Unknown(other),
        }
    }

    pub fn to_wire(self) -> u16 {
        match self {
            Self::Read => CMD_READ,
            Self::Write => CMD_WRITE,
            Self::Disc => CMD_DISC,
            Self::Flush => CMD_FLUSH,
            Self::Trim => CMD_TRIM,
            Self::Cache => CMD_CACHE,
            Self::WriteZeroes => CMD_WRITE_ZEROES,
            Self::BlockStatus => CMD_BLOCK_STATUS,
            Self::Unknown(v) => v,
        }
    }

    /// Command flags the protocol allows on this command. FUA is accepted on every command:
    /// the protocol requires it of a server that advertises SEND_FUA, because existing clients
    /// set it on reads and flushes (where it has no further effect).
    pub fn allowed_flags(self) -> u16 {
        match self {
            Self::Read => CMD_FLAG_FUA | CMD_FLAG_DF,
            Self::Write | Self::Trim | Self::Disc | Self::Flush | Self::Cache => CMD_FLAG_FUA,
            Self::WriteZeroes => CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            Self::BlockStatus => CMD_FLAG_FUA | CMD_FLAG_REQ_ONE,
            Self::Unknown(_) => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: Command,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    /// Bytes of payload that follow this header on the wire.
    pub fn payload_len(&self) -> usize {
        match self.command {
            Command::Write => self.length as usize,
            _ => 0,
        }
    }

    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

/// Cut one request header off the front of `buf`.
pub fn parse_request(buf: &[u8]) -> Parsed<RequestHeader> {
    let mut r = Reader::new(buf);
    let Some(magic) = r.u32() else { return Ok(None) };
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadRequestMagic(magic));
    }
    let (Some(flags), Some(ty), Some(cookie), Some(offset), Some(length)) =
        (r.u16(), r.u16(), r.u64(), r.u64(), r.u32())
    else {
        return Ok(None);
    };
    let hdr = RequestHeader { flags, command: Command::from_wire(ty), cookie, offset, length };
    Ok(Some((hdr, REQUEST_HEADER_LEN)))
}

pub fn encode_request(buf: &mut BytesMut, h: &RequestHeader) {
    buf.put_u32(REQUEST_MAGIC);
    buf.put_u16(h.flags);
    buf.put_u16(h.command.to_wire());
    buf.put_u64(h.cookie);
    buf.put_u64(h.offset);
    buf.put_u32(h.length);
}

/// Simple reply header; for a successful simple READ the data follows.
pub fn encode_simple_reply(buf: &mut BytesMut, cookie: u64, error: u32) {
    buf.put_u32(SIMPLE_REPLY_MAGIC);
    buf.put_u32(error);
    buf.put_u64(cookie);
}

fn chunk_header(buf: &mut BytesMut, done: bool, ty: u16, cookie: u64, len: u32) {
    buf.put_u32(STRUCTURED_REPLY_MAGIC);
    buf.put_u16(if done { REPLY_FLAG_DONE } else { 0 });
    buf.put_u16(ty);
    buf.put_u64(cookie);
    buf.put_u32(len);
}

/// Header of an OFFSET_DATA chunk; the caller appends exactly `data_len` bytes.
pub fn encode_offset_data_header(buf: &mut BytesMut, cookie: u64, done: bool, offset: u64, data_len: u32) {
    chunk_header(buf, done, REPLY_TYPE_OFFSET_DATA, cookie, data_len.saturating_add(8));
    buf.put_u64(offset);
}

pub fn encode_offset_hole(buf: &mut BytesMut, cookie: u64, done: bool, offset: u64, len: u32) {
    chunk_header(buf, done, REPLY_TYPE_OFFSET_HOLE, cookie, 12);
    buf.put_u64(offset);
    buf.put_u32(len);
}

/// A BLOCK_STATUS chunk for one metadata context: `(length, status flags)` descriptors.
pub fn encode_block_status(buf: &mut BytesMut, cookie: u64, done: bool, context: u32, extents: &[(u32, u32)]) {
    chunk_header(buf, done, REPLY_TYPE_BLOCK_STATUS, cookie, 4 + 8 * extents.len() as u32);
    buf.put_u32(context);
    for (len, flags) in extents {
        buf.put_u32(*len);
        buf.put_u32(*flags);
    }
}

/// An ERROR chunk; the message is for humans and is cut to fit its 16-bit length.
pub fn encode_error_chunk(buf: &mut BytesMut, cookie: u64, done: bool, error: u32, message: &str) {
    let mut msg = &message.as_bytes()[..message.len().min(4096)];
    while std::str::from_utf8(msg).is_err() {
        msg = &msg[..msg.len() - 1];
    }
    chunk_header(buf, done, REPLY_TYPE_ERROR, cookie, 6 + msg.len() as u32);
    buf.put_u32(error);
    buf.put_u16(msg.len() as u16);
    buf.put_slice(msg);
}

pub fn encode_none(buf: &mut BytesMut, cookie: u64) {
    chunk_header(buf, true, REPLY_TYPE_NONE, cookie, 0);
}

/// A reply as a client sees it (tests and tools). For a simple reply to a successful READ,
/// the data follows and is not part of this frame: the client knows the length it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple { cookie: u64, error: u32 },
    Chunk { flags: u16, ty: u16, cookie: u64, payload: Vec<u8> },
}

/// Largest chunk payload a client parser accepts (data chunk of 32 MiB plus its offset).
pub const MAX_CHUNK_PAYLOAD: u32 = 32 * 1024 * 1024 + 8;

pub fn parse_reply(buf: &[u8]) -> Parsed<Reply> {
    let mut r = Reader::new(buf);
    let Some(magic) = r.u32() else { return Ok(None) };
    match magic {
        SIMPLE_REPLY_MAGIC => {
            let (Some(error), Some(cookie)) = (r.u32(), r.u64()) else { return Ok(None) };
            Ok(Some((Reply::Simple { cookie, error }, r.pos())))
        }
        STRUCTURED_REPLY_MAGIC => {
            let (Some(flags), Some(ty), Some(cookie), Some(len)) = (r.u16(), r.u16(), r.u64(), r.u32()) else {
                return Ok(None);
            };
            if len > MAX_CHUNK_PAYLOAD {
                return Err(ProtoError::MalformedReply("chunk payload too large"));
            }
            let Some(payload) = r.bytes(len as usize) else { return Ok(None) };
            Ok(Some((Reply::Chunk { flags, ty, cookie, payload: payload.to_vec() }, r.pos())))
        }
        other => Err(ProtoError::BadReplyMagic(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cmd() -> impl Strategy<Value = Command> {
        any::<u16>().prop_map(Command::from_wire)
    }

    proptest! {
        #[test]
        fn request_roundtrip(flags in any::<u16>(), command in cmd(), cookie in any::<u64>(), offset in any::<u64>(), length in any::<u32>()) {
            let h = RequestHeader { flags, command, cookie, offset, length };
            let mut b = BytesMut::new();
            encode_request(&mut b, &h);
            prop_assert_eq!(b.len(), REQUEST_HEADER_LEN);
            for cut in 0..b.len() {
                prop_assert_eq!(parse_request(&b[..cut]), Ok(None));
            }
            prop_assert_eq!(parse_request(&b), Ok(Some((h, REQUEST_HEADER_LEN))));
        }

        #[test]
        fn block_status_roundtrip(cookie in any::<u64>(), ctx in any::<u32>(), ext in proptest::collection::vec((any::<u32>(), 0u32..4), 0..50)) {
            let mut b = BytesMut::new();
            encode_block_status(&mut b, cookie, true, ctx, &ext);
            let (rep, used) = parse_reply(&b).unwrap().unwrap();
            prop_assert_eq!(used, b.len());
            let Reply::Chunk { flags, ty, cookie: c, payload } = rep else { panic!("not a chunk") };
            prop_assert_eq!((flags, ty, c), (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie));
            prop_assert_eq!(payload.len(), 4 + 8 * ext.len());
            prop_assert_eq!(&payload[..4], &ctx.to_be_bytes());
        }

        #[test]
        fn error_chunk_is_well_formed(cookie in any::<u64>(), err in any::<u32>(), msg in "\\PC{0,5000}") {
            let mut b = BytesMut::new();
            encode_error_chunk(&mut b, cookie, true, err, &msg);
            let (rep, _) = parse_reply(&b).unwrap().unwrap();
            let Reply::Chunk { ty, payload, .. } = rep else { panic!("not a chunk") };
            prop_assert_eq!(ty, REPLY_TYPE_ERROR);
            let mlen = u16::from_be_bytes([payload[4], payload[5]]) as usize;
            prop_assert_eq!(payload.len(), 6 + mlen);
            prop_assert!(std::str::from_utf8(&payload[6..]).is_ok());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(Some((_, used))) = parse_request(&bytes) { prop_assert!(used <= bytes.len()); }
            if let Ok(Some((_, used))) = parse_reply(&bytes) { prop_assert!(used <= bytes.len()); }
        }
    }

    #[test]
    fn simple_and_data_replies() {
        let mut b = BytesMut::new();
        encode_simple_reply(&mut b, 7, EIO);
        assert_eq!(parse_reply(&b).unwrap().unwrap().0, Reply::Simple { cookie: 7, error: EIO });
        let mut b = BytesMut::new();
        encode_offset_data_header(&mut b, 9, false, 4096, 3);
        b.put_slice(b"abc");
        let (rep, _) = parse_reply(&b).unwrap().unwrap();
        assert_eq!(
            rep,
            Reply::Chunk {
                flags: 0,
                ty: REPLY_TYPE_OFFSET_DATA,
                cookie: 9,
                payload: [&4096u64.to_be_bytes()[..], b"abc"].concat()
            }
        );
        let mut bad = b.clone();
        bad[0] = 0;
        assert!(matches!(parse_reply(&bad), Err(ProtoError::BadReplyMagic(_))));
        let mut b = BytesMut::new();
        encode_request(&mut b, &RequestHeader { flags: 0, command: Command::Read, cookie: 1, offset: 0, length: 1 });
        b[3] ^= 0xff;
        assert!(matches!(parse_request(&b), Err(ProtoError::BadRequestMagic(_))));
    }

    #[test]
    fn allowed_flags_match_the_spec() {
        assert_eq!(Command::Read.allowed_flags(), CMD_FLAG_FUA | CMD_FLAG_DF);
        assert_eq!(Command::Flush.allowed_flags(), CMD_FLAG_FUA);
        assert_eq!(Command::Unknown(99).allowed_flags(), 0);
        assert_eq!(Command::from_wire(Command::BlockStatus.to_wire()), Command::BlockStatus);
    }
}
