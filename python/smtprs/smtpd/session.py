"""One inbound SMTP session: the command state machine and its policy.

Reads bytes from a Trio stream, feeds them to the Rust engine
(``_core.ServerConnection``), and answers each event.  Replies to pipelined
commands are collected and sent in one write when the engine needs more data
(RFC 2920).  Message content goes straight from the engine's DataChunk events
into the spool file; the 250 reply is sent only after the spool's commit has
made content and envelope durable.

The listener's mode decides the rest: ``mx`` offers STARTTLS when a
certificate is configured; ``submission`` (RFC 6409) offers STARTTLS and AUTH
and wants AUTH before MAIL; ``submissions`` (RFC 8314) is the same inside TLS
from the first byte.  After STARTTLS the session starts over with a fresh
engine, and whatever the client sent after the STARTTLS line before the
handshake is discarded unread (CVE-2011-0411).  AUTH (RFC 4954: PLAIN, LOGIN)
runs its continuation lines through the engine's line mode and checks the
password in a worker thread (``auth.Authenticator``); failed attempts are
answered after a delay that grows per client address.  Who may relay and who
may use which envelope sender is ``policy.Policy``'s answer.  On submission
listeners a message without Date or Message-ID gets them (RFC 6409 8.2, 8.3):
the header block is held (at most max_header_size) until its end is seen, the
missing fields are written after our Received field, and the rest streams on.

DSN (RFC 3461): RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT are checked
and kept in the envelope, for bounce.py and for the next hop.

Resource policy: every read is bounded by a timeout (command_timeout between
commands, data_timeout inside DATA/BDAT), every write by send_timeout, every
TLS handshake by tls.handshake_timeout; too many error replies close the
session with 421; the engine bounds line and message sizes, so a session's
memory does not grow with what the peer sends.  No password is logged.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import itertools
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from .. import _core, maillog
from . import lmtp
from .. import reply as R
from ..config import SUBMISSION_MODES, Listener
from ..envelope import Envelope, Recipient
from ..errors import AddressError, SpoolError
from ..queue.backend import Writer
from ..hops import Unroutable
from . import auth as sasl
from ..hooks import HOOK_FAILED, SessionInfo
from .tls import describe as describe_tls

if TYPE_CHECKING:
    from .context import SessionContext

_session_ids = itertools.count(1)

# Header fields RFC 6409 8 lets a submission server add, found as the core's
# header scan finds them: at the start of a line of the header block.
_FIXUP_FIELDS = re.compile(rb"^(date|message-id):", re.I | re.M)


# Commands that do not move a transaction forward (Postfix's "junk commands").
_JUNK = frozenset({"NOOP", "RSET", "VRFY", "HELP"})


def _valid_envid(value: str) -> bool:
    """RFC 3461 4.4: printable US-ASCII, at most 100 characters (after xtext decoding)."""
    return 0 < len(value) <= 100 and all(32 <= ord(c) < 127 for c in value)


class CloseSession(Exception):
    """Raised by a handler to end the session after the pending replies are sent."""


@dataclass
class Transaction:
    """What one MAIL ... DATA/BDAT transaction has gathered."""

    sender: _core.Path
    params: dict[str, str | None]
    smtputf8: bool = False
    recipients: list[str] = field(default_factory=list)
    rcpt_params: dict[str, dict[str, str]] = field(default_factory=dict)  # address -> NOTIFY/ORCPT
    targets: dict[str, str] = field(default_factory=dict)  # expanded recipient -> the RCPT address it came from
    lmtp_slots: list[lmtp.Slot] = field(default_factory=list)  # LMTP: every accepted RCPT, one reply each after the data
    rcpt_attempts: int = 0
    writer: Writer | None = None
    mode: str | None = None  # "DATA" or "BDAT" once content started
    bdat_error: R.Reply | None = None  # the reply every further BDAT of this transaction gets
    hold: bytearray | None = None  # submission: the header block, held until its end is seen


# The sequence table: for each verb, what must have happened before it.
# (needs greeting, needs MAIL, needs RCPT, refused inside a transaction)
_SEQUENCE: dict[str, tuple[bool, bool, bool, bool]] = {
    "STARTTLS": (True, False, False, True),
    "AUTH": (True, False, False, True),
    "MAIL": (True, False, False, True),
    "RCPT": (False, True, False, False),
    "DATA": (False, True, True, False),
    "BDAT": (False, True, True, False),
}


def check_sequence(verb: str, greeted: bool, txn: Transaction | None) -> R.Reply | None:
    """Is ``verb`` legal now?  None if yes, else the 503 reply."""
    rule = _SEQUENCE.get(verb)
    if rule is None:
        return None
    need_greeting, need_mail, need_rcpt, no_txn = rule
    if need_greeting and not greeted:
        return R.NEED_HELO
    if no_txn and txn is not None:
        return R.NESTED_MAIL if verb == "MAIL" else R.TXN_IN_PROGRESS
    if need_mail and txn is None:
        return R.NEED_MAIL
    if need_rcpt and txn is not None and not txn.recipients:
        return R.NO_VALID_RCPT if txn.rcpt_attempts else R.NEED_RCPT
    return None


def _unsupported(keyword: str) -> R.Reply:
    """555 for an ESMTP parameter we do not support, naming it.  The keyword
    is cut short: it comes from the client, and a long one (a 500-octet
    command line allows it) would make a reply line over 512 octets."""
    return R.Reply(555, "5.5.4", f"Unsupported option: {keyword[:64]}")


_COUNTED_STAGES = frozenset({"connect", "MAIL", "RCPT", "DATA", "BDAT"})


_date_cache: tuple[int, str] = (-1, "")


def _date_now() -> str:
    """The RFC 5322 date-time of now in local time, formatted once a second
    (email.utils.formatdate costs ~10 µs, and every message needs one)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, email.utils.formatdate(now, localtime=True))
    return _date_cache[1]


