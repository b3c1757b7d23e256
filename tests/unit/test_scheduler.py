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
            env = Envelope(queue_id=w.queue_id, sender="a@b.test", recipients=[Recipient(f"u{i % 2}@example.test")], arrival=1.0)
            await ctx.spool.commit(w, env)
            ctx.scheduler.submit(env)
        with trio.fail_after(10):
            while ctx.spool.count:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    files = list((ctx.cfg.data_path / "mail").glob("u*/new/*"))
    assert len(files) == 7
