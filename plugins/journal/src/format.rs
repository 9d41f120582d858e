//! The journal's on-disk format: encoding and parsing, from and to bytes, with no I/O.
//!
//! Everything here is pure: [`parse_record`] takes a byte slice and either returns a record
//! whose every byte was covered by a matching checksum, or says why not. It never panics and
//! never trusts a length before the checksum that covers it has matched, so arbitrary input
//! (a torn tail, a flipped bit, a file that is not a journal) yields an error, never a wrong
//! record. The layout is described in the crate documentation.

use std::fmt;

/// First bytes of a journal file.
pub const FILE_MAGIC: [u8; 8] = *b"GWJOURNL";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the file header.
pub const FILE_HEADER_LEN: usize = 32;
/// First bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"GWJR";
/// Size of a record's fixed header (up to and including the header checksum).
pub const RECORD_HEADER_LEN: usize = 44;
/// Size of the trailing record checksum.
pub const RECORD_TRAILER_LEN: usize = 4;
/// Longest volume name a record may carry (the NBD limit on export names).
pub const MAX_VOLUME_LEN: usize = 4096;
/// Most data one record may carry. NBD requests are far smaller (the gateway's limit is
/// 32 MiB); the bound keeps a reader from allocating absurd buffers for a damaged file.
pub const MAX_DATA_LEN: usize = 256 << 20;

/// Record kinds (byte 8 of a record).
pub const KIND_WRITE: u8 = 1;
pub const KIND_TRIM: u8 = 2;
pub const KIND_ZERO: u8 = 3;
pub const KIND_BOUNDARY: u8 = 16;
pub const KIND_SESSION: u8 = 17;

/// Record flags (byte 9 of a record).
pub const FLAG_FUA: u8 = 1 << 0;
pub const FLAG_MAY_TRIM: u8 = 1 << 1;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// `data` was written at `offset`.
    Write { offset: u64, data: &'a [u8], fua: bool },
    /// `offset..offset + length` was trimmed (reads as zeroes after replay).
    Trim { offset: u64, length: u64, fua: bool },
    /// `offset..offset + length` was zeroed.
    Zero { offset: u64, length: u64, may_trim: bool, fua: bool },
    /// The volume's updates up to and including the record's `seq` form consistency set
    /// `set_id`.
    Boundary { set_id: u64 },
    /// The journal was opened by a gateway (volume empty; `seq` is the session number).
    Session { started_unix: u64, pid: u64 },
}

/// One record. For updates `seq` is the volume's journal sequence number; for a boundary it
/// is the last sequence number in the set; for a session, the session number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub volume: &'a str,
    pub seq: u64,
    pub body: Body<'a>,
}

impl Record<'_> {
    pub fn kind_name(&self) -> &'static str {
        match self.body {
            Body::Write { .. } => "write",
            Body::Trim { .. } => "trim",
            Body::Zero { .. } => "zero",
            Body::Boundary { .. } => "boundary",
            Body::Session { .. } => "session",
        }
    }

    /// Whether this record changes a volume's contents.
    pub fn is_update(&self) -> bool {
        matches!(self.body, Body::Write { .. } | Body::Trim { .. } | Body::Zero { .. })
    }

    /// (offset, length) of the range an update touches.
    pub fn range(&self) -> Option<(u64, u64)> {
        match self.body {
            Body::Write { offset, data, .. } => Some((offset, data.len() as u64)),
            Body::Trim { offset, length, .. } | Body::Zero { offset, length, .. } => Some((offset, length)),
            _ => None,
        }
    }

    /// The encoded size of this record.
    pub fn encoded_len(&self) -> usize {
        let data = match self.body {
            Body::Write { data, .. } => data.len(),
            _ => 0,
        };
        RECORD_HEADER_LEN + self.volume.len() + data + RECORD_TRAILER_LEN
    }
}

