//! ESMTP parameters of MAIL and RCPT (RFC 5321 4.1.2), and xtext (RFC 3461 4).
//!
//! Reads the text after the path; produces `KEYWORD[=value]` pairs in the
//! order given, keywords upper case, the values of ENVID, ORCPT and AUTH
//! xtext-decoded.  Whether a parameter is supported is for the session to say.

use std::fmt;

/// The parameters of one command, in the order they were given.
pub type Params = Vec<(String, Option<String>)>;

/// Keywords whose values are xtext (RFC 3461 4.2 and 4.4, RFC 4954 5).
const XTEXT_KEYWORDS: [&str; 3] = ["ENVID", "ORCPT", "AUTH"];

/// Why the parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamError {
    /// Not `KEYWORD[=value]` (501 5.5.4).
    Syntax(String),
    /// The same keyword twice (555 5.5.4).
    Repeated(String),
    /// An xtext value that does not decode (501 5.5.4).
    BadXtext(String),
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamError::Syntax(p) => write!(f, "Syntax error in parameter {p}"),
            ParamError::Repeated(k) => write!(f, "Parameter {k} given twice"),
            ParamError::BadXtext(k) => write!(f, "Bad xtext in parameter {k}"),
        }
    }
}

impl std::error::Error for ParamError {}

/// esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); we ask for a leading letter.
fn is_keyword(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
}

/// esmtp-value = 1*(%d33-60 / %d62-126), plus UTF-8 under SMTPUTF8.
fn is_value(v: &str, allow_utf8: bool) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|c| matches!(c, 33..=60 | 62..=126) || (allow_utf8 && c >= 0x80))
}

/// Does the parameter text name `keyword` (case-insensitively)?  A cheap look
/// before the path is parsed, so that SMTPUTF8 can govern the path.
pub fn mentions(text: &str, keyword: &str) -> bool {
    text.as_bytes().split(|&b| b == b' ').any(|p| {
        let k = p.split(|&b| b == b'=').next().unwrap_or(b"");
        k.eq_ignore_ascii_case(keyword.as_bytes())
    })
}

/// The non-empty pieces of `text` between spaces.
fn words(text: &str) -> impl Iterator<Item = &str> {
    let b = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        if i == b.len() {
            return None;
        }
        let start = i;
        // Parameters are short: a plain loop beats memchr's set-up.
        while i < b.len() && b[i] != b' ' {
            i += 1;
        }
        // Cut at ASCII spaces: character boundaries.
        Some(&text[start..i])
    })
}

/// Parse `KEY[=VALUE]` parameters separated by spaces.
pub fn parse_params(text: &str, allow_utf8: bool) -> Result<Params, ParamError> {
    let mut params: Params = Vec::new();
    for p in words(text) {
        let (key, value) = match p.bytes().position(|b| b == b'=') {
            Some(eq) => (&p[..eq], Some(&p[eq + 1..])),
            None => (p, None),
        };
        if !is_keyword(key) {
            return Err(ParamError::Syntax(p.to_owned()));
        }
        let key = key.to_ascii_uppercase();
        if params.iter().any(|(k, _)| *k == key) {
            return Err(ParamError::Repeated(key));
        }
        let value = match value {
            None => None,
            Some(v) if !is_value(v, allow_utf8) => return Err(ParamError::Syntax(p.to_owned())),
            Some(v) if XTEXT_KEYWORDS.contains(&key.as_str()) => {
                Some(xtext_decode(v).map_err(|_| ParamError::BadXtext(key.clone()))?)
            }
            Some(v) => Some(v.to_owned()),
        };
        params.push((key, value));
    }
    Ok(params)
}

/// An xtext string that does not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XtextError(pub &'static str);

impl fmt::Display for XtextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad xtext: {}", self.0)
    }
}

