"""SMTP delivery: the client that hands mail to the next MTA.

Reads the spooled content (through the Rust ``DotStuffer``) and the
``[relay]`` configuration; parses replies with the Rust ``ReplyParser``;
writes nothing but the network.  Given a ``DeliveryRequest`` whose targets
share one destination (the scheduler groups them so), it finds the hosts
(deliver/mx.py), and tries them in order until every recipient has a final
answer or no host is left:

- connect (``connect_timeout``), 220 greeting, EHLO (HELO when EHLO is
  refused), STARTTLS when offered and the TLS level is not ``none`` (``may``
  does not check the certificate and falls back to plain text when the
  handshake fails; ``verify`` requires STARTTLS and a certificate valid for
  the host name, or the host is skipped), AUTH PLAIN or LOGIN when the hop
  carries the relayhost credentials (over TLS only, unless
  ``auth_require_tls`` is off);
- one transaction for all the recipients (``transaction_recipient_limit`` at a
  time): MAIL with SIZE, BODY, SMTPUTF8 and the DSN parameters RET/ENVID when
  the peer offers them, RCPT (with NOTIFY/ORCPT), DATA; pipelined when the
  peer offers PIPELINING (RFC 2920);
- a message over the peer's SIZE fails at once (5.3.4), as does an 8-bit
  message to a peer without 8BITMIME (5.6.3) and a UTF-8 envelope or header
  to a peer without SMTPUTF8 (5.6.7): these do not improve with retries;
- a connection failure, a 4xx or 421 greeting, a 4xx reply or a lost
  connection moves the recipients still open to the next host; 5xx replies
  are final for the recipients (or the message) they answer.

Timeouts are RFC 5321 4.5.3.2's, configurable.  After a delivery the
connection waits ``idle_timeout`` seconds for another message to the same
destination (checked with RSET before reuse); at most
``destination_concurrency`` deliveries run at once per destination.

Sending, reading replies, the content and QUIT are deliver/client.py's,
shared with the LMTP client; ``Connection`` adds what SMTP knows of its peer
(EHLO keywords, TLS, the host).

DANE (``dane.mode``, deliver/dane.py): for a host reached by MX through
DNSSEC-validated records, ``_open`` asks dane.py first what TLS the host
needs; with TLSA records STARTTLS is required (no plain-text fallback) and,
after the handshake, the certificate must match them, else the host is
deferred (4.7.4 no STARTTLS, 4.7.5 mismatch or a failed TLSA lookup).  Each
DANE-governed session is counted for TLS-RPT (``smtprs_tls_rpt_sessions_total``,
policy_type="tlsa").

Credentials are sent only in AUTH and never logged; neither is message
content.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl

import trio

from .. import _core, maillog
from ..config import Config
from ..hops import RemoteHop
from ..metrics import Metrics
from . import dane
from .base import DeliveryRequest, Outcome, Status, Target
from .client import CHUNK, ClientConnection, Lost
from .mtasts import Lookup, MtaSts, tls_level
from .mx import DnsFailure, Host, Resolver
from .pool import ConnectionPool

QUIT_TIMEOUT = 5.0


class _HostError(Exception):
    """This host cannot take the message now: try the next one (temporary)."""

    def __init__(
        self, enhanced: str, detail: str, reply: _core.Reply | None = None, *, rpt: str = "", counted: bool = False
    ) -> None:
        super().__init__(detail)
        self.enhanced = enhanced
        self.detail = detail
        self.reply = reply
        self.rpt = rpt  # a TLS failure: RFC 8460's result type (starttls-not-supported, ...)
        self.counted = counted  # ... already counted for TLS-RPT, under DANE (not again under MTA-STS)


class Connection(ClientConnection):
    """One SMTP client connection, after the greeting and EHLO."""

    def __init__(self, stream: trio.abc.Stream, host: Host, port: int) -> None:
        super().__init__(stream)
        self.host = host
        self.port = port
        self.ext: dict[str, str] = {}  # EHLO keywords (upper case) -> parameters
        self.esmtp = False
        self.tls = False
        self.tls_verified = False
        self.dane = False  # DANE governed its TLS (and counted it for TLS-RPT)
        self.messages = 0

    @property
    def relay(self) -> str:
        return f"{self.host.name}[{self.host.ip}]:{self.port}"

    async def close(self, quit: bool = True) -> None:
        """QUIT (``QUIT_TIMEOUT`` for all of it) unless ``quit`` is false, then close."""
        if quit:
            with trio.move_on_after(QUIT_TIMEOUT):
                await self.quit(QUIT_TIMEOUT)
        await self.abort()


def show(reply: _core.Reply) -> str:
    """A reply on one line: ``550 5.1.1 text / more text``."""
    enh = f" {reply.enhanced}" if reply.enhanced else ""
    text = " / ".join(line for line in reply.lines if line)
    return f"{reply.code}{enh} {text}".rstrip()


def enhanced_of(reply: _core.Reply) -> str:
    if reply.enhanced and reply.enhanced[0] == str(reply.code)[0]:
        return reply.enhanced
    return f"{str(reply.code)[0]}.0.0"


def _ascii(text: str) -> bool:
    return text.isascii()


class SmtpAgent:
    name = "smtp"

    def __init__(self, cfg: Config, hostname: str, resolver: Resolver | None = None) -> None:
        self.cfg = cfg
        self.r = cfg.relay
        self.hostname = hostname
        self.resolver = resolver or Resolver(
            cfg.dns, prefer=cfg.relay.address_preference, dnssec=cfg.dane.mode != "off"
        )
        self.metrics: Metrics | None = None  # set by the composition root: the TLS-RPT counter
        self.pool: ConnectionPool[Connection] = ConnectionPool()
        self._ctx_may = ssl.create_default_context()
        self._ctx_may.check_hostname = False
        self._ctx_may.verify_mode = ssl.CERT_NONE
        ca = cfg.tls_ca_path
        self._ctx_verify = ssl.create_default_context(cafile=str(ca) if ca else None)
        # MTA-STS (deliver/mtasts.py) for delivery by MX; TLS-RPT figures go to ``metrics`` (set by the daemon)
        self.mtasts = MtaSts(cfg, self.resolver) if cfg.mta_sts.enabled else None
        # figures for tests and metrics
        self.connections_opened = 0

    # -- life cycle ------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery in which idle connections wait (pool.py); closes them on exit."""
        await self.pool.run(task_status=task_status)

    @property
    def connections_reused(self) -> int:
        return self.pool.reused

    # -- the contract ----------------------------------------------------------
    async def deliver(self, request: DeliveryRequest) -> list[Outcome]:
        groups: dict[str, list[Target]] = {}
        for t in request.targets:
            assert isinstance(t.hop, RemoteHop)
            groups.setdefault(t.hop.destination, []).append(t)
        outcomes: list[Outcome] = []
        for targets in groups.values():
            outcomes += await self._deliver_destination(request, targets)
        return outcomes

    async def _deliver_destination(self, request: DeliveryRequest, targets: list[Target]) -> list[Outcome]:
        hop = targets[0].hop
        assert isinstance(hop, RemoteHop)
        async with self.pool.limit(hop.destination, self.r.destination_concurrency):
            want = self.cfg.dane.mode != "off"
            if getattr(self.resolver, "dnssec", want) != want:  # follows a reload (a resolver not ours: left be)
                self.resolver.set_dnssec(want)
            try:
                hosts = await self.resolver.hosts(hop.host, hop.mx)
            except DnsFailure as e:
                status: Status = "failed" if e.permanent else "deferred"
                return [
                    Outcome(t.index, status, f"{e.code} {e.enhanced} {e.text}", "none", e.enhanced) for t in targets
                ]
            sts = await self.mtasts.lookup(hop.domain) if self.mtasts and hop.mx and hop.host == hop.domain else None
            if sts is not None and sts.enforced:
                allowed = [h for h in hosts if sts.allows(h.name)]
                if not allowed:  # RFC 8461 4.1, 5: never a host the policy does not list
                    names = ", ".join(dict.fromkeys(h.name for h in hosts))
                    detail = f"no MX host of {hop.domain} ({names}) is listed in its MTA-STS policy (mode enforce)"
                    self._tls_rpt(request.queue_id, sts, names, "validation-failure", detail)
                    return [Outcome(t.index, "deferred", f"451 4.7.5 {detail}", "none", "4.7.5") for t in targets]
                hosts = allowed
            final: dict[int, Outcome] = {}
            last: dict[int, Outcome] = {}
            pending = list(targets)
            conn = await self.pool.checkout(hop.destination, self.r.command_timeout)
            if (
                conn is not None
                and sts is not None
                and sts.enforced
                and not (conn.tls_verified and sts.allows(conn.host.name))
            ):
                await conn.close()  # opened before the policy was known: not good enough now
                conn = None
            if conn is not None:
                hosts = [conn.host, *[h for h in hosts if h.ip != conn.host.ip]]
            for host in hosts:
                if not pending:
                    break
                if conn is None or conn.host.ip != host.ip:
                    try:
                        conn = await self._open_for(request.queue_id, host, hop, sts)
                    except _HostError as e:
                        relay = f"{host.name}[{host.ip}]:{hop.port}"
                        for t in pending:
                            last[t.index] = Outcome(
                                t.index, "deferred", e.detail, relay, e.enhanced, *self._remote(host, e.reply)
                            )
                        maillog.relay_problem(request.queue_id, relay, e.detail)
                        conn = None
                        continue
                pending, usable = await self._send(conn, request, hop, pending, final, last)
                if usable:
                    await self.pool.release(hop.destination, conn, self.r.idle_timeout)
                else:
                    await conn.close(quit=False)
                conn = None
            for t in pending:
                final[t.index] = last.get(t.index) or Outcome(
                    t.index, "deferred", f"451 4.4.1 no mail exchanger of {hop.host} could be reached", "none", "4.4.1"
                )
            return [final[t.index] for t in targets]

    @staticmethod
    def _remote(host: Host, reply: _core.Reply | None) -> tuple[str, str]:
        return (host.name, show(reply)) if reply is not None else ("", "")

    # -- connection set-up -----------------------------------------------------
    async def _open_for(self, qid: str, host: Host, hop: RemoteHop, sts: Lookup | None) -> Connection:
        """A connection to ``host`` at the TLS level its domain's MTA-STS policy asks for (the one
        place where MTA-STS chooses it), with its TLS-RPT result recorded; without MTA-STS (a
        relayhost, mta_sts.enabled off) simply ``_open``."""
        if sts is None:
            return await self._open(host, hop)
        policy = sts.policy
        if policy is not None and policy.mode == "testing" and not policy.matches(host.name):
            self._tls_rpt(
                qid, sts, host.name, "validation-failure", "MX host not listed in the MTA-STS policy (testing)"
            )
            return await self._open(host, hop)
        level = tls_level(hop.tls, policy)
        try:
            conn = await self._open(host, hop, level=level)
        except _HostError as e:
            if not e.rpt or e.counted:
                raise  # no TLS session was tried (connect, greeting, EHLO), or DANE governed and counted it
            self._tls_rpt(qid, sts, host.name, e.rpt, e.detail)
            if sts.enforced:
                raise _HostError(e.enhanced, f"{e.detail} (MTA-STS policy of {sts.domain}: enforce)", e.reply) from None
            if level == hop.tls:
                raise
            return await self._open(host, hop)  # testing (RFC 8461 5): deliver as without the policy
        if conn.dane:
            pass  # DANE governed the session and counted it (policy_type tlsa)
        elif policy is None and sts.failure:
            self._tls_rpt(qid, sts, host.name, sts.failure, sts.detail)
        elif conn.tls:
            self._tls_rpt(qid, sts, host.name, "", "")
        else:
            self._tls_rpt(qid, sts, host.name, "starttls-not-supported", f"{conn.relay} without TLS")
        return conn

    def _tls_rpt(self, qid: str, sts: Lookup, mx_host: str, failure: str, detail: str) -> None:
        """Count one session as RFC 8460 would report it (``failure`` empty: success); log the
        failures of domains with a policy."""
        if self.metrics is not None:
            if failure:
                self.metrics.inc(
                    "smtprs_tls_rpt_sessions_total", policy_type=sts.policy_type, result="failure", failure=failure
                )
            else:
                self.metrics.inc("smtprs_tls_rpt_sessions_total", policy_type=sts.policy_type, result="success")
        if failure and sts.policy_type == "sts":
            maillog.tls_rpt_failure(qid, sts.policy_type, sts.domain, mx_host, failure, detail)

    async def _open(self, host: Host, hop: RemoteHop, *, tls: bool = True, level: str = "") -> Connection:
        """A connection to ``host``, at ``level`` (MTA-STS's, else the hop's), unless DANE governs it."""
        relay = f"{host.name}[{host.ip}]:{hop.port}"
        level = level or hop.tls
        policy = await self._dane_policy(host, hop, relay, level)  # the one place DANE chooses the TLS requirement
        stream = await self._connect(host, hop.port, relay)
        self.connections_opened += 1
        conn = Connection(stream, host, hop.port)
        stage = "receiving the initial server greeting"
        try:
            greeting = await conn.read(self.r.greeting_timeout)
            if greeting.code != 220:
                raise _HostError(
                    "4.4.1" if greeting.code >= 500 else enhanced_of(greeting),
                    f"host {relay} refused to talk to me: {show(greeting)}",
                    greeting,
                )
            stage = "sending EHLO"
            await self._hello(conn)
            level = "dane" if policy is not None else level
            if level != "none" and tls and "STARTTLS" in conn.ext:
                stage = "starting TLS"
                try:
                    await self._starttls(conn, level, policy)
                except _HostError as e:
                    if policy is not None:
                        self._dane_rpt(relay, e.rpt or dane.VALIDATION_FAILURE, e.detail)
                        e.counted = True
                    if level in ("verify", "dane"):
                        raise
                    # opportunistic: a failed handshake is no reason not to deliver
                    await conn.close(quit=False)
                    maillog.relay_tls_fallback(relay)
                    return await self._open(host, hop, tls=False, level=level)
                stage = "sending EHLO after STARTTLS"
                await self._hello(conn)
            elif level == "verify":
                raise _HostError(
                    "4.7.4", f"TLS is required, but was not offered by host {relay}", rpt="starttls-not-supported"
                )
            elif policy is not None:
                detail = (
                    f"TLS is required (DANE TLSA records at {policy.tlsa_name}), but was not offered by host {relay}"
                )
                self._dane_rpt(relay, dane.STARTTLS_NOT_SUPPORTED, detail)
                raise _HostError("4.7.4", detail, rpt=dane.STARTTLS_NOT_SUPPORTED, counted=True)
            if hop.auth:
                stage = "authenticating"
                await self._auth(conn)
        except Lost as e:
            await conn.close(quit=False)
            raise _HostError("4.4.2", f"lost connection with {relay} while {stage}: {e}") from None
        except _HostError:
            await conn.close(quit=True)
            raise
        return conn

    async def _dane_policy(self, host: Host, hop: RemoteHop, relay: str, level: str) -> dane.HostPolicy | None:
        """DANE's word on this host: None when DANE does not govern it (TLS at
        ``level``: the hop's, or MTA-STS's); raises _HostError to defer it.
        DANE applies to MX hops only, and never where ``relay.tls_policy`` says
        ``none``.  Where it governs, it overrides MTA-STS (RFC 8461 2: an
        MTA-STS policy must not override a failing DANE validation)."""
        if not hop.mx or hop.tls == "none" or self.cfg.dane.mode == "off":
            return None
        try:
            policy = await dane.policy_for(self.resolver, self.cfg.dane.mode, host, hop.port, hop.domain)
        except dane.DaneFailure as e:
            self._dane_rpt(relay, e.failure, e.detail)
            raise _HostError(e.enhanced, e.detail, rpt=e.failure, counted=True) from None
        if policy is not None and not policy.authenticated and level == "verify":
            return None  # TLSA records, none usable: "verify" asks more than DANE's "encrypt" would
        return policy

    def _dane_rpt(self, relay: str, failure: str, detail: str) -> None:
        """One DANE-governed session's result for TLS-RPT (RFC 8460): the counter
        (labelled as ``_tls_rpt`` labels MTA-STS's) and, for a failure, a log line."""
        if self.metrics is not None:
            if failure:
                self.metrics.inc("smtprs_tls_rpt_sessions_total", policy_type="tlsa", result="failure", failure=failure)
            else:
                self.metrics.inc("smtprs_tls_rpt_sessions_total", policy_type="tlsa", result="success")
        if failure:
            maillog.tls_policy_failure(relay, "tlsa", failure, detail)

    async def _connect(self, host: Host, port: int, relay: str) -> trio.SocketStream:
        """A TCP connection to one address (the MX order is ours, so no Happy Eyeballs here)."""
        family = socket.AF_INET6 if ":" in host.ip else socket.AF_INET
        sock = trio.socket.socket(family, socket.SOCK_STREAM)
        try:
            with trio.fail_after(self.r.connect_timeout):
                await sock.connect((host.ip, port))
        except trio.TooSlowError:
            sock.close()
            raise _HostError("4.4.1", f"connect to {relay}: timed out") from None
        except OSError as e:
            sock.close()
            raise _HostError("4.4.1", f"connect to {relay}: {e.strerror or e}") from None
        except BaseException:
            sock.close()
            raise
        return trio.SocketStream(sock)

    async def _hello(self, conn: Connection) -> None:
        t = self.r.command_timeout
        reply = await conn.command(f"EHLO {self.hostname}", t)
        if reply.code == 250:
            conn.esmtp = True
            conn.ext = {}
            for line in reply.lines[1:]:
                keyword, _, value = line.strip().partition(" ")
                if keyword:
                    conn.ext[keyword.upper()] = value.strip()
            return
        if reply.code >= 500:  # no ESMTP: plain SMTP, no extensions
            reply = await conn.command(f"HELO {self.hostname}", t)
            if reply.code == 250:
                conn.esmtp = False
                conn.ext = {}
                return
        raise _HostError(
            enhanced_of(reply) if reply.code < 500 else "4.4.1",
            f"host {conn.relay} refused to talk to me: {show(reply)} (in reply to EHLO/HELO)",
            reply,
        )

    async def _starttls(self, conn: Connection, level: str, policy: dane.HostPolicy | None = None) -> None:
        reply = await conn.command("STARTTLS", self.r.command_timeout)
        if reply.code != 220:
            raise _HostError(
                "4.7.4" if level in ("verify", "dane") else enhanced_of(reply),
                f"host {conn.relay} refused STARTTLS: {show(reply)}",
                reply,
                rpt="starttls-not-supported",
            )
        verify = level == "verify"
        ctx = self._ctx_verify if verify else self._ctx_may
        server_name: str | None = conn.host.name  # under DANE: the TLSA base domain, RFC 7672 8.1
        if not verify and _is_ip(conn.host.name):
            server_name = None
        tls_stream = trio.SSLStream(conn.stream, ctx, server_hostname=server_name, https_compatible=False)
        try:
            with trio.fail_after(self.r.command_timeout):
                await tls_stream.do_handshake()
        except trio.TooSlowError:
            raise _HostError("4.7.5", f"TLS handshake with {conn.relay} timed out", rpt="validation-failure") from None
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as e:
            cause = e.__cause__ or e
            raise _HostError(
                "4.7.5", f"TLS handshake with {conn.relay} failed: {cause}", rpt=_rpt_result(cause)
            ) from None
        if policy is not None and policy.authenticated:
            verdict = dane.check(policy, tls_stream.getpeercert(binary_form=True), dane.peer_chain(tls_stream))  # fmt: skip
            if verdict.matched is None:
                conn.replace_stream(tls_stream)  # the QUIT that follows goes inside TLS, not in clear
                raise _HostError(
                    "4.7.5", f"DANE verification of {conn.relay} failed: {verdict.detail}", rpt=verdict.failure
                )
            maillog.relay_dane_verified(conn.relay, policy.tlsa_name, verdict.matched.text())
            verify = True
        elif policy is not None:
            maillog.relay_dane_encrypt(conn.relay, policy.tlsa_name)
        if policy is not None:
            self._dane_rpt(conn.relay, "", "")
            conn.dane = True
        conn.replace_stream(tls_stream)  # nothing the server sent in clear may count after the handshake
        conn.tls = True
        conn.tls_verified = verify
        obj = tls_stream.version() or "TLS"
        cipher = tls_stream.cipher()
        maillog.relay_tls_established(conn.relay, verify, obj, cipher[0] if cipher else "")

    async def _auth(self, conn: Connection) -> None:
        user, password = self.r.auth_username, self.r.auth_password
        mechanisms = conn.ext.get("AUTH", "").upper().split()
        if not mechanisms:
            maillog.warning(f"relayhost {conn.relay} offers no AUTH: sending without authentication")
            return
        if not conn.tls and self.r.auth_require_tls:
            raise _HostError(
                "4.7.0",
                f"not sending credentials to {conn.relay} over a connection without TLS (relay.auth_require_tls)",
            )
        t = self.r.command_timeout
        if "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
            reply = await conn.command(f"AUTH PLAIN {token}", t)
        elif "LOGIN" in mechanisms:
            reply = await conn.command("AUTH LOGIN", t)
            if reply.code == 334:
                reply = await conn.command(base64.b64encode(user.encode()).decode(), t)
            if reply.code == 334:
                reply = await conn.command(base64.b64encode(password.encode()).decode(), t)
        else:
            raise _HostError(
                "4.7.0",
                f"relayhost {conn.relay} offers no AUTH mechanism we speak (PLAIN, LOGIN): {' '.join(mechanisms)}",
            )
        if reply.code != 235:
            if reply.code == 334:  # a challenge we cannot answer: cancel the exchange
                await conn.command("*", t)
            # a refused login is a configuration problem: defer, never bounce (as Postfix does)
            raise _HostError("4.7.0", f"SASL authentication to {conn.relay} as {user} failed: {show(reply)}", reply)
        maillog.relay_auth_ok(conn.relay, user)

    # -- the message -----------------------------------------------------------
    async def _send(
        self,
        conn: Connection,
        request: DeliveryRequest,
        hop: RemoteHop,
        pending: list[Target],
        final: dict[int, Outcome],
        last: dict[int, Outcome],
    ) -> tuple[list[Target], bool]:
        """Send the message to ``pending`` over ``conn``; record outcomes.
        Returns the recipients still open (for the next host) and whether the
        connection can be used again."""
        problem = await self._message_problem(conn, request, pending)
        if problem is not None:
            enhanced, detail = problem
            for t in pending:
                final[t.index] = Outcome(t.index, "failed", detail, conn.relay, enhanced, conn.host.name)
            return [], True
        still: list[Target] = []
        limit = self.r.transaction_recipient_limit
        usable = True
        for start in range(0, len(pending), limit):
            batch = pending[start : start + limit]
            if not usable:
                still += batch
                continue
            try:
                open_ones = await self._transaction(conn, request, batch, final, last)
                still += open_ones
                conn.messages += 1
            except Lost as e:
                usable = False
                for t in batch:
                    if t.index not in final:
                        last[t.index] = Outcome(
                            t.index,
                            "deferred",
                            f"lost connection with {conn.relay}: {e}",
                            conn.relay,
                            "4.4.2",
                            conn.host.name,
                        )
                still += [t for t in batch if t.index not in final]
        return still, usable

    async def _message_problem(
        self, conn: Connection, request: DeliveryRequest, pending: list[Target]
    ) -> tuple[str, str] | None:
        """Why this peer can never take this message (permanent), or None."""
        ext = conn.ext
        limit = ext.get("SIZE", "")
        if limit.isdigit() and int(limit) > 0 and request.size > int(limit):
            return "5.3.4", f"message size {request.size} exceeds size limit {limit} of server {conn.relay}"
        utf8_envelope = not _ascii(request.sender) or any(not _ascii(t.address) for t in pending)
        eight_bit = request.params.get("BODY", "").upper() == "8BITMIME"
        if (
            "SMTPUTF8" not in ext
            and "SMTPUTF8" in request.params
            and (utf8_envelope or (eight_bit and await _header_8bit(request)))
        ):
            return "5.6.7", f"SMTPUTF8 is required, but was not offered by host {conn.relay}"
        if eight_bit and "8BITMIME" not in ext:
            return "5.6.3", f"8-bit message content, but host {conn.relay} does not offer 8BITMIME"
        return None

    async def _transaction(
        self,
        conn: Connection,
        request: DeliveryRequest,
        batch: list[Target],
        final: dict[int, Outcome],
        last: dict[int, Outcome],
    ) -> list[Target]:
        """One MAIL/RCPT/DATA exchange; returns the recipients left open (4xx)."""
        r = self.r
        relay, name = conn.relay, conn.host.name
        pipelining = "PIPELINING" in conn.ext
        dsn = "DSN" in conn.ext
        mail = mail_command(conn, request)
        rcpts = [rcpt_command(conn, t) for t in batch]

        def temp(t: Target, reply: _core.Reply, what: str) -> None:
            last[t.index] = Outcome(
                t.index,
                "deferred",
                f"host {relay} said: {show(reply)} (in reply to {what})",
                relay,
                enhanced_of(reply),
                name,
                show(reply),
            )

        def perm(t: Target, reply: _core.Reply, what: str) -> None:
            final[t.index] = Outcome(
                t.index,
                "failed",
                f"host {relay} said: {show(reply)} (in reply to {what})",
                relay,
                enhanced_of(reply),
                name,
                show(reply),
            )

        if pipelining:
            await conn.send(("\r\n".join([mail, *rcpts, "DATA"]) + "\r\n").encode("utf-8"), r.command_timeout)
            mail_reply = await conn.read(r.command_timeout)
            rcpt_replies = [await conn.read(r.command_timeout) for _ in batch]
            data_reply: _core.Reply | None = await conn.read(r.data_init_timeout)
        else:
            mail_reply = await conn.command(mail, r.command_timeout)
            rcpt_replies = []
            data_reply = None
            if mail_reply.code == 250:
                for line in rcpts:
                    rcpt_replies.append(await conn.command(line, r.command_timeout))

        open_ones: list[Target] = []
        accepted: list[Target] = []
        if mail_reply.code != 250:
            for t in batch:
                (perm if mail_reply.code >= 500 else temp)(t, mail_reply, "MAIL FROM command")
            if mail_reply.code < 500:
                open_ones = list(batch)
        else:
            for t, reply in zip(batch, rcpt_replies):
                if 200 <= reply.code < 300:
                    accepted.append(t)
                elif reply.code >= 500:
                    perm(t, reply, "RCPT TO command")
                else:
                    temp(t, reply, "RCPT TO command")
                    open_ones.append(t)
        if not pipelining and accepted:
            data_reply = await conn.command("DATA", r.data_init_timeout)
        if data_reply is not None and data_reply.code == 354 and not accepted:
            # a server that started DATA for no recipient: end it empty
            await conn.send(b".\r\n", r.data_block_timeout)
            await conn.read(r.data_end_timeout)
            data_reply = None
        if not accepted:
            await self._rset(conn)
            return open_ones
        assert data_reply is not None
        if data_reply.code != 354:
            for t in accepted:
                (perm if data_reply.code >= 500 else temp)(t, data_reply, "DATA command")
            await self._rset(conn)
            return open_ones + ([] if data_reply.code >= 500 else accepted)
        await self._send_content(conn, request)
        end = await conn.read(r.data_end_timeout)
        if 200 <= end.code < 300:
            for t in accepted:
                final[t.index] = Outcome(
                    t.index,
                    "delivered",
                    f"{relay} said: {show(end)}",
                    relay,
                    enhanced_of(end),
                    name,
                    show(end),
                    dsn_relayed=dsn and bool(t.params.get("NOTIFY")),
                )
            return open_ones
        for t in accepted:
            (perm if end.code >= 500 else temp)(t, end, "end of DATA command")
        await self._rset(conn)
        return open_ones + ([] if end.code >= 500 else accepted)

    async def _send_content(self, conn: Connection, request: DeliveryRequest) -> None:
        with request.content.open() as f:
            await conn.send_content(f, self.r.data_block_timeout)

    async def _rset(self, conn: Connection) -> None:
        reply = await conn.command("RSET", self.r.command_timeout)
        if reply.code != 250:
            raise Lost(f"RSET refused: {show(reply)}")


