//! SMTP replies: formatting them (server side) and parsing them (client side).
//!
//! [`format_reply`] writes `250-first` ... `250 last` lines, each with the
//! enhanced status code (RFC 3463) when one is given.  [`ReplyParser`] reads
//! replies from a server incrementally, multi-line replies joined.

use std::fmt;

use crate::error::Error;

/// RFC 5321 4.5.3.1.5: the longest reply line, CRLF included.
pub const MAX_REPLY_LINE: usize = 512;

/// Is `s` an enhanced status code `class.subject.detail` (RFC 3463)?
pub fn is_enhanced_code(s: &str) -> bool {
    let mut parts = s.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |p: &str, max: usize| {
        !p.is_empty() && p.len() <= max && p.bytes().all(|b| b.is_ascii_digit())
    };
    matches!(class, "2" | "4" | "5") && digits(subject, 3) && digits(detail, 3)
}

/// Format a reply; `lines` may be empty (a reply of the code alone).
pub fn format_reply(code: u16, enhanced: Option<&str>, lines: &[&str]) -> Result<Vec<u8>, Error> {
    if !(200..=599).contains(&code) {
        return Err(Error::Value(format!(
            "reply code {code} is not within 200..599"
        )));
    }
    if let Some(e) = enhanced {
        if !is_enhanced_code(e) {
            return Err(Error::Value(format!(
                "malformed enhanced status code {e:?}"
            )));
        }
        if e.as_bytes()[0] != b'0' + (code / 100) as u8 {
            return Err(Error::Value(format!(
                "enhanced status code {e} does not match reply code {code}"
            )));
        }
    }
    let code = code.to_string();
    let empty = [""];
    let lines = if lines.is_empty() { &empty[..] } else { lines };
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 16).sum());
    for (i, text) in lines.iter().enumerate() {
        if text.contains(['\r', '\n']) {
            return Err(Error::Value(format!("CR or LF in reply text {text:?}")));
        }
        let start = out.len();
        let last = i + 1 == lines.len();
        out.extend_from_slice(code.as_bytes());
        match (enhanced, text.is_empty()) {
            // "250" alone ends a reply; "250-" continues it.
            (None, true) => {
                if !last {
                    out.push(b'-');
                }
            }
            (None, false) => {
                out.push(if last { b' ' } else { b'-' });
                out.extend_from_slice(text.as_bytes());
            }
            (Some(e), empty) => {
                out.push(if last { b' ' } else { b'-' });
                out.extend_from_slice(e.as_bytes());
                if !empty {
                    out.push(b' ');
                    out.extend_from_slice(text.as_bytes());
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        if out.len() - start > MAX_REPLY_LINE {
            return Err(Error::Value(format!(
                "reply line longer than {MAX_REPLY_LINE} octets"
            )));
        }
    }
    Ok(out)
}

/// A reply read on the client side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// The enhanced status code of the first line, if it has one.
    pub enhanced: Option<String>,
    /// The text of every line, without the codes.
    pub lines: Vec<String>,
}

impl Reply {
    /// The lines joined with "\n".
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = &self.enhanced {
            write!(f, " {e}")?;
        }
        write!(f, " {}", self.text())
    }
}

/// Most lines accepted in one reply (a bound on memory).
const MAX_REPLY_LINES: usize = 1000;

/// Incremental reply parser.
#[derive(Debug, Clone)]
pub struct ReplyParser {
    buf: Vec<u8>,
    /// Octets of `buf` already searched for LF.
    scanned: usize,
    max_line: usize,
    /// The reply being read: its code and its lines so far.
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    pub fn new(max_line: usize) -> ReplyParser {
        ReplyParser {
            buf: Vec::new(),
            scanned: 0,
            max_line,
            code: None,
            lines: Vec::new(),
        }
    }

