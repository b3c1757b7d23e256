"""Crash safety: SIGKILL at random moments under load loses nothing acknowledged,
and junk in the spool never keeps the server from starting.

The load test runs several clients sending continuously (see load.py) and
kills the server with SIGKILL several times, restarting it each time.  About
a third of the messages also have a recipient in a remote domain, relayed to
a downstream smtp-sink.  At the end every message that got a 250 is in the
Maildir of each of its local recipients exactly once, byte for byte, and at
the sink for each remote one (at least once: remote delivery is at least once
in every MTA; duplicates are reported); a message whose reply was lost in the
crash is delivered whole to all its recipients or not at all; the spool is
empty, nothing is left in the Maildirs' tmp/, nothing was set aside as
damaged, and one more restart delivers nothing again.

The default run sends a few hundred messages and kills 4 times; with
SMTPRS_SOAK=1 it sends a few thousand and kills 10 times.  SMTPRS_SEED
chooses the random moments (the seed is printed on failure).
"""

from __future__ import annotations

import os
import random
import time

import pytest

from smtprs.queue.spool import read_queue

from .harness import DOMAIN, Server, check, check_delivered, make_message, stuff
from .load import (
    Load,
    count_mail,
    delivered_tokens,
    expected_deliveries,
    expected_relayed,
    match_delivered,
    match_relayed,
    wait_quiet,
)
from .peers import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SOAK = os.environ.get("SMTPRS_SOAK") == "1"
MESSAGES = 3000 if SOAK else 300
KILLS = 10 if SOAK else 4
SEED = int(os.environ.get("SMTPRS_SEED", str(int(time.time()) % 100000)))
SENDER = "sender@client.test"
REMOTE = "remote.test"


def _leftovers(srv: Server) -> list[str]:
    """Files that should not exist once everything is delivered: Maildir tmp/ files, damaged spool files."""
    out = []
    mail = srv.data_dir / "mail"
    if mail.is_dir():
        for box in mail.iterdir():
            out += [str(p) for p in (box / "tmp").iterdir()] if (box / "tmp").is_dir() else []
    corrupt = srv.shard_dir / "corrupt"
    if corrupt.is_dir():
        out += [str(p) for p in corrupt.iterdir()]
    return out


