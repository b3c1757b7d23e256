"""Abuse limits, in virtual time: per-client connection count and rate, the
command deadline against clients trickling bytes, the minimum data rate,
junk commands, and the free-space check at MAIL."""

from __future__ import annotations

import trio
import trio.testing

from smtprs import reply as R
from smtprs.smtpd.limits import ClientLimits
from smtprs.smtpd.session import Session

from .conftest import Client, start_session


async def _session_from(nursery: trio.Nursery, ctx, ip: str) -> Client:
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def serve() -> None:
        await Session(ctx.session, server_stream, ip, 40000).run()
        await server_stream.aclose()

    nursery.start_soon(serve)
    return Client(client_stream)


def test_client_limits_count_and_rate():
    limits = ClientLimits()
    kw = {"per_client": 2, "rate": 0, "window": 60.0}
    assert limits.admit("192.0.2.1", 0.0, **kw) is None
    assert limits.admit("192.0.2.1", 0.0, **kw) is None
    assert limits.admit("192.0.2.1", 0.0, **kw) == R.TOO_MANY_FROM_CLIENT
    assert limits.admit("192.0.2.2", 0.0, **kw) is None  # another address is not affected
    # an IPv6 /64 is one client, and an IPv4-mapped address is the IPv4 one
    assert limits.admit("2001:db8::1", 0.0, **kw) is None
    assert limits.admit("2001:db8::ffff:2", 0.0, **kw) is None
    assert limits.admit("2001:db8::3", 0.0, **kw) == R.TOO_MANY_FROM_CLIENT
    assert limits.admit("2001:db8:0:1::3", 0.0, **kw) is None
    assert limits.admit("::ffff:192.0.2.1", 0.0, **kw) == R.TOO_MANY_FROM_CLIENT
    limits.release("192.0.2.1")
    assert limits.open_sessions("192.0.2.1") == 1
    assert limits.admit("192.0.2.1", 0.0, **kw) is None
    # rate: 3 per 10 s; refused attempts count too
    rate = {"per_client": 100, "rate": 3, "window": 10.0}
    for t in (0.0, 1.0, 2.0):
        assert limits.admit("198.51.100.1", t, **rate) is None
    assert limits.admit("198.51.100.1", 3.0, **rate) == R.CONNECTION_RATE_EXCEEDED
    # 10.5: a new window, but 95% of the last one (4 attempts) still overlaps it
    assert limits.admit("198.51.100.1", 10.5, **rate) == R.CONNECTION_RATE_EXCEEDED
    assert limits.admit("198.51.100.1", 25.0, **rate) is None  # backed off: allowed again
    assert limits.admit("198.51.100.1", 60.0, **rate) is None  # long gone: the count starts afresh
    assert limits.untracked == 0


def test_client_limits_memory_is_bounded():
    """A fixed table: clients with no open session are forgotten, least recently seen
    first; a client whose bucket is full of open sessions is admitted uncounted."""
    limits = ClientLimits(max_clients=3)
    rate = {"per_client": 100, "rate": 2, "window": 10.0}
    for i in range(100):
        limits.admit(f"203.0.113.{i}", float(i), **rate)
        limits.release(f"203.0.113.{i}")
    assert limits.remembered == 3
    kw = {"per_client": 1, "rate": 0, "window": 60.0}
    for i in range(3):
        assert limits.admit(f"192.0.2.{i}", 200.0, **kw) is None  # they take the slots of the idle ones
    assert limits.admit("192.0.2.99", 200.0, **kw) is None  # no slot: admitted, not counted
    assert limits.untracked == 1 and limits.open_sessions("192.0.2.99") == 0
    assert limits.admit("192.0.2.0", 200.0, **kw) == R.TOO_MANY_FROM_CLIENT  # those counted stay counted


