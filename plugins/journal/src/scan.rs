//! Reading a journal from any [`Read`] (a file, or bytes in memory) record by record, with
//! bounded memory: the parsing is [`crate::format`]'s, this only keeps a window of the
//! stream and the file offsets.

use std::io::{self, Read};

use crate::format::{
    parse_file_header, parse_record, parse_record_header, ParseError, Record, FILE_HEADER_LEN, RECORD_HEADER_LEN,
    RECORD_MAGIC,
};

const CHUNK: usize = 1 << 20;

/// Where and why reading stopped before the end of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// File offset of the first byte that is not part of a valid record.
    pub offset: u64,
    pub error: ParseError,
}

impl Stop {
    /// A record cut short by the end of the file: the classic torn tail of a crash.
    pub fn at_eof(&self) -> bool {
        self.error.is_truncation()
    }
}

/// One step of a scan.
#[derive(Debug)]
pub enum Next<'a> {
    /// A valid record at this file offset.
    Record(u64, Record<'a>),
    /// The end of the file, exactly after the last record.
    End,
    /// A bad or incomplete record: nothing from here on can be trusted.
    Stop(Stop),
}

/// Reads records in file order. After a [`Next::Stop`] every call returns the same stop,
/// until [`Scanner::resync`] finds a later valid record to continue from.
pub struct Scanner<R> {
    src: R,
    buf: Vec<u8>,
    /// Index in `buf` of the next unread byte.
    start: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
    stopped: Option<Stop>,
}

impl<R: Read> Scanner<R> {
    /// Read and check the file header. A bad header is an error (this is not a journal, or
    /// not one this code reads); an I/O error is reported as `Err(Err(..))`.
    pub fn open(src: R) -> Result<(Self, u32), ScanError> {
        let mut s = Scanner { src, buf: Vec::new(), start: 0, base: 0, eof: false, stopped: None };
        s.fill(FILE_HEADER_LEN).map_err(ScanError::Io)?;
        let version = parse_file_header(s.available()).map_err(ScanError::Header)?;
        s.start = FILE_HEADER_LEN;
        Ok((s, version))
    }

