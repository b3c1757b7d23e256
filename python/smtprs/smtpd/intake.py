"""The content side of a session: DATA and BDAT intake, our Received field,
the submission fix-ups, and the commit that earns the 250.

``Intake`` is one per session.  DATA or the first BDAT of a transaction opens
a spool writer and writes our trace field (RFC 5321 4.4) first; the core's
DataChunk events then go straight into it.  At the end of the data
(``end``) the message is checked (the core's verdict, the Received count),
then committed: the 250 is sent only after the spool's commit has made
content and envelope durable, and then the message is handed to the
scheduler.  On an LMTP listener nothing is committed: smtpd/lmtp.py delivers
at once and gives one reply per RCPT.

BDAT (RFC 3030): the core reads every chunk by its length whatever we
answer, so a refused BDAT only records its reply (``refuse_bdat``); it is
sent once the chunk has been read, and every further BDAT of the
transaction gets it too.

Submission (RFC 6409 8.2, 8.3): a message without Date or Message-ID gets
them.  The header block is held (at most max_header_size, which the core
enforces) until its end is seen; the missing fields are written after our
Received field, and the rest streams on.

DKIM (mailauth/dkim.py): a message from an authenticated client or a
trusted network, when keys are configured, also goes octet for octet (after
our Received field) to a signer that keeps its header block and hashes its
body; at the end of the data the DKIM-Signature field is prepended to the
spooled content (``Writer.prepend``) before the commit.

Inbound authentication (mailauth/inbound.py, ``mailauth.enabled``): on an
mx listener, for a client that did not authenticate, the content after our
Received field also goes to a ``MessageCheck``, and the header block is held
as for submission so that Authentication-Results fields claiming our
authserv-id are removed from it (RFC 8601 5) before it is written.  At the end
of the data the checks run in one worker-thread job; our
Authentication-Results field (and the quarantine marker, if the policy
says so) is prepended above our Received field, or the message is refused
(550 5.7.1 DMARC, 550 5.7.23 SPF, 451 4.7.24 SPF temperror) as configured.

Milters (milter/driver.py): when the transaction has some, the content steps
run at the end of the data, after the inbound checks and before the hooks
that change mail; a refusal is the reply, a discard is answered 250 and kept
nowhere, and changed content is a new spool writer that is committed instead
of the first.  DKIM signing comes after both, over the final content: when a
milter or a hook rewrote it, the streamed signer is dropped and the new
writer's content is read back and signed (``Signer.sign_content``).

The intake also keeps when the current message's content started and how
much has come since, for the session's min_data_rate deadline.
"""

from __future__ import annotations

import email.utils
import functools
import ipaddress
import re
import secrets
import time
from typing import Protocol

import trio

from .. import _core, maillog
from .. import reply as R
from ..envelope import Envelope, Recipient
from ..errors import SpoolError
from ..mailauth import results as authres
from ..mailauth.dkim import MessageSigner
from ..mailauth.inbound import MessageCheck
from ..queue.backend import Writer
from . import lmtp
from .context import SessionView
from .hookdata import route_added, run_message_hooks
from .transaction import Transaction

# Header fields RFC 6409 8 lets a submission server add, found as the core's
# header scan finds them: at the start of a line of the header block.
_FIXUP_FIELDS = re.compile(rb"^(date|message-id):", re.I | re.M)

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


class IntakeSession(SessionView, Protocol):
    """What the intake uses of its session (smtpd/session.py): who the client
    is, the open transaction, the reply buffer and the hooks."""

    txn: Transaction | None
    stage: str  # what a rejection is counted against (metrics)
    junk: int

    @property
    def conn(self) -> _core.ServerConnection: ...
    @property
    def mode(self) -> str: ...
    @property
    def greeting(self) -> str | None: ...
    @property
    def helo_name(self) -> str: ...
    @property
    def tls(self) -> str | None: ...


