//! Property tests: what must hold for any input and any way it is cut.

use _core::address::{parse_path, PathOptions};
use _core::data::{DataDecoder, DataLimits};
use _core::params::{xtext_decode, xtext_encode};
use _core::server::{Event, ServerConfig, ServerConnection};
use _core::stuff::{dot_stuff, DotStuffer, LfConverter};
use proptest::prelude::*;

/// Cut `data` at the given fractions (0..1000 per mille), sorted.
fn pieces<'a>(data: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| data.len() * usize::from(c) / 1000)
        .collect();
    at.push(0);
    at.push(data.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

/// Decode DATA fed in pieces; returns the content and the octets used, or
/// None if the end was not found.
fn decode(pieces: &[&[u8]]) -> Option<(Vec<u8>, usize)> {
    let mut dec = DataDecoder::new(DataLimits::NONE);
    let mut out = Vec::new();
    let mut used = 0;
    for p in pieces {
        let r = dec.decode(p, &mut out);
        used += r.consumed;
        if r.done {
            if dec.summary().error.is_none() {
                assert_eq!(dec.summary().size, out.len() as u64);
            }
            return Some((out, used));
        }
    }
    None
}

/// What DotStuffer promises to deliver: every bare CR or LF made CRLF, and a
/// final CRLF when the content has any and lacks it.
fn normalise(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 2);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Message-like bodies: lines of text, dots at line starts, long lines,
/// stray CRs and LFs, with CRLF line ends.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..80),
        2 => "[.]{1,3}[a-z. ]{0,10}".prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 900..3000),
        1 => Just(b".".to_vec()),
        1 => prop_oneof![Just(b"\n.\n".to_vec()), Just(b"\r.\r".to_vec()), Just(b"\n.\r\n".to_vec())],
    ];
    proptest::collection::vec(line, 0..40).prop_map(|lines| {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(&l);
            out.extend_from_slice(b"\r\n");
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Stuffing then decoding, in any pieces, gives back the content.
    #[test]
    fn stuff_then_decode_round_trips(
        content in body(),
        stuff_cuts in proptest::collection::vec(0u16..1000, 0..8),
        decode_cuts in proptest::collection::vec(0u16..1000, 0..8),
    ) {
        let mut stuffer = DotStuffer::new();
        let mut wire = Vec::new();
        for p in pieces(&content, &stuff_cuts) {
            stuffer.feed_into(p, &mut wire);
        }
        stuffer.finish_into(&mut wire);
        prop_assert_eq!(&wire, &dot_stuff(&content));
        wire.extend_from_slice(b"QUIT\r\n");
        let (out, used) = decode(&pieces(&wire, &decode_cuts)).expect("the end is found");
        prop_assert_eq!(out, normalise(&content));
        prop_assert_eq!(used, wire.len() - 6);
    }

    /// Data ends exactly at the first CRLF "." CRLF (counting the CRLF that
    /// precedes DATA), whatever comes before it and however it is cut:
    /// smuggled ends made of bare CRs and LFs never end it.
    #[test]
    fn data_ends_only_at_crlf_dot_crlf(
        raw in proptest::collection::vec(
            prop_oneof![
                Just(&b"\r"[..]), Just(&b"\n"[..]), Just(&b"."[..]), Just(&b"a"[..]),
                Just(&b"\r\n"[..]), Just(&b"\n.\n"[..]), Just(&b"\r.\r"[..]),
                Just(&b"MAIL FROM:<x@y>"[..]),
            ],
            0..60,
        ),
        cuts in proptest::collection::vec(0u16..1000, 0..10),
    ) {
        let mut input: Vec<u8> = raw.concat();
        input.extend_from_slice(b"\r\n.\r\n");
        let mut framed = b"\r\n".to_vec();
        framed.extend_from_slice(&input);
        let end = framed.windows(5).position(|w| w == b"\r\n.\r\n").unwrap() + 5 - 2;
        let (_, used) = decode(&pieces(&input, &cuts)).expect("the end is found");
        prop_assert_eq!(used, end);
    }

    /// The server sees the same events however the stream is cut.
    #[test]
    fn server_events_do_not_depend_on_cuts(
        cmds in proptest::collection::vec(
            prop_oneof![
                Just("NOOP\r\n".to_string()),
                Just("MAIL FROM:<a@b.c> SIZE=10\r\n".to_string()),
                Just("RCPT TO:<\"x y\"@[192.0.2.1]>\r\n".to_string()),
                Just("RCPT TO:<>\r\n".to_string()),
                Just("BDAT 7\r\nab\r\n.\r\n".to_string()),
                Just("BDAT 3 LAST\r\nxyz".to_string()),
                Just("DATA\r\nSubject: s\r\n\r\n..x\n.\n\r\n.\r\n".to_string()),
                Just("BOGUS\r\n".to_string()),
                Just(format!("NOOP {}\r\n", "x".repeat(600))),
                Just("NO\nOP\r\n".to_string()),
            ],
            0..20,
        ),
        cuts in proptest::collection::vec(0u16..1000, 0..10),
    ) {
        let input = cmds.concat().into_bytes();
        let whole = events(&[&input]);
        prop_assert_eq!(events(&pieces(&input, &cuts)), whole);
    }

    /// LF conversion does not depend on cuts and only touches CRLF.
    #[test]
    fn lf_conversion(data in proptest::collection::vec(prop_oneof![Just(b'\r'), Just(b'\n'), any::<u8>()], 0..200),
                     cuts in proptest::collection::vec(0u16..1000, 0..6)) {
        let mut c = LfConverter::new();
        let mut out = Vec::new();
        for p in pieces(&data, &cuts) {
            c.feed_into(p, &mut out);
        }
        out.extend(c.finish());
        let mut want = Vec::new();
        let mut i = 0;
        while i < data.len() {
            if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
                want.push(b'\n');
                i += 2;
            } else {
                want.push(data[i]);
                i += 1;
            }
        }
        prop_assert_eq!(out, want);
    }

    /// Arbitrary octets, in any mode, never panic, and memory stays bounded.
    #[test]
    fn server_survives_garbage(
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(0u16..1000, 0..10),
        mode in 0u8..4,
    ) {
        let mut c = ServerConnection::new(ServerConfig { max_message_size: 500, ..ServerConfig::default() });
        match mode {
            1 => c.start_data().unwrap(),
            2 => c.read_line().unwrap(),
            3 => {
                c.receive_data(b"BDAT 100\r\n").unwrap();
            }
            _ => {}
        }
        for p in pieces(&data, &cuts).into_iter().filter(|p| !p.is_empty()) {
            c.receive_data(p).unwrap();
            while let Some(ev) = c.next_event() {
                if let Event::Command(cmd) = ev {
                    if cmd.verb == _core::command::Verb::Data {
                        c.start_data().unwrap();
                    }
                }
            }
            prop_assert!(c.in_data() || c.buffered() <= _core::server::MAX_AUTH_LINE);
        }
    }

    /// The text parsers never panic on arbitrary input.
    #[test]
    fn parsers_survive_garbage(text in "\\PC{0,300}", bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        for opts in [
            PathOptions { smtputf8: false, allow_null: true, allow_postmaster: false },
            PathOptions { smtputf8: true, allow_null: false, allow_postmaster: true },
        ] {
            let _ = parse_path(&text, opts);
            let _ = parse_path(&format!("<{text}>"), opts);
        }
        let _ = _core::address::parse_mailbox(&text, true);
        let _ = _core::params::parse_params(&text, true);
        let _ = xtext_decode(&text);
        let opts = _core::command::CommandOptions { smtputf8: true, rcpt_utf8: true };
        let _ = _core::command::parse_command(&bytes, opts);
        let _ = _core::command::parse_command(format!("MAIL FROM:{text}").as_bytes(), opts);
        let _ = _core::command::parse_command(format!("RCPT TO:{text}").as_bytes(), opts);
        let mut r = _core::reply::ReplyParser::new(512);
        r.receive_data(&bytes);
        while let Ok(Some(_)) = r.next_reply() {}
        let _ = _core::data::unstuff(&bytes);
    }

    #[test]
    fn xtext_round_trips(s in "\\PC*") {
        let back = xtext_decode(&xtext_encode(&s));
        prop_assert_eq!(back.as_deref(), Ok(s.as_str()));
    }

    /// A parsed path, written out again, parses to the same path.
    #[test]
    fn address_round_trips(
        local in prop_oneof!["[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,10}(\\.[a-z0-9]{1,5}){0,2}", "[ -~]{0,20}"],
        domain in prop_oneof!["[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z]{2,6}){0,3}", Just("[192.0.2.1]".to_string())],
    ) {
        let opts = PathOptions { smtputf8: false, allow_null: false, allow_postmaster: false };
        let quoted: String = local.chars().flat_map(|c| {
            if c == '"' || c == '\\' { vec!['\\', c] } else { vec![c] }
        }).collect();
        let p = parse_path(&format!("<\"{quoted}\"@{domain}>"), opts).unwrap();
        prop_assert_eq!(&p.local_part, &local);
        let again = parse_path(&p.to_string(), opts).unwrap();
        prop_assert_eq!(again, p);
    }
}

