//! Feeds arbitrary bytes to the handshake parsers as a server would read them: client flags,
//! then option frames one after another, each payload decoded. Nothing may panic, and every
//! parser must consume no more than it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_proto::handshake::{decode_option, parse_client_flags, parse_option, parse_option_reply};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    if let Ok(Some((_, used))) = parse_client_flags(rest) {
        rest = &rest[used..];
    }
    while let Ok(Some((opt, used))) = parse_option(rest) {
        assert!(used > 0 && used <= rest.len());
        let _ = decode_option(&opt);
        rest = &rest[used..];
    }
    let _ = parse_option_reply(data);
});