    pub fn receive_data(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn fail(&mut self, msg: String) -> Error {
        self.code = None;
        self.lines.clear();
        Error::parse(msg)
    }

    /// The next whole reply, or `None` when more data is needed.  Lines end
    /// with CRLF (a bare LF is tolerated from servers).
    pub fn next_reply(&mut self) -> Result<Option<Reply>, Error> {
        loop {
            let Some(k) = memchr::memchr(b'\n', &self.buf[self.scanned..]) else {
                self.scanned = self.buf.len();
                if self.buf.len() > self.max_line {
                    self.buf.clear();
                    self.scanned = 0;
                    return Err(
                        self.fail(format!("reply line longer than {} octets", self.max_line))
                    );
                }
                return Ok(None);
            };
            let end = self.scanned + k + 1;
            let mut line: Vec<u8> = self.buf.drain(..end).collect();
            self.scanned = 0;
            if line.len() > self.max_line {
                return Err(self.fail(format!("reply line longer than {} octets", self.max_line)));
            }
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            let b = line.as_bytes();
            let code_ok = b.len() >= 3
                && (b'2'..=b'5').contains(&b[0])
                && b[1].is_ascii_digit()
                && b[2].is_ascii_digit();
            let sep = b.get(3).copied();
            if !code_ok || !matches!(sep, None | Some(b' ') | Some(b'-')) {
                return Err(self.fail(format!("malformed reply line {line:?}")));
            }
            let code: u16 = line[..3].parse().expect("three digits");
            if self.code.is_some_and(|c| c != code) {
                return Err(self.fail(format!(
                    "reply line {line:?} does not continue reply {}",
                    self.code.unwrap_or(0)
                )));
            }
            self.code = Some(code);
            self.lines.push(line.get(4..).unwrap_or("").to_owned());
            if sep == Some(b'-') {
                if self.lines.len() >= MAX_REPLY_LINES {
                    return Err(self.fail(format!("reply of more than {MAX_REPLY_LINES} lines")));
                }
                continue;
            }
            self.code = None;
            let mut lines = std::mem::take(&mut self.lines);
            let class = char::from(b[0]);
            let enhanced = split_enhanced(&lines[0], class).map(|(e, _)| e.to_owned());
            if enhanced.is_some() {
                for l in &mut lines {
                    if let Some((_, rest)) = split_enhanced(l, class) {
                        *l = rest.to_owned();
                    }
                }
            }
            return Ok(Some(Reply {
                code,
                enhanced,
                lines,
            }));
        }
    }
}

/// Split `class.subject.detail[ text]` into the code and the text.
fn split_enhanced(line: &str, class: char) -> Option<(&str, &str)> {
    let (head, rest) = line.split_once(' ').unwrap_or((line, ""));
    (head.starts_with(class) && is_enhanced_code(head)).then_some((head, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(code: u16, enhanced: Option<&str>, lines: &[&str]) -> String {
        String::from_utf8(format_reply(code, enhanced, lines).unwrap()).unwrap()
    }

    #[test]
    fn formats() {
        assert_eq!(fmt(250, None, &["ok"]), "250 ok\r\n");
        assert_eq!(fmt(250, None, &["a", "b"]), "250-a\r\n250 b\r\n");
        assert_eq!(
            fmt(250, Some("2.0.0"), &["a", "b"]),
            "250-2.0.0 a\r\n250 2.0.0 b\r\n"
        );
        assert_eq!(fmt(250, None, &[]), "250\r\n");
        assert_eq!(fmt(250, Some("2.1.0"), &[]), "250 2.1.0\r\n");
        assert_eq!(fmt(250, None, &["", "x"]), "250-\r\n250 x\r\n");
        assert_eq!(fmt(354, None, &["go ahead"]), "354 go ahead\r\n");
    }

    #[test]
    fn format_rejects() {
        for (code, e, lines) in [
            (199, None, vec!["x"]),
            (600, None, vec!["x"]),
            (250, Some("2.0"), vec!["x"]),
            (250, Some("2.0.0."), vec!["x"]),
            (250, Some("5.0.0"), vec!["x"]),
            (250, Some("2.1000.0"), vec!["x"]),
            (250, None, vec!["a\rb"]),
            (250, None, vec!["a", "b\n"]),
        ] {
            assert!(
                format_reply(code, e, &lines).is_err(),
                "{code} {e:?} {lines:?}"
            );
        }
        let long = "x".repeat(507);
        assert!(format_reply(250, None, &[&long]).is_err());
        assert!(format_reply(250, None, &[&long[1..]]).is_ok());
    }

    #[test]
    fn parses_whole_bytewise_and_split() {
        let input = b"220 mx.example ESMTP\r\n250-mx.example\r\n250-SIZE 100\r\n250 PIPELINING\r\n250 2.1.0 Ok\r\n550-5.1.1 no\r\n550 5.1.1 such user\r\n";
        let want = vec![
            Reply {
                code: 220,
                enhanced: None,
                lines: vec!["mx.example ESMTP".into()],
            },
            Reply {
                code: 250,
                enhanced: None,
                lines: vec!["mx.example".into(), "SIZE 100".into(), "PIPELINING".into()],
            },
            Reply {
                code: 250,
                enhanced: Some("2.1.0".into()),
                lines: vec!["Ok".into()],
            },
            Reply {
                code: 550,
                enhanced: Some("5.1.1".into()),
                lines: vec!["no".into(), "such user".into()],
            },
        ];
        for step in 1..=input.len() {
            let mut p = ReplyParser::new(4096);
            let mut got = Vec::new();
            for piece in input.chunks(step) {
                p.receive_data(piece);
                while let Some(r) = p.next_reply().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got, want, "step {step}");
        }
    }

    #[test]
    fn parse_edge_cases() {
        let one = |s: &[u8]| {
            let mut p = ReplyParser::new(64);
            p.receive_data(s);
            p.next_reply()
        };
        assert_eq!(one(b"250\r\n").unwrap().unwrap().lines, vec![String::new()]);
        assert_eq!(
            one(b"250 2.0.0\r\n").unwrap().unwrap().enhanced.as_deref(),
            Some("2.0.0")
        );
        // The class must match the code.
        assert_eq!(one(b"250 5.0.0 x\r\n").unwrap().unwrap().enhanced, None);
        assert_eq!(one(b"250 ok\n").unwrap().unwrap().text(), "ok");
        assert!(one(b"250-a\r\n251 b\r\n").is_err());
        assert!(one(b"25 x\r\n").is_err());
        assert!(one(b"250x\r\n").is_err());
        assert!(one(b"hello\r\n").is_err());
        assert!(one(&[b'2'; 100]).is_err());
        assert_eq!(one(b"250-a\r\n").unwrap(), None);
    }
}