def mail_command(conn: Connection, request: DeliveryRequest) -> str:
    """MAIL FROM with the parameters the message has and the server offers."""
    ext = conn.ext
    params = []
    if "SIZE" in ext:
        params.append(f"SIZE={request.size}")
    body = request.params.get("BODY", "").upper()
    if body in ("8BITMIME", "7BIT") and "8BITMIME" in ext:
        params.append(f"BODY={body}")
    if "SMTPUTF8" in request.params and "SMTPUTF8" in ext:
        params.append("SMTPUTF8")
    if "DSN" in ext:
        if request.params.get("RET"):
            params.append(f"RET={request.params['RET']}")
        if request.params.get("ENVID"):
            params.append(f"ENVID={_core.xtext_encode(request.params['ENVID'])}")
    return f"MAIL FROM:<{request.sender}>" + "".join(" " + p for p in params)


def rcpt_command(conn: Connection, t: Target) -> str:
    """RCPT TO with the DSN parameters, when the server offers DSN."""
    params = []
    if "DSN" in conn.ext:
        if t.params.get("NOTIFY"):
            params.append(f"NOTIFY={t.params['NOTIFY']}")
        if t.params.get("ORCPT"):
            kind, _, addr = t.params["ORCPT"].partition(";")
            params.append(f"ORCPT={kind};{_core.xtext_encode(addr)}")
    return f"RCPT TO:<{t.address}>" + "".join(" " + p for p in params)


