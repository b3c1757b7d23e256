"""The greeting commands and STARTTLS: HELO, EHLO (and the extensions it
offers), LHLO, and the TLS switch of RFC 3207 with the reset it requires.

``Hello`` is one of the session's parts, beside ``Intake`` (intake.py) and the
AUTH ``Dialog`` (auth.py): it holds the session and acts on its state; the
session's dispatch table names its methods.
"""

from __future__ import annotations

from typing import Protocol

from .. import _core, maillog
from .. import reply as R
from ..config import Config
from . import auth as sasl
from .context import SessionView
from .intake import Intake
from .transaction import CloseSession, Transaction


class HelloSession(SessionView, Protocol):
    """What the greeting and STARTTLS use of their session (smtpd/session.py)."""

    txn: Transaction | None
    greeting: str | None
    helo_name: str
    auth_user: str | None
    conn: _core.ServerConnection
    tls: str | None

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
        lines = [
            self.s.ctx.hostname,
            "PIPELINING",
            f"SIZE {self.s.cfg.smtpd.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
        ]
        if self.s.starttls_offered:
            lines.append("STARTTLS")
        if self.s.auth_offered:
            lines.append("AUTH " + " ".join(sasl.MECHANISMS))
        self.s.reply(R.Reply(250, None, tuple(lines)))

    async def lhlo(self, cmd: _core.Command) -> None:
        if not self.s.lmtp:
            self.s.reply(R.NOT_IMPLEMENTED)
            return
        self.greet("LHLO", cmd.arg)
        self.extensions()

    def greet(self, kind: str, name: str) -> None:
        self.s.intake.abort()
        self.s.txn = None
        self.s.greeting = kind
        self.s.helo_name = name.strip()

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
        self.s.conn = self.s._new_engine()
        self.s.txn = None
        self.s.greeting = None
        self.s.helo_name = ""
        self.s.auth_user = None
        self.s.sasl.waiting = None
