"""Durability: a 250 is a promise that survives SIGKILL, failed deliveries and restarts.

Every message acknowledged with 250 is delivered exactly once: after a crash
right after the 250, after deliveries that fail and are retried, and after a
restart that finds deferred mail in the spool.  Nothing half received is ever
delivered.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from .harness import DOMAIN, Server, check, check_delivered, make_message, stuff

pytestmark = pytest.mark.e2e

SENDER = "sender@client.test"


def qid_of(path: Path) -> str:
    m = re.search(rb"\bid ([^\s;]+)", path.read_bytes())
    assert m, path
    return m.group(1).decode()


def test_sigterm_exits_0(server: Server) -> None:
    assert server.stop(sig=signal.SIGTERM) == 0, server.log_tail()


def test_sigterm_with_an_open_session(server: Server) -> None:
    """A session left in the middle of a transaction gets shutdown_timeout (3 s here), then 421 4.3.2."""
    c = server.connect()
    c.ehlo()
    c.expect(f"MAIL FROM:<{SENDER}>", 250)
    code = server.stop(timeout=20)
    assert code == 0, server.log_tail()
    check(c.reply(timeout=5), 421, "4.3.2")
    c.close()


def test_sigint_stops(server: Server) -> None:
    code = server.stop(sig=signal.SIGINT)
    assert code is not None and code in (0, 130, -2), code


def test_sigkill_right_after_250_delivered_exactly_once(server: Server) -> None:
    msgs = [make_message(f"durable {i}", f"survives SIGKILL, number {i}\r\n") for i in range(5)]
    qids = []
    with server.connect() as c:
        c.ehlo()
        for m in msgs[:-1]:
            r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(m))
            check(r, 250, "2.0.0")
            qids.append(r.qid)
        # the last one: kill the very moment its 250 is read
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect(f"RCPT TO:<bob@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        c.send(stuff(msgs[-1]) + b".\r\n")
        r = c.reply()
        server.kill()
        check(r, 250, "2.0.0")
        qids.append(r.qid)
    server.start()
    files = server.wait_mail("alice", 5, timeout=15, settle=1.5)
    by_qid = {qid_of(f): f for f in files}
    assert sorted(by_qid) == sorted(qids), (by_qid, qids)
    for qid, m in zip(qids, msgs):
        check_delivered(by_qid[qid], m, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=qid)
    (f,) = server.wait_mail("bob", 1, settle=0.5)
    check_delivered(f, msgs[-1], sender=SENDER, rcpt=f"bob@{DOMAIN}", qid=qids[-1])
    # once delivered, a message has left the spool: another restart delivers nothing again
    server.restart()
    time.sleep(1.5)
    assert len(server.mail("alice")) == 5 and len(server.mail("bob")) == 1


def test_sigkill_while_delivery_is_failing(server: Server) -> None:
    """Deferred mail survives a crash and is delivered once the mailbox is fixed."""
    blocker = server.block_maildir("alice")
    msg, qid = server.send_deferred("alice", "deferred then crash", "delivery fails at first\r\n", SENDER)
    server.kill()
    blocker.unlink()
    server.start()
    (f,) = server.wait_mail("alice", 1, timeout=15, settle=1.5)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=qid)


def test_failed_delivery_is_retried_not_dropped(make_server) -> None:
    srv = make_server({"queue": {"retry_min": 0.3, "retry_max": 1.0}})
    blocker = srv.maildir("alice")
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a Maildir\n")
    msg = make_message("retried", "alice's delivery fails at first, bob's does not\r\n")
    with srv.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}", f"bob@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0")
    qid = r.qid
    # bob's copy goes out at once; alice's is deferred, with a reason, more than once
    (fb,) = srv.wait_mail("bob", 1)
    check_delivered(fb, msg, sender=SENDER, rcpt=f"bob@{DOMAIN}", qid=qid)
    deadline = time.monotonic() + 10
    while len([x for x in srv.log_lines(qid) if "status=deferred" in x]) < 2:
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.1)
    assert blocker.is_file(), "the server replaced the user's file"
    blocker.unlink()
    (fa,) = srv.wait_mail("alice", 1, timeout=10, settle=1.0)
    check_delivered(fa, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=qid)
    # bob is not delivered twice by the retries for alice
    assert len(srv.mail("bob")) == 1
    srv.wait_log(rf"{qid}: to=<alice@{DOMAIN}>.*status=sent")
    # delivered means gone from the spool: nothing is named after it any more, and a restart delivers nothing
    deadline = time.monotonic() + 5
    while any(qid in name for name in srv.spool_snapshot()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(qid in name for name in srv.spool_snapshot()), srv.spool_snapshot()
    srv.restart()
    time.sleep(1.5)
    assert len(srv.mail("alice")) == 1 and len(srv.mail("bob")) == 1


def test_maildir_new_not_writable_then_fixed(make_server) -> None:
    """Another way for a Maildir to be broken: its new/ is a file."""
    srv = make_server({"queue": {"retry_min": 0.3, "retry_max": 1.0}})
    md = srv.maildir("alice")
    (md / "tmp").mkdir(parents=True)
    (md / "cur").mkdir()
    (md / "new").write_text("in the way\n")
    msg = make_message("new is a file", "x\r\n")
    with srv.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0")
    srv.wait_log(rf"{r.qid}: to=<alice@{DOMAIN}>.*status=deferred")
    (md / "new").unlink()
    (md / "new").mkdir()
    (f,) = srv.wait_mail("alice", 1, timeout=10, settle=1.0)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)
    assert list((md / "tmp").iterdir()) == []


def test_sigkill_mid_data_delivers_nothing(server: Server) -> None:
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        c.send(b"Subject: half\r\n\r\n" + b"half a message\r\n" * 2000)
        time.sleep(0.3)
        server.kill()
    server.start()
    time.sleep(1.5)
    assert server.mail("alice") == []
    msg = make_message("after crash", "the next message is fine\r\n")
    with server.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0")
    (f,) = server.wait_mail("alice", 1, settle=1.0)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)


def test_spool_survives_restart_without_delivery(server: Server) -> None:
    """Mail accepted while the mailbox is broken is delivered by the next server run."""
    blocker = server.maildir("carol")
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("x")
    msgs = [make_message(f"queued {i}", f"waits for a restart {i}\r\n") for i in range(3)]
    qids = []
    with server.connect() as c:
        c.ehlo()
        for m in msgs:
            r = c.send_message(SENDER, [f"carol@{DOMAIN}"], stuff(m))
            check(r, 250, "2.0.0")
            qids.append(r.qid)
    for qid in qids:
        server.wait_log(rf"{qid}: to=<carol@{DOMAIN}>.*status=deferred")
    assert server.stop() == 0
    blocker.unlink()
    server.start()
    files = server.wait_mail("carol", 3, timeout=15, settle=1.0)
    by_qid = {qid_of(f): f for f in files}
    assert sorted(by_qid) == sorted(qids)
    for qid, m in zip(qids, msgs):
        check_delivered(by_qid[qid], m, sender=SENDER, rcpt=f"carol@{DOMAIN}", qid=qid)
