//! The replication link's wire format: framed, versioned, checksummed. Pure: bytes in, frames
//! out, no sockets.
//!
//! Every frame is a 16-byte header followed by its payload:
//!
//! ```text
//! magic   u32  "GWRL" (0x4757524c)
//! version u16  protocol version of the sender (see [`LinkVersion`])
//! type    u16  message type
//! length  u32  payload bytes (at most MAX_PAYLOAD)
//! crc32c  u32  CRC32C of the first 12 header bytes followed by the payload
//! ```
//!
//! A frame with a bad magic, an unknown version, an oversize length, a CRC mismatch or a
//! payload that does not decode is an error: the receiver logs it and resets the link,
//! and applies nothing from that frame. Integers are big-endian; strings are a u16 length
//! plus UTF-8 bytes.
//!
//! The same framing carries both connections between sites: the **data** connection
//! (updates, acks, flush barriers, resync data) and the separate **control** connection
//! (JSON requests and responses: state queries, commands, later the warmstart order). The
//! `Hello` names which one a connection is.

use bytes::{BufMut, BytesMut};

/// Protocol versions, newest last. Both sides send their version in `Hello`; a peer that
/// speaks another version is refused with [`Message::Refused`] naming both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum LinkVersion {
    /// 1: hello/refused, update/ack/nack, flush barriers, resync data, heartbeats, control
    /// request/response.
    V1 = 1,
}

pub const CURRENT_VERSION: u16 = LinkVersion::V1 as u16;
pub const MAGIC: u32 = 0x4757_524c;
pub const HEADER_LEN: usize = 16;
/// Largest payload: a 32 MiB write plus its fields.
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024 + 4096;

/// Which connection a `Hello` opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Data = 0,
    Control = 1,
}

/// What an update does (mirrors the write path's update kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOp {
    Write = 1,
    Trim = 2,
    Zero = 3,
}

pub const UPDATE_FLAG_FUA: u8 = 1 << 0;
pub const UPDATE_FLAG_MAY_TRIM: u8 = 1 << 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First frame on every connection, from the connecting side.
    Hello {
        node: String,
        channel: Channel,
        volume_set: String,
        generation: u64,
    },
    /// The accepting side's answer: it agrees to talk.
    Welcome {
        node: String,
        generation: u64,
    },
    /// The accepting side refuses (version mismatch, unknown set, wrong role); then closes.
    Refused {
        reason: String,
    },
    /// One mirrored update, in the volume's order.
    Update {
        volume: String,
        seq: u64,
        offset: u64,
        op: UpdateOp,
        flags: u8,
        length: u64,
        data: Vec<u8>,
    },
    /// The update was applied at the secondary (and is durable there if it carried FUA).
    Ack {
        volume: String,
        seq: u64,
    },
    /// The update could not be applied.
    Nack {
        volume: String,
        seq: u64,
        errno: u32,
        message: String,
    },
    /// Barrier: make everything applied before it durable, then answer `FlushAck`.
    Flush {
        token: u64,
    },
    FlushAck {
        token: u64,
        ok: bool,
        message: String,
    },
    /// A block of resync data (current contents of a dirty region).
    ResyncData {
        volume: String,
        token: u64,
        offset: u64,
        data: Vec<u8>,
    },
    ResyncAck {
        token: u64,
        ok: bool,
        message: String,
    },
    Heartbeat {
        nonce: u64,
    },
    HeartbeatAck {
        nonce: u64,
    },
    /// Control connection: a JSON request and its response, matched by `id`.
    Request {
        id: u64,
        body: String,
    },
    Response {
        id: u64,
        body: String,
    },
}

const T_HELLO: u16 = 1;
const T_WELCOME: u16 = 2;
const T_REFUSED: u16 = 3;
const T_UPDATE: u16 = 10;
const T_ACK: u16 = 11;
const T_NACK: u16 = 12;
const T_FLUSH: u16 = 13;
const T_FLUSH_ACK: u16 = 14;
const T_RESYNC: u16 = 15;
const T_RESYNC_ACK: u16 = 16;
const T_HEARTBEAT: u16 = 20;
const T_HEARTBEAT_ACK: u16 = 21;
const T_REQUEST: u16 = 30;
const T_RESPONSE: u16 = 31;

