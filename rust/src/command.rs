//! One SMTP/LMTP command line turned into a [`Command`] or a [`CommandError`].
//!
//! Reads one line without its CRLF; produces the verb, its argument, the path
//! and ESMTP parameters of MAIL/RCPT and the size of BDAT, or the reply that
//! refuses the line.  Whether a command is allowed now is the session's call.

use std::fmt;

use crate::address::{parse_path, AddressError, Path, PathOptions};
use crate::params::{mentions, parse_params, ParamError, Params};

/// The verbs the core knows (RFC 5321, 2033, 3030, 3207, 4954).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Helo,
    Ehlo,
    Lhlo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Vrfy,
    Expn,
    Help,
    Quit,
    Starttls,
    Auth,
}

impl Verb {
    #[cfg(test)]
    const ALL: [Verb; 15] = [
        Verb::Helo,
        Verb::Ehlo,
        Verb::Lhlo,
        Verb::Mail,
        Verb::Rcpt,
        Verb::Data,
        Verb::Bdat,
        Verb::Rset,
        Verb::Noop,
        Verb::Vrfy,
        Verb::Expn,
        Verb::Help,
        Verb::Quit,
        Verb::Starttls,
        Verb::Auth,
    ];

    /// The verb, upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Helo => "HELO",
            Verb::Ehlo => "EHLO",
            Verb::Lhlo => "LHLO",
            Verb::Mail => "MAIL",
            Verb::Rcpt => "RCPT",
            Verb::Data => "DATA",
            Verb::Bdat => "BDAT",
            Verb::Rset => "RSET",
            Verb::Noop => "NOOP",
            Verb::Vrfy => "VRFY",
            Verb::Expn => "EXPN",
            Verb::Help => "HELP",
            Verb::Quit => "QUIT",
            Verb::Starttls => "STARTTLS",
            Verb::Auth => "AUTH",
        }
    }

    /// Recognise a verb, case-insensitively.
    ///
    /// Setting bit 5 of every octet folds an ASCII capital onto its small
    /// letter and maps no other octet onto a small letter, so one compare of
    /// the folded word against the small-letter verb is exact.
    #[inline]
    pub fn from_bytes(word: &[u8]) -> Option<Verb> {
        if let Ok(w) = <[u8; 4]>::try_from(word) {
            return Some(match u32::from_le_bytes(w) | 0x2020_2020 {
                x if x == fold4(b"helo") => Verb::Helo,
                x if x == fold4(b"ehlo") => Verb::Ehlo,
                x if x == fold4(b"lhlo") => Verb::Lhlo,
                x if x == fold4(b"mail") => Verb::Mail,
                x if x == fold4(b"rcpt") => Verb::Rcpt,
                x if x == fold4(b"data") => Verb::Data,
                x if x == fold4(b"bdat") => Verb::Bdat,
                x if x == fold4(b"rset") => Verb::Rset,
                x if x == fold4(b"noop") => Verb::Noop,
                x if x == fold4(b"vrfy") => Verb::Vrfy,
                x if x == fold4(b"expn") => Verb::Expn,
                x if x == fold4(b"help") => Verb::Help,
                x if x == fold4(b"quit") => Verb::Quit,
                x if x == fold4(b"auth") => Verb::Auth,
                _ => return None,
            });
        }
        let w = <[u8; 8]>::try_from(word).ok()?;
        (u64::from_le_bytes(w) | 0x2020_2020_2020_2020 == u64::from_le_bytes(*b"starttls"))
            .then_some(Verb::Starttls)
    }
}

const fn fold4(w: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*w)
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub verb: Verb,
    /// Everything after the verb and its separating space, as sent.
    pub arg: String,
    /// The path of MAIL and RCPT.
    pub path: Option<Path>,
    /// The ESMTP parameters of MAIL and RCPT.
    pub params: Params,
    /// The chunk size of BDAT.
    pub bdat_size: Option<u64>,
    /// BDAT ... LAST.
    pub bdat_last: bool,
}

impl Command {
    fn new(verb: Verb, arg: &str) -> Command {
        Command {
            verb,
            arg: arg.to_owned(),
            path: None,
            params: Vec::new(),
            bdat_size: None,
            bdat_last: false,
        }
    }

    /// Does the command carry this ESMTP parameter?
    pub fn has_param(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }
}

