"""The SMTP client agent against small scripted peers on loopback sockets.

The peers here are real TCP servers written in a few lines of Trio, so the
agent's behaviour the e2e suite cannot pin down is seen directly: the
per-destination concurrency limit, HELO fallback, a 421 greeting moving on to
the next host, and one transaction per destination.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import trio

from smtprs.content import Content
from smtprs.deliver.base import DeliveryRequest, Target
from smtprs.deliver.mx import Host
from smtprs.deliver.smtp import SmtpAgent
from smtprs.hops import RemoteHop

from .conftest import make_config


@dataclass
class Peer:
    greeting: bytes = b"220 peer.test ESMTP\r\n"
    ehlo_ok: bool = True
    data_delay: float = 0.0
    active: int = 0
    most_active: int = 0
    sessions: int = 0
    commands: list[str] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.sessions += 1
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        buf = b""
        try:
            await stream.send_all(self.greeting)
            if not self.greeting.startswith(b"220"):
                return
            while True:
                while b"\r\n" not in buf:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        return
                    buf += chunk
                line, buf = buf.split(b"\r\n", 1)
                cmd = line.decode()
                self.commands.append(cmd)
                verb = cmd.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    await stream.send_all(
                        b"250-peer.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
                        if self.ehlo_ok
                        else b"502 5.5.1 no ESMTP here\r\n"
                    )
                elif verb == "DATA":
                    await stream.send_all(b"354 go\r\n")
                    while b"\r\n.\r\n" not in buf:
                        chunk = await stream.receive_some(65536)
                        if not chunk:
                            return
                        buf += chunk
                    data, buf = buf.split(b"\r\n.\r\n", 1)
                    self.messages.append(data + b"\r\n")
                    await trio.sleep(self.data_delay)
                    await stream.send_all(b"250 2.0.0 queued\r\n")
                elif verb == "QUIT":
                    await stream.send_all(b"221 bye\r\n")
                    return
                else:
                    await stream.send_all(b"250 ok\r\n")
        finally:
            self.active -= 1


async def start_peer(nursery: trio.Nursery, peer: Peer) -> int:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, peer.handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def request(tmp_path: Path, name: str, targets: list[Target]) -> DeliveryRequest:
    content = tmp_path / f"{name}.msg"
    content.write_bytes(b"Subject: " + name.encode() + b"\r\n\r\nbody\r\n.dot\r\n")
    size = content.stat().st_size
    return DeliveryRequest(name, "a@example.test", Content(content, 0, size), 1.0, tuple(targets), size, {})


def target(i: int, address: str, port: int, host: str = "127.0.0.1") -> Target:
    return Target(i, address, RemoteHop(address.split("@")[1], host, port, False, "none"))


async def test_destination_concurrency_limit(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, relay={"destination_concurrency": 2, "idle_timeout": 0})
    peer = Peer(data_delay=0.2)
    async with trio.open_nursery() as n:
        port = await start_peer(n, peer)
        agent = SmtpAgent(cfg, "mx.test")
        results = []

        async def one(i: int) -> None:
            results.extend(await agent.deliver(request(tmp_path, f"M{i}", [target(0, f"u{i}@peer.test", port)])))

        async with trio.open_nursery() as inner:
            for i in range(5):
                inner.start_soon(one, i)
        n.cancel_scope.cancel()
    assert [o.status for o in results] == ["delivered"] * 5
    assert peer.most_active == 2
    assert len(peer.messages) == 5


async def test_one_transaction_per_destination_and_helo_fallback(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    peer = Peer(ehlo_ok=False)
    async with trio.open_nursery() as n:
        port = await start_peer(n, peer)
        agent = SmtpAgent(cfg, "mx.test")
        out = await agent.deliver(
            request(tmp_path, "M1", [target(0, "a@peer.test", port), target(3, "b@peer.test", port)])
        )
        n.cancel_scope.cancel()
    assert sorted((o.index, o.status) for o in out) == [(0, "delivered"), (3, "delivered")]
    assert out[0].relay == f"127.0.0.1[127.0.0.1]:{port}"
    verbs = [c.split(" ")[0] for c in peer.commands]
    assert verbs == ["EHLO", "HELO", "MAIL", "RCPT", "RCPT", "DATA", "QUIT"]
    assert peer.commands[2] == "MAIL FROM:<a@example.test>"  # no ESMTP parameters to a plain SMTP peer
    assert peer.messages == [b"Subject: M1\r\n\r\nbody\r\n..dot\r\n"]  # dot-stuffed on the wire


async def test_421_greeting_moves_to_the_next_host(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, mta_sts={"enabled": False})  # the fake resolver below has no TXT records
    busy = Peer(greeting=b"421 4.3.2 too busy\r\n")
    fine = Peer()
    async with trio.open_nursery() as n:
        port = await start_peer(n, busy)  # on 127.0.0.1
        await n.start(
            functools.partial(trio.serve_tcp, fine.handle, port, host="127.0.0.2")
        )  # the same port, the next address
        agent = SmtpAgent(cfg, "mx.test")

        class TwoHosts:  # what the MX lookup would give: preference 10, then 20
            async def hosts(self, host: str, mx: bool) -> list[Host]:
                return [Host("busy.d.test", "127.0.0.1", 10), Host("fine.d.test", "127.0.0.2", 20)]

        agent.resolver = TwoHosts()  # type: ignore[assignment]
        out = await agent.deliver(
            request(tmp_path, "M1", [Target(0, "x@d.test", RemoteHop("d.test", "d.test", port, True, "none"))])
        )
        n.cancel_scope.cancel()
    assert out[0].status == "delivered"
    assert out[0].relay == f"fine.d.test[127.0.0.2]:{port}"
    assert busy.sessions == 1 and fine.sessions == 1