/// Why bytes are not a valid header or record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the header or record needs: at the end of a file, a torn write.
    Truncated { needed: usize, available: usize },
    /// The file does not start with [`FILE_MAGIC`].
    NotAJournal,
    /// A journal of a format version this code does not read.
    UnsupportedVersion(u32),
    /// The file header's fields are inconsistent (wrong size, nonzero reserved bytes).
    BadFileHeader(&'static str),
    /// A record does not start with [`RECORD_MAGIC`].
    BadMagic,
    /// The record header's checksum does not match: its lengths cannot be trusted.
    HeaderChecksum { stored: u32, computed: u32 },
    /// The record's checksum does not match its contents.
    RecordChecksum { stored: u32, computed: u32 },
    /// Checksummed fields that contradict each other or the format (a writer bug, or a
    /// record crafted to pass the checksum).
    Invalid(String),
}

impl ParseError {
    /// Whether more bytes could have made this a valid record (a torn tail).
    pub fn is_truncation(&self) -> bool {
        matches!(self, ParseError::Truncated { .. })
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated { needed, available } => {
                write!(f, "truncated: {available} of {needed} bytes present")
            }
            ParseError::NotAJournal => write!(f, "not a gateway journal (bad file magic)"),
            ParseError::UnsupportedVersion(v) => {
                write!(f, "journal format version {v} is not supported (this build reads version {FORMAT_VERSION})")
            }
            ParseError::BadFileHeader(why) => write!(f, "bad file header: {why}"),
            ParseError::BadMagic => write!(f, "bad record magic"),
            ParseError::HeaderChecksum { stored, computed } => {
                write!(f, "record header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            ParseError::RecordChecksum { stored, computed } => {
                write!(f, "record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")
            }
            ParseError::Invalid(why) => write!(f, "invalid record: {why}"),
        }
    }
}

impl std::error::Error for ParseError {}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The file header of a new journal.
pub fn encode_file_header() -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[0..8].copy_from_slice(&FILE_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(FILE_HEADER_LEN as u32).to_le_bytes());
    // 16..28: flags and reserved, zero.
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Check a file header (the first [`FILE_HEADER_LEN`] bytes of `b`); returns its version.
pub fn parse_file_header(b: &[u8]) -> Result<u32, ParseError> {
    // A file that does not even start like a journal is reported as such, however short.
    let n = b.len().min(FILE_MAGIC.len());
    if b[..n] != FILE_MAGIC[..n] {
        return Err(ParseError::NotAJournal);
    }
    if b.len() < FILE_HEADER_LEN {
        return Err(ParseError::Truncated { needed: FILE_HEADER_LEN, available: b.len() });
    }
    let stored = u32_at(b, 28);
    let computed = crc32c::crc32c(&b[..28]);
    if stored != computed {
        return Err(ParseError::BadFileHeader("checksum mismatch"));
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION {
        return Err(ParseError::UnsupportedVersion(version));
    }
    if u32_at(b, 12) as usize != FILE_HEADER_LEN {
        return Err(ParseError::BadFileHeader("unexpected header length"));
    }
    if b[16..28].iter().any(|&x| x != 0) {
        return Err(ParseError::BadFileHeader("unknown flags set"));
    }
    Ok(version)
}

/// Append the encoding of `r` to `out`. Fails (appending nothing) only for records the
/// format cannot hold: a volume name over [`MAX_VOLUME_LEN`] bytes, data over
/// [`MAX_DATA_LEN`], or a range whose end overflows.
pub fn encode_record(r: &Record<'_>, out: &mut Vec<u8>) -> Result<(), String> {
    if r.volume.len() > MAX_VOLUME_LEN {
        return Err(format!("volume name of {} bytes (at most {MAX_VOLUME_LEN})", r.volume.len()));
    }
    let (kind, flags, a, b, data): (u8, u8, u64, u64, &[u8]) = match r.body {
        Body::Write { offset, data, fua } => (KIND_WRITE, fua_flag(fua), offset, data.len() as u64, data),
        Body::Trim { offset, length, fua } => (KIND_TRIM, fua_flag(fua), offset, length, &[]),
        Body::Zero { offset, length, may_trim, fua } => {
            (KIND_ZERO, fua_flag(fua) | if may_trim { FLAG_MAY_TRIM } else { 0 }, offset, length, &[])
        }
        Body::Boundary { set_id } => (KIND_BOUNDARY, 0, set_id, 0, &[]),
        Body::Session { started_unix, pid } => (KIND_SESSION, 0, started_unix, pid, &[]),
    };
    if data.len() > MAX_DATA_LEN {
        return Err(format!("{} bytes of data in one record (at most {MAX_DATA_LEN})", data.len()));
    }
    if r.is_update() && a.checked_add(b).is_none() {
        return Err(format!("range {a}+{b} overflows"));
    }
    let total = r.encoded_len();
    let start = out.len();
    out.reserve(total);
    out.extend_from_slice(&RECORD_MAGIC);
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(r.volume.len() as u16).to_le_bytes());
    out.extend_from_slice(&r.seq.to_le_bytes());
    out.extend_from_slice(&a.to_le_bytes());
    out.extend_from_slice(&b.to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let hcrc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&hcrc.to_le_bytes());
    out.extend_from_slice(r.volume.as_bytes());
    out.extend_from_slice(data);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, total);
    Ok(())
}

