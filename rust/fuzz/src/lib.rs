//! Helpers shared by the fuzz targets: how an input is cut into the chunks a
//! socket would hand over, and small, obviously-correct reference models that
//! the fast code in `smtprs-core` is checked against.
//!
//! Input layout used by the streaming targets: `[n] [len_1 .. len_n] rest`.
//! `n % 8` chunk lengths follow the first byte; `rest` is cut into pieces of
//! `len_i + 1` octets, cycling through the lengths (no lengths: one piece).
//! The fuzzer thus controls where every cut falls, including the cuts that
//! split CRLF, CRLF.CRLF or a command in two.

use _core::reply::format_reply;

/// Split `input` into the chunk-length prefix and the payload.
pub fn split_cuts(input: &[u8]) -> (&[u8], &[u8]) {
    let Some((&n, rest)) = input.split_first() else {
        return (&[], &[]);
    };
    let n = usize::from(n % 8).min(rest.len());
    rest.split_at(n)
}

/// Cut `data` into pieces whose lengths cycle through `cuts` (+1 each).
/// No piece is empty (an empty read means the peer closed); no data, no piece.
pub fn chunks<'a>(data: &'a [u8], cuts: &[u8]) -> Vec<&'a [u8]> {
    if data.is_empty() {
        return Vec::new();
    }
    if cuts.is_empty() {
        return vec![data];
    }
    let mut out = Vec::new();
    let mut i = 0;
    let mut k = 0;
    while i < data.len() {
        let n = (usize::from(cuts[k % cuts.len()]) + 1).min(data.len() - i);
        out.push(&data[i..i + n]);
        i += n;
        k += 1;
    }
    out
}

/// A reply the core hands the session (a CommandError, a DataEnd error) must
/// be something `format_reply` accepts: the Python session formats it with
/// `_core.format_reply`, and a ValueError there would kill the session.
pub fn assert_reply_formats(code: u16, enhanced: &str, text: &str) {
    assert!((400..600).contains(&code), "error reply code {code}");
    if let Err(e) = format_reply(code, Some(enhanced), &[text]) {
        panic!("core error reply {code} {enhanced} {text:?} cannot be sent: {e}");
    }
}

/// Index just past the end of DATA in `raw` (the octets after 354), by the
/// definition: the first CRLF "." CRLF, where the CRLF of the DATA command
/// itself counts as the first CRLF.  None if the data has not ended.
pub fn reference_data_end(raw: &[u8]) -> Option<usize> {
    if raw.starts_with(b".\r\n") {
        return Some(3);
    }
    raw.windows(5)
        .position(|w| w == b"\r\n.\r\n")
        .map(|p| p + 5)
}

/// True when `raw` has a CR not followed by LF, or an LF not preceded by CR.
pub fn has_bare_newline(raw: &[u8]) -> bool {
    raw.iter().enumerate().any(|(i, &b)| match b {
        b'\r' => raw.get(i + 1) != Some(&b'\n'),
        b'\n' => i == 0 || raw[i - 1] != b'\r',
        _ => false,
    })
}

/// Un-stuff complete DATA (ending with its CRLF "." CRLF, bare-newline free)
/// the slow way: split into CRLF lines, drop one leading dot of each.
pub fn reference_unstuff(raw: &[u8]) -> Vec<u8> {
    let end = reference_data_end(raw).expect("complete data");
    // The content and the CRLF before the final dot (none when empty).
    let body = &raw[..end - 3];
    let mut out = Vec::with_capacity(body.len());
    for line in split_crlf_lines(body) {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// Lines of `data`, each with its CRLF (the last one without, if it lacks one).
pub fn split_crlf_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == b'\r' && data[i + 1] == b'\n' {
            out.push(&data[start..i + 2]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    if start < data.len() {
        out.push(&data[start..]);
    }
    out
}

/// What the header scan should report for un-stuffed, bare-newline-free content.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    pub header_size: u64,
    pub received: u32,
    pub date: bool,
    pub message_id: bool,
}

pub fn reference_headers(content: &[u8]) -> HeaderFacts {
    let mut f = HeaderFacts::default();
    for line in split_crlf_lines(content) {
        f.header_size += line.len() as u64;
        if line == b"\r\n" {
            break;
        }
        let starts = |p: &[u8]| line.len() >= p.len() && line[..p.len()].eq_ignore_ascii_case(p);
        if starts(b"received:") {
            f.received += 1;
        } else if starts(b"date:") {
            f.date = true;
        } else if starts(b"message-id:") {
            f.message_id = true;
        }
    }
    f
}

/// The longest line of un-stuffed content, CRLF included (the DATA line limit
/// counts un-stuffed octets).
pub fn longest_line(content: &[u8]) -> u64 {
    split_crlf_lines(content)
        .iter()
        .map(|l| l.len() as u64)
        .max()
        .unwrap_or(0)
}

/// What DotStuffer promises: every bare CR or LF made CRLF, and a final CRLF
/// when there is content without one.
pub fn normalise_newlines(data: &[u8]) -> Vec<u8> {
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

/// A little-endian number from up to 8 octets of `bytes` at `at` (missing ones 0).
pub fn number(bytes: &[u8], at: usize, len: usize) -> u64 {
    (0..len.min(8)).fold(0u64, |acc, i| {
        acc | u64::from(bytes.get(at + i).copied().unwrap_or(0)) << (8 * i)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_models() {
        assert_eq!(chunks(b"abcdef", &[0, 2]), [&b"a"[..], b"bcd", b"e", b"f"]);
        assert_eq!(reference_data_end(b".\r\nX"), Some(3));
        assert_eq!(reference_data_end(b"a\r\n.\r\nX"), Some(6));
        assert_eq!(reference_data_end(b"a\r\n..\r\n"), None);
        assert_eq!(reference_unstuff(b"a\r\n..b\r\n.\r\n"), b"a\r\n.b\r\n");
        assert_eq!(reference_unstuff(b".\r\n"), b"");
        assert!(has_bare_newline(b"a\nb"));
        assert!(has_bare_newline(b"a\r"));
        assert!(!has_bare_newline(b"a\r\nb"));
        assert_eq!(normalise_newlines(b"a\rb\nc"), b"a\r\nb\r\nc\r\n");
        let h = reference_headers(b"Received: x\r\nDATE: y\r\n\r\nMessage-Id: z\r\n");
        assert_eq!(
            (h.header_size, h.received, h.date, h.message_id),
            (24, 1, true, false)
        );
    }
}
