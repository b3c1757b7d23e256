"""Type stub for smtprs._core, the sans-I/O SMTP engine written in Rust.

The engine never touches a socket, a file or the clock.  Python feeds it the
bytes it read (``receive_data``) and pulls events (``next_event``) until it
returns ``None`` ("need more data"); it formats replies and un-/stuffs data.
"""

import os
from typing import Final, Self, final

__version__: Final[str]

# Limits from RFC 5321 4.5.3.1, used as defaults.
MAX_COMMAND_LINE: Final[int]  # 512 octets including CRLF
MAX_TEXT_LINE: Final[int]  # 1000 octets including CRLF

__all__ = [
    "__version__",
    "MAX_COMMAND_LINE",
    "MAX_TEXT_LINE",
    "Path",
    "Command",
    "CommandError",
    "RawLine",
    "DataChunk",
    "BdatChunkEnd",
    "DataEnd",
    "ConnectionClosed",
    "ServerConnection",
    "AutoReplies",
    "Reply",
    "ReplyParser",
    "DotStuffer",
    "LfConverter",
    "parse_path",
    "parse_mailbox",
    "xtext_decode",
    "xtext_encode",
    "format_reply",
    "dot_stuff",
    "dot_unstuff",
    "write_files",
    "Event",
]

@final
class Path:
    """An RFC 5321 reverse-path or forward-path, as parsed from MAIL/RCPT."""

    @property
    def local_part(self) -> str:
        """The local part, unquoted (``"a b"@x`` gives ``a b``); "" for the null path."""
    @property
    def domain(self) -> str:
        """The domain as written (or an address literal with its brackets); "" for <>."""
    @property
    def is_null(self) -> bool:
        """True for the null reverse-path ``<>``."""
    @property
    def route(self) -> list[str]:
        """The obsolete source route (``<@a,@b:u@c>`` gives ``["a", "b"]``), ignored as RFC 5321 C allows."""
    @property
    def is_utf8(self) -> bool:
        """True when the local part or domain holds non-ASCII characters."""
    @property
    def quoted(self) -> bool:
        """True when the local part was written as a quoted string."""
    def address(self) -> str:
        """The mailbox in canonical form: ``local@domain`` (quoted again if it must be), "" for <>."""
    def __str__(self) -> str:
        """The path form: ``<local@domain>``, ``<>`` for the null path (the route left out)."""
    def __repr__(self) -> str: ...
    def __eq__(self, other: object, /) -> bool:
        """Equal mailboxes: the route, the quoting and the case of the domain do not count."""
    def __hash__(self) -> int: ...

def parse_path(text: str, *, smtputf8: bool = False, allow_null: bool = True) -> Path:
    """Parse ``<...>`` (the angle brackets are required).

    Raises smtprs.errors.AddressError whose ``code``/``enhanced`` are 553 / 5.1.3.
    Non-ASCII is accepted only when ``smtputf8`` is true.  With
    ``allow_null=False`` (a forward-path) ``<Postmaster>`` without a domain is
    accepted too (RFC 5321 4.1.1.3): local_part as written, domain "".
    """

def parse_mailbox(text: str, *, smtputf8: bool = False) -> Path:
    """Parse a bare ``local@domain`` (no brackets, no null path, no route)."""

def xtext_decode(text: str) -> str:
    """RFC 3461 xtext decoding (``+2B`` -> ``+``); raises smtprs.errors.ParseError."""

def xtext_encode(text: str) -> str: ...

@final
class Command:
    """One parsed command line.

    ``verb`` is upper case and one of the known verbs: HELO EHLO LHLO MAIL RCPT
    DATA BDAT RSET NOOP VRFY EXPN HELP QUIT STARTTLS AUTH.  For MAIL and RCPT,
    ``path`` is the parsed path and ``params`` the ESMTP parameters (keywords
    upper case; values of ENVID, ORCPT and AUTH xtext-decoded).  For BDAT,
    ``bdat_size`` and ``bdat_last`` are set and the connection has already
    entered chunk mode: the next events are the chunk's DataChunk events and then
    BdatChunkEnd (or DataEnd for LAST) -- whether or not the command is accepted.
    """

    @property
    def verb(self) -> str: ...
    @property
    def arg(self) -> str:
        """Everything after the verb and its separating space, as sent."""
    @property
    def path(self) -> Path | None: ...
    @property
    def params(self) -> dict[str, str | None]: ...
    @property
    def bdat_size(self) -> int | None: ...
    @property
    def bdat_last(self) -> bool: ...