    /// File offset of the next byte to read.
    pub fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    fn available(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Make at least `n` bytes available past `start`, unless the stream ends first.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.buf.len() - self.start >= n || self.eof {
            return Ok(());
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.base += self.start as u64;
            self.start = 0;
        }
        while self.buf.len() < n && !self.eof {
            let have = self.buf.len();
            let want = (n - have).max(CHUNK);
            self.buf.resize(have + want, 0);
            let got = loop {
                match self.src.read(&mut self.buf[have..]) {
                    Ok(k) => break k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(have);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(have + got);
            if got == 0 {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// The next record, the end, or where and why reading stopped.
    pub fn next_record(&mut self) -> io::Result<Next<'_>> {
        if let Some(s) = &self.stopped {
            return Ok(Next::Stop(s.clone()));
        }
        self.fill(RECORD_HEADER_LEN)?;
        if self.available().is_empty() {
            return Ok(Next::End);
        }
        let offset = self.offset();
        let need = match parse_record_header(self.available()) {
            Ok(h) => h.total_len,
            Err(error) => return Ok(self.stop(offset, error)),
        };
        self.fill(need)?;
        let s = self.start;
        match parse_record(&self.buf[s..]) {
            Ok((rec, n)) => {
                self.start = s + n;
                Ok(Next::Record(offset, rec))
            }
            Err(error) => {
                let stop = Stop { offset, error };
                self.stopped = Some(stop.clone());
                Ok(Next::Stop(stop))
            }
        }
    }

    fn stop(&mut self, offset: u64, error: ParseError) -> Next<'static> {
        let stop = Stop { offset, error };
        self.stopped = Some(stop.clone());
        Next::Stop(stop)
    }

    /// After a stop: look for the next offset where a complete, valid record starts. If one is
    /// found the scan continues from it (and `Some(offset)` is returned); if not, the scan is
    /// at the end of the file and `None` is returned. Without a stop, returns the current
    /// offset.
    pub fn resync(&mut self) -> io::Result<Option<u64>> {
        let Some(stop) = self.stopped.take() else { return Ok(Some(self.offset())) };
        // Skip the first byte of the bad record, then look for the record magic.
        self.start = (stop.offset - self.base) as usize + 1;
        loop {
            self.fill(RECORD_HEADER_LEN)?;
            let avail = self.available();
            if avail.len() < RECORD_MAGIC.len() {
                self.start = self.buf.len();
                return Ok(None);
            }
            let Some(rel) = avail.windows(RECORD_MAGIC.len()).position(|w| w == RECORD_MAGIC) else {
                // Keep the last bytes: the magic may straddle the next read.
                self.start = self.buf.len() - (RECORD_MAGIC.len() - 1);
                if self.eof {
                    self.start = self.buf.len();
                    return Ok(None);
                }
                self.fill(self.buf.len() - self.start + 1)?;
                continue;
            };
            self.start += rel;
            self.fill(RECORD_HEADER_LEN)?;
            if let Ok(h) = parse_record_header(self.available()) {
                self.fill(h.total_len)?;
                if parse_record(self.available()).is_ok() {
                    return Ok(Some(self.offset()));
                }
            }
            self.start += 1;
        }
    }
}

/// Why a scan could not start.
#[derive(Debug)]
pub enum ScanError {
    Header(ParseError),
    Io(io::Error),
}

impl std::fmt::Display for ScanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScanError::Header(e) => write!(f, "{e}"),
            ScanError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ScanError {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_file_header, encode_record, Body};

    /// A reader that hands out at most 7 bytes per call, to exercise refills at every
    /// possible split.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = out.len().min(self.0.len()).min(7);
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn journal(n: u64) -> (Vec<u8>, Vec<u64>) {
        let mut b = encode_file_header().to_vec();
        let mut offsets = Vec::new();
        for i in 0..n {
            offsets.push(b.len() as u64);
            let data = vec![i as u8; (i as usize * 37) % 300];
            let r = Record { volume: "v", seq: i + 1, body: Body::Write { offset: i * 512, data: &data, fua: false } };
            encode_record(&r, &mut b).unwrap();
        }
        (b, offsets)
    }

    fn collect<R: Read>(s: &mut Scanner<R>) -> (Vec<(u64, u64)>, Option<Stop>) {
        let mut got = Vec::new();
        loop {
            match s.next_record().unwrap() {
                Next::Record(off, r) => got.push((off, r.seq)),
                Next::End => return (got, None),
                Next::Stop(stop) => return (got, Some(stop)),
            }
        }
    }

    #[test]
    fn reads_everything_in_small_pieces() {
        let (b, offsets) = journal(20);
        let (mut s, v) = Scanner::open(Dribble(&b)).unwrap();
        assert_eq!(v, 1);
        let (got, stop) = collect(&mut s);
        assert_eq!(stop, None);
        assert_eq!(got, offsets.iter().copied().zip(1..=20).collect::<Vec<_>>());
    }

    #[test]
    fn header_errors() {
        assert!(matches!(Scanner::open(&b"nope"[..]), Err(ScanError::Header(ParseError::NotAJournal))));
        assert!(matches!(Scanner::open(&b""[..]), Err(ScanError::Header(ParseError::Truncated { .. }))));
    }

    #[test]
    fn stop_then_resync() {
        let (mut b, offsets) = journal(10);
        b[offsets[4] as usize + 50] ^= 0x40;
        let (mut s, _) = Scanner::open(Dribble(&b)).unwrap();
        let (got, stop) = collect(&mut s);
        assert_eq!(got.len(), 4);
        let stop = stop.unwrap();
        assert_eq!(stop.offset, offsets[4]);
        assert!(!stop.at_eof());
        assert_eq!(s.resync().unwrap(), Some(offsets[5]));
        let (rest, stop) = collect(&mut s);
        assert_eq!(rest.iter().map(|r| r.1).collect::<Vec<_>>(), (6..=10).collect::<Vec<_>>());
        assert_eq!(stop, None);
    }

    #[test]
    fn torn_tail_has_nothing_after() {
        let (b, offsets) = journal(10);
        let cut = &b[..b.len() - 3];
        let (mut s, _) = Scanner::open(Dribble(cut)).unwrap();
        let (got, stop) = collect(&mut s);
        assert_eq!(got.len(), 9);
        let stop = stop.unwrap();
        assert_eq!(stop.offset, offsets[9]);
        assert!(stop.at_eof());
        assert_eq!(s.resync().unwrap(), None);
        // Garbage (zeroes, as after a crash that extended the file) is not a record either.
        let mut z = b.clone();
        z.extend_from_slice(&[0; 5000]);
        let (mut s, _) = Scanner::open(&z[..]).unwrap();
        let (got, stop) = collect(&mut s);
        assert_eq!(got.len(), 10);
        assert_eq!(stop.unwrap().error, ParseError::BadMagic);
        assert_eq!(s.resync().unwrap(), None);
    }
}