/// The server's events for input fed in pieces, DataChunks joined, chunks of
/// failed messages dropped.
fn events(pieces: &[&[u8]]) -> Vec<String> {
    let mut c = ServerConnection::new(ServerConfig::default());
    let mut out: Vec<String> = Vec::new();
    let mut content = Vec::new();
    let mut drain = |c: &mut ServerConnection, out: &mut Vec<String>| {
        while let Some(ev) = c.next_event() {
            match ev {
                Event::DataChunk(d) => content.extend(d),
                Event::Command(cmd) => {
                    if cmd.verb == _core::command::Verb::Data {
                        c.start_data().unwrap();
                    }
                    out.push(format!("{cmd:?}"));
                }
                Event::DataEnd(s) => {
                    let data = std::mem::take(&mut content);
                    if s.error.is_none() {
                        out.push(format!("content {data:?}"));
                    }
                    out.push(format!("{s:?}"));
                }
                Event::BdatChunkEnd { .. } => {
                    out.push(format!("content {:?}", std::mem::take(&mut content)));
                    out.push(format!("{ev:?}"));
                }
                ev @ Event::ConnectionClosed { .. } => {
                    // Returned again on every call: stop here.
                    out.push(format!("{ev:?}"));
                    return;
                }
                ev => out.push(format!("{ev:?}")),
            }
        }
    };
    for p in pieces.iter().filter(|p| !p.is_empty()) {
        c.receive_data(p).unwrap();
        drain(&mut c, &mut out);
    }
    c.receive_data(b"").unwrap();
    drain(&mut c, &mut out);
    out
}
