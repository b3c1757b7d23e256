//! The address parser: RFC 5321 paths and bare mailboxes.
//!
//! Input: `[flags] text` (text lossily made UTF-8, as the binding takes a
//! `str`); flags bit 0 = smtputf8, bit 1 = allow_null, bit 2 =
//! allow_postmaster.  Checks, for both `parse_path` and `parse_mailbox`:
//! - no panic;
//! - an accepted address keeps RFC 5321's length limits (local part 64,
//!   domain 255), is ASCII unless SMTPUTF8 was allowed, and its canonical
//!   text form parses back to an equal address with an equal hash (what the
//!   spool writes and the router reads must be the same mailbox);
//! - the canonical form holds no CR, LF, NUL or space outside quotes, so it
//!   can go into a command, a header or a file name check safely.
#![no_main]

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use _core::address::{parse_mailbox, parse_path, Path, PathOptions, MAX_DOMAIN, MAX_LOCAL_PART};
use libfuzzer_sys::fuzz_target;

fn hash(p: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    p.hash(&mut h);
    h.finish()
}

fn check(path: &Path, smtputf8: bool) {
    if path.is_null {
        assert!(path.local_part.is_empty() && path.domain.is_empty());
        assert_eq!(path.to_string(), "<>");
        return;
    }
    assert!(
        path.local_part.len() <= MAX_LOCAL_PART,
        "local part too long"
    );
    assert!(path.domain.len() <= MAX_DOMAIN, "domain too long");
    if !smtputf8 {
        assert!(!path.is_utf8());
    }
    let address = path.address();
    assert!(!address.bytes().any(|b| matches!(b, b'\r' | b'\n' | 0)));
    assert!(!path
        .domain
        .bytes()
        .any(|b| matches!(b, b' ' | b'\r' | b'\n' | 0)));
    if !address.starts_with('"') {
        assert!(!address.contains(' '), "space in unquoted {address:?}");
    }
    let opts = PathOptions {
        smtputf8: true,
        allow_null: false,
        allow_postmaster: path.domain.is_empty(),
    };
    let again = parse_path(&path.to_string(), opts)
        .unwrap_or_else(|e| panic!("{path} does not parse again: {e}"));
    assert_eq!(&again, path);
    assert_eq!(again.address(), address);
    assert_eq!(hash(&again), hash(path));
    if !path.domain.is_empty() {
        let bare = parse_mailbox(&address, true)
            .unwrap_or_else(|e| panic!("{address} does not parse as a mailbox: {e}"));
        assert_eq!(&bare, path);
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let opts = PathOptions {
        smtputf8: flags & 1 != 0,
        allow_null: flags & 2 != 0,
        allow_postmaster: flags & 4 != 0,
    };
    if let Ok(p) = parse_path(&text, opts) {
        assert!(opts.allow_null || !p.is_null);
        assert!(opts.allow_postmaster || !p.domain.is_empty() || p.is_null);
        check(&p, opts.smtputf8);
    }
    if let Ok(p) = parse_mailbox(&text, opts.smtputf8) {
        assert!(!p.is_null && p.route.is_empty() && !p.domain.is_empty());
        check(&p, opts.smtputf8);
    }
    // The same text in brackets is a path whenever it is a mailbox.
    if parse_mailbox(&text, opts.smtputf8).is_ok() {
        let bracketed = format!("<{text}>");
        assert!(parse_path(&bracketed, opts).is_ok(), "{bracketed} refused");
    }
});
