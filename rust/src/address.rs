//! RFC 5321 4.1.2 paths and mailboxes, with RFC 6531 UTF-8 under SMTPUTF8.
//!
//! Reads the text of a path (`<...>`) or a bare mailbox; produces a [`Path`]
//! or an [`AddressError`] that says what is wrong.  The SMTP reply code for an
//! error depends on where the path came from, so the caller chooses it.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::Ipv6Addr;
use std::str::FromStr;

/// RFC 5321 4.5.3.1.1: the longest local part, in octets.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 4.5.3.1.2: the longest domain, in octets.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 4.5.3.1.3: the longest path, punctuation included.
pub const MAX_PATH: usize = 256;
/// RFC 1035 2.3.4: the longest label of a domain.
const MAX_LABEL: usize = 63;

/// A reverse-path or forward-path.  Equality ignores the source route, the
/// quoting of the local part and the case of the domain.
#[derive(Debug, Clone, Default)]
pub struct Path {
    /// The local part, unquoted; "" for the null path.
    pub local_part: String,
    /// The domain as written, or an address literal with its brackets.
    pub domain: String,
    /// The obsolete source route, without the `@`s.
    pub route: Vec<String>,
    /// The local part was written as a quoted string.
    pub quoted: bool,
    /// The null reverse-path `<>`.
    pub is_null: bool,
}

impl Path {
    /// The null reverse-path `<>`.
    pub fn null() -> Path {
        Path {
            is_null: true,
            ..Path::default()
        }
    }

    /// True when the local part or the domain holds non-ASCII characters.
    pub fn is_utf8(&self) -> bool {
        !self.local_part.is_ascii() || !self.domain.is_ascii()
    }

    /// `local@domain`, the local part quoted again if it is not a dot-string;
    /// "" for the null path; the bare local part for `<Postmaster>`.
    pub fn address(&self) -> String {
        if self.is_null {
            return String::new();
        }
        let mut out = String::with_capacity(self.local_part.len() + self.domain.len() + 3);
        if is_dot_string(self.local_part.as_bytes()) {
            out.push_str(&self.local_part);
        } else {
            out.push('"');
            for c in self.local_part.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        }
        if !self.domain.is_empty() {
            out.push('@');
            out.push_str(&self.domain);
        }
        out
    }
}

impl fmt::Display for Path {
    /// The path form: `<local@domain>`, `<>` for the null path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.address())
    }
}

impl PartialEq for Path {
    fn eq(&self, other: &Path) -> bool {
        self.is_null == other.is_null
            && self.local_part == other.local_part
            && self.domain.eq_ignore_ascii_case(&other.domain)
    }
}

impl Eq for Path {}

impl Hash for Path {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.is_null.hash(state);
        self.local_part.hash(state);
        for b in self.domain.bytes() {
            state.write_u8(b.to_ascii_lowercase());
        }
        state.write_u8(0xff);
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressError {
    /// The text does not follow the grammar; the detail says where.
    Syntax(&'static str),
    /// Non-ASCII text without SMTPUTF8.
    NonAscii,
    /// `<>` where a forward-path is required.
    NullNotAllowed,
    /// Over one of the RFC 5321 4.5.3.1 length limits.
    TooLong(&'static str),
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Syntax(what) => write!(f, "bad address syntax: {what}"),
            AddressError::NonAscii => f.write_str("non-ASCII address requires SMTPUTF8"),
            AddressError::NullNotAllowed => f.write_str("null path <> not allowed here"),
            AddressError::TooLong(what) => write!(f, "{what} too long"),
        }
    }
}

impl std::error::Error for AddressError {}

/// What a path may contain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathOptions {
    /// Accept UTF-8 local parts and U-labels (RFC 6531).
    pub smtputf8: bool,
    /// Accept the null path `<>` (a reverse-path).
    pub allow_null: bool,
    /// Accept `<Postmaster>` without a domain (a forward-path, RFC 5321 4.1.1.3).
    pub allow_postmaster: bool,
}

/// RFC 5322 atext, extended with UTF-8 (every byte of a multi-byte character
/// is >= 0x80; the input is a `str`, so those bytes form valid characters).
#[inline]
fn is_atext(b: u8) -> bool {
    OCTET[usize::from(b)] & ATEXT != 0
}

