//! Fixed-newstyle negotiation: greeting, client flags, option frames, option replies.
//!
//! An option arrives in two steps: [`parse_option`] cuts a whole frame off the stream (a bad
//! magic or an oversize frame is fatal), then [`decode_option`] interprets its payload. A
//! payload that does not decode is *not* fatal: the server answers `NBD_REP_ERR_INVALID` and
//! negotiation continues, as the protocol asks.

use bytes::{BufMut, BytesMut};

use crate::consts::*;
use crate::{Parsed, ProtoError, Reader};

/// Length of the server greeting: NBDMAGIC, IHAVEOPT, handshake flags.
pub const GREETING_LEN: usize = 18;

/// Largest option payload accepted; a bigger one closes the connection (a DoS guard: the
/// largest legitimate option, SET_META_CONTEXT with a few queries, is far smaller).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

pub fn encode_greeting(buf: &mut BytesMut) {
    buf.put_u64(NBDMAGIC);
    buf.put_u64(IHAVEOPT);
    buf.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
}

/// What the client told us in its flags word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientFlags {
    pub no_zeroes: bool,
}

/// Parse the client's 32-bit flags. Unknown bits, or a client that is not fixed-newstyle,
/// end the negotiation (the protocol requires closing on unknown client flags; we serve only
/// fixed-newstyle clients, which every maintained client is).
pub fn parse_client_flags(buf: &[u8]) -> Parsed<ClientFlags> {
    let mut r = Reader::new(buf);
    let Some(flags) = r.u32() else { return Ok(None) };
    if flags & !CLIENT_KNOWN_FLAGS != 0 {
        return Err(ProtoError::UnknownClientFlags(flags));
    }
    if flags & CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(ProtoError::NotFixedNewstyle);
    }
    Ok(Some((ClientFlags { no_zeroes: flags & CLIENT_NO_ZEROES != 0 }, 4)))
}

/// One option frame, payload not yet interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawOption {
    pub code: u32,
    pub data: Vec<u8>,
}

/// Cut one option frame off the front of `buf`.
pub fn parse_option(buf: &[u8]) -> Parsed<RawOption> {
    let mut r = Reader::new(buf);
    let Some(magic) = r.u64() else { return Ok(None) };
    if magic != IHAVEOPT {
        return Err(ProtoError::BadOptionMagic(magic));
    }
    let (Some(code), Some(len)) = (r.u32(), r.u32()) else { return Ok(None) };
    if len > MAX_OPTION_LEN {
        return Err(ProtoError::OptionTooLong { code, len, max: MAX_OPTION_LEN });
    }
    let Some(data) = r.bytes(len as usize) else { return Ok(None) };
    Ok(Some((RawOption { code, data: data.to_vec() }, r.pos())))
}

/// Encode an option frame (client side; used by tests and tools).
pub fn encode_option(buf: &mut BytesMut, code: u32, data: &[u8]) {
    buf.put_u64(IHAVEOPT);
    buf.put_u32(code);
    buf.put_u32(data.len() as u32);
    buf.put_slice(data);
}

/// Payload of NBD_OPT_INFO and NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

/// Payload of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

/// An option with its payload interpreted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionRequest {
    ExportName(String),
    Abort,
    List,
    StartTls,
    Info(InfoRequest),
    Go(InfoRequest),
    StructuredReply,
    ListMetaContext(MetaContextRequest),
    SetMetaContext(MetaContextRequest),
    Unknown(u32),
}

/// Why an option's payload was refused; the text goes into the `ERR_INVALID` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidOption(pub &'static str);

