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

Errors: a connection that cannot be made, a timeout (``local.lmtp_timeout``
for the connection and for each reply), or a connection lost before a
recipient's reply defer that recipient.  A recipient whose final reply was
lost after the data was sent may be delivered twice by the retry: LMTP is
at-least-once there, as every MTA is.
"""

from __future__ import annotations

import trio

from .. import _core
from ..config import parse_socket_address
from ..errors import ParseError
from ..hops import LmtpMailbox
from .base import DeliveryRequest, Outcome, Status, Target

CHUNK = 256 * 1024


class LmtpError(Exception):
    """The session with the LMTP server broke (connection, timeout, garbage)."""


def status_of(code: int) -> Status:
    if 200 <= code < 300:
        return "delivered"
    if 500 <= code < 600:
        return "failed"
    return "deferred"


def _text(reply: _core.Reply) -> str:
    enhanced = f"{reply.enhanced} " if reply.enhanced else ""
    return f"{reply.code} {enhanced}{' '.join(reply.lines)}".strip()


class _Client:
    """Replies in, commands out, every read bounded by ``timeout``."""

    def __init__(self, stream: trio.abc.Stream, timeout: float) -> None:
        self.stream = stream
        self.timeout = timeout
        self.parser = _core.ReplyParser()

    async def send(self, data: bytes) -> None:
        try:
            with trio.fail_after(self.timeout):
                await self.stream.send_all(data)
        except trio.TooSlowError:
            raise LmtpError("timeout while sending") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise LmtpError(f"connection lost while sending: {e}") from None

    async def reply(self) -> _core.Reply:
        try:
            with trio.fail_after(self.timeout):
                while (r := self.parser.next_reply()) is None:
                    data = await self.stream.receive_some(65536)
                    if not data:
                        raise LmtpError("connection closed by the LMTP server")
                    self.parser.receive_data(bytes(data))
        except trio.TooSlowError:
            raise LmtpError(f"no reply within {self.timeout:g}s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise LmtpError(f"connection lost: {e}") from None
        except ParseError as e:
            raise LmtpError(f"malformed reply: {e}") from None
        return r


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
            return [Outcome(t.index, "deferred", f"451 4.4.1 cannot connect to LMTP server {server}: {why}", server) for t in targets]
        try:
            async with stream:
                await self._transaction(_Client(stream, self.timeout), request, targets, settle)
        except LmtpError as e:
            for t in targets:
                settle(t, "deferred", f"451 4.4.2 LMTP session with {server} broke: {e}")
        return [done[t.index] for t in targets]

    async def _transaction(self, c: _Client, request: DeliveryRequest, targets: list[Target], settle) -> None:  # type: ignore[no-untyped-def]
        def all_get(reply: _core.Reply, what: str) -> None:
            # a refused greeting or LHLO is the server's trouble, not the recipients': retry
            status = status_of(reply.code) if what == "MAIL FROM" else "deferred"
            for t in targets:
                settle(t, status, f"{_text(reply)} (in reply to {what})")

        greeting = await c.reply()
        if greeting.code != 220:
            all_get(greeting, "the greeting")
            return
        await c.send(f"LHLO {self.hostname}\r\n".encode())
        lhlo = await c.reply()
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
                await self._quit(c)
                return
            params += " SMTPUTF8"
        if "SIZE" in caps:
            params += f" SIZE={request.content.length}"
        commands = [f"MAIL FROM:<{request.sender}>{params}\r\n".encode("utf-8")]
        commands += [f"RCPT TO:<{t.hop.rcpt}>\r\n".encode("utf-8") for t in targets]  # type: ignore[union-attr]
        commands.append(b"DATA\r\n")
        if "PIPELINING" in caps:
            await c.send(b"".join(commands))
            replies = [await c.reply() for _ in commands]
        else:
            replies = []
            for cmd in commands:
                await c.send(cmd)
                replies.append(await c.reply())
                if replies[0].code >= 300:
                    break
        mail = replies[0]
        if mail.code >= 300:
            all_get(mail, "MAIL FROM")
            await self._quit(c)
            return
        accepted: list[Target] = []
        for t, r in zip(targets, replies[1 : 1 + len(targets)]):
            if r.code >= 300:
                settle(t, status_of(r.code), f"{_text(r)} (in reply to RCPT TO)")
            else:
                accepted.append(t)
        data = replies[-1]
        if not accepted:
            await self._quit(c)
            return
        if data.code != 354:
            for t in accepted:
                settle(t, "failed" if data.code >= 500 else "deferred", f"{_text(data)} (in reply to DATA)")
            await self._quit(c)
            return
        stuffer = _core.DotStuffer()
        src = await trio.to_thread.run_sync(request.content.open)
        try:
            while chunk := await trio.to_thread.run_sync(src.read, CHUNK):
                await c.send(stuffer.feed(chunk))
        finally:
            src.close()
        await c.send(stuffer.finish())
        for t in accepted:  # RFC 2033 4.2: one reply per accepted recipient, in order
            r = await c.reply()
            settle(t, status_of(r.code), _text(r))
        await self._quit(c)

    @staticmethod
    async def _quit(c: _Client) -> None:
        try:
            await c.send(b"QUIT\r\n")
            await c.reply()
        except LmtpError:
            pass
