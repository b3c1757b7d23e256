"""Per-client limits for the whole server (issue 19 part 5): trusted and listed
networks are exempt, and the counts are one per client whatever the worker
that serves a session (``data_dir/client-limits.shm``, smtpd/limits.py).

Client addresses are loopback source addresses (127.0.0.x: Linux routes all of
127/8 to lo); loopback is exempt by default, so the tests that count name the
exempt networks themselves.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from .harness import DOMAIN, Server, SMTPClient, check, make_message, stuff
from .test_workers import wait_workers, worker_pids

pytestmark = pytest.mark.e2e


def greetings(srv: Server, source: str, n: int) -> tuple[list[SMTPClient], list[int]]:
    """Open ``n`` sessions from ``source``; return those greeted 220 (held open) and every code."""
    held, codes = [], []
    for _ in range(n):
        c = SMTPClient(srv.port, source=source)
        r = c.reply()
        codes.append(r.code)
        if r.code == 220:
            held.append(c)
        else:
            check(r, 421, "4.7.0")
            c.wait_closed(5)
            c.close()
    return held, codes


def close_all(clients: list[SMTPClient]) -> None:
    for c in clients:
        c.close()


def test_loopback_and_trusted_networks_are_exempt_by_default(make_server) -> None:
    srv = make_server(
        {"smtpd": {"max_connections_per_client": 2}, "relay": {"trusted_networks": ["127.0.0.7/32", "::1/128"]}}
    )
    held, codes = greetings(srv, "127.0.0.7", 5)
    assert codes == [220] * 5, codes  # trusted ($trusted_networks)
    held2, codes2 = greetings(srv, "127.0.0.8", 4)
    assert codes2 == [220] * 4, codes2  # loopback (127.0.0.0/8)
    msg = make_message("exempt", "an exempt client's sixth session delivers\r\n")
    with srv.connect(source="127.0.0.7") as c:
        c.ehlo()
        check(c.send_message("s@client.test", [f"alice@{DOMAIN}"], stuff(msg)), 250, "2.0.0")
        c.expect("QUIT", 221)
    srv.wait_mail("alice", 1)
    close_all(held + held2)


def test_listed_networks_only_are_exempt(make_server) -> None:
    srv = make_server({"smtpd": {"max_connections_per_client": 2, "limit_exempt_networks": ["127.0.0.9/32"]}})
    held, codes = greetings(srv, "127.0.0.9", 4)
    assert codes == [220] * 4, codes
    held2, codes2 = greetings(srv, "127.0.0.10", 4)
    assert codes2 == [220, 220, 421, 421], codes2
    rejects = [line for line in srv.log().splitlines() if "reject: CONNECT from [127.0.0.10]" in line]
    assert len(rejects) == 2 and all("421 4.7.0" in line for line in rejects), rejects
    close_all(held + held2)


def test_two_workers_count_one_limit_per_client(make_server) -> None:
    """With per-worker counts, 2 workers would let 2 x 3 sessions in; the shared table lets 3."""
    srv = make_server({"workers": 2, "smtpd": {"max_connections_per_client": 3, "limit_exempt_networks": []}})
    wait_workers(srv)
    pids = set(worker_pids(srv).values())
    held, codes = greetings(srv, "127.0.0.11", 12)
    assert codes[:3] == [220] * 3 and codes.count(220) == 3, codes
    # both workers refused some (SO_REUSEPORT spread the 12 connections by port),
    # so each counted the sessions the other one holds
    refusing = {
        int(m.group(1)) for m in re.finditer(r"smtprs\[(\d+)\]: \S+: reject: CONNECT from \[127\.0\.0\.11\]", srv.log())
    }
    assert refusing <= pids and len(refusing) == 2, (refusing, pids, srv.log_tail())
    held[0].close()  # a freed slot is free for both workers
    deadline = time.monotonic() + 10
    while True:
        more, codes = greetings(srv, "127.0.0.11", 1)
        if codes == [220]:
            break
        assert time.monotonic() < deadline, "a closed session did not give its slot back"
        time.sleep(0.1)
    close_all(held[1:] + more)


def test_counts_of_a_killed_worker_go_with_it(make_server) -> None:
    srv = make_server({"workers": 2, "smtpd": {"max_connections_per_client": 2, "limit_exempt_networks": []}})
    wait_workers(srv)
    held, codes = greetings(srv, "127.0.0.12", 3)
    assert codes == [220, 220, 421], codes
    old = worker_pids(srv)
    for pid in old.values():  # SIGKILL: no session gets to release its count
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not (len(new := worker_pids(srv)) == 2 and not set(new.values()) & set(old.values())):
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.1)
    wait_workers(srv, 4)  # the restarted workers listen again
    close_all(held)
    again, codes = greetings(srv, "127.0.0.12", 3)
    assert codes == [220, 220, 421], codes  # the dead sessions no longer count
    close_all(again)
