"""The LMTP listener mode over memory streams: LHLO only, delivery before the
reply, one reply per accepted RCPT after the data, nothing left in the spool."""

from __future__ import annotations

import mailbox
from pathlib import Path

import trio
import trio.testing

from smtprs.config import Listener
from smtprs.daemon import ServerContext
from smtprs.smtpd.session import Session

from .conftest import Client


async def start_lmtp(nursery: trio.Nursery, ctx: ServerContext) -> Client:
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def serve() -> None:
        await Session(ctx.session, server_stream, "192.0.2.9", 40001, Listener(mode="lmtp")).run()
        await server_stream.aclose()

    nursery.start_soon(serve)
    client = Client(client_stream)
    greeting = await client.reply()
    assert greeting.code == 220 and "LMTP" in greeting.text
    return client


def maildir_new(tmp_path: Path, user: str) -> list[Path]:
    new = tmp_path / "mail" / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


async def test_lhlo_only(ctx_factory):
    ctx = ctx_factory()
    async with trio.open_nursery() as n:
        c = await start_lmtp(n, ctx)
        for verb in ("HELO x", "EHLO x"):
            r = await c.cmd(verb)
            assert (r.code, r.enhanced) == (500, "5.5.1") and "LHLO" in r.text
        r = await c.cmd("MAIL FROM:<a@b.test>")
        assert r.code == 503
        r = await c.cmd("LHLO client.test")
        assert r.code == 250 and "PIPELINING" in r.lines and "ENHANCEDSTATUSCODES" in r.lines
        n.cancel_scope.cancel()


async def test_one_reply_per_rcpt_after_delivery(ctx_factory, tmp_path):
    ctx = ctx_factory()
    async with trio.open_nursery() as n:
        c = await start_lmtp(n, ctx)
        await c.cmd("LHLO client.test")
        await c.send(
            b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob+x@example.test>\r\n"
            b"RCPT TO:<nobody@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
        )
        codes = [(await c.reply()).code for _ in range(6)]
        assert codes == [250, 250, 250, 554, 250, 354]
        await c.send(b"Subject: lmtp\r\n\r\nbody\r\n.\r\n")
        finals = [await c.reply() for _ in range(3)]  # three accepted RCPTs, the refused one gets none
        assert [(r.code, r.enhanced) for r in finals] == [(250, "2.0.0")] * 3
        assert "<alice@example.test>" in finals[0].text and "<bob+x@example.test>" in finals[1].text
        # the mail is in the mailboxes now (before QUIT), once for alice
        assert len(maildir_new(tmp_path, "alice")) == 1 and len(maildir_new(tmp_path, "bob")) == 1
        content = maildir_new(tmp_path, "bob")[0].read_bytes()
        assert content.startswith(
            b"Return-Path: <a@remote.test>\nDelivered-To: bob+x@example.test\nReceived: from client.test"
        )
        assert b"with LMTP id" in content and content.endswith(b"\n\nSubject: lmtp\n\nbody\n"[2:])
        assert (await c.cmd("QUIT")).code == 221
    assert ctx.spool.count == 0 and list(ctx.spool.files_dir.iterdir()) == []  # nothing queued, nothing left behind


async def test_each_rcpt_gets_its_own_outcome(ctx_factory, tmp_path):
    ctx = ctx_factory()
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "bob").write_text("a file where the Maildir should be")
    async with trio.open_nursery() as n:
        c = await start_lmtp(n, ctx)
        await c.cmd("LHLO client.test")
        await c.cmd("MAIL FROM:<a@remote.test>")
        await c.cmd("RCPT TO:<alice@example.test>")
        await c.cmd("RCPT TO:<bob@example.test>")
        await c.cmd("DATA")
        await c.send(b"Subject: x\r\n\r\ny\r\n.\r\n")
        r1, r2 = await c.reply(), await c.reply()
        assert (r1.code, r2.code) == (250, 451)
        assert r2.enhanced == "4.3.0" and "<bob@example.test>" in r2.text
        # the session carries on: a mailbox's trouble is not a client error
        assert (await c.cmd("NOOP")).code == 250
        n.cancel_scope.cancel()
    assert len(maildir_new(tmp_path, "alice")) == 1


async def test_data_error_is_repeated_per_rcpt(ctx_factory):
    ctx = ctx_factory(smtpd={"max_message_size": 100})
    async with trio.open_nursery() as n:
        c = await start_lmtp(n, ctx)
        await c.cmd("LHLO client.test")
        await c.cmd("MAIL FROM:<a@remote.test>")
        await c.cmd("RCPT TO:<alice@example.test>")
        await c.cmd("RCPT TO:<bob@example.test>")
        await c.cmd("DATA")
        await c.send(b"Subject: big\r\n\r\n" + b"x" * 200 + b"\r\n.\r\n")
        assert [(await c.reply()).code for _ in range(2)] == [552, 552]
        assert (await c.cmd("NOOP")).code == 250
        n.cancel_scope.cancel()


async def test_bdat_last_gets_per_rcpt_replies(ctx_factory, tmp_path):
    ctx = ctx_factory(local={"delivery": "mbox"})
    async with trio.open_nursery() as n:
        c = await start_lmtp(n, ctx)
        await c.cmd("LHLO client.test")
        await c.send(
            b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nBDAT 22 LAST\r\nSubject: b\r\n\r\nFrom x\r\n"
        )
        codes = [(await c.reply()).code for _ in range(4)]
        assert codes == [250, 250, 250, 250]
        n.cancel_scope.cancel()
    (m,) = list(mailbox.mbox(tmp_path / "mbox" / "alice"))
    assert m.get_payload() == ">From x\n"


async def test_aliases_in_lmtp_mode(ctx_factory, tmp_path):
    (tmp_path / "aliases").write_text("staff: alice, bob\nfwd: x@elsewhere.test\n")
    ctx = ctx_factory(local={"aliases": "aliases"})
    async with trio.open_nursery() as n:
        c = await start_lmtp(n, ctx)
        await c.cmd("LHLO client.test")
        await c.cmd("MAIL FROM:<a@remote.test>")
        assert (await c.cmd("RCPT TO:<staff@example.test>")).code == 250
        r = await c.cmd("RCPT TO:<fwd@example.test>")
        assert r.code >= 500
        await c.cmd("DATA")
        r = await c.cmd(b"Subject: x\r\n\r\ny\r\n.")
        assert r.code == 250 and "<staff@example.test>" in r.text
        n.cancel_scope.cancel()
    assert len(maildir_new(tmp_path, "alice")) == 1 and len(maildir_new(tmp_path, "bob")) == 1