fn fua_flag(fua: bool) -> u8 {
    if fua {
        FLAG_FUA
    } else {
        0
    }
}

/// A record header whose checksum matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Bytes in the whole record, header to trailing checksum.
    pub total_len: usize,
    pub kind: u8,
    pub flags: u8,
    pub volume_len: usize,
    pub seq: u64,
    pub a: u64,
    pub b: u64,
    pub data_len: usize,
}

/// Check the fixed header at the start of `b` (the rest of the record need not be there);
/// after this the record's length can be trusted.
pub fn parse_record_header(b: &[u8]) -> Result<RecordHeader, ParseError> {
    // Check the magic in whatever bytes there are, so garbage is not mistaken for a torn tail.
    let n = b.len().min(RECORD_MAGIC.len());
    if b[..n] != RECORD_MAGIC[..n] {
        return Err(ParseError::BadMagic);
    }
    if b.len() < RECORD_HEADER_LEN {
        return Err(ParseError::Truncated { needed: RECORD_HEADER_LEN, available: b.len() });
    }
    let stored = u32_at(b, 40);
    let computed = crc32c::crc32c(&b[..40]);
    if stored != computed {
        return Err(ParseError::HeaderChecksum { stored, computed });
    }
    let h = RecordHeader {
        total_len: u32_at(b, 4) as usize,
        kind: b[8],
        flags: b[9],
        volume_len: u16_at(b, 10) as usize,
        seq: u64_at(b, 12),
        a: u64_at(b, 20),
        b: u64_at(b, 28),
        data_len: u32_at(b, 36) as usize,
    };
    if h.volume_len > MAX_VOLUME_LEN {
        return Err(ParseError::Invalid(format!("volume name of {} bytes", h.volume_len)));
    }
    if h.data_len > MAX_DATA_LEN {
        return Err(ParseError::Invalid(format!("{} bytes of data", h.data_len)));
    }
    let expect = RECORD_HEADER_LEN + h.volume_len + h.data_len + RECORD_TRAILER_LEN;
    if h.total_len != expect {
        return Err(ParseError::Invalid(format!("length {} but fields add up to {expect}", h.total_len)));
    }
    let allowed = match h.kind {
        KIND_WRITE | KIND_TRIM => FLAG_FUA,
        KIND_ZERO => FLAG_FUA | FLAG_MAY_TRIM,
        KIND_BOUNDARY | KIND_SESSION => 0,
        k => return Err(ParseError::Invalid(format!("unknown kind {k}"))),
    };
    if h.flags & !allowed != 0 {
        return Err(ParseError::Invalid(format!("flags {:#04x} not allowed for kind {}", h.flags, h.kind)));
    }
    match h.kind {
        KIND_WRITE if h.b != h.data_len as u64 => {
            return Err(ParseError::Invalid(format!("write of length {} carries {} bytes", h.b, h.data_len)))
        }
        KIND_TRIM | KIND_ZERO | KIND_BOUNDARY | KIND_SESSION if h.data_len != 0 => {
            return Err(ParseError::Invalid(format!("kind {} carries {} bytes of data", h.kind, h.data_len)))
        }
        KIND_BOUNDARY if h.b != 0 => return Err(ParseError::Invalid("boundary with a length".into())),
        KIND_BOUNDARY if h.volume_len == 0 => return Err(ParseError::Invalid("boundary without a volume".into())),
        KIND_SESSION if h.volume_len != 0 => return Err(ParseError::Invalid("session record with a volume".into())),
        KIND_WRITE | KIND_TRIM | KIND_ZERO if h.a.checked_add(h.b).is_none() => {
            return Err(ParseError::Invalid(format!("range {}+{} overflows", h.a, h.b)))
        }
        KIND_WRITE | KIND_TRIM | KIND_ZERO if h.volume_len == 0 => {
            return Err(ParseError::Invalid("update without a volume".into()))
        }
        _ => {}
    }
    Ok(h)
}

