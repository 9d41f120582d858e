//! Feeds arbitrary bytes to the transmission parsers: request headers (skipping WRITE
//! payloads as the server does) and replies as a client reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_proto::transmission::{parse_reply, parse_request};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((req, used))) = parse_request(rest) {
        assert!(used <= rest.len());
        let skip = (used + req.payload_len()).min(rest.len());
        rest = &rest[skip..];
        if skip == 0 {
            break;
        }
    }
    let mut rest = data;
    while let Ok(Some((_, used))) = parse_reply(rest) {
        assert!(used > 0 && used <= rest.len());
        rest = &rest[used..];
    }
});
