//! The option-haggling phase as a pure state machine: each option in, replies and a verdict
//! out. No sockets: the connection code feeds it parsed options and writes what it returns.

use std::sync::Arc;

use bytes::BytesMut;
use nbd_proto::consts::*;
use nbd_proto::handshake::{
    decode_option, encode_ack, encode_error_reply, encode_export_name_reply, encode_info, encode_meta_context,
    encode_server_entry, Info, InfoRequest, MetaContextRequest, OptionRequest, RawOption,
};

use crate::volume::Volume;

/// Block size constraints advertised with NBD_INFO_BLOCK_SIZE.
pub const MIN_BLOCK: u32 = 1;
pub const PREFERRED_BLOCK: u32 = 4096;
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

/// The id of `base:allocation` in BLOCK_STATUS replies.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// The exports a connection may choose from.
pub trait Catalog {
    fn lookup(&self, name: &str) -> Option<Arc<Volume>>;
    /// Every export, in configuration order; the first is the default export (name "").
    fn all(&self) -> Vec<Arc<Volume>>;
}

/// What the transmission phase needs to know from negotiation.
#[derive(Clone)]
pub struct Selected {
    pub volume: Arc<Volume>,
    pub flags: u16,
    pub structured: bool,
    pub base_allocation: bool,
}

pub enum Verdict {
    /// Keep negotiating.
    Continue,
    /// Close the connection after writing the replies (ABORT, or an EXPORT_NAME that named
    /// nothing, where the protocol leaves no way to say so).
    Close(String),
    /// Enter transmission with this export.
    Transmit(Selected),
}

pub struct Negotiation<C> {
    catalog: C,
    no_zeroes: bool,
    structured: bool,
    /// Export the last SET_META_CONTEXT named, and whether it selected `base:allocation`.
    meta: Option<(String, bool)>,
}

/// Transmission flags for an export, given what was negotiated.
pub fn transmission_flags(volume: &Volume, structured: bool) -> u16 {
    let caps = volume.capabilities();
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA | TFLAG_SEND_CACHE;
    if volume.host_write_refusal().is_some() {
        f |= TFLAG_READ_ONLY;
    } else {
        // Zeroes are always accepted (emulated by writing zero buffers when the backend has
        // no native zeroing); FAST_ZERO then fails fast with ENOTSUP, as the protocol allows.
        f |= TFLAG_SEND_WRITE_ZEROES | TFLAG_SEND_FAST_ZERO;
        if caps.can_trim {
            f |= TFLAG_SEND_TRIM;
        }
    }
    if structured {
        f |= TFLAG_SEND_DF;
    }
    if caps.can_multi_conn {
        f |= TFLAG_CAN_MULTI_CONN;
    }
    f
}

impl<C: Catalog> Negotiation<C> {
    pub fn new(catalog: C, no_zeroes: bool) -> Self {
        Self { catalog, no_zeroes, structured: false, meta: None }
    }

    fn find(&self, name: &str) -> Option<Arc<Volume>> {
        if name.is_empty() {
            self.catalog.all().into_iter().next()
        } else {
            self.catalog.lookup(name)
        }
    }

    /// Handle one option, appending its replies to `out`.
    pub fn handle(&mut self, raw: &RawOption, out: &mut BytesMut) -> Verdict {
        let code = raw.code;
        let req = match decode_option(raw) {
            Ok(r) => r,
            Err(e) if code == OPT_EXPORT_NAME => return Verdict::Close(format!("EXPORT_NAME: {e}")),
            Err(e) => {
                encode_error_reply(out, code, REP_ERR_INVALID, e.0);
                return Verdict::Continue;
            }
        };
        match req {
            OptionRequest::ExportName(name) => match self.find(&name) {
                Some(volume) => {
                    let sel = self.select(volume, &name);
                    encode_export_name_reply(out, sel.volume.size(), sel.flags, self.no_zeroes);
                    Verdict::Transmit(sel)
                }
                None => Verdict::Close(format!("EXPORT_NAME for unknown export `{name}`")),
            },
            OptionRequest::Abort => {
                encode_ack(out, code);
                Verdict::Close("client sent ABORT".into())
            }
            OptionRequest::List => {
                for v in self.catalog.all() {
                    encode_server_entry(out, v.name(), v.description());
                }
                encode_ack(out, code);
                Verdict::Continue
            }
            OptionRequest::StartTls => {
                encode_error_reply(out, code, REP_ERR_UNSUP, "TLS is not supported by this server");
                Verdict::Continue
            }
            OptionRequest::StructuredReply => {
                self.structured = true;
                encode_ack(out, code);
                Verdict::Continue
            }
            OptionRequest::Info(req) => {
                self.info(code, &req, out);
                Verdict::Continue
            }
            OptionRequest::Go(req) => match self.info(code, &req, out) {
                Some(volume) => Verdict::Transmit(self.select(volume, &req.name)),
                None => Verdict::Continue,
            },
            OptionRequest::ListMetaContext(req) => {
                self.meta_context(code, &req, false, out);
                Verdict::Continue
            }
            OptionRequest::SetMetaContext(req) => {
                self.meta_context(code, &req, true, out);
                Verdict::Continue
            }
            OptionRequest::Unknown(c) => {
                encode_error_reply(out, c, REP_ERR_UNSUP, &format!("option {c} is not supported"));
                Verdict::Continue
            }
        }
    }

