"""Graceful life cycle: SIGTERM drains, SIGHUP reloads.

SIGTERM: the listeners close at once; an idle session gets 421 4.3.2 at once;
a session in the middle of a transaction may finish it within
smtpd.shutdown_timeout (and gets its 250, then 421 4.3.2); one still in it at
the deadline gets 421 4.3.2 and its message is not kept; the process exits 0
and everything acknowledged is delivered, then or after the next start.

SIGHUP: a configuration that loads is used by new sessions (open ones keep
theirs, and are not dropped), listeners are added and removed; one that does
not load is refused with one log line and the running one stays.
"""

from __future__ import annotations

import signal
import socket
import time

import pytest

from .harness import DOMAIN, Server, SMTPClient, check, check_delivered, free_port, make_message, stuff, to_toml

pytestmark = pytest.mark.e2e

SENDER = "sender@client.test"


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except OSError:
        return True


@pytest.mark.timeout(60)
def test_sigterm_drains_then_exits_0(make_server) -> None:
    srv = make_server({"smtpd": {"shutdown_timeout": 8.0}, "queue": {"retry_min": 0.3, "retry_max": 1.0}})
    # acknowledged earlier and still queued (dave's Maildir is broken): must survive the stop
    blocker = srv.block_maildir("dave")
    queued, qid_queued = srv.send_deferred("dave", "queued before the stop", "delivered after the restart\r\n", SENDER)

    idle = srv.connect()
    idle.ehlo()
    finisher = srv.connect()  # will finish its message within the deadline
    finisher.ehlo()
    finisher.expect(f"MAIL FROM:<{SENDER}>", 250)
    finisher.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
    finisher.expect("DATA", 354)
    finished = make_message("finished during the drain", "this one gets its 250\r\n")
    wire = stuff(finished) + b".\r\n"
    finisher.send(wire[:40])
    staller = srv.connect()  # will still be in DATA at the deadline
    staller.ehlo()
    staller.expect(f"MAIL FROM:<{SENDER}>", 250)
    staller.expect(f"RCPT TO:<bob@{DOMAIN}>", 250)
    staller.expect("DATA", 354)
    staller.send(b"Subject: never finished\r\n\r\nhalf a message\r\n")
    half_txn = srv.connect()  # between RCPT and DATA at the deadline
    half_txn.ehlo()
    half_txn.expect(f"MAIL FROM:<{SENDER}>", 250)
    half_txn.expect(f"RCPT TO:<carol@{DOMAIN}>", 250)

    srv.proc.send_signal(signal.SIGTERM)
    # the idle session is told at once: its 421 comes while the others are still open
    check(idle.reply(timeout=5), 421, "4.3.2", "idle session at SIGTERM")
    idle.wait_closed(3)
    assert _refuses_connections(srv.port), "still accepting connections after SIGTERM"
    assert srv.alive(), "exited before the sessions in a transaction were given their time"
    # the message in progress may still finish, and is acknowledged
    finisher.send(wire[40:])
    r = finisher.reply(timeout=5)
    check(r, 250, "2.0.0", "a message finished during the drain")
    qid_finished = r.qid
    check(finisher.reply(timeout=5), 421, "4.3.2", "after its transaction")
    finisher.wait_closed(3)
    # the others are cut at the deadline
    check(staller.reply(timeout=20), 421, "4.3.2", "mid-DATA at the deadline")
    check(half_txn.reply(timeout=20), 421, "4.3.2", "mid-transaction at the deadline")
    for c in (staller, half_txn):
        c.wait_closed(3)
    srv.proc.wait(20)
    assert srv.proc.returncode == 0, srv.log_tail()
    log = srv.log()
    assert "shutting down: no new connections; 4 sessions open, 3 in a transaction, given 8s to finish" in log, (
        srv.log_tail()
    )
    assert "Traceback" not in log

    # nothing acknowledged is lost; nothing unacknowledged is kept
    blocker.unlink()
    srv.start()
    (fd,) = srv.wait_mail("dave", 1, timeout=15, settle=0.5)
    check_delivered(fd, queued, sender=SENDER, rcpt=f"dave@{DOMAIN}", qid=qid_queued)
    (fa,) = srv.wait_mail("alice", 1, settle=0.5)
    check_delivered(fa, finished, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=qid_finished)
    time.sleep(1.0)
    assert srv.mail("bob") == [] and srv.mail("carol") == []
    for c in (idle, finisher, staller, half_txn):
        c.close()


@pytest.mark.timeout(60)
def test_second_sigterm_stops_at_once(make_server) -> None:
    srv = make_server({"smtpd": {"shutdown_timeout": 600.0}})
    c = srv.connect()
    c.ehlo()
    c.expect(f"MAIL FROM:<{SENDER}>", 250)
    c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
    c.expect("DATA", 354)
    c.send(b"Subject: stalled\r\n\r\n")
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert srv.alive(), "the first SIGTERM should wait for the transaction"
    srv.proc.send_signal(signal.SIGTERM)
    check(c.reply(timeout=10), 421, "4.3.2")
    srv.proc.wait(10)
    assert srv.proc.returncode == 0
    c.close()
    srv.start()
    time.sleep(1.0)
    assert srv.mail("alice") == []


