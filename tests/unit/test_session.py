"""The session state machine, over memory streams and in virtual time."""

from __future__ import annotations

import dataclasses

import trio
import trio.testing

from .conftest import start_session


def _content(ctx, qid: str) -> bytes:
    with ctx.spool.content(qid).open() as fh:
        return fh.read()


async def test_happy_path_queues_message_durably(ctx_factory):
    ctx = ctx_factory()
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        assert (await c.cmd("EHLO client.test")).code == 250
        assert (await c.cmd("MAIL FROM:<a@remote.test>")).code == 250
        r = await c.cmd("RCPT TO:<bob@example.test>")
        assert (r.code, r.enhanced) == (250, "2.1.5")
        assert (await c.cmd("DATA")).code == 354
        r = await c.cmd(b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.")
        assert (r.code, r.enhanced) == (250, "2.0.0")
        qid = r.text.rsplit(" ", 1)[1]
        assert (await c.cmd("QUIT")).code == 221
        assert await c.closed()
    env = ctx.spool.load(qid)
    assert env.sender == "a@remote.test"
    assert [r.address for r in env.recipients] == ["bob@example.test"]
    content = _content(ctx, qid)
    assert content.startswith(
        b"Received: from client.test ([192.0.2.7])\r\n\tby mx.test (smtprs) with ESMTP id " + qid.encode()
    )
    assert content.endswith(b"\r\n\r\nSubject: hi\r\n\r\n.dot\r\nbody\r\n"[4:])


async def test_sequence_errors(ctx_factory):
    ctx = ctx_factory()
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        r = await c.cmd("MAIL FROM:<a@b.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1")
        await c.cmd("HELO x")
        r = await c.cmd("RCPT TO:<bob@example.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1")
        r = await c.cmd("DATA")
        assert (r.code, r.enhanced) == (503, "5.5.1")
        await c.cmd("MAIL FROM:<a@b.test>")
        r = await c.cmd("MAIL FROM:<a@b.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1")
        r = await c.cmd("DATA")
        assert (r.code, r.enhanced) == (503, "5.5.1")
        r = await c.cmd("RCPT TO:<x@elsewhere.test>")
        assert (r.code, r.enhanced) == (554, "5.7.1")
        r = await c.cmd("DATA")
        assert (r.code, r.enhanced) == (554, "5.5.1")  # RCPT tried, none valid
        r = await c.cmd("FOO")
        assert (r.code, r.enhanced) == (500, "5.5.2")
        n.cancel_scope.cancel()
    assert ctx.spool.count == 0


async def test_engine_answered_sequence_errors_count_as_errors_and_in_metrics(ctx_factory):
    """The engine answers the sequence errors itself (issue 13's fast path):
    they still count towards max_errors and in smtprs_messages_rejected_total,
    and the error that reaches the limit closes the session with 421."""
    from smtprs import metrics

    ctx = ctx_factory(smtpd={"max_errors": 4})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        r = await c.cmd("MAIL FROM:<a@b.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1")
        await c.cmd("EHLO x")
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 503
        assert (await c.cmd("DATA")).code == 503
        assert (await c.cmd("DATA")).code == 503  # the 4th error: the limit
        r = await c.reply()
        assert (r.code, r.enhanced) == (421, "4.7.0")
        assert await c.closed()
    snap = ctx.metrics.snapshot()
    rejected = "smtprs_messages_rejected_total"
    assert metrics.value(snap, rejected, stage="MAIL", reason="503 5.5.1") == 1
    assert metrics.value(snap, rejected, stage="RCPT", reason="503 5.5.1") == 1
    assert metrics.value(snap, rejected, stage="DATA", reason="503 5.5.1") == 2


async def test_junk_and_error_counts_survive_starttls(ctx_factory):
    """STARTTLS starts a fresh engine; the junk and error counts go on from the old one."""
    from smtprs.smtpd.session import Session

    ctx = ctx_factory(smtpd={"max_junk_commands": 2})
    s = Session(ctx.session, trio.testing.MemoryReceiveStream(), "127.0.0.1", 1)
    s.conn.receive_data(b"NOOP\r\nNOOP\r\nNOOP\r\nDATA\r\n")
    events = []
    while (e := s.conn.next_event()) is not None:
        events.append(e)
    assert [e.verb for e in events] == ["NOOP"]  # the third NOOP is past the limit: the session's
    assert (s.junk, s.errors) == (3, 1)  # the DATA: a sequence error the engine answered
    old = s.conn
    s.conn = s._new_engine()
    assert (s.junk, s.errors) == (3, 1) and s.conn is not old
    assert s.commands == old.answered == 3


def _events(s) -> list[str]:
    out = []
    while (e := s.conn.next_event()) is not None:
        out.append(e.verb)
    return out


async def test_engine_accepted_mail_becomes_the_sessions_transaction(ctx_factory):
    """A MAIL whose parameters need no check is answered by the engine; the
    session's transaction is the one transaction.mail would have made."""
    from smtprs.smtpd.session import Session

    ctx = ctx_factory()
    s = Session(ctx.session, trio.testing.MemoryReceiveStream(), "127.0.0.1", 1)
    s.conn.receive_data(b"EHLO x\r\nMAIL FROM:<a@b.test> BODY=8bitmime\r\n")
    assert _events(s) == [] and s.conn.mail_pending
    txn = s.txn
    assert txn is not None and not s.conn.mail_pending
    assert (txn.sender.address(), txn.params, txn.smtputf8) == ("a@b.test", {"BODY": "8BITMIME"}, False)
    assert s.txn is txn
    assert s.conn.take_output().endswith(b"250 2.1.0 Ok\r\n")
    # SIZE asks the spool: the session's
    s.txn = None
    s.conn.receive_data(b"MAIL FROM:<a@b.test> SIZE=100\r\n")
    assert _events(s) == ["MAIL"]


async def test_engine_leaves_mail_to_a_hook_submission_and_flow_control(ctx_factory):
    from smtprs import Hooks
    from smtprs.config import Listener
    from smtprs.smtpd.session import Session

    class MailHook(Hooks):
        async def on_mail(self, session, sender):
            return None

    def session(ctx, **kw):
        s = Session(ctx.session, trio.testing.MemoryReceiveStream(), "127.0.0.1", 1, **kw)
        s.conn.receive_data(b"EHLO x\r\nMAIL FROM:<a@b.test>\r\n")
        return s

    ctx = ctx_factory()
    hooked = ctx_factory()
    hooked.session = dataclasses.replace(hooked.session, hooks=MailHook())
    assert _events(session(hooked)) == ["MAIL"]
    assert _events(session(ctx, listener=Listener(mode="submission"))) == ["MAIL"]
    assert _events(session(ctx_factory(queue={"min_free_space": 1}))) == ["MAIL"]

    class Behind:
        def behind(self) -> bool:
            return True

        async def caught_up(self) -> None:
            pass

    flowing = ctx_factory()
    flowing.session = dataclasses.replace(flowing.session, flow=Behind())
    s = session(flowing)
    s.conn.take_output()
    s._flow.behind = lambda: True
    s.conn.set_mail_auto(not s._flow.behind())  # as the read loop does before each read
    s.conn.receive_data(b"RSET\r\nMAIL FROM:<a@b.test>\r\n")
    assert "MAIL" in _events(s)


async def test_too_many_errors_closes_with_421(ctx_factory):
    ctx = ctx_factory(smtpd={"max_errors": 3})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        for _ in range(2):
            assert (await c.cmd("BOGUS")).code == 500
        assert (await c.cmd("BOGUS")).code == 500
        r = await c.reply()
        assert (r.code, r.enhanced) == (421, "4.7.0")
        assert await c.closed()


async def test_idle_timeout_in_virtual_time(ctx_factory, autojump_clock):
    ctx = ctx_factory(smtpd={"command_timeout": 300})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        before = trio.current_time()
        r = await c.reply()
        assert (r.code, r.enhanced) == (421, "4.4.2")
        assert 299 <= trio.current_time() - before <= 301
        assert await c.closed()


async def test_timeout_inside_data_drops_the_message(ctx_factory, autojump_clock):
    ctx = ctx_factory(smtpd={"data_timeout": 180, "command_timeout": 300})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO x")
        await c.cmd("MAIL FROM:<a@b.test>")
        await c.cmd("RCPT TO:<bob@example.test>")
        await c.cmd("DATA")
        await c.send(b"Subject: half\r\n")
        before = trio.current_time()
        r = await c.reply()
        assert r.code == 421
        assert 179 <= trio.current_time() - before <= 181
        assert await c.closed()
    assert ctx.spool.count == 0


async def test_pipelined_replies_come_in_order_in_one_write(ctx_factory):
    ctx = ctx_factory()
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO x")
        await c.send(
            b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u1@example.test>\r\nRCPT TO:<nobody@elsewhere.test>\r\nRCPT TO:<u2@example.test>\r\nDATA\r\n"
        )
        codes = [(await c.reply()).code for _ in range(5)]
        assert codes == [250, 250, 554, 250, 354]
        r = await c.cmd(b"x\r\n.")
        assert r.code == 250
        n.cancel_scope.cancel()


async def test_bdat_chunks_and_refusals(ctx_factory):
    ctx = ctx_factory()
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO x")
        # BDAT without a transaction: the chunk is read and refused, the session stays framed
        await c.send(b"BDAT 5\r\nhello")
        r = await c.reply()
        assert (r.code, r.enhanced) == (503, "5.5.1")
        assert (await c.cmd("NOOP")).code == 250
        await c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u@example.test>\r\nBDAT 12\r\nSubject: x\r\n")
        assert [(await c.reply()).code for _ in range(3)] == [250, 250, 250]
        await c.send(b"BDAT 6 LAST\r\n\r\nbody")
        r = await c.reply()
        assert r.code == 250 and "queued as" in r.text
        qid = r.text.rsplit(" ", 1)[1]
        n.cancel_scope.cancel()
    assert _content(ctx, qid).endswith(b"Subject: x\r\n\r\nbody")


async def test_size_declared_too_big(ctx_factory):
    ctx = ctx_factory(smtpd={"max_message_size": 1000})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        r = await c.cmd("EHLO x")
        assert "SIZE 1000" in r.lines
        r = await c.cmd("MAIL FROM:<a@b.test> SIZE=1001")
        assert (r.code, r.enhanced) == (552, "5.3.4")
        r = await c.cmd("MAIL FROM:<a@b.test> SIZE=1000 BODY=8BITMIME")
        assert r.code == 250
        n.cancel_scope.cancel()


async def test_known_users_and_postmaster(ctx_factory):
    ctx = ctx_factory(local={"users": ["alice"]})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO x")
        await c.cmd("MAIL FROM:<>")
        assert (await c.cmd("RCPT TO:<Alice@Example.TEST>")).code == 250
        r = await c.cmd("RCPT TO:<mallory@example.test>")
        assert (r.code, r.enhanced) == (550, "5.1.1")
        assert (await c.cmd("RCPT TO:<Postmaster>")).code == 250
        r = await c.cmd('RCPT TO:<"../etc"@example.test>')
        assert r.code == 550
        r = await c.cmd("RCPT TO:<user%other@example.test>")
        assert r.code == 550
        n.cancel_scope.cancel()


async def test_dsn_parameters_are_checked_and_kept(ctx_factory):
    ctx = ctx_factory(smtpd={"max_errors": 50})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        r = await c.cmd("EHLO client.test")
        assert "DSN" in r.lines
        for bad in ("RET=ALL", "ENVID=", "RET", "ENVID"):
            r = await c.cmd(f"MAIL FROM:<a@remote.test> {bad}")
            assert (r.code, r.enhanced) == (501, "5.5.4"), bad
        assert (await c.cmd("MAIL FROM:<a@remote.test> RET=hdrs ENVID=abc+2Bdef")).code == 250
        for bad in (
            "NOTIFY",
            "ORCPT",
            "NOTIFY=NEVER,SUCCESS",
            "NOTIFY=SOMETIMES",
            "NOTIFY=SUCCESS,SUCCESS",
            "ORCPT=nosemicolon",
            "ORCPT=rfc822;",
        ):
            r = await c.cmd(f"RCPT TO:<bob@example.test> {bad}")
            assert (r.code, r.enhanced) == (501, "5.5.4"), bad
        assert (
            await c.cmd("RCPT TO:<bob@example.test> NOTIFY=success,delay ORCPT=rfc822;Bob+40example.test")
        ).code == 250
        assert (await c.cmd("RCPT TO:<carol@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        r = await c.cmd(b"Subject: dsn\r\n\r\nx\r\n.")
        assert r.code == 250
        qid = r.text.rsplit(" ", 1)[1]
        n.cancel_scope.cancel()
    env = ctx.spool.load(qid)
    assert env.params == {"RET": "HDRS", "ENVID": "abc+def"}
    assert env.recipients[0].params == {"NOTIFY": "SUCCESS,DELAY", "ORCPT": "rfc822;Bob@example.test"}
    assert env.recipients[1].params == {}


async def test_trusted_networks_may_relay(ctx_factory):
    for networks, expected in (([], 554), (["192.0.2.0/24"], 250), (["10.0.0.0/8", "::1/128"], 554)):
        ctx = ctx_factory(relay={"trusted_networks": networks})
        async with trio.open_nursery() as n:
            c = await start_session(n, ctx)
            await c.cmd("EHLO client.test")
            await c.cmd("MAIL FROM:<a@example.test>")
            r = await c.cmd("RCPT TO:<x@remote.test>")
            assert r.code == expected, networks
            n.cancel_scope.cancel()
