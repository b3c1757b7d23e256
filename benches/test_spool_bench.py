"""Micro benchmarks of the spool's commit path (smtprs.queue.spool.Spool).

Run with ``python -m pytest benches/test_spool_bench.py --benchmark-only``.

* ``test_commit_sequential``: one message after another (create the content
  file, write 1 KiB, commit), as one session would; ``extra_info`` gives the
  time per message and messages/s, with fsync (the real thing) and without.
* ``test_commit_concurrent``: N messages committed at the same moment by N
  trio tasks, as N sessions finishing DATA together would (5 such bursts per
  round); ``extra_info`` gives
  messages/s and how many messages each commit batch covered
  (``spool.committed_messages / spool.commit_batches``): group commit at work.

The spool lives in pytest's tmp_path, so the figures are those of the file
system holding /tmp (fsync is free on tmpfs: check with ``df /tmp``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from smtprs.envelope import Envelope, Recipient
from smtprs.queue.spool import Spool

CONTENT = (b"Subject: spool benchmark\r\n\r\n" + b"X" * 76 + b"\r\n") * 13  # about 1 KiB
CONTENT = CONTENT[:1024]
SEQUENTIAL = 20  # messages per benchmark round, one after another
BURSTS = 5  # bursts of N concurrent commits per round (so trio.run's own cost is spread thin)


def make_spool(path: Path, fsync: bool) -> Spool:
    spool = Spool(path, fsync=fsync)
    spool.open()
    return spool


async def one_message(spool: Spool) -> None:
    writer = spool.create()
    writer.write(CONTENT)
    env = Envelope(
        queue_id=writer.queue_id,
        sender="sender@example.org",
        recipients=[Recipient("box@bench.test")],
        arrival=time.time(),
        size=len(CONTENT),
        client_address="127.0.0.1",
        client_helo="bench",
    )
    await spool.commit(writer, env)


def per_message(benchmark: Any, messages: int) -> None:
    if benchmark.stats is None:  # --benchmark-disable: the code ran once, nothing was timed
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["us_per_message"] = round(median / messages * 1e6, 1)
    benchmark.extra_info["messages/s"] = round(messages / median, 1)


@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
def test_commit_sequential(benchmark: Any, tmp_path: Path, fsync: bool) -> None:
    spool = make_spool(tmp_path / "spool", fsync)

    async def run() -> None:
        for _ in range(SEQUENTIAL):
            await one_message(spool)

    benchmark.pedantic(trio.run, args=(run,), rounds=15, iterations=1, warmup_rounds=1)
    per_message(benchmark, SEQUENTIAL)
    benchmark.extra_info["messages_per_batch"] = round(spool.committed_messages / max(spool.commit_batches, 1), 2)


@pytest.mark.parametrize("concurrent", [10, 50, 200])
@pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "no-fsync"])
def test_commit_concurrent(benchmark: Any, tmp_path: Path, fsync: bool, concurrent: int) -> None:
    spool = make_spool(tmp_path / "spool", fsync)

    async def run() -> None:
        for _ in range(BURSTS):
            async with trio.open_nursery() as nursery:
                for _ in range(concurrent):
                    nursery.start_soon(one_message, spool)

    benchmark.pedantic(trio.run, args=(run,), rounds=10, iterations=1, warmup_rounds=1)
    per_message(benchmark, concurrent * BURSTS)
    benchmark.extra_info["messages_per_batch"] = round(spool.committed_messages / max(spool.commit_batches, 1), 2)
    assert spool.committed_messages == concurrent * BURSTS * 11