# OpenSSL's X509_V_ERR_* codes -> RFC 8460 4.3's result types
_VERIFY_RESULTS = {
    62: "certificate-host-mismatch",  # X509_V_ERR_HOSTNAME_MISMATCH
    64: "certificate-host-mismatch",  # X509_V_ERR_IP_ADDRESS_MISMATCH
    10: "certificate-expired",  # X509_V_ERR_CERT_HAS_EXPIRED
    2: "certificate-not-trusted",  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
    18: "certificate-not-trusted",  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
    19: "certificate-not-trusted",  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    20: "certificate-not-trusted",  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: "certificate-not-trusted",  # X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
}


def _rpt_result(error: BaseException) -> str:
    """RFC 8460's result type for a failed TLS handshake."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return _VERIFY_RESULTS.get(error.verify_code, "validation-failure")
    return "validation-failure"


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


async def _header_8bit(request: DeliveryRequest) -> bool:
    """Does the header block hold non-ASCII octets (UTF-8 headers, RFC 6532)?"""
    with request.content.open() as f:
        seen = b""
        while chunk := await trio.to_thread.run_sync(f.read, CHUNK):
            seen += chunk
            end = seen.find(b"\r\n\r\n")
            head = seen if end < 0 else seen[:end]
            if not head.isascii():
                return True
            if end >= 0:
                return False
            seen = seen[-3:]
    return False