/// A line that is not a usable command, with the reply that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
    /// The verb, when it was recognised.
    pub verb: Option<Verb>,
    /// The stream can no longer be framed (a BDAT without a usable size).
    pub fatal: bool,
}

/// The longest text of an error reply: with the codes and CRLF the reply line
/// stays within RFC 5321's 512 octets, however much of the client's line the
/// text quotes (a parameter, say).
const MAX_ERROR_TEXT: usize = 400;

/// `text`, cut at a character boundary and marked with "..." if too long.
fn clamp_text(mut text: String) -> String {
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT - 3;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

impl CommandError {
    fn new(code: u16, enhanced: &'static str, text: impl Into<String>, verb: Option<Verb>) -> Self {
        CommandError {
            code,
            enhanced,
            text: clamp_text(text.into()),
            verb,
            fatal: false,
        }
    }

    /// 500 5.5.2: a command line over the length limit.
    pub fn line_too_long() -> CommandError {
        CommandError::new(500, "5.5.2", "Line too long", None)
    }

    /// 500 5.5.6: an AUTH continuation line over RFC 4954's limit.
    pub fn auth_line_too_long() -> CommandError {
        CommandError::new(
            500,
            "5.5.6",
            "Authentication exchange line is too long",
            None,
        )
    }

    fn syntax(verb: Verb, text: impl Into<String>) -> CommandError {
        CommandError::new(501, "5.5.4", text, Some(verb))
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.code, self.enhanced, self.text)
    }
}

impl std::error::Error for CommandError {}

/// What the connection knows that parsing depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommandOptions {
    /// SMTPUTF8 is offered: a MAIL with the SMTPUTF8 parameter may use UTF-8.
    pub smtputf8: bool,
    /// The current transaction's MAIL had SMTPUTF8: RCPT may use UTF-8.
    pub rcpt_utf8: bool,
}

const CLASS_CR_LF: u8 = 1;
const CLASS_NUL: u8 = 2;
const CLASS_HIGH: u8 = 4;

/// What each octet says about a command line.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b'\r' as usize] = CLASS_CR_LF;
    t[b'\n' as usize] = CLASS_CR_LF;
    t[0] = CLASS_NUL;
    let mut i = 0x80;
    while i < 256 {
        t[i] = CLASS_HIGH;
        i += 1;
    }
    t
};

/// The classes of the octets of `line`, or-ed together: one pass for the
/// bare CR/LF, NUL and non-ASCII checks.
#[inline]
fn classify(line: &[u8]) -> u8 {
    line.iter().fold(0, |acc, &b| acc | CLASS[usize::from(b)])
}

/// Parse one command line, given without its CRLF.
pub fn parse_command(line: &[u8], opts: CommandOptions) -> Result<Command, CommandError> {
    // No verb is over 8 octets: look no further for the space that ends one.
    let word_end = line
        .iter()
        .take(9)
        .position(|&b| b == b' ')
        .unwrap_or(line.len());
    let verb = Verb::from_bytes(&line[..word_end]);
    let class = classify(line);
    if class & CLASS_CR_LF != 0 {
        return Err(CommandError::new(
            500,
            "5.5.2",
            "Bare CR or LF in command line",
            verb,
        ));
    }
    if class & CLASS_NUL != 0 {
        return Err(CommandError::new(
            500,
            "5.5.2",
            "NUL character in command line",
            verb,
        ));
    }
    // An all-ASCII line is UTF-8 already; only others need the full check.
    let text = if class & CLASS_HIGH == 0 {
        // SAFETY: every octet is below 0x80, and ASCII is valid UTF-8.
        unsafe { std::str::from_utf8_unchecked(line) }
    } else if let Ok(text) = std::str::from_utf8(line) {
        text
    } else {
        return Err(CommandError::new(
            500,
            "5.5.2",
            "Invalid UTF-8 in command line",
            verb,
        ));
    };
    let Some(verb) = verb else {
        return Err(CommandError::new(
            500,
            "5.5.2",
            "Command unrecognized",
            None,
        ));
    };
    let arg = text.get(word_end + 1..).unwrap_or("");
    let blank = arg.bytes().all(|b| b == b' ');
    match verb {
        Verb::Helo | Verb::Ehlo | Verb::Lhlo if blank => Err(CommandError::syntax(
            verb,
            format!("Syntax: {verb} hostname"),
        )),
        Verb::Data | Verb::Rset | Verb::Quit | Verb::Starttls if !blank => Err(
            CommandError::syntax(verb, format!("Syntax: {verb} (no parameters allowed)")),
        ),
        Verb::Vrfy | Verb::Expn if blank => Err(CommandError::syntax(
            verb,
            format!("Syntax: {verb} address"),
        )),
        Verb::Auth if blank => Err(CommandError::syntax(
            verb,
            "Syntax: AUTH mechanism [initial-response]",
        )),
        Verb::Mail | Verb::Rcpt => parse_mail_rcpt(verb, arg, opts),
        Verb::Bdat => parse_bdat(arg),
        _ => Ok(Command::new(verb, arg)),
    }
}

