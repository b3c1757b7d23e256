"""The scheduler: decides what is due, hands it to delivery, records outcomes.

Reads the spool at start-up (so mail queued before a restart is delivered) and
takes new messages from the session through ``submit``.  For each due message
it loads the envelope, asks the router for each pending recipient's next hop,
groups recipients by destination (one agent call, and so one SMTP transaction,
per destination; the groups of one message run side by side), runs the agents
(at most ``queue.delivery_concurrency`` messages at once), and writes the
per-recipient outcome back into the envelope.  Due messages bound for one
destination are attempted in batches (up to ``BATCH_MAX``): one task makes
their agent calls and stores their envelopes with one ``save_many`` and one
``remove_many``; a message with several destinations is a batch of its own,
and one message's failure does not stop the others of its batch.  Outcomes:
delivered and failed are final; deferred recipients are retried after an
exponential backoff with jitter (retry_min doubling up to retry_max) until
``queue.max_lifetime`` has passed, when they fail with 4.4.7.

Notices (bounce.py) are owed per recipient (``Recipient.notice``, following
DSN NOTIFY) as outcomes are recorded.  The envelope is saved with the debt
before the notices are queued and saved again after, so a crash can repeat a
notice but never lose one.  A message leaves the spool only when every
recipient is final and every notice owed has been queued.

Queue commands (``smtprs queue ...`` through queue/control.py) act here, in
the process that owns the shard, never behind its back: ``hold``,
``release``, ``delete``, ``requeue``, ``flush_one`` and ``show``.  A command
about a message being delivered waits for that attempt to end (a few seconds
at most, else ``Busy``), and while it works the message counts as active, so
no attempt can start on it; a held message (``Envelope.held``, saved in its
envelope, so it survives a restart) is never attempted until released.

Flow control (``queue.in_flow_delay``, as Postfix's in_flow_delay): the
messages submitted that wait for their first delivery attempt (``backlog``;
an attempt begins when its message takes a delivery slot) are counted, and
sessions ask ``behind()`` (more of them than ``capacity``, the
delivery_concurrency the slots were made with) and wait in ``caught_up()``
before answering MAIL.  Messages found in the spool at start-up, retries
and messages a queue command has touched do not count.

Outcomes are counted in ``metrics`` (deliveries by transport and result,
arrival-to-delivery latency) and reported to the library's ``hooks``
(on_delivered, on_bounced, on_deferred: hooks.py), loaded from the
configuration or given by a program that embeds the server.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from .. import maillog
from ..config import Config
from ..deliver.base import DeliveryAgent, DeliveryRequest, Outcome, Target
from ..envelope import Envelope
from ..errors import SpoolError
from ..hops import Unroutable
from ..route.router import Router
from .backend import SpoolBackend

if TYPE_CHECKING:
    from ..bounce import Notifier
    from ..hooks import Hooks
    from ..metrics import Metrics

EXPIRED = "4.4.7"  # RFC 3463: delivery time expired
BUSY_WAIT = 3.0  # how long a queue command waits for a delivery attempt in progress
SHOW_HEADER_MAX = 64 * 1024  # `queue show` returns at most this much of the header block
BATCH_MAX = 32  # messages for one destination attempted by one task
_RESULTS = {"delivered": "delivered", "failed": "bounced"}  # an outcome's status -> the metric's result


@dataclass(eq=False)
class _Plan:
    """One message's attempt: its due recipients grouped by (kind, destination),
    and the outcomes as they come."""

    env: Envelope
    groups: dict[tuple[str, str], list[Target]] = field(default_factory=dict)
    outcomes: list[Outcome] = field(default_factory=list)
    kinds: dict[int, str] = field(default_factory=dict)
    error: Exception | None = None  # the attempt failed unexpectedly: retried, outcomes ignored


class Busy(Exception):
    """The message is being delivered and the attempt did not end in time."""


class NotQueued(Exception):
    """No such message in this scheduler's spool."""


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
        spool: SpoolBackend,
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
        self.capacity = cfg.queue.delivery_concurrency  # the slots (delivery_concurrency needs a restart)
        self._slots = trio.Semaphore(self.capacity)
        self._new: set[str] = set()  # submitted, first attempt not begun yet: the flow control's backlog
        self._caught_up = trio.Event()  # set while the backlog is within capacity
        self._caught_up.set()
        self._flushed: set[str] = set()  # messages whose every open recipient is due now
        self._attempt_done: dict[str, trio.Event] = {}  # queue commands waiting for an attempt to end
        self.held: set[str] = set()
        self.notifier: Notifier | None = None
        self.metrics: Metrics | None = None
        self.hooks: Hooks | None = None

    def reconfigure(self, cfg: Config, router: Router) -> None:
        """A reloaded configuration: retry times, lifetime and routing follow it
        (delivery_concurrency needs a restart)."""
        self.cfg = cfg
        self.router = router

    # -- feeding ---------------------------------------------------------------
    def submit(self, envelope: Envelope) -> None:
        """A message was just committed: deliver it as soon as possible."""
        self._new.add(envelope.queue_id)
        if len(self._new) > self.capacity and self._caught_up.is_set():
            self._caught_up = trio.Event()
        self._push(self.now(), envelope.queue_id)

    # -- flow control (queue.in_flow_delay) --------------------------------------
    @property
    def backlog(self) -> int:
        """Messages submitted that wait for their first delivery attempt."""
        return len(self._new)

    def behind(self) -> bool:
        """More new messages wait than the delivery slots can take."""
        return len(self._new) > self.capacity

    async def caught_up(self) -> None:
        """Return once the backlog is within capacity (the caller bounds the wait)."""
        while self.behind():
            if self._caught_up.is_set():  # (never: submit clears it when the backlog grows past capacity)
                self._caught_up = trio.Event()
            await self._caught_up.wait()

    def _not_new(self, qid: str) -> None:
        """``qid``'s first attempt began (or a queue command took it over): it leaves the backlog."""
        new = self._new
        if qid in new:
            new.discard(qid)
            if len(new) <= self.capacity:
                self._caught_up.set()

    def flush(self) -> int:
        """Retry everything now (deferred recipients included); returns how many messages."""
        self._heap = [(0.0, qid) for _, qid in self._heap]
        heapq.heapify(self._heap)
        self._flushed.update(qid for _, qid in self._heap)
        self._wakeup.set()
        return len(self._heap)

    def flush_one(self, qid: str) -> bool:
        """Retry one message now; False if it is not queued here (or is held)."""
        if qid not in self.spool or qid in self.held:
            return False
        self._reschedule(qid, 0.0)
        self._flushed.add(qid)
        return True

    def _reschedule(self, qid: str, due: float | None) -> None:
        """Replace ``qid``'s place in the heap by ``due`` (None: take it out)."""
        self._not_new(qid)
        if qid in self._queued:
            self._heap = [(d, q) for d, q in self._heap if q != qid]
            heapq.heapify(self._heap)
            self._queued.discard(qid)
        if due is not None:
            self._push(due, qid)

    # -- queue commands (queue/control.py) --------------------------------------
    @asynccontextmanager
    async def _owned(self, qid: str) -> AsyncIterator[Envelope]:
        """Hold ``qid`` against delivery while a command changes it: waits for an
        attempt in progress to end, then marks it active so none starts."""
        with trio.move_on_after(BUSY_WAIT):
            while qid in self._active:
                await self._attempt_done.setdefault(qid, trio.Event()).wait()
        if qid in self._active:
            raise Busy(f"{qid} is being delivered now; try again")
        env = self.spool.load(qid)
        if env is None:
            raise NotQueued(qid)
        self._active.add(qid)
        try:
            yield env
        finally:
            self._active.discard(qid)

    async def hold(self, qid: str) -> None:
        async with self._owned(qid) as env:
            if not env.held:
                env.held = True
                await self.spool.save(env)
            self.held.add(qid)
            self._reschedule(qid, None)
        maillog.queue_action(qid, "put on hold")

    async def release(self, qid: str) -> None:
        async with self._owned(qid) as env:
            if env.held:
                env.held = False
                await self.spool.save(env)
            self.held.discard(qid)
            due = env.next_due()
            self._reschedule(qid, due if due is not None else 0.0)
        maillog.queue_action(qid, "released from hold")

    async def delete(self, qid: str) -> None:
        """Remove a message without delivering it or notifying anyone (as postsuper -d)."""
        async with self._owned(qid):
            self._reschedule(qid, None)
            await self.spool.remove(qid)
            self.held.discard(qid)
        maillog.queue_action(qid, "deleted by the administrator")

    async def delete_deferred(self) -> int:
        """Delete every message (not on hold) with a deferred recipient; returns how many."""
        n = 0
        for qid in self.spool.ids():
            env = self.spool.load(qid)
            if env is None or env.held or not any(r.state == "deferred" for r in env.recipients):
                continue
            try:
                await self.delete(qid)
            except (Busy, NotQueued):
                continue
            n += 1
        return n

    async def requeue(self, qid: str) -> None:
        """Make every open recipient pending and due now, so the next attempt routes
        it afresh (after a change of transport or relayhost) and retries at once.
        A held message stays held."""
        async with self._owned(qid) as env:
            for r in env.recipients:
                if not r.final:
                    r.state = "pending"
                    r.next_attempt = 0.0
            await self.spool.save(env)
            self._reschedule(qid, None if env.held else 0.0)
        maillog.queue_action(qid, "requeued")

    def show(self, qid: str) -> dict[str, Any]:
        """The envelope (every recipient's state) and the header block of ``qid``."""
        env = self.spool.load(qid)
        if env is None:
            raise NotQueued(qid)
        content = self.spool.content(qid)
        with content.open() as fh:
            head = fh.read(SHOW_HEADER_MAX)
        end = head.find(b"\r\n\r\n")
        headers = head[: end + 2] if end >= 0 else head
        return {
            **asdict(env),
            "active": qid in self._active,
            "content_size": content.length,
            "headers": headers.decode("utf-8", "replace"),
        }

    def stats(self) -> dict[str, float]:
        oldest = self.spool.oldest_arrival()
        return {
            "messages": self.spool.count,
            "held": len(self.held),
            "active": len(self._active),
            "oldest_age": max(0.0, self.now() - oldest) if oldest is not None else 0.0,
        }

    def _push(self, due: float, qid: str) -> None:
        if qid in self._queued:
            return
        self._queued.add(qid)
        heapq.heappush(self._heap, (due, qid))
        self._wakeup.set()

    # -- running ---------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        for qid in await trio.to_thread.run_sync(self.spool.open):
            env = self.spool.load(qid)
            if env is not None and env.held:
                self.held.add(qid)
            elif env is not None:
                due = env.next_due()  # None: every recipient final, notices still owed
                self._push(due if due is not None else 0.0, qid)
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                now = self.now()
                batches: dict[tuple[str, str], list[_Plan]] = {}  # one destination's messages
                while self._heap and self._heap[0][0] <= now:
                    _, qid = heapq.heappop(self._heap)
                    self._queued.discard(qid)
                    if qid in self._active:  # being attempted, or a queue command has it (and reschedules it)
                        self._not_new(qid)
                        continue
                    if self._slots.value == 0:  # the batches formed so far hold slots: start them first
                        self._start_batches(nursery, batches)
                    await self._slots.acquire()
                    self._active.add(qid)
                    self._not_new(qid)  # its attempt begins: it has a slot
                    plan = self._plan(qid)
                    if plan is None:
                        self._end_attempt(qid)
                    elif len(plan.groups) != 1:  # several destinations (or none): a batch of its own
                        nursery.start_soon(self._run_batch, [plan])
                    else:
                        key = next(iter(plan.groups))
                        batch = batches.setdefault(key, [])
                        batch.append(plan)
                        if len(batch) >= BATCH_MAX:
                            nursery.start_soon(self._run_batch, batches.pop(key))
                self._start_batches(nursery, batches)
                self._wakeup = trio.Event()
                delay = self._heap[0][0] - self.now() if self._heap else 3600.0
                with trio.move_on_after(max(0.0, delay)):
                    await self._wakeup.wait()

    def _start_batches(self, nursery: trio.Nursery, batches: dict[tuple[str, str], list[_Plan]]) -> None:
        for batch in batches.values():
            nursery.start_soon(self._run_batch, batch)
        batches.clear()

    def _end_attempt(self, qid: str) -> None:
        self._active.discard(qid)
        self._slots.release()
        waiting = self._attempt_done.pop(qid, None)
        if waiting is not None:
            waiting.set()

    def _attempt_failed(self, qid: str, e: BaseException) -> None:
        maillog.error(f"{qid}: delivery attempt failed unexpectedly: {e!r}")  # never let one message stop the queue
        self._push(self.now() + self.cfg.queue.retry_min, qid)

    def _plan(self, qid: str) -> _Plan | None:
        """Load ``qid`` and route its due recipients, grouped by destination;
        None if there is nothing to attempt (gone, held, or the plan failed)."""
        try:
            env = self.spool.load(qid)
            if env is None or env.held:
                return None
            now = self.now()
            forced = qid in self._flushed
            self._flushed.discard(qid)
            due = [i for i, r in enumerate(env.recipients) if not r.final] if forced else env.pending(now)
            plan = _Plan(env)
            for i in due:
                rcpt = env.recipients[i]
                hop = self.router.route(rcpt.address)
                if isinstance(hop, Unroutable):  # 4xx: an error:4.x.x transport, tried again later
                    plan.outcomes.append(
                        Outcome(
                            i,
                            "deferred" if hop.reply.code < 500 else "failed",
                            str(hop.reply),
                            "none",
                            hop.reply.enhanced or "",
                        )
                    )
                    continue
                plan.kinds[i] = hop.kind
                plan.groups.setdefault((hop.kind, hop.destination), []).append(
                    Target(i, rcpt.address, hop, dict(rcpt.params))
                )
            return plan
        except Exception as e:
            self._attempt_failed(qid, e)
            return None

    async def _run_batch(self, plans: list[_Plan]) -> None:
        """One task for a batch of messages: every agent call of the batch (side by
        side, as separate attempts would run them), then the outcomes recorded,
        the notices queued and the envelopes stored -- the spool's saves and
        removes of the whole batch in one call each -- then the hooks.  A
        message whose attempt raises is logged and retried; the others go on."""
        try:
            deliveries = [(p, kind, targets) for p in plans for (kind, _), targets in p.groups.items()]
            if len(deliveries) == 1:
                await self._run_agent(*deliveries[0])
            elif deliveries:
                async with trio.open_nursery() as nursery:
                    for d in deliveries:
                        nursery.start_soon(self._run_agent, *d)
            stored: list[_Plan] = []
            to_save: list[_Plan] = []
            to_remove: list[_Plan] = []
            for p in plans:
                if p.error is not None:
                    self._attempt_failed(p.env.queue_id, p.error)
                    continue
                try:
                    self._record(p.env, p.outcomes, p.kinds)
                    if not await self._notify(p.env):
                        stored.append(p)  # saved already (the notices could not be queued)
                    elif p.env.done:
                        to_remove.append(p)
                    else:
                        to_save.append(p)
                except Exception as e:
                    self._attempt_failed(p.env.queue_id, e)
            if to_remove:
                errors = await self.spool.remove_many([p.env.queue_id for p in to_remove])
                for p, err in zip(to_remove, errors):
                    if err is not None:
                        self._attempt_failed(p.env.queue_id, err)
                    else:
                        maillog.removed(p.env.queue_id)
                        stored.append(p)
            if to_save:
                errors = await self.spool.save_many([p.env for p in to_save])
                for p, err in zip(to_save, errors):
                    if err is not None:
                        self._attempt_failed(p.env.queue_id, err)
                        continue
                    due = p.env.next_due()
                    if due is not None:
                        self._push(due, p.env.queue_id)
                    stored.append(p)
            if self.hooks is not None:
                for p in stored:
                    await self._tell_hooks(p.env, p.outcomes)
        except Exception as e:  # a backend that raised: retry the batch (a message pushed already stays put)
            for p in plans:
                self._attempt_failed(p.env.queue_id, e)
        finally:
            for p in plans:
                self._end_attempt(p.env.queue_id)

    async def _run_agent(self, plan: _Plan, kind: str, targets: list[Target]) -> None:
        env = plan.env
        try:
            agent = self.agents.get(kind)
            if agent is None:
                plan.outcomes.extend(
                    Outcome(t.index, "deferred", f"451 4.3.5 no delivery agent for {kind}", kind) for t in targets
                )
                return
            request = DeliveryRequest(
                env.queue_id,
                env.sender,
                self.spool.content(env.queue_id),
                env.arrival,
                tuple(targets),
                env.size,
                dict(env.params),
            )
        except Exception as e:
            plan.error = e
            return
        try:
            plan.outcomes.extend(await agent.deliver(request))
        except Exception as e:
            maillog.error(f"{env.queue_id}: delivery agent {kind} failed: {e!r}")
            plan.outcomes.extend(
                Outcome(t.index, "deferred", f"451 4.3.0 delivery agent error: {e!r}", kind) for t in targets
            )

    async def _tell_hooks(self, env: Envelope, outcomes: list[Outcome]) -> None:
        """The library's on_delivered / on_bounced / on_deferred, after the outcome
        is on disk; a hook that raises is logged and does not change the outcome."""
        assert self.hooks is not None
        for o in outcomes:
            r = env.recipients[o.index]
            try:
                if r.state == "delivered":
                    await self.hooks.on_delivered(env, r)
                elif r.state == "failed":
                    await self.hooks.on_bounced(env, r)
                elif r.state == "deferred":
                    await self.hooks.on_deferred(env, r)
            except Exception as e:
                maillog.error(f"{env.queue_id}: hook failed for <{r.address}>: {e!r}")

    async def _notify(self, env: Envelope) -> bool:
        """Queue the notices ``env`` owes, its debt saved first; False if they could
        not be queued (the envelope is saved with the debt and retried soon),
        else True: the caller stores the envelope (removes it when done)."""
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
                return False
        elif owes:  # no notifier (unit tests): nothing will send them
            for r in env.recipients:
                r.notice = ""
        return True

    def _record(self, env: Envelope, outcomes: list[Outcome], kinds: dict[int, str] | None = None) -> None:
        now = self.now()
        q = self.cfg.queue
        delay = now - env.arrival
        metrics = self.metrics
        kinds = kinds or {}
        for o in outcomes:
            r = env.recipients[o.index]
            if metrics is not None:
                transport = kinds.get(o.index, "none")
                result = _RESULTS.get(o.status, "deferred")
                if result == "deferred" and delay >= q.max_lifetime:
                    result = "bounced"
                metrics.inc("smtprs_deliveries_total", transport=transport, result=result)
                if result == "delivered":
                    metrics.observe("smtprs_delivery_seconds", delay, transport=transport)
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
                    r.notice = "delivered" if o.relay in ("local", "none") else "relayed"
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