/// Why bytes could not become a frame. Every variant resets the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame magic {0:#010x}")]
    BadMagic(u32),
    #[error("peer speaks replication protocol version {got}; this node speaks version {CURRENT_VERSION}")]
    Version { got: u16 },
    #[error("frame payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(u32),
    #[error("frame CRC32C mismatch (header says {expected:#010x}, computed {actual:#010x})")]
    Checksum { expected: u32, actual: u32 },
    #[error("unknown frame type {0}")]
    UnknownType(u16),
    #[error("malformed {what} frame: {why}")]
    Malformed { what: &'static str, why: &'static str },
}

/// Encode a message as one frame appended to `out`.
pub fn encode(msg: &Message, out: &mut BytesMut) {
    encode_with_version(msg, CURRENT_VERSION, out)
}

/// Encode with an explicit version (tests use this to play an incompatible peer).
pub fn encode_with_version(msg: &Message, version: u16, out: &mut BytesMut) {
    framed(out, version, type_of(msg), |out| encode_payload(msg, out));
}

/// Encode an update frame straight from borrowed data (the sender's hot path: no
/// intermediate `Message`, so the data is copied once, into the frame).
#[allow(clippy::too_many_arguments)]
pub fn encode_update(
    out: &mut BytesMut,
    volume: &str,
    seq: u64,
    offset: u64,
    op: UpdateOp,
    flags: u8,
    length: u64,
    data: &[u8],
) {
    framed(out, CURRENT_VERSION, T_UPDATE, |out| {
        put_str(out, volume);
        out.put_u64(seq);
        out.put_u64(offset);
        out.put_u8(op as u8);
        out.put_u8(flags);
        out.put_u64(length);
        put_bytes(out, data);
    });
}

/// Encode a resync data frame straight from borrowed data.
pub fn encode_resync(out: &mut BytesMut, volume: &str, token: u64, offset: u64, data: &[u8]) {
    framed(out, CURRENT_VERSION, T_RESYNC, |out| {
        put_str(out, volume);
        out.put_u64(token);
        out.put_u64(offset);
        put_bytes(out, data);
    });
}

/// Header, payload written by `body`, then the length and CRC patched in.
fn framed(out: &mut BytesMut, version: u16, ty: u16, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(MAGIC);
    out.put_u16(version);
    out.put_u16(ty);
    out.put_u32(0); // length, patched below
    out.put_u32(0); // crc, patched below
    let body_start = out.len();
    body(out);
    let len = (out.len() - body_start) as u32;
    out[start + 8..start + 12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 12]), &out[body_start..]);
    out[start + 12..start + 16].copy_from_slice(&crc.to_be_bytes());
}

