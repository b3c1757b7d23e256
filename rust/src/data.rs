//! Message content: the DATA decoder and the scan of content (DATA and BDAT).
//!
//! [`DataDecoder`] reads the bytes after `354` in chunks of any size: it
//! removes the dot-stuffing, finds the end (only CRLF "." CRLF ends the data;
//! a bare CR or LF never ends a line) and checks the text-line limit.
//! [`ContentScan`] watches the un-stuffed content (or BDAT's verbatim
//! content): size, 8-bit octets, and the header block (its size, the number
//! of Received fields, Date and Message-ID).
//!
//! Everything here is a function of the octets only, never of where the
//! reads were cut.  Each problem has the octet where it happens:
//!
//! - a bare LF: the LF; a bare CR: the octet after it (the one that shows
//!   the CR is not followed by LF);
//! - a text line over the limit: its first octet beyond the limit;
//! - a header block or message over its limit: its first octet beyond it.
//!
//! The first problem in octet order is the message's error; when one octet
//! breaks several rules, the order is [`ContentError::BareNewline`],
//! [`ContentError::LineLength`], [`ContentError::HeaderSize`],
//! [`ContentError::Size`].  The content before that octet is handed out,
//! nothing from it on; the rest is still counted (the summary's figures
//! cover the whole message) until the real end of the message, so that the
//! session stays framed.

use memchr::{memchr, memchr2};

/// Why a message is refused.  The first problem in octet order is the one
/// reported; at one octet, the order of the variants below decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentError {
    /// Over the maximum message size (552 5.3.4).
    Size,
    /// A text line over the limit, CRLF included (554 5.6.0).
    LineLength,
    /// A bare CR or LF in DATA (554 5.5.2).
    BareNewline,
    /// A header block over its limit (552 5.3.4).
    HeaderSize,
}

impl ContentError {
    /// The name the binding uses (`DataEnd.error`).
    pub fn name(self) -> &'static str {
        match self {
            ContentError::Size => "size",
            ContentError::LineLength => "line_length",
            ContentError::BareNewline => "bare_newline",
            ContentError::HeaderSize => "header_size",
        }
    }

    pub fn code(self) -> u16 {
        match self {
            ContentError::Size | ContentError::HeaderSize => 552,
            ContentError::LineLength | ContentError::BareNewline => 554,
        }
    }

    pub fn enhanced(self) -> &'static str {
        match self {
            ContentError::Size | ContentError::HeaderSize => "5.3.4",
            ContentError::LineLength => "5.6.0",
            ContentError::BareNewline => "5.5.2",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            ContentError::Size => "Message size exceeds fixed maximum message size",
            ContentError::LineLength => "Message rejected: text line too long",
            ContentError::BareNewline => "Message rejected: bare CR or LF in message text",
            ContentError::HeaderSize => "Message header size exceeds limit",
        }
    }
}

/// The limits a message is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataLimits {
    /// Longest text line, CRLF included (DATA only).
    pub max_text_line: u64,
    /// Largest message, un-stuffed.
    pub max_message_size: u64,
    /// Largest header block, its blank line included.
    pub max_header_size: u64,
}

impl DataLimits {
    /// No limits at all.
    pub const NONE: DataLimits = DataLimits {
        max_text_line: u64::MAX,
        max_message_size: u64::MAX,
        max_header_size: u64::MAX,
    };
}

/// What is known about a message once it has ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataSummary {
    /// Octets of content seen, dropped ones included.
    pub size: u64,
    pub received_count: u32,
    pub has_date: bool,
    pub has_message_id: bool,
    /// Octets of the header block, its blank line included.
    pub header_size: u64,
    pub eight_bit: bool,
    pub error: Option<ContentError>,
}

/// How much of a line start is kept to recognise a field name.
const PREFIX: usize = 11;

/// Line-by-line watch over the header block.
#[derive(Debug, Clone, Default)]
struct HeaderScan {
    done: bool,
    size: u64,
    /// The first octets of the current line.
    prefix: [u8; PREFIX],
    prefix_len: usize,
    line_len: u64,
    received: u32,
    date: bool,
    message_id: bool,
}

