//! Content on its way out: dot-stuffing for SMTP and LF line ends for files.
//!
//! [`DotStuffer`] turns message content into a DATA payload: every bare LF or
//! bare CR becomes CRLF, a dot that starts a line is doubled, and `finish`
//! adds the terminating "." CRLF.  [`LfConverter`] turns CRLF into LF for
//! Unix mailbox files.  Both are streaming: a chunk may end anywhere.

use memchr::{memchr, memchr2};

/// Streaming outbound encoder (RFC 5321 4.5.2).
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// The last octet written ended a line (true at the start).
    at_line_start: bool,
    /// The last chunk ended with a CR whose LF may come next.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer::new()
    }
}

impl DotStuffer {
    pub fn new() -> DotStuffer {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Stuff one chunk, appending to `out`.
    pub fn feed_into(&mut self, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(data.len() + data.len() / 64 + 4);
        let mut i = 0;
        if self.pending_cr {
            if data.is_empty() {
                return;
            }
            self.pending_cr = false;
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
            if data[0] == b'\n' {
                i = 1;
            }
        }
        let n = data.len();
        while i < n {
            if self.at_line_start && data[i] == b'.' {
                out.push(b'.');
            }
            match memchr2(b'\r', b'\n', &data[i..]) {
                None => {
                    out.extend_from_slice(&data[i..]);
                    self.at_line_start = false;
                    return;
                }
                Some(k) => {
                    let p = i + k;
                    out.extend_from_slice(&data[i..p]);
                    if data[p] == b'\r' {
                        if p + 1 == n {
                            self.pending_cr = true;
                            self.at_line_start = false;
                            return;
                        }
                        i = if data[p + 1] == b'\n' { p + 2 } else { p + 1 };
                    } else {
                        i = p + 1;
                    }
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                }
            }
        }
    }

    /// Stuff one chunk.
    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.feed_into(data, &mut out);
        out
    }

    /// The tail: a CRLF if the content did not end with one, then "." CRLF.
    /// The stuffer is ready for a new message afterwards.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DotStuffer::new();
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.finish_into(&mut out);
        out
    }
}

/// The whole DATA payload for `data`, "." CRLF included.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut s = DotStuffer::new();
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 5);
    s.feed_into(data, &mut out);
    s.finish_into(&mut out);
    out
}

/// Streaming CRLF -> LF conversion; a lone CR stays.
#[derive(Debug, Clone, Default)]
pub struct LfConverter {
    /// The last chunk ended with a CR.
    pending_cr: bool,
}

impl LfConverter {
    pub fn new() -> LfConverter {
        LfConverter::default()
    }

    pub fn feed_into(&mut self, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(data.len() + 1);
        let mut i = 0;
        if self.pending_cr && !data.is_empty() {
            self.pending_cr = false;
            if data[0] == b'\n' {
                out.push(b'\n');
                i = 1;
            } else {
                out.push(b'\r');
            }
        }
        while let Some(k) = memchr(b'\r', &data[i..]) {
            let p = i + k;
            out.extend_from_slice(&data[i..p]);
            match data.get(p + 1) {
                None => {
                    self.pending_cr = true;
                    return;
                }
                Some(b'\n') => {
                    out.push(b'\n');
                    i = p + 2;
                }
                Some(_) => {
                    out.push(b'\r');
                    i = p + 1;
                }
            }
        }
        out.extend_from_slice(&data[i..]);
    }

    pub fn feed(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.feed_into(data, &mut out);
        out
    }

    /// A CR held back at the end of the last chunk.
    pub fn finish(&mut self) -> Vec<u8> {
        if std::mem::take(&mut self.pending_cr) {
            b"\r".to_vec()
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff_split(data: &[u8], step: usize) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        for piece in data.chunks(step.max(1)) {
            s.feed_into(piece, &mut out);
        }
        s.finish_into(&mut out);
        out
    }

    #[test]
    fn stuffing_table() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),
            (b"a\r.b\r", b"a\r\n..b\r\n.\r\n"),
            (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
            (b"\n\n", b"\r\n\r\n.\r\n"),
            (b"x.y\r\n..\r\n", b"x.y\r\n...\r\n.\r\n"),
        ];
        for &(input, want) in table {
            for step in 1..=input.len().max(1) {
                assert_eq!(stuff_split(input, step), want, "{input:?} step {step}");
            }
            assert_eq!(dot_stuff(input), want);
        }
    }

    #[test]
    fn lf_conversion() {
        let table: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a\r\nb\r\n", b"a\nb\n"),
            (b"a\rb\r", b"a\rb\r"),
            (b"a\r\r\n", b"a\r\n"),
            (b"\n\r\n\r", b"\n\n\r"),
        ];
        for &(input, want) in table {
            for step in 1..=input.len().max(1) {
                let mut c = LfConverter::new();
                let mut out = Vec::new();
                for piece in input.chunks(step) {
                    c.feed_into(piece, &mut out);
                }
                out.extend(c.finish());
                assert_eq!(out, want, "{input:?} step {step}");
            }
        }
    }
}