fn type_of(m: &Message) -> u16 {
    match m {
        Message::Hello { .. } => T_HELLO,
        Message::Welcome { .. } => T_WELCOME,
        Message::Refused { .. } => T_REFUSED,
        Message::Update { .. } => T_UPDATE,
        Message::Ack { .. } => T_ACK,
        Message::Nack { .. } => T_NACK,
        Message::Flush { .. } => T_FLUSH,
        Message::FlushAck { .. } => T_FLUSH_ACK,
        Message::ResyncData { .. } => T_RESYNC,
        Message::ResyncAck { .. } => T_RESYNC_ACK,
        Message::Heartbeat { .. } => T_HEARTBEAT,
        Message::HeartbeatAck { .. } => T_HEARTBEAT_ACK,
        Message::Request { .. } => T_REQUEST,
        Message::Response { .. } => T_RESPONSE,
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn put_long_str(out: &mut BytesMut, s: &str) {
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

fn encode_payload(m: &Message, out: &mut BytesMut) {
    match m {
        Message::Hello { node, channel, volume_set, generation } => {
            put_str(out, node);
            out.put_u8(*channel as u8);
            put_str(out, volume_set);
            out.put_u64(*generation);
        }
        Message::Welcome { node, generation } => {
            put_str(out, node);
            out.put_u64(*generation);
        }
        Message::Refused { reason } => put_str(out, reason),
        Message::Update { volume, seq, offset, op, flags, length, data } => {
            put_str(out, volume);
            out.put_u64(*seq);
            out.put_u64(*offset);
            out.put_u8(*op as u8);
            out.put_u8(*flags);
            out.put_u64(*length);
            put_bytes(out, data);
        }
        Message::Ack { volume, seq } => {
            put_str(out, volume);
            out.put_u64(*seq);
        }
        Message::Nack { volume, seq, errno, message } => {
            put_str(out, volume);
            out.put_u64(*seq);
            out.put_u32(*errno);
            put_str(out, message);
        }
        Message::Flush { token } => out.put_u64(*token),
        Message::FlushAck { token, ok, message } | Message::ResyncAck { token, ok, message } => {
            out.put_u64(*token);
            out.put_u8(*ok as u8);
            put_str(out, message);
        }
        Message::ResyncData { volume, token, offset, data } => {
            put_str(out, volume);
            out.put_u64(*token);
            out.put_u64(*offset);
            put_bytes(out, data);
        }
        Message::Heartbeat { nonce } | Message::HeartbeatAck { nonce } => out.put_u64(*nonce),
        Message::Request { id, body } | Message::Response { id, body } => {
            out.put_u64(*id);
            put_long_str(out, body);
        }
    }
}

/// Cut one frame off the front of `buf`: `Ok(None)` when more bytes are needed.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        // Reject a bad magic as early as its four bytes arrive.
        if buf.len() >= 4 {
            let magic = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
            if magic != MAGIC {
                return Err(FrameError::BadMagic(magic));
            }
        }
        return Ok(None);
    }
    let be32 = |i: usize| u32::from_be_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let magic = be32(0);
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_be_bytes([buf[4], buf[5]]);
    let ty = u16::from_be_bytes([buf[6], buf[7]]);
    let len = be32(8);
    if len > MAX_PAYLOAD {
        return Err(FrameError::TooLarge(len));
    }
    let total = HEADER_LEN + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let expected = be32(12);
    let actual = crc32c::crc32c_append(crc32c::crc32c(&buf[..12]), &buf[HEADER_LEN..total]);
    if expected != actual {
        return Err(FrameError::Checksum { expected, actual });
    }
    // Checked after the CRC so a corrupted version field reads as corruption. A Hello of
    // another version still decodes, so the acceptor can answer with a clear refusal.
    if version != CURRENT_VERSION && ty != T_HELLO {
        return Err(FrameError::Version { got: version });
    }
    let msg = decode_payload(ty, &buf[HEADER_LEN..total])?;
    if version != CURRENT_VERSION {
        return Err(FrameError::Version { got: version });
    }
    Ok(Some((msg, total)))
}

/// The version in a frame header (to answer a Hello of another version before refusing).
pub fn peek_version(buf: &[u8]) -> Option<u16> {
    (buf.len() >= 6).then(|| u16::from_be_bytes([buf[4], buf[5]]))
}

struct Cursor<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn err(&self, why: &'static str) -> FrameError {
        FrameError::Malformed { what: self.what, why }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(self.err("truncated"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String, FrameError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }
    fn long_string(&mut self) -> Result<String, FrameError> {
        let n = self.u32()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, FrameError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn bool(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.err("boolean is neither 0 nor 1")),
        }
    }
    fn end(self) -> Result<(), FrameError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }
}

