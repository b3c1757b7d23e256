"""Retry backoff."""

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
