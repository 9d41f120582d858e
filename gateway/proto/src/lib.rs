//! The NBD wire protocol as pure functions over byte buffers: no sockets, no clocks.
//!
//! Layout:
//! * [`consts`]: the numbers from the protocol document;
//! * [`handshake`]: the server greeting, client flags, option frames and option replies;
//! * [`transmission`]: request headers and simple/structured replies.
//!
//! Parsers take a byte slice and answer `Ok(None)` when more bytes are needed, `Ok(Some((value,
//! consumed)))` when a whole frame is present, and `Err` when the bytes can never become a
//! valid frame (the caller then closes the connection). They never panic on any input; the
//! fuzz targets under `fuzz/` and the property tests hold them to that.
//!
//! The server (`gateway::server`) drives these from tokio; tests and fuzzers drive them
//! directly.

pub mod consts;
pub mod handshake;
pub mod transmission;

/// A frame that can never be valid: the connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("bad option magic {0:#018x} (expected IHAVEOPT)")]
    BadOptionMagic(u64),
    #[error("option {code} carries {len} bytes, more than the {max}-byte limit")]
    OptionTooLong { code: u32, len: u32, max: u32 },
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("client did not set FIXED_NEWSTYLE")]
    NotFixedNewstyle,
    #[error("bad request magic {0:#010x}")]
    BadRequestMagic(u32),
    #[error("bad reply magic {0:#010x}")]
    BadReplyMagic(u32),
    #[error("malformed reply: {0}")]
    MalformedReply(&'static str),
}

/// Result of an incremental parse: `None` means "need more bytes".
pub type Parsed<T> = Result<Option<(T, usize)>, ProtoError>;

/// Big-endian readers over a slice that never panic: they return `None` past the end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.bytes(8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_be_bytes(a)
        })
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
}
