"""Greylisting (screen.greylist, issue 19 part 4) against a real `smtprs serve`:
the first try of a triplet gets 450 4.7.1 and nothing is delivered; a retry
after the delay delivers; the store is shared by the workers and survives a
restart; clients that passed enough triplets, exempt networks and domains and
submission are not delayed.  The delay is 2 s, so a test waits a few seconds."""

from __future__ import annotations

import smtplib
import sqlite3
import time
from typing import Any

import pytest

from .harness import DOMAIN, Server, SMTPClient, check, make_message, stuff
from .test_submission import PASSWORD, USER, client_context, credentials, msa_config  # noqa: F401 (credentials: a fixture)
from .test_workers import wait_workers

pytestmark = pytest.mark.e2e

DELAY = 2.0
SENDER = "sender@client.test"


def grey(**extra: Any) -> dict[str, Any]:
    settings = {"enabled": True, "delay": DELAY, "retry_window": 60.0, "exempt_networks": [], **extra}
    return {"screen": {"greylist": settings}}


def attempt(srv: Server, rcpt: str, source: str = "127.0.0.1", sender: str = SENDER) -> tuple[int, str]:
    """One delivery attempt; the RCPT reply's code and enhanced code (a 250 goes on to deliver)."""
    with SMTPClient(srv.port, source=source) as c:
        c.reply()
        c.ehlo()
        c.expect(f"MAIL FROM:<{sender}>", 250)
        r = c.cmd(f"RCPT TO:<{rcpt}>")
        if r.code == 250:
            c.expect("DATA", 354)
            c.send(stuff(make_message(f"to {rcpt}", "greylisting test\r\n")) + b".\r\n")
            check(c.reply(), 250, "2.0.0")
        c.expect("QUIT", 221)
    return r.code, r.enhanced


def test_first_try_is_deferred_and_the_retry_delivered(make_server) -> None:
    srv = make_server(grey(auto_allowlist=0))
    rcpt = f"alice@{DOMAIN}"
    assert attempt(srv, rcpt) == (450, "4.7.1")
    assert attempt(srv, rcpt) == (450, "4.7.1")  # too early
    time.sleep(0.5)
    assert srv.mail("alice") == []  # nothing of the deferred tries was kept
    line = next(x for x in srv.log().splitlines() if "reject: RCPT" in x)
    assert "450 4.7.1" in line and "greylisted (new)" in line and f"to=<{rcpt}>" in line, line
    time.sleep(DELAY)
    # a real MTA's retry, here smtplib's
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
        s.sendmail(SENDER, [rcpt], make_message("retried", "after the delay\r\n"))
    assert len(srv.wait_mail("alice", 1)) == 1
    assert attempt(srv, rcpt) == (250, "2.1.5")  # known now: no more delay
    # another sender is another triplet
    assert attempt(srv, rcpt, sender="other@client.test") == (450, "4.7.1")
    srv.wait_mail("alice", 2)


def test_the_store_survives_a_restart_and_is_shared_by_workers(make_server) -> None:
    srv = make_server({**grey(auto_allowlist=0), "workers": 2})
    wait_workers(srv)
    rcpts = [f"user{i}@{DOMAIN}" for i in range(6)]
    for r in rcpts:  # (SO_REUSEPORT spreads these connections over both workers)
        assert attempt(srv, r) == (450, "4.7.1")
    srv.stop()
    srv.start()
    wait_workers(srv)
    time.sleep(DELAY)
    for r in rcpts:
        assert attempt(srv, r) == (250, "2.1.5"), r
    for i in range(6):
        srv.wait_mail(f"user{i}", 1)
    with sqlite3.connect(srv.data_dir / "greylist.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM triplets WHERE passes > 0").fetchone()[0] == 6


def test_a_client_that_passed_enough_triplets_is_not_delayed(make_server) -> None:
    srv = make_server(grey(auto_allowlist=2))
    for r in (f"a@{DOMAIN}", f"b@{DOMAIN}"):
        assert attempt(srv, r, source="127.0.0.21")[0] == 450
    time.sleep(DELAY)
    for r in (f"a@{DOMAIN}", f"b@{DOMAIN}"):
        assert attempt(srv, r, source="127.0.0.21")[0] == 250
    # its /24 is allowlisted: a new triplet passes at once
    assert attempt(srv, f"c@{DOMAIN}", source="127.0.0.99", sender="new@client.test") == (250, "2.1.5")
    srv.wait_mail("c", 1)


def test_exempt_networks_and_domains_are_not_delayed(make_server) -> None:
    srv = make_server(
        {
            "local": {"domains": [DOMAIN, "postmaster.test"]},
            "relay": {"trusted_networks": ["127.0.0.31/32"]},
            **grey(exempt_networks=["$trusted_networks", "127.0.0.32/32"], exempt_domains=["postmaster.test"]),
        }
    )
    assert attempt(srv, f"alice@{DOMAIN}", source="127.0.0.31") == (250, "2.1.5")
    assert attempt(srv, f"bob@{DOMAIN}", source="127.0.0.32") == (250, "2.1.5")
    assert attempt(srv, "abuse@postmaster.test", source="127.0.0.33") == (250, "2.1.5")
    assert attempt(srv, f"carol@{DOMAIN}", source="127.0.0.33") == (450, "4.7.1")
    srv.wait_mail("alice", 1)
    srv.wait_mail("bob", 1)


def test_submission_is_not_delayed(make_server, credentials) -> None:
    """Greylisting screens mx clients only: a user submitting on 587 is not delayed
    (twice, so not by an early pass either); an anonymous mx client is."""
    cfg = msa_config(credentials)
    cfg.update(grey())
    srv = make_server(cfg, modes=("submission",))
    for n in range(2):
        with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=15) as s:
            s.ehlo("client.test")
            s.starttls(context=client_context(credentials))
            s.ehlo("client.test")
            s.login(USER, PASSWORD)
            s.sendmail(USER, [f"bob@{DOMAIN}"], make_message(f"submission {n}", "not greylisted\r\n"))
    srv.wait_mail("bob", 2)
    assert attempt(srv, f"bob@{DOMAIN}", sender="anonymous@client.test") == (450, "4.7.1")
