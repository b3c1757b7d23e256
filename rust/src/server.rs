//! The server side of one SMTP/LMTP session, without I/O.
//!
//! Theory of operation.  The caller feeds the bytes it read
//! ([`ServerConnection::receive_data`]) and takes events
//! ([`ServerConnection::next_event`]) until there are none.  The connection is
//! in one of four modes, and this file is the one place that moves between
//! them:
//!
//! | mode    | reads                                  | entered by                    | left after            |
//! |---------|----------------------------------------|-------------------------------|-----------------------|
//! | command | CRLF lines of `max_command_line`       | start; the end of the others  |                       |
//! | line    | one CRLF line of 12288 octets (AUTH)   | `read_line()`                 | that line             |
//! | data    | dot-stuffed content up to CRLF.CRLF    | `start_data()` (after 354)    | `DataEnd`             |
//! | bdat    | exactly `bdat_size` octets, verbatim   | a valid BDAT command          | `BdatChunkEnd`/`DataEnd` |
//!
//! Whether a command is acceptable now is the session's decision, not ours;
//! we only frame and parse.  The message state of BDAT (size, header scan)
//! spans chunks until LAST, and the SMTPUTF8 flag of MAIL governs the RCPTs
//! that follow; both are forgotten with the transaction (RSET, MAIL, HELO,
//! EHLO, LHLO, the end of a message, or `reset_transaction()`).

use std::sync::Arc;

use crate::buffer::{LineScan, ReceiveBuffer};
use crate::command::{parse_command, Command, CommandError, CommandOptions, Verb};
use crate::data::{ContentScan, DataDecoder, DataLimits, DataSummary};
use crate::error::Error;

/// RFC 5321 4.5.3.1.4: the longest command line, CRLF included.
pub const MAX_COMMAND_LINE: usize = 512;
/// RFC 5321 4.5.3.1.6: the longest text line, CRLF included.
pub const MAX_TEXT_LINE: usize = 1000;
/// RFC 4954 4: the longest AUTH command or continuation line, CRLF included.
pub const MAX_AUTH_LINE: usize = 12288;
/// Chunks at least this big are decoded with the GIL released.
pub const DETACH_THRESHOLD: usize = 64 * 1024;

/// The settings of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    pub max_command_line: usize,
    pub max_text_line: usize,
    pub max_message_size: u64,
    pub max_header_size: u64,
    /// SMTPUTF8 is offered.
    pub smtputf8: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_command_line: MAX_COMMAND_LINE,
            max_text_line: MAX_TEXT_LINE,
            max_message_size: 10 * 1024 * 1024,
            max_header_size: 1024 * 1024,
            smtputf8: true,
        }
    }
}

/// The replies the engine gives by itself, so that the routine dialogue
/// needs no round trip through the session (issue 13's fast path).  Each is
/// the encoded reply the session would send (reply.py stays its single
/// definition); `None` leaves that command to the session, as a Command
/// event.  When it answers, the engine keeps the state the answer implies:
/// EHLO/HELO/LHLO record the greeting and the client's name and forget the
/// transaction; DATA enters data mode; QUIT ends the session.  It answers
/// only where the answer cannot depend on a decision of the session's:
/// a greeting only outside a transaction (inside one the session must drop
/// the message in progress), DATA only inside a transaction with an
/// accepted recipient and no content yet ([`ServerConnection::set_transaction`],
/// [`ServerConnection::recipient_accepted`]).
///
/// The junk commands (NOOP, RSET outside a transaction, VRFY, HELP) are
/// answered while the session's junk count ([`ServerConnection::junk`], which
/// the engine keeps for every junk command it sees) is within `max_junk`;
/// past it they go to the session, which counts them as errors.  The
/// sequence errors of RFC 5321 4.1.4 ([`SequenceReplies`]; not BDAT, whose
/// chunk the session must read) are answered while the error count
/// ([`ServerConnection::errors`]) stays below `max_errors - 1`, so the error
/// that reaches the limit is always the session's, which closes with 421.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoReplies {
    pub ehlo: Option<Vec<u8>>,
    pub helo: Option<Vec<u8>>,
    pub lhlo: Option<Vec<u8>>,
    pub data: Option<Vec<u8>>,
    pub quit: Option<Vec<u8>>,
    pub noop: Option<Vec<u8>>,
    pub rset: Option<Vec<u8>>,
    pub vrfy: Option<Vec<u8>>,
    pub help: Option<Vec<u8>>,
    pub max_junk: u64,
    pub sequence: Option<SequenceReplies>,
    pub max_errors: u64,
    /// MAIL's 250, given only while the session allows it
    /// ([`ServerConnection::set_mail_auto`]) and only to a MAIL whose
    /// parameters need no check of the session's (see [`mail_needs_no_check`]).
    pub mail: Option<Vec<u8>>,
}

/// A MAIL the engine may accept without the session: greeted, no transaction
/// open (the sequence errors come first), and parameters that need no
/// decision -- none, BODY=7BIT or BODY=8BITMIME, SMTPUTF8 without a value --
/// with a non-ASCII reverse-path only under SMTPUTF8.  SIZE (the spool's free
/// space), RET/ENVID, AUTH= and anything unknown go to the session.
fn mail_needs_no_check(cmd: &Command) -> bool {
    let mut utf8 = false;
    for (k, v) in &cmd.params {
        match (k.as_str(), v.as_deref()) {
            ("BODY", Some(b))
                if b.eq_ignore_ascii_case("7BIT") || b.eq_ignore_ascii_case("8BITMIME") => {}
            ("SMTPUTF8", None) => utf8 = true,
            _ => return false,
        }
    }
    utf8 || !cmd.path.as_ref().is_some_and(|p| p.is_utf8())
}

/// The 503/554 replies of the command order (RFC 5321 4.1.4), as the
/// session's sequence table gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SequenceReplies {
    /// MAIL, STARTTLS or AUTH before HELO/EHLO/LHLO.
    pub need_helo: Vec<u8>,
    /// MAIL inside a transaction.
    pub nested_mail: Vec<u8>,
    /// STARTTLS or AUTH inside a transaction.
    pub txn_in_progress: Vec<u8>,
    /// RCPT or DATA without a transaction.
    pub need_mail: Vec<u8>,
    /// DATA with no RCPT tried.
    pub need_rcpt: Vec<u8>,
    /// DATA after RCPTs that were all refused.
    pub no_valid_rcpt: Vec<u8>,
}