    fn select(&self, volume: Arc<Volume>, name: &str) -> Selected {
        let base_allocation = self.structured && matches!(&self.meta, Some((n, true)) if n == name);
        Selected {
            flags: transmission_flags(&volume, self.structured),
            volume,
            structured: self.structured,
            base_allocation,
        }
    }

    /// INFO and GO share their replies; `Some` when the export exists and ACK was sent.
    fn info(&self, code: u32, req: &InfoRequest, out: &mut BytesMut) -> Option<Arc<Volume>> {
        let Some(volume) = self.find(&req.name) else {
            encode_error_reply(out, code, REP_ERR_UNKNOWN, &format!("export `{}` does not exist", req.name));
            return None;
        };
        let flags = transmission_flags(&volume, self.structured);
        encode_info(out, code, &Info::Export { size: volume.size(), flags });
        if req.requests.contains(&INFO_NAME) {
            encode_info(out, code, &Info::Name(volume.name()));
        }
        if req.requests.contains(&INFO_DESCRIPTION) && !volume.description().is_empty() {
            encode_info(out, code, &Info::Description(volume.description()));
        }
        // Always sent: it costs nothing and tells clients our preferred and maximum sizes.
        let block = Info::BlockSize { minimum: MIN_BLOCK, preferred: PREFERRED_BLOCK, maximum: MAX_PAYLOAD };
        encode_info(out, code, &block);
        encode_ack(out, code);
        Some(volume)
    }