def test_shared_table_counts_once_for_all_workers(tmp_path):
    """Two workers' tables on one file (as two processes map it): one count per
    client for the whole server, each worker releasing only its own sessions."""
    path = str(tmp_path / "client-limits.shm")
    w0 = ClientLimits.shared(path, 0, 2)
    w1 = ClientLimits.shared(path, 1, 2)
    kw = {"per_client": 3, "rate": 0, "window": 60.0}
    assert w0.admit("192.0.2.1", 0.0, **kw) is None
    assert w1.admit("192.0.2.1", 0.0, **kw) is None
    assert w1.admit("192.0.2.1", 0.0, **kw) is None
    assert w0.admit("192.0.2.1", 0.0, **kw) == R.TOO_MANY_FROM_CLIENT
    assert w1.admit("192.0.2.1", 0.0, **kw) == R.TOO_MANY_FROM_CLIENT
    assert w0.open_sessions("192.0.2.1") == w1.open_sessions("192.0.2.1") == 3
    w0.release("192.0.2.1")
    w0.release("192.0.2.1")  # worker 0 had one session only: its count stays at 0
    assert w1.open_sessions("192.0.2.1") == 2
    # the rate is shared too: 2 attempts per window whichever worker takes them
    rate = {"per_client": 100, "rate": 2, "window": 60.0}
    assert w0.admit("198.51.100.7", 1.0, **rate) is None
    assert w1.admit("198.51.100.7", 2.0, **rate) is None
    assert w0.admit("198.51.100.7", 3.0, **rate) == R.CONNECTION_RATE_EXCEEDED
    # worker 1 is killed and started again: its sessions died with it, its counts go
    w1.close()
    w1 = ClientLimits.shared(path, 1, 2)
    assert w0.open_sessions("192.0.2.1") == 0
    assert w0.admit("192.0.2.1", 5.0, **kw) is None
    # a restart with one worker: worker 0 clears the columns beyond it
    assert w1.admit("192.0.2.5", 5.0, **kw) is None
    w0.close()
    w1.close()
    solo = ClientLimits.shared(path, 0, 1)
    assert solo.open_sessions("192.0.2.5") == 0 and solo.open_sessions("192.0.2.1") == 0
    solo.close()


def test_shared_table_of_another_layout_is_started_afresh(tmp_path):
    path = tmp_path / "client-limits.shm"
    path.write_bytes(b"not a table" * 100)
    limits = ClientLimits.shared(str(path), 0, 1)
    assert limits.remembered == 0
    assert limits.admit("192.0.2.1", 0.0, per_client=1, rate=0, window=1.0) is None
    limits.close()
    assert path.read_bytes()[:8] == b"SMTPRSCL"


async def test_per_client_connection_limit_in_sessions(ctx_factory):
    ctx = ctx_factory(smtpd={"max_connections_per_client": 2})
    async with trio.open_nursery() as n:
        a = await _session_from(n, ctx, "192.0.2.10")
        b = await _session_from(n, ctx, "192.0.2.10")
        assert (await a.reply()).code == 220 and (await b.reply()).code == 220
        third = await _session_from(n, ctx, "192.0.2.10")
        r = await third.reply()
        assert (r.code, r.enhanced) == (421, "4.7.0")
        assert await third.closed()
        other = await _session_from(n, ctx, "192.0.2.11")  # another client is served
        assert (await other.reply()).code == 220
        assert (await a.cmd("QUIT")).code == 221
        assert await a.closed()
        await trio.testing.wait_all_tasks_blocked()
        again = await _session_from(n, ctx, "192.0.2.10")  # the freed slot can be used
        assert (await again.reply()).code == 220
        n.cancel_scope.cancel()
    assert ctx.runtime.limits.open_sessions("192.0.2.10") == 0  # every session gave its slot back
    assert ctx.active_sessions == 0


async def test_connection_rate_limit_in_sessions(ctx_factory, autojump_clock):
    ctx = ctx_factory(smtpd={"max_connection_rate": 3, "connection_rate_window": 60})
    async with trio.open_nursery() as n:
        for _ in range(3):
            c = await _session_from(n, ctx, "192.0.2.20")
            assert (await c.reply()).code == 220
            assert (await c.cmd("QUIT")).code == 221
        c = await _session_from(n, ctx, "192.0.2.20")
        r = await c.reply()
        assert (r.code, r.enhanced) == (421, "4.7.0")
        assert "short time" in r.text
        # one window later the last one still counts, in proportion to its overlap
        await trio.sleep(61)
        c = await _session_from(n, ctx, "192.0.2.20")
        assert (await c.reply()).code == 421
        await trio.sleep(121)  # two quiet windows: the count starts afresh
        c = await _session_from(n, ctx, "192.0.2.20")
        assert (await c.reply()).code == 220
        n.cancel_scope.cancel()


async def test_slowloris_command_is_dropped_at_the_command_deadline(ctx_factory, autojump_clock):
    """A byte every 10 s never lets a per-read timeout of 60 s fire; the deadline for the whole line does."""
    ctx = ctx_factory(smtpd={"command_timeout": 60})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        start = trio.current_time()
        sent = 0
        line = b"EHLO " + b"slow" * 100
        for byte in line:
            try:
                await c.send(bytes([byte]))
            except trio.BrokenResourceError:
                break
            sent += 1
            await trio.sleep(10)
            if trio.current_time() - start > 200:
                break
        with trio.fail_after(600):
            r = await c.reply()
        assert (r.code, r.enhanced) == (421, "4.4.2")
        assert await c.closed()
        assert 60 <= trio.current_time() - start <= 75
        assert sent < 10
    # a client that completes its commands is never cut off, however long the session
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        for _ in range(5):
            await trio.sleep(50)
            assert (await c.cmd("EHLO x")).code == 250
        n.cancel_scope.cancel()


