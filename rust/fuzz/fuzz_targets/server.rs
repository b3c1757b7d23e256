//! The whole ServerConnection event loop, fed a client's bytes in random
//! chunks, driven the way the Python session drives it.
//!
//! Input: `[flags] [limits: 3 octets] [n] [n chunk lengths] stream`.
//! flags: bit 0 small max_command_line, bit 1 small max_text_line, bit 2
//! small max_message_size, bit 3 small max_header_size, bit 4 SMTPUTF8
//! offered, bit 5 answer STARTTLS by discarding the buffer (as the session
//! does before the TLS handshake), bit 6 refuse DATA (no start_data), bit 7
//! lower max_message_size in the middle of a message.
//!
//! The driver calls start_data() after every DATA command (unless refused),
//! read_line() after an AUTH without initial response, discard_buffer() after
//! STARTTLS (bit 5).  Checks, for every event:
//! - no panic, no misuse error from the driver's calls;
//! - memory is bounded: whenever next_event() wants more data, what is
//!   buffered fits one command line (or one AUTH line); in DATA/BDAT nothing is;
//! - a Command is exactly one CRLF line of the input, within its limit, and
//!   parses to the same Command on its own;
//! - every CommandError and every refused DataEnd is a reply the session can
//!   send (format_reply accepts it);
//! - DATA content ends exactly at the first CRLF "." CRLF after the 354 (no
//!   smuggling), BDAT content is exactly the announced number of octets;
//! - content handed out for one message never exceeds max_message_size, and
//!   an accepted message respects every limit and is exactly its DataChunks;
//! - ConnectionClosed comes once, last;
//! - the events (consecutive DataChunks joined) are the same however the
//!   input was cut, content of refused messages and the refusal included
//!   (when no STARTTLS discard or mid-message limit change makes them
//!   depend on timing).
#![no_main]

use _core::command::{parse_command, CommandOptions, Verb};
use _core::server::{Event, ServerConfig, ServerConnection, MAX_AUTH_LINE};
use fuzz_common::*;
use libfuzzer_sys::fuzz_target;

struct Driver {
    conn: ServerConnection,
    config: ServerConfig,
    flags: u8,
    /// Every octet received, in order.
    raw: Vec<u8>,
    /// Input position where the current event's input starts.
    pos: usize,
    /// Where the current DATA/BDAT content started, and BDAT's size.
    data_start: Option<(usize, Option<u64>)>,
    /// Content octets handed out for the current message, and the largest
    /// max_message_size in force during it.
    message_octets: u64,
    message_limit: u64,
    /// The transaction's MAIL had SMTPUTF8 (RCPT may then be UTF-8).
    tx_utf8: bool,
    events: Vec<Event>,
    closed: bool,
}

impl Driver {
    fn new(config: ServerConfig, flags: u8) -> Driver {
        Driver {
            conn: ServerConnection::new(config),
            config,
            flags,
            raw: Vec::new(),
            pos: 0,
            data_start: None,
            message_octets: 0,
            message_limit: config.max_message_size,
            tx_utf8: false,
            events: Vec::new(),
            closed: false,
        }
    }

    /// Input octets turned into events so far.
    fn consumed(&self) -> usize {
        self.raw.len() - self.conn.buffered()
    }

    fn feed(&mut self, piece: &[u8]) {
        self.conn.receive_data(piece).expect("receive_data");
        self.raw.extend_from_slice(piece);
        self.drain();
    }

    fn close(&mut self) {
        self.conn.receive_data(b"").expect("receive_data(b\"\")");
        self.drain();
        assert!(self.closed, "no ConnectionClosed after EOF");
        assert!(self.conn.receive_data(b"x").is_err());
    }

