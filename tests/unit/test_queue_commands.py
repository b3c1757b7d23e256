"""Queue commands in the scheduler that owns the message (hold, release, delete,
requeue, show) racing real delivery attempts; the metrics text format."""

from __future__ import annotations

import time

import pytest
import trio

from smtprs import metrics
from smtprs.deliver.base import DeliveryRequest, Outcome
from smtprs.envelope import Envelope, Recipient
from smtprs.queue import scheduler as scheduler_mod
from smtprs.queue.control import _execute


class SlowAgent:
    """Defers every recipient, after waiting for ``gate`` (set it to let the attempt end)."""

    name = "maildir"

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.started = trio.Event()
        self.attempts = 0

    async def deliver(self, request: DeliveryRequest) -> list[Outcome]:
        self.attempts += 1
        self.started.set()
        await self.gate.wait()
        return [Outcome(t.index, "deferred", "451 4.3.0 try later", "local") for t in request.targets]


async def queue_one(ctx) -> str:  # type: ignore[no-untyped-def]
    w = ctx.spool.create()
    w.write(b"Subject: one\r\nX-Test: yes\r\n\r\nbody\r\n")
    env = Envelope(
        queue_id=w.queue_id, sender="a@b.test", recipients=[Recipient("u@example.test")], arrival=time.time()
    )
    await ctx.spool.commit(w, env)
    ctx.scheduler.submit(env)
    return w.queue_id


async def test_hold_waits_for_the_attempt_then_nothing_is_tried_until_release(ctx_factory) -> None:
    ctx = ctx_factory(queue={"retry_min": 3600.0, "retry_max": 7200.0, "max_lifetime": 1e12})
    agent = SlowAgent()
    ctx.scheduler.agents["maildir"] = agent
    async with trio.open_nursery() as n:
        await n.start(ctx.scheduler.run)
        qid = await queue_one(ctx)
        await agent.started.wait()
        assert (await _execute("SHOW", qid, [ctx.scheduler], None)).startswith('OK {"queue_id"')
        async with trio.open_nursery() as inner:
            inner.start_soon(_execute, "HOLD", qid, [ctx.scheduler], None)
            await trio.sleep(0.1)
            assert qid not in ctx.scheduler.held  # waiting for the attempt in progress
            agent.gate.set()
        assert qid in ctx.scheduler.held and ctx.spool.load(qid).held  # type: ignore[union-attr]
        assert ctx.scheduler.flush() == 0
        assert await _execute("FLUSH", qid, [ctx.scheduler], None) == f"ERR {qid} is on hold (release it first)"
        await trio.sleep(0.1)
        assert agent.attempts == 1
        assert await _execute("RELEASE", qid, [ctx.scheduler], None) == f"OK {qid} released"
        assert await _execute("REQUEUE", qid, [ctx.scheduler], None) == f"OK {qid} requeued"
        with trio.fail_after(5):
            while agent.attempts < 2:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        info = ctx.scheduler.show(qid)
        assert info["recipients"][0]["attempts"] == 2 and info["headers"] == "Subject: one\r\nX-Test: yes\r\n"
        assert await _execute("DELETE", qid, [ctx.scheduler], None) == f"OK {qid} deleted"
        assert qid not in ctx.spool
        assert await _execute("HOLD", qid, [ctx.scheduler], None) == f"ERR notqueued {qid}"
        n.cancel_scope.cancel()


async def test_a_command_about_a_message_stuck_in_delivery_answers_busy(
    ctx_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_mod, "BUSY_WAIT", 0.2)
    ctx = ctx_factory()
    agent = SlowAgent()
    ctx.scheduler.agents["maildir"] = agent
    async with trio.open_nursery() as n:
        await n.start(ctx.scheduler.run)
        qid = await queue_one(ctx)
        await agent.started.wait()
        answer = await _execute("DELETE", qid, [ctx.scheduler], None)
        assert answer.startswith("ERR busy:") and qid in ctx.spool
        assert (await _execute("DELETE", "", [ctx.scheduler], None)).startswith("ERR usage")
        assert (await _execute("FROB", "", [ctx.scheduler], None)).startswith("ERR unknown command")
        n.cancel_scope.cancel()


def test_metrics_render_and_merge() -> None:
    a, b = metrics.Metrics(), metrics.Metrics()
    a.inc("smtprs_connections_total", mode="mx")
    b.inc("smtprs_connections_total", 2, mode="mx")
    b.inc("smtprs_messages_rejected_total", stage="RCPT", reason='550 "5.1.1"')
    a.observe("smtprs_acceptance_seconds", 0.003)
    b.observe("smtprs_acceptance_seconds", 100.0)
    a.gauge("smtprs_queue_oldest_age_seconds", lambda: 5.0)
    b.gauge("smtprs_queue_oldest_age_seconds", lambda: 7.0)
    a.gauge("smtprs_queue_messages", lambda: 1)
    b.gauge("smtprs_queue_messages", lambda: 2)
    merged = metrics.merge([a.snapshot(), b.snapshot()])
    text = metrics.render(merged)
    assert 'smtprs_connections_total{mode="mx"} 3' in text
    assert 'smtprs_messages_rejected_total{reason="550 \\"5.1.1\\"",stage="RCPT"} 1' in text
    assert "smtprs_queue_oldest_age_seconds 7" in text and "smtprs_queue_messages 3" in text
    assert 'smtprs_acceptance_seconds_bucket{le="0.0025"} 0' in text
    assert 'smtprs_acceptance_seconds_bucket{le="0.005"} 1' in text
    assert 'smtprs_acceptance_seconds_bucket{le="60"} 1' in text
    assert 'smtprs_acceptance_seconds_bucket{le="300"} 2' in text
    assert 'smtprs_acceptance_seconds_bucket{le="+Inf"} 2' in text
    assert "smtprs_acceptance_seconds_count 2" in text and "smtprs_acceptance_seconds_sum 100.003" in text
    assert "# TYPE smtprs_delivery_seconds histogram" in text  # declared even without samples
    assert metrics.value(merged, "smtprs_connections_total", mode="mx") == 3