fn decode_payload(ty: u16, b: &[u8]) -> Result<Message, FrameError> {
    let what = match ty {
        T_HELLO => "hello",
        T_WELCOME => "welcome",
        T_REFUSED => "refused",
        T_UPDATE => "update",
        T_ACK => "ack",
        T_NACK => "nack",
        T_FLUSH => "flush",
        T_FLUSH_ACK => "flush-ack",
        T_RESYNC => "resync",
        T_RESYNC_ACK => "resync-ack",
        T_HEARTBEAT => "heartbeat",
        T_HEARTBEAT_ACK => "heartbeat-ack",
        T_REQUEST => "request",
        T_RESPONSE => "response",
        other => return Err(FrameError::UnknownType(other)),
    };
    let mut c = Cursor { b, what };
    let m = match ty {
        T_HELLO => {
            let node = c.string()?;
            let channel = match c.u8()? {
                0 => Channel::Data,
                1 => Channel::Control,
                _ => return Err(c.err("unknown channel")),
            };
            Message::Hello { node, channel, volume_set: c.string()?, generation: c.u64()? }
        }
        T_WELCOME => Message::Welcome { node: c.string()?, generation: c.u64()? },
        T_REFUSED => Message::Refused { reason: c.string()? },
        T_UPDATE => {
            let volume = c.string()?;
            let seq = c.u64()?;
            let offset = c.u64()?;
            let op = match c.u8()? {
                1 => UpdateOp::Write,
                2 => UpdateOp::Trim,
                3 => UpdateOp::Zero,
                _ => return Err(c.err("unknown update op")),
            };
            let flags = c.u8()?;
            let length = c.u64()?;
            let data = c.bytes()?;
            let consistent = match op {
                UpdateOp::Write => data.len() as u64 == length,
                UpdateOp::Trim | UpdateOp::Zero => data.is_empty(),
            };
            if !consistent {
                return Err(c.err("data length does not match the update"));
            }
            if offset.checked_add(length).is_none() {
                return Err(c.err("offset + length overflows"));
            }
            Message::Update { volume, seq, offset, op, flags, length, data }
        }
        T_ACK => Message::Ack { volume: c.string()?, seq: c.u64()? },
        T_NACK => Message::Nack { volume: c.string()?, seq: c.u64()?, errno: c.u32()?, message: c.string()? },
        T_FLUSH => Message::Flush { token: c.u64()? },
        T_FLUSH_ACK => Message::FlushAck { token: c.u64()?, ok: c.bool()?, message: c.string()? },
        T_RESYNC => Message::ResyncData { volume: c.string()?, token: c.u64()?, offset: c.u64()?, data: c.bytes()? },
        T_RESYNC_ACK => Message::ResyncAck { token: c.u64()?, ok: c.bool()?, message: c.string()? },
        T_HEARTBEAT => Message::Heartbeat { nonce: c.u64()? },
        T_HEARTBEAT_ACK => Message::HeartbeatAck { nonce: c.u64()? },
        T_REQUEST => Message::Request { id: c.u64()?, body: c.long_string()? },
        T_RESPONSE => Message::Response { id: c.u64()?, body: c.long_string()? },
        _ => unreachable!("type checked above"),
    };
    c.end()?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg() -> impl Strategy<Value = Message> {
        let s = "[a-zA-Z0-9_ -]{0,20}";
        let data = proptest::collection::vec(any::<u8>(), 0..300);
        prop_oneof![
            (s, any::<bool>(), s, any::<u64>()).prop_map(|(node, c, volume_set, generation)| Message::Hello {
                node,
                channel: if c { Channel::Control } else { Channel::Data },
                volume_set,
                generation
            }),
            (s, any::<u64>()).prop_map(|(node, generation)| Message::Welcome { node, generation }),
            s.prop_map(|reason| Message::Refused { reason }),
            (s, any::<u64>(), 0u64..1 << 40, data.clone(), any::<u8>()).prop_map(
                |(volume, seq, offset, data, flags)| {
                    Message::Update { volume, seq, offset, op: UpdateOp::Write, flags, length: data.len() as u64, data }
                }
            ),
            (s, any::<u64>(), 0u64..1 << 40, 0u64..1 << 30).prop_map(|(volume, seq, offset, length)| Message::Update {
                volume,
                seq,
                offset,
                op: UpdateOp::Zero,
                flags: UPDATE_FLAG_MAY_TRIM,
                length,
                data: vec![]
            }),
            (s, any::<u64>()).prop_map(|(volume, seq)| Message::Ack { volume, seq }),
            (s, any::<u64>(), any::<u32>(), s).prop_map(|(volume, seq, errno, message)| Message::Nack {
                volume,
                seq,
                errno,
                message
            }),
            any::<u64>().prop_map(|token| Message::Flush { token }),
            (any::<u64>(), any::<bool>(), s).prop_map(|(token, ok, message)| Message::FlushAck { token, ok, message }),
            (s, any::<u64>(), any::<u64>(), data).prop_map(|(volume, token, offset, data)| Message::ResyncData {
                volume,
                token,
                offset,
                data
            }),
            any::<u64>().prop_map(|nonce| Message::Heartbeat { nonce }),
            (any::<u64>(), "\\PC{0,100}").prop_map(|(id, body)| Message::Request { id, body }),
        ]
    }

    fn frame(m: &Message) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode(m, &mut b);
        b.to_vec()
    }

    proptest! {
        #[test]
        fn roundtrip_and_incremental(m in msg()) {
            let f = frame(&m);
            for cut in 0..f.len() {
                prop_assert_eq!(decode(&f[..cut]), Ok(None));
            }
            prop_assert_eq!(decode(&f), Ok(Some((m.clone(), f.len()))));
        }

        /// Any single flipped bit is caught: by the magic, the length, the version or the CRC.
        /// Nothing corrupted ever decodes as a message.
        #[test]
        fn any_bit_flip_is_rejected(m in msg(), bit in any::<prop::sample::Index>()) {
            let mut f = frame(&m);
            let i = bit.index(f.len() * 8);
            f[i / 8] ^= 1 << (i % 8);
            match decode(&f) {
                Ok(Some(_)) => prop_assert!(false, "corrupted frame decoded"),
                Ok(None) => prop_assert!((8..12).contains(&(i / 8)), "only a grown length field may wait for more bytes"),
                Err(_) => {}
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn direct_encoders_match_the_message_encoder() {
        let data = vec![7u8; 100];
        let mut a = BytesMut::new();
        encode_update(&mut a, "v", 3, 4096, UpdateOp::Write, UPDATE_FLAG_FUA, 100, &data);
        let m = Message::Update {
            volume: "v".into(),
            seq: 3,
            offset: 4096,
            op: UpdateOp::Write,
            flags: UPDATE_FLAG_FUA,
            length: 100,
            data: data.clone(),
        };
        assert_eq!(a.to_vec(), frame(&m));
        let mut b = BytesMut::new();
        encode_resync(&mut b, "v", 9, 0, &data);
        assert_eq!(b.to_vec(), frame(&Message::ResyncData { volume: "v".into(), token: 9, offset: 0, data }));
    }

    #[test]
    fn version_mismatch_is_named() {
        let mut b = BytesMut::new();
        let hello = Message::Hello { node: "a".into(), channel: Channel::Data, volume_set: "vs".into(), generation: 1 };
        encode_with_version(&hello, 9, &mut b);
        assert_eq!(peek_version(&b), Some(9));
        let e = decode(&b).unwrap_err();
        assert_eq!(e, FrameError::Version { got: 9 });
        assert!(e.to_string().contains("version 9") && e.to_string().contains("version 1"));
    }

    #[test]
    fn oversize_and_inconsistent_frames_are_rejected() {
        let mut f = frame(&Message::Flush { token: 1 });
        f[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        assert_eq!(decode(&f), Err(FrameError::TooLarge(MAX_PAYLOAD + 1)));
        // An update whose data does not match its length is malformed even with a good CRC.
        let m = Message::Update {
            volume: "v".into(),
            seq: 1,
            offset: 0,
            op: UpdateOp::Trim,
            flags: 0,
            length: 4096,
            data: vec![1, 2, 3],
        };
        assert!(matches!(decode(&frame(&m)), Err(FrameError::Malformed { what: "update", .. })));
        assert_eq!(decode(b"XXXX"), Err(FrameError::BadMagic(u32::from_be_bytes(*b"XXXX"))));
    }
}
