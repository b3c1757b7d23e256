"""One inbound SMTP session: the command state machine and its policy.

Reads bytes from the client (``channel.Channel``), feeds them to the Rust
engine (``_core.ServerConnection``), and answers each event.  Replies to
pipelined commands are collected and sent in one write when the engine needs
more data (RFC 2920).  Each command goes through one table: the sequence
check (``transaction.check_sequence``), then the handler the dispatch table
names for its verb.

What the session owns itself: the listener's mode, the state the other
parts share (greeting, TLS, the AUTH user, the open transaction), timeouts
and the junk and error counts (kept in the engine, which answers some commands
itself), and the shutdown.  What it hands on: HELO/EHLO/LHLO and
STARTTLS to ``greeting.Hello``; MAIL and RCPT (policy, routing, hooks) to
``transaction.mail`` and ``transaction.rcpt``, with the ESMTP parameter checks
in ``params`` (pure functions); the AUTH exchange to ``auth.Dialog``; and the
message content -- DATA/BDAT, our Received field, the submission fix-ups, the
commit that earns the 250 -- to ``intake.Intake``.

The listener's mode decides the rest: ``mx`` offers STARTTLS when a
certificate is configured; ``submission`` (RFC 6409) offers STARTTLS and AUTH
and wants AUTH before MAIL; ``submissions`` (RFC 8314) is the same inside TLS
from the first byte.  After STARTTLS the session starts over with a fresh
engine, and whatever the client sent after the STARTTLS line before the
handshake is discarded unread (CVE-2011-0411).  Who may relay and who may use
which envelope sender is ``policy.Policy``'s answer.

DSN (RFC 3461): RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT are checked
and kept in the envelope, for bounce.py and for the next hop.

Resource policy: every read is bounded by a timeout (command_timeout between
commands, data_timeout inside DATA/BDAT), every write by send_timeout, every
TLS handshake by tls.handshake_timeout; too many error replies close the
session with 421; the engine bounds line and message sizes, so a session's
memory does not grow with what the peer sends.  No password is logged.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from .. import _core, maillog
from .. import reply as R
from ..config import SUBMISSION_MODES, Listener
from ..envelope import Envelope
from ..hooks import HOOK_FAILED, HookFailed, Message, Permit, SessionInfo, overrides
from . import auth as sasl
from . import transaction
from .channel import Channel
from .greeting import Hello, auto_replies
from .intake import Intake
from .transaction import SEQUENCE_REPLIES, CloseSession, Transaction, check_sequence

if TYPE_CHECKING:
    from .context import SessionContext

_session_ids = itertools.count(1)


# Commands that do not move a transaction forward (Postfix's "junk commands").
_JUNK = frozenset({"NOOP", "RSET", "VRFY", "HELP"})


_COUNTED_STAGES = frozenset({"connect", "MAIL", "RCPT", "DATA", "BDAT"})

# How long on_disconnect may run (it runs shielded, also while the server stops).
DISCONNECT_HOOK_TIMEOUT = 5.0

Handler = Callable[[_core.Command], Awaitable[None]]


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
        self.peer_ip = peer_ip
        self.peer = f"[{peer_ip}]:{peer_port}"
        self.id = f"C{next(_session_ids):06d}"
        self.channel = Channel(stream, self.id, self.peer, self.cfg.smtpd.send_timeout)
        self.mode = (listener or Listener()).mode
        self.submission = self.mode in SUBMISSION_MODES
        # LMTP (RFC 2033) differs in two places only: LHLO instead of HELO/EHLO,
        # and delivery at once with one reply per RCPT after the data (smtpd/lmtp.py)
        self.lmtp = self.mode == "lmtp"
        self.commands = 0  # commands answered here (the engine counts those it answered itself)
        self.too_many_errors = False  # the error count reached smtpd.max_errors
        self.tls: str | None = None  # "TLSv1.3 with cipher ..." once TLS is up
        self.auth_user: str | None = None
        self.hooks = ctx.hooks
        # this listener's milters (milter/driver.py), None when it has none
        self.milters = ctx.milters.get(listener.address) if ctx.milters and listener is not None else None
        # MAIL may be accepted by the engine (see transaction.mail_auto_possible);
        # with flow control on, only while delivery is not behind, asked per read
        self.mail_auto = transaction.mail_auto_possible(self)
        self._flow = ctx.flow if self.mail_auto and not self.lmtp and ctx.cfg.queue.in_flow_delay > 0 else None
        # the engine holds the reply queue, the greeting, whether a transaction is
        # open, and the junk and error counts
        self.conn: _core.ServerConnection = self._new_engine()
        self._txn: Transaction | None = None
        self.sasl = sasl.Dialog(self)  # AUTH; .waiting while an exchange waits for the client's line
        self.intake = Intake(self)  # DATA/BDAT, from the command to the final reply
        self.hello = Hello(self)  # HELO/EHLO/LHLO and STARTTLS
        self._waiting_for = ""  # what the current (or last) wait was for, for the timeout's log line
        self.stage = "connect"  # what a rejection is counted against (metrics)
        # The dispatch table.  A verb the engine knows that is not here (EXPN) gets 502.
        self._handlers: dict[str, Handler] = {
            "HELO": self.hello.helo,
            "EHLO": self.hello.ehlo,
            "LHLO": self.hello.lhlo,
            "STARTTLS": self.hello.starttls,
            "AUTH": self.sasl.command,
            "MAIL": functools.partial(transaction.mail, self),
            "RCPT": functools.partial(transaction.rcpt, self),
            "DATA": self.intake.data,
            "BDAT": self.intake.bdat,
            "RSET": self._cmd_rset,
            "NOOP": self._cmd_noop,
            "VRFY": self._cmd_vrfy,
            "HELP": self._cmd_help,
            "QUIT": self._cmd_quit,
        }

    def _new_engine(self) -> _core.ServerConnection:
        """A fresh engine for the session's current state (at the start, after
        TLS); the junk and error counts carry over from the one it replaces."""
        s = self.cfg.smtpd
        conn = _core.ServerConnection(
            max_command_line=s.max_command_line,
            max_text_line=s.max_text_line,
            max_message_size=s.max_message_size,
            max_header_size=s.max_header_size,
            smtputf8=True,
        )
        old: _core.ServerConnection | None = getattr(self, "conn", None)
        if old is not None:
            self._take_refused(old)
            conn.junk, conn.errors = old.junk, old.errors
            self.commands += old.answered
        if not self.ctx.runtime.closing:  # shutting down: every command goes through _command
            conn.set_auto_replies(auto_replies(self))
            conn.set_mail_auto(self.mail_auto)
        return conn

    # -- the state the engine keeps ------------------------------------------------
    @property
    def txn(self) -> Transaction | None:
        txn = self._txn
        if txn is None and self.conn.mail_pending:
            # the engine accepted a MAIL by itself: the transaction starts here
            cmd = self.conn.take_mail()
            assert cmd is not None
            txn = self._txn = transaction.from_engine(self, cmd)
        return txn

    @txn.setter
    def txn(self, value: Transaction | None) -> None:
        # the engine answers DATA itself only inside a transaction (see _core.AutoReplies)
        self._txn = value
        self.conn.set_transaction(value is not None)

    @property
    def greeting(self) -> str | None:
        """The greeting the client used ("HELO", "EHLO", "LHLO"), or None."""
        return self.conn.greeting

    @property
    def helo_name(self) -> str:
        return self.conn.helo_name

    @property
    def errors(self) -> int:
        """Error replies so far, the engine's own (sequence errors) included."""
        return self.conn.errors

    @errors.setter
    def errors(self, value: int) -> None:
        # Only the session's own errors can reach the limit: the engine answers
        # an error itself only while one more stays below it (_core.AutoReplies).
        self.conn.errors = value
        self.too_many_errors = value >= self.cfg.smtpd.max_errors

    @property
    def junk(self) -> int:
        """NOOP/RSET/VRFY/HELP since the last accepted message (the engine counts them)."""
        return self.conn.junk

    @junk.setter
    def junk(self, value: int) -> None:
        self.conn.junk = value

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
        self.conn.write(r.encode())
        if r.is_error:
            self.errors += 1
            if self.stage in _COUNTED_STAGES:
                self.ctx.metrics.inc(
                    "smtprs_messages_rejected_total", stage=self.stage, reason=f"{r.code} {r.enhanced or ''}".strip()
                )

    def info(self, refused: R.Reply | None = None) -> SessionInfo:
        """What the library's hooks are told of this session."""
        port = int(self.peer.rpartition(":")[2])
        return SessionInfo(self.id, self.peer_ip, port, self.mode, self.helo_name, self.tls, self.auth_user, refused)

    async def call_hook(self, name: str, *args: object, refused: R.Reply | None = None) -> object:
        """Call the hook ``name`` and return its answer as it is.  A hook that
        raises is logged (with the queue id of an envelope it was given) and
        HookFailed is raised; the callers answer 451 4.3.0."""
        try:
            answer: object = await getattr(self.hooks, name)(self.info(refused), *args)
        except Exception as e:
            qid = next((a.queue_id for a in args if isinstance(a, (Envelope, Message))), None)
            where = f"{qid}: hook {name} failed (session {self.id})" if qid else f"{self.id}: hook {name} failed"
            maillog.error(f"{where}: {e!r}")
            logging.getLogger("smtprs").debug("hook traceback", exc_info=True)
            raise HookFailed(name) from e
        return answer

    async def ask_hook(self, name: str, *args: object, refused: R.Reply | None = None) -> R.Reply | None:
        """Ask the library's hook ``name``: None to go on, else the reply to send
        instead.  With ``refused`` (on_rcpt, when the server's own checks refused
        the recipient: the hook is told that reply) a ``Permit`` answer is
        returned too; otherwise a 2xx answer, a Permit included, means go on."""
        if not overrides(self.hooks, name):
            return None
        try:
            answer = await self.call_hook(name, *args, refused=refused)
        except HookFailed:
            return HOOK_FAILED
        if answer is None:
            return None
        if not isinstance(answer, R.Reply):
            qid = next((a.queue_id for a in args if isinstance(a, (Envelope, Message))), None)
            where = f"{qid}: hook {name}" if qid else f"{self.id}: hook {name}"
            maillog.error(
                f"{where} answered {answer!r}, not a smtprs.Reply or None" + (f" (session {self.id})" if qid else "")
            )
            return HOOK_FAILED
        if isinstance(answer, Permit) and refused is not None:
            return answer
        if not answer.is_error:
            return None
        stage = "DATA" if name in ("on_message", "on_data") else name[3:].upper()
        maillog.reject(self.id, self.peer, stage, answer, f"by hook {name}")
        return answer

    async def _disconnect_hook(self) -> None:
        """on_disconnect: always called at the end, shielded (a stopping server
        cancels the session) and bounded by DISCONNECT_HOOK_TIMEOUT."""
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + DISCONNECT_HOOK_TIMEOUT
            try:
                await self.call_hook("on_disconnect")
            except HookFailed:
                pass
        if scope.cancelled_caught:
            maillog.error(
                f"{self.id}: hook on_disconnect did not return within {DISCONNECT_HOOK_TIMEOUT:g}s; cancelled"
            )

    async def flush(self) -> None:
        """Send every queued reply, the engine's own and ours, in order."""
        conn = self.conn
        if conn.has_refused:
            self._take_refused(conn)
        if conn.has_output:
            await self.channel.send(conn.take_output())

    def _take_refused(self, conn: _core.ServerConnection) -> None:
        """Count the sequence errors the engine answered, as ``reply`` counts ours."""
        for verb, which in conn.take_refused():
            if verb in _COUNTED_STAGES:
                r = SEQUENCE_REPLIES[which]
                self.ctx.metrics.inc("smtprs_messages_rejected_total", stage=verb, reason=f"{r.code} {r.enhanced}")

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
            refusal = None
            if not self.ctx.policy.limit_exempt(self.peer_ip):
                limits = runtime.limits
                refusal = limits.admit(
                    self.peer_ip,
                    limits.now(),
                    per_client=s.max_connections_per_client,
                    rate=s.max_connection_rate,
                    window=s.connection_rate_window,
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
            if self.mode == "submissions":  # RFC 8314: TLS from the first byte
                if not await self._start_tls():
                    return
                self.conn = self._new_engine()  # what the engine offers by itself depends on TLS
            if refusal is not None:
                maillog.reject(self.id, self.peer, "CONNECT", refusal)
                self.reply(refusal)
                await self.flush()
                return
            if self.hooks is not None and (refusal := await self.ask_hook("on_connect")) is not None:
                self.reply(refusal)
                await self.flush()
                return
            banner = "LMTP smtprs" if self.lmtp else s.banner
            self.conn.write(R.Reply(220, None, f"{self.ctx.hostname} {banner}").encode())
            await self.flush()
            await self._loop()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, ConnectionError):
            pass
        finally:
            self.intake.abort()
            if admitted:
                runtime.limits.release(self.peer_ip)
            runtime.discard(self)
            maillog.disconnect(self.id, self.peer, self.commands + self.conn.answered, self.errors)
            if overrides(self.hooks, "on_disconnect"):
                await self._disconnect_hook()

    # -- shutdown ----------------------------------------------------------------
    @property
    def idle(self) -> bool:
        """No transaction open and no AUTH exchange under way: nothing would be lost by closing now."""
        return self.txn is None and self.sasl.waiting is None and not self.conn.in_data

    def shutdown_notice(self) -> None:
        """The server is shutting down: an idle session stops waiting at once,
        a busy one waits no longer than the shutdown deadline."""
        self.conn.set_auto_replies(None)  # from now on every command goes through _command
        if not self.channel.waiting:
            return  # it is working; it looks at the shutdown state before its next read
        scope = self.channel.wait_scope
        if self.idle:
            scope.cancel()
        else:
            scope.deadline = min(scope.deadline, self.ctx.runtime.drain_deadline)

    def _must_close(self) -> bool:
        runtime = self.ctx.runtime
        return runtime.closing and (self.idle or trio.current_time() >= runtime.drain_deadline)

    async def _close_for_shutdown(self) -> None:
        if not self.idle:
            detail = (
                "message not accepted"
                if self.txn is not None and self.txn.writer is not None
                else "transaction not finished"
            )
            maillog.reject(self.id, self.peer, "shutdown", R.SHUTTING_DOWN, detail)
        self.intake.abort()
        self.txn = None
        self.conn.write(R.SHUTTING_DOWN.encode())
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
        intake = self.intake
        if intake.content_since is not None and s.min_data_rate:
            # the whole message must come at min_data_rate on average, after a grace of data_timeout
            content_deadline = intake.content_since + s.data_timeout + intake.content_octets / s.min_data_rate
            if content_deadline < deadline:
                deadline, what = content_deadline, "too slow"
        runtime = self.ctx.runtime
        if runtime.closing:
            deadline = min(deadline, runtime.drain_deadline)
        return deadline, what

    async def _loop(self) -> None:
        # every wait for the client's bytes runs in this one scope (see Channel.receive)
        wait_scope = self.channel.wait_scope
        with wait_scope:
            await self._commands()
        if not wait_scope.cancelled_caught:
            return
        # A wait for the client's bytes was cancelled: its deadline passed, or the shutdown woke it.
        if self._must_close():
            await self._close_for_shutdown()
            return
        reply = R.TOO_SLOW if self._waiting_for == "too slow" else R.TIMEOUT
        maillog.reject(self.id, self.peer, "timeout", reply, self._waiting_for)
        self.intake.abort()
        self.reply(reply)
        await self.flush()

    async def _commands(self) -> None:
        s = self.cfg.smtpd
        channel, intake = self.channel, self.intake
        # command_timeout is a deadline for a whole command line, counted from
        # the previous reply: bytes that do not complete a command do not extend it.
        command_deadline = trio.current_time() + s.command_timeout
        while True:
            if self._must_close():
                await self._close_for_shutdown()
                return
            deadline, self._waiting_for = self._read_deadline(command_deadline)
            data = await channel.receive(deadline)
            if intake.content_since is not None:
                intake.content_octets += len(data)
            if self._flow is not None:  # MAIL waits (in transaction.mail) while delivery is behind
                self.conn.set_mail_auto(not self._flow.behind())
            self.conn.receive_data(data)
            progressed = False
            try:
                while (event := self.conn.next_event()) is not None:
                    progressed = True
                    if isinstance(event, _core.ConnectionClosed):
                        await self.flush()
                        return
                    await self._handle(event)
                    if self.too_many_errors:
                        maillog.reject(self.id, self.peer, "session", R.TOO_MANY_ERRORS)
                        self.reply(R.TOO_MANY_ERRORS)
                        raise CloseSession
            except CloseSession:
                await self.flush()
                return
            progressed = progressed or self.conn.has_output  # the engine answered a command itself
            await self.flush()
            if progressed:
                command_deadline = trio.current_time() + s.command_timeout

    # -- events ----------------------------------------------------------------
    async def _handle(self, event: _core.Event) -> None:
        if isinstance(event, _core.DataChunk):
            self.intake.chunk(event.data)
        elif isinstance(event, _core.Command):
            self.commands += 1
            await self._command(event)
        elif isinstance(event, _core.DataEnd):
            await self.intake.end(event)
        elif isinstance(event, _core.BdatChunkEnd):
            self.intake.chunk_end(event)
        elif isinstance(event, _core.CommandError):
            self.commands += 1
            self.sasl.waiting = None  # e.g. an AUTH line over 12288 octets ends the exchange
            self.stage = event.verb or "command"
            maillog.reject(self.id, self.peer, event.verb or "command", f"{event.code} {event.enhanced} {event.text}")
            self.reply(R.Reply(event.code, event.enhanced, event.text))
            if event.fatal:
                self.reply(R.Reply(421, "4.5.0", "Error: cannot continue this session"))
                raise CloseSession
        elif isinstance(event, _core.RawLine):
            await self.sasl.line(event.line)

    async def _command(self, cmd: _core.Command) -> None:
        verb = cmd.verb
        self.stage = verb
        if self.ctx.runtime.closing and self.idle and verb not in ("QUIT", "RSET", "NOOP"):
            await self._close_for_shutdown()  # no new transaction (or anything else) once shutting down
            raise CloseSession
        if verb in _JUNK and self.conn.junk > self.cfg.smtpd.max_junk_commands:  # the engine counted it
            self.errors += 1  # counts towards max_errors, as in Postfix
        problem = check_sequence(verb, self.greeting is not None, self.txn)
        if problem is not None:
            if verb == "BDAT":
                self.intake.refuse_bdat(problem)
                return
            self.reply(problem)
            return
        handler = self._handlers.get(verb)
        if handler is None:
            self.reply(R.NOT_IMPLEMENTED)
            return
        await handler(cmd)

    async def _start_tls(self) -> bool:
        """Handshake as the server on the current stream; False (logged) if it fails."""
        assert self.ctx.tls is not None
        self.tls = await self.channel.start_tls(self.ctx.tls, self.cfg.smtpd.tls.handshake_timeout)
        return self.tls is not None

    async def _cmd_rset(self, cmd: _core.Command) -> None:
        self.intake.abort()
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