/// Interpret an option's payload.
pub fn decode_option(opt: &RawOption) -> Result<OptionRequest, InvalidOption> {
    let data = &opt.data[..];
    let no_payload = |req| if data.is_empty() { Ok(req) } else { Err(InvalidOption("option takes no payload")) };
    match opt.code {
        OPT_EXPORT_NAME => Ok(OptionRequest::ExportName(string(data)?.to_owned())),
        OPT_ABORT => Ok(OptionRequest::Abort),
        OPT_LIST => no_payload(OptionRequest::List),
        OPT_STARTTLS => no_payload(OptionRequest::StartTls),
        OPT_STRUCTURED_REPLY => no_payload(OptionRequest::StructuredReply),
        OPT_INFO => Ok(OptionRequest::Info(decode_info(data)?)),
        OPT_GO => Ok(OptionRequest::Go(decode_info(data)?)),
        OPT_LIST_META_CONTEXT => Ok(OptionRequest::ListMetaContext(decode_meta(data)?)),
        OPT_SET_META_CONTEXT => Ok(OptionRequest::SetMetaContext(decode_meta(data)?)),
        other => Ok(OptionRequest::Unknown(other)),
    }
}

fn string(b: &[u8]) -> Result<&str, InvalidOption> {
    if b.len() > MAX_STRING_LEN {
        return Err(InvalidOption("string longer than 4096 bytes"));
    }
    std::str::from_utf8(b).map_err(|_| InvalidOption("string is not UTF-8"))
}

fn prefixed_string<'a>(r: &mut Reader<'a>) -> Result<&'a str, InvalidOption> {
    let len = r.u32().ok_or(InvalidOption("truncated string length"))?;
    let bytes = r.bytes(len as usize).ok_or(InvalidOption("string length exceeds option"))?;
    string(bytes)
}

fn decode_info(data: &[u8]) -> Result<InfoRequest, InvalidOption> {
    let mut r = Reader::new(data);
    let name = prefixed_string(&mut r)?.to_owned();
    let count = r.u16().ok_or(InvalidOption("truncated information request count"))?;
    if r.remaining() != count as usize * 2 {
        return Err(InvalidOption("information request count does not match option length"));
    }
    let requests = (0..count).filter_map(|_| r.u16()).collect();
    Ok(InfoRequest { name, requests })
}

fn decode_meta(data: &[u8]) -> Result<MetaContextRequest, InvalidOption> {
    let mut r = Reader::new(data);
    let export = prefixed_string(&mut r)?.to_owned();
    let count = r.u32().ok_or(InvalidOption("truncated query count"))?;
    // Each query takes at least its 4-byte length, which bounds `count` by the payload.
    if count as usize > r.remaining() / 4 {
        return Err(InvalidOption("query count exceeds option length"));
    }
    let mut queries = Vec::with_capacity(count as usize);
    for _ in 0..count {
        queries.push(prefixed_string(&mut r)?.to_owned());
    }
    if r.remaining() != 0 {
        return Err(InvalidOption("trailing bytes after queries"));
    }
    Ok(MetaContextRequest { export, queries })
}

/// Client-side encoders for INFO/GO and META_CONTEXT payloads (tests, tools, fuzz seeds).
pub fn encode_info_payload(name: &str, requests: &[u16]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(name.len() as u32);
    b.put_slice(name.as_bytes());
    b.put_u16(requests.len() as u16);
    for r in requests {
        b.put_u16(*r);
    }
    b.to_vec()
}

pub fn encode_meta_payload(export: &str, queries: &[&str]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(export.len() as u32);
    b.put_slice(export.as_bytes());
    b.put_u32(queries.len() as u32);
    for q in queries {
        b.put_u32(q.len() as u32);
        b.put_slice(q.as_bytes());
    }
    b.to_vec()
}

/// Generic option reply frame.
pub fn encode_option_reply(buf: &mut BytesMut, code: u32, reply_type: u32, data: &[u8]) {
    buf.put_u64(OPT_REPLY_MAGIC);
    buf.put_u32(code);
    buf.put_u32(reply_type);
    buf.put_u32(data.len() as u32);
    buf.put_slice(data);
}

/// An error reply; the message is for humans (clients print it).
pub fn encode_error_reply(buf: &mut BytesMut, code: u32, err: u32, message: &str) {
    encode_option_reply(buf, code, err, message.as_bytes());
}

pub fn encode_ack(buf: &mut BytesMut, code: u32) {
    encode_option_reply(buf, code, REP_ACK, &[]);
}