@final
class CommandError:
    """A command line that could not be parsed; reply with code/enhanced/text.

    Covers: unknown verb (500 5.5.2), line too long (500 5.5.2), bare CR or LF
    in a command line (500 5.5.2), NUL or invalid UTF-8 (500 5.5.2), bad syntax
    (501 5.5.4), bad address (553 5.1.7 for MAIL, 553 5.1.3 for RCPT),
    repeated ESMTP parameter (555 5.5.4).  Whether a well-formed parameter is
    supported is the session's call (555 5.5.4 too).
    """

    @property
    def code(self) -> int: ...
    @property
    def enhanced(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def verb(self) -> str | None:
        """The verb if it was recognised (so the session can count/route the error)."""
    @property
    def fatal(self) -> bool:
        """True when the stream can no longer be framed (a BDAT without a valid size)."""

@final
class RawLine:
    """A line read in line mode (see ``ServerConnection.read_line``), CRLF removed."""

    @property
    def line(self) -> bytes: ...

@final
class DataChunk:
    """Message content, already un-stuffed (DATA) or verbatim (BDAT)."""

    @property
    def data(self) -> bytes: ...

@final
class BdatChunkEnd:
    """A non-LAST BDAT chunk has been read in full."""

    @property
    def chunk_size(self) -> int: ...
    @property
    def total_size(self) -> int: ...

@final
class DataEnd:
    """The end of a message (CRLF.CRLF after DATA, or the end of BDAT LAST).

    ``error`` is None when the content is acceptable; otherwise one of
    ``"size"`` (over max_message_size: 552 5.3.4), ``"line_length"`` (a text
    line over max_text_line octets with its CRLF, DATA only: 554 5.6.0),
    ``"bare_newline"`` (a bare CR or LF in DATA: 554 5.5.2), ``"header_size"`` (header block over
    max_header_size: 552 5.3.4), with the reply in code/enhanced/text (code 0
    and "" when error is None).  The first problem in octet order wins (a
    bare LF at the LF, a bare CR at the octet after it, a limit at the first
    octet over it; at one octet: bare_newline, line_length, header_size,
    size), whatever the reads.  DataChunk events hand out exactly the content
    before that octet, then stop; the rest of the message is read and dropped
    so the session stays framed.
    """

    @property
    def size(self) -> int:
        """Octets of un-stuffed content seen (counting discarded ones)."""
    @property
    def received_count(self) -> int:
        """Number of Received: header fields in the header block."""
    @property
    def has_date(self) -> bool: ...
    @property
    def has_message_id(self) -> bool: ...
    @property
    def header_size(self) -> int:
        """Octets of the header block including the blank line that ends it."""
    @property
    def eight_bit(self) -> bool:
        """True when any octet is >= 0x80."""
    @property
    def error(self) -> str | None: ...
    @property
    def code(self) -> int: ...
    @property
    def enhanced(self) -> str: ...
    @property
    def text(self) -> str: ...

@final
class ConnectionClosed:
    """The peer closed (``receive_data(b"")``) and every buffered event was taken."""

    @property
    def mid_data(self) -> bool:
        """True if the peer closed inside DATA/BDAT or in the middle of a line."""

Event = Command | CommandError | RawLine | DataChunk | BdatChunkEnd | DataEnd | ConnectionClosed

@final
class AutoReplies:
    """The replies a ServerConnection gives by itself, encoded (each ``None``:
    that command comes out as a Command event for the session).  The greetings
    are answered only outside a transaction (recording the greeting and the
    client's name), DATA only inside one with an accepted recipient and no
    content yet (then the engine is in data mode), QUIT always (the session is
    over: ConnectionClosed comes next).  NOOP, VRFY, HELP and RSET (RSET only
    outside a transaction) while the junk count is at most ``max_junk``.  The
    sequence errors (``sequence``: a reply for each of need_helo, nested_mail,
    txn_in_progress, need_mail, need_rcpt, no_valid_rcpt; not for BDAT) while
    one more error stays below ``max_errors``.  MAIL (``mail``, its 250) only
    while ``set_mail_auto(True)``, greeted, outside a transaction, and with no
    parameter but BODY=7BIT/8BITMIME and SMTPUTF8: the transaction is then open
    in the engine and the session takes the command with ``take_mail``.  One
    object serves many connections."""

    def __new__(
        cls,
        *,
        ehlo: bytes | None = None,
        helo: bytes | None = None,
        lhlo: bytes | None = None,
        data: bytes | None = None,
        quit: bytes | None = None,
        noop: bytes | None = None,
        rset: bytes | None = None,
        vrfy: bytes | None = None,
        help: bytes | None = None,
        max_junk: int = 0,
        sequence: dict[str, bytes] | None = None,
        max_errors: int = 0,
        mail: bytes | None = None,
    ) -> Self: ...

@final
class ServerConnection:
    """The server side of one SMTP/LMTP session, without I/O.

    Feed bytes with ``receive_data`` and take events with ``next_event`` until it
    returns None.  Commands pipelined in one read come out one by one; a command
    split across reads comes out when its CRLF arrives.  Only CRLF ends a line;
    a bare CR or LF never does.
    """

    def __new__(
        cls,
        *,
        max_command_line: int = 512,
        max_text_line: int = 1000,
        max_message_size: int = 10485760,
        max_header_size: int = 1048576,
        smtputf8: bool = True,
    ) -> Self: ...
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer bytes read from the peer; ``b""`` means the peer closed."""
    def next_event(self) -> Event | None:
        """The next event, or None when more data is needed."""
    def start_data(self) -> None:
        """Call after answering DATA with 354: the following bytes are content."""
    def read_line(self) -> None:
        """The next line comes out as a RawLine (AUTH continuation lines)."""
    def discard_buffer(self) -> int:
        """Drop everything buffered and not yet parsed (after STARTTLS); returns the count."""
    def reset_transaction(self) -> None:
        """Forget the message in progress (RSET, EHLO, a failed BDAT)."""
    @property
    def buffered(self) -> int:
        """Octets received but not yet turned into events."""
    @property
    def max_message_size(self) -> int: ...
    @max_message_size.setter
    def max_message_size(self, value: int) -> None: ...
    @property
    def in_data(self) -> bool:
        """True between start_data()/a BDAT command and the matching end event."""
    def set_auto_replies(self, auto: AutoReplies | None) -> None:
        """Which commands the engine answers by itself from now on (None: none)."""
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue the session's reply after whatever is queued (the engine's own replies too)."""
    def take_output(self) -> bytes:
        """Every queued reply, in order; the queue is empty afterwards."""
    @property
    def has_output(self) -> bool: ...
    def greet(self, greeting: str | None, name: str = "") -> None:
        """The session greeted the client ("HELO", "EHLO", "LHLO"; None: not greeted)."""
    @property
    def greeting(self) -> str | None: ...
    @property
    def helo_name(self) -> str:
        """The name the client gave with its greeting, stripped."""
    def set_transaction(self, open: bool) -> None:
        """The session opened (MAIL accepted) or closed a transaction."""
    def recipient_accepted(self) -> None:
        """The session accepted a RCPT of the open transaction."""
    @property
    def content_started(self) -> bool:
        """The open transaction's content (DATA or BDAT) has started."""
    @property
    def answered(self) -> int:
        """Commands the engine answered by itself."""
    @property
    def junk(self) -> int:
        """NOOP, RSET, VRFY and HELP commands seen since the count was last set."""
    @junk.setter
    def junk(self, value: int) -> None: ...
    @property
    def errors(self) -> int:
        """Error replies of the session: those the engine gave (sequence errors) and what the session adds."""
    @errors.setter
    def errors(self, value: int) -> None: ...
    def set_mail_auto(self, on: bool) -> None:
        """Whether the engine may accept MAIL by itself (see AutoReplies)."""
    @property
    def mail_pending(self) -> bool:
        """The engine accepted a MAIL the session has not taken yet."""
    def take_mail(self) -> Command | None:
        """The MAIL the engine accepted by itself, once."""
    @property
    def has_refused(self) -> bool: ...
    def take_refused(self) -> list[tuple[str, str]]:
        """The sequence errors the engine answered since the last call, in order: (verb, which)."""

def format_reply(code: int, enhanced: str | None, text: str | list[str]) -> bytes:
    """``250-first\\r\\n250 2.0.0 last\\r\\n``: every line gets the enhanced code if given.

    Raises ValueError for a code outside 200..599, a malformed enhanced code (or one
    whose class differs from the code's first digit), text with CR/LF, or a line
    longer than 512 octets with its code, enhanced code and CRLF.  An empty list
    gives one line with the code (and the enhanced code) alone.
    """

@final
class Reply:
    """A reply parsed on the client side."""

    @property
    def code(self) -> int: ...
    @property
    def enhanced(self) -> str | None:
        """The enhanced status code of the first line, if it has one."""
    @property
    def lines(self) -> list[str]:
        """Text of every line, without the code (and without the enhanced code)."""
    @property
    def text(self) -> str:
        """The lines joined with "\\n"."""

@final
class ReplyParser:
    """Incremental parser for server replies (client side); multi-line replies joined."""

    def __new__(cls, *, max_line: int = 4096) -> Self: ...
    def receive_data(self, data: bytes | bytearray | memoryview) -> None: ...
    def next_reply(self) -> Reply | None:
        """A whole reply, or None when more data is needed; raises smtprs.errors.ParseError on garbage."""

@final
class DotStuffer:
    """Streaming outbound encoder: normalises bare LF/CR to CRLF and doubles leading dots.

    ``feed`` returns stuffed bytes for the chunk; ``finish`` returns the tail
    plus the terminating ``.\\r\\n`` (adding a CRLF if the content lacked one).
    """

    def __init__(self) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> bytes: ...
    def finish(self) -> bytes: ...

def dot_stuff(data: bytes | bytearray | memoryview) -> bytes:
    """One-shot DotStuffer: the whole DATA payload including the final ``.\\r\\n``."""

def dot_unstuff(data: bytes | bytearray | memoryview) -> bytes:
    """Un-stuff a complete DATA payload ending in ``\\r\\n.\\r\\n`` (tests, benchmarks).

    Raises smtprs.errors.ParseError on a bare CR or LF, a missing end, or
    octets after the end.
    """

@final
class LfConverter:
    """Streaming CRLF -> LF conversion for Unix mailbox files (Maildir/mbox)."""

    def __init__(self) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> bytes: ...
    def finish(self) -> bytes: ...

def write_files(
    jobs: list[
        tuple[
            str | os.PathLike[str],
            int,
            int,
            bytes,
            str | os.PathLike[str],
            str | os.PathLike[str],
            int,
            tuple[int, int] | None,
        ]
    ],
    *,
    to_lf: bool = True,
    fsync: bool = True,
) -> list[tuple[int, str] | None]:
    """Write files durably in one batch with the GIL released (local delivery).

    Each job is ``(src, offset, length, head, tmp, dst, mode, owner)``: ``head``
    followed by ``length`` octets of ``src`` from ``offset`` (CRLF -> LF when
    ``to_lf``) is written to ``tmp`` with permission bits ``mode`` (exactly,
    whatever the umask) and, unless ``owner`` is None, owned by ``(uid, gid)``;
    then fsync'd and renamed to ``dst``; each directory of a
    ``dst`` is fsync'd once.  A job whose ``dst`` exists is already done.
    Returns, per job, None or ``(errno, message)``.  The one function of the
    module that touches files (rust/src/fileio.rs says why).
    """
