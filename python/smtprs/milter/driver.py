"""The session's side of the milters: which milters a listener uses, and one
mail transaction walked through them.

``settings_by_listener(cfg)`` is read once per configuration (daemon.py): for
each listener with milters, its ``Settings``.  A listener without milters has
no entry, so a session there does no milter work at all.

``MilterTransaction`` is one per mail transaction (made at MAIL by
smtpd/transaction.py, kept on the ``Transaction``).  It opens one connection
to each milter at MAIL and closes them when the transaction ends (the end of
the data, RSET, a new greeting, the session's end):

- at MAIL: option negotiation, then the connect, helo and mail steps; a
  refusal at any of them is the reply to MAIL (as Postfix's default
  smtpd_delay_reject answers a connect or helo refusal at MAIL);
- at RCPT: the rcpt step, per accepted recipient; a refusal refuses that
  recipient only;
- at the end of the data (``finish``, smtpd/intake.py, before the commit): the
  data step, each header field, the end of the headers, the body in chunks of
  64 KiB read from the spool file (never the whole message in memory), the
  end of the message, and the milter's changes.

Each event goes to each milter in the order configured; each milter sees the
message as received (not another milter's changes, as in Postfix), and the
first refusal wins.  The changes of all milters are applied at the end, in
order, in one pass: a new spool file is written from the old one with the
header changes and the new body, the old one is aborted, and the new one is
committed with the changed envelope by the intake -- so the commit that earns
the 250 is the only durable step, and a crash leaves either nothing (no 250
given) or the whole new message.

A milter that cannot be reached, times out, closes, or breaks the protocol
gets the configured ``default_action``: ``tempfail`` (451 4.7.1 to the
command, and to every later one of the transaction), ``reject`` (550 5.7.1),
or ``accept`` (the transaction goes on without that milter).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .. import maillog, rewrite
from .. import reply as R
from ..config import Config
from ..content import Content
from ..envelope import Envelope
from ..errors import ConfigError
from ..queue.backend import SpoolBackend, Writer
from . import protocol as P
from .client import Connection, Endpoint, MilterError

TEMPFAIL = R.Reply(451, "4.7.1", "Service unavailable - try again later")
REJECT = R.Reply(550, "5.7.1", "Command rejected")
LOCAL_ERROR = R.Reply(451, "4.3.0", "Error: queue file read error")

STAGE_NAMES: dict[str, bytes] = {
    "connect": P.SMFIC_CONNECT,
    "helo": P.SMFIC_HELO,
    "mail": P.SMFIC_MAIL,
    "rcpt": P.SMFIC_RCPT,
    "data": P.SMFIC_DATA,
    "eoh": P.SMFIC_EOH,
    "eom": P.SMFIC_BODYEOB,
}

# The macros sent at each stage when milter.macros does not say otherwise:
# Postfix's milter_*_macros defaults, less those smtprs has no value for.
DEFAULT_MACROS: dict[str, tuple[str, ...]] = {
    "connect": (
        "j",
        "_",
        "{daemon_name}",
        "{daemon_addr}",
        "v",
        "{client_addr}",
        "{client_name}",
        "{client_port}",
        "{if_addr}",
    ),
    "helo": ("{tls_version}", "{cipher}", "{cipher_bits}"),
    "mail": ("{auth_type}", "{auth_authen}", "{auth_author}", "{mail_addr}", "{mail_host}", "{mail_mailer}"),
    "rcpt": ("{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"),
    "data": ("i",),
    "eoh": ("i",),
    "eom": ("i", "{rcpt_count}"),
}


@dataclass(frozen=True)
class Settings:
    """The milters of one listener and how they are used ([milter])."""

    endpoints: tuple[Endpoint, ...]
    default_action: str
    connect_timeout: float
    command_timeout: float
    content_timeout: float
    macros: dict[bytes, tuple[str, ...]]  # by command code


def settings_by_listener(cfg: Config) -> dict[str, Settings]:
    """For each listener address with milters: its settings.  Listeners that
    take no mail transactions of their own (lmtp, pop3, pop3s) have none.
    Raises ConfigError for a bad milter address or macro stage, and for
    milters with ``queue.backend = "null"`` (which keeps no content to send them)."""
    m = cfg.milter
    macros: dict[bytes, tuple[str, ...]] = {}
    for stage, default in DEFAULT_MACROS.items():
        macros[STAGE_NAMES[stage]] = tuple(m.macros.get(stage, default))
    for stage in m.macros:
        if stage not in STAGE_NAMES:
            raise ConfigError(f"milter.macros.{stage}: not a stage (known: {', '.join(STAGE_NAMES)})")
    common = [Endpoint.parse(spec, f"milter.milters[{i}]") for i, spec in enumerate(m.milters)]
    out: dict[str, Settings] = {}
    for i, lst in enumerate(cfg.smtpd.listeners):
        if not lst.milters:
            endpoints = common
        elif lst.milters == ["none"]:
            endpoints = []
        else:
            endpoints = [
                Endpoint.parse(spec, f"smtpd.listeners[{i}].milters[{j}]") for j, spec in enumerate(lst.milters)
            ]
        if endpoints and lst.mode in ("mx", "submission", "submissions"):
            out[lst.address] = Settings(
                tuple(endpoints), m.default_action, m.connect_timeout, m.command_timeout, m.content_timeout, macros
            )
    if out and cfg.queue.backend == "null":
        # the null spool keeps no content (Writer.staged raises): no milter
        # could read a message, and every one would be answered 451
        raise ConfigError(
            'milter.milters: milters need the content of each message, which queue.backend = "null" does not keep; '
            'use queue.backend = "segments", or no milter (milter.milters = [] and no listener milters)'
        )
    return out


@dataclass(frozen=True)
class Client:
    """What the milters are told of the session (the macro values and SMFIC_CONNECT)."""

    session: str  # our session id, for the log
    peer: str  # as logged: [ip]:port
    ip: str
    port: int
    hostname: str  # ours ({j})
    mode: str  # the listener's mode
    helo: str
    tls: str | None  # "TLSv1.3 with cipher ..." or None
    auth_user: str | None
    local_ip: str = ""


@dataclass
class _Milter:
    conn: Connection
    done: bool = False  # accepted: no more events for this transaction
    skip_body: bool = False


@dataclass
class Finish:
    """What the end of the data came to: a reply instead of the commit (a
    refusal, or the 250 of a discarded message: ``reply``), or the writer and
    envelope to commit."""

    reply: R.Reply | None = None
    writer: Writer | None = None
    rewritten: bool = False  # the content changed: ``writer`` is a new one (a streamed DKIM signer is stale)


class MilterTransaction:
    """One mail transaction's milters (see the module docstring)."""

    def __init__(self, settings: Settings, client: Client) -> None:
        self.settings = settings
        self.client = client
        self.milters: list[_Milter] = []
        self.failed: R.Reply | None = None  # a default action of tempfail/reject: every later step gets it
        self.discard = False  # a milter said discard: the message is answered 250 and dropped
        self.sender = ""
        self.recipients = 0
        self.queue_id = ""

    # -- the envelope steps ---------------------------------------------------------
    async def mail(self, sender: str, args: list[str]) -> R.Reply | None:
        """MAIL: open every milter and walk connect, helo and mail; None to go on,
        else the reply to MAIL (the milters are closed then)."""
        s = self.settings
        self.sender = sender
        for ep in s.endpoints:
            try:
                conn = await Connection.open(ep, s.connect_timeout, s.command_timeout)
            except MilterError as e:
                refusal = self._failure(ep, "connect", e)
                if refusal is not None:
                    self.close_now()
                    return refusal
                continue
            self.milters.append(_Milter(conn))
        c = self.client
        try:
            family, port, address = _family(c.ip), c.port, c.ip
        except ValueError:
            family, port, address = b"U", 0, ""
        steps = [
            (P.SMFIC_CONNECT, P.connect(f"[{c.ip}]", family, port, address), "CONNECT"),
            (P.SMFIC_HELO, P.helo(c.helo or f"[{c.ip}]"), "HELO"),
            (P.SMFIC_MAIL, P.mail(sender, args), "MAIL"),
        ]
        for code, pkt, what in steps:
            refusal = await self._envelope_step(code, pkt, what, f"from=<{sender}>")
            if refusal is not None:
                await self.close()
                return refusal
        return None

    async def rcpt(self, recipient: str, args: list[str]) -> R.Reply | None:
        """RCPT: None to accept the recipient, else its refusal."""
        if self.failed is not None:
            return self.failed
        refusal = await self._envelope_step(
            P.SMFIC_RCPT, P.rcpt(recipient, args), "RCPT", f"from=<{self.sender}> to=<{recipient}>", rcpt=recipient
        )
        if refusal is None:
            self.recipients += 1
        return refusal

    async def _envelope_step(self, code: bytes, pkt: bytes, what: str, detail: str, rcpt: str = "") -> R.Reply | None:
        if self.failed is not None:
            return self.failed
        for m in self._active():
            try:
                r = await self._step(m, code, pkt, self.settings.command_timeout, rcpt=rcpt)
            except MilterError as e:
                refusal = self._failure(m.conn.endpoint, what, e, m)
                if refusal is not None:
                    return refusal
                continue
            refusal = self._verdict(m, r, what, detail)
            if refusal is not None:
                return refusal
        return None

    # -- the content --------------------------------------------------------------
    async def finish(
        self, spool: SpoolBackend, writer: Writer, env: Envelope, max_size: int, route: rewrite.Route | None = None
    ) -> Finish:
        """The end of the data: the content steps, then the changes.  On a refusal
        or a discard the writer is aborted here and ``Finish.reply`` says what to
        answer; else ``Finish.writer`` is what to commit with ``env`` (changed in
        place: sender, recipients, held, and queue id and size for new content)."""
        try:
            return await self._finish(spool, writer, env, max_size, route)
        finally:
            await self.close()

    async def _finish(
        self, spool: SpoolBackend, writer: Writer, env: Envelope, max_size: int, route: rewrite.Route | None
    ) -> Finish:
        self.queue_id = writer.queue_id
        if self.failed is not None:
            spool.abort(writer)
            return Finish(reply=self.failed)
        changes: list[rewrite.Edit] = []
        if self._active() and not self.discard:
            try:
                content = writer.staged()
                fields, body_start = rewrite.read_header_block(content)
            except OSError as e:
                maillog.error(f"{writer.queue_id}: milter: cannot read the spooled message: {e.strerror or e}")
                spool.abort(writer)
                return Finish(reply=LOCAL_ERROR)
            detail = f"from=<{self.sender}>"
            for m in self._active():
                try:
                    got = await self._content(m, content, fields, body_start, max_size)
                except MilterError as e:
                    refusal = self._failure(m.conn.endpoint, "DATA", e, m)
                    if refusal is not None:
                        spool.abort(writer)
                        return Finish(reply=refusal)
                    continue
                verdict, ch = got
                refusal = self._verdict(m, verdict, "DATA", detail)
                if refusal is not None:
                    spool.abort(writer)
                    return Finish(reply=refusal)
                if self.discard:
                    break
                if ch is not None:
                    changes.append(ch)
        if self.discard:
            spool.abort(writer)
            maillog.milter_discarded(writer.queue_id, self.client.session, f"from=<{self.sender}>")
            return Finish(reply=R.Reply(250, "2.0.0", f"Ok: queued as {writer.queue_id}"))
        return self._apply(spool, writer, env, changes, route)

    async def _content(
        self, m: _Milter, content: Content, fields: list[tuple[str, bytes]], body_start: int, max_size: int
    ) -> tuple[P.Response | None, rewrite.Edit | None]:
        """One milter's content steps; (its verdict, its changes) -- the verdict of
        an earlier step when it ended there (then no changes)."""
        s = self.settings
        r = await self._step(m, P.SMFIC_DATA, P.packet(P.SMFIC_DATA), s.command_timeout)
        if _final(r):
            return r, None
        for name, raw in fields:
            # (HDR_LEADSPC is not offered: values go without the space after the colon)
            value = _milter_value(raw, False)
            r = await self._step(m, P.SMFIC_HEADER, P.header(name.encode(), value), s.command_timeout)
            if _final(r):
                return r, None
        r = await self._step(m, P.SMFIC_EOH, P.packet(P.SMFIC_EOH), s.command_timeout)
        if _final(r):
            return r, None
        if not m.conn.steps & P.SMFIP_NOBODY:
            for chunk in rewrite.body_chunks(content, body_start, P.CHUNK_SIZE):
                r = await self._step(m, P.SMFIC_BODY, P.body(chunk), s.content_timeout)
                if isinstance(r, P.Verdict) and r.kind == "skip":
                    if not m.conn.steps & P.SMFIP_SKIP:
                        raise MilterError("SKIP without negotiating it")
                    m.skip_body = True
                    break
                if _final(r):
                    return r, None
        await self._send_macros(m, P.SMFIC_BODYEOB)
        await m.conn.send(P.packet(P.SMFIC_BODYEOB), s.content_timeout)
        ch = rewrite.Edit()
        new_body: bytearray | None = None
        size = 0
        while True:
            r = await m.conn.read(s.content_timeout)
            if isinstance(r, P.Verdict):
                if r.kind == "progress":
                    continue  # the milter is working: the timeout starts again
                if r.kind in ("skip", "shutdown", "conn_fail"):
                    raise MilterError(f"{r.kind} at the end of the message")
                return r, _with_body(ch, new_body)
            if isinstance(r, P.ReplyCode):
                return r, _with_body(ch, new_body)
            need = _ACTION_FLAGS.get(type(r))
            if need is None:
                raise MilterError(f"unexpected reply at the end of the message: {type(r).__name__}")
            if isinstance(r, P.AddRcpt) and r.args:
                need = P.SMFIF_ADDRCPT_PAR
            if not m.conn.actions & need:
                raise MilterError(f"{type(r).__name__} without negotiating it")
            if isinstance(r, (P.AddHeader, P.InsertHeader, P.ChangeHeader)):
                ch.headers.append(r)
            elif isinstance(r, P.ReplaceBody):
                if new_body is None:
                    new_body = bytearray()
                size += len(r.chunk)
                if size > max_size:
                    raise MilterError(f"the new body is over {max_size} octets (smtpd.max_message_size)")
                new_body += r.chunk
            elif isinstance(r, P.AddRcpt):
                ch.rcpt_add.append(r.address)
            elif isinstance(r, P.DelRcpt):
                ch.rcpt_del.append(r.address)
            elif isinstance(r, P.ChangeFrom):
                ch.sender = r.address
            elif isinstance(r, P.Quarantine):
                ch.quarantine = r.reason or "quarantined by a milter"

    def _apply(
        self,
        spool: SpoolBackend,
        writer: Writer,
        env: Envelope,
        changes: list[rewrite.Edit],
        route: rewrite.Route | None,
    ) -> Finish:
        """Apply every milter's changes (smtprs.rewrite): the envelope in place,
        the content by a new spool writer when headers or the body changed.
        A recipient a milter added is routed first (``route``, the session's
        router as at RCPT: aliases and virtual entries expanded); one the
        router refuses is left out and logged."""
        qid = writer.queue_id
        refused: list[str] = []
        if route is not None:
            for ed in changes:
                for address, why in rewrite.route_added(ed, route):
                    refused.append(f"added recipient <{address}> refused by the router: {why}")
        try:
            done = rewrite.apply(spool, writer, env, changes)
        except OSError as e:
            maillog.error(f"{qid}: milter: cannot rewrite the message: {e.strerror or e}")
            spool.abort(writer)
            return Finish(reply=LOCAL_ERROR)
        what = refused + done.changes
        if done.discarded or done.writer is None:
            maillog.milter_discarded(qid, self.client.session, "every recipient was removed by a milter")
            return Finish(reply=R.Reply(250, "2.0.0", f"Ok: queued as {qid}"))
        if what:
            maillog.milter_changed(env.queue_id, "; ".join(what))
        return Finish(writer=done.writer, rewritten=done.writer is not writer)

    # -- one step ---------------------------------------------------------------------
    def _active(self) -> list[_Milter]:
        return [m for m in self.milters if not m.done and not m.conn.closed]

    async def _send_macros(self, m: _Milter, code: bytes) -> None:
        names = m.conn.symlists.get(code) or self.settings.macros.get(code, ())
        values = {}
        for name in names:
            v = self._macro(name)
            if v is not None:
                values[name] = v
        if values:
            await m.conn.send(P.macros(code, values), self.settings.command_timeout)

    async def _step(self, m: _Milter, code: bytes, pkt: bytes, timeout: float, rcpt: str = "") -> P.Response | None:
        """Send one step (its macros first) and read its reply: None when the
        milter asked to skip the step or to get no reply to it."""
        no, no_reply = P.STEP_FLAGS[code]
        steps = m.conn.steps
        if steps & no:
            return None
        self._rcpt = rcpt
        await self._send_macros(m, code)
        await m.conn.send(pkt, timeout)
        if steps & no_reply:
            return None
        while True:
            r = await m.conn.read(timeout)
            if isinstance(r, P.Verdict) and r.kind == "progress":
                continue
            return r

    def _verdict(self, m: _Milter, r: P.Response | None, what: str, detail: str) -> R.Reply | None:
        """A milter's answer to a step: None to go on, else the refusal."""
        if r is None:
            return None
        ep = m.conn.endpoint.spec
        if isinstance(r, P.ReplyCode):
            reply = R.Reply(r.code, r.enhanced, r.lines if len(r.lines) > 1 else r.lines[0])
            maillog.milter_reject(self.client.session, self.client.peer, what, ep, reply, detail)
            return reply
        if isinstance(r, P.Verdict):
            if r.kind == "continue":
                return None
            if r.kind == "accept":
                m.done = True
                return None
            if r.kind == "discard":
                self.discard = True
                m.done = True
                return None
            if r.kind in ("reject", "tempfail"):
                reply = REJECT if r.kind == "reject" else TEMPFAIL
                maillog.milter_reject(self.client.session, self.client.peer, what, ep, reply, detail)
                return reply
            if r.kind == "skip" and what == "DATA":
                return None
        # anything else is a protocol error: the milter is not used any more
        m.conn.close_now()
        return self._failure(m.conn.endpoint, what, MilterError(f"unexpected reply {r!r}"), m)

    def _failure(self, ep: Endpoint, what: str, e: MilterError, m: _Milter | None = None) -> R.Reply | None:
        """A milter failed: its default action (None: go on without it)."""
        if m is not None:
            m.conn.close_now()
        action = self.settings.default_action
        maillog.milter_problem(self.client.session, ep.spec, what, str(e), action)
        if action == "accept":
            return None
        self.failed = TEMPFAIL if action == "tempfail" else REJECT
        return self.failed

    # -- the macros ---------------------------------------------------------------
    def _macro(self, name: str) -> str | None:
        c = self.client
        if name == "j":
            return c.hostname
        if name == "_":
            return f"unknown [{c.ip}]"  # Postfix's: the verified client name (none here) and address
        if name == "v":
            return "smtprs"
        if name == "{daemon_name}":
            # Postfix's milter_macro_daemon_name is $myhostname; the usual
            # OpenDKIM recipe sets it to ORIGINATING on the submission service
            return "ORIGINATING" if c.mode in ("submission", "submissions") else c.hostname
        if name in ("{daemon_addr}", "{if_addr}"):
            return c.local_ip or None
        if name == "{client_addr}":
            return c.ip
        if name == "{client_name}":
            return "unknown"  # no reverse lookup is made
        if name == "{client_port}":
            return str(c.port)
        if name in ("{tls_version}", "{cipher}"):
            if not c.tls:
                return None
            version, _, cipher = c.tls.partition(" with cipher ")
            return version if name == "{tls_version}" else (cipher or None)
        if name == "{auth_authen}":
            return c.auth_user
        if name == "{auth_type}":
            return None
        if name == "{mail_addr}":
            return self.sender
        if name == "{mail_host}":
            return self.sender.rpartition("@")[2] or None
        if name in ("{mail_mailer}", "{rcpt_mailer}"):
            return "smtp"
        if name == "{rcpt_addr}":
            return self._rcpt or None
        if name == "{rcpt_host}":
            return self._rcpt.rpartition("@")[2] or None
        if name == "i":
            return self.queue_id or None
        if name == "{rcpt_count}":
            return str(self.recipients)
        return None

    _rcpt = ""

    # -- closing -------------------------------------------------------------------
    async def close(self) -> None:
        for m in self.milters:
            await m.conn.quit()
        self.milters = []

    def close_now(self) -> None:
        for m in self.milters:
            m.conn.close_now()
        self.milters = []


