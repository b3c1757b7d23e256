"""Start and stop without false alarms (issue 20 part 9).

A message over ``inline_max`` (256 KiB) lives in a content file of its own;
once it is delivered and the server is stopped cleanly, the next start must
not report it as damage (it did: "content of ID is missing; moved aside"),
while a content file deleted behind the server's back still is.  The
supervisor's part (the whole process group getting SIGTERM) is in
test_workers.py.
"""

from __future__ import annotations

import time

import pytest

from smtprs.queue.spool import read_queue

from .harness import DOMAIN, Server, check, make_message, stuff

pytestmark = pytest.mark.e2e

SENDER = "sender@client.test"
BIG = 300 * 1024  # over the spool's inline_max (256 KiB): spilled to files/ID.msg


def send_big(srv: Server, user: str, subject: str) -> str:
    line = "x" * 76 + "\r\n"
    msg = make_message(subject, line * (BIG // len(line) + 1))
    assert len(msg) > 256 * 1024
    with srv.connect() as c:
        r = c.send_message(SENDER, [f"{user}@{DOMAIN}"], stuff(msg), ehlo=True)
        check(r, 250, "2.0.0", subject)
        c.expect("QUIT", 221)
    return r.qid


def wait_spool_empty(srv: Server, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while read_queue(srv.spool_dir):
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.05)


def log_of_last_start(srv: Server) -> str:
    return srv.log().rpartition(f"----- harness: start #{srv.starts} -----")[2]


def test_a_delivered_big_message_is_no_damage_at_the_next_start(make_server) -> None:
    srv = make_server()
    qid = send_big(srv, "alice", "big one")
    (delivered,) = srv.wait_mail("alice", 1)
    assert delivered.stat().st_size > 256 * 1024
    wait_spool_empty(srv)  # removed from the spool: its D record written, its file gone
    assert not list((srv.shard_dir / "files").iterdir())
    assert srv.stop() == 0
    srv.start()
    time.sleep(0.5)  # (the start-up scan runs before the listener is announced; this is slack)
    assert srv.stop() == 0
    text = log_of_last_start(srv)
    assert "spool:" not in text, text
    assert qid not in text, text
    assert not list((srv.shard_dir / "corrupt").iterdir())


def test_a_content_file_deleted_behind_the_servers_back_is_still_reported(make_server) -> None:
    srv = make_server({"queue": {"retry_min": 60.0, "retry_max": 120.0}})
    blocker = srv.maildir("carol")
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a maildir")  # delivery to carol fails: the message waits in files/
    qid = send_big(srv, "carol", "big deferred")
    deadline = time.monotonic() + 10
    files = srv.shard_dir / "files"
    while not (files / f"{qid}.env").exists():
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.05)
    assert srv.stop() == 0
    (files / f"{qid}.msg").unlink()  # damage: a queued message's content is gone
    srv.start()
    assert srv.stop() == 0
    text = log_of_last_start(srv)
    assert f"{qid}.env" in text and "envelope without content" in text, text
    assert any(p.name.startswith(f"{qid}.env.") for p in (srv.shard_dir / "corrupt").iterdir())