impl HeaderScan {
    fn feed(&mut self, mut run: &[u8]) {
        while !self.done && !run.is_empty() {
            let (line, ends) = match memchr(b'\n', run) {
                Some(k) => (&run[..=k], true),
                None => (run, false),
            };
            if self.prefix_len < PREFIX {
                let n = (PREFIX - self.prefix_len).min(line.len());
                self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&line[..n]);
                self.prefix_len += n;
            }
            self.line_len += line.len() as u64;
            self.size += line.len() as u64;
            if ends {
                self.end_line();
            }
            run = &run[line.len()..];
        }
    }

    fn end_line(&mut self) {
        let p = &self.prefix[..self.prefix_len];
        if p == b"\r\n" || p == b"\n" {
            self.done = true;
        } else if starts_with_ignore_case(p, b"received:") {
            self.received += 1;
        } else if starts_with_ignore_case(p, b"date:") {
            self.date = true;
        } else if starts_with_ignore_case(p, b"message-id:") {
            self.message_id = true;
        }
        self.prefix_len = 0;
        self.line_len = 0;
    }
}

fn starts_with_ignore_case(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// True when some octet is >= 0x80 (a loop the compiler vectorises).
fn has_eight_bit(run: &[u8]) -> bool {
    run.chunks(256)
        .any(|c| c.iter().fold(0u8, |acc, &b| acc | b) & 0x80 != 0)
}

/// Size, 8-bit and header figures of a message's content, fed in runs.
#[derive(Debug, Clone)]
pub struct ContentScan {
    limits: DataLimits,
    size: u64,
    eight_bit: bool,
    header: HeaderScan,
    error: Option<ContentError>,
}

impl ContentScan {
    pub fn new(limits: DataLimits) -> ContentScan {
        ContentScan {
            limits,
            size: 0,
            eight_bit: false,
            header: HeaderScan::default(),
            error: None,
        }
    }

    /// Account for a run of content; returns how many of its first octets
    /// may be passed on: all of them, or those before the octet where the
    /// first problem of the message is (none once a problem was found).
    pub fn feed(&mut self, run: &[u8]) -> usize {
        let was_ok = self.error.is_none();
        let before = self.size;
        self.size += run.len() as u64;
        if !self.eight_bit {
            self.eight_bit = has_eight_bit(run);
        }
        // (offset in `run` of the first octet over a limit, the limit)
        let mut first: Option<(u64, ContentError)> = None;
        if !self.header.done {
            let header_before = self.header.size;
            self.header.feed(run);
            if self.header.size > self.limits.max_header_size {
                let at = self.limits.max_header_size.saturating_sub(header_before);
                first = Some((at, ContentError::HeaderSize));
            }
        }
        if self.size > self.limits.max_message_size {
            let at = self.limits.max_message_size.saturating_sub(before);
            if first.is_none_or(|(h, _)| at < h) {
                first = Some((at, ContentError::Size));
            }
        }
        if !was_ok {
            return 0;
        }
        match first {
            Some((at, e)) => {
                self.error = Some(e);
                // `at` < run.len(): the limit was passed within this run.
                at as usize
            }
            None => run.len(),
        }
    }

    /// Record a problem, unless one was found before.
    pub fn fail(&mut self, e: ContentError) {
        self.error.get_or_insert(e);
    }

    pub fn error(&self) -> Option<ContentError> {
        self.error
    }

    /// Octets seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn set_max_message_size(&mut self, value: u64) {
        self.limits.max_message_size = value;
    }

    pub fn summary(&self) -> DataSummary {
        DataSummary {
            size: self.size,
            received_count: self.header.received,
            has_date: self.header.date,
            has_message_id: self.header.message_id,
            header_size: self.header.size,
            eight_bit: self.eight_bit,
            error: self.error,
        }
    }
}

/// Where the decoder is within a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Just after CRLF (and at the very start).
    LineStart,
    /// Inside a line.
    InLine,
    /// After a CR inside a line.
    Cr,
    /// After a dot at the start of a line.
    Dot,
    /// After CRLF "." CR: one LF away from the end.
    DotCr,
    /// The end has been seen.
    Done,
}

/// Progress of one [`DataDecoder::decode`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Input octets used; less than given only when the end was found.
    pub consumed: usize,
    /// CRLF "." CRLF has been seen.
    pub done: bool,
}

/// Streaming DATA decoder.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    state: State,
    /// Un-stuffed octets of the current line so far.
    line_len: u64,
    max_text_line: u64,
    scan: ContentScan,
}

