"""Abuse resistance: limits per client address, slow and non-reading clients,
errors, header size, open-relay tricks.  Each test checks the reply codes, that
the abusive session ends (or goes on) cleanly, and that well-behaved clients
are served at the same time.

Different client addresses are made with source addresses on the loopback
network (127.0.0.2, 127.0.0.3, ...: Linux routes all of 127/8 to lo).
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time

import pytest

from .harness import DOMAIN, ConnectionClosed, Server, SMTPClient, check, check_delivered, make_message, stuff

pytestmark = pytest.mark.e2e

SENDER = "sender@client.test"


def deliver_one(srv: Server, user: str, subject: str, source: str | None = None) -> None:
    """A well-behaved client: one message, delivered."""
    before = len(srv.mail(user))
    msg = make_message(subject, f"{subject}\r\n")
    with srv.connect(source=source) as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"{user}@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0", subject)
        c.expect("QUIT", 221)
    files = srv.wait_mail(user, before + 1)
    assert any(f.read_bytes().endswith(msg.replace(b"\r\n", b"\n")) for f in files)


# -- connections per client address -------------------------------------------


def test_connection_limit_per_client_address(make_server) -> None:
    srv = make_server({"smtpd": {"max_connections_per_client": 3, "limit_exempt_networks": []}})
    held = [srv.connect(source="127.0.0.2") for _ in range(3)]
    with SMTPClient(srv.port, source="127.0.0.2") as fourth:
        check(fourth.reply(), 421, "4.7.0", "a 4th session from one address")
        fourth.wait_closed(5)
    deliver_one(srv, "alice", "another address is served", source="127.0.0.3")
    held[0].ehlo()  # the sessions already open are not disturbed
    held[0].expect("QUIT", 221)
    held[0].close()
    deadline = time.monotonic() + 5
    while True:  # the freed slot goes to the next session from that address
        with SMTPClient(srv.port, source="127.0.0.2") as c:
            r = c.reply()
            if r.code == 220:
                break
            check(r, 421, "4.7.0")
        assert time.monotonic() < deadline, "a closed session did not give its slot back"
        time.sleep(0.1)
    for c in held[1:]:
        c.close()
    rejects = [line for line in srv.log().splitlines() if "reject: CONNECT from [127.0.0.2]" in line]
    assert rejects and all("421 4.7.0" in line for line in rejects), rejects


def test_connections_reset_before_the_greeting_leave_the_server_serving(make_server) -> None:
    """A burst of connections the client resets at once (RST, before or just after
    the server accepts them): each ends quietly, none stops the accept loop, and
    the next client is served."""
    srv = make_server({"smtpd": {"max_connections_per_client": 1000, "max_connection_rate": 0}})
    for _ in range(200):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        s.bind(("127.0.0.4", 0))
        s.connect(("127.0.0.1", srv.port))
        s.close()
    deliver_one(srv, "alice", "served after the resets", source="127.0.0.5")
    assert srv.proc is not None and srv.proc.poll() is None
    log = srv.log()
    assert "internal error" not in log and "Traceback" not in log, srv.log_tail()
    assert log.count(": connect from [127.0.0.4]") > 0  # (Linux hands reset connections to accept())
    # every reset connection that was accepted also ended (nothing left open)
    deadline = time.monotonic() + 10
    while log.count(": connect from [127.0.0.4]") != log.count(": disconnect from [127.0.0.4]"):
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.1)
        log = srv.log()


def test_connection_rate_limit_per_client_address(make_server) -> None:
    """(The window running out is tested in virtual time: tests/unit/test_limits.py.)"""
    srv = make_server(
        {"smtpd": {"max_connection_rate": 5, "connection_rate_window": 600.0, "limit_exempt_networks": []}}
    )
    codes = []
    for _ in range(8):
        with SMTPClient(srv.port, source="127.0.0.5") as c:
            r = c.reply()
            codes.append((r.code, r.enhanced))
            if r.code == 220:
                c.expect("QUIT", 221)
            else:
                c.wait_closed(5)
    assert codes[:5] == [(220, "")] * 5, codes
    assert codes[5:] == [(421, "4.7.0")] * 3, codes
    deliver_one(srv, "bob", "another address is not limited", source="127.0.0.6")
    rejects = [line for line in srv.log().splitlines() if "reject: CONNECT from [127.0.0.5]" in line]
    assert len(rejects) == 3 and all("421 4.7.0" in line and "short time" in line for line in rejects), rejects


# -- slow clients --------------------------------------------------------------


def _trickle(sock: socket.socket, data: bytes, every: float, stop: threading.Event) -> int:
    """Send ``data`` one byte at a time; return how many were sent before the server gave up."""
    sent = 0
    for i in range(len(data)):
        if stop.wait(every):
            break
        try:
            sock.send(data[i : i + 1])
        except OSError:
            break
        sent += 1
    return sent


def _normal_traffic(srv: Server, stop: threading.Event, delivered: list[int], errors: list[str]) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        try:
            deliver_one(srv, "normal", f"normal client {n} {time.monotonic_ns()}")
            delivered.append(n)
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(repr(e))
            return
        time.sleep(0.05)


@pytest.mark.timeout(90)
def test_slowloris_is_dropped_while_normal_clients_are_served(make_server) -> None:
    """Clients trickling a byte every 0.25 s -- in a command line, and inside DATA -- never trip a
    per-read timeout; the per-command deadline and the minimum data rate drop them."""
    srv = make_server({"smtpd": {"command_timeout": 2.0, "data_timeout": 2.0, "min_data_rate": 100}})
    stop = threading.Event()
    delivered: list[int] = []
    errors: list[str] = []
    normal = threading.Thread(target=_normal_traffic, args=(srv, stop, delivered, errors), daemon=True)
    normal.start()
    results: dict[str, tuple[int, bytes]] = {}

    def command_loris(k: int) -> None:
        with srv.connect(source=f"127.0.1.{k}") as c:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            line = b"EHLO " + b"slowly" * 40 + b"\r\n"  # 60 s at this pace
            sent = _trickle(c.sock, line, 0.25, stop)
            results[f"command {k}"] = (sent, c.wait_closed(10))

    def data_loris(k: int) -> None:
        with srv.connect(source=f"127.0.2.{k}") as c:
            c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.ehlo()
            c.expect(f"MAIL FROM:<{SENDER}>", 250)
            c.expect(f"RCPT TO:<victim@{DOMAIN}>", 250)
            c.expect("DATA", 354)
            body = b"Subject: slow\r\n\r\n" + b"x" * 60 + b"\r\n"  # 4 octets/s, under 100: dropped
            sent = _trickle(c.sock, body * 4, 0.25, stop)
            results[f"data {k}"] = (sent, c.wait_closed(10))

    threads = [threading.Thread(target=command_loris, args=(k,)) for k in range(1, 6)]
    threads += [threading.Thread(target=data_loris, args=(k,)) for k in range(1, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    stop.set()
    normal.join(20)
    assert not errors, errors
    assert len(results) == 10, results
    for name, (sent, tail) in results.items():
        assert b"421 4.4.2" in tail, f"{name}: the server's last words were {tail!r}"
        total = 246 if name.startswith("command") else 4 * 79
        assert sent < total, f"{name}: the server let it send all {sent} octets"
    assert delivered, "no normal message went through while the slow clients were connected"
    assert srv.mail("victim") == []
    log = srv.log()
    assert (
        len(re.findall(r"reject: timeout from \[127\.0\.1\.\d\]:\d+: 421 4\.4\.2 .*waiting for a command", log)) == 5
    ), srv.log_tail()
    assert len(re.findall(r"reject: timeout from \[127\.0\.2\.\d\]:\d+: 421 4\.4\.2 .*too slow", log)) == 5, (
        srv.log_tail()
    )


@pytest.mark.timeout(60)
def test_client_that_never_reads_is_dropped(make_server) -> None:
    """Pipelined commands whose replies are never read fill the socket; send_timeout ends the session."""
    srv = make_server({"smtpd": {"send_timeout": 2.0}})
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10, source_address=("127.0.0.9", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flood = b"EHLO never.reads.test\r\n" * 2000
    try:
        for _ in range(200):
            sock.sendall(flood)
    except OSError:
        pass  # the server closed the connection: what we want
    deliver_one(srv, "alice", "served while a client does not read", source="127.0.0.10")
    srv.wait_log(r"disconnect from \[127\.0\.0\.9\]", timeout=20)
    sock.close()
    assert srv.alive()


# -- errors --------------------------------------------------------------------


def test_pipelined_errors_stop_at_max_errors(make_server) -> None:
    """Errors sent in one write: max_errors error replies, then 421, and nothing after it runs."""
    srv = make_server({"smtpd": {"max_errors": 5}})
    with srv.connect() as c:
        c.ehlo()
        bad = b"".join(b"BOGUS%d\r\n" % i for i in range(20))
        txn = (
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<alice@{DOMAIN}>\r\nDATA\r\n".encode()
            + b"Subject: after the errors\r\n\r\nx\r\n.\r\n"
        )
        c.send(bad + txn)
        replies = []
        while True:
            try:
                replies.append(c.reply(timeout=5))
            except ConnectionClosed:
                break
    codes = [(r.code, r.enhanced) for r in replies]
    assert codes == [(500, "5.5.2")] * 5 + [(421, "4.7.0")], codes
    time.sleep(0.5)
    assert srv.mail("alice") == []
    deliver_one(srv, "bob", "after an error flood")


# -- header size -----------------------------------------------------------------


def test_header_block_over_max_header_size(make_server) -> None:
    srv = make_server({"smtpd": {"max_header_size": 8192}})
    filler = [f"X-Filler-{i}: " + "h" * 70 for i in range(120)]  # ~10 kB of header fields
    too_big = make_message("big header", "body\r\n", filler)
    fits = make_message("header that fits", "body\r\n", filler[:80])  # ~7 kB
    only_header = b"".join(f"X-No-Body-{i}: {'n' * 70}\r\n".encode() for i in range(150))  # no blank line at all
    with srv.connect() as c:
        c.ehlo()
        check(c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(too_big)), 552, "5.3.4", "10 kB header block")
        check(
            c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(only_header)), 552, "5.3.4", "12 kB of header and no body"
        )
        # the session goes on, and a header block under the limit is fine
        r = c.send_message(SENDER, [f"bob@{DOMAIN}"], stuff(fits))
        check(r, 250, "2.0.0")
    (f,) = srv.wait_mail("bob", 1, settle=0.5)
    check_delivered(f, fits, sender=SENDER, rcpt=f"bob@{DOMAIN}", qid=r.qid)
    assert srv.mail("alice") == []


# -- open relay ------------------------------------------------------------------

# RCPT path -> the refusal (code, enhanced code), or the local mailbox it is delivered to.
NAME = (550, "5.1.1")  # a local part that is not a safe mailbox name: routing characters, quotes
RELAY = (554, "5.7.1")  # another domain, and this client may not relay
SYNTAX = (553, "5.1.3")  # not an RFC 5321 path at all
RELAY_TRICKS: list[tuple[str, tuple[int, str] | str]] = [
    (f"<user%elsewhere.test@{DOMAIN}>", NAME),
    (f"<user%elsewhere.test%{DOMAIN}@{DOMAIN}>", NAME),
    (f'<"user@elsewhere.test"@{DOMAIN}>', NAME),
    (f'<"user%elsewhere.test"@{DOMAIN}>', NAME),
    (f"<user!elsewhere.test@{DOMAIN}>", NAME),
    (f"<elsewhere.test!user@{DOMAIN}>", NAME),
    (f"<user@elsewhere.test@{DOMAIN}>", SYNTAX),
    (f"<user\\@elsewhere.test@{DOMAIN}>", SYNTAX),
    (f"<@{DOMAIN}:user@elsewhere.test>", RELAY),  # a source route through us to elsewhere: the route is ignored
    (f"<@{DOMAIN},@mx.test:user@elsewhere.test>", RELAY),
    (f"<@elsewhere.test,@other.test:routed@{DOMAIN}>", "routed"),  # ... so this one is simply local
    ("<user@[127.0.0.1]>", RELAY),  # our own address literals are not local domains
    ("<user@[IPv6:::1]>", RELAY),
    ("<user@elsewhere.test.>", SYNTAX),
    (f"<user@{DOMAIN}.>", SYNTAX),
    (f"<user@{DOMAIN}:25>", SYNTAX),
    (f"<user@sub.{DOMAIN}>", RELAY),
    (f"<user@{DOMAIN}.elsewhere.test>", RELAY),
    ("<user@elsewhere.test>", RELAY),
    (f"<USER@{DOMAIN.upper()}>", "user"),
    (f"<user+tag@{DOMAIN}>", "user"),  # sub-addressing (local.recipient_delimiter)
]


def test_open_relay_tricks_are_refused_or_delivered_locally(make_server, smtp_sink) -> None:
    """Each trick is refused or delivered to a local mailbox; a downstream smtp-sink that every
    other domain is routed to (relay.transport) receives nothing."""
    sink = smtp_sink
    hop = f"[127.0.0.1]:{sink.port}"
    server = make_server(
        {
            "smtpd": {"max_errors": 1000},
            "relay": {
                "transport": {
                    "elsewhere.test": hop,
                    ".elsewhere.test": hop,
                    "other.test": hop,
                    f".{DOMAIN}": hop,
                    "mx.test": hop,
                },
                "relayhost": hop,
            },
        }
    )
    msg = make_message("relay attempt", "never to leave this host\r\n")
    local: list[tuple[str, str]] = []
    with server.connect() as c:
        c.ehlo()
        for path, want in RELAY_TRICKS:
            c.expect(f"MAIL FROM:<{SENDER}>", 250)
            r = c.cmd(f"RCPT TO:{path}")
            if isinstance(want, tuple):
                check(r, want[0], want[1], f"RCPT TO:{path}")
                c.expect("RSET", 250)
                continue
            check(r, 250, "2.1.5", path)
            c.expect("DATA", 354)
            c.send(stuff(msg) + b".\r\n")
            r = c.reply()
            check(r, 250, "2.0.0", path)
            local.append((want, r.qid))
    for user in {u for u, _ in local}:
        want = [qid for u, qid in local if u == user]
        files = server.wait_mail(user, len(want), settle=0.3)
        assert sorted(q for q in want if any(f"Q{q}R0" in f.name for f in files)) == sorted(want), (user, files)
    time.sleep(0.5)
    assert sorted(server.all_mail()) == sorted({u for u, _ in local}), server.all_mail()
    for line in server.log().splitlines():
        m = re.search(r": [0-9A-Z]+: to=<([^>]*)>.*relay=(\S+),", line)
        if m:
            assert m.group(2) == "local", f"a recipient was routed off this host: {line}"
    assert sink.dumps() == [], "mail was relayed"
