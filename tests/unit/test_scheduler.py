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


async def test_a_batch_shares_one_spool_call_and_isolates_a_failing_message(ctx_factory, monkeypatch):
    """Due messages for one destination are attempted by one batch: their removes go
    to the spool in one call, and a message whose attempt raises is retried while
    the others of its batch are delivered."""
    import trio

    from smtprs.deliver.base import Outcome
    from smtprs.envelope import Envelope, Recipient

    ctx = ctx_factory(queue={"delivery_concurrency": 50, "retry_min": 3600})
    sched = ctx.scheduler
    qids = []
    for i in range(5):
        w = ctx.spool.create()
        w.write(b"Subject: %d\r\n\r\nbody\r\n" % i)
        env = Envelope(queue_id=w.queue_id, sender="a@b.test", recipients=[Recipient("u@example.test")], arrival=1.0)
        await ctx.spool.commit(w, env)
        qids.append(env.queue_id)
    (kind,) = {sched.router.route("u@example.test").kind}
    bad = qids[2]
    calls: list[str] = []

    class Agent:
        name = kind

        async def deliver(self, request):  # type: ignore[no-untyped-def]
            calls.append(request.queue_id)
            await trio.sleep(0)
            return [Outcome(t.index, "delivered", "ok", "local") for t in request.targets]

    sched.agents[kind] = Agent()  # type: ignore[assignment]
    content = ctx.spool.content

    def failing_content(qid: str):  # type: ignore[no-untyped-def]
        if qid == bad:
            raise RuntimeError("boom")
        return content(qid)

    monkeypatch.setattr(ctx.spool, "content", failing_content)
    removes: list[list[str]] = []
    remove_many = ctx.spool.remove_many

    async def counting_remove_many(ids):  # type: ignore[no-untyped-def]
        removes.append(list(ids))
        return await remove_many(ids)

    monkeypatch.setattr(ctx.spool, "remove_many", counting_remove_many)
    for q in qids:
        sched.submit(ctx.spool.load(q))  # type: ignore[arg-type]
    async with trio.open_nursery() as n:
        await n.start(sched.run)
        with trio.fail_after(10):
            while ctx.spool.count > 1 or sched._active:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    assert sorted(calls) == sorted(q for q in qids if q != bad)
    assert removes == [[q for q in qids if q != bad]]
    assert list(ctx.spool.ids()) == [bad] and bad in sched._queued  # retried later
    assert sched._slots.value == 50