    fn meta_context(&mut self, code: u32, req: &MetaContextRequest, set: bool, out: &mut BytesMut) {
        if set && !self.structured {
            encode_error_reply(out, code, REP_ERR_INVALID, "SET_META_CONTEXT needs STRUCTURED_REPLY first");
            return;
        }
        if self.find(&req.export).is_none() {
            encode_error_reply(out, code, REP_ERR_UNKNOWN, &format!("export `{}` does not exist", req.export));
            return;
        }
        let wanted = if req.queries.is_empty() {
            !set
        } else {
            req.queries.iter().any(|q| q == META_BASE_ALLOCATION || (!set && q == "base:"))
        };
        if wanted {
            encode_meta_context(out, code, BASE_ALLOCATION_ID, META_BASE_ALLOCATION);
        }
        if set {
            self.meta = Some((req.export.clone(), wanted));
        }
        encode_ack(out, code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_backend::memory::MemoryBackend;
    use nbd_proto::handshake::{encode_info_payload, encode_meta_payload, parse_option_reply, OptionReply};

    struct Two(Vec<Arc<Volume>>);
    impl Catalog for &Two {
        fn lookup(&self, name: &str) -> Option<Arc<Volume>> {
            self.0.iter().find(|v| v.name() == name).cloned()
        }
        fn all(&self) -> Vec<Arc<Volume>> {
            self.0.clone()
        }
    }

    fn catalog() -> Two {
        let v = |n: &str, ro| {
            Arc::new(Volume::new(n.into(), format!("{n} desc"), ro, Arc::new(MemoryBackend::new(1 << 20))))
        };
        Two(vec![v("a", false), v("ro", true)])
    }

    fn replies(mut b: &[u8]) -> Vec<OptionReply> {
        let mut out = Vec::new();
        while let Some((r, n)) = parse_option_reply(b).unwrap() {
            out.push(r);
            b = &b[n..];
        }
        assert!(b.is_empty());
        out
    }

    fn opt(code: u32, data: Vec<u8>) -> RawOption {
        RawOption { code, data }
    }

    #[test]
    fn go_sends_export_info_block_size_then_ack() {
        let c = catalog();
        let mut n = Negotiation::new(&c, true);
        let mut out = BytesMut::new();
        let v = n.handle(&opt(OPT_GO, encode_info_payload("a", &[INFO_NAME, INFO_DESCRIPTION])), &mut out);
        let Verdict::Transmit(sel) = v else { panic!("expected transmit") };
        assert!(!sel.structured && !sel.base_allocation);
        let r = replies(&out);
        let types: Vec<u16> =
            r.iter().filter(|r| r.reply_type == REP_INFO).map(|r| u16::from_be_bytes([r.data[0], r.data[1]])).collect();
        assert_eq!(types, vec![INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]);
        assert_eq!(r.last().unwrap().reply_type, REP_ACK);
        assert_eq!(sel.flags & TFLAG_SEND_DF, 0, "DF only with structured replies");
    }

    #[test]
    fn unknown_export_and_unknown_option_keep_negotiating() {
        let c = catalog();
        let mut n = Negotiation::new(&c, true);
        let mut out = BytesMut::new();
        assert!(matches!(n.handle(&opt(OPT_GO, encode_info_payload("nope", &[])), &mut out), Verdict::Continue));
        assert!(matches!(n.handle(&opt(77, vec![1, 2]), &mut out), Verdict::Continue));
        assert!(matches!(n.handle(&opt(OPT_LIST, vec![1]), &mut out), Verdict::Continue));
        let r = replies(&out);
        assert_eq!(
            r.iter().map(|r| r.reply_type).collect::<Vec<_>>(),
            vec![REP_ERR_UNKNOWN, REP_ERR_UNSUP, REP_ERR_INVALID]
        );
        assert!(matches!(n.handle(&opt(OPT_EXPORT_NAME, b"nope".to_vec()), &mut out), Verdict::Close(_)));
    }

    #[test]
    fn meta_context_needs_structured_and_matching_export() {
        let c = catalog();
        let mut n = Negotiation::new(&c, true);
        let mut out = BytesMut::new();
        n.handle(&opt(OPT_SET_META_CONTEXT, encode_meta_payload("a", &[META_BASE_ALLOCATION])), &mut out);
        assert_eq!(replies(&out)[0].reply_type, REP_ERR_INVALID);
        out.clear();
        n.handle(&opt(OPT_STRUCTURED_REPLY, vec![]), &mut out);
        n.handle(&opt(OPT_SET_META_CONTEXT, encode_meta_payload("a", &["x:y", META_BASE_ALLOCATION])), &mut out);
        let r = replies(&out);
        assert_eq!(r[1].reply_type, REP_META_CONTEXT);
        assert_eq!(&r[1].data[4..], META_BASE_ALLOCATION.as_bytes());
        // Selecting a different export than the one the contexts were set for drops them.
        let Verdict::Transmit(sel) = n.handle(&opt(OPT_GO, encode_info_payload("ro", &[])), &mut out) else { panic!() };
        assert!(sel.structured && !sel.base_allocation);
        assert_ne!(sel.flags & TFLAG_READ_ONLY, 0);
        assert_eq!(sel.flags & (TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES), 0);
        let Verdict::Transmit(sel) = n.handle(&opt(OPT_EXPORT_NAME, b"a".to_vec()), &mut out) else { panic!() };
        assert!(sel.base_allocation);
        assert_ne!(sel.flags & TFLAG_CAN_MULTI_CONN, 0);
    }

    #[test]
    fn list_meta_with_no_queries_lists_base_allocation() {
        let c = catalog();
        let mut n = Negotiation::new(&c, true);
        let mut out = BytesMut::new();
        n.handle(&opt(OPT_LIST_META_CONTEXT, encode_meta_payload("", &[])), &mut out);
        let r = replies(&out);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].reply_type, REP_META_CONTEXT);
    }
}