const ATEXT: u8 = 1;
const LET_DIG: u8 = 2;
const LDH: u8 = 4;

/// The classes of each octet: atext, Let-dig, Let-dig or hyphen.
static OCTET: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if b.is_ascii_alphanumeric() || b >= 0x80 {
            t[i] = ATEXT | LET_DIG | LDH;
        }
        i += 1;
    }
    let specials = b"!#$%&'*+-/=?^_`{|}~";
    let mut j = 0;
    while j < specials.len() {
        t[specials[j] as usize] |= ATEXT;
        j += 1;
    }
    t[b'-' as usize] |= LDH;
    t
};

/// RFC 5321 qtextSMTP plus UTF-8.
#[inline]
fn is_qtext(b: u8) -> bool {
    matches!(b, 32 | 33 | 35..=91 | 93..=126) || b >= 0x80
}

#[inline]
fn is_let_dig(b: u8) -> bool {
    OCTET[usize::from(b)] & LET_DIG != 0
}

/// Dot-string: atoms of atext joined by single dots.
pub fn is_dot_string(s: &[u8]) -> bool {
    !s.is_empty()
        && s.split(|&b| b == b'.')
            .all(|atom| !atom.is_empty() && atom.iter().all(|&b| is_atext(b)))
}

/// Domain = sub-domain *("." sub-domain), sub-domain = Let-dig [Ldh-str].
fn check_domain(s: &[u8]) -> Result<(), AddressError> {
    if s.is_empty() {
        return Err(AddressError::Syntax("missing domain"));
    }
    if s.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong("domain"));
    }
    for label in s.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(AddressError::Syntax("empty domain label"));
        }
        if label.len() > MAX_LABEL {
            return Err(AddressError::TooLong("domain label"));
        }
        let first = label[0];
        let last = label[label.len() - 1];
        if !is_let_dig(first) || !is_let_dig(last) {
            return Err(AddressError::Syntax("bad domain label"));
        }
        if !label.iter().all(|&b| OCTET[usize::from(b)] & LDH != 0) {
            return Err(AddressError::Syntax("bad character in domain"));
        }
    }
    Ok(())
}

/// Snum = 1*3DIGIT, 0..=255 (leading zeros allowed, as the ABNF says).
fn check_ipv4(s: &[u8]) -> bool {
    let mut parts = 0;
    for part in s.split(|&b| b == b'.') {
        parts += 1;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return false;
        }
        let v = part.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'));
        if v > 255 {
            return false;
        }
    }
    parts == 4
}

/// address-literal = "[" ( IPv4 / "IPv6:" IPv6 / tag ":" dcontent ) "]", brackets included.
fn check_address_literal(s: &str) -> Result<(), AddressError> {
    let b = s.as_bytes();
    if b.len() < 3 || b[0] != b'[' || b[b.len() - 1] != b']' {
        return Err(AddressError::Syntax("bad address literal"));
    }
    let inner = &s[1..s.len() - 1];
    let ib = inner.as_bytes();
    if ib.len() >= 5 && ib[..5].eq_ignore_ascii_case(b"IPv6:") {
        return Ipv6Addr::from_str(&inner[5..])
            .map(|_| ())
            .map_err(|_| AddressError::Syntax("bad IPv6 address literal"));
    }
    if let Some(colon) = memchr::memchr(b':', ib) {
        // General-address-literal = Standardized-tag ":" 1*dcontent
        let (tag, content) = (&ib[..colon], &ib[colon + 1..]);
        let tag_ok = !tag.is_empty()
            && is_let_dig(tag[tag.len() - 1])
            && tag.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
        let content_ok =
            !content.is_empty() && content.iter().all(|&b| matches!(b, 33..=90 | 94..=126));
        return if tag_ok && content_ok {
            Ok(())
        } else {
            Err(AddressError::Syntax("bad general address literal"))
        };
    }
    if check_ipv4(ib) {
        Ok(())
    } else {
        Err(AddressError::Syntax("bad IPv4 address literal"))
    }
}