/// Which sequence error the engine answered (see [`ServerConnection::take_refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NeedHelo,
    NestedMail,
    TxnInProgress,
    NeedMail,
    NeedRcpt,
    NoValidRcpt,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::NeedHelo => "need_helo",
            Refusal::NestedMail => "nested_mail",
            Refusal::TxnInProgress => "txn_in_progress",
            Refusal::NeedMail => "need_mail",
            Refusal::NeedRcpt => "need_rcpt",
            Refusal::NoValidRcpt => "no_valid_rcpt",
        }
    }

    fn reply(self, r: &SequenceReplies) -> &[u8] {
        match self {
            Refusal::NeedHelo => &r.need_helo,
            Refusal::NestedMail => &r.nested_mail,
            Refusal::TxnInProgress => &r.txn_in_progress,
            Refusal::NeedMail => &r.need_mail,
            Refusal::NeedRcpt => &r.need_rcpt,
            Refusal::NoValidRcpt => &r.no_valid_rcpt,
        }
    }
}

/// How the client greeted us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Greeting {
    Helo,
    Ehlo,
    Lhlo,
}

impl Greeting {
    pub fn as_str(self) -> &'static str {
        match self {
            Greeting::Helo => "HELO",
            Greeting::Ehlo => "EHLO",
            Greeting::Lhlo => "LHLO",
        }
    }
}

/// What a command line turned into.
enum Step {
    Event(Event),
    /// Answered by the engine itself; go on with the next line.
    Answered,
    /// More data is needed.
    Incomplete,
}

/// What the peer did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Command(Command),
    CommandError(CommandError),
    /// A line read in line mode, CRLF removed.
    RawLine(Vec<u8>),
    /// Message content, un-stuffed (DATA) or verbatim (BDAT).
    DataChunk(Vec<u8>),
    /// A non-LAST BDAT chunk has been read in full.
    BdatChunkEnd {
        chunk_size: u64,
        total_size: u64,
    },
    /// The end of a message.
    DataEnd(DataSummary),
    /// The peer closed and every buffered event was taken.
    ConnectionClosed {
        mid_data: bool,
    },
}

#[derive(Debug, Clone)]
enum Mode {
    Command,
    Line,
    Data(Box<DataDecoder>),
    /// The last content of a DATA message went out; its DataEnd is next.
    DataEnding(DataSummary),
    Bdat {
        remaining: u64,
        size: u64,
        last: bool,
    },
}

/// One session's framing and parsing state.
#[derive(Debug)]
pub struct ServerConnection {
    config: ServerConfig,
    buffer: ReceiveBuffer,
    mode: Mode,
    eof: bool,
    /// The message BDAT is building, across chunks.
    bdat: Option<ContentScan>,
    /// The transaction's MAIL had SMTPUTF8.
    tx_utf8: bool,
    /// The replies given without the session, if any (see [`AutoReplies`]).
    auto: Option<Arc<AutoReplies>>,
    /// Replies waiting to be sent, in order: the engine's own and the
    /// session's ([`ServerConnection::write`]).
    out: Vec<u8>,
    greeting: Option<Greeting>,
    helo_name: String,
    /// The session has an open transaction (MAIL was accepted).
    txn_open: bool,
    /// ... and accepted a recipient in it.
    rcpt_accepted: bool,
    /// ... and its content (DATA or BDAT) has started.
    content_started: bool,
    /// ... and a RCPT of it went to the session (accepted or not).
    rcpt_tried: bool,
    /// Junk commands (NOOP, RSET, VRFY, HELP) since the session last reset the count.
    junk: u64,
    /// Error replies of the session, the engine's own included.
    errors: u64,
    /// The sequence errors the engine answered, by verb, not yet taken.
    refused: Vec<(Verb, Refusal)>,
    /// The session lets the engine accept MAIL ([`AutoReplies::mail`]).
    mail_auto: bool,
    /// The MAIL the engine accepted, for the session to take.
    pending_mail: Option<Command>,
    /// Commands the engine answered by itself.
    answered: u64,
    /// The engine answered QUIT: the session is over.
    quit: bool,
    /// ... and said so with ConnectionClosed.
    quit_told: bool,
}

impl ServerConnection {
    pub fn new(config: ServerConfig) -> ServerConnection {
        ServerConnection {
            config,
            buffer: ReceiveBuffer::new(),
            mode: Mode::Command,
            eof: false,
            bdat: None,
            tx_utf8: false,
            auto: None,
            out: Vec::new(),
            greeting: None,
            helo_name: String::new(),
            txn_open: false,
            rcpt_accepted: false,
            content_started: false,
            rcpt_tried: false,
            junk: 0,
            errors: 0,
            refused: Vec::new(),
            mail_auto: false,
            pending_mail: None,
            answered: 0,
            quit: false,
            quit_told: false,
        }
    }

    /// Which commands the engine answers by itself from now on (`None`: none).
    pub fn set_auto_replies(&mut self, auto: Option<Arc<AutoReplies>>) {
        self.auto = auto;
    }

    /// Queue a reply of the session's, after whatever is queued already.
    pub fn write(&mut self, reply: &[u8]) {
        self.out.extend_from_slice(reply);
    }

    /// Everything queued to send, in order; the queue is empty afterwards.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// The session greeted (or re-greeted) the client itself.
    pub fn greet(&mut self, greeting: Option<Greeting>, name: &str) {
        self.greeting = greeting;
        self.helo_name.clear();
        self.helo_name.push_str(name);
    }

    pub fn greeting(&self) -> Option<Greeting> {
        self.greeting
    }

    pub fn helo_name(&self) -> &str {
        &self.helo_name
    }

    /// The session opened (true: MAIL accepted) or closed a transaction.
    pub fn set_transaction(&mut self, open: bool) {
        self.txn_open = open;
        self.rcpt_accepted = false;
        self.rcpt_tried = false;
        self.content_started = false;
        self.pending_mail = None;
    }

    /// Whether the engine may accept a MAIL by itself from now on (the session
    /// says no when a policy, a hook or flow control wants to see MAIL).
    pub fn set_mail_auto(&mut self, on: bool) {
        self.mail_auto = on;
    }

    /// The engine accepted a MAIL the session has not taken yet: the
    /// transaction is open in the engine, not yet in the session.
    pub fn mail_pending(&self) -> bool {
        self.pending_mail.is_some()
    }

    /// The MAIL the engine accepted, once.
    pub fn take_mail(&mut self) -> Option<Command> {
        self.pending_mail.take()
    }

    /// MAIL accepted here if the engine may (see [`AutoReplies::mail`]).
    fn auto_mail(&mut self, cmd: &Command) -> bool {
        let Some(reply) = self.auto.as_ref().and_then(|a| a.mail.as_ref()) else {
            return false;
        };
        if !self.mail_auto || self.txn_open || self.greeting.is_none() || !mail_needs_no_check(cmd)
        {
            return false;
        }
        self.out.extend_from_slice(reply);
        self.answered += 1;
        self.reset_transaction();
        self.tx_utf8 = self.config.smtputf8 && cmd.has_param("SMTPUTF8");
        self.set_transaction(true);
        true
    }

    /// Junk commands seen since the count was last set (NOOP, RSET, VRFY, HELP).
    pub fn junk(&self) -> u64 {
        self.junk
    }

    pub fn set_junk(&mut self, n: u64) {
        self.junk = n;
    }