@functools.lru_cache(maxsize=4096)
def _address_literal(peer_ip: str) -> str:
    """The client's address as written in a Received field: 192.0.2.1, IPv6:2001:db8::1."""
    try:
        ip = ipaddress.ip_address(peer_ip)
    except ValueError:
        return peer_ip
    return f"IPv6:{ip}" if ip.version == 6 else str(ip)


class Session:
    def __init__(
        self,
        ctx: SessionContext,
        stream: trio.abc.Stream,
        peer_ip: str,
        peer_port: int,
        listener: Listener | None = None,
    ) -> None:
        self.ctx = ctx
        self.cfg = ctx.cfg
        self.stream = stream
        self.peer_ip = peer_ip
        self.peer = f"[{peer_ip}]:{peer_port}"
        self.id = f"C{next(_session_ids):06d}"
        self.mode = (listener or Listener()).mode
        self.submission = self.mode in SUBMISSION_MODES
        # LMTP (RFC 2033) differs in two places only: LHLO instead of HELO/EHLO,
        # and delivery at once with one reply per RCPT after the data (smtpd/lmtp.py)
        self.lmtp = self.mode == "lmtp"
        self.conn = self._new_engine()
        self.out = bytearray()
        self.greeting: str | None = None  # "HELO" or "EHLO" once greeted
        self.helo_name = ""
        self.txn: Transaction | None = None
        self.errors = 0
        self.commands = 0
        self.tls: str | None = None  # "TLSv1.3 with cipher ..." once TLS is up
        self.auth_user: str | None = None
        self.sasl: sasl.Mechanism | None = None  # an AUTH exchange waiting for the client's line
        self.junk = 0  # NOOP/RSET/VRFY/HELP since the last accepted message
        # The waits for the client's next bytes run in one cancel scope for the
        # whole session (see _receive); _waiting says whether one is under way.
        self._wait_scope = trio.CancelScope()
        self._waiting = False
        self._waiting_for = ""  # what the current (or last) wait was for, for the timeout's log line
        self._quick_reads = 0  # reads in a row that found data without waiting (see _receive)
        self._answered = False  # the last flush sent a reply: the client's next bytes are a round trip away
        self._content_since: float | None = None  # when the current message's content started
        self._content_octets = 0  # octets read since then
        self.stage = "connect"  # what a rejection is counted against (metrics)
        self.hooks = ctx.hooks

    def _new_engine(self) -> _core.ServerConnection:
        s = self.cfg.smtpd
        return _core.ServerConnection(
            max_command_line=s.max_command_line,
            max_text_line=s.max_text_line,
            max_message_size=s.max_message_size,
            max_header_size=s.max_header_size,
            smtputf8=True,
        )

    # -- what this session offers ---------------------------------------------
    @property
    def starttls_offered(self) -> bool:
        return self.ctx.tls is not None and self.tls is None

    @property
    def auth_offered(self) -> bool:
        """AUTH is a submission service; without TLS only if the config allows plaintext."""
        return self.submission and (self.tls is not None or self.cfg.smtpd.auth.allow_plaintext)

    # -- I/O -----------------------------------------------------------------
    def reply(self, r: R.Reply) -> None:
        self.out += r.encode()
        if r.is_error:
            self.errors += 1
            if self.stage in _COUNTED_STAGES:
                self.ctx.metrics.inc("smtprs_messages_rejected_total", stage=self.stage, reason=f"{r.code} {r.enhanced or ''}".strip())

    def info(self) -> SessionInfo:
        """What the library's hooks are told of this session."""
        port = int(self.peer.rpartition(":")[2])
        return SessionInfo(self.id, self.peer_ip, port, self.mode, self.helo_name, self.tls, self.auth_user)

    async def _hook(self, name: str, *args: object) -> R.Reply | None:
        """Ask the library's hook ``name``: None to go on, else the reply to send instead."""
        assert self.hooks is not None
        try:
            answer: R.Reply | None = await getattr(self.hooks, name)(self.info(), *args)
        except Exception as e:
            maillog.error(f"{self.id}: hook {name} failed: {e!r}")
            return HOOK_FAILED
        if answer is None or not answer.is_error:
            return None
        maillog.reject(self.id, self.peer, name[3:].upper(), answer, "by a hook")
        return answer

    async def flush(self) -> None:
        if not self.out:
            return
        data, self.out = bytes(self.out), bytearray()
        self._answered = True
        if type(self.stream) is trio.SocketStream:
            # Fast path: a reply nearly always fits in the socket's send
            # buffer, so write it straight away (the socket is non-blocking)
            # and skip send_all's cancel scope, context managers and
            # scheduler round trip.  The loop still checkpoints at every read.
            try:
                sent = os.write(self.stream.socket.fileno(), data)
            except BlockingIOError:
                sent = 0
            except OSError as e:  # EPIPE, ECONNRESET: the peer is gone
                raise trio.BrokenResourceError(str(e)) from e
            if sent == len(data):
                return
            data = data[sent:]
        with trio.fail_after(self.cfg.smtpd.send_timeout):
            await self.stream.send_all(data)

    async def run(self) -> None:
        """Serve the session until QUIT, EOF, timeout, too many errors or shutdown.

        Never raises for anything the peer does; a broken connection ends the
        session quietly, and a message not yet acknowledged is dropped from the spool.
        """
        runtime = self.ctx.runtime
        runtime.add(self)
        s = self.cfg.smtpd
        maillog.connect(self.id, self.peer)
        admitted = False
        try:
            refusal = runtime.limits.admit(
                self.peer_ip, trio.current_time(), per_client=s.max_connections_per_client, rate=s.max_connection_rate, window=s.connection_rate_window
            )
            admitted = refusal is None
            if refusal is None and self.ctx.active_sessions > s.max_connections:
                refusal = R.TOO_MANY_CONNECTIONS
            if refusal is None and runtime.closing:
                refusal = R.SHUTTING_DOWN
            if refusal is not None and self.mode == "submissions":
                # no plaintext reply is possible before TLS, and a refused client gets no handshake
                maillog.reject(self.id, self.peer, "CONNECT", refusal, "closed without a reply (implicit TLS)")
                return
            if self.mode == "submissions" and not await self._start_tls():  # RFC 8314: TLS from the first byte
                return
            if refusal is not None:
                maillog.reject(self.id, self.peer, "CONNECT", refusal)
                self.reply(refusal)
                await self.flush()
                return
            if self.hooks is not None and (refusal := await self._hook("on_connect")) is not None:
                self.reply(refusal)
                await self.flush()
                return
            banner = "LMTP smtprs" if self.lmtp else s.banner
            self.out += R.Reply(220, None, f"{self.ctx.hostname} {banner}").encode()
            await self.flush()
            await self._loop()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ConnectionError):
            pass
        finally:
            self._abort_message()
            if admitted:
                runtime.limits.release(self.peer_ip)
            runtime.discard(self)
            maillog.disconnect(self.id, self.peer, self.commands, self.errors)

    # -- shutdown ----------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No transaction open and no AUTH exchange under way: nothing would be lost by closing now."""
        return self.txn is None and self.sasl is None and not self.conn.in_data

    def shutdown_notice(self) -> None:
        """The server is shutting down: an idle session stops waiting at once,
        a busy one waits no longer than the shutdown deadline."""
        if not self._waiting:
            return  # it is working; it looks at the shutdown state before its next read
        scope = self._wait_scope
        if self.idle:
            scope.cancel()
        else:
            scope.deadline = min(scope.deadline, self.ctx.runtime.drain_deadline)

    def _must_close(self) -> bool:
        runtime = self.ctx.runtime
        return runtime.closing and (self.idle or trio.current_time() >= runtime.drain_deadline)

    async def _close_for_shutdown(self) -> None:
        if not self.idle:
            detail = "message not accepted" if self.txn is not None and self.txn.writer is not None else "transaction not finished"
            maillog.reject(self.id, self.peer, "shutdown", R.SHUTTING_DOWN, detail)
        self._abort_message()
        self.txn = None
        self.out += R.SHUTTING_DOWN.encode()
        with trio.move_on_after(min(self.cfg.smtpd.send_timeout, 2.0)):
            await self.flush()

    # -- the loop ----------------------------------------------------------------
    def _read_deadline(self, command_deadline: float) -> tuple[float, str]:
        """When to stop waiting for the client's next bytes, and what that wait is for."""
        s = self.cfg.smtpd
        now = trio.current_time()
        if self.conn.in_data:
            deadline, what = now + s.data_timeout, "in DATA"
        else:
            deadline, what = command_deadline, "waiting for a command"
        if self._content_since is not None and s.min_data_rate:
            # the whole message must come at min_data_rate on average, after a grace of data_timeout
            content_deadline = self._content_since + s.data_timeout + self._content_octets / s.min_data_rate
            if content_deadline < deadline:
                deadline, what = content_deadline, "too slow"
        runtime = self.ctx.runtime
        if runtime.closing:
            deadline = min(deadline, runtime.drain_deadline)
        return deadline, what

    async def _receive(self, deadline: float) -> bytes:
        """The client's next bytes (b"" at EOF).  When ``deadline`` passes first
        (or the shutdown cancels the wait) the session's wait scope is
        cancelled, which ends _commands (see _loop).

        On a plain TCP socket, bytes already waiting are read at once, without
        a trip through the scheduler (message content streaming in).  Not
        right after a reply: the client's answer to it is a round trip away,
        and the read would nearly always fail (EAGAIN), a wasted system call
        and exception.  After 16 such reads in a row the session waits for
        readiness anyway, which lets other tasks run, so a client that never
        pauses cannot starve them.

        The wait's deadline is set on the one scope the session keeps for its
        waits, and taken off again as soon as the wait is over, before any
        other checkpoint, so it can fire only in a wait: a cancel scope
        entered and left per wait cost more than the rest of the wait.
        """
        stream = self.stream
        plain = type(stream) is trio.SocketStream
        answered, self._answered = self._answered, False
        if plain and not answered and self._quick_reads < 16 and trio.current_time() < deadline:
            try:
                data = os.read(stream.socket.fileno(), 65536)  # type: ignore[attr-defined]
            except BlockingIOError:
                pass
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            else:
                self._quick_reads += 1
                return data
        self._quick_reads = 0
        scope = self._wait_scope
        scope.deadline = deadline
        self._waiting = True
        try:
            if plain:
                sock = stream.socket  # type: ignore[attr-defined]
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        return os.read(sock.fileno(), 65536)
                    except BlockingIOError:  # woken without bytes after all: wait again
                        continue
                    except OSError as e:
                        raise trio.BrokenResourceError(str(e)) from e
            got = await stream.receive_some(65536)
            return got if isinstance(got, bytes) else bytes(got)  # TLS streams hand out bytearrays
        finally:
            self._waiting = False
            scope.deadline = math.inf

    async def _loop(self) -> None:
        with self._wait_scope:
            await self._commands()
        if not self._wait_scope.cancelled_caught:
            return
        # A wait for the client's bytes was cancelled: its deadline passed, or the shutdown woke it.
        if self._must_close():
            await self._close_for_shutdown()
            return
        reply = R.TOO_SLOW if self._waiting_for == "too slow" else R.TIMEOUT
        maillog.reject(self.id, self.peer, "timeout", reply, self._waiting_for)
        self._abort_message()
        self.reply(reply)
        await self.flush()

    async def _commands(self) -> None:
        s = self.cfg.smtpd
        # command_timeout is a deadline for a whole command line, counted from
        # the previous reply: bytes that do not complete a command do not extend it.
        command_deadline = trio.current_time() + s.command_timeout
        while True:
            if self._must_close():
                await self._close_for_shutdown()
                return
            deadline, self._waiting_for = self._read_deadline(command_deadline)
            data = await self._receive(deadline)
            if self._content_since is not None:
                self._content_octets += len(data)
            self.conn.receive_data(data)
            progressed = False
            try:
                while (event := self.conn.next_event()) is not None:
                    progressed = True
                    if isinstance(event, _core.ConnectionClosed):
                        await self.flush()
                        return
                    await self._handle(event)
                    if self.errors >= s.max_errors:
                        maillog.reject(self.id, self.peer, "session", R.TOO_MANY_ERRORS)
                        self.reply(R.TOO_MANY_ERRORS)
                        raise CloseSession
            except CloseSession:
                await self.flush()
                return
            await self.flush()
            if progressed:
                command_deadline = trio.current_time() + s.command_timeout

    # -- events ----------------------------------------------------------------
    async def _handle(self, event: _core.Event) -> None:
        if isinstance(event, _core.DataChunk):
            txn = self.txn
            if txn is not None and txn.writer is not None and txn.bdat_error is None:
                if txn.hold is None:
                    txn.writer.write(event.data)
                else:
                    self._hold_header(txn, txn.writer, event.data)
        elif isinstance(event, _core.Command):
            self.commands += 1
            await self._command(event)
        elif isinstance(event, _core.DataEnd):
            await self._data_end(event)
        elif isinstance(event, _core.BdatChunkEnd):
            self._bdat_chunk_end(event)
        elif isinstance(event, _core.CommandError):
            self.commands += 1
            self.sasl = None  # e.g. an AUTH line over 12288 octets ends the exchange
            self.stage = event.verb or "command"
            maillog.reject(self.id, self.peer, event.verb or "command", f"{event.code} {event.enhanced} {event.text}")
            self.reply(R.Reply(event.code, event.enhanced, event.text))
            if event.fatal:
                self.reply(R.Reply(421, "4.5.0", "Error: cannot continue this session"))
                raise CloseSession
        elif isinstance(event, _core.RawLine):
            await self._auth_line(event.line)

    async def _command(self, cmd: _core.Command) -> None:
        verb = cmd.verb
        self.stage = verb
        if self.ctx.runtime.closing and self.idle and verb not in ("QUIT", "RSET", "NOOP"):
            await self._close_for_shutdown()  # no new transaction (or anything else) once shutting down
            raise CloseSession
        if verb in _JUNK:
            self.junk += 1
            if self.junk > self.cfg.smtpd.max_junk_commands:
                self.errors += 1  # counts towards max_errors, as in Postfix
        problem = check_sequence(verb, self.greeting is not None, self.txn)
        if problem is not None:
            if verb == "BDAT":
                self._bdat_refused(problem)
                return
            self.reply(problem)
            return
        handler = getattr(self, f"_cmd_{verb.lower()}", None)
        if handler is None:
            self.reply(R.NOT_IMPLEMENTED)
            return
        await handler(cmd)

    async def _cmd_helo(self, cmd: _core.Command) -> None:
        if self.lmtp:
            self.reply(R.LMTP_USE_LHLO)
            return
        if self.hooks is not None and (refusal := await self._hook("on_helo", cmd.arg.strip())) is not None:
            self.reply(refusal)
            return
        self._greet("HELO", cmd.arg)
        self.reply(R.Reply(250, None, self.ctx.hostname))

    async def _cmd_ehlo(self, cmd: _core.Command) -> None:
        if self.lmtp:
            self.reply(R.LMTP_USE_LHLO)
            return
        if self.hooks is not None and (refusal := await self._hook("on_helo", cmd.arg.strip())) is not None:
            self.reply(refusal)
            return
        self._greet("EHLO", cmd.arg)
        self._extensions()

    def _extensions(self) -> None:
        lines = [
            self.ctx.hostname,
            "PIPELINING",
            f"SIZE {self.cfg.smtpd.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
        ]
        if self.starttls_offered:
            lines.append("STARTTLS")
        if self.auth_offered:
            lines.append("AUTH " + " ".join(sasl.MECHANISMS))
        self.reply(R.Reply(250, None, tuple(lines)))

    async def _cmd_lhlo(self, cmd: _core.Command) -> None:
        if not self.lmtp:
            self.reply(R.NOT_IMPLEMENTED)
            return
        self._greet("LHLO", cmd.arg)
        self._extensions()

    def _greet(self, kind: str, name: str) -> None:
        self._abort_message()
        self.txn = None
        self.greeting = kind
        self.helo_name = name.strip()

    # -- STARTTLS (RFC 3207) ---------------------------------------------------
    async def _cmd_starttls(self, cmd: _core.Command) -> None:
        if self.tls is not None:
            self.reply(R.TLS_ACTIVE)
            return
        if self.ctx.tls is None:
            self.reply(R.NOT_IMPLEMENTED)
            return
        # Whatever came after the STARTTLS line came before the handshake: it
        # was sent in the clear and must never be executed (CVE-2011-0411).
        dropped = self.conn.discard_buffer()
        if dropped:
            maillog.starttls_pipelined(self.id, self.peer, dropped)
        self.reply(R.TLS_READY)
        await self.flush()
        if not await self._start_tls():
            raise CloseSession
        # RFC 3207 4.2: forget everything learnt from the client before TLS.
        self._abort_message()
        self.conn = self._new_engine()
        self.txn = None
        self.greeting = None
        self.helo_name = ""
        self.auth_user = None
        self.sasl = None

    async def _start_tls(self) -> bool:
        """Handshake as the server on the current stream; False (logged) if it fails."""
        assert self.ctx.tls is not None
        stream = trio.SSLStream(self.stream, self.ctx.tls, server_side=True)
        try:
            with trio.fail_after(self.cfg.smtpd.tls.handshake_timeout):
                await stream.do_handshake()
        except trio.TooSlowError:
            maillog.tls_failed(self.id, self.peer, "timeout")
            return False
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            maillog.tls_failed(self.id, self.peer, str(e.__cause__ or e) or type(e).__name__)
            return False
        self.stream = stream
        self.tls = describe_tls(stream)
        maillog.tls_established(self.id, self.peer, self.tls)
        return True

    # -- AUTH (RFC 4954) -------------------------------------------------------
    async def _cmd_auth(self, cmd: _core.Command) -> None:
        if not self.submission:
            self.reply(R.AUTH_NOT_ENABLED)
            return
        if self.auth_user is not None:
            self.reply(R.AUTH_ALREADY)
            return
        if not self.auth_offered:
            self.reply(R.AUTH_NEEDS_TLS)
            return
        name, _, initial = cmd.arg.strip().partition(" ")
        mech = sasl.mechanism(name)
        if mech is None:
            self.reply(R.AUTH_UNKNOWN_MECHANISM)
            return
        await self._auth_step(mech, mech.start(initial.strip() or None))

    async def _auth_line(self, line: bytes) -> None:
        mech, self.sasl = self.sasl, None
        if mech is None:  # nothing asked for a line; cannot happen, but never execute it
            self.reply(R.Reply(500, "5.5.2", "Error: unexpected line"))
            return
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            maillog.reject(self.id, self.peer, "AUTH", R.AUTH_CANCELLED)
            self.reply(R.AUTH_CANCELLED)
            return
        await self._auth_step(mech, mech.respond(text))

    async def _auth_step(self, mech: sasl.Mechanism, step: sasl.Step) -> None:
        if isinstance(step, sasl.Challenge):
            self.out += step.encode()
            self.sasl = mech
            self.conn.read_line()
            return
        if isinstance(step, sasl.Malformed):
            maillog.reject(self.id, self.peer, "AUTH", step.reply)
            self.reply(step.reply)
            return
        authenticator = self.ctx.authenticator
        verdict: sasl.Verdict = "unknown"  # another authorization identity: refused unchecked
        if not step.authzid or sasl.normalize_username(step.authzid) == sasl.normalize_username(step.username):
            verdict = await authenticator.verify(step.username, step.password)
        if verdict == "ok":
            self.auth_user = sasl.normalize_username(step.username)
            maillog.auth_ok(self.id, self.peer, mech.name, self.auth_user)
            self.reply(R.AUTH_OK)
            return
        if verdict == "unavailable":
            maillog.warning(f"{self.id}: AUTH {mech.name}: users file unavailable: {authenticator.last_error}")
            self.reply(R.AUTH_UNAVAILABLE)
            return
        delays = self.ctx.auth_delays
        delay = delays.record(self.peer_ip, trio.current_time())
        known = sasl.normalize_username(step.username) if verdict == "bad" else None
        maillog.auth_failed(self.id, self.peer, mech.name, known, delays.failures(self.peer_ip, trio.current_time()), delay)
        await self.flush()  # what was answered before goes out now, not after the delay
        await trio.sleep(delay)
        self.reply(R.AUTH_FAILED)

    # -- the transaction -------------------------------------------------------
    async def _cmd_mail(self, cmd: _core.Command) -> None:
        assert cmd.path is not None
        if self.submission and self.auth_user is None:
            maillog.reject(self.id, self.peer, "MAIL", R.AUTH_REQUIRED, f"from=<{cmd.path.address()}>")
            self.reply(R.AUTH_REQUIRED)
            return
        params = dict(cmd.params)
        size = params.pop("SIZE", None)
        if size is not None:
            if not size or not size.isdigit() or len(size) > 20:
                self.reply(R.BAD_SIZE)
                return
            if int(size) > self.cfg.smtpd.max_message_size:
                maillog.reject(self.id, self.peer, "MAIL", R.SIZE_EXCEEDED, f"SIZE={size}")
                self.reply(R.SIZE_EXCEEDED)
                return
        need = self.cfg.queue.min_free_space + (int(size) * 3 // 2 if size else 0)
        if need:
            free = self.ctx.spool.free_space()
            if free is not None and free < need:
                maillog.reject(self.id, self.peer, "MAIL", R.SPOOL_FULL, f"{free} octets free in the spool, {need} wanted")
                self.reply(R.SPOOL_FULL)
                return
        body = params.pop("BODY", None)
        if body is not None and body.upper() not in ("7BIT", "8BITMIME"):
            self.reply(R.BAD_BODY)
            return
        smtputf8 = "SMTPUTF8" in params
        if smtputf8 and params.pop("SMTPUTF8") is not None:
            self.reply(R.Reply(501, "5.5.4", "SMTPUTF8 takes no value"))
            return
        if cmd.path.is_utf8 and not smtputf8:
            self.reply(R.UTF8_NOT_ASKED)
            return
        auth_param, bad = self._auth_param(params)
        if bad:
            self.reply(R.BAD_AUTH_PARAM)
            return
        ret = params.pop("RET", None) if "RET" in params else None
        if ret is not None or "RET" in cmd.params:
            ret = (ret or "").upper()
            if ret not in ("FULL", "HDRS"):
                self.reply(R.BAD_RET)
                return
        envid = params.pop("ENVID", None) if "ENVID" in params else None
        if "ENVID" in cmd.params and (envid is None or not _valid_envid(envid)):
            self.reply(R.BAD_ENVID)
            return
        if params:
            self.reply(_unsupported(next(iter(params))))
            return
        if self.auth_user is not None and not self.ctx.policy.sender_allowed(self.auth_user, cmd.path.address()):
            maillog.reject(self.id, self.peer, "MAIL", R.SENDER_NOT_OWNED, f"from=<{cmd.path.address()}> sasl_username={self.auth_user}")
            self.reply(R.SENDER_NOT_OWNED)
            return
        kept: dict[str, str | None] = {}
        if body is not None:
            kept["BODY"] = body.upper()
        if smtputf8:
            kept["SMTPUTF8"] = None
        if ret is not None:
            kept["RET"] = ret
        if envid is not None:
            kept["ENVID"] = envid
        if auth_param is not None:
            kept["AUTH"] = auth_param
        if self.hooks is not None and (refusal := await self._hook("on_mail", cmd.path.address())) is not None:
            self.reply(refusal)
            return
        self.txn = Transaction(sender=cmd.path, params=kept, smtputf8=smtputf8)
        self.reply(R.SENDER_OK)

    def _auth_param(self, params: dict[str, str | None]) -> tuple[str | None, bool]:
        """MAIL's AUTH= (RFC 4954 5), already xtext-decoded: (value to keep, malformed).

        Kept only from an authenticated client, and only when that user may
        claim the mailbox as a sender; otherwise it is treated as AUTH=<>, that
        is, forgotten.
        """
        if "AUTH" not in params:
            return None, False
        value = params.pop("AUTH")
        if value is None:
            return None, True
        if value == "<>":
            return None, False
        try:
            mailbox = _core.parse_mailbox(value, smtputf8=True).address()
        except AddressError:
            return None, True
        if self.auth_user is not None and self.ctx.policy.sender_allowed(self.auth_user, mailbox):
            return mailbox, False
        return None, False

    async def _cmd_rcpt(self, cmd: _core.Command) -> None:
        txn = self.txn
        assert txn is not None and cmd.path is not None
        txn.rcpt_attempts += 1
        params = dict(cmd.params)
        dsn: dict[str, str] = {}
        notify = params.pop("NOTIFY", None)
        if "NOTIFY" in cmd.params:
            words = [w.strip().upper() for w in (notify or "").split(",")]
            if not all(w in ("NEVER", "SUCCESS", "FAILURE", "DELAY") for w in words) or ("NEVER" in words and len(words) > 1) or len(set(words)) != len(words):
                self.reply(R.BAD_NOTIFY)
                return
            dsn["NOTIFY"] = ",".join(words)
        orcpt = params.pop("ORCPT", None)
        if "ORCPT" in cmd.params:
            kind, sep, value = (orcpt or "").partition(";")
            if not sep or not kind.strip() or not value or not kind.strip().replace("-", "").isalnum() or len(value) > 500:
                self.reply(R.BAD_ORCPT)
                return
            dsn["ORCPT"] = f"{kind.strip().lower()};{value}"
        if params:
            self.reply(_unsupported(next(iter(params))))
            return
        if cmd.path.is_utf8 and not txn.smtputf8:
            self.reply(R.UTF8_NOT_ASKED)
            return
        if len(txn.recipients) >= self.cfg.smtpd.max_recipients:
            self.reply(R.TOO_MANY_RECIPIENTS)
            return
        relay_allowed = self.ctx.policy.relay_allowed(self.peer_ip, self.auth_user)
        expansion = self.ctx.router.expand(cmd.path, relay_allowed=relay_allowed)
        address = cmd.path.address()
        if isinstance(expansion, Unroutable):
            maillog.reject(self.id, self.peer, "RCPT", expansion.reply, f"from=<{txn.sender.address()}> to=<{address}>")
            self.reply(expansion.reply)
            return
        if self.lmtp:
            refusal = lmtp.check_targets(self.ctx, address, expansion.addresses)
            if refusal is not None:
                maillog.reject(self.id, self.peer, "RCPT", refusal, f"from=<{txn.sender.address()}> to=<{address}>")
                self.reply(refusal)
                return
            txn.lmtp_slots.append(lmtp.Slot(address, expansion.addresses))
        elif self.hooks is not None and (refusal := await self._hook("on_rcpt", txn.sender.address(), address)) is not None:
            self.reply(refusal)
            return
        if address not in txn.recipients:  # a repeated RCPT gets one copy, as in Postfix
            txn.recipients.append(address)
            txn.rcpt_params[address] = dsn
        for target in expansion.addresses:  # so does a mailbox reached twice
            txn.targets.setdefault(target, address)
        self.reply(R.RECIPIENT_OK)

    async def _cmd_data(self, cmd: _core.Command) -> None:
        txn = self.txn
        assert txn is not None
        if txn.mode == "BDAT":
            self.reply(R.BDAT_AFTER_DATA)
            return
        if not self._open_message(txn):
            return
        txn.mode = "DATA"
        self.reply(R.START_DATA)
        self.conn.start_data()

    async def _cmd_bdat(self, cmd: _core.Command) -> None:
        # the engine is already reading the chunk by length; we only decide where it goes
        txn = self.txn
        assert txn is not None
        if txn.bdat_error is not None:
            return
        if txn.mode == "DATA":
            self._bdat_refused(R.BDAT_AFTER_DATA)
            return
        if txn.writer is None:
            if not self._open_message(txn, quiet=True):
                return
            txn.mode = "BDAT"

    def _bdat_refused(self, reply: R.Reply) -> None:
        """Remember why this BDAT (and the rest of its transaction) fails; the
        reply goes out once the chunk has been read, as RFC 3030 requires."""
        if self.txn is None:
            self._orphan_bdat = reply
        else:
            self._abort_message()
            self.txn.bdat_error = reply

    _orphan_bdat: R.Reply | None = None

    def _bdat_chunk_end(self, event: _core.BdatChunkEnd) -> None:
        failure = self._bdat_failure()
        if failure is not None:
            self.reply(failure)
        else:
            self.reply(R.Reply(250, "2.0.0", f"{event.chunk_size} octets received"))

    def _bdat_failure(self) -> R.Reply | None:
        if self._orphan_bdat is not None:
            r, self._orphan_bdat = self._orphan_bdat, None
            return r
        if self.txn is not None:
            return self.txn.bdat_error
        return None

    def _protocol(self, txn: Transaction) -> str:
        """The ``with`` of our Received field: SMTP, ESMTP or UTF8SMTP, then S for
        TLS and A for AUTH (RFC 3848, RFC 6531)."""
        if txn.smtputf8:
            base = "UTF8LMTP" if self.lmtp else "UTF8SMTP"
        elif self.greeting == "HELO":
            return "SMTP"
        else:
            base = "LMTP" if self.lmtp else "ESMTP"
        return base + ("S" if self.tls else "") + ("A" if self.auth_user else "")

    def _open_message(self, txn: Transaction, quiet: bool = False) -> bool:
        try:
            writer = self.ctx.spool.create()
        except SpoolError as e:
            r = R.SPOOL_FULL if e.storage_full else R.SPOOL_FAILED
            maillog.spool_problem(f"{self.id}: {e}")
            if quiet:
                txn.bdat_error = r
            else:
                self.reply(r)
            return False
        txn.writer = writer
        self._content_since, self._content_octets = trio.current_time(), 0
        writer.write(self._received_header(writer.queue_id, self._protocol(txn), txn))
        if self.submission:
            txn.hold = bytearray()
        return True

    def _received_header(self, qid: str, protocol: str, txn: Transaction) -> bytes:
        """Our trace field (RFC 5321 4.4), folded, CRLF line ends like the content."""
        helo = "".join(c if 32 < ord(c) < 127 else "?" for c in self.helo_name)[:255] or "unknown"
        lines = [f"Received: from {helo} ([{_address_literal(self.peer_ip)}])"]
        if self.tls:
            lines.append(f"\t(using {self.tls})")
        if self.auth_user and self.cfg.smtpd.auth.received_user:
            user = "".join(c if 32 < ord(c) < 127 and c not in "()\\" else "?" for c in self.auth_user)
            lines.append(f"\t(Authenticated sender: {user})")
        lines.append(f"\tby {self.ctx.hostname} (smtprs) with {protocol} id {qid}")
        date = _date_now()
        if len(txn.recipients) == 1:
            lines.append(f"\tfor <{txn.recipients[0]}>; {date}")
        else:
            lines.append(f"\t; {date}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")

    async def _data_end(self, event: _core.DataEnd) -> None:
        self.stage = "DATA"
        started = time.perf_counter()
        failure = self._bdat_failure()
        txn = self.txn
        self.txn = None
        self._content_since = None
        if failure is not None or txn is None or txn.writer is None:
            if txn is not None and txn.writer is not None:
                self.ctx.spool.abort(txn.writer)
            self._final_reply(txn, failure or R.NEED_MAIL)
            return
        writer = txn.writer
        if txn.hold is not None and event.error is None:  # the whole message was header (or empty)
            self._release_header(txn, writer, len(txn.hold))
        if event.error is not None:
            self.ctx.spool.abort(writer)
            r = R.Reply(event.code, event.enhanced, event.text)
            maillog.reject(self.id, self.peer, "DATA", r, f"from=<{txn.sender.address()}> size={event.size}")
            self._final_reply(txn, r)
            return
        if event.received_count > self.cfg.smtpd.max_received_headers:
            self.ctx.spool.abort(writer)
            maillog.reject(self.id, self.peer, "DATA", R.TOO_MANY_HOPS, f"from=<{txn.sender.address()}> received={event.received_count}")
            self._final_reply(txn, R.TOO_MANY_HOPS)
            return
        params = {k: v or "" for k, v in txn.params.items()}
        if event.eight_bit and "BODY" not in params:
            params["BODY"] = "8BITMIME"  # what we saw, whatever the client declared
        if self.lmtp:
            for r in await lmtp.deliver_now(self.ctx, writer, txn.sender.address(), txn.lmtp_slots, params, self.id, self.peer):
                self.out += r.encode()  # a mailbox's trouble is not the client's error: not counted
            return
        env = Envelope(
            queue_id=writer.queue_id,
            sender=txn.sender.address(),
            recipients=[Recipient(t, original=o if o != t else "", params=txn.rcpt_params.get(o, {})) for t, o in txn.targets.items()],
            arrival=time.time(),
            size=writer.size,
            client_address=self.peer_ip,
            client_helo=self.helo_name,
            protocol=self._protocol(txn),
            params=params,
            auth=self.auth_user or "",
        )
        try:
            await self.ctx.spool.commit(writer, env)
        except SpoolError as e:
            maillog.spool_problem(f"{writer.queue_id}: {e}")
            self.reply(R.SPOOL_FULL if e.storage_full else R.SPOOL_FAILED)
            return
        if self.hooks is not None and (refusal := await self._hook("on_data", env, self.ctx.spool.content(env.queue_id))) is not None:
            await self.ctx.spool.remove(env.queue_id)
            self.reply(refusal)
            return
        self.ctx.hand_off(env, self.peer, self.auth_user)
        self.junk = 0
        metrics = self.ctx.metrics
        metrics.inc("smtprs_messages_accepted_total", mode=self.mode)
        metrics.observe("smtprs_acceptance_seconds", time.perf_counter() - started)
        self.reply(R.Reply(250, "2.0.0", f"Ok: queued as {env.queue_id}"))

    def _final_reply(self, txn: Transaction | None, r: R.Reply) -> None:
        """The reply after the data: once, or in LMTP once per accepted RCPT (RFC 2033 4.2)."""
        for _ in (txn.lmtp_slots if self.lmtp and txn is not None and txn.lmtp_slots else (None,)):
            self.reply(r)

    # -- submission fix-ups (RFC 6409 8) -----------------------------------------
    def _hold_header(self, txn: Transaction, writer: Writer, data: bytes) -> None:
        """Hold content until the header block's blank line has been seen."""
        assert txn.hold is not None
        hold = txn.hold
        start = max(0, len(hold) - 3)
        hold += data
        if hold.startswith(b"\r\n"):
            end = 0  # no header fields at all
        else:
            i = hold.find(b"\r\n\r\n", start)
            if i < 0:
                return  # bounded: the engine stops the chunks beyond max_header_size
            end = i + 2
        self._release_header(txn, writer, end)

    def _release_header(self, txn: Transaction, writer: Writer, end: int) -> None:
        """Write the missing Date / Message-ID, then the held content; stream from now on."""
        assert txn.hold is not None
        hold, txn.hold = txn.hold, None
        present = {m.group(1).lower() for m in _FIXUP_FIELDS.finditer(hold, 0, end)}
        added = []
        if b"date" not in present:
            added.append(f"Date: {_date_now()}\r\n")
        if b"message-id" not in present:
            added.append(f"Message-ID: <{writer.queue_id}.{secrets.token_hex(6)}@{self.ctx.hostname}>\r\n")
        if added:
            writer.write("".join(added).encode())
        writer.write(bytes(hold))

    def _abort_message(self) -> None:
        self._content_since = None
        if self.txn is not None and self.txn.writer is not None:
            self.ctx.spool.abort(self.txn.writer)
            self.txn.writer = None

    async def _cmd_rset(self, cmd: _core.Command) -> None:
        self._abort_message()
        self.txn = None
        self.reply(R.OK)

    async def _cmd_noop(self, cmd: _core.Command) -> None:
        self.reply(R.OK)

    async def _cmd_vrfy(self, cmd: _core.Command) -> None:
        self.reply(R.VRFY_CANNOT)

    async def _cmd_help(self, cmd: _core.Command) -> None:
        self.reply(R.HELP)

    async def _cmd_quit(self, cmd: _core.Command) -> None:
        self.reply(R.BYE)
        raise CloseSession