/// Parse `Local-part "@" ( Domain / address-literal )` filling the whole of `s`.
fn parse_mailbox_inner(s: &str) -> Result<Path, AddressError> {
    let b = s.as_bytes();
    let (local_part, quoted, at) = if b.first() == Some(&b'"') {
        // Quoted-string: DQUOTE *( qtextSMTP / "\" %d32-126 ) DQUOTE
        let mut value = Vec::with_capacity(b.len());
        let mut i = 1;
        loop {
            match b.get(i) {
                None => return Err(AddressError::Syntax("unterminated quoted string")),
                Some(b'"') => break,
                Some(b'\\') => match b.get(i + 1) {
                    Some(&c) if (32..=126).contains(&c) => {
                        value.push(c);
                        i += 2;
                    }
                    _ => return Err(AddressError::Syntax("bad quoted pair")),
                },
                Some(&c) if is_qtext(c) => {
                    value.push(c);
                    i += 1;
                }
                Some(_) => return Err(AddressError::Syntax("bad character in quoted string")),
            }
        }
        // `value` holds whole characters of a str: still valid UTF-8.
        let value = String::from_utf8(value)
            .map_err(|_| AddressError::Syntax("bad character in quoted string"))?;
        (value, true, i + 1)
    } else {
        // A dot-string holds no '@', so the first one ends it.
        let at = b
            .iter()
            .position(|&c| c == b'@')
            .ok_or(AddressError::Syntax("missing @"))?;
        if !is_dot_string(&b[..at]) {
            return Err(AddressError::Syntax("bad local part"));
        }
        (s[..at].to_owned(), false, at)
    };
    if at > MAX_LOCAL_PART {
        return Err(AddressError::TooLong("local part"));
    }
    if b.get(at) != Some(&b'@') {
        return Err(AddressError::Syntax("missing @ after local part"));
    }
    let domain = &s[at + 1..];
    if domain.starts_with('[') {
        if domain.len() > MAX_DOMAIN {
            return Err(AddressError::TooLong("domain"));
        }
        check_address_literal(domain)?;
    } else {
        check_domain(domain.as_bytes())?;
    }
    Ok(Path {
        local_part,
        domain: domain.to_owned(),
        route: Vec::new(),
        quoted,
        is_null: false,
    })
}

/// Parse a path, `<...>` with the angle brackets.
pub fn parse_path(text: &str, opts: PathOptions) -> Result<Path, AddressError> {
    let b = text.as_bytes();
    if b.len() < 2 || b[0] != b'<' || b[b.len() - 1] != b'>' {
        return Err(AddressError::Syntax("angle brackets required"));
    }
    if b.len() > MAX_PATH {
        return Err(AddressError::TooLong("path"));
    }
    let inner = &text[1..text.len() - 1];
    if inner.is_empty() {
        return if opts.allow_null {
            Ok(Path::null())
        } else {
            Err(AddressError::NullNotAllowed)
        };
    }
    if !opts.smtputf8 && !inner.is_ascii() {
        return Err(AddressError::NonAscii);
    }
    let mut rest = inner;
    let mut route = Vec::new();
    if rest.starts_with('@') {
        // A-d-l = At-domain *( "," At-domain ) ":"
        loop {
            let body = rest
                .strip_prefix('@')
                .ok_or(AddressError::Syntax("bad source route"))?;
            let end = memchr::memchr2(b',', b':', body.as_bytes())
                .ok_or(AddressError::Syntax("bad source route"))?;
            let domain = &body[..end];
            if domain.starts_with('[') {
                check_address_literal(domain)?;
            } else {
                check_domain(domain.as_bytes())?;
            }
            route.push(domain.to_owned());
            let sep = body.as_bytes()[end];
            rest = &body[end + 1..];
            if sep == b':' {
                break;
            }
        }
    } else if opts.allow_postmaster && inner.eq_ignore_ascii_case("postmaster") {
        return Ok(Path {
            local_part: inner.to_owned(),
            ..Path::default()
        });
    }
    let mut path = parse_mailbox_inner(rest)?;
    path.route = route;
    Ok(path)
}

