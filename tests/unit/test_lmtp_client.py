"""The LMTP client agent against scripted LMTP servers on memory streams:
one reply per recipient after the data, each recipient's outcome its own."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from smtprs.content import Content
from smtprs.deliver.base import DeliveryRequest, Target
from smtprs.deliver.lmtp import LmtpAgent
from smtprs.hops import LmtpMailbox


class FakeLmtp:
    """A scripted LMTP server: records what it got, answers from a table."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        pipelining: bool = True,
        rcpt: dict[str, bytes] | None = None,
        final: list[bytes] | None = None,
        drop_after_final: int | None = None,
    ) -> None:
        self.stream = stream
        self.pipelining = pipelining
        self.rcpt = rcpt or {}
        self.final = final
        self.drop_after_final = drop_after_final
        self.commands: list[bytes] = []
        self.data = b""
        self.buf = b""

    async def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = await self.stream.receive_some(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    async def run(self) -> None:
        s = self.stream
        await s.send_all(b"220 lmtp.test LMTP ready\r\n")
        accepted = 0
        try:
            while True:
                line = await self.line()
                self.commands.append(line)
                verb = line.split(b" ", 1)[0].upper()
                if verb == b"LHLO":
                    caps = b"250-lmtp.test\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n"
                    caps += b"250-PIPELINING\r\n" if self.pipelining else b""
                    await s.send_all(caps + b"250 SIZE 1000000\r\n")
                elif verb == b"MAIL":
                    await s.send_all(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    addr = line.split(b"<", 1)[1].split(b">", 1)[0].decode()
                    r = self.rcpt.get(addr, b"250 2.1.5 Ok")
                    accepted += r.startswith(b"2")
                    await s.send_all(r + b"\r\n")
                elif verb == b"DATA":
                    await s.send_all(b"354 go ahead\r\n")
                    while True:
                        dl = await self.line()
                        if dl == b".":
                            break
                        self.data += dl + b"\r\n"
                    finals = self.final or [b"250 2.0.0 Saved"] * accepted
                    for i, r in enumerate(finals):
                        if self.drop_after_final is not None and i >= self.drop_after_final:
                            await s.aclose()
                            return
                        await s.send_all(r + b"\r\n")
                elif verb == b"QUIT":
                    await s.send_all(b"221 2.0.0 Bye\r\n")
                    await s.aclose()
                    return
                else:
                    await s.send_all(b"500 5.5.1 what\r\n")
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def make_request(
    tmp_path: Path, users: list[str], content: bytes = b"Subject: t\r\n\r\n.leading dot\r\nbody\r\n", params=None
) -> DeliveryRequest:
    path = tmp_path / "Q1.msg"
    path.write_bytes(content)
    targets = tuple(
        Target(i, f"{u}@example.test", LmtpMailbox(u, "example.test", f"{u}@example.test", "127.0.0.1:24"))
        for i, u in enumerate(users)
    )
    return DeliveryRequest(
        "Q1", "s@remote.test", Content(path, 0, len(content)), 0.0, targets, len(content), params or {}
    )


async def run_agent(tmp_path, fake_kwargs, users, **req):  # type: ignore[no-untyped-def]
    client, server = trio.testing.memory_stream_pair()
    fake = FakeLmtp(server, **fake_kwargs)
    agent = LmtpAgent("mx.test", timeout=5)

    async def connect(_server: str) -> trio.abc.Stream:
        return client

    agent._connect = connect  # type: ignore[method-assign]
    async with trio.open_nursery() as n:
        n.start_soon(fake.run)
        outcomes = await agent.deliver(make_request(tmp_path, users, **req))
    return fake, outcomes


async def test_one_reply_per_recipient_each_recorded_on_its_own(tmp_path):
    fake, out = await run_agent(
        tmp_path,
        {
            "final": [
                b"250 2.0.0 <alice@example.test> Saved",
                b"452 4.2.2 <bob@example.test> Quota exceeded",
                b"552 5.2.2 <carol@example.test> Mailbox full for good",
            ]
        },
        ["alice", "bob", "carol"],
    )
    assert [(o.index, o.status) for o in out] == [(0, "delivered"), (1, "deferred"), (2, "failed")]
    assert "Saved" in out[0].detail and out[1].detail.startswith("452 4.2.2") and out[2].detail.startswith("552 5.2.2")
    assert all(o.relay == "127.0.0.1:24" for o in out)
    assert fake.commands[0] == b"LHLO mx.test"
    assert fake.commands[1].startswith(b"MAIL FROM:<s@remote.test>")
    assert fake.commands[2:5] == [
        b"RCPT TO:<alice@example.test>",
        b"RCPT TO:<bob@example.test>",
        b"RCPT TO:<carol@example.test>",
    ]
    assert fake.data == b"Subject: t\r\n\r\n..leading dot\r\nbody\r\n"  # dot-stuffed on the wire


async def test_refused_rcpt_fails_alone_and_gets_no_final_reply(tmp_path):
    fake, out = await run_agent(
        tmp_path,
        {"rcpt": {"bob@example.test": b"550 5.1.1 <bob@example.test> User doesn't exist"}},
        ["alice", "bob", "carol"],
    )
    assert [o.status for o in out] == ["delivered", "failed", "delivered"]
    assert "RCPT TO" in out[1].detail


async def test_connection_lost_between_final_replies_defers_the_rest(tmp_path):
    _, out = await run_agent(tmp_path, {"drop_after_final": 1}, ["alice", "bob"])
    assert [o.status for o in out] == ["delivered", "deferred"]
    assert "broke" in out[1].detail


async def test_without_pipelining_one_command_at_a_time(tmp_path):
    fake, out = await run_agent(tmp_path, {"pipelining": False}, ["alice", "bob"], params={"BODY": "8BITMIME"})
    assert [o.status for o in out] == ["delivered", "delivered"]
    assert b"BODY=8BITMIME" in fake.commands[1] and b"SIZE=" in fake.commands[1]


async def test_smtputf8_needed_but_not_offered_fails(tmp_path):
    _, out = await run_agent(tmp_path, {}, ["alice"], params={"SMTPUTF8": ""})
    assert out[0].status == "failed" and "5.6.7" in out[0].detail


async def test_unreachable_server_defers_everyone(tmp_path):
    agent = LmtpAgent("mx.test", timeout=5)
    req = make_request(tmp_path, ["alice", "bob"])
    req = DeliveryRequest(
        req.queue_id,
        req.sender,
        req.content,
        req.arrival,
        tuple(
            Target(t.index, t.address, LmtpMailbox(t.hop.user, t.hop.domain, t.hop.rcpt, f"unix:{tmp_path}/nothing"))
            for t in req.targets
        ),
    )  # type: ignore[union-attr]
    out = await agent.deliver(req)
    assert [o.status for o in out] == ["deferred", "deferred"]
    assert "cannot connect" in out[0].detail