/// Parse the record at the start of `b`; returns it and the number of bytes it occupies.
/// Every byte of a returned record was covered by a matching checksum.
pub fn parse_record(b: &[u8]) -> Result<(Record<'_>, usize), ParseError> {
    let h = parse_record_header(b)?;
    if b.len() < h.total_len {
        return Err(ParseError::Truncated { needed: h.total_len, available: b.len() });
    }
    let body_end = h.total_len - RECORD_TRAILER_LEN;
    let stored = u32_at(b, body_end);
    let computed = crc32c::crc32c(&b[..body_end]);
    if stored != computed {
        return Err(ParseError::RecordChecksum { stored, computed });
    }
    let vol_end = RECORD_HEADER_LEN + h.volume_len;
    let volume = std::str::from_utf8(&b[RECORD_HEADER_LEN..vol_end])
        .map_err(|_| ParseError::Invalid("volume name is not UTF-8".into()))?;
    let data = &b[vol_end..body_end];
    let fua = h.flags & FLAG_FUA != 0;
    let body = match h.kind {
        KIND_WRITE => Body::Write { offset: h.a, data, fua },
        KIND_TRIM => Body::Trim { offset: h.a, length: h.b, fua },
        KIND_ZERO => Body::Zero { offset: h.a, length: h.b, may_trim: h.flags & FLAG_MAY_TRIM != 0, fua },
        KIND_BOUNDARY => Body::Boundary { set_id: h.a },
        KIND_SESSION => Body::Session { started_unix: h.a, pid: h.b },
        // parse_record_header refused every other kind.
        k => return Err(ParseError::Invalid(format!("unknown kind {k}"))),
    };
    Ok((Record { volume, seq: h.seq, body }, h.total_len))
}