impl std::error::Error for XtextError {}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        // RFC 3461 asks for upper case; lower case is accepted from peers.
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// xtext = *( xchar / hexchar ); xchar = %d33-42 / %d44-60 / %d62-126; hexchar = "+" 2HEXDIG.
/// UTF-8 (RFC 6533 relaxes xtext under SMTPUTF8) passes through.
pub fn xtext_decode(text: &str) -> Result<String, XtextError> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hi = b.get(i + 1).copied().and_then(hex_value);
                let lo = b.get(i + 2).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err(XtextError("'+' not followed by two hex digits")),
                }
                i += 3;
            }
            b'=' => return Err(XtextError("'=' must be encoded")),
            c if (33..=126).contains(&c) || c >= 0x80 => {
                out.push(c);
                i += 1;
            }
            _ => return Err(XtextError("character outside xtext")),
        }
    }
    String::from_utf8(out).map_err(|_| XtextError("decodes to invalid UTF-8"))
}

/// Encode every octet outside xchar as `+XX`.
pub fn xtext_encode(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &c in text.as_bytes() {
        if (33..=126).contains(&c) && c != b'+' && c != b'=' {
            out.push(char::from(c));
        } else {
            out.push('+');
            out.push(char::from(HEX[usize::from(c >> 4)]));
            out.push(char::from(HEX[usize::from(c & 15)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(k: &str, v: Option<&str>) -> (String, Option<String>) {
        (k.to_owned(), v.map(str::to_owned))
    }

    #[test]
    fn parses() {
        assert_eq!(parse_params("", false), Ok(vec![]));
        assert_eq!(
            parse_params("size=100 BODY=8BITMIME  smtputf8", false),
            Ok(vec![
                p("SIZE", Some("100")),
                p("BODY", Some("8BITMIME")),
                p("SMTPUTF8", None)
            ])
        );
        assert_eq!(
            parse_params("ENVID=a+2Bb ORCPT=rfc822;x+40y AUTH=<>", false),
            Ok(vec![
                p("ENVID", Some("a+b")),
                p("ORCPT", Some("rfc822;x@y")),
                p("AUTH", Some("<>"))
            ])
        );
        assert_eq!(
            parse_params("X-FOO-1=é", true),
            Ok(vec![p("X-FOO-1", Some("é"))])
        );
    }

    #[test]
    fn rejects() {
        for text in [
            "SIZE=", "=1", "1SIZE=1", "SI_ZE=1", "SIZE=a=b", "X=é", "X=\x01", "-X",
        ] {
            assert!(
                matches!(parse_params(text, false), Err(ParamError::Syntax(_))),
                "{text}"
            );
        }
        assert_eq!(
            parse_params("SIZE=1 size=2", false),
            Err(ParamError::Repeated("SIZE".into()))
        );
        assert_eq!(
            parse_params("ENVID=a+2", false),
            Err(ParamError::BadXtext("ENVID".into()))
        );
        assert_eq!(
            parse_params("ORCPT=a+ZZ", false),
            Err(ParamError::BadXtext("ORCPT".into()))
        );
    }

    #[test]
    fn mentions_keyword() {
        assert!(mentions("BODY=8BITMIME smtputf8", "SMTPUTF8"));
        assert!(!mentions("X-SMTPUTF8 SMTPUTF8X=1", "SMTPUTF8"));
    }

    #[test]
    fn xtext() {
        assert_eq!(xtext_decode("a+2Bb+3D").as_deref(), Ok("a+b="));
        assert_eq!(xtext_decode("+c3+a9").as_deref(), Ok("é"));
        assert!(xtext_decode("a=b").is_err());
        assert!(xtext_decode("a b").is_err());
        assert!(xtext_decode("+4").is_err());
        assert!(xtext_decode("+FF").is_err());
        assert_eq!(xtext_encode("a+b=c d\u{e9}"), "a+2Bb+3Dc+20d+C3+A9");
        for s in ["", "plain", "+=+", "tab\there", "ünï", "~!\"#"] {
            assert_eq!(xtext_decode(&xtext_encode(s)).as_deref(), Ok(s));
        }
    }
}