fn parse_mail_rcpt(verb: Verb, arg: &str, opts: CommandOptions) -> Result<Command, CommandError> {
    let (prefix, usage, what, enhanced) = if verb == Verb::Mail {
        ("FROM:", "Syntax: MAIL FROM:<address>", "sender", "5.1.7")
    } else {
        ("TO:", "Syntax: RCPT TO:<address>", "recipient", "5.1.3")
    };
    let a = arg.trim_start_matches(' ');
    let rest = match a.get(..prefix.len()) {
        Some(p) if p.eq_ignore_ascii_case(prefix) => a[prefix.len()..].trim_start_matches(' '),
        _ => return Err(CommandError::syntax(verb, usage)),
    };
    let bad_path = |e: AddressError| {
        CommandError::new(
            553,
            enhanced,
            format!("Bad {what} address: {e}"),
            Some(verb),
        )
    };
    let (path_text, param_text) = split_path(rest).map_err(|e| match e {
        SplitError::Path(e) => bad_path(e),
        SplitError::Junk => CommandError::syntax(verb, format!("{usage} [parameters]")),
    })?;
    let utf8 = if verb == Verb::Mail {
        opts.smtputf8 && mentions(param_text, "SMTPUTF8")
    } else {
        opts.rcpt_utf8
    };
    let path_opts = PathOptions {
        smtputf8: utf8,
        allow_null: verb == Verb::Mail,
        allow_postmaster: verb == Verb::Rcpt,
    };
    let path = parse_path(path_text, path_opts).map_err(bad_path)?;
    let params = parse_params(param_text, utf8).map_err(|e| match e {
        ParamError::Repeated(_) => CommandError::new(555, "5.5.4", e.to_string(), Some(verb)),
        _ => CommandError::syntax(verb, e.to_string()),
    })?;
    Ok(Command {
        path: Some(path),
        params,
        ..Command::new(verb, arg)
    })
}

enum SplitError {
    Path(AddressError),
    Junk,
}

/// Split `<path> params` at the `>` that closes the path (a quoted local part
/// may hold a `>`).
fn split_path(rest: &str) -> Result<(&str, &str), SplitError> {
    let b = rest.as_bytes();
    if b.first() != Some(&b'<') {
        return Err(SplitError::Path(AddressError::Syntax(
            "angle brackets required",
        )));
    }
    // Outside a quoted string only '"' and '>' matter: skip to the first.
    let mut i = match memchr::memchr2(b'>', b'"', &b[1..]) {
        Some(k) => 1 + k,
        None => b.len(),
    };
    let mut quoted = false;
    while i < b.len() {
        match (quoted, b[i]) {
            (true, b'\\') => i += 1,
            (_, b'"') => quoted = !quoted,
            (false, b'>') => {
                let params = &rest[i + 1..];
                return match params.as_bytes().first() {
                    None | Some(b' ') => Ok((&rest[..=i], params)),
                    Some(_) => Err(SplitError::Junk),
                };
            }
            _ => {}
        }
        i += 1;
    }
    Err(SplitError::Path(AddressError::Syntax(
        "missing closing angle bracket",
    )))
}