/// The offset (at or after `from`) of the next position in `b` where a complete, valid
/// record starts, if any: used after a bad record to tell a torn tail (nothing valid
/// follows) from corruption in the middle of a journal.
pub fn find_next_record(b: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at < b.len() {
        let rel = b[at..].windows(RECORD_MAGIC.len()).position(|w| w == RECORD_MAGIC)?;
        let p = at + rel;
        if parse_record(&b[p..]).is_ok() {
            return Some(p);
        }
        at = p + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Record<'static>> {
        vec![
            Record { volume: "", seq: 1, body: Body::Session { started_unix: 1_700_000_000, pid: 42 } },
            Record { volume: "vol", seq: 1, body: Body::Write { offset: 4096, data: b"hello", fua: false } },
            Record { volume: "vol", seq: 2, body: Body::Write { offset: 0, data: b"", fua: true } },
            Record { volume: "vol", seq: 3, body: Body::Trim { offset: 1 << 20, length: 65536, fua: true } },
            Record {
                volume: "другой",
                seq: 9,
                body: Body::Zero { offset: 512, length: 1 << 30, may_trim: true, fua: false },
            },
            Record { volume: "vol", seq: 3, body: Body::Boundary { set_id: 7 } },
        ]
    }

    #[test]
    fn round_trip_each_kind() {
        for r in samples() {
            let mut b = Vec::new();
            encode_record(&r, &mut b).unwrap();
            assert_eq!(b.len(), r.encoded_len());
            let (got, n) = parse_record(&b).unwrap();
            assert_eq!(n, b.len());
            assert_eq!(got, r);
            // Trailing bytes are not part of the record.
            b.extend_from_slice(b"GWJRxxxx");
            assert_eq!(parse_record(&b).unwrap(), (r, n));
        }
    }

    #[test]
    fn file_header_round_trip_and_errors() {
        let h = encode_file_header();
        assert_eq!(parse_file_header(&h), Ok(FORMAT_VERSION));
        assert_eq!(parse_file_header(b"#!/bin/sh\n"), Err(ParseError::NotAJournal));
        assert_eq!(parse_file_header(b""), Err(ParseError::Truncated { needed: 32, available: 0 }));
        assert_eq!(parse_file_header(&h[..20]), Err(ParseError::Truncated { needed: 32, available: 20 }));
        let mut v2 = h;
        v2[8] = 2;
        let crc = crc32c::crc32c(&v2[..28]);
        v2[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(parse_file_header(&v2), Err(ParseError::UnsupportedVersion(2)));
        let mut bad = h;
        bad[9] ^= 1;
        assert_eq!(parse_file_header(&bad), Err(ParseError::BadFileHeader("checksum mismatch")));
    }

    #[test]
    fn refuses_what_it_cannot_encode() {
        let long = "v".repeat(MAX_VOLUME_LEN + 1);
        let r = Record { volume: &long, seq: 1, body: Body::Trim { offset: 0, length: 1, fua: false } };
        let mut out = Vec::new();
        assert!(encode_record(&r, &mut out).is_err());
        let r = Record { volume: "v", seq: 1, body: Body::Trim { offset: u64::MAX, length: 2, fua: false } };
        assert!(encode_record(&r, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn specific_damage_is_named() {
        let r = Record { volume: "vol", seq: 5, body: Body::Write { offset: 0, data: &[7; 100], fua: false } };
        let mut b = Vec::new();
        encode_record(&r, &mut b).unwrap();
        assert!(matches!(parse_record(&b[..10]), Err(ParseError::Truncated { needed: 44, available: 10 })));
        assert!(matches!(parse_record(&b[..60]), Err(ParseError::Truncated { needed: 151, available: 60 })));
        let mut d = b.clone();
        d[100] ^= 0x10;
        assert!(matches!(parse_record(&d), Err(ParseError::RecordChecksum { .. })));
        let mut d = b.clone();
        d[5] ^= 0x01; // the length
        assert!(matches!(parse_record(&d), Err(ParseError::HeaderChecksum { .. })));
        let mut d = b.clone();
        d[0] = b'X';
        assert_eq!(parse_record(&d), Err(ParseError::BadMagic));
        assert_eq!(parse_record(&[0u8; 3]), Err(ParseError::BadMagic));
        assert_eq!(parse_record(b"GW"), Err(ParseError::Truncated { needed: 44, available: 2 }));
    }

    #[test]
    fn crafted_inconsistent_header_is_invalid() {
        // A header with a valid checksum but a write whose length disagrees with its data.
        let mut h = Vec::new();
        h.extend_from_slice(&RECORD_MAGIC);
        h.extend_from_slice(&(44u32 + 1 + 4 + 4).to_le_bytes());
        h.push(KIND_WRITE);
        h.push(0);
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&1u64.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes());
        h.extend_from_slice(&99u64.to_le_bytes());
        h.extend_from_slice(&4u32.to_le_bytes());
        let c = crc32c::crc32c(&h);
        h.extend_from_slice(&c.to_le_bytes());
        assert!(matches!(parse_record_header(&h), Err(ParseError::Invalid(_))));
    }

    #[test]
    fn finds_the_next_valid_record() {
        let mut b = Vec::new();
        for r in samples() {
            encode_record(&r, &mut b).unwrap();
        }
        let first = samples()[0].encoded_len();
        let mut d = b.clone();
        d[3] = b'?';
        assert_eq!(find_next_record(&d, 0), Some(first));
        assert_eq!(find_next_record(&b, 1), Some(first));
        assert_eq!(find_next_record(&b[..b.len() - 1], b.len() - 30), None);
    }
}
