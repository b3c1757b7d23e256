"""A lighter ``trio.to_thread.run_sync`` for the spool's and the delivery agents' batches.

``trio.to_thread.run_sync`` names the worker thread for each call (two
``prctl`` system calls), copies the context and takes a capacity-limiter
slot.  The spool's group commit and the Maildir batch writer hop to a thread
once or twice per message under load, so that bookkeeping shows in the
profile.  They need none of it: each runs at most one batch at a time, so the
number of threads is bounded by design, and they read no context variables.

Semantics are those of ``trio.to_thread.run_sync`` with its defaults: the
call cannot be cancelled (a cancellation waits for the thread to finish), and
an exception in the thread is raised in the caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

T = TypeVar("T")


def _no_abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED  # the thread runs on; we wait for it


async def run_sync(fn: Callable[[], T]) -> T:
    """Run ``fn()`` in one of Trio's cached worker threads and return its result."""
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def deliver(result: outcome.Outcome[T]) -> None:
        try:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)
        except trio.RunFinishedError:  # pragma: no cover - the run ended under us
            pass

    trio.lowlevel.start_thread_soon(fn, deliver)
    result: T = await trio.lowlevel.wait_task_rescheduled(_no_abort)
    return result
