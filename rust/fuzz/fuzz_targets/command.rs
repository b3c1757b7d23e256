//! The command parser: one line (without its CRLF) in, a Command or a
//! CommandError out.
//!
//! Input: `[flags] line`; flags bit 0 = SMTPUTF8 offered, bit 1 = the
//! transaction's MAIL had SMTPUTF8.  Checks:
//! - no panic, whatever the octets;
//! - every CommandError is a reply the session can send as it is (a code,
//!   an enhanced code of the same class, text that `format_reply` accepts:
//!   no CR/LF, the line within 512 octets), else the Python session dies;
//! - a Command is sane: the verb is what the line starts with, `arg` is the
//!   rest as sent, MAIL/RCPT have a path that survives a round trip through
//!   its text form, parameter keywords are upper case and unique, BDAT has a
//!   size;
//! - a line with a CR, LF or NUL never parses.
#![no_main]

use _core::address::{parse_path, PathOptions};
use _core::command::{parse_command, CommandOptions, Verb};
use fuzz_common::assert_reply_formats;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, line)) = input.split_first() else {
        return;
    };
    let opts = CommandOptions {
        smtputf8: flags & 1 != 0,
        rcpt_utf8: flags & 3 == 3,
    };
    match parse_command(line, opts) {
        Err(e) => {
            assert_reply_formats(e.code, e.enhanced, &e.text);
            assert_eq!(u16::from(e.enhanced.as_bytes()[0] - b'0'), e.code / 100);
            if e.fatal {
                assert_eq!(e.verb, Some(Verb::Bdat));
            }
        }
        Ok(cmd) => {
            assert!(!line.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)));
            let text = std::str::from_utf8(line).expect("a command is UTF-8");
            let verb_len = cmd.verb.as_str().len();
            assert!(text[..verb_len].eq_ignore_ascii_case(cmd.verb.as_str()));
            assert_eq!(text.get(verb_len + 1..).unwrap_or(""), cmd.arg);
            match cmd.verb {
                Verb::Mail | Verb::Rcpt => {
                    let path = cmd.path.as_ref().expect("MAIL/RCPT have a path");
                    let reparsed = parse_path(
                        &path.to_string(),
                        PathOptions {
                            smtputf8: true,
                            allow_null: cmd.verb == Verb::Mail,
                            allow_postmaster: cmd.verb == Verb::Rcpt,
                        },
                    )
                    .unwrap_or_else(|e| panic!("{path} does not parse again: {e}"));
                    assert_eq!(&reparsed, path);
                    if !opts.smtputf8 || (cmd.verb == Verb::Rcpt && !opts.rcpt_utf8) {
                        assert!(!path.is_utf8(), "UTF-8 path without SMTPUTF8");
                    }
                    for (i, (k, _)) in cmd.params.iter().enumerate() {
                        assert_eq!(k, &k.to_ascii_uppercase());
                        assert!(cmd.params[..i].iter().all(|(k2, _)| k2 != k));
                    }
                }
                Verb::Bdat => assert!(cmd.bdat_size.is_some()),
                _ => assert!(cmd.path.is_none() && cmd.bdat_size.is_none()),
            }
        }
    }
});