/// One NBD_REP_SERVER entry of a LIST reply.
pub fn encode_server_entry(buf: &mut BytesMut, name: &str, description: &str) {
    let mut d = Vec::with_capacity(4 + name.len() + description.len());
    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(description.as_bytes());
    encode_option_reply(buf, OPT_LIST, REP_SERVER, &d);
}

/// Information replies to INFO/GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Info<'a> {
    Export { size: u64, flags: u16 },
    Name(&'a str),
    Description(&'a str),
    BlockSize { minimum: u32, preferred: u32, maximum: u32 },
}

pub fn encode_info(buf: &mut BytesMut, code: u32, info: &Info<'_>) {
    let mut d = BytesMut::new();
    match info {
        Info::Export { size, flags } => {
            d.put_u16(INFO_EXPORT);
            d.put_u64(*size);
            d.put_u16(*flags);
        }
        Info::Name(n) => {
            d.put_u16(INFO_NAME);
            d.put_slice(n.as_bytes());
        }
        Info::Description(s) => {
            d.put_u16(INFO_DESCRIPTION);
            d.put_slice(s.as_bytes());
        }
        Info::BlockSize { minimum, preferred, maximum } => {
            d.put_u16(INFO_BLOCK_SIZE);
            d.put_u32(*minimum);
            d.put_u32(*preferred);
            d.put_u32(*maximum);
        }
    }
    encode_option_reply(buf, code, REP_INFO, &d);
}

pub fn encode_meta_context(buf: &mut BytesMut, code: u32, id: u32, name: &str) {
    let mut d = Vec::with_capacity(4 + name.len());
    d.extend_from_slice(&id.to_be_bytes());
    d.extend_from_slice(name.as_bytes());
    encode_option_reply(buf, code, REP_META_CONTEXT, &d);
}

/// The reply to NBD_OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zero bytes.
pub fn encode_export_name_reply(buf: &mut BytesMut, size: u64, flags: u16, no_zeroes: bool) {
    buf.put_u64(size);
    buf.put_u16(flags);
    if !no_zeroes {
        buf.put_bytes(0, 124);
    }
}

/// An option reply as seen by a client (tests and tools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    pub code: u32,
    pub reply_type: u32,
    pub data: Vec<u8>,
}

