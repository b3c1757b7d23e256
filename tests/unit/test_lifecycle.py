"""The server's life cycle without a process: reload refusals and the shutdown of
sessions, on a real listener bound to port 0 (real time, short timeouts)."""

from __future__ import annotations

import logging

import trio

from smtprs import _core
from smtprs.daemon import Server

from .conftest import make_config


async def _reply(stream: trio.SocketStream, parser: _core.ReplyParser) -> _core.Reply:
    with trio.fail_after(5):
        while (r := parser.next_reply()) is None:
            data = await stream.receive_some(4096)
            assert data, "closed"
            parser.receive_data(data)
    return r


async def test_reload_without_a_config_file_is_refused(tmp_path, caplog):
    cfg = make_config(tmp_path, smtpd={"listeners": [{"address": "127.0.0.1:0"}]})
    server = Server(cfg, None)
    caplog.set_level(logging.INFO, logger="smtprs")
    async with trio.open_nursery() as n:
        ctx = await n.start(server.run)
        assert await server.reload() is False
        assert server.ctx is ctx
        server.stop()
    assert "reload refused" in caplog.text and "no configuration file" in caplog.text


async def test_stop_answers_idle_sessions_and_waits_for_busy_ones(tmp_path):
    cfg = make_config(tmp_path, smtpd={"listeners": [{"address": "127.0.0.1:0"}], "shutdown_timeout": 30.0})
    server = Server(cfg, None)
    async with trio.open_nursery() as n:
        ctx = await n.start(server.run)
        port = ctx.bound[0][1]
        idle = await trio.open_tcp_stream("127.0.0.1", port)
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        pi, pb = _core.ReplyParser(), _core.ReplyParser()
        assert (await _reply(idle, pi)).code == 220
        assert (await _reply(busy, pb)).code == 220
        await busy.send_all(b"EHLO x\r\nMAIL FROM:<a@b.test>\r\n")
        assert (await _reply(busy, pb)).code == 250
        assert (await _reply(busy, pb)).code == 250
        server.stop()
        r = await _reply(idle, pi)
        assert (r.code, r.enhanced) == (421, "4.3.2")  # at once: not after the 30 s
        assert ctx.runtime.closing
        # the busy session finishes its transaction, gets its 250, then 421
        await busy.send_all(b"RCPT TO:<u@example.test>\r\nDATA\r\n")
        assert (await _reply(busy, pb)).code == 250
        assert (await _reply(busy, pb)).code == 354
        await busy.send_all(b"Subject: in the drain\r\n\r\nx\r\n.\r\n")
        r = await _reply(busy, pb)
        assert r.code == 250, r.text
        r = await _reply(busy, pb)
        assert (r.code, r.enhanced) == (421, "4.3.2")
    assert ctx.active_sessions == 0
    assert ctx.spool.count == 1  # acknowledged, so kept
