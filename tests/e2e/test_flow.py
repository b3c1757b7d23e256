"""Flow control end to end (queue.in_flow_delay, as Postfix's in_flow_delay):
a real ``smtprs serve`` with queue.delivery_concurrency = 1 relays to a
loopback next hop that accepts connections and never answers, so the first
attempt holds the only delivery slot and the messages after it wait for
their first attempt.  Once more of them wait than the slot can take, MAIL is
answered only after the delay; with the delay 0 it is answered at once.

The silent next hop is a listening socket nobody accepts on: the kernel
completes the connections, nothing is ever sent.  The server is stopped at
teardown (deliveries in progress are cancelled); every wait is bounded.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import pytest

from .harness import Server, check, make_message, smtprs_command, stuff

pytestmark = pytest.mark.e2e

SENDER = "sender@client.test"


@pytest.fixture
def silent_next_hop() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def _server(make_server: Callable[..., Server], port: int, delay: float | None) -> Server:
    queue: dict[str, float | int] = {"delivery_concurrency": 1}
    if delay is not None:
        queue["in_flow_delay"] = delay
    return make_server(
        {
            "queue": queue,
            "relay": {
                "trusted_networks": ["127.0.0.0/8"],
                "transport": {"slow.test": f"smtp:[127.0.0.1]:{port}"},
                "greeting_timeout": 60.0,
            },
        }
    )


def _send_timing_mail(srv: Server, n: int) -> list[float]:
    """Send ``n`` messages to the silent next hop on one connection; return how long each MAIL took."""
    took = []
    with srv.connect() as c:
        c.ehlo()
        for i in range(n):
            t0 = time.monotonic()
            c.expect(f"MAIL FROM:<{SENDER}>", 250)
            took.append(time.monotonic() - t0)
            c.expect(f"RCPT TO:<rcpt{i}@slow.test>", 250)
            c.expect("DATA", 354)
            c.send(stuff(make_message(f"flow {i}", "body\n")) + b".\r\n")
            check(c.reply(), 250, "2.0.0")
        c.expect("QUIT", 221)
    return took


def _flow_delays(srv: Server) -> float:
    p = subprocess.run(
        [*smtprs_command(), "status", "--json", "--config", str(srv.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, (p.stdout, p.stderr)
    snap = json.loads(p.stdout)
    return sum(v for name, _, v in snap["counters"] if name == "smtprs_flow_delays_total")


@pytest.mark.timeout(60)
def test_mail_waits_while_delivery_is_behind(make_server: Callable[..., Server], silent_next_hop: int) -> None:
    srv = _server(make_server, silent_next_hop, None)  # the default: 1 s
    took = _send_timing_mail(srv, 5)
    # messages 1-3 go at once: the first takes the slot (and stalls), 2 and 3
    # wait for theirs, which is more than delivery_concurrency = 1 can take
    assert max(took[:2]) < 0.5, took
    # MAIL of the 4th and 5th is answered after the delay: nothing catches up
    assert min(took[3:]) >= 0.8 * 1.0, took
    assert max(took) < 1.0 + 0.5, took  # bounded: answered after the delay all the same
    assert _flow_delays(srv) >= 2


@pytest.mark.timeout(60)
def test_no_wait_with_in_flow_delay_0(make_server: Callable[..., Server], silent_next_hop: int) -> None:
    srv = _server(make_server, silent_next_hop, 0.0)
    took = _send_timing_mail(srv, 5)
    assert max(took) < 0.5, took
    assert _flow_delays(srv) == 0