async def test_slow_data_is_dropped_by_the_minimum_rate(ctx_factory, autojump_clock):
    """Data trickled at 10 octets per 20 s (below min_data_rate) is dropped after data_timeout plus
    size/rate, though no single read waits longer than data_timeout; the message is not kept."""
    ctx = ctx_factory(smtpd={"data_timeout": 60, "min_data_rate": 100, "command_timeout": 300})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO x")
        await c.cmd("MAIL FROM:<a@b.test>")
        await c.cmd("RCPT TO:<bob@example.test>")
        assert (await c.cmd("DATA")).code == 354
        start = trio.current_time()

        async def trickle() -> None:
            try:
                while True:
                    await c.send(b"0123456789")
                    await trio.sleep(20)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        n.start_soon(trickle)
        with trio.fail_after(600):  # (virtual time) without the minimum rate this would never end
            r = await c.reply()
        assert (r.code, r.enhanced) == (421, "4.4.2")
        elapsed = trio.current_time() - start
        assert 60 <= elapsed <= 70  # 60 s grace + ~30 octets / 100 per s
        assert await c.closed()
        n.cancel_scope.cancel()
    assert ctx.spool.count == 0
    # at the rate, a big message is fine (the deadline grows with what arrives)
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO x")
        await c.cmd("MAIL FROM:<a@b.test>")
        await c.cmd("RCPT TO:<bob@example.test>")
        assert (await c.cmd("DATA")).code == 354
        await c.send(b"Subject: steady\r\n\r\n")
        for _ in range(20):
            await c.send((b"x" * 398 + b"\r\n") * 10)  # 4 kB each 30 s: above 100 octets/s
            await trio.sleep(30)
        r = await c.cmd(b".")
        assert (r.code, r.enhanced) == (250, "2.0.0")
        n.cancel_scope.cancel()


async def test_bdat_chunks_share_the_content_deadline(ctx_factory, autojump_clock):
    """Tiny BDAT chunks, each within command_timeout, still have to keep up with min_data_rate."""
    ctx = ctx_factory(smtpd={"data_timeout": 60, "min_data_rate": 100, "command_timeout": 300})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO x")
        await c.cmd("MAIL FROM:<a@b.test>")
        await c.cmd("RCPT TO:<bob@example.test>")
        start = trio.current_time()
        codes = []
        for _ in range(20):
            try:
                await c.send(b"BDAT 1\r\nx")
            except trio.BrokenResourceError:
                break  # closed while we waited: the 421 is in the stream
            r = await c.reply()
            codes.append(r.code)
            if r.code != 250:
                break
            await trio.sleep(25)
        if codes[-1] == 250:
            codes.append((await c.reply()).code)
        assert codes[-1] == 421 and set(codes[:-1]) == {250}, codes
        assert trio.current_time() - start < 100
        assert await c.closed()
    assert ctx.spool.count == 0


async def test_junk_commands_count_as_errors_past_the_limit(ctx_factory):
    ctx = ctx_factory(smtpd={"max_junk_commands": 5, "max_errors": 3})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO x")
        for _ in range(5):
            assert (await c.cmd("NOOP")).code == 250
        # an accepted message resets the count
        await c.cmd("MAIL FROM:<a@b.test>")
        await c.cmd("RCPT TO:<bob@example.test>")
        await c.cmd("DATA")
        assert (await c.cmd(b"Subject: x\r\n\r\nx\r\n.")).code == 250
        for _ in range(5):
            assert (await c.cmd("RSET")).code == 250
        assert (await c.cmd("NOOP")).code == 250  # the 6th: an error now (the reply itself is still 250)
        assert (await c.cmd("VRFY bob")).code == 252
        r = await c.cmd("HELP")
        assert r.code == 214
        r = await c.reply()
        assert (r.code, r.enhanced) == (421, "4.7.0")
        assert await c.closed()


async def test_mail_refused_when_the_spool_has_no_room(ctx_factory, monkeypatch):
    ctx = ctx_factory(queue={"min_free_space": 1000})
    free = {"n": 10_000}
    monkeypatch.setattr(ctx.spool, "free_space", lambda: free["n"])
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO x")
        assert (await c.cmd("MAIL FROM:<a@b.test> SIZE=6000")).code == 250  # 1000 + 9000 <= 10000
        await c.cmd("RSET")
        r = await c.cmd("MAIL FROM:<a@b.test> SIZE=6001")
        assert (r.code, r.enhanced) == (452, "4.3.1")
        free["n"] = 999
        r = await c.cmd("MAIL FROM:<a@b.test>")
        assert (r.code, r.enhanced) == (452, "4.3.1")
        free["n"] = 10**9  # space came back
        assert (await c.cmd("MAIL FROM:<a@b.test>")).code == 250
        n.cancel_scope.cancel()