_ACTION_FLAGS: dict[type, int] = {
    P.AddHeader: P.SMFIF_ADDHDRS,
    P.InsertHeader: P.SMFIF_ADDHDRS,
    P.ChangeHeader: P.SMFIF_CHGHDRS,
    P.ReplaceBody: P.SMFIF_CHGBODY,
    P.AddRcpt: P.SMFIF_ADDRCPT,
    P.DelRcpt: P.SMFIF_DELRCPT,
    P.ChangeFrom: P.SMFIF_CHGFROM,
    P.Quarantine: P.SMFIF_QUARANTINE,
}


def _final(r: P.Response | None) -> bool:
    """Does this reply end the milter's part in the message (anything but continue)?"""
    return r is not None and not (isinstance(r, P.Verdict) and r.kind == "continue")


def _with_body(ed: rewrite.Edit, body: bytearray | None) -> rewrite.Edit:
    if body is not None:
        ed.body = bytes(body)
    return ed


def _family(ip: str) -> bytes:
    return b"6" if ipaddress.ip_address(ip).version == 6 else b"4"


def _milter_value(raw: bytes, leadspc: bool) -> bytes:
    """A field's value as milters get it: after the colon, without the leading
    white space (unless HDR_LEADSPC), folds as LF, no final line end."""
    value = raw[raw.find(b":") + 1 :]
    if value.endswith(b"\r\n"):
        value = value[:-2]
    if not leadspc:
        value = value.lstrip(b" \t")
    return value.replace(b"\r\n", b"\n")
