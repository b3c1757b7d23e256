//! The DATA decoder, streaming, and its inverse, the dot-stuffer.
//!
//! Input: `[mode] [limits: 3 octets] [n] [n chunk lengths] payload`.
//!
//! mode bit 0 clear: `payload` is what a client sent after 354, decoded in
//! the fuzzer's chunks.  Checks, against the slow reference models of
//! fuzz_common:
//! - the data ends exactly at the first CRLF "." CRLF (the DATA command's CRLF
//!   counts), never elsewhere: no bare CR / bare LF variant ends it;
//! - the octets used, the summary (the error kind included) and the content
//!   handed out (a refused message's too) do not depend on where the input
//!   was cut;
//! - an accepted message (no error) is the reference un-stuffing, and respects
//!   every limit; a message that breaks a limit or has a bare CR/LF is refused;
//! - memory is bounded: a decode call never emits more than it was given, and
//!   the decoder's state is a fixed-size struct (no buffering inside).
//!
//! mode bit 0 set: `payload` is message content.  Stuffing it (in chunks)
//! gives what the one-shot `dot_stuff` gives, and un-stuffing that (in other
//! chunks) gives the content back, newlines normalised to CRLF.
#![no_main]

use _core::data::{ContentError, DataDecoder, DataLimits, DataSummary};
use _core::stuff::{dot_stuff, DotStuffer, LfConverter};
use fuzz_common::*;
use libfuzzer_sys::fuzz_target;

/// Decode `pieces` as one message: (content, octets used, done, summary).
fn decode(pieces: &[&[u8]], limits: DataLimits) -> (Vec<u8>, usize, bool, DataSummary) {
    let mut dec = DataDecoder::new(limits);
    let mut out = Vec::new();
    let mut used = 0;
    for p in pieces {
        let before = out.len();
        let r = dec.decode(p, &mut out);
        assert!(r.consumed <= p.len());
        assert!(
            out.len() - before <= r.consumed,
            "emitted more than consumed"
        );
        used += r.consumed;
        if r.done {
            assert!(dec.is_done());
            // Once done, nothing more is taken.
            let again = dec.decode(b"MAIL FROM:<x@y>\r\n", &mut out);
            assert_eq!((again.consumed, again.done), (0, true));
            return (out, used, true, dec.summary());
        }
        assert_eq!(r.consumed, p.len(), "stopped early without the end");
    }
    (out, used, false, dec.summary())
}

fn limits(b: &[u8]) -> DataLimits {
    let pick = |v: u8, scale: u64| {
        if v == 0 {
            u64::MAX
        } else {
            u64::from(v) * scale
        }
    };
    DataLimits {
        max_text_line: pick(b[0], 1),
        max_message_size: pick(b[1], 4),
        max_header_size: pick(b[2], 2),
    }
}

fn check_decoder(raw: &[u8], cuts: &[u8], limits: DataLimits) {
    let (out, used, done, summary) = decode(&chunks(raw, cuts), limits);
    let (whole_out, whole_used, whole_done, whole_summary) = decode(&[raw], limits);
    assert_eq!((used, done), (whole_used, whole_done));
    // Nothing depends on the cuts: not the figures, not which refusal (the
    // first problem in octet order), not the content handed out (all of an
    // accepted message, what comes before the problem of a refused one).
    assert_eq!(summary, whole_summary);
    assert_eq!(out, whole_out);
    if summary.error.is_none() {
        assert_eq!(summary.size, out.len() as u64);
    } else {
        assert!((out.len() as u64) < summary.size);
        assert!(out.len() as u64 <= limits.max_message_size);
    }

    // The end is CRLF.CRLF and nothing else.
    match reference_data_end(raw) {
        Some(end) => assert!(done && used == end, "end at {used}, expected {end}"),
        None => assert!(!done, "data ended without CRLF.CRLF"),
    }
    if !done {
        return;
    }
    let message = &raw[..used];
    if has_bare_newline(message) {
        assert!(summary.error.is_some(), "bare CR/LF accepted");
        return;
    }
    // No bare newline: the content is exactly the reference un-stuffing, and
    // the figures and limits follow from it.
    let content = reference_unstuff(message);
    let h = reference_headers(&content);
    assert_eq!(summary.size, content.len() as u64);
    assert_eq!(summary.header_size, h.header_size);
    assert_eq!(summary.received_count, h.received);
    assert_eq!(summary.has_date, h.date);
    assert_eq!(summary.has_message_id, h.message_id);
    assert_eq!(summary.eight_bit, content.iter().any(|&b| b >= 0x80));
    let over = content.len() as u64 > limits.max_message_size
        || h.header_size > limits.max_header_size
        || longest_line(&content) > limits.max_text_line;
    assert_eq!(summary.error.is_some(), over, "limits: {summary:?}");
    match summary.error {
        None => assert_eq!(out, content),
        Some(e) => {
            // The first octet over a limit, and what comes before it.
            assert_eq!(
                (Some(e), &out[..]),
                reference_first_problem(&content, h.header_size, limits),
                "refusal"
            );
            assert_reply_formats(e.code(), e.enhanced(), e.text());
        }
    }
}