pub fn parse_option_reply(buf: &[u8]) -> Parsed<OptionReply> {
    let mut r = Reader::new(buf);
    let Some(magic) = r.u64() else { return Ok(None) };
    if magic != OPT_REPLY_MAGIC {
        return Err(ProtoError::MalformedReply("bad option reply magic"));
    }
    let (Some(code), Some(reply_type), Some(len)) = (r.u32(), r.u32(), r.u32()) else {
        return Ok(None);
    };
    let Some(data) = r.bytes(len as usize) else { return Ok(None) };
    Ok(Some((OptionReply { code, reply_type, data: data.to_vec() }, r.pos())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(code: u32, data: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_option(&mut b, code, data);
        b.to_vec()
    }

    #[test]
    fn greeting_layout() {
        let mut b = BytesMut::new();
        encode_greeting(&mut b);
        assert_eq!(b.len(), GREETING_LEN);
        assert_eq!(&b[..8], b"NBDMAGIC");
        assert_eq!(&b[8..16], b"IHAVEOPT");
        assert_eq!(&b[16..], &[0, 3]);
    }

    #[test]
    fn client_flags() {
        assert_eq!(parse_client_flags(&[0, 0, 0]), Ok(None));
        assert_eq!(parse_client_flags(&[0, 0, 0, 3]), Ok(Some((ClientFlags { no_zeroes: true }, 4))));
        assert_eq!(parse_client_flags(&[0, 0, 0, 1]), Ok(Some((ClientFlags { no_zeroes: false }, 4))));
        assert_eq!(parse_client_flags(&[0, 0, 0, 4]), Err(ProtoError::UnknownClientFlags(4)));
        assert_eq!(parse_client_flags(&[0, 0, 0, 0]), Err(ProtoError::NotFixedNewstyle));
    }

    #[test]
    fn option_frames() {
        let f = frame(OPT_GO, &encode_info_payload("vol0", &[INFO_BLOCK_SIZE]));
        for cut in 0..f.len() {
            assert_eq!(parse_option(&f[..cut]), Ok(None), "cut at {cut}");
        }
        let (raw, used) = parse_option(&f).unwrap().unwrap();
        assert_eq!(used, f.len());
        assert_eq!(
            decode_option(&raw),
            Ok(OptionRequest::Go(InfoRequest { name: "vol0".into(), requests: vec![INFO_BLOCK_SIZE] }))
        );
        let mut bad = f.clone();
        bad[0] ^= 1;
        assert!(matches!(parse_option(&bad), Err(ProtoError::BadOptionMagic(_))));
        let mut huge = frame(99, &[]);
        huge[12..16].copy_from_slice(&(MAX_OPTION_LEN + 1).to_be_bytes());
        assert!(matches!(parse_option(&huge), Err(ProtoError::OptionTooLong { .. })));
    }

    #[test]
    fn invalid_payloads_are_not_fatal() {
        let raw = |code, data: &[u8]| RawOption { code, data: data.to_vec() };
        assert!(decode_option(&raw(OPT_LIST, &[1])).is_err());
        assert!(decode_option(&raw(OPT_STRUCTURED_REPLY, &[0])).is_err());
        assert!(decode_option(&raw(OPT_GO, &[0, 0, 0, 9, b'a'])).is_err());
        // Request count claims 2 entries but the option holds one.
        let mut p = encode_info_payload("x", &[1]);
        p[5..7].copy_from_slice(&2u16.to_be_bytes());
        assert!(decode_option(&raw(OPT_INFO, &p)).is_err());
        // Query count far beyond the payload must not allocate or loop.
        let mut m = encode_meta_payload("x", &[]);
        m[5..9].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_option(&raw(OPT_SET_META_CONTEXT, &m)).is_err());
        assert!(decode_option(&raw(OPT_EXPORT_NAME, &[0xff, 0xfe])).is_err());
        assert_eq!(decode_option(&raw(4242, &[1, 2, 3])), Ok(OptionRequest::Unknown(4242)));
    }

    proptest! {
        #[test]
        fn meta_roundtrip(export in "[a-z0-9:_]{0,40}", queries in proptest::collection::vec("[a-z:_]{0,30}", 0..8)) {
            let qs: Vec<&str> = queries.iter().map(|s| s.as_str()).collect();
            let f = frame(OPT_SET_META_CONTEXT, &encode_meta_payload(&export, &qs));
            let (raw, _) = parse_option(&f).unwrap().unwrap();
            prop_assert_eq!(
                decode_option(&raw),
                Ok(OptionRequest::SetMetaContext(MetaContextRequest { export: export.clone(), queries: queries.clone() }))
            );
        }

        #[test]
        fn info_roundtrip(name in "\\PC{0,60}", reqs in proptest::collection::vec(any::<u16>(), 0..10)) {
            let f = frame(OPT_INFO, &encode_info_payload(&name, &reqs));
            let (raw, used) = parse_option(&f).unwrap().unwrap();
            prop_assert_eq!(used, f.len());
            prop_assert_eq!(decode_option(&raw), Ok(OptionRequest::Info(InfoRequest { name: name.clone(), requests: reqs.clone() })));
        }

        #[test]
        fn reply_roundtrip(code in any::<u32>(), ty in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = BytesMut::new();
            encode_option_reply(&mut b, code, ty, &data);
            let (rep, used) = parse_option_reply(&b).unwrap().unwrap();
            prop_assert_eq!(used, b.len());
            prop_assert_eq!(rep, OptionReply { code, reply_type: ty, data: data.clone() });
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_client_flags(&bytes);
            if let Ok(Some((raw, used))) = parse_option(&bytes) {
                prop_assert!(used <= bytes.len());
                let _ = decode_option(&raw);
            }
            for code in 0..12 {
                let _ = decode_option(&RawOption { code, data: bytes.clone() });
            }
        }
    }
}
