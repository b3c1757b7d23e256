"""Flow control (queue.in_flow_delay): the scheduler's backlog of messages
waiting for their first delivery attempt, and the wait at MAIL while it is
larger than queue.delivery_concurrency."""

from __future__ import annotations

import trio

from smtprs.deliver.base import Outcome
from smtprs.envelope import Envelope, Recipient
from smtprs.errors import ConfigError

from .conftest import make_config, start_session


async def _queue(ctx, n: int, *, submit: bool = True) -> list[str]:  # type: ignore[no-untyped-def]
    qids = []
    for i in range(n):
        w = ctx.spool.create()
        w.write(b"Subject: %d\r\n\r\nbody\r\n" % i)
        env = Envelope(queue_id=w.queue_id, sender="a@b.test", recipients=[Recipient("u@example.test")], arrival=1.0)
        await ctx.spool.commit(w, env)
        if submit:
            ctx.scheduler.submit(env)
        qids.append(env.queue_id)
    return qids


class _GatedAgent:
    """Holds every delivery until ``gate`` is set; counts the attempts begun."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.started = 0

    async def deliver(self, request):  # type: ignore[no-untyped-def]
        self.started += 1
        await self.gate.wait()
        return [Outcome(t.index, "delivered", "ok", "local") for t in request.targets]


def _gate(ctx) -> _GatedAgent:  # type: ignore[no-untyped-def]
    agent = _GatedAgent()
    ctx.scheduler.agents[ctx.scheduler.router.route("u@example.test").kind] = agent
    return agent


async def test_backlog_counts_submitted_messages_until_their_attempt_takes_a_slot(ctx_factory):
    ctx = ctx_factory(queue={"delivery_concurrency": 2})
    sched = ctx.scheduler
    agent = _gate(ctx)
    await _queue(ctx, 5)
    assert (sched.backlog, sched.capacity, sched.behind()) == (5, 2, True)
    async with trio.open_nursery() as n:
        await n.start(sched.run)
        with trio.fail_after(5):
            while agent.started < 2:
                await trio.sleep(0.01)
        # two attempts hold the two slots; the third message was taken off the
        # heap but waits for a slot: it has not been attempted yet
        assert sched.backlog == 3 and sched.behind()
        caught_up = trio.Event()

        async def wait() -> None:
            await sched.caught_up()
            caught_up.set()

        n.start_soon(wait)
        await trio.sleep(0.05)
        assert not caught_up.is_set()
        agent.gate.set()
        with trio.fail_after(5):
            await caught_up.wait()
            while ctx.spool.count:
                await trio.sleep(0.01)
        assert sched.backlog == 0 and not sched.behind()
        n.cancel_scope.cancel()


async def test_mail_found_in_the_spool_at_start_up_is_no_backlog(ctx_factory):
    ctx = ctx_factory(queue={"delivery_concurrency": 1})
    sched = ctx.scheduler
    agent = _gate(ctx)
    await _queue(ctx, 4, submit=False)
    async with trio.open_nursery() as n:
        await n.start(sched.run)  # reads the spool: 4 messages, none submitted
        with trio.fail_after(5):
            while agent.started < 1:
                await trio.sleep(0.01)
        assert sched.backlog == 0 and not sched.behind()
        agent.gate.set()
        n.cancel_scope.cancel()


async def test_held_deleted_and_requeued_messages_leave_the_backlog(ctx_factory):
    ctx = ctx_factory(queue={"delivery_concurrency": 1})
    sched = ctx.scheduler
    a, b, c, d = await _queue(ctx, 4)
    assert sched.backlog == 4
    await sched.hold(a)
    await sched.delete(b)
    await sched.requeue(c)
    assert sched.backlog == 1 and not sched.behind()
    assert sched.flush_one(d)
    assert sched.backlog == 0


async def test_mail_waits_while_delivery_is_behind(ctx_factory):
    """MAIL is answered after at most in_flow_delay while the backlog exceeds
    delivery_concurrency, at once when delivery catches up, and counted."""
    ctx = ctx_factory(queue={"delivery_concurrency": 1, "in_flow_delay": 0.4})
    await _queue(ctx, 2)  # no scheduler running: the backlog stays
    assert ctx.scheduler.behind()
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        assert (await c.cmd("EHLO client.test")).code == 250
        t0 = trio.current_time()
        assert (await c.cmd("MAIL FROM:<a@remote.test>")).code == 250
        assert trio.current_time() - t0 >= 0.35  # the whole delay: nothing caught up
        assert (await c.cmd("RSET")).code == 250

        async def catch_up() -> None:
            await trio.sleep(0.1)
            assert ctx.scheduler.flush_one(next(iter(ctx.spool.ids())))  # backlog 2 -> 1 (no I/O)

        n.start_soon(catch_up)
        t0 = trio.current_time()
        assert (await c.cmd("MAIL FROM:<a@remote.test>")).code == 250
        waited = trio.current_time() - t0
        assert 0.05 <= waited < 0.35, waited  # woken when the backlog dropped
        assert (await c.cmd("RSET")).code == 250
        t0 = trio.current_time()
        assert (await c.cmd("MAIL FROM:<a@remote.test>")).code == 250
        assert trio.current_time() - t0 < 0.2  # not behind: no wait
        assert (await c.cmd("QUIT")).code == 221
    assert ctx.metrics.counters[("smtprs_flow_delays_total", ())] == 2


async def test_no_wait_with_in_flow_delay_0(ctx_factory):
    ctx = ctx_factory(queue={"delivery_concurrency": 1, "in_flow_delay": 0})
    await _queue(ctx, 3)
    assert ctx.scheduler.behind()
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        assert (await c.cmd("EHLO client.test")).code == 250
        t0 = trio.current_time()
        assert (await c.cmd("MAIL FROM:<a@remote.test>")).code == 250
        assert trio.current_time() - t0 < 0.2
        assert (await c.cmd("QUIT")).code == 221
    assert ("smtprs_flow_delays_total", ()) not in ctx.metrics.counters


def test_the_null_backend_has_no_flow_control(ctx_factory):
    assert ctx_factory().session.flow is not None
    assert ctx_factory(queue={"backend": "null"}).session.flow is None


def test_in_flow_delay_is_at_most_one_second(tmp_path):
    assert make_config(tmp_path).queue.in_flow_delay == 1.0
    for bad in (1.5, -0.1):
        try:
            make_config(tmp_path, queue={"in_flow_delay": bad})
        except ConfigError as e:
            assert "queue.in_flow_delay" in str(e)
        else:
            raise AssertionError(f"in_flow_delay = {bad} accepted")