/// The first problem of bare-newline-free content, the slow way: the octet
/// where a line, the header block or the message first goes over its limit
/// (at one octet: line, then header, then size), and the content before it.
fn reference_first_problem(
    content: &[u8],
    header_size: u64,
    limits: DataLimits,
) -> (Option<ContentError>, &[u8]) {
    let mut first: Option<(u64, ContentError)> = None;
    let mut start = 0u64;
    for line in split_crlf_lines(content) {
        if line.len() as u64 > limits.max_text_line {
            first = Some((start + limits.max_text_line, ContentError::LineLength));
            break;
        }
        start += line.len() as u64;
    }
    for (over, limit, e) in [
        (
            header_size,
            limits.max_header_size,
            ContentError::HeaderSize,
        ),
        (
            content.len() as u64,
            limits.max_message_size,
            ContentError::Size,
        ),
    ] {
        if over > limit && first.is_none_or(|(at, _)| limit < at) {
            first = Some((limit, e));
        }
    }
    match first {
        Some((at, e)) => (Some(e), &content[..at as usize]),
        None => (None, content),
    }
}

fn check_round_trip(content: &[u8], cuts: &[u8]) {
    let mut stuffer = DotStuffer::new();
    let mut stuffed = Vec::new();
    for p in chunks(content, cuts) {
        stuffer.feed_into(p, &mut stuffed);
    }
    stuffer.finish_into(&mut stuffed);
    assert_eq!(stuffed, dot_stuff(content));
    assert!(!has_bare_newline(&stuffed));

    // Un-stuff with the cuts shifted, so they fall elsewhere.
    let shifted: Vec<u8> = cuts.iter().map(|c| c.wrapping_add(1)).collect();
    let (out, used, done, summary) = decode(&chunks(&stuffed, &shifted), DataLimits::NONE);
    assert!(done, "stuffed data has no end");
    assert_eq!(used, stuffed.len(), "stuffed data ends early");
    assert_eq!(summary.error, None);
    assert_eq!(out, normalise_newlines(content));

    // And to a mailbox file: CRLF -> LF, streaming equals one shot.
    let mut lf = LfConverter::new();
    let mut file = Vec::new();
    for p in chunks(&out, cuts) {
        file.extend(lf.feed(p));
    }
    file.extend(lf.finish());
    let expected: Vec<u8> = {
        let mut v = Vec::new();
        let mut i = 0;
        while i < out.len() {
            if out[i] == b'\r' && out.get(i + 1) == Some(&b'\n') {
                i += 1;
            } else {
                v.push(out[i]);
                i += 1;
            }
        }
        v
    };
    assert_eq!(file, expected);
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 4 {
        return;
    }
    let (mode, lim, rest) = (input[0], &input[1..4], &input[4..]);
    let (cuts, payload) = split_cuts(rest);
    if mode & 1 == 0 {
        check_decoder(payload, cuts, limits(lim));
    } else {
        check_round_trip(payload, cuts);
    }
});