    fn drain(&mut self) {
        while let Some(ev) = self.conn.next_event() {
            assert!(!self.closed, "event after ConnectionClosed: {ev:?}");
            self.check(&ev);
            self.pos = self.consumed();
            self.react(&ev);
            let closed = matches!(ev, Event::ConnectionClosed { .. });
            self.events.push(ev);
            if closed {
                break;
            }
        }
        // Wanting data: what is buffered is bounded.
        let buffered = self.conn.buffered();
        if self.conn.in_data() {
            assert_eq!(buffered, 0, "content left buffered in DATA/BDAT");
        } else {
            let bound = self.config.max_command_line.max(MAX_AUTH_LINE);
            assert!(
                buffered <= bound,
                "{buffered} octets buffered (bound {bound})"
            );
        }
    }

    fn check(&mut self, ev: &Event) {
        let end = self.consumed();
        match ev {
            Event::Command(cmd) => {
                let line = &self.raw[self.pos..end];
                assert!(line.ends_with(b"\r\n"), "command not a CRLF line: {line:?}");
                let body = &line[..line.len() - 2];
                assert!(!body.windows(2).any(|w| w == b"\r\n"));
                let limit = if cmd.verb == Verb::Auth {
                    self.config.max_command_line.max(MAX_AUTH_LINE)
                } else {
                    self.config.max_command_line
                };
                assert!(line.len() <= limit, "command of {} > {limit}", line.len());
                let opts = CommandOptions {
                    smtputf8: self.config.smtputf8,
                    rcpt_utf8: self.config.smtputf8 && self.tx_utf8,
                };
                assert_eq!(parse_command(body, opts).as_ref(), Ok(cmd));
                if cmd.verb == Verb::Bdat {
                    assert!(self.conn.in_data(), "BDAT did not enter chunk mode");
                    self.start_message(end, cmd.bdat_size);
                } else {
                    assert!(!self.conn.in_data());
                }
            }
            Event::CommandError(e) => {
                assert_reply_formats(e.code, e.enhanced, &e.text);
                assert!(!self.conn.in_data());
            }
            Event::RawLine(line) => {
                assert!(line.len() + 2 <= MAX_AUTH_LINE);
                assert_eq!(&self.raw[self.pos..end], [&line[..], b"\r\n"].concat());
            }
            Event::DataChunk(data) => {
                assert!(self.conn.in_data(), "content outside DATA/BDAT");
                assert!(!data.is_empty());
                self.message_octets += data.len() as u64;
                assert!(
                    self.message_octets <= self.message_limit,
                    "{} content octets handed out, limit {}",
                    self.message_octets,
                    self.message_limit
                );
            }
            Event::BdatChunkEnd {
                chunk_size,
                total_size,
            } => {
                let (start, size) = self.data_start.take().expect("BdatChunkEnd without BDAT");
                assert_eq!(size, Some(*chunk_size));
                assert_eq!((end - start) as u64, *chunk_size);
                assert!(*total_size >= *chunk_size);
                assert!(!self.conn.in_data());
            }
            Event::DataEnd(s) => {
                let (start, size) = self.data_start.take().expect("DataEnd without DATA/BDAT");
                let content = &self.raw[start..end];
                match size {
                    Some(n) => assert_eq!(content.len() as u64, n, "BDAT chunk length"),
                    None => assert_eq!(
                        reference_data_end(content),
                        Some(content.len()),
                        "DATA ended elsewhere than at the first CRLF.CRLF"
                    ),
                }
                match s.error {
                    None => {
                        assert_eq!(s.size, self.message_octets);
                        assert!(s.size <= self.message_limit);
                        assert!(s.header_size <= self.config.max_header_size);
                        if size.is_none() {
                            assert!(!has_bare_newline(content));
                            assert!(
                                longest_line(&reference_unstuff(content))
                                    <= self.config.max_text_line as u64
                            );
                        }
                    }
                    Some(e) => assert_reply_formats(e.code(), e.enhanced(), e.text()),
                }
                assert!(!self.conn.in_data());
            }
            Event::ConnectionClosed { mid_data } => {
                self.closed = true;
                if !mid_data {
                    assert!(!self.conn.in_data() && self.conn.buffered() == 0);
                }
            }
        }
    }

