"""Helpers for the tests of smtprs._core through its Python binding.

Every case that feeds a connection can be run three ways, as h11's tests do:
in one read, one octet per read, and cut at random points (fixed seed).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator

import pytest

from smtprs import _core


def cuts(data: bytes, seed: int = 0) -> Iterator[list[bytes]]:
    """The ways to deliver ``data``: whole, byte by byte, and 20 random cuttings."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(seed)
    for _ in range(20):
        points = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 6)))) if len(data) > 1 else []
        bounds = [0, *points, len(data)]
        yield [data[a:b] for a, b in zip(bounds, bounds[1:])]


Summary = list[tuple[str, object]]


def run(
    reads: Iterable[bytes],
    *,
    close: bool = True,
    on_command: Callable[[_core.ServerConnection, _core.Command], None] | None = None,
    **kwargs: object,
) -> Summary:
    """Feed the reads to a fresh connection; return the events as comparable
    tuples.  The DataChunks of a message are joined and given at its DataEnd,
    and left out when it failed (what came before the problem:
    test_data.test_refusal_and_content_before_it_do_not_depend_on_reads).  DATA is answered at once (``start_data``), as a session
    that replied 354 would."""
    conn = _core.ServerConnection(**kwargs)  # type: ignore[arg-type]
    out: Summary = []
    content = bytearray()

    def drain() -> bool:
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, _core.DataChunk):
                assert ev.data, "empty DataChunk"
                content.extend(ev.data)
                continue
            if isinstance(ev, _core.Command):
                out.append(("command", (ev.verb, ev.arg)))
                if ev.verb == "DATA":
                    conn.start_data()
                if on_command is not None:
                    on_command(conn, ev)
            elif isinstance(ev, _core.CommandError):
                out.append(("error", (ev.code, ev.enhanced, ev.verb, ev.fatal)))
            elif isinstance(ev, _core.RawLine):
                out.append(("line", ev.line))
            elif isinstance(ev, _core.BdatChunkEnd):
                # The content of a BDAT message is given whole at its DataEnd.
                out.append(("chunk-end", (ev.chunk_size, ev.total_size)))
            elif isinstance(ev, _core.DataEnd):
                if ev.error is None:
                    out.append(("content", bytes(content)))
                content.clear()
                out.append(("end", (ev.size, ev.error, ev.code, ev.enhanced)))
            elif isinstance(ev, _core.ConnectionClosed):
                out.append(("closed", ev.mid_data))
                return True
            else:  # pragma: no cover
                raise AssertionError(f"unknown event {ev!r}")
        return False

    for r in reads:
        conn.receive_data(r)
        drain()
    if close:
        conn.receive_data(b"")
        drain()
    return out


def run_all_ways(data: bytes, **kwargs: object) -> Summary:
    """``run`` over every cutting of ``data``; all must agree."""
    results = [run(reads, **kwargs) for reads in cuts(data)]  # type: ignore[arg-type]
    for r in results[1:]:
        assert r == results[0]
    return results[0]


@pytest.fixture
def conn() -> _core.ServerConnection:
    return _core.ServerConnection()