@pytest.mark.timeout(1200 if SOAK else 240)
def test_sigkill_at_random_moments_under_load(make_server, smtp_sink) -> None:
    rng = random.Random(SEED)
    sink = smtp_sink
    srv = make_server(
        {
            "queue": {"retry_min": 0.3, "retry_max": 1.0},
            "relay": {
                "transport": {REMOTE: f"[127.0.0.1]:{sink.port}"},
                "trusted_networks": ["127.0.0.0/8"],
                "connect_timeout": 2.0,
                "idle_timeout": 0.5,
            },
        }
    )
    load = Load(lambda: srv.port, clients=6, seed=SEED, remote_domain=REMOTE).start()
    kills = []
    try:
        for k in range(KILLS):
            # spread over the run, and never two kills without new mail accepted in between
            load.wait_accepted(max(MESSAGES * (k + 1) // (KILLS + 1), (kills[-1] if kills else 0) + 10), timeout=120)
            time.sleep(rng.uniform(0.0, 0.4))  # a random moment: mid-DATA, mid-commit, mid-delivery ...
            kills.append(load.accepted)
            srv.kill()
            time.sleep(rng.uniform(0.0, 0.3))
            srv.start()
        load.wait_accepted(MESSAGES, timeout=120)
    finally:
        load.stop()
    note = f"(seed {SEED}; kills after {kills} acknowledged messages)"
    want = expected_deliveries(load.sent)
    mail = wait_quiet(srv.all_mail, want, timeout=120)
    counts = match_delivered(load.sent, mail)
    assert counts["accepted"] >= MESSAGES, (counts, note)
    assert counts["refused"] == 0, (counts, note)
    wait_until(lambda: len(sink.dumps()) >= expected_relayed(load.sent, REMOTE), 120, "relayed messages at the sink")
    deadline = time.monotonic() + 60
    while True:  # (duplicates may arrive before the last distinct one)
        try:
            relayed = match_relayed(load.sent, sink.dumps(), REMOTE, delivered_tokens(mail))
            break
        except AssertionError as e:
            if "never relayed" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    counts.update(relayed)
    # delivered means gone from the spool, and nothing half-done is left anywhere
    deadline = time.monotonic() + 10
    while read_queue(srv.spool_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_queue(srv.spool_dir) == [], note
    assert _leftovers(srv) == [], note
    # one more restart delivers nothing again
    dumps = len(sink.dumps())
    srv.restart()
    time.sleep(1.5)
    assert count_mail(srv.all_mail()) == counts["deliveries"], note
    assert len(sink.dumps()) == dumps, note
    log = srv.log()
    assert "internal error" not in log and "Traceback" not in log, srv.log_tail()
    print(f"crash test {note}: {counts}")


def test_junk_in_the_spool_is_set_aside_not_a_crash_loop(make_server) -> None:
    """Foreign files, a damaged segment and unreadable entries: the server starts, logs each one,
    moves it to spool/corrupt/, delivers the good mail, and the next start is clean."""
    srv = make_server({"queue": {"retry_min": 0.3, "retry_max": 1.0}})
    blocker = srv.block_maildir("carol")  # keep carol's mail queued over the restart
    msg, qid = srv.send_deferred("carol", "queued before the junk", "this one must survive\r\n", SENDER)
    assert srv.stop() == 0
    spool = srv.shard_dir
    (spool / "seg" / "000000009999.seg").write_bytes(b"GARBAGE that only looks like a segment by its name\n" * 20)
    (spool / "seg" / "000000009998.seg").mkdir()  # a directory: cannot be read as a file
    (spool / "seg" / "notes.txt").write_text("a human's notes\n")
    (spool / "files" / "ZZZZZZZZZZZZZZZ.env").write_bytes(b"{not json")
    (spool / "files" / "ZZZZZZZZZZZZZZZ.msg").write_bytes(b"Subject: x\r\n\r\nx\r\n")
    (spool / "files" / "YYYYYYYYYYYYYYY.env").mkdir()  # an envelope that is a directory
    (spool / "files" / "YYYYYYYYYYYYYYY.msg").write_bytes(b"x")
    (spool / "files" / "core").write_bytes(b"\x7fELF")
    blocker.unlink()
    srv.start()
    (f,) = srv.wait_mail("carol", 1, timeout=15, settle=1.0)
    check_delivered(f, msg, sender=SENDER, rcpt=f"carol@{DOMAIN}", qid=qid)
    log = srv.log()
    for name in (
        "000000009999.seg",
        "000000009998.seg",
        "notes.txt",
        "ZZZZZZZZZZZZZZZ.env",
        "YYYYYYYYYYYYYYY.env",
        "core",
    ):
        assert any(name in line and "spool:" in line for line in log.splitlines()), (
            f"nothing logged about {name}:\n{srv.log_tail()}"
        )
    aside = sorted(p.name for p in (spool / "corrupt").iterdir())
    for name in (
        "000000009999.seg",
        "000000009998.seg",
        "notes.txt",
        "ZZZZZZZZZZZZZZZ.env",
        "YYYYYYYYYYYYYYY.env",
        "core",
    ):
        assert any(a.startswith(name) for a in aside), (name, aside)
    # still serving, and the next start finds nothing more to complain about
    with srv.connect() as c:
        c.ehlo()
        r2 = c.send_message(SENDER, [f"dave@{DOMAIN}"], stuff(make_message("after the junk", "fine\r\n")))
        check(r2, 250, "2.0.0")
    srv.wait_mail("dave", 1)
    offset = len(srv.log())
    srv.restart()
    time.sleep(1.0)
    assert "spool:" not in srv.log()[offset:], srv.log()[offset:]
    assert len(srv.mail("carol")) == 1 and len(srv.mail("dave")) == 1
    assert "Traceback" not in srv.log()


def test_unusable_spool_directory_is_one_clear_error(make_server) -> None:
    """A spool that cannot be made (a file in the way of data_dir) stops the start with exit 1 and one line."""
    srv = make_server(start=False)
    srv.data_dir.parent.mkdir(parents=True, exist_ok=True)
    srv.data_dir.write_text("a file where the data directory should be\n")
    with pytest.raises(AssertionError, match="exited with 1"):
        srv.start(timeout=15)
    log = srv.log()
    assert "cannot use the spool directory" in log, log
    assert "Traceback" not in log, log
