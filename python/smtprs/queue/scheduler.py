"""The scheduler: decides what is due, hands it to delivery, records outcomes.

Reads the spool at start-up (so mail queued before a restart is delivered) and
takes new messages from the session through ``submit``.  For each due message
it loads the envelope, asks the router for each pending recipient's next hop,
groups recipients by destination (one agent call, and so one SMTP transaction,
per destination; the groups of one message run side by side), runs the agents
(at most ``queue.delivery_concurrency`` messages at once), and writes the
per-recipient outcome back into the envelope: delivered and failed are final;
deferred recipients are retried after an exponential backoff with jitter
(retry_min doubling up to retry_max) until ``queue.max_lifetime`` has passed,
when they fail with 4.4.7.

Notices (bounce.py) are owed per recipient (``Recipient.notice``, following
DSN NOTIFY) as outcomes are recorded.  The envelope is saved with the debt
before the notices are queued and saved again after, so a crash can repeat a
notice but never lose one.  A message leaves the spool only when every
recipient is final and every notice owed has been queued.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from .. import maillog
from ..config import Config
from ..deliver.base import DeliveryAgent, DeliveryRequest, Outcome, Target
from ..envelope import Envelope
from ..errors import SpoolError
from ..route.router import Router, Unroutable
from .spool import Spool

if TYPE_CHECKING:
    from ..bounce import Notifier

EXPIRED = "4.4.7"  # RFC 3463: delivery time expired


def backoff(attempts: int, retry_min: float, retry_max: float, rng: random.Random | None = None) -> float:
    """Delay after the ``attempts``-th failed attempt: retry_min * 2**(n-1), capped,
    with +-10% jitter so a restart does not retry everything at the same moment."""
    base = min(retry_max, retry_min * (2 ** max(0, attempts - 1)))
    jitter: float = (rng or random).uniform(-0.1, 0.1) * base
    return float(max(0.0, min(retry_max, base + jitter)))


class Scheduler:
    def __init__(
        self,
        cfg: Config,
        spool: Spool,
        router: Router,
        agents: dict[str, DeliveryAgent],
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.router = router
        self.agents = agents
        self.now = now
        self._heap: list[tuple[float, str]] = []
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._wakeup = trio.Event()
        self._slots = trio.Semaphore(cfg.queue.delivery_concurrency)
        self._flushed: set[str] = set()  # messages whose every open recipient is due now
        self.notifier: Notifier | None = None

    def reconfigure(self, cfg: Config, router: Router) -> None:
        """A reloaded configuration: retry times, lifetime and routing follow it
        (delivery_concurrency needs a restart)."""
        self.cfg = cfg
        self.router = router

    # -- feeding ---------------------------------------------------------------
    def submit(self, envelope: Envelope) -> None:
        """A message was just committed: deliver it as soon as possible."""
        self._push(self.now(), envelope.queue_id)

    def flush(self) -> int:
        """Retry everything now (deferred recipients included); returns how many messages."""
        self._heap = [(0.0, qid) for _, qid in self._heap]
        heapq.heapify(self._heap)
        self._flushed.update(qid for _, qid in self._heap)
        self._wakeup.set()
        return len(self._heap)

    def _push(self, due: float, qid: str) -> None:
        if qid in self._queued:
            return
        self._queued.add(qid)
        heapq.heappush(self._heap, (due, qid))
        self._wakeup.set()

    @property
    def queue_length(self) -> int:
        return len(self._queued) + len(self._active)

    # -- running ---------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for qid in await trio.to_thread.run_sync(self.spool.open):
            env = self.spool.load(qid)
            if env is not None:
                due = env.next_due()  # None: every recipient final, notices still owed
                self._push(due if due is not None else 0.0, qid)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                now = self.now()
                while self._heap and self._heap[0][0] <= now:
                    _, qid = heapq.heappop(self._heap)
                    self._queued.discard(qid)
                    if qid in self._active:
                        continue
                    await self._slots.acquire()
                    self._active.add(qid)
                    nursery.start_soon(self._attempt, qid)
                self._wakeup = trio.Event()
                delay = self._heap[0][0] - self.now() if self._heap else 3600.0
                with trio.move_on_after(max(0.0, delay)):
                    await self._wakeup.wait()

    async def _attempt(self, qid: str) -> None:
        try:
            env = self.spool.load(qid)
            if env is not None:
                await self._deliver(env)
        except Exception as e:  # never let one message stop the queue
            maillog.error(f"{qid}: delivery attempt failed unexpectedly: {e!r}")
            self._push(self.now() + self.cfg.queue.retry_min, qid)
        finally:
            self._active.discard(qid)
            self._slots.release()

    async def _deliver(self, env: Envelope) -> None:
        now = self.now()
        forced = env.queue_id in self._flushed
        self._flushed.discard(env.queue_id)
        due = [i for i, r in enumerate(env.recipients) if not r.final] if forced else env.pending(now)
        groups: dict[tuple[str, str], list[Target]] = {}
        outcomes: list[Outcome] = []
        for i in due:
            rcpt = env.recipients[i]
            hop = self.router.route(rcpt.address)
            if isinstance(hop, Unroutable):
                outcomes.append(Outcome(i, "failed", str(hop.reply), "none", hop.reply.enhanced or ""))
                continue
            groups.setdefault((hop.kind, hop.destination), []).append(Target(i, rcpt.address, hop, dict(rcpt.params)))

        async def run(kind: str, targets: list[Target]) -> None:
            agent = self.agents.get(kind)
            if agent is None:
                outcomes.extend(Outcome(t.index, "deferred", f"451 4.3.5 no delivery agent for {kind}", kind) for t in targets)
                return
            request = DeliveryRequest(
                env.queue_id, env.sender, self.spool.content(env.queue_id), env.arrival, tuple(targets), env.size, dict(env.params)
            )
            try:
                outcomes.extend(await agent.deliver(request))
            except Exception as e:
                maillog.error(f"{env.queue_id}: delivery agent {kind} failed: {e!r}")
                outcomes.extend(Outcome(t.index, "deferred", f"451 4.3.0 delivery agent error: {e!r}", kind) for t in targets)

        async with trio.open_nursery() as nursery:
            for (kind, _), targets in groups.items():
                nursery.start_soon(run, kind, targets)
        self._record(env, outcomes)
        await self._notify_and_store(env)

    async def _notify_and_store(self, env: Envelope) -> None:
        now = self.now()
        notifier = self.notifier
        owes = any(r.notice for r in env.recipients) or (
            notifier is not None and any(notifier.owes_delay_notice(env, r, now) for r in env.recipients)
        )
        if owes and notifier is not None:
            await self.spool.save(env)  # the debt is on disk before the notices go out
            try:
                await notifier.send(env, now)
            except SpoolError as e:
                maillog.spool_problem(f"{env.queue_id}: cannot queue a notification: {e}")
                await self.spool.save(env)
                self._push(now + self.cfg.queue.retry_min, env.queue_id)
                return
        elif owes:  # no notifier (unit tests): nothing will send them
            for r in env.recipients:
                r.notice = ""
        if env.done:
            await self.spool.remove(env.queue_id)
            maillog.removed(env.queue_id)
        else:
            await self.spool.save(env)
            due = env.next_due()
            if due is not None:
                self._push(due, env.queue_id)

    def _record(self, env: Envelope, outcomes: list[Outcome]) -> None:
        now = self.now()
        q = self.cfg.queue
        delay = now - env.arrival
        for o in outcomes:
            r = env.recipients[o.index]
            r.attempts += 1
            r.last_attempt = now
            r.status = o.status_code
            r.remote_mta = o.remote_mta
            r.diagnostic = o.diagnostic
            notify = r.notify
            if o.status == "delivered":
                r.state = "delivered"
                r.last_error = ""
                if "SUCCESS" in notify and not o.dsn_relayed:
                    r.notice = "delivered" if o.relay == "local" else "relayed"
                maillog.delivered(env.queue_id, r.address, o.relay, delay, o.detail, orig=r.original)
            elif o.status == "failed" or delay >= q.max_lifetime:
                r.state = "failed"
                r.last_error = o.detail
                if o.status != "failed":
                    r.status = EXPIRED
                    r.last_error = f"message expired after {delay:.0f}s in the queue; last error: {o.detail}"
                if not notify or "FAILURE" in notify:
                    r.notice = "failed"
                maillog.failed(env.queue_id, r.address, o.relay, delay, r.last_error, orig=r.original)
            else:
                r.state = "deferred"
                r.last_error = o.detail
                wait = backoff(r.attempts, q.retry_min, q.retry_max)
                # the last try falls on the expiry time, so the bounce is not late by a whole backoff
                wait = max(0.0, min(wait, env.arrival + q.max_lifetime - now))
                r.next_attempt = now + wait
                maillog.deferred(env.queue_id, r.address, o.relay, delay, o.detail, wait, orig=r.original)