impl DataDecoder {
    pub fn new(limits: DataLimits) -> DataDecoder {
        DataDecoder {
            state: State::LineStart,
            line_len: 0,
            max_text_line: limits.max_text_line,
            scan: ContentScan::new(limits),
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn summary(&self) -> DataSummary {
        self.scan.summary()
    }

    pub fn set_max_message_size(&mut self, value: u64) {
        self.scan.set_max_message_size(value);
    }

    /// Pass on a run of content (as much of it as the scan allows).
    #[inline]
    fn emit(&mut self, run: &[u8], out: &mut Vec<u8>) {
        if !run.is_empty() {
            let ok = self.scan.feed(run);
            out.extend_from_slice(&run[..ok]);
        }
    }

    /// A problem at `input[at]`: the content before it is passed on (and
    /// scanned, so that a problem the scan finds earlier still wins), then
    /// the problem is recorded unless one came before.
    #[inline]
    fn fail_at(
        &mut self,
        input: &[u8],
        run: &mut usize,
        at: usize,
        e: ContentError,
        out: &mut Vec<u8>,
    ) {
        self.emit(&input[*run..at], out);
        *run = at;
        self.scan.fail(e);
    }

    /// Count `len` octets of the current line, starting at `input[from]`;
    /// the first octet beyond the text-line limit is a problem.
    #[inline]
    fn count_line(
        &mut self,
        input: &[u8],
        run: &mut usize,
        from: usize,
        len: usize,
        out: &mut Vec<u8>,
    ) {
        let len = len as u64;
        let max = self.max_text_line;
        if self.line_len <= max && self.line_len.saturating_add(len) > max {
            let at = from + (max - self.line_len) as usize;
            self.fail_at(input, run, at, ContentError::LineLength, out);
        }
        self.line_len = self.line_len.saturating_add(len);
    }

    /// Decode a chunk, appending un-stuffed content to `out` (up to the
    /// octet of the message's first problem).  Stops right after the final
    /// CRLF "." CRLF.
    ///
    /// Every octet is checked, in order, before any content after it is
    /// passed on, so the content and the error do not depend on the cuts.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Decoded {
        let n = input.len();
        let mut i = 0;
        // Start of the content not yet passed to `emit`.
        let mut run = 0;
        loop {
            match self.state {
                State::InLine => match memchr2(b'\r', b'\n', &input[i..]) {
                    Some(k) => {
                        let p = i + k;
                        if input[p] != b'\r' {
                            // A bare LF: a problem at the LF itself.
                            self.count_line(input, &mut run, i, k, out);
                            self.fail_at(input, &mut run, p, ContentError::BareNewline, out);
                            self.count_line(input, &mut run, p, 1, out);
                            i = p + 1;
                        } else if p + 2 < n && input[p + 1] == b'\n' && input[p + 2] != b'.' {
                            // The common case: CRLF and a line that does not
                            // start with a dot; stay in the line loop.
                            self.count_line(input, &mut run, i, k + 2, out);
                            self.line_len = 0;
                            i = p + 2;
                        } else {
                            self.count_line(input, &mut run, i, k + 1, out);
                            self.state = State::Cr;
                            i = p + 1;
                        }
                    }
                    None => {
                        self.count_line(input, &mut run, i, n - i, out);
                        i = n;
                        break;
                    }
                },
                State::Cr => {
                    if i == n {
                        break;
                    }
                    if input[i] == b'\n' {
                        self.count_line(input, &mut run, i, 1, out);
                        self.line_len = 0;
                        i += 1;
                        self.state = State::LineStart;
                    } else {
                        // A bare CR, shown by this octet (which belongs to
                        // the line and is counted there).
                        self.fail_at(input, &mut run, i, ContentError::BareNewline, out);
                        self.state = State::InLine;
                    }
                }
                State::LineStart => {
                    if i == n {
                        break;
                    }
                    if input[i] == b'.' {
                        // Not content, not counted.
                        self.emit(&input[run..i], out);
                        i += 1;
                        run = i;
                        self.state = State::Dot;
                    } else {
                        self.state = State::InLine;
                    }
                }
                State::Dot => {
                    if i == n {
                        break;
                    }
                    if input[i] == b'\r' {
                        // Either the end or a bare CR: never content.
                        self.emit(&input[run..i], out);
                        i += 1;
                        run = i;
                        self.state = State::DotCr;
                    } else {
                        self.state = State::InLine;
                    }
                }
                State::DotCr => {
                    if i == n {
                        break;
                    }
                    if input[i] == b'\n' {
                        self.state = State::Done;
                        return Decoded {
                            consumed: i + 1,
                            done: true,
                        };
                    }
                    self.fail_at(input, &mut run, i, ContentError::BareNewline, out);
                    self.state = State::InLine;
                }
                State::Done => {
                    return Decoded {
                        consumed: 0,
                        done: true,
                    }
                }
            }
        }
        self.emit(&input[run..i], out);
        Decoded {
            consumed: n,
            done: false,
        }
    }
}

/// Un-stuff a whole DATA payload ending in CRLF "." CRLF (no limits).
/// `Err` with the octets used when the payload is malformed: a bare CR or LF,
/// no end, or octets after the end.
pub fn unstuff(data: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut dec = DataDecoder::new(DataLimits::NONE);
    let mut out = Vec::with_capacity(data.len());
    let r = dec.decode(data, &mut out);
    if dec.summary().error.is_some() {
        Err("bare CR or LF in data")
    } else if !r.done {
        Err("data does not end with CRLF.CRLF")
    } else if r.consumed != data.len() {
        Err("octets after the end of data")
    } else {
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: DataLimits = DataLimits {
        max_text_line: 1000,
        max_message_size: 1 << 20,
        max_header_size: 1 << 16,
    };

    /// (content, summary when the end was seen, octets left over, problem seen)
    type Outcome = (Vec<u8>, Option<DataSummary>, usize, bool);

    /// Decode `input` cut at `cuts`.
    fn decode_split(input: &[u8], cuts: &[usize], limits: DataLimits) -> Outcome {
        let mut dec = DataDecoder::new(limits);
        let mut out = Vec::new();
        let mut bounds = vec![0];
        bounds.extend(cuts.iter().copied().filter(|&c| c > 0 && c < input.len()));
        bounds.push(input.len());
        bounds.sort_unstable();
        for w in bounds.windows(2) {
            let piece = &input[w[0]..w[1]];
            let r = dec.decode(piece, &mut out);
            if r.done {
                let left = piece.len() - r.consumed + (input.len() - w[1]);
                let s = dec.summary();
                return (out, Some(s), left, s.error.is_some());
            }
            assert_eq!(r.consumed, piece.len());
        }
        let failed = dec.summary().error.is_some();
        (out, None, 0, failed)
    }

    /// Run a case whole, byte by byte, and cut at every single point: the
    /// content (that of a refused message too), the figures and the error
    /// may not differ.
    fn all_ways(input: &[u8], limits: DataLimits) -> Outcome {
        let whole = decode_split(input, &[], limits);
        let same = |other: &Outcome, how: &str| {
            assert_eq!(other, &whole, "{how}");
        };
        let bytewise: Vec<usize> = (1..input.len()).collect();
        same(&decode_split(input, &bytewise, limits), "byte by byte");
        for cut in 1..input.len() {
            same(
                &decode_split(input, &[cut], limits),
                &format!("cut at {cut}"),
            );
        }
        whole
    }

    #[test]
    fn unstuffing_table() {
        let table: &[(&[u8], &[u8], usize)] = &[
            (b".\r\n", b"", 0),
            (b".\r\nMAIL", b"", 4),
            (b"a\r\n.\r\n", b"a\r\n", 0),
            (b"..\r\n.\r\n", b".\r\n", 0),
            (b"...\r\n.\r\n", b"..\r\n", 0),
            (b".a\r\n.\r\n", b"a\r\n", 0),
            (b"a\r\n..b\r\n.\r\nQUIT\r\n", b"a\r\n.b\r\n", 6),
            (b"a.\r\n.b.\r\n.\r\n", b"a.\r\nb.\r\n", 0),
            (b"\r\n\r\n.\r\n", b"\r\n\r\n", 0),
        ];
        for &(input, want, left) in table {
            let (out, summary, l, _) = all_ways(input, LIMITS);
            assert_eq!(out, want, "{:?}", String::from_utf8_lossy(input));
            let s = summary.expect("ended");
            assert_eq!(s.error, None);
            assert_eq!(s.size, want.len() as u64);
            assert_eq!(l, left);
        }
    }

    #[test]
    fn smuggling_never_ends_data() {
        for smuggle in [
            &b"\n.\n"[..],
            b"\r.\r",
            b"\r\n.\n",
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\rX",
        ] {
            let mut input = b"Subject: x\r\n\r\nbody".to_vec();
            input.extend_from_slice(smuggle);
            input.extend_from_slice(b"MAIL FROM:<x@y>\r\nRCPT TO:<z@y>\r\nDATA\r\n");
            let (_, summary, _, _) = all_ways(&input, LIMITS);
            assert!(summary.is_none(), "{smuggle:?} ended the data");
            input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
            let (out, summary, left, _) = all_ways(&input, LIMITS);
            let s = summary.unwrap();
            assert_eq!(s.error, Some(ContentError::BareNewline), "{smuggle:?}");
            assert_eq!(left, 6);
            assert!(
                !out.windows(4).any(|w| w == b"MAIL"),
                "content after the error was returned"
            );
        }
    }

    #[test]
    fn line_length() {
        let ok = [vec![b'a'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(all_ways(&ok, LIMITS).1.unwrap().error, None);
        // A stuffed dot does not count.
        let ok = [b".".to_vec(), vec![b'.'; 998], b"\r\n.\r\n".to_vec()].concat();
        assert_eq!(all_ways(&ok, LIMITS).1.unwrap().error, None);
        let long = [vec![b'a'; 999], b"\r\n.\r\n".to_vec()].concat();
        let (out, s, _, _) = all_ways(&long, LIMITS);
        assert_eq!(s.unwrap().error, Some(ContentError::LineLength));
        // The 1001st octet of the line (its LF) is the problem.
        assert_eq!(out, [vec![b'a'; 999], b"\r".to_vec()].concat());
    }

    #[test]
    fn size_limit() {
        let limits = DataLimits {
            max_message_size: 10,
            ..LIMITS
        };
        let (out, s, _, _) = all_ways(b"0123456\r\n\r\n.\r\n", limits);
        let s = s.unwrap();
        assert_eq!(s.error, Some(ContentError::Size));
        assert_eq!(s.size, 11);
        assert_eq!(out, b"0123456\r\n\r");
        let (_, s, _, _) = all_ways(b"0123456\r\n\r\n", limits);
        assert!(s.is_none());
        let (_, s, _, _) = all_ways(b"01234567\r\n.\r\n", limits);
        assert_eq!(s.unwrap().error, None);
    }

    #[test]
    fn first_error_wins() {
        let limits = DataLimits {
            max_message_size: 10,
            ..LIMITS
        };
        let (_, s, _, _) = all_ways(b"a\nbcdefghijklmnop\r\n.\r\n", limits);
        assert_eq!(s.unwrap().error, Some(ContentError::BareNewline));
    }

    /// The first problem in octet order wins, whatever the cuts (before,
    /// a long line was checked at its end or at the end of a read, the size
    /// when content was handed on, a bare CR/LF when scanned); the content
    /// handed out is exactly what comes before it.
    #[test]
    fn error_precedence_is_octet_order() {
        let limits = |line: u64, size: u64, header: u64| DataLimits {
            max_text_line: line,
            max_message_size: size,
            max_header_size: header,
        };
        let big = 1 << 20;
        // (input, limits, error, content handed out)
        let table: &[(&[u8], DataLimits, ContentError, &[u8])] = &[
            // A line over the limit before a bare LF in it, and after.
            (
                b"abcdef\nxy\r\n.\r\n",
                limits(4, big, big),
                ContentError::LineLength,
                b"abcd",
            ),
            (
                b"ab\ncdefgh\r\n.\r\n",
                limits(4, big, big),
                ContentError::BareNewline,
                b"ab",
            ),
            // A bare CR shows at the octet after it.
            (
                b"abcd\refgh\r\n.\r\n",
                limits(3, big, big),
                ContentError::LineLength,
                b"abc",
            ),
            (
                b"abc\rdefgh\r\n.\r\n",
                limits(4, big, big),
                ContentError::BareNewline,
                b"abc\r",
            ),
            (
                b"ab\rcdefgh\r\n.\r\n",
                limits(4, big, big),
                ContentError::BareNewline,
                b"ab\r",
            ),
            // One octet, two problems: the bare LF is the 5th octet.
            (
                b"abcd\nx\r\n.\r\n",
                limits(4, big, big),
                ContentError::BareNewline,
                b"abcd",
            ),
            // Size against a bare newline and a long line.
            (
                b"abcdef\nx\r\n.\r\n",
                limits(big, 3, big),
                ContentError::Size,
                b"abc",
            ),
            (
                b"ab\ncdefx\r\n.\r\n",
                limits(big, 3, big),
                ContentError::BareNewline,
                b"ab",
            ),
            (
                b"abc\nx\r\n.\r\n",
                limits(big, 3, big),
                ContentError::BareNewline,
                b"abc",
            ),
            (
                b"abcdefgh\r\n.\r\n",
                limits(5, 3, big),
                ContentError::Size,
                b"abc",
            ),
            (
                b"abcdefgh\r\n.\r\n",
                limits(3, 5, big),
                ContentError::LineLength,
                b"abc",
            ),
            (
                b"abcdefgh\r\n.\r\n",
                limits(3, 3, big),
                ContentError::LineLength,
                b"abc",
            ),
            // Header size against the others.
            (
                b"abcdefgh\r\n.\r\n",
                limits(big, 3, 3),
                ContentError::HeaderSize,
                b"abc",
            ),
            (
                b"abcdefgh\r\n.\r\n",
                limits(big, 4, 3),
                ContentError::HeaderSize,
                b"abc",
            ),
            (
                b"abcdefgh\r\n.\r\n",
                limits(big, 3, 4),
                ContentError::Size,
                b"abc",
            ),
            (
                b"abcdef\nh\r\n.\r\n",
                limits(big, big, 4),
                ContentError::HeaderSize,
                b"abcd",
            ),
            (
                b"ab\r\n.x\ny\r\n.\r\n",
                limits(big, big, 5),
                ContentError::BareNewline,
                b"ab\r\nx",
            ),
            // A stuffed dot counts nowhere; ".\r" not before LF drops both.
            (
                b"..abc\r\n.\r\n",
                limits(big, 3, big),
                ContentError::Size,
                b".ab",
            ),
            (
                b"a\r\n.\rbcdef\r\n.\r\n",
                limits(4, big, big),
                ContentError::BareNewline,
                b"a\r\n",
            ),
        ];
        for &(input, limits, error, content) in table {
            let (out, s, left, _) = all_ways(input, limits);
            let how = String::from_utf8_lossy(input);
            let s = s.unwrap_or_else(|| panic!("{how:?} did not end"));
            assert_eq!((s.error, left), (Some(error), 0), "{how:?}");
            assert_eq!(out, content, "{how:?}");
        }
    }

    #[test]
    fn header_scan() {
        let msg = b"Received: a\r\n\tb\r\nRECEIVED: c\r\nDate: now\r\nmessage-id: <x@y>\r\nX-Received: no\r\n\r\nReceived: body\r\n\xe9\r\n.\r\n";
        let (_, s, _, _) = all_ways(msg, LIMITS);
        let s = s.unwrap();
        assert_eq!(s.received_count, 2);
        assert!(s.has_date && s.has_message_id && s.eight_bit);
        let header_end = msg.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(s.header_size, header_end as u64);
        // No blank line: the whole message is the header block.
        let (_, s, _, _) = all_ways(b"Subject: x\r\nbody\r\n.\r\n", LIMITS);
        let s = s.unwrap();
        assert_eq!(s.header_size, s.size);
        assert!(!s.has_date && !s.eight_bit);
        let limits = DataLimits {
            max_header_size: 20,
            ..LIMITS
        };
        let (_, s, _, _) = all_ways(b"Subject: a long subject\r\n\r\nbody\r\n.\r\n", limits);
        assert_eq!(s.unwrap().error, Some(ContentError::HeaderSize));
        // A stuffed dot in a header line is removed before the scan.
        let (_, s, _, _) = all_ways(b".Date: x\r\n\r\n.\r\n", LIMITS);
        assert!(s.unwrap().has_date);
    }

    #[test]
    fn one_shot_unstuff() {
        assert_eq!(unstuff(b"..a\r\n.\r\n").unwrap(), b".a\r\n");
        assert!(unstuff(b"a\r\n").is_err());
        assert!(unstuff(b"a\n.\r\n").is_err());
        assert!(unstuff(b".\r\nx").is_err());
    }
}