@pytest.mark.timeout(90)
def test_sigterm_under_load_loses_nothing_acknowledged(make_server) -> None:
    """Clients keep sending while the server stops and starts again: every 250 is delivered once."""
    from .load import Load, expected_deliveries, match_delivered, wait_quiet

    srv = make_server({"smtpd": {"shutdown_timeout": 2.0}, "queue": {"retry_min": 0.3, "retry_max": 1.0}})
    load = Load(lambda: srv.port, clients=4, seed=11, big_every=1000)
    load.start()
    try:
        for k in range(3):
            load.wait_accepted(40 * (k + 1), timeout=60)
            assert srv.stop(timeout=15) == 0, srv.log_tail()
            srv.start()
        load.wait_accepted(160, timeout=60)
    finally:
        load.stop()
    mail = wait_quiet(srv.all_mail, expected_deliveries(load.sent), timeout=60)
    counts = match_delivered(load.sent, mail)
    # a graceful stop answers every message whose data it took in: no reply is lost
    # (one cut at the 2 s deadline would be refused with 421, and match_delivered checks it is not kept)
    assert counts["unknown"] == 0, counts


# -- SIGHUP -----------------------------------------------------------------------


def _write(srv: Server, cfg: dict) -> None:
    srv.config_path.write_text(to_toml(cfg))


def _hup_and_wait(srv: Server, pattern: str) -> None:
    before = len(srv.log())
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while pattern not in srv.log()[before:]:
        assert time.monotonic() < deadline, f"no {pattern!r} in the log after SIGHUP:\n{srv.log_tail()}"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_sighup_reloads_for_new_sessions_and_keeps_open_ones(make_server) -> None:
    srv = make_server({"smtpd": {"banner": "ESMTP first", "max_recipients": 2}})
    old = srv.connect()  # open across the reload
    old.ehlo()
    cfg = srv.config()
    cfg["smtpd"]["banner"] = "ESMTP second"
    cfg["smtpd"]["max_recipients"] = 4
    extra = free_port()
    cfg["smtpd"]["listeners"].append({"address": f"127.0.0.1:{extra}"})
    _write(srv, cfg)
    _hup_and_wait(srv, "reloaded the configuration")
    # new sessions, on the old listener and on the added one, use the new configuration
    for port in (srv.port, extra):
        with SMTPClient(port) as c:
            r = c.reply()
            check(r, 220)
            assert r.lines[0].endswith("ESMTP second"), r
            c.ehlo()
            c.expect(f"MAIL FROM:<{SENDER}>", 250)
            for u in range(4):
                c.expect(f"RCPT TO:<u{u}@{DOMAIN}>", 250)
            c.expect(f"RCPT TO:<u4@{DOMAIN}>", 452, "4.5.3")
    # the session opened before the reload was not dropped, and keeps its configuration
    old.expect(f"MAIL FROM:<{SENDER}>", 250)
    old.expect(f"RCPT TO:<a@{DOMAIN}>", 250)
    old.expect(f"RCPT TO:<b@{DOMAIN}>", 250)
    old.expect(f"RCPT TO:<c@{DOMAIN}>", 452, "4.5.3")
    old.expect("DATA", 354)
    msg = make_message("across a reload", "sent by a session older than the configuration\r\n")
    old.send(stuff(msg) + b".\r\n")
    r = old.reply()
    check(r, 250, "2.0.0")
    old.expect("QUIT", 221)
    old.close()
    (f,) = srv.wait_mail("a", 1)
    check_delivered(f, msg, sender=SENDER, rcpt=f"a@{DOMAIN}", qid=r.qid)

    # a broken configuration is refused with one clear line, and the running one stays
    srv.config_path.write_text(srv.config_path.read_text().replace("max_recipients = 4", 'max_recipients = "four"'))
    _hup_and_wait(srv, "reload refused")
    line = next(x for x in srv.log().splitlines() if "reload refused" in x)
    assert "smtpd.max_recipients" in line and "the running configuration stays" in line, line
    srv.config_path.write_text("this is [not TOML\n")
    _hup_and_wait(srv, "not valid TOML")
    # a listener that cannot be bound: refused as a whole
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        bad = srv.config()
        bad["smtpd"]["listeners"].append({"address": f"127.0.0.1:{taken}"})
        bad["smtpd"]["banner"] = "ESMTP never"
        _write(srv, bad)
        _hup_and_wait(srv, f"cannot listen on 127.0.0.1:{taken}")
    with SMTPClient(extra) as c:
        r = c.reply()
        assert r.lines[0].endswith("ESMTP second"), r
    assert srv.alive()

    # removing a listener closes it; a restart-only key is reported, not applied
    cfg = srv.config()
    cfg["smtpd"]["banner"] = "ESMTP third"
    cfg["queue"]["directory"] = "elsewhere"
    _write(srv, cfg)
    _hup_and_wait(srv, "reloaded the configuration")
    assert _refuses_connections(extra), "the removed listener still accepts"
    assert "queue.directory changed" in srv.log()
    with srv.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"d@{DOMAIN}"], stuff(make_message("after reloads", "x\r\n")))
        check(r, 250, "2.0.0")
    srv.wait_mail("d", 1)
    assert not (srv.data_dir / "elsewhere").exists()
    assert srv.stop() == 0
