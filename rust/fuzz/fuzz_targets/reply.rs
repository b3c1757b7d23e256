//! The client-side reply parser (and reply formatting).
//!
//! Input: `[mode] [max_line] [n] [n chunk lengths] payload`.
//!
//! mode bit 0 clear: `payload` is what a server sent, fed in the fuzzer's
//! chunks.  Checks: no panic; a reply has a code in 200..=599, at most 1000
//! lines, an enhanced code of its class if any; up to the first error, the
//! replies do not depend on the cuts (after a parse error the client drops
//! the connection, so what follows an error is not compared).
//!
//! mode bit 0 set: `payload` describes a reply (code, enhanced code or none,
//! lines split at 0x00); whatever `format_reply` accepts, the parser reads
//! back as the same reply, however it is cut.
#![no_main]

use _core::reply::{format_reply, is_enhanced_code, Reply, ReplyParser};
use fuzz_common::*;
use libfuzzer_sys::fuzz_target;

/// Replies until the first error (included, as None) or until data runs out.
fn parse(pieces: &[&[u8]], max_line: usize) -> Vec<Option<Reply>> {
    let mut p = ReplyParser::new(max_line);
    let mut out = Vec::new();
    for piece in pieces {
        p.receive_data(piece);
        loop {
            match p.next_reply() {
                Ok(Some(r)) => {
                    assert!((200..=599).contains(&r.code), "code {}", r.code);
                    assert!(!r.lines.is_empty() && r.lines.len() <= 1000);
                    if let Some(e) = &r.enhanced {
                        assert!(is_enhanced_code(e));
                        assert_eq!(u16::from(e.as_bytes()[0] - b'0'), r.code / 100);
                    }
                    out.push(Some(r));
                }
                Ok(None) => break,
                Err(_) => {
                    out.push(None);
                    return out;
                }
            }
        }
    }
    out
}

fn round_trip(desc: &[u8], cuts: &[u8]) {
    if desc.len() < 3 {
        return;
    }
    let code = 200 + (number(desc, 0, 2) % 400) as u16;
    let enhanced = match desc[2] % 4 {
        0 => None,
        k => Some(format!("{}.{}.{}", code / 100, k, desc[2] / 4)),
    };
    let text = String::from_utf8_lossy(&desc[3..]);
    let lines: Vec<&str> = if text.is_empty() {
        Vec::new()
    } else {
        text.split('\0').collect()
    };
    if lines.len() > 1000 {
        return; // the parser's bound on one reply (our server sends 7 at most)
    }
    let Ok(wire) = format_reply(code, enhanced.as_deref(), &lines) else {
        return;
    };
    for line in wire.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() <= 512 && line.ends_with(b"\r\n"));
    }
    let got = parse(&chunks(&wire, cuts), 512);
    assert_eq!(got.len(), 1, "{wire:?} is not one reply");
    let r = got[0].as_ref().expect("formatted reply parses");
    assert_eq!(r.code, code);
    let expected: Vec<&str> = if lines.is_empty() {
        vec![""]
    } else {
        lines.clone()
    };
    match &enhanced {
        Some(_) => {
            assert_eq!(r.enhanced, enhanced);
            assert_eq!(r.lines, expected);
        }
        // Without an enhanced code, text that starts like one is read as one:
        // only compare when it does not.
        None if r.enhanced.is_none() => assert_eq!(r.lines, expected),
        None => {}
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let (mode, max_line) = (input[0], 4 + usize::from(input[1]) * 16);
    let (cuts, payload) = split_cuts(&input[2..]);
    if mode & 1 == 0 {
        let chunked = parse(&chunks(payload, cuts), max_line);
        let whole = parse(&[payload], max_line);
        // A line over max_line is refused as soon as max_line octets without
        // LF are buffered, so with cuts the error can come before replies
        // that the whole input, refused at its LF, would not yield: compare
        // the replies before the first error of either.
        let first_error =
            |v: &[Option<Reply>]| v.iter().position(Option::is_none).unwrap_or(v.len());
        let n = first_error(&chunked).min(first_error(&whole));
        assert_eq!(chunked[..n], whole[..n]);
        if !chunked.contains(&None) && !whole.contains(&None) {
            assert_eq!(chunked, whole);
        }
    } else {
        round_trip(payload, cuts);
    }
});
