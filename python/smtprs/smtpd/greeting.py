"""The greeting commands and STARTTLS: HELO, EHLO (and the extensions it
offers), LHLO, and the TLS switch of RFC 3207 with the reset it requires.

``Hello`` is one of the session's parts, beside ``Intake`` (intake.py) and the
AUTH ``Dialog`` (auth.py): it holds the session and acts on its state; the
session's dispatch table names its methods.
"""

from __future__ import annotations

import functools
from typing import Protocol

from .. import _core, maillog
from .. import reply as R
from ..config import Config
from ..hooks import Hooks
from . import auth as sasl
from .context import SessionView
from .intake import Intake
from .transaction import SEQUENCE_REPLIES, CloseSession, Transaction


class HelloSession(SessionView, Protocol):
    """What the greeting and STARTTLS use of their session (smtpd/session.py)."""

    txn: Transaction | None
    auth_user: str | None
    conn: _core.ServerConnection
    tls: str | None
    commands: int

    @property
    def greeting(self) -> str | None: ...
    @property
    def helo_name(self) -> str: ...
    @property
    def cfg(self) -> Config: ...
    @property
    def intake(self) -> Intake: ...
    @property
    def sasl(self) -> sasl.Dialog: ...
    @property
    def starttls_offered(self) -> bool: ...
    @property
    def auth_offered(self) -> bool: ...

    async def flush(self) -> None: ...
    async def _start_tls(self) -> bool: ...
    def _new_engine(self) -> _core.ServerConnection: ...


def _extensions(hostname: str, max_size: int, starttls: bool, auth: bool) -> R.Reply:
    """The EHLO/LHLO reply: the extensions this session offers now."""
    lines = [
        hostname,
        "PIPELINING",
        f"SIZE {max_size}",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ]
    if starttls:
        lines.append("STARTTLS")
    if auth:
        lines.append("AUTH " + " ".join(sasl.MECHANISMS))
    return R.Reply(250, None, tuple(lines))


def auto_replies(s: HelloSession) -> _core.AutoReplies:
    """What the session's engine may answer by itself (issue 13's fast path):
    the greetings when no on_helo hook wants to see them (on an LMTP listener
    only LHLO: HELO and EHLO are refused there), DATA's 354, QUIT's 221, the
    junk commands within smtpd.max_junk_commands, the sequence errors while
    under smtpd.max_errors, and MAIL's 250 while the session allows it.  The replies are the ones the handlers would give."""
    hooks = s.hooks
    helo_hook = hooks is not None and getattr(type(hooks), "on_helo", None) is not Hooks.on_helo
    d = s.cfg.smtpd
    return _auto_replies(
        s.ctx.hostname,
        d.max_message_size,
        s.starttls_offered,
        s.auth_offered,
        s.lmtp,
        helo_hook,
        d.max_junk_commands,
        d.max_errors,
    )


@functools.lru_cache(maxsize=64)
def _auto_replies(
    hostname: str,
    max_size: int,
    starttls: bool,
    auth: bool,
    lmtp: bool,
    helo_hook: bool,
    max_junk: int,
    max_errors: int,
) -> _core.AutoReplies:
    ehlo = _extensions(hostname, max_size, starttls, auth).encode()
    smtp_greetings = not lmtp and not helo_hook
    return _core.AutoReplies(
        ehlo=ehlo if smtp_greetings else None,
        helo=R.Reply(250, None, hostname).encode() if smtp_greetings else None,
        lhlo=ehlo if lmtp else None,
        data=R.START_DATA.encode(),
        quit=R.BYE.encode(),
        noop=R.OK.encode(),
        rset=R.OK.encode(),
        vrfy=R.VRFY_CANNOT.encode(),
        help=R.HELP.encode(),
        max_junk=max_junk,
        sequence={name: r.encode() for name, r in SEQUENCE_REPLIES.items()},
        max_errors=max_errors,
        mail=R.SENDER_OK.encode(),  # given only while the session allows it (Session.mail_auto)
    )


class Hello:
    def __init__(self, session: HelloSession) -> None:
        self.s = session

    async def helo(self, cmd: _core.Command) -> None:
        if await self._smtp_greeting("HELO", cmd):
            self.s.reply(R.Reply(250, None, self.s.ctx.hostname))

    async def ehlo(self, cmd: _core.Command) -> None:
        if await self._smtp_greeting("EHLO", cmd):
            self.extensions()

    async def _smtp_greeting(self, kind: str, cmd: _core.Command) -> bool:
        """HELO or EHLO: refused on an LMTP listener or by the on_helo hook (False, answered),
        else the session is greeted (True: the caller answers)."""
        if self.s.lmtp:
            self.s.reply(R.LMTP_USE_LHLO)
            return False
        if self.s.hooks is not None and (refusal := await self.s.ask_hook("on_helo", cmd.arg.strip())) is not None:
            self.s.reply(refusal)
            return False
        self.greet(kind, cmd.arg)
        return True

    def extensions(self) -> None:
        s = self.s
        s.reply(_extensions(s.ctx.hostname, s.cfg.smtpd.max_message_size, s.starttls_offered, s.auth_offered))

    async def lhlo(self, cmd: _core.Command) -> None:
        if not self.s.lmtp:
            self.s.reply(R.NOT_IMPLEMENTED)
            return
        self.greet("LHLO", cmd.arg)
        self.extensions()

    def greet(self, kind: str, name: str) -> None:
        self.s.intake.abort()
        self.s.txn = None
        self.s.conn.greet(kind, name.strip())

    async def starttls(self, cmd: _core.Command) -> None:
        if self.s.tls is not None:
            self.s.reply(R.TLS_ACTIVE)
            return
        if self.s.ctx.tls is None:
            self.s.reply(R.NOT_IMPLEMENTED)
            return
        # Whatever came after the STARTTLS line came before the handshake: it
        # was sent in the clear and must never be executed (CVE-2011-0411).
        dropped = self.s.conn.discard_buffer()
        if dropped:
            maillog.starttls_pipelined(self.s.id, self.s.peer, dropped)
        self.s.reply(R.TLS_READY)
        await self.s.flush()
        if not await self.s._start_tls():
            raise CloseSession
        # RFC 3207 4.2: forget everything learnt from the client before TLS.
        self.s.intake.abort()
        self.s.commands += self.s.conn.answered
        self.s.auth_user = None  # before the new engine: what it offers by itself depends on it
        self.s.conn = self.s._new_engine()  # not greeted, no transaction
        self.s.txn = None
        self.s.sasl.waiting = None