    fn start_message(&mut self, at: usize, bdat_size: Option<u64>) {
        assert!(self.data_start.is_none());
        self.data_start = Some((at, bdat_size));
    }

    /// A new message starts (for the core: a new transaction).
    fn reset_message(&mut self) {
        self.message_octets = 0;
        self.message_limit = self.conn.max_message_size();
    }

    /// What the Python session does after an event.
    fn react(&mut self, ev: &Event) {
        match ev {
            Event::Command(cmd) => match cmd.verb {
                Verb::Data if self.flags & 0x40 == 0 => {
                    self.conn.start_data().expect("start_data after DATA");
                    self.reset_message();
                    self.start_message(self.pos, None);
                }
                Verb::Auth if !cmd.arg.trim().contains(' ') => {
                    self.conn.read_line().expect("read_line after AUTH");
                }
                Verb::Starttls if self.flags & 0x20 != 0 => {
                    self.conn.discard_buffer();
                    self.pos = self.consumed();
                }
                Verb::Mail => {
                    self.tx_utf8 = self.config.smtputf8 && cmd.has_param("SMTPUTF8");
                    self.reset_message();
                }
                Verb::Rset | Verb::Helo | Verb::Ehlo | Verb::Lhlo => {
                    self.tx_utf8 = false;
                    self.reset_message();
                }
                _ => {}
            },
            Event::DataChunk(_) if self.flags & 0x80 != 0 => {
                // Lower the limit mid-message (a smaller limit is never
                // exceeded by what comes after; what came before stays).
                let lower = self.conn.max_message_size() / 2;
                self.conn.set_max_message_size(lower);
            }
            Event::DataEnd(_) => {
                self.tx_utf8 = false;
                self.reset_message();
            }
            _ => {}
        }
    }
}

/// The events with consecutive DataChunks joined: how content is split into
/// events follows the reads, nothing else may.  The content of a message
/// refused or never finished (what came before its first problem) and which
/// refusal it gets are functions of the octets, as the rest.
fn merged(events: Vec<Event>) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    for ev in events {
        match (out.last_mut(), ev) {
            (Some(Event::DataChunk(a)), Event::DataChunk(b)) => a.extend(b),
            (_, ev) => out.push(ev),
        }
    }
    out
}

fn run(config: ServerConfig, flags: u8, pieces: &[&[u8]]) -> Vec<Event> {
    let mut d = Driver::new(config, flags);
    d.drain();
    for p in pieces.iter().filter(|p| !p.is_empty()) {
        d.feed(p);
    }
    d.close();
    d.events
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 5 {
        return;
    }
    let flags = input[0];
    let lim = &input[1..4];
    let small = |bit: u8| flags & bit != 0;
    let defaults = ServerConfig::default();
    let config = ServerConfig {
        max_command_line: if small(1) {
            16 + usize::from(lim[0]) * 2
        } else {
            defaults.max_command_line
        },
        max_text_line: if small(2) {
            3 + usize::from(lim[1])
        } else {
            defaults.max_text_line
        },
        max_message_size: if small(4) {
            u64::from(lim[2]) * 8
        } else {
            defaults.max_message_size
        },
        max_header_size: if small(8) {
            u64::from(lim[0] ^ lim[2]) * 4
        } else {
            defaults.max_header_size
        },
        smtputf8: flags & 0x10 != 0,
    };
    let (cuts, stream) = split_cuts(&input[4..]);
    let chunked = run(config, flags, &chunks(stream, cuts));
    // Discarding on STARTTLS and lowering the size mid-message depend on
    // what had arrived when: compare with an uncut run only without them.
    if flags & 0xa0 == 0 {
        let whole = run(config, flags, &[stream]);
        assert_eq!(merged(chunked), merged(whole));
    }
});
