"""What the per-client limits and greylisting cost per connection / recipient.

    PYTHONPATH=python python benches/screen_costs.py [--n 20000]

Times (best of 5 runs, ``timeit``) one admit+release of ``smtpd/limits.py``'s
table, shared (an mmap'd file under an fcntl lock, as the server uses it) and
in memory, and one greylisting check (``screen/greylist.py``, SQLite in WAL
mode) for a new triplet and for a known one.  Seconds, not instructions: a
guide to the order of magnitude on this machine, beside a message's ~1 ms.
"""

from __future__ import annotations

import argparse
import tempfile
import timeit
from pathlib import Path

from smtprs.screen.greylist import Store, Timing
from smtprs.smtpd.limits import ClientLimits


def per_call(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    return min(timeit.repeat(fn, number=n, repeat=5)) / n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    n = ap.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        shared = ClientLimits.shared(str(Path(tmp) / "client-limits.shm"), 0, 2)
        for name, limits in (("shared", shared), ("in memory", ClientLimits())):
            i = 0

            def admit_release(limits: ClientLimits = limits) -> None:
                nonlocal i
                i += 1
                ip = f"10.0.{i % 200}.{i % 250}"
                limits.admit(ip, 1.0, per_client=50, rate=10, window=60.0)
                limits.release(ip)

            print(f"limits, {name}: {per_call(admit_release, n) * 1e6:.1f} µs per admit+release")
        shared.close()
        t = Timing(300.0, 86400.0, 35 * 86400.0, 5)
        store = Store(str(Path(tmp) / "greylist.sqlite"))
        k = 0

        def new() -> None:
            nonlocal k
            k += 1
            store.check_now(f"10.{k % 250}.{k // 250 % 250}.1", f"s{k}@client.test", "u@example.org", 1000.0, t)

        def known() -> None:
            store.check_now("10.1.0.1", "s1@client.test", "u@example.org", 1000.0, t)

        m = max(1, n // 7)
        print(f"greylist, new triplet: {per_call(new, m) * 1e6:.0f} µs per check")
        print(f"greylist, known triplet: {per_call(known, m) * 1e6:.0f} µs per check")
        store.close()


if __name__ == "__main__":
    main()