/// Parse a bare `local@domain` (no brackets, no null path, no route).
pub fn parse_mailbox(text: &str, smtputf8: bool) -> Result<Path, AddressError> {
    if !smtputf8 && !text.is_ascii() {
        return Err(AddressError::NonAscii);
    }
    if text.len() + 2 > MAX_PATH {
        return Err(AddressError::TooLong("path"));
    }
    parse_mailbox_inner(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REVERSE: PathOptions = PathOptions {
        smtputf8: false,
        allow_null: true,
        allow_postmaster: false,
    };
    const FORWARD: PathOptions = PathOptions {
        smtputf8: false,
        allow_null: false,
        allow_postmaster: true,
    };

    #[test]
    fn valid_paths() {
        // (text, local part, domain, route, quoted)
        let table: &[(&str, &str, &str, &[&str], bool)] = &[
            ("<a@b.c>", "a", "b.c", &[], false),
            (
                "<user.name+tag@example.com>",
                "user.name+tag",
                "example.com",
                &[],
                false,
            ),
            (
                "<!#$%&'*+-/=?^_`{|}~@x>",
                "!#$%&'*+-/=?^_`{|}~",
                "x",
                &[],
                false,
            ),
            ("<\"a b\"@x.org>", "a b", "x.org", &[], true),
            ("<\"a\\\"b\\\\c\"@x>", "a\"b\\c", "x", &[], true),
            ("<\"\"@x>", "", "x", &[], true),
            ("<\"a@b\"@x>", "a@b", "x", &[], true),
            ("<u@[192.0.2.1]>", "u", "[192.0.2.1]", &[], false),
            (
                "<u@[001.002.003.004]>",
                "u",
                "[001.002.003.004]",
                &[],
                false,
            ),
            (
                "<u@[IPv6:2001:db8::1]>",
                "u",
                "[IPv6:2001:db8::1]",
                &[],
                false,
            ),
            (
                "<u@[ipv6:::ffff:192.0.2.1]>",
                "u",
                "[ipv6:::ffff:192.0.2.1]",
                &[],
                false,
            ),
            (
                "<u@[x-tag:some-content]>",
                "u",
                "[x-tag:some-content]",
                &[],
                false,
            ),
            ("<@a,@b:u@c>", "u", "c", &["a", "b"], false),
            ("<@a.example:u@c>", "u", "c", &["a.example"], false),
            ("<u@a-b.c0.d>", "u", "a-b.c0.d", &[], false),
            ("<u@1.2.3.4>", "u", "1.2.3.4", &[], false),
        ];
        for &(text, local, domain, route, quoted) in table {
            let p = parse_path(text, REVERSE).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(p.local_part, local, "{text}");
            assert_eq!(p.domain, domain, "{text}");
            assert_eq!(p.route, route, "{text}");
            assert_eq!(p.quoted, quoted, "{text}");
            assert!(!p.is_null);
        }
    }

    #[test]
    fn invalid_paths() {
        let long_local = format!("<{}@x>", "a".repeat(65));
        let long_label = format!("<u@{}.x>", "a".repeat(64));
        let long_domain = format!("<u@{}x>", "abcdefghi.".repeat(26));
        let table: &[&str] = &[
            "a@b",
            "<a@b",
            "a@b>",
            "<a>",
            "<@b>",
            "<a@>",
            "<a@b.>",
            "<a@.b>",
            "<a@b..c>",
            "<.a@b>",
            "<a.@b>",
            "<a..b@c>",
            "<a b@c>",
            "<a@-b.c>",
            "<a@b-.c>",
            "<a@b_c>",
            "<\"a@b>",
            "<\"a\"b@c>",
            "<\"a\\\x01\"@c>",
            "<a@[192.0.2.256]>",
            "<a@[192.0.2]>",
            "<a@[1.2.3.4.5]>",
            "<a@[IPv6:2001:db8::g]>",
            "<a@[IPv6:1.2.3.4]>",
            "<a@[]>",
            "<a@[-:x]>",
            "<a@[tag:]>",
            "<a@[tag:a[b]>",
            "<@a:@b:u@c>",
            "<@a,b:u@c>",
            "<@:u@c>",
            "<a@b c>",
            "<a\x00@b>",
            "<postmaster>",
            &long_local,
            &long_label,
            &long_domain,
        ];
        for text in table {
            assert!(parse_path(text, REVERSE).is_err(), "accepted {text:?}");
        }
    }

    #[test]
    fn null_and_postmaster() {
        assert!(parse_path("<>", REVERSE).unwrap().is_null);
        assert_eq!(parse_path("<>", FORWARD), Err(AddressError::NullNotAllowed));
        let p = parse_path("<Postmaster>", FORWARD).unwrap();
        assert_eq!(
            (p.local_part.as_str(), p.domain.as_str()),
            ("Postmaster", "")
        );
        assert_eq!(p.address(), "Postmaster");
        assert!(parse_path("<postMASTER>", FORWARD).is_ok());
        assert!(parse_path("<postmaster>", REVERSE).is_err());
    }

    #[test]
    fn utf8() {
        let utf8 = PathOptions {
            smtputf8: true,
            ..REVERSE
        };
        assert_eq!(
            parse_path("<δοκιμή@παράδειγμα.δοκιμή>", REVERSE),
            Err(AddressError::NonAscii)
        );
        let p = parse_path("<δοκιμή@παράδειγμα.δοκιμή>", utf8).unwrap();
        assert!(p.is_utf8());
        assert_eq!(p.local_part, "δοκιμή");
        assert!(parse_path("<\"é è\"@x>", utf8).unwrap().quoted);
        assert!(parse_path("<a@b>", utf8).map(|p| !p.is_utf8()).unwrap());
    }

    #[test]
    fn address_requotes() {
        let p = parse_path("<\"a b\"@x>", REVERSE).unwrap();
        assert_eq!(p.address(), "\"a b\"@x");
        let p = parse_path("<\"ab\"@x>", REVERSE).unwrap();
        assert_eq!(p.address(), "ab@x");
        let p = parse_path("<\"a\\\"b\"@x>", REVERSE).unwrap();
        assert_eq!(p.address(), "\"a\\\"b\"@x");
        assert_eq!(p.to_string(), "<\"a\\\"b\"@x>");
        assert_eq!(
            parse_path("<@r:u@x>", REVERSE).unwrap().to_string(),
            "<u@x>"
        );
        assert_eq!(Path::null().to_string(), "<>");
    }

    #[test]
    fn equality() {
        let a = parse_path("<\"ab\"@X.org>", REVERSE).unwrap();
        let b = parse_path("<@r:ab@x.ORG>", REVERSE).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, parse_path("<AB@x.org>", REVERSE).unwrap());
        let hash = |p: &Path| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            p.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&a), hash(&b));
    }

    #[test]
    fn limits() {
        let local = "a".repeat(64);
        assert!(parse_path(&format!("<{local}@x>"), REVERSE).is_ok());
        let label = "b".repeat(63);
        let domain = [label.as_str(); 3].join(".");
        assert!(parse_path(&format!("<u@{domain}>"), REVERSE).is_ok());
        // 256 octets in all is the limit.
        let d = format!(
            "{}.{}.{}.{}",
            "c".repeat(63),
            "c".repeat(63),
            "c".repeat(63),
            "c".repeat(60)
        );
        let ok = format!("<u@{d}>");
        assert_eq!(ok.len(), 256);
        assert!(parse_path(&ok, REVERSE).is_ok());
        let d = format!(
            "{}.{}.{}.{}",
            "c".repeat(63),
            "c".repeat(63),
            "c".repeat(63),
            "c".repeat(61)
        );
        assert_eq!(
            parse_path(&format!("<u@{d}>"), REVERSE),
            Err(AddressError::TooLong("path"))
        );
    }

    #[test]
    fn mailbox() {
        let p = parse_mailbox("a.b@c.d", false).unwrap();
        assert_eq!(p.address(), "a.b@c.d");
        assert!(parse_mailbox("<a@b>", false).is_err());
        assert!(parse_mailbox("", false).is_err());
        assert!(parse_mailbox("@a:b@c", false).is_err());
        assert_eq!(parse_mailbox("é@x", false), Err(AddressError::NonAscii));
        assert!(parse_mailbox("é@x", true).is_ok());
    }
}
