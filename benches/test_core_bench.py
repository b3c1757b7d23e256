"""Micro benchmarks of smtprs._core through its Python binding.

Run with ``python -m pytest benches --benchmark-only``.  Each benchmark states
its unit in ``extra_info`` (commands/s, MB/s, addresses/s), computed from the
median, so that the figures read the same as the criterion ones in
rust/benches/core.rs.
"""

from __future__ import annotations

from typing import Any

from smtprs import _core

COMMANDS = (
    b"MAIL FROM:<sender@example.org> SIZE=12345 BODY=8BITMIME\r\nRCPT TO:<rcpt@example.com>\r\nRSET\r\nNOOP\r\n"
) * 250  # 1000 commands

ADDRESSES = [
    "<user@example.com>",
    "<first.last+tag@mail.example.org>",
    '<"quoted local"@example.net>',
    "<u@[192.0.2.1]>",
    "<@relay.example:user@example.com>",
    "<postmaster@sub.domain.example.co.uk>",
    "<x@[IPv6:2001:db8::1]>",
    "<a.b.c.d@e.f.g.h>",
] * 125  # 1000 addresses


def make_body(size: int = 1 << 20) -> bytes:
    """About ``size`` octets: a header block, then 76-character lines, every 10th with a leading dot."""
    lines = [b"Subject: benchmark", b"Date: Mon, 1 Jan 2024 00:00:00 +0000", b""]
    n = 0
    total = 0
    while total < size:
        line = bytes(97 + (i + n) % 26 for i in range(76))
        if n % 10 == 0:
            line = b"." + line
        lines.append(line)
        total += len(line) + 2
        n += 1
    return b"\r\n".join(lines) + b"\r\n"


BODY = make_body()
WIRE = _core.dot_stuff(BODY)
MB = len(WIRE) / 1e6


def per_second(benchmark: Any, unit: str, amount: float) -> None:
    median = benchmark.stats.stats.median
    benchmark.extra_info[unit] = round(amount / median, 1)


def test_commands_per_second(benchmark: Any) -> None:
    def parse() -> int:
        conn = _core.ServerConnection()
        conn.receive_data(COMMANDS)
        n = 0
        while conn.next_event() is not None:
            n += 1
        return n

    assert benchmark(parse) == 1000
    per_second(benchmark, "commands/s", 1000)


def test_unstuff_connection_mb_per_second(benchmark: Any) -> None:
    """1 MB of DATA through ServerConnection, in 64 KiB reads as from a socket."""
    reads = [WIRE[i : i + 65536] for i in range(0, len(WIRE), 65536)]

    def decode() -> int:
        conn = _core.ServerConnection(max_message_size=1 << 30)
        conn.start_data()
        size = 0
        for r in reads:
            conn.receive_data(r)
            while (ev := conn.next_event()) is not None:
                if isinstance(ev, _core.DataEnd):
                    assert ev.error is None
                    size = ev.size
        return size

    assert benchmark(decode) == len(BODY)
    per_second(benchmark, "MB/s", MB)


def test_unstuff_connection_one_read_mb_per_second(benchmark: Any) -> None:
    """1 MB of DATA through ServerConnection in a single read (one DataChunk)."""

    def decode() -> int:
        conn = _core.ServerConnection(max_message_size=1 << 30)
        conn.start_data()
        conn.receive_data(WIRE)
        chunk = conn.next_event()
        end = conn.next_event()
        assert isinstance(chunk, _core.DataChunk) and isinstance(end, _core.DataEnd)
        return len(chunk.data)

    assert benchmark(decode) == len(BODY)
    per_second(benchmark, "MB/s", MB)


def test_dot_unstuff_mb_per_second(benchmark: Any) -> None:
    assert benchmark(_core.dot_unstuff, WIRE) == BODY
    per_second(benchmark, "MB/s", MB)


def test_dot_stuff_mb_per_second(benchmark: Any) -> None:
    assert benchmark(_core.dot_stuff, BODY) == WIRE
    per_second(benchmark, "MB/s", len(BODY) / 1e6)


def test_addresses_per_second(benchmark: Any) -> None:
    parse_path = _core.parse_path

    def parse() -> int:
        n = 0
        for a in ADDRESSES:
            parse_path(a)
            n += 1
        return n

    assert benchmark(parse) == 1000
    per_second(benchmark, "addresses/s", 1000)