class Intake:
    """DATA/BDAT for one session: from the command to the final reply."""

    def __init__(self, session: IntakeSession) -> None:
        self.session = session
        self.content_since: float | None = None  # when the current message's content started
        self.content_octets = 0  # octets read since then
        self._orphan_bdat: R.Reply | None = None  # a BDAT refused outside a transaction
        self._dkim: MessageSigner | None = None  # the current message's DKIM signer, if it is to be signed
        self._check: MessageCheck | None = None  # the current message's inbound checks, if it is checked

    # -- the commands ----------------------------------------------------------
    async def data(self, cmd: _core.Command) -> None:
        s = self.session
        txn = s.txn
        assert txn is not None
        if txn.mode == "BDAT":
            s.reply(R.BDAT_AFTER_DATA)
            return
        if not self._open(txn):
            return
        txn.mode = "DATA"
        s.reply(R.START_DATA)
        s.conn.start_data()

    async def bdat(self, cmd: _core.Command) -> None:
        # the engine is already reading the chunk by length; we only decide where it goes
        txn = self.session.txn
        assert txn is not None
        if txn.bdat_error is not None:
            return
        if txn.mode == "DATA":
            self.refuse_bdat(R.BDAT_AFTER_DATA)
            return
        if txn.writer is None:
            if not self._open(txn, quiet=True):
                return
            txn.mode = "BDAT"

    def refuse_bdat(self, reply: R.Reply) -> None:
        """Remember why this BDAT (and the rest of its transaction) fails; the
        reply goes out once the chunk has been read, as RFC 3030 requires."""
        txn = self.session.txn
        if txn is None:
            self._orphan_bdat = reply
        else:
            self.abort()
            txn.bdat_error = reply

    # -- the core's events -----------------------------------------------------
    def _opened_by_engine(self, txn: Transaction | None) -> None:
        """The engine answered DATA by itself (see _core.AutoReplies): the
        message's spool file is opened with its first content.  If the spool
        cannot take it, the refusal is the reply to the data's end, as for BDAT."""
        opened = txn is not None and txn.mode is None and txn.writer is None and txn.bdat_error is None
        if opened and txn is not None and self._open(txn, quiet=True):
            txn.mode = "DATA"

    def chunk(self, data: bytes) -> None:
        """Content from a DataChunk event: into the spool file (or the held header block)."""
        txn = self.session.txn
        self._opened_by_engine(txn)
        if txn is not None and txn.writer is not None and txn.bdat_error is None:
            if txn.hold is None:
                self._write(txn.writer, data)
            else:
                self._hold_header(txn, txn.writer, data)

    def chunk_end(self, event: _core.BdatChunkEnd) -> None:
        failure = self._bdat_failure()
        if failure is not None:
            self.session.reply(failure)
        else:
            self.session.reply(R.Reply(250, "2.0.0", f"{event.chunk_size} octets received"))

    async def end(self, event: _core.DataEnd) -> None:
        """The end of the data (DATA's dot, BDAT LAST): check, commit, answer."""
        s = self.session
        ctx = s.ctx
        s.stage = "DATA"
        started = time.perf_counter()
        self._opened_by_engine(s.txn)  # a DATA with no content at all
        failure = self._bdat_failure()
        txn = s.txn
        s.txn = None
        self.content_since = None
        if failure is not None or txn is None or txn.writer is None:
            self._dkim = self._check = None
            if txn is not None and txn.writer is not None:
                ctx.spool.abort(txn.writer)
            self._final_reply(txn, failure or R.NEED_MAIL)
            return
        writer = txn.writer
        if txn.hold is not None and event.error is None:  # the whole message was header (or empty)
            self._release_header(txn, writer, len(txn.hold))
        signer, self._dkim = self._dkim, None  # (after the release: the signer sees the held header too)
        check, self._check = self._check, None
        if event.error is not None:
            ctx.spool.abort(writer)
            r = R.Reply(event.code, event.enhanced, event.text)
            maillog.reject(s.id, s.peer, "DATA", r, f"from=<{txn.sender.address()}> size={event.size}")
            self._final_reply(txn, r)
            return
        if event.received_count > ctx.cfg.smtpd.max_received_headers:
            ctx.spool.abort(writer)
            maillog.reject(
                s.id, s.peer, "DATA", R.TOO_MANY_HOPS, f"from=<{txn.sender.address()}> received={event.received_count}"
            )
            self._final_reply(txn, R.TOO_MANY_HOPS)
            return
        if check is not None and (refusal := await self._authenticate(check, writer, txn)) is not None:
            ctx.spool.abort(writer)
            self._final_reply(txn, refusal)
            return
        params = {k: v or "" for k, v in txn.params.items()}
        if event.eight_bit and "BODY" not in params:
            params["BODY"] = "8BITMIME"  # what we saw, whatever the client declared
        if s.lmtp:
            for r in await lmtp.deliver_now(ctx, writer, txn.sender.address(), txn.lmtp_slots, params, s.id, s.peer):
                s.conn.write(r.encode())  # a mailbox's trouble is not the client's error: not counted
            return
        env = Envelope(
            queue_id=writer.queue_id,
            sender=txn.sender.address(),
            recipients=[
                Recipient(t, original=o if o != t else "", params=txn.rcpt_params.get(o, {}))
                for t, o in txn.targets.items()
            ],
            arrival=time.time(),
            size=writer.size,
            client_address=s.peer_ip,
            client_helo=s.helo_name,
            protocol=self.protocol(txn),
            params=params,
            auth=s.auth_user or "",
        )
        # The order at the end of the data: the inbound checks (above), the
        # milters, the hooks that change mail, then DKIM signing of the final
        # content, then the commit.
        rewritten = False
        milter = txn.milter
        if milter is not None:  # the content steps and the milters' changes (milter/driver.py)
            txn.milter = None
            done = await milter.finish(
                ctx.spool, writer, env, ctx.cfg.smtpd.max_message_size, functools.partial(route_added, s)
            )
            if done.reply is not None:  # a refusal, or the 250 of a discarded message
                s.reply(done.reply)
                return
            assert done.writer is not None
            writer, rewritten = done.writer, done.rewritten
        if s.hooks is not None:  # hooks that change mail (hooks.py): on_message, on_data
            kept = await run_message_hooks(s, writer, env)
            if isinstance(kept, R.Reply):  # a refusal, or the 250 of a discarded message
                s.reply(kept)
                return
            writer, rewritten = kept, rewritten or kept is not writer
        if signer is not None:  # DKIM signing of the final content
            await self._sign(signer, writer, rewritten)
            env.size = writer.size  # (with the signature)
        try:
            await ctx.spool.commit(writer, env)
        except SpoolError as e:
            maillog.spool_problem(f"{writer.queue_id}: {e}")
            s.reply(R.SPOOL_FULL if e.storage_full else R.SPOOL_FAILED)
            return
        ctx.hand_off(env, s.peer, s.auth_user)
        s.junk = 0
        metrics = ctx.metrics
        metrics.inc("smtprs_messages_accepted_total", mode=s.mode)
        metrics.observe("smtprs_acceptance_seconds", time.perf_counter() - started)
        s.reply(R.Reply(250, "2.0.0", f"Ok: queued as {env.queue_id}"))

    def abort(self) -> None:
        """Drop the message being received, if any (the transaction stays)."""
        self.content_since = None
        self._dkim = None
        self._check = None
        txn = self.session.txn
        if txn is not None and txn.milter is not None:  # (the transaction is over, or cannot succeed)
            txn.milter.close_now()
            txn.milter = None
        if txn is not None and txn.writer is not None:
            self.session.ctx.spool.abort(txn.writer)
            txn.writer = None

    # -- helpers ---------------------------------------------------------------
    def _bdat_failure(self) -> R.Reply | None:
        if self._orphan_bdat is not None:
            r, self._orphan_bdat = self._orphan_bdat, None
            return r
        txn = self.session.txn
        if txn is not None:
            return txn.bdat_error
        return None

    def _final_reply(self, txn: Transaction | None, r: R.Reply) -> None:
        """The reply after the data: once, or in LMTP once per accepted RCPT (RFC 2033 4.2)."""
        s = self.session
        if txn is not None and txn.milter is not None:
            txn.milter.close_now()
            txn.milter = None
        for _ in txn.lmtp_slots if s.lmtp and txn is not None and txn.lmtp_slots else (None,):
            s.reply(r)

    def protocol(self, txn: Transaction) -> str:
        """The ``with`` of our Received field: SMTP, ESMTP or UTF8SMTP, then S for
        TLS and A for AUTH (RFC 3848, RFC 6531)."""
        s = self.session
        if txn.smtputf8:
            base = "UTF8LMTP" if s.lmtp else "UTF8SMTP"
        elif s.greeting == "HELO":
            return "SMTP"
        else:
            base = "LMTP" if s.lmtp else "ESMTP"
        return base + ("S" if s.tls else "") + ("A" if s.auth_user else "")

    def _open(self, txn: Transaction, quiet: bool = False) -> bool:
        """A spool writer for the message, our Received field written first;
        False (answered, or for BDAT recorded) if the spool cannot take it."""
        s = self.session
        try:
            writer = s.ctx.spool.create()
        except SpoolError as e:
            r = R.SPOOL_FULL if e.storage_full else R.SPOOL_FAILED
            maillog.spool_problem(f"{s.id}: {e}")
            if quiet:
                txn.bdat_error = r
            else:
                s.reply(r)
            return False
        txn.writer = writer
        self.content_since, self.content_octets = trio.current_time(), 0
        writer.write(self._received_header(writer.queue_id, self.protocol(txn), txn))
        dkim = s.ctx.dkim
        if dkim is not None and not s.lmtp and (s.auth_user or s.ctx.policy.trusted(s.peer_ip)):
            self._dkim = dkim.start()  # fed everything after our Received field
        checker = s.ctx.mailauth
        self._check = None
        if checker is not None and s.mode == "mx" and not s.auth_user:
            self._check = checker.start(s.peer_ip, txn.sender.address(), s.helo_name)
        if s.submission or self._check is not None:
            txn.hold = bytearray()
        return True

    def _received_header(self, qid: str, protocol: str, txn: Transaction) -> bytes:
        """Our trace field (RFC 5321 4.4), folded, CRLF line ends like the content."""
        s = self.session
        helo = "".join(c if 32 < ord(c) < 127 else "?" for c in s.helo_name)[:255] or "unknown"
        lines = [f"Received: from {helo} ([{_address_literal(s.peer_ip)}])"]
        if s.tls:
            lines.append(f"\t(using {s.tls})")
        if s.auth_user and s.ctx.cfg.smtpd.auth.received_user:
            user = "".join(c if 32 < ord(c) < 127 and c not in "()\\" else "?" for c in s.auth_user)
            lines.append(f"\t(Authenticated sender: {user})")
        lines.append(f"\tby {s.ctx.hostname} (smtprs) with {protocol} id {qid}")
        date = _date_now()
        if len(txn.recipients) == 1:
            lines.append(f"\tfor <{txn.recipients[0]}>; {date}")
        else:
            lines.append(f"\t; {date}")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")

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
        """Write the missing Date / Message-ID (submission), then the held content
        (without forged Authentication-Results fields when checking); stream from now on."""
        assert txn.hold is not None
        hold, txn.hold = txn.hold, None
        if self._check is not None:
            header, removed = authres.strip_ours(bytes(hold[:end]), self._check.checker.authserv_id)
            if removed:
                hold = bytearray(header) + hold[end:]
                end = len(header)
        if not self.session.submission:
            self._write(writer, bytes(hold))
            return
        present = {m.group(1).lower() for m in _FIXUP_FIELDS.finditer(hold, 0, end)}
        added = []
        if b"date" not in present:
            added.append(f"Date: {_date_now()}\r\n")
        if b"message-id" not in present:
            added.append(f"Message-ID: <{writer.queue_id}.{secrets.token_hex(6)}@{self.session.ctx.hostname}>\r\n")
        if added:
            self._write(writer, "".join(added).encode())
        self._write(writer, bytes(hold))

    # -- DKIM signing (mailauth/dkim.py) -----------------------------------------
    def _write(self, writer: Writer, data: bytes) -> None:
        """Content into the spool file and, when the message is to be signed or
        checked, to its signer and its checks."""
        writer.write(data)
        if self._dkim is not None:
            self._dkim.feed(data)
        if self._check is not None:
            self._check.feed(data)

    # -- inbound authentication (mailauth/inbound.py) ----------------------------
    async def _authenticate(self, check: MessageCheck, writer: Writer, txn: Transaction) -> R.Reply | None:
        """Run the checks; prepend our Authentication-Results field (above our
        Received field: RFC 8601 4, as a trace field) or give the policy's refusal."""
        s = self.session
        metrics = s.ctx.metrics
        verdict = await check.checker.run(check)
        for res in verdict.results:
            metrics.inc("smtprs_mailauth_results_total", method=res.label, result=res.result)
        maillog.auth_results(writer.queue_id, verdict.summary(), verdict.lookups, verdict.seconds)
        if verdict.reply is not None:
            code, enhanced, text = verdict.reply
            r = R.Reply(code, enhanced, text)
            metrics.inc("smtprs_mailauth_actions_total", action="rejected" if code >= 500 else "deferred")
            maillog.reject(s.id, s.peer, "DATA", r, f"from=<{txn.sender.address()}> {verdict.summary()}")
            return r
        writer.prepend(verdict.field + verdict.quarantine)
        metrics.inc("smtprs_mailauth_actions_total", action="quarantine-header" if verdict.quarantine else "accepted")
        return None

    async def _sign(self, signer: MessageSigner, writer: Writer, rewritten: bool = False) -> None:
        """Sign the message: its DKIM-Signature field goes before everything in the
        spool file, before the commit (so every delivery attempt sends the same
        bytes).  When the content was rewritten (a milter's changes), the
        streamed signer saw the old content: it is dropped and the new
        writer's staged content is signed, read back in chunks.  A message that
        cannot be signed is accepted unsigned, logged."""
        if rewritten:
            try:
                content = writer.staged()
            except OSError as e:
                field, detail = None, f"content not read: {e.strerror or e}"
            else:
                field, detail = await signer.signer.sign_content(content)
        else:
            field, detail = await signer.signature()
        if field is None:
            maillog.dkim_unsigned(writer.queue_id, detail)
            self.session.ctx.metrics.inc("smtprs_dkim_signatures_total", result="unsigned")
            return
        writer.prepend(field)
        maillog.dkim_signed(writer.queue_id, detail)
        self.session.ctx.metrics.inc("smtprs_dkim_signatures_total", result="signed")
