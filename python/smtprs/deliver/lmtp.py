"""LMTP delivery (RFC 2033): hand local mailboxes to an LMTP server.

One session per request and server (``local.lmtp``: ``host:port`` or
``unix:/path``): LHLO, MAIL FROM, one RCPT TO per recipient, DATA, the
content dot-stuffed by the core's ``DotStuffer``, and then -- the point of
LMTP -- one reply per accepted recipient, in RCPT order.  Each recipient's
outcome is its own: 2xx delivered, 4xx deferred, 5xx failed, so one mailbox
can be delivered while another (over quota, say) is deferred.

With PIPELINING advertised, MAIL, the RCPTs and DATA go in one write
(RFC 2920).  BODY=8BITMIME and SMTPUTF8 are passed on when the envelope has
them and the server offers them; a message that needs SMTPUTF8 and a server
without it fail (5.6.7).

The connection itself (sending, reading replies, the content, QUIT) is
deliver/client.py's, shared with the SMTP client; this module owns the
dialog and the outcomes.

Errors: a connection that cannot be made, a timeout (``local.lmtp_timeout``
for the connection, for each send and for each reply), or a connection lost
before a recipient's reply defer that recipient.  A recipient whose final
reply was lost after the data was sent may be delivered twice by the retry:
LMTP is at-least-once there, as every MTA is.
"""

from __future__ import annotations

import trio

from .. import _core
from ..config import parse_socket_address
from ..hops import LmtpMailbox
from .base import DeliveryRequest, Outcome, Status, Target
from .client import ClientConnection, Lost


def status_of(code: int) -> Status:
    if 200 <= code < 300:
        return "delivered"
    if 500 <= code < 600:
        return "failed"
    return "deferred"


def _text(reply: _core.Reply) -> str:
    enhanced = f"{reply.enhanced} " if reply.enhanced else ""
    return f"{reply.code} {enhanced}{' '.join(reply.lines)}".strip()


class _Client(ClientConnection):
    """A connection to an LMTP server, in this agent's words when it breaks."""

    SEND_BROKEN = "connection lost while sending: {e}"
    CLOSED = "connection closed by the LMTP server"
    NO_REPLY = "no reply within {timeout:g}s"
    READ_BROKEN = "connection lost: {e}"


class LmtpAgent:
    name = "lmtp"

    def __init__(self, hostname: str, *, timeout: float = 300.0) -> None:
        self.hostname = hostname
        self.timeout = timeout

    async def deliver(self, request: DeliveryRequest) -> list[Outcome]:
        by_server: dict[str, list[Target]] = {}
        for t in request.targets:
            assert isinstance(t.hop, LmtpMailbox)
            by_server.setdefault(t.hop.server, []).append(t)
        outcomes: list[Outcome] = []
        for server, targets in by_server.items():
            outcomes += await self._session(request, server, targets)
        return outcomes

    async def _connect(self, server: str) -> trio.abc.Stream:
        where = parse_socket_address(server, "local.lmtp")
        with trio.fail_after(self.timeout):
            if isinstance(where, str):
                return await trio.open_unix_socket(where)
            host, port = where
            return await trio.open_tcp_stream(host, port)

    async def _session(self, request: DeliveryRequest, server: str, targets: list[Target]) -> list[Outcome]:
        done: dict[int, Outcome] = {}

        def settle(t: Target, status: Status, detail: str) -> None:
            if t.index not in done:
                done[t.index] = Outcome(t.index, status, detail, server)

        try:
            stream = await self._connect(server)
        except (OSError, trio.TooSlowError) as e:
            why = "timeout" if isinstance(e, trio.TooSlowError) else (e.strerror or str(e))
            return [
                Outcome(t.index, "deferred", f"451 4.4.1 cannot connect to LMTP server {server}: {why}", server)
                for t in targets
            ]
        try:
            async with stream:
                await self._transaction(_Client(stream), request, targets, settle)
        except Lost as e:
            for t in targets:
                settle(t, "deferred", f"451 4.4.2 LMTP session with {server} broke: {e}")
        return [done[t.index] for t in targets]

    async def _transaction(self, c: _Client, request: DeliveryRequest, targets: list[Target], settle) -> None:  # type: ignore[no-untyped-def]
        def all_get(reply: _core.Reply, what: str) -> None:
            # a refused greeting or LHLO is the server's trouble, not the recipients': retry
            status = status_of(reply.code) if what == "MAIL FROM" else "deferred"
            for t in targets:
                settle(t, status, f"{_text(reply)} (in reply to {what})")

        timeout = self.timeout
        greeting = await c.read(timeout)
        if greeting.code != 220:
            all_get(greeting, "the greeting")
            return
        lhlo = await c.command(f"LHLO {self.hostname}", timeout)
        if lhlo.code != 250:
            all_get(lhlo, "LHLO")
            return
        caps = {line.split(" ", 1)[0].upper() for line in lhlo.lines[1:]}
        params = ""
        if request.params.get("BODY") == "8BITMIME" and "8BITMIME" in caps:
            params += " BODY=8BITMIME"
        if "SMTPUTF8" in request.params:
            if "SMTPUTF8" not in caps:
                for t in targets:
                    settle(t, "failed", "550 5.6.7 the LMTP server does not support SMTPUTF8")
                await c.quit(timeout)
                return
            params += " SMTPUTF8"
        if "SIZE" in caps:
            params += f" SIZE={request.content.length}"
        commands = [f"MAIL FROM:<{request.sender}>{params}"]
        commands += [f"RCPT TO:<{t.hop.rcpt}>" for t in targets]  # type: ignore[union-attr]
        commands.append("DATA")
        if "PIPELINING" in caps:
            await c.send("".join(f"{cmd}\r\n" for cmd in commands).encode("utf-8"), timeout)
            replies = [await c.read(timeout) for _ in commands]
        else:
            replies = []
            for cmd in commands:
                replies.append(await c.command(cmd, timeout))
                if replies[0].code >= 300:
                    break
        mail = replies[0]
        if mail.code >= 300:
            all_get(mail, "MAIL FROM")
            await c.quit(timeout)
            return
        accepted: list[Target] = []
        for t, r in zip(targets, replies[1 : 1 + len(targets)]):
            if r.code >= 300:
                settle(t, status_of(r.code), f"{_text(r)} (in reply to RCPT TO)")
            else:
                accepted.append(t)
        data = replies[-1]
        if not accepted:
            await c.quit(timeout)
            return
        if data.code != 354:
            for t in accepted:
                settle(t, "failed" if data.code >= 500 else "deferred", f"{_text(data)} (in reply to DATA)")
            await c.quit(timeout)
            return
        src = await trio.to_thread.run_sync(request.content.open)
        try:
            await c.send_content(src, timeout)
        finally:
            src.close()
        for t in accepted:  # RFC 2033 4.2: one reply per accepted recipient, in order
            r = await c.read(timeout)
            settle(t, status_of(r.code), _text(r))
        await c.quit(timeout)
