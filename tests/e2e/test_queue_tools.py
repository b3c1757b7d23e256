"""The queue tools against a running server: show, flush ID, hold/release,
requeue, delete, delete --all-deferred, qshape -- and the metrics endpoint
and `smtprs status` moving with real traffic.

Mail is deferred at a real downstream: an aiosmtpd peer that answers 451 to
the first RCPT of each message (tests/e2e/peers.py), or a port where nothing
listens.  Retries are a minute away, so only a queue command makes anything
happen before the test ends.
"""

from __future__ import annotations

import json
import re
import smtplib
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .harness import DOMAIN, Server, smtprs_command
from .peers import Script, ScriptedPeer, free_port, wait_until

pytestmark = pytest.mark.e2e

SENDER = f"sender@{DOMAIN}"


@pytest.fixture
def peers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for p in started:
        p.stop()


def run(srv: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*smtprs_command(), *args, "--config", str(srv.config_path)], capture_output=True, text=True, timeout=60
    )


def ok(srv: Server, *args: str) -> str:
    p = run(srv, *args)
    assert p.returncode == 0, (args, p.stdout, p.stderr, srv.log_tail())
    return p.stdout


def send(srv: Server, rcpts: list[str], subject: str) -> str:
    msg = f"From: <{SENDER}>\r\nTo: <{rcpts[0]}>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n"
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        assert s.mail(SENDER)[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250, r
        code, text = s.data(msg.encode())
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[1]


def listing(srv: Server) -> dict[str, Any]:
    return {e["id"]: e for e in json.loads(ok(srv, "queue", "list", "--json"))}


def states(srv: Server, qid: str) -> list[str]:
    e = listing(srv).get(qid)
    return [r["state"] for r in e["recipients"]] if e else []


def deferring_server(make_server: Callable[..., Server], peer_port: int, **extra: Any) -> Server:
    return make_server(
        {
            "relay": {
                "trusted_networks": ["127.0.0.0/8"],
                "transport": {"far.test": f"[127.0.0.1]:{peer_port}", "closed.test": f"[127.0.0.1]:{free_port()}"},
                "connect_timeout": 2.0,
                "idle_timeout": 0,
            },
            "queue": {"retry_min": 60.0, "retry_max": 120.0},
            **extra,
        }
    )


def test_show_hold_release_flush_requeue_delete(make_server: Callable[..., Server], peers: list[Any]) -> None:
    # the first attempt of each message is answered 451; later ones are accepted
    peer = ScriptedPeer(Script(rcpt={"a@far.test": ["451 4.3.0 busy, try later"] * 2})).start()
    peers.append(peer)
    srv = deferring_server(make_server, peer.port)
    one = send(srv, ["a@far.test"], "first")
    two = send(srv, ["a@far.test"], "second")
    three = send(srv, ["x@closed.test", "y@closed.test"], "third")
    for qid in (one, two, three):
        wait_until(
            lambda qid=qid: states(srv, qid) and all(s == "deferred" for s in states(srv, qid)), 15, f"{qid} deferred"
        )

    # show: envelope, per-recipient state and last error, the header block
    out = ok(srv, "queue", "show", one)
    assert f"Queue-ID:  {one} (queued)" in out and "<a@far.test>  deferred, 1 attempt" in out
    assert "451 4.3.0 busy, try later" in out and "Subject: first" in out and "body of first" not in out
    info = json.loads(ok(srv, "queue", "show", "--json", one))
    assert info["recipients"][0]["state"] == "deferred" and info["held"] is False and info["sender"] == SENDER
    p = run(srv, "queue", "show", "NOSUCHID")
    assert p.returncode == 1 and "no message NOSUCHID" in p.stderr

    # hold one, flush everything: two is delivered, the held one is not
    assert ok(srv, "queue", "hold", one).strip() == f"OK {one} held"
    assert listing(srv)[one]["held"] is True
    ok(srv, "queue", "flush")
    wait_until(lambda: two not in listing(srv), 15, "the second message delivered")
    time.sleep(0.5)
    assert len(peer.received) == 1 and b"Subject: second" in peer.received[0].content
    assert states(srv, one) == ["deferred"] and listing(srv)[one]["held"]
    p = run(srv, "queue", "flush", one)
    assert p.returncode == 1 and "on hold" in p.stderr

    # the hold survives a restart
    srv.restart()
    assert listing(srv)[one]["held"] is True
    ok(srv, "queue", "flush")
    time.sleep(1.0)
    assert len(peer.received) == 1

    # release: back on its schedule (a minute away); flush ID delivers it now
    assert ok(srv, "queue", "release", one).strip() == f"OK {one} released"
    assert listing(srv)[one]["held"] is False and len(peer.received) == 1
    assert ok(srv, "queue", "flush", one).strip() == f"OK {one} scheduled now"
    wait_until(lambda: one not in listing(srv), 15, "the released message delivered")
    assert b"Subject: first" in peer.received[1].content

    # requeue: the open recipients are routed again and tried at once
    attempts = listing(srv)[three]["recipients"][0]["attempts"]  # the flushes tried it too
    assert ok(srv, "queue", "requeue", three).strip() == f"OK {three} requeued"
    wait_until(
        lambda: all(
            r["attempts"] == attempts + 1 and r["state"] == "deferred" for r in listing(srv)[three]["recipients"]
        ),
        15,
        "one more attempt",
    )

    # qshape: the open recipients by domain and age
    shape = ok(srv, "queue", "qshape")
    assert "closed.test" in shape and "far.test" not in shape
    total = [line for line in shape.splitlines() if line.strip().startswith("TOTAL")][0].split()
    assert total[1] == "2" and total[2] == "2"  # two recipients, both younger than 5 minutes
    data = json.loads(ok(srv, "queue", "qshape", "--json"))
    assert data["domains"]["closed.test"][0] == 2

    # delete one, then every deferred one: no bounce either time
    four = send(srv, ["z@closed.test"], "fourth")
    wait_until(lambda: states(srv, four) == ["deferred"], 15, "fourth deferred")
    assert ok(srv, "queue", "delete", three).strip() == f"OK {three} deleted"
    assert three not in listing(srv)
    held = send(srv, ["h@closed.test"], "held")
    wait_until(lambda: states(srv, held) == ["deferred"], 15, "held deferred")
    ok(srv, "queue", "hold", held)
    assert ok(srv, "queue", "delete", "--all-deferred").strip() == "OK 1 message deleted"
    assert set(listing(srv)) == {held}  # held mail is not touched by --all-deferred
    ok(srv, "queue", "delete", held)
    assert listing(srv) == {}
    time.sleep(0.5)
    assert srv.mail("sender") == []  # no bounce for deleted mail
    assert f"{three}: deleted by the administrator" in srv.log()


def test_queue_commands_reach_the_worker_that_owns_the_message(
    make_server: Callable[..., Server], peers: list[Any]
) -> None:
    srv = deferring_server(make_server, free_port(), workers=2)
    deadline = time.monotonic() + 15
    while srv.log().count(f"listening on 127.0.0.1:{srv.port}") < 2:
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.1)
    # SO_REUSEPORT spreads connections by a hash of their addresses: send
    # until both workers hold mail (six at least; 30 all landing on one
    # worker would happen once in 2**29 runs)
    ids: list[str] = []
    shards: set[str] = set()
    while len(ids) < 6 or (shards != {"shard-0", "shard-1"} and len(ids) < 30):
        qid = send(srv, ["x@closed.test"], f"m{len(ids)}")
        wait_until(lambda qid=qid: states(srv, qid) == ["deferred"], 15, f"{qid} deferred")
        ids.append(qid)
        shards = {p.parent.parent.name for p in srv.spool_dir.glob("shard-*/files/*.env")}
    assert shards == {"shard-0", "shard-1"}, "both workers took mail"
    n = len(ids)
    for qid in ids:
        assert "(queued)" in ok(srv, "queue", "show", qid)
        assert ok(srv, "queue", "hold", qid).strip() == f"OK {qid} held"
    assert all(e["held"] for e in listing(srv).values())
    status = ok(srv, "status")
    assert "workers answering:   2 of 2" in status and f"{n} messages, {n} on hold" in status
    assert ok(srv, "queue", "delete", *ids).count("deleted") == n
    assert listing(srv) == {}


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_endpoint_and_status_follow_traffic(make_server: Callable[..., Server], peers: list[Any]) -> None:
    port = free_port()
    srv = deferring_server(
        make_server,
        free_port(),
        metrics={"enabled": True, "address": f"127.0.0.1:{port}"},
        log={"format": "json"},
        local={"users": ["alice", "bob"]},
    )
    before = scrape(port)
    assert before.get("smtprs_queue_messages", 0) == 0
    send(srv, [f"alice@{DOMAIN}"], "local")
    send(srv, [f"bob@{DOMAIN}"], "local 2")
    send(srv, ["x@closed.test"], "remote")
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as s:  # an unknown user is refused
        s.ehlo("client.test")
        s.mail(SENDER)
        assert s.rcpt(f"nobody@{DOMAIN}")[0] == 550
    srv.wait_mail("alice", 1)
    srv.wait_mail("bob", 1)
    # the counters follow the Maildir files by a moment (the outcome is recorded after the rename)
    counted = (
        ('smtprs_deliveries_total{result="deferred",transport="smtp"}', 1),
        ('smtprs_deliveries_total{result="delivered",transport="maildir"}', 2),
    )
    m = wait_until(
        lambda: (lambda m: m if all(m.get(k, 0) >= n for k, n in counted) else None)(scrape(port)),
        15,
        "the deferral and both deliveries counted",
    )
    assert m['smtprs_connections_total{mode="mx"}'] >= 4
    assert m['smtprs_messages_accepted_total{mode="mx"}'] == 3
    assert m['smtprs_deliveries_total{result="delivered",transport="maildir"}'] == 2
    assert m["smtprs_queue_messages"] == 1
    assert m["smtprs_acceptance_seconds_count"] == 3
    assert m['smtprs_acceptance_seconds_bucket{le="+Inf"}'] == 3
    assert m['smtprs_delivery_seconds_count{transport="maildir"}'] == 2
    assert 0 < m["smtprs_queue_oldest_age_seconds"] < 60
    assert m["smtprs_sessions_active"] >= 0
    assert m['smtprs_messages_rejected_total{reason="550 5.1.1",stage="RCPT"}'] == 1
    # group commit figures: each of the 3 messages is an M record, and each
    # finished or moved-out message a D record (written in batches)
    assert 1 <= m["smtprs_spool_commits_total"] <= m["smtprs_spool_records_total"]
    assert m["smtprs_spool_records_total"] >= 3

    status = ok(srv, "status")
    assert "messages accepted:   3" in status and "delivered:           2 (maildir 2)" in status
    commits = re.search(r"spool commits:\s+(\d+) for (\d+) records \(([\d.]+) per fdatasync\)", status)
    assert commits is not None, status
    assert int(commits.group(2)) >= 3 and float(commits.group(3)) >= 1.0
    assert "deferred:            1 (smtp 1)" in status and "queue:               1 messages" in status

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert e.value.code == 404

    # the JSON mail log: one object per line
    events = [json.loads(line) for line in srv.log_path.read_text().splitlines() if line.startswith("{")]
    kinds = {e["event"] for e in events}
    assert {"queued", "delivered", "deferred", "listening"} <= kinds, kinds
    assert all({"time", "level", "pid", "message"} <= set(e) for e in events)