/// `BDAT size [LAST]`, size up to 20 digits (RFC 3030 2).
fn parse_bdat(arg: &str) -> Result<Command, CommandError> {
    let mut words = arg.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|w| w.len() <= 20 && w.bytes().all(|c| c.is_ascii_digit()))
        .and_then(|w| w.parse::<u64>().ok());
    let last = match words.next() {
        None => Some(false),
        Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
        Some(_) => None,
    };
    match (size, last, words.next()) {
        (Some(size), Some(last), None) => Ok(Command {
            bdat_size: Some(size),
            bdat_last: last,
            ..Command::new(Verb::Bdat, arg)
        }),
        _ => Err(CommandError {
            fatal: true,
            ..CommandError::syntax(Verb::Bdat, "Syntax: BDAT size [LAST]")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: CommandOptions = CommandOptions {
        smtputf8: true,
        rcpt_utf8: false,
    };

    fn ok(line: &str) -> Command {
        parse_command(line.as_bytes(), OPTS).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    fn err(line: &[u8]) -> (u16, &'static str, bool) {
        let e = parse_command(line, OPTS).expect_err(&String::from_utf8_lossy(line));
        (e.code, e.enhanced, e.fatal)
    }

    #[test]
    fn verbs() {
        for v in Verb::ALL {
            assert_eq!(
                Verb::from_bytes(v.as_str().to_lowercase().as_bytes()),
                Some(v)
            );
        }
        assert_eq!(ok("noop").verb, Verb::Noop);
        assert_eq!(ok("EHLO client.example").arg, "client.example");
        assert_eq!(ok("StartTLS").verb, Verb::Starttls);
        assert_eq!(ok("HELP me").arg, "me");
        assert_eq!(ok("AUTH PLAIN AGEAYg==").arg, "PLAIN AGEAYg==");
        assert_eq!(ok("DATA ").verb, Verb::Data);
    }

    /// The folded-word match agrees with a plain case-insensitive compare,
    /// for every octet at every position of every verb.
    #[test]
    fn verb_folding_is_exact() {
        let naive = |w: &[u8]| {
            Verb::ALL
                .into_iter()
                .find(|v| v.as_str().as_bytes().eq_ignore_ascii_case(w))
        };
        for v in Verb::ALL {
            let word = v.as_str().as_bytes();
            for pos in 0..word.len() {
                for b in 0..=255u8 {
                    let mut w = word.to_vec();
                    w[pos] = b;
                    assert_eq!(Verb::from_bytes(&w), naive(&w), "{w:?}");
                }
            }
        }
        for w in [&b""[..], b"NOO", b"NOOPS", b"STARTTL", b"STARTTLSX"] {
            assert_eq!(Verb::from_bytes(w), None);
        }
    }

    #[test]
    fn mail_and_rcpt() {
        let c = ok("MAIL FROM:<a@b.c> SIZE=10 BODY=8BITMIME");
        assert_eq!(c.path.as_ref().unwrap().address(), "a@b.c");
        assert_eq!(c.params.len(), 2);
        assert!(ok("MAIL FROM: <a@b.c>").path.is_some());
        assert!(ok("mail from:<>").path.unwrap().is_null);
        let c = ok("RCPT TO:<\"x> y\"@b> NOTIFY=NEVER");
        assert_eq!(c.path.unwrap().local_part, "x> y");
        assert_eq!(
            ok("RCPT TO:<Postmaster>").path.unwrap().local_part,
            "Postmaster"
        );
        assert!(ok("MAIL FROM:<é@x> SMTPUTF8").path.unwrap().is_utf8());
        let c = parse_command(
            "RCPT TO:<é@x>".as_bytes(),
            CommandOptions {
                smtputf8: true,
                rcpt_utf8: true,
            },
        );
        assert!(c.is_ok());
    }

    #[test]
    fn errors() {
        let long_size = format!("BDAT {}", "1".repeat(21));
        type Case<'a> = (&'a [u8], (u16, &'a str, bool));
        let table: &[Case] = &[
            (b"FOO", (500, "5.5.2", false)),
            (b"MAILX FROM:<a@b>", (500, "5.5.2", false)),
            (b"NOOP\x00", (500, "5.5.2", false)),
            (b"NOOP \xff", (500, "5.5.2", false)),
            (b"NOOP a\rb", (500, "5.5.2", false)),
            (b"NOOP a\nb", (500, "5.5.2", false)),
            (b"HELO", (501, "5.5.4", false)),
            (b"EHLO ", (501, "5.5.4", false)),
            (b"LHLO", (501, "5.5.4", false)),
            (b"DATA x", (501, "5.5.4", false)),
            (b"RSET x", (501, "5.5.4", false)),
            (b"QUIT x", (501, "5.5.4", false)),
            (b"STARTTLS x", (501, "5.5.4", false)),
            (b"VRFY", (501, "5.5.4", false)),
            (b"AUTH", (501, "5.5.4", false)),
            (b"MAIL <a@b>", (501, "5.5.4", false)),
            (b"MAIL TO:<a@b>", (501, "5.5.4", false)),
            (b"MAIL FROM:<a@b>SIZE=1", (501, "5.5.4", false)),
            (b"MAIL FROM:a@b", (553, "5.1.7", false)),
            (b"MAIL FROM:<a@b", (553, "5.1.7", false)),
            (b"MAIL FROM:<a..b@c>", (553, "5.1.7", false)),
            (b"MAIL FROM:<postmaster>", (553, "5.1.7", false)),
            (b"MAIL FROM:<\xc3\xa9@x>", (553, "5.1.7", false)),
            (b"RCPT FROM:<a@b>", (501, "5.5.4", false)),
            (b"RCPT TO:<>", (553, "5.1.3", false)),
            (b"RCPT TO:<a@-b>", (553, "5.1.3", false)),
            (b"RCPT TO:<\xc3\xa9@x> SMTPUTF8", (553, "5.1.3", false)),
            (b"MAIL FROM:<a@b> SIZE=1 SIZE=2", (555, "5.5.4", false)),
            (b"MAIL FROM:<a@b> SIZE=", (501, "5.5.4", false)),
            (b"MAIL FROM:<a@b> ENVID=+G0", (501, "5.5.4", false)),
            (b"BDAT", (501, "5.5.4", true)),
            (b"BDAT x", (501, "5.5.4", true)),
            (b"BDAT -1", (501, "5.5.4", true)),
            (b"BDAT 10 LASTX", (501, "5.5.4", true)),
            (b"BDAT 10 LAST x", (501, "5.5.4", true)),
            (b"BDAT 99999999999999999999", (501, "5.5.4", true)),
            (long_size.as_bytes(), (501, "5.5.4", true)),
        ];
        for (line, want) in table {
            assert_eq!(
                err(line),
                (want.0, want.1, want.2),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let e = parse_command(b"DATA x", OPTS).unwrap_err();
        assert_eq!(e.verb, Some(Verb::Data));
        assert_eq!(
            parse_command(b"XYZZY", OPTS).unwrap_err().text,
            "Command unrecognized"
        );
        let e = parse_command(b"MAIL x", OPTS).unwrap_err();
        assert!(e.text.contains("Syntax: MAIL FROM:<address>"));
    }

    /// Found by the `command` fuzz target: a 501 quoting a long parameter made
    /// a reply line over 512 octets, which format_reply refuses (the Python
    /// session died with ValueError on `MAIL FROM:<a@b> X!X!...`).
    #[test]
    fn error_text_fits_a_reply_line() {
        let lines = [
            [&b"MAIL FROM:<a@b> "[..], &b"X!".repeat(240)].concat(),
            [&b"RCPT TO:<a@b> K="[..], "\u{e9}".repeat(300).as_bytes()].concat(),
            [
                &b"MAIL FROM:<a@b> "[..],
                &b"K".repeat(3000),
                b" ",
                &b"K".repeat(3000),
            ]
            .concat(),
        ];
        for line in lines {
            let e = parse_command(&line, OPTS).unwrap_err();
            assert!(e.text.len() <= MAX_ERROR_TEXT, "{}", e.text.len());
            assert!(e.text.ends_with("..."), "{}", e.text);
            crate::reply::format_reply(e.code, Some(e.enhanced), &[&e.text]).unwrap();
        }
    }

    #[test]
    fn bdat() {
        let c = ok("BDAT 1000");
        assert_eq!((c.bdat_size, c.bdat_last), (Some(1000), false));
        let c = ok("bdat 0 last");
        assert_eq!((c.bdat_size, c.bdat_last), (Some(0), true));
        assert_eq!(ok("BDAT 18446744073709551615").bdat_size, Some(u64::MAX));
        assert_eq!(ok("BDAT 00000000000000000001").bdat_size, Some(1));
    }
}