    /// Error replies of the session so far, the engine's own included.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    pub fn set_errors(&mut self, n: u64) {
        self.errors = n;
    }

    /// The sequence errors answered by the engine since the last call, in order.
    pub fn take_refused(&mut self) -> Vec<(Verb, Refusal)> {
        std::mem::take(&mut self.refused)
    }

    pub fn has_refused(&self) -> bool {
        !self.refused.is_empty()
    }

    /// The sequence error `verb` would get now, as the session's table says.
    fn sequence_error(&self, verb: Verb) -> Option<Refusal> {
        let greeted = self.greeting.is_some();
        match verb {
            Verb::Mail | Verb::Starttls | Verb::Auth if !greeted => Some(Refusal::NeedHelo),
            Verb::Mail if self.txn_open => Some(Refusal::NestedMail),
            Verb::Starttls | Verb::Auth if self.txn_open => Some(Refusal::TxnInProgress),
            Verb::Rcpt | Verb::Data if !self.txn_open => Some(Refusal::NeedMail),
            Verb::Data if !self.rcpt_accepted => Some(if self.rcpt_tried {
                Refusal::NoValidRcpt
            } else {
                Refusal::NeedRcpt
            }),
            _ => None,
        }
    }

    /// The session accepted a RCPT of the open transaction.
    pub fn recipient_accepted(&mut self) {
        self.rcpt_accepted = true;
    }

    /// The session started the transaction's content itself.
    pub fn content_started(&self) -> bool {
        self.content_started
    }

    /// Commands answered by the engine itself, so far.
    pub fn answered(&self) -> u64 {
        self.answered
    }

    /// The command, answered here if the engine may; `None` if the session must.
    fn auto_answer(&mut self, cmd: &Command) -> Option<()> {
        let auto = self.auto.as_ref()?;
        if let Some(seq) = auto.sequence.as_ref() {
            if self.errors + 1 < auto.max_errors {
                if let Some(refusal) = self.sequence_error(cmd.verb) {
                    self.out.extend_from_slice(refusal.reply(seq));
                    self.errors += 1;
                    self.answered += 1;
                    self.refused.push((cmd.verb, refusal));
                    return Some(());
                }
            }
        }
        let junk = matches!(cmd.verb, Verb::Noop | Verb::Rset | Verb::Vrfy | Verb::Help);
        if junk {
            if self.junk > auto.max_junk {
                return None;
            }
            let reply = match cmd.verb {
                Verb::Noop => auto.noop.as_ref(),
                Verb::Rset if !self.txn_open => auto.rset.as_ref(),
                Verb::Vrfy => auto.vrfy.as_ref(),
                Verb::Help => auto.help.as_ref(),
                _ => None,
            }?;
            self.out.extend_from_slice(reply);
            self.answered += 1;
            if cmd.verb == Verb::Rset {
                self.reset_transaction();
            }
            return Some(());
        }
        let (reply, greeting) = match cmd.verb {
            Verb::Ehlo if !self.txn_open => (auto.ehlo.as_ref()?, Some(Greeting::Ehlo)),
            Verb::Helo if !self.txn_open => (auto.helo.as_ref()?, Some(Greeting::Helo)),
            Verb::Lhlo if !self.txn_open => (auto.lhlo.as_ref()?, Some(Greeting::Lhlo)),
            Verb::Data if self.txn_open && self.rcpt_accepted && !self.content_started => {
                (auto.data.as_ref()?, None)
            }
            Verb::Quit => (auto.quit.as_ref()?, None),
            _ => return None,
        };
        self.out.extend_from_slice(reply);
        self.answered += 1;
        match cmd.verb {
            Verb::Data => {
                self.content_started = true;
                self.mode = Mode::Data(Box::new(DataDecoder::new(self.limits())));
            }
            Verb::Quit => {
                self.quit = true;
                self.buffer.clear();
            }
            _ => {
                self.greeting = greeting;
                self.helo_name.clear();
                self.helo_name.push_str(cmd.arg.trim());
                self.reset_transaction();
            }
        }
        Some(())
    }

    fn limits(&self) -> DataLimits {
        DataLimits {
            max_text_line: self.config.max_text_line as u64,
            max_message_size: self.config.max_message_size,
            max_header_size: self.config.max_header_size,
        }
    }

    /// Buffer bytes from the peer; an empty slice means the peer closed.
    pub fn receive_data(&mut self, data: &[u8]) -> Result<(), Error> {
        if self.eof {
            return Err(Error::State("receive_data() after the peer closed".into()));
        }
        if data.is_empty() {
            self.eof = true;
        } else {
            self.buffer.extend(data);
        }
        Ok(())
    }

    /// True when the next `next_event` would decode a big chunk of DATA (the
    /// binding releases the GIL around it).
    pub fn next_event_is_heavy(&self) -> bool {
        matches!(self.mode, Mode::Data(_)) && self.buffer.len() >= DETACH_THRESHOLD
    }

    /// The next event, or `None` when more data is needed.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            match &mut self.mode {
                Mode::Command => {
                    if self.quit {
                        break;
                    }
                    match self.command_event() {
                        Step::Event(ev) => return Some(ev),
                        Step::Answered => continue,
                        Step::Incomplete => break,
                    }
                }
                Mode::Line => match self.buffer.find_line(MAX_AUTH_LINE) {
                    LineScan::Line(n) => {
                        let line = self.buffer.pending()[..n].to_vec();
                        self.buffer.consume(n + 2);
                        self.mode = Mode::Command;
                        return Some(Event::RawLine(line));
                    }
                    LineScan::TooLong => {
                        self.mode = Mode::Command;
                        return Some(Event::CommandError(CommandError::auth_line_too_long()));
                    }
                    LineScan::Incomplete => break,
                },
                Mode::Data(decoder) => {
                    let pending = self.buffer.pending();
                    if pending.is_empty() {
                        break;
                    }
                    let mut out = Vec::new();
                    let r = decoder.decode(pending, &mut out);
                    let summary = decoder.summary();
                    self.buffer.consume(r.consumed);
                    if r.done {
                        self.end_transaction();
                        if out.is_empty() {
                            self.mode = Mode::Command;
                            return Some(Event::DataEnd(summary));
                        }
                        self.mode = Mode::DataEnding(summary);
                    }
                    if !out.is_empty() {
                        return Some(Event::DataChunk(out));
                    }
                }
                Mode::DataEnding(summary) => {
                    let summary = *summary;
                    self.mode = Mode::Command;
                    return Some(Event::DataEnd(summary));
                }
                Mode::Bdat {
                    remaining,
                    size,
                    last,
                } => {
                    let bdat_limits = DataLimits {
                        max_text_line: u64::MAX,
                        max_message_size: self.config.max_message_size,
                        max_header_size: self.config.max_header_size,
                    };
                    let scan = self
                        .bdat
                        .get_or_insert_with(|| ContentScan::new(bdat_limits));
                    if *remaining == 0 {
                        let event = if *last {
                            let summary = scan.summary();
                            self.end_transaction();
                            Event::DataEnd(summary)
                        } else {
                            Event::BdatChunkEnd {
                                chunk_size: *size,
                                total_size: scan.size(),
                            }
                        };
                        self.mode = Mode::Command;
                        return Some(event);
                    }
                    let pending = self.buffer.pending();
                    if pending.is_empty() {
                        break;
                    }
                    let n = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(pending.len());
                    *remaining -= n as u64;
                    // Read by length, verbatim; what is handed out is the
                    // content before the message's first problem (an octet
                    // over a limit), wherever the reads were cut.
                    let chunk = &pending[..n];
                    let ok = scan.feed(chunk);
                    let event = (ok > 0).then(|| Event::DataChunk(chunk[..ok].to_vec()));
                    self.buffer.consume(n);
                    if event.is_some() {
                        return event;
                    }
                }
            }
        }
        if self.quit {
            // the engine answered QUIT: the session is over, said once
            return (!std::mem::replace(&mut self.quit_told, true))
                .then_some(Event::ConnectionClosed { mid_data: false });
        }
        self.eof.then(|| Event::ConnectionClosed {
            mid_data: !matches!(self.mode, Mode::Command | Mode::Line)
                || !self.buffer.is_empty()
                || self.buffer.is_discarding(),
        })
    }

    fn command_event(&mut self) -> Step {
        let pending = self.buffer.pending();
        // RFC 4954 4 lets an AUTH command line (initial response) be longer.
        let limit = if pending.len() >= 5 && pending[..5].eq_ignore_ascii_case(b"AUTH ") {
            MAX_AUTH_LINE.max(self.config.max_command_line)
        } else {
            self.config.max_command_line
        };
        let n = match self.buffer.find_line(limit) {
            LineScan::Line(n) => n,
            LineScan::TooLong => {
                return Step::Event(Event::CommandError(CommandError::line_too_long()))
            }
            LineScan::Incomplete => return Step::Incomplete,
        };
        let opts = CommandOptions {
            smtputf8: self.config.smtputf8,
            rcpt_utf8: self.config.smtputf8 && self.tx_utf8,
        };
        let parsed = parse_command(&self.buffer.pending()[..n], opts);
        self.buffer.consume(n + 2);
        Step::Event(match parsed {
            Ok(cmd) => {
                if matches!(cmd.verb, Verb::Noop | Verb::Rset | Verb::Vrfy | Verb::Help) {
                    self.junk += 1;
                }
                if self.auto.is_some() && self.auto_answer(&cmd).is_some() {
                    return Step::Answered;
                }
                if cmd.verb == Verb::Mail && self.auto_mail(&cmd) {
                    self.pending_mail = Some(cmd);
                    return Step::Answered;
                }
                if cmd.verb == Verb::Rcpt && self.txn_open {
                    self.rcpt_tried = true;
                }
                match cmd.verb {
                    Verb::Rset | Verb::Helo | Verb::Ehlo | Verb::Lhlo => self.reset_transaction(),
                    Verb::Mail => {
                        self.reset_transaction();
                        self.tx_utf8 = self.config.smtputf8 && cmd.has_param("SMTPUTF8");
                    }
                    Verb::Bdat => {
                        self.content_started |= self.txn_open;
                        self.mode = Mode::Bdat {
                            remaining: cmd.bdat_size.unwrap_or(0),
                            size: cmd.bdat_size.unwrap_or(0),
                            last: cmd.bdat_last,
                        };
                    }
                    _ => {}
                }
                Event::Command(cmd)
            }
            Err(e) => Event::CommandError(e),
        })
    }

    fn end_transaction(&mut self) {
        self.bdat = None;
        self.tx_utf8 = false;
    }

    /// After answering DATA with 354: what follows is content.
    pub fn start_data(&mut self) -> Result<(), Error> {
        if !matches!(self.mode, Mode::Command) {
            return Err(Error::State("start_data() outside command mode".into()));
        }
        self.mode = Mode::Data(Box::new(DataDecoder::new(self.limits())));
        self.content_started = true;
        Ok(())
    }

    /// The next line comes out as a RawLine.
    pub fn read_line(&mut self) -> Result<(), Error> {
        if !matches!(self.mode, Mode::Command | Mode::Line) {
            return Err(Error::State("read_line() outside command mode".into()));
        }
        self.mode = Mode::Line;
        Ok(())
    }

    /// Drop every byte received and not yet parsed; returns the count.
    pub fn discard_buffer(&mut self) -> usize {
        self.buffer.clear()
    }

    /// Forget the message in progress.  A BDAT chunk being read is still read
    /// to its end, so that the session stays framed.
    pub fn reset_transaction(&mut self) {
        self.end_transaction();
    }

    /// Octets received and not yet turned into events.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    pub fn max_message_size(&self) -> u64 {
        self.config.max_message_size
    }

    /// Applies to the message being read too.
    pub fn set_max_message_size(&mut self, value: u64) {
        self.config.max_message_size = value;
        if let Mode::Data(d) = &mut self.mode {
            d.set_max_message_size(value);
        }
        if let Some(scan) = &mut self.bdat {
            scan.set_max_message_size(value);
        }
    }

    /// Between `start_data()` or a BDAT command and the matching end event.
    pub fn in_data(&self) -> bool {
        matches!(
            self.mode,
            Mode::Data(_) | Mode::DataEnding(_) | Mode::Bdat { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ContentError;

    fn conn() -> ServerConnection {
        ServerConnection::new(ServerConfig::default())
    }

    /// Feed `input` in the given pieces; collect the events, calling
    /// `start_data` right after a DATA command (as a session answering 354 would).
    fn run_pieces(pieces: &[&[u8]], config: ServerConfig) -> Vec<Event> {
        let mut c = ServerConnection::new(config);
        let mut events = Vec::new();
        let mut pieces = pieces.iter().filter(|p| !p.is_empty());
        loop {
            while let Some(ev) = c.next_event() {
                let closed = matches!(ev, Event::ConnectionClosed { .. });
                if let Event::Command(cmd) = &ev {
                    if cmd.verb == Verb::Data {
                        c.start_data().unwrap();
                    }
                }
                events.push(ev);
                if closed {
                    return merge_chunks(events);
                }
            }
            match pieces.next() {
                Some(p) => c.receive_data(p).unwrap(),
                None => c.receive_data(b"").unwrap(),
            }
        }
    }

    /// Feed `input` in pieces of `step` octets.
    fn run(input: &[u8], step: usize, config: ServerConfig) -> Vec<Event> {
        run_pieces(&input.chunks(step.max(1)).collect::<Vec<_>>(), config)
    }

    /// Join consecutive DataChunks (how content is split into events
    /// follows the reads).  Nothing else may depend on the cuts: not the
    /// content of a message, refused or not, nor which refusal it gets.
    fn merge_chunks(events: Vec<Event>) -> Vec<Event> {
        let mut out: Vec<Event> = Vec::new();
        for ev in events {
            match (out.last_mut(), ev) {
                (Some(Event::DataChunk(a)), Event::DataChunk(b)) => a.extend(b),
                (_, ev) => out.push(ev),
            }
        }
        out
    }

    fn run_all_ways(input: &[u8], config: ServerConfig) -> Vec<Event> {
        let whole = run(input, input.len(), config);
        for step in [1, 2, 3, 5, 7, 64] {
            assert_eq!(run(input, step, config), whole, "step {step}");
        }
        whole
    }

    /// Whole, byte by byte, and cut once at every point: all the same.
    fn run_every_cut(input: &[u8], config: ServerConfig) -> Vec<Event> {
        let whole = run_all_ways(input, config);
        for cut in 1..input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(run_pieces(&[a, b], config), whole, "cut at {cut}");
        }
        whole
    }

    fn verbs(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Command(c) => c.verb.to_string(),
                Event::CommandError(e) => format!("{}", e.code),
                Event::RawLine(_) => "line".into(),
                Event::DataChunk(_) => "chunk".into(),
                Event::BdatChunkEnd { .. } => "chunk-end".into(),
                Event::DataEnd(_) => "end".into(),
                Event::ConnectionClosed { mid_data } => format!("closed({mid_data})"),
            })
            .collect()
    }

    #[test]
    fn pipelined_and_split_commands() {
        let input = b"EHLO a\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<>\r\nNOOP\r\nQUIT\r\n";
        let events = run_all_ways(input, ServerConfig::default());
        assert_eq!(
            verbs(&events),
            [
                "EHLO",
                "MAIL",
                "RCPT",
                "553",
                "NOOP",
                "QUIT",
                "closed(false)"
            ]
        );
    }

    #[test]
    fn data_session() {
        let input = b"MAIL FROM:<a@b>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
        let events = run_all_ways(input, ServerConfig::default());
        assert_eq!(
            verbs(&events),
            ["MAIL", "DATA", "chunk", "end", "QUIT", "closed(false)"]
        );
        assert_eq!(
            events[2],
            Event::DataChunk(b"Subject: x\r\n\r\n.dot\r\n".to_vec())
        );
    }

    #[test]
    fn smuggling() {
        for smuggle in [&b"\n.\n"[..], b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"] {
            let mut input = b"DATA\r\nSubject: x\r\n\r\nhi".to_vec();
            input.extend_from_slice(smuggle);
            input.extend_from_slice(b"MAIL FROM:<x@y>\r\n");
            let events = run_all_ways(&input, ServerConfig::default());
            assert!(
                events.iter().all(|e| !matches!(e, Event::DataEnd(_))),
                "{smuggle:?}"
            );
            assert_eq!(
                events.last(),
                Some(&Event::ConnectionClosed { mid_data: true })
            );
            let cmds = events
                .iter()
                .filter(|e| matches!(e, Event::Command(_)))
                .count();
            assert_eq!(cmds, 1, "{smuggle:?}");
            input.extend_from_slice(b"\r\n.\r\n");
            let events = run_all_ways(&input, ServerConfig::default());
            let Some(Event::DataEnd(s)) = events.iter().find(|e| matches!(e, Event::DataEnd(_)))
            else {
                panic!("no end");
            };
            assert_eq!(s.error, Some(ContentError::BareNewline));
        }
    }

    #[test]
    fn long_lines_and_bare_newlines() {
        let mut input = vec![b'N'; 600];
        input.extend_from_slice(b"\r\nNOOP\r\nNOOP\nQUIT\r\nAUTH PLAIN ");
        input.extend_from_slice(&[b'A'; 1000]);
        input.extend_from_slice(b"\r\n");
        let events = run_all_ways(&input, ServerConfig::default());
        assert_eq!(
            verbs(&events),
            ["500", "NOOP", "500", "AUTH", "closed(false)"]
        );
        let Event::CommandError(e) = &events[0] else {
            panic!()
        };
        assert_eq!(e.text, "Line too long");
        let mut c = conn();
        c.receive_data(&[b'x'; 100_000]).unwrap();
        assert!(c.next_event().is_none());
        assert!(c.buffered() < 512);
    }

    #[test]
    fn bdat() {
        let input = b"BDAT 5\r\nab\r\ncBDAT 0\r\nBDAT 3 LAST\r\nxyzNOOP\r\n";
        let events = run_all_ways(input, ServerConfig::default());
        assert_eq!(
            verbs(&events),
            [
                "BDAT",
                "chunk",
                "chunk-end",
                "BDAT",
                "chunk-end",
                "BDAT",
                "chunk",
                "end",
                "NOOP",
                "closed(false)"
            ]
        );
        assert_eq!(events[1], Event::DataChunk(b"ab\r\nc".to_vec()));
        assert_eq!(
            events[4],
            Event::BdatChunkEnd {
                chunk_size: 0,
                total_size: 5
            }
        );
        let Event::DataEnd(s) = &events[7] else {
            panic!()
        };
        assert_eq!(s.size, 8);
        let events = run_all_ways(b"BDAT 0 LAST\r\nQUIT\r\n", ServerConfig::default());
        assert_eq!(verbs(&events), ["BDAT", "end", "QUIT", "closed(false)"]);
        let events = run_all_ways(b"BDAT 10\r\nabc", ServerConfig::default());
        assert_eq!(verbs(&events), ["BDAT", "chunk", "closed(true)"]);
        // RSET forgets the message: the total starts again.
        let events = run_all_ways(b"BDAT 2\r\nabRSET\r\nBDAT 1\r\nc", ServerConfig::default());
        assert_eq!(
            events[6],
            Event::BdatChunkEnd {
                chunk_size: 1,
                total_size: 1
            }
        );
    }

    #[test]
    fn bdat_size_limit() {
        let config = ServerConfig {
            max_message_size: 4,
            ..ServerConfig::default()
        };
        let events = run_every_cut(b"BDAT 3\r\nabcBDAT 3 LAST\r\ndefNOOP\r\n", config);
        assert_eq!(
            verbs(&events),
            [
                "BDAT",
                "chunk",
                "chunk-end",
                "BDAT",
                "chunk",
                "end",
                "NOOP",
                "closed(false)"
            ]
        );
        // The content before the first octet over the limit comes out.
        assert_eq!(events[4], Event::DataChunk(b"d".to_vec()));
        let Event::DataEnd(s) = &events[5] else {
            panic!()
        };
        assert_eq!((s.size, s.error), (6, Some(ContentError::Size)));
    }

    /// fuzz find `regress-server-bdat-chunk-events`: a non-LAST BDAT chunk
    /// over max_message_size, the message then ended by a DATA message.  The
    /// scan refused a whole read at once when a limit was passed in it, so
    /// the content handed out was all of the chunk's reads before the one
    /// that passed the limit: none read whole, some cut.
    #[test]
    fn bdat_chunk_over_the_size_limit_same_however_cut() {
        let config = ServerConfig {
            max_message_size: 4,
            ..ServerConfig::default()
        };
        let input = b"BDAT 6\r\nabcdefDATA\r\n.\r\nQUIT\r\n";
        let events = run_every_cut(input, config);
        assert_eq!(
            verbs(&events),
            [
                "BDAT",
                "chunk",
                "chunk-end",
                "DATA",
                "end",
                "QUIT",
                "closed(false)"
            ]
        );
        assert_eq!(events[1], Event::DataChunk(b"abcd".to_vec()));
        // Over the limit in a later chunk, and at EOF.
        let input = b"BDAT 3\r\nabcBDAT 3\r\ndefNOOP\r\nBDAT 9\r\nghi";
        let events = run_every_cut(input, config);
        assert_eq!(events[1], Event::DataChunk(b"abc".to_vec()));
        assert_eq!(events[4], Event::DataChunk(b"d".to_vec()));
        assert_eq!(
            events.last(),
            Some(&Event::ConnectionClosed { mid_data: true })
        );
    }

    /// fuzz find `regress-server-cut-dependent-events`: the same with the
    /// header-size limit passed in the second chunk of a BDAT message.
    #[test]
    fn bdat_chunk_over_the_header_limit_same_however_cut() {
        let config = ServerConfig {
            max_header_size: 6,
            ..ServerConfig::default()
        };
        let input = b"BDAT 4\r\nab\r\nBDAT 5\r\ncdefgDATA\r\nx\r\n\r\n.\r\n";
        let events = run_every_cut(input, config);
        assert_eq!(
            verbs(&events),
            [
                "BDAT",
                "chunk",
                "chunk-end",
                "BDAT",
                "chunk",
                "chunk-end",
                "DATA",
                "chunk",
                "end",
                "closed(false)"
            ]
        );
        assert_eq!(events[4], Event::DataChunk(b"cd".to_vec()));
        assert_eq!(events[7], Event::DataChunk(b"x\r\n\r\n".to_vec()));
    }

    /// Which refusal a DATA message gets, and its content before it, are
    /// those of the first problem in octet order, however the reads are cut.
    #[test]
    fn data_refusal_same_however_cut() {
        let config = ServerConfig {
            max_text_line: 8,
            max_message_size: 40,
            max_header_size: 20,
            ..ServerConfig::default()
        };
        for (content, error, handed_out) in [
            (
                &b"Subject: a long line\nx\r\n"[..],
                ContentError::LineLength,
                &b"Subject:"[..],
            ),
            (
                b"Subj\nect: a long line\r\n",
                ContentError::BareNewline,
                b"Subj",
            ),
            (
                b"A: b\r\nC: d\r\nE: f\r\nG: h\r\n\nX\r\n",
                ContentError::HeaderSize,
                b"A: b\r\nC: d\r\nE: f\r\nG:",
            ),
            (
                b"A: b\r\n\r\n123456\r\n123456\r\n123456\r\n123456\r\nxy\n",
                ContentError::Size,
                b"A: b\r\n\r\n123456\r\n123456\r\n123456\r\n123456\r\n",
            ),
        ] {
            let input = [b"DATA\r\n", content, b"\r\n.\r\nNOOP\r\n"].concat();
            let events = run_every_cut(&input, config);
            assert_eq!(
                verbs(&events),
                ["DATA", "chunk", "end", "NOOP", "closed(false)"]
            );
            assert_eq!(events[1], Event::DataChunk(handed_out.to_vec()));
            let Event::DataEnd(s) = &events[2] else {
                panic!()
            };
            assert_eq!(
                s.error,
                Some(error),
                "{:?}",
                String::from_utf8_lossy(content)
            );
        }
    }

    #[test]
    fn read_line_and_discard() {
        let mut c = conn();
        c.receive_data(b"AUTH LOGIN\r\ndXNlcg==\r\nNOOP\r\n")
            .unwrap();
        assert!(matches!(c.next_event(), Some(Event::Command(_))));
        c.read_line().unwrap();
        assert_eq!(c.next_event(), Some(Event::RawLine(b"dXNlcg==".to_vec())));
        assert!(matches!(c.next_event(), Some(Event::Command(_))));
        c.receive_data(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
            .unwrap();
        assert!(matches!(c.next_event(), Some(Event::Command(cmd)) if cmd.verb == Verb::Starttls));
        assert_eq!(c.discard_buffer(), 20);
        assert_eq!(c.next_event(), None);
        c.receive_data(b"").unwrap();
        assert_eq!(
            c.next_event(),
            Some(Event::ConnectionClosed { mid_data: false })
        );
        assert!(c.receive_data(b"x").is_err());
    }

    #[test]
    fn utf8_follows_the_transaction() {
        let input = "MAIL FROM:<é@x> SMTPUTF8\r\nRCPT TO:<ü@x>\r\nRSET\r\nRCPT TO:<ü@x>\r\n";
        let events = run(input.as_bytes(), 1000, ServerConfig::default());
        assert_eq!(
            verbs(&events),
            ["MAIL", "RCPT", "RSET", "553", "closed(false)"]
        );
        let config = ServerConfig {
            smtputf8: false,
            ..ServerConfig::default()
        };
        let events = run(input.as_bytes(), 1000, config);
        assert_eq!(
            verbs(&events),
            ["553", "553", "RSET", "553", "closed(false)"]
        );
    }

    #[test]
    fn misuse() {
        let mut c = conn();
        c.start_data().unwrap();
        assert!(c.in_data());
        assert!(c.start_data().is_err());
        assert!(c.read_line().is_err());
    }

    // ------------------------------------------------------------ auto replies

    fn auto() -> Arc<AutoReplies> {
        Arc::new(AutoReplies {
            ehlo: Some(b"250-x\r\n250 PIPELINING\r\n".to_vec()),
            helo: Some(b"250 x\r\n".to_vec()),
            lhlo: None,
            data: Some(b"354 go\r\n".to_vec()),
            quit: Some(b"221 bye\r\n".to_vec()),
            ..AutoReplies::default()
        })
    }

    fn auto_all(max_junk: u64, max_errors: u64) -> Arc<AutoReplies> {
        Arc::new(AutoReplies {
            noop: Some(b"250 noop\r\n".to_vec()),
            rset: Some(b"250 rset\r\n".to_vec()),
            vrfy: Some(b"252 vrfy\r\n".to_vec()),
            help: Some(b"214 help\r\n".to_vec()),
            max_junk,
            sequence: Some(SequenceReplies {
                need_helo: b"503 helo\r\n".to_vec(),
                nested_mail: b"503 nested\r\n".to_vec(),
                txn_in_progress: b"503 txn\r\n".to_vec(),
                need_mail: b"503 mail\r\n".to_vec(),
                need_rcpt: b"503 rcpt\r\n".to_vec(),
                no_valid_rcpt: b"554 norcpt\r\n".to_vec(),
            }),
            max_errors,
            ..(*auto()).clone()
        })
    }

    /// Feed `input` whole; the session's part: MAIL opens a transaction, RCPT
    /// to "ok" is accepted, anything else that reaches it is answered "500 VERB".
    fn run_all(c: &mut ServerConnection, input: &[u8]) -> (String, Vec<Verb>) {
        c.receive_data(input).unwrap();
        let mut seen = Vec::new();
        while let Some(ev) = c.next_event() {
            match ev {
                Event::Command(cmd) => {
                    seen.push(cmd.verb);
                    match cmd.verb {
                        Verb::Mail => {
                            c.set_transaction(true);
                            c.write(b"250 mail\r\n");
                        }
                        Verb::Rcpt if cmd.arg.contains("ok") => {
                            c.recipient_accepted();
                            c.write(b"250 rcpt\r\n");
                        }
                        Verb::Rset => {
                            c.set_transaction(false);
                            c.write(b"250 session rset\r\n");
                        }
                        v => c.write(format!("500 {v:?}\r\n").as_bytes()),
                    }
                }
                Event::ConnectionClosed { .. } => break,
                _ => {}
            }
        }
        (String::from_utf8(c.take_output()).unwrap(), seen)
    }

    #[test]
    fn auto_mail_only_when_allowed_and_needing_no_check() {
        let mut c = ServerConnection::new(ServerConfig::default());
        let with_mail = AutoReplies {
            mail: Some(b"250 auto mail\r\n".to_vec()),
            ..(*auto_all(10, 100)).clone()
        };
        c.set_auto_replies(Some(Arc::new(with_mail)));
        // not allowed yet: the session's
        let (out, seen) = run_all(&mut c, b"EHLO c\r\nMAIL FROM:<a@b>\r\nRSET\r\n");
        assert!(out.ends_with("250 mail\r\n250 session rset\r\n"), "{out}");
        assert_eq!(seen, vec![Verb::Mail, Verb::Rset]);
        c.set_mail_auto(true);
        let (out, seen) = run_all(&mut c, b"MAIL FROM:<a@b> BODY=8bitmime SMTPUTF8\r\n");
        assert_eq!((out.as_str(), seen), ("250 auto mail\r\n", vec![]));
        assert!(c.mail_pending());
        // the transaction is open in the engine: a second MAIL is nested
        let (out, _) = run_all(&mut c, b"MAIL FROM:<a@b>\r\n");
        assert_eq!(out, "503 nested\r\n");
        let mail = c.take_mail().expect("the MAIL");
        assert_eq!(mail.path.unwrap().address(), "a@b");
        assert_eq!(mail.params.len(), 2);
        assert!(!c.mail_pending() && c.take_mail().is_none());
        // RCPT may use UTF-8 after an accepted MAIL with SMTPUTF8
        let (out, seen) = run_all(&mut c, "RCPT TO:<ok\u{e9}@b>\r\n".as_bytes());
        assert_eq!((out.as_str(), seen), ("250 rcpt\r\n", vec![Verb::Rcpt]));
        // closing the transaction forgets a MAIL not taken
        c.set_transaction(false);
        run_all(&mut c, b"MAIL FROM:<a@b>\r\n");
        c.set_transaction(false);
        assert!(!c.mail_pending());
        // parameters that need a check: the session's
        for line in [
            "MAIL FROM:<a@b> SIZE=10\r\n",
            "MAIL FROM:<a@b> BODY=BINARYMIME\r\n",
            "MAIL FROM:<a@b> RET=HDRS\r\n",
            "MAIL FROM:<a@b> SMTPUTF8=x\r\n",
            "MAIL FROM:<a@b> X=1\r\n",
        ] {
            let (_, seen) = run_all(&mut c, line.as_bytes());
            assert_eq!(seen, vec![Verb::Mail], "{line}");
            c.set_transaction(false);
        }
        // before a greeting: the sequence error, not the MAIL
        c.greet(None, "");
        let (out, _) = run_all(&mut c, b"MAIL FROM:<a@b>\r\n");
        assert_eq!(out, "503 helo\r\n");
    }

    #[test]
    fn auto_junk_commands_within_the_limit_then_the_session() {
        let mut c = ServerConnection::new(ServerConfig::default());
        c.set_auto_replies(Some(auto_all(2, 10)));
        let (out, seen) = run_all(&mut c, b"NOOP\r\nHELP\r\nVRFY x\r\nNOOP\r\n");
        assert_eq!(out, "250 noop\r\n214 help\r\n500 Vrfy\r\n500 Noop\r\n");
        assert_eq!(seen, vec![Verb::Vrfy, Verb::Noop]);
        assert_eq!(
            c.junk(),
            4,
            "every junk command is counted, answered or not"
        );
        c.set_junk(0);
        let (out, _) = run_all(&mut c, b"RSET\r\n");
        assert_eq!(out, "250 rset\r\n");
        // without auto replies the engine still counts
        c.set_auto_replies(None);
        let (_, seen) = run_all(&mut c, b"NOOP\r\n");
        assert_eq!((seen, c.junk()), (vec![Verb::Noop], 2));
    }

    #[test]
    fn auto_rset_inside_a_transaction_is_the_sessions() {
        let mut c = ServerConnection::new(ServerConfig::default());
        c.set_auto_replies(Some(auto_all(10, 10)));
        let (out, seen) = run_all(&mut c, b"EHLO c\r\nMAIL FROM:<a@b>\r\nNOOP\r\nRSET\r\n");
        assert_eq!(
            out,
            "250-x\r\n250 PIPELINING\r\n250 mail\r\n250 noop\r\n250 session rset\r\n"
        );
        assert_eq!(seen, vec![Verb::Mail, Verb::Rset]);
    }

    #[test]
    fn auto_sequence_errors_follow_the_table() {
        let mut c = ServerConnection::new(ServerConfig::default());
        c.set_auto_replies(Some(auto_all(10, 100)));
        let input = b"MAIL FROM:<a@b>\r\nSTARTTLS\r\nRCPT TO:<ok@b>\r\nDATA\r\nEHLO c\r\n\
            RCPT TO:<ok@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nDATA\r\nMAIL FROM:<a@b>\r\nAUTH PLAIN\r\n\
            RCPT TO:<no@b>\r\nDATA\r\nBDAT 0 LAST\r\n";
        let (out, seen) = run_all(&mut c, input);
        let want = "503 helo\r\n503 helo\r\n503 mail\r\n503 mail\r\n250-x\r\n250 PIPELINING\r\n\
            503 mail\r\n503 mail\r\n250 mail\r\n503 rcpt\r\n503 nested\r\n503 txn\r\n\
            500 Rcpt\r\n554 norcpt\r\n500 Bdat\r\n";
        assert_eq!(out, want);
        assert_eq!(seen, vec![Verb::Mail, Verb::Rcpt, Verb::Bdat]);
        assert_eq!(c.errors(), 10);
        let refused: Vec<(&str, &str)> = c
            .take_refused()
            .into_iter()
            .map(|(v, r)| (v.as_str(), r.as_str()))
            .collect();
        assert_eq!(refused[0], ("MAIL", "need_helo"));
        assert_eq!(refused[1], ("STARTTLS", "need_helo"));
        assert_eq!(refused[9], ("DATA", "no_valid_rcpt"));
        assert_eq!(refused.len(), 10);
        assert!(!c.has_refused());
    }

    #[test]
    fn auto_sequence_error_that_reaches_the_limit_is_the_sessions() {
        let mut c = ServerConnection::new(ServerConfig::default());
        c.set_auto_replies(Some(auto_all(10, 3)));
        c.set_errors(1);
        let (out, seen) = run_all(&mut c, b"RCPT TO:<a@b>\r\nDATA\r\n");
        // errors 1 -> 2 by the engine; the next would reach 3 (the limit): the session's
        assert_eq!(out, "503 mail\r\n500 Data\r\n");
        assert_eq!((seen, c.errors()), (vec![Verb::Data], 2));
    }

    /// Drive a connection with auto replies as the session does: MAIL opens
    /// the transaction, RCPT accepts, the end of a message closes it; every
    /// other command the session sees is answered "500 py VERB".  Returns the
    /// whole output and the events the session saw (content joined).
    fn run_auto(pieces: &[&[u8]]) -> (Vec<u8>, Vec<Event>) {
        let mut c = conn();
        c.set_auto_replies(Some(auto()));
        c.write(b"220 hi\r\n");
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut pieces = pieces.iter().filter(|p| !p.is_empty());
        loop {
            while let Some(ev) = c.next_event() {
                match &ev {
                    Event::Command(cmd) if cmd.verb == Verb::Mail => {
                        c.set_transaction(true);
                        c.write(b"250 mail\r\n");
                    }
                    Event::Command(cmd) if cmd.verb == Verb::Rcpt => {
                        c.recipient_accepted();
                        c.write(b"250 rcpt\r\n");
                    }
                    Event::Command(cmd) => {
                        c.write(format!("500 py {:?}\r\n", cmd.verb).as_bytes());
                    }
                    Event::DataEnd(_) => {
                        c.set_transaction(false);
                        c.write(b"250 queued\r\n");
                    }
                    _ => {}
                }
                let closed = matches!(ev, Event::ConnectionClosed { .. });
                events.push(ev);
                if closed {
                    out.extend(c.take_output());
                    return (out, merge_chunks(events));
                }
            }
            out.extend(c.take_output());
            match pieces.next() {
                Some(p) => c.receive_data(p).unwrap(),
                None => c.receive_data(b"").unwrap(),
            }
        }
    }

    /// The same output and events for the whole input, byte by byte, and cut at every point.
    fn check_auto_cuts(input: &[u8]) -> (Vec<u8>, Vec<Event>) {
        let whole = run_auto(&[input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run_auto(&bytes), whole, "byte by byte");
        for cut in 1..input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(run_auto(&[a, b]), whole, "cut at {cut}");
        }
        whole
    }

    #[test]
    fn auto_replies_answer_the_routine_dialogue_in_order() {
        let input = b"EHLO client.example\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\nNOOP\r\n";
        let (out, events) = check_auto_cuts(input);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "220 hi\r\n250-x\r\n250 PIPELINING\r\n250 mail\r\n250 rcpt\r\n354 go\r\n250 queued\r\n221 bye\r\n"
        );
        // the session saw MAIL, RCPT, the content, its end and the close; not EHLO, DATA, QUIT, nor what followed QUIT
        let verbs: Vec<String> = events
            .iter()
            .map(|e| match e {
                Event::Command(c) => format!("{:?}", c.verb),
                Event::DataChunk(d) => String::from_utf8(d.clone()).unwrap(),
                Event::DataEnd(_) => "end".into(),
                Event::ConnectionClosed { mid_data } => format!("closed {mid_data}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(verbs, ["Mail", "Rcpt", "hi\r\n", "end", "closed false"]);
    }

    #[test]
    fn auto_replies_leave_what_needs_a_decision_to_the_session() {
        // DATA before any accepted RCPT, EHLO inside a transaction, and a
        // second DATA after content started go to the session
        let input = b"HELO c\r\nDATA\r\nMAIL FROM:<a@b>\r\nDATA\r\nEHLO c\r\nRCPT TO:<c@d>\r\nBDAT 2 LAST\r\nhiDATA\r\n";
        let (out, _) = check_auto_cuts(input);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "220 hi\r\n250 x\r\n500 py Data\r\n250 mail\r\n500 py Data\r\n500 py Ehlo\r\n250 rcpt\r\n500 py Bdat\r\n250 queued\r\n500 py Data\r\n"
        );
    }

    #[test]
    fn auto_greeting_records_the_name_and_forgets_the_message_state() {
        let mut c = conn();
        c.set_auto_replies(Some(auto()));
        c.receive_data(b"EHLO  client.example \r\n").unwrap();
        assert!(c.next_event().is_none());
        assert_eq!(c.greeting(), Some(Greeting::Ehlo));
        assert_eq!(c.helo_name(), "client.example");
        assert_eq!(c.answered(), 1);
        // QUIT ends the session: ConnectionClosed once, then nothing
        let mut q = conn();
        q.set_auto_replies(Some(auto()));
        q.receive_data(b"QUIT\r\nNOOP\r\n").unwrap();
        assert!(matches!(
            q.next_event(),
            Some(Event::ConnectionClosed { mid_data: false })
        ));
        assert!(q.next_event().is_none());
        assert_eq!(q.take_output(), b"221 bye\r\n");
        // without auto replies everything is the session's
        c.set_auto_replies(None);
        c.receive_data(b"QUIT\r\n").unwrap();
        assert!(matches!(c.next_event(), Some(Event::Command(cmd)) if cmd.verb == Verb::Quit));
        assert_eq!(c.answered(), 1);
    }

    #[test]
    fn auto_data_keeps_the_smuggling_rules() {
        // only CRLF.CRLF ends the content, whoever answered DATA: the bare-LF
        // "end" and the MAIL after it are content (refused for its bare LF), not commands
        let input =
            b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\n.\nMAIL FROM:<e@f>\r\ny\r\n.\r\n";
        let (out, events) = check_auto_cuts(input);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "220 hi\r\n250 mail\r\n250 rcpt\r\n354 go\r\n250 queued\r\n"
        );
        let ends: Vec<&DataSummary> = events
            .iter()
            .filter_map(|e| match e {
                Event::DataEnd(s) => Some(s),
                _ => None,
            })
            .collect();
        assert_eq!(ends.len(), 1);
        assert!(ends[0].error.is_some());
        assert_eq!(ends[0].size, b"x\n.\nMAIL FROM:<e@f>\r\ny\r\n".len() as u64);
    }
}
