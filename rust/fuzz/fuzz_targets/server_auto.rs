//! The ServerConnection with auto replies (the engine answering EHLO, HELO,
//! LHLO, DATA, QUIT, the junk commands and the sequence errors by itself), fed a client's bytes in random chunks and
//! driven the way the Python session drives it: MAIL opens a transaction
//! (`set_transaction(true)`), RCPT is accepted or not (`recipient_accepted`),
//! a DATA the engine leaves to the session is answered 354 and
//! `start_data()`ed, the end of a message closes the transaction, anything
//! else gets a reply naming its verb.
//!
//! Input: `[flags] [n] [n chunk lengths] stream`.  flags: bit 0 small
//! max_command_line, bit 1 small max_message_size, bits 2-6 which auto replies
//! are on (EHLO with the junk commands, HELO, LHLO, DATA with the sequence
//! errors and MAIL, QUIT), bit 7 RCPT refused.
//!
//! Checks: no panic, no misuse error from the driver's calls; what is
//! buffered while the engine wants data is bounded (none in DATA/BDAT);
//! ConnectionClosed comes once, last; and the replies sent (the engine's and
//! the session's, in one queue) and the events are the same however the
//! input was cut.
#![no_main]

use std::sync::Arc;

use _core::command::Verb;
use _core::server::{
    AutoReplies, Event, SequenceReplies, ServerConfig, ServerConnection, MAX_AUTH_LINE,
};
use fuzz_common::*;
use libfuzzer_sys::fuzz_target;

fn auto(flags: u8) -> AutoReplies {
    let on = |bit: u8, r: &[u8]| (flags & bit != 0).then(|| r.to_vec());
    AutoReplies {
        ehlo: on(0x04, b"250-x\r\n250 PIPELINING\r\n"),
        helo: on(0x08, b"250 x\r\n"),
        lhlo: on(0x10, b"250-x\r\n250 PIPELINING\r\n"),
        data: on(0x20, b"354 auto\r\n"),
        quit: on(0x40, b"221 auto\r\n"),
        // the junk commands with the greetings, the sequence errors with DATA
        noop: on(0x04, b"250 noop\r\n"),
        rset: on(0x04, b"250 rset\r\n"),
        vrfy: on(0x04, b"252 vrfy\r\n"),
        help: on(0x04, b"214 help\r\n"),
        max_junk: 3,
        sequence: (flags & 0x20 != 0).then(|| SequenceReplies {
            need_helo: b"503 helo\r\n".to_vec(),
            nested_mail: b"503 nested\r\n".to_vec(),
            txn_in_progress: b"503 txn\r\n".to_vec(),
            need_mail: b"503 mail\r\n".to_vec(),
            need_rcpt: b"503 rcpt\r\n".to_vec(),
            no_valid_rcpt: b"554 rcpt\r\n".to_vec(),
        }),
        max_errors: 5,
        mail: on(0x20, b"250 auto mail\r\n"),
    }
}

/// (everything sent, the events with consecutive DataChunks joined)
fn run(config: ServerConfig, flags: u8, pieces: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
    let mut c = ServerConnection::new(config);
    c.set_auto_replies(Some(Arc::new(auto(flags))));
    c.set_mail_auto(true);
    let mut sent = Vec::new();
    let mut events: Vec<Event> = Vec::new();
    let mut closed = false;
    let mut pieces = pieces.iter().filter(|p| !p.is_empty()).peekable();
    loop {
        while let Some(ev) = c.next_event() {
            assert!(!closed, "event after ConnectionClosed: {ev:?}");
            if c.mail_pending() {
                // the session takes the MAIL the engine accepted before its next event
                let mail = c.take_mail().expect("a pending MAIL");
                assert_eq!(mail.verb, Verb::Mail);
            }
            match &ev {
                Event::Command(cmd) => match cmd.verb {
                    Verb::Mail => {
                        c.set_transaction(true);
                        c.write(b"250 mail\r\n");
                    }
                    Verb::Rcpt if flags & 0x80 == 0 => {
                        c.recipient_accepted();
                        c.write(b"250 rcpt\r\n");
                    }
                    Verb::Data => {
                        c.write(b"354 session\r\n");
                        c.start_data().expect("start_data");
                    }
                    Verb::Rset | Verb::Helo | Verb::Ehlo | Verb::Lhlo => {
                        c.set_transaction(false);
                        c.write(format!("250 {:?}\r\n", cmd.verb).as_bytes());
                    }
                    Verb::Auth => {
                        c.read_line().expect("read_line");
                        c.write(b"334 \r\n");
                    }
                    v => c.write(format!("500 {v:?}\r\n").as_bytes()),
                },
                Event::DataEnd(_) => {
                    c.set_transaction(false);
                    c.write(b"250 queued\r\n");
                }
                Event::BdatChunkEnd { .. } => c.write(b"250 chunk\r\n"),
                Event::CommandError(e) => {
                    c.write(format!("{} {}\r\n", e.code, e.enhanced).as_bytes())
                }
                Event::ConnectionClosed { .. } => closed = true,
                _ => {}
            }
            match (events.last_mut(), ev) {
                (Some(Event::DataChunk(a)), Event::DataChunk(b)) => a.extend(b),
                (_, ev) => events.push(ev),
            }
            if closed {
                break; // the session stops here
            }
        }
        sent.extend(c.take_output());
        if closed {
            return (sent, events);
        }
        let buffered = c.buffered();
        if c.in_data() {
            assert_eq!(buffered, 0, "content left buffered in DATA/BDAT");
        } else {
            let bound = config.max_command_line.max(MAX_AUTH_LINE);
            assert!(
                buffered <= bound,
                "{buffered} octets buffered (bound {bound})"
            );
        }
        match pieces.next() {
            Some(p) => c.receive_data(p).expect("receive_data"),
            None => c.receive_data(b"").expect("receive_data(b\"\")"),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let flags = input[0];
    let defaults = ServerConfig::default();
    let config = ServerConfig {
        max_command_line: if flags & 1 != 0 {
            64
        } else {
            defaults.max_command_line
        },
        max_message_size: if flags & 2 != 0 {
            256
        } else {
            defaults.max_message_size
        },
        ..defaults
    };
    let (cuts, stream) = split_cuts(&input[1..]);
    let chunked = run(config, flags, &chunks(stream, cuts));
    let whole = run(config, flags, &[stream]);
    assert_eq!(chunked, whole);
});
