//! The receive buffer: bytes read from the peer that are not yet events.
//!
//! Finds CRLF-terminated lines, resuming the search where the last one
//! stopped so that each byte is scanned once.  Only CRLF ends a line: a bare
//! CR or LF stays inside it.  A line over its limit is dropped as it arrives
//! (the buffer never holds more than the limit of a line) and reported once,
//! when its CRLF comes.

/// The outcome of a search for the next line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineScan {
    /// A line of this many octets (CRLF excluded) starts the pending bytes;
    /// the caller reads it and then consumes it with its CRLF.
    Line(usize),
    /// A line over the limit ended; it has been consumed.
    TooLong,
    /// No complete line yet.
    Incomplete,
}

/// Bytes received and not yet consumed.
#[derive(Debug, Default)]
pub struct ReceiveBuffer {
    data: Vec<u8>,
    /// Start of the pending bytes in `data`.
    start: usize,
    /// Octets of the pending bytes already searched for a line end.
    scanned: usize,
    /// Dropping the rest of a line that went over its limit.
    discarding: bool,
}

impl ReceiveBuffer {
    pub fn new() -> ReceiveBuffer {
        ReceiveBuffer::default()
    }

    /// Append bytes, first compacting away consumed ones when that is cheap.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.start > 0 && (self.start == self.data.len() || self.start >= self.data.len() / 2) {
            self.data.drain(..self.start);
            self.start = 0;
        }
        self.data.extend_from_slice(bytes);
    }

    /// The bytes not yet consumed.
    #[inline]
    pub fn pending(&self) -> &[u8] {
        &self.data[self.start..]
    }

    /// Number of pending octets.
    #[inline]
    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True while dropping the remainder of an over-long line.
    pub fn is_discarding(&self) -> bool {
        self.discarding
    }

    /// Drop `n` pending octets; the next line search starts after them.
    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        self.scanned = 0;
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    /// Drop everything pending (and any over-long line); returns the count.
    pub fn clear(&mut self) -> usize {
        let n = self.len();
        self.data.clear();
        self.start = 0;
        self.scanned = 0;
        self.discarding = false;
        n
    }

    /// Look for the next CRLF-terminated line of at most `limit` octets,
    /// CRLF included.
    pub fn find_line(&mut self, limit: usize) -> LineScan {
        let pending = &self.data[self.start..];
        let mut from = self.scanned;
        let mut end = None;
        while let Some(k) = memchr::memchr(b'\n', &pending[from..]) {
            let lf = from + k;
            if lf > 0 && pending[lf - 1] == b'\r' {
                end = Some(lf + 1);
                break;
            }
            from = lf + 1;
        }
        let len = pending.len();
        let last_cr = pending.last() == Some(&b'\r');
        match end {
            Some(total) if self.discarding || total > limit => {
                self.discarding = false;
                self.consume(total);
                LineScan::TooLong
            }
            Some(total) => {
                self.scanned = total;
                LineScan::Line(total - 2)
            }
            None if self.discarding || len >= limit => {
                // No line of `limit` octets can end here any more.  Keep a
                // final CR: it may be the first half of the line's CRLF.
                self.discarding = true;
                self.consume(len - usize::from(last_cr));
                LineScan::Incomplete
            }
            None => {
                self.scanned = len;
                LineScan::Incomplete
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` octets and collect the lines found.
    fn lines(input: &[u8], step: usize, limit: usize) -> Vec<Option<Vec<u8>>> {
        let mut buf = ReceiveBuffer::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            buf.extend(piece);
            loop {
                match buf.find_line(limit) {
                    LineScan::Line(n) => {
                        out.push(Some(buf.pending()[..n].to_vec()));
                        buf.consume(n + 2);
                    }
                    LineScan::TooLong => out.push(None),
                    LineScan::Incomplete => {
                        assert!(buf.len() <= limit, "holds {} octets", buf.len());
                        break;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn splits_only_at_crlf() {
        let input = b"a\r\nb\nc\rd\r\n\r\nlast";
        let want = vec![Some(b"a".to_vec()), Some(b"b\nc\rd".to_vec()), Some(vec![])];
        for step in 1..=input.len() {
            assert_eq!(lines(input, step, 512), want, "step {step}");
        }
    }

    #[test]
    fn too_long_lines_are_dropped_once() {
        let mut input = vec![b'x'; 2000];
        input.extend_from_slice(b"\r\nok\r\n");
        input.extend_from_slice(&[b'y'; 9]);
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(&[b'z'; 8]);
        input.extend_from_slice(b"\r\n");
        let want = vec![None, Some(b"ok".to_vec()), None, Some(vec![b'z'; 8])];
        for step in [1, 2, 3, 7, 10, 11, 12, 100, 5000] {
            assert_eq!(lines(&input, step, 10), want, "step {step}");
        }
    }

    #[test]
    fn crlf_split_at_limit_boundary() {
        // The CR is the limit-th octet; the LF arrives later.
        let mut buf = ReceiveBuffer::new();
        buf.extend(b"abcdefghi\r");
        assert_eq!(buf.find_line(10), LineScan::Incomplete);
        buf.extend(b"\n");
        assert_eq!(buf.find_line(10), LineScan::TooLong);
        buf.extend(b"abcdefgh\r");
        assert_eq!(buf.find_line(10), LineScan::Incomplete);
        buf.extend(b"\n");
        assert_eq!(buf.find_line(10), LineScan::Line(8));
    }

    #[test]
    fn clear_counts() {
        let mut buf = ReceiveBuffer::new();
        buf.extend(b"abc\r\ndef");
        assert_eq!(buf.find_line(512), LineScan::Line(3));
        buf.consume(5);
        assert_eq!(buf.clear(), 3);
        assert!(buf.is_empty());
    }
}
