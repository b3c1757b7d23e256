"""Retry backoff and the delivery loop."""

from __future__ import annotations

import random

from smtprs.queue.scheduler import backoff


def test_backoff_doubles_with_jitter_and_caps():
    rng = random.Random(1)
    delays = [backoff(n, 300, 14400, rng) for n in range(1, 10)]
    for n, d in enumerate(delays, start=1):
        base = min(14400, 300 * 2 ** (n - 1))
        assert 0.9 * base <= d <= min(14400, 1.1 * base)
    assert delays[-1] <= 14400


async def test_delivers_queued_mail_and_survives_many_messages(ctx_factory):
    """The scheduler delivers more messages than its concurrency and removes them."""
    import trio

    from smtprs.envelope import Envelope, Recipient

    ctx = ctx_factory(queue={"delivery_concurrency": 2})
    async with trio.open_nursery() as n:
        await n.start(ctx.scheduler.run)
        for i in range(7):
            w = ctx.spool.create()
            w.write(b"Subject: %d\r\n\r\nbody\r\n" % i)
            env = Envelope(
                queue_id=w.queue_id, sender="a@b.test", recipients=[Recipient(f"u{i % 2}@example.test")], arrival=1.0
            )
            await ctx.spool.commit(w, env)
            ctx.scheduler.submit(env)
        with trio.fail_after(10):
            while ctx.spool.count:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    files = list((ctx.cfg.data_path / "mail").glob("u*/new/*"))
    assert len(files) == 7


async def test_a_notice_owed_before_a_crash_is_sent_after_restart(ctx_factory):
    """The envelope is saved with the notice owed before the notice is queued:
    a server that stops in between sends it when it starts again."""
    import time

    import trio

    from smtprs.envelope import Envelope, Recipient

    first = ctx_factory()
    w = first.spool.create()
    w.write(b"Subject: lost?\r\n\r\nbody\r\n")
    env = Envelope(
        queue_id=w.queue_id,
        sender="alice@example.test",
        recipients=[
            Recipient("x@remote.test", state="failed", status="5.1.1", diagnostic="550 5.1.1 no", notice="failed")
        ],
        arrival=time.time(),
    )
    await first.spool.commit(w, env)
    restarted = ctx_factory()  # a new server over the same data directory
    async with trio.open_nursery() as n:
        await n.start(restarted.scheduler.run)
        inbox = restarted.cfg.data_path / "mail" / "alice" / "new"

        def settled() -> bool:
            return restarted.spool.count == 0 and inbox.is_dir() and any(inbox.iterdir())

        with trio.fail_after(10):
            while not settled():
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    (bounce,) = (restarted.cfg.data_path / "mail" / "alice" / "new").iterdir()
    text = bounce.read_bytes()
    assert text.startswith(b"Return-Path: <>\n")
    assert b"Status: 5.1.1" in text and b"Subject: lost?" in text
    assert restarted.spool.count == 0 and env.queue_id not in restarted.spool
