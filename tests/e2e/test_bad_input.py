"""Bad input: each case checks the reply code and that the server keeps serving.

"Keeps serving" is checked twice where it applies: the same session goes on
with a message that is delivered, and a new connection delivers one too
(``assert_still_serves``).
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from .harness import DOMAIN, ConnectionClosed, Server, SMTPClient, check, check_delivered, make_message, stuff

pytestmark = pytest.mark.e2e

SENDER = "sender@client.test"


def assert_still_serves(srv: Server, user: str = "postmaster") -> None:
    """A new connection delivers a message to ``user`` (one more in its Maildir)."""
    before = len(srv.mail(user))
    msg = make_message(f"still serving {time.monotonic_ns()}", "the server still works\r\n")
    with srv.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"{user}@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0", "message after the bad input")
        c.expect("QUIT", 221)
    files = srv.wait_mail(user, before + 1)
    assert any(f.read_bytes().endswith(msg.replace(b"\r\n", b"\n")) for f in files)


def same_session_delivers(c: SMTPClient, srv: Server, user: str) -> None:
    before = len(srv.mail(user))
    msg = make_message(f"same session {time.monotonic_ns()}", "the session goes on\r\n")
    r = c.send_message(SENDER, [f"{user}@{DOMAIN}"], stuff(msg))
    check(r, 250, "2.0.0", "message in the same session")
    (f,) = srv.wait_mail(user, before + 1)[before:]
    check_delivered(f, msg, sender=SENDER, rcpt=f"{user}@{DOMAIN}", qid=r.qid)


# -- command lines ---------------------------------------------------------


def test_command_line_of_600_octets(server: Server) -> None:
    with server.connect() as c:
        c.ehlo()
        line = b"NOOP " + b"x" * 593
        assert len(line) + 2 == 600
        r = c.cmd(line)
        check(r, 500, "5.5.2", "600-octet NOOP")
        addr = b"a" * 580 + f"@{DOMAIN}".encode()
        r = c.cmd(b"MAIL FROM:<" + addr + b">")
        check(r, 500, "5.5.2", "600-octet MAIL")
        assert c.nothing_more(0.3), "more than one reply to one over-long line"
        # 512 octets with CRLF is still a legal command line
        ok = b"NOOP " + b"y" * 505
        assert len(ok) + 2 == 512
        c.expect(ok, 250)
        same_session_delivers(c, server, "alice")
    assert_still_serves(server)


def test_tail_of_long_line_is_not_a_command(server: Server) -> None:
    """The part of an over-long line past 512 octets must be discarded, not run."""
    with server.connect() as c:
        c.ehlo()
        for tail in (b"QUIT", b"RSET", b"DATA"):
            line = b"NOOP " + b"z" * (512 - 5) + tail
            r = c.cmd(line)
            check(r, 500, "5.5.2", "over-long line")
            assert c.nothing_more(0.3), f"the tail {tail!r} of an over-long line got a reply"
        # the same with a transaction open: its tail must not reset it
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        r = c.cmd(b"RCPT TO:<alice@" + DOMAIN.encode() + b"> " + b"X" * 600 + b" RSET")
        check(r, 500, "5.5.2")
        c.expect(f"RCPT TO:<bob@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        msg = make_message("after long lines", "ok\r\n")
        c.send(stuff(msg) + b".\r\n")
        check(c.reply(), 250, "2.0.0")
    server.wait_mail("bob", 1, settle=0.5)
    assert server.mail("alice") == []


def test_syntax_errors(server: Server) -> None:
    with server.connect() as c:
        c.expect("HELO", 501, "5.5.4")
        c.expect("EHLO", 501, "5.5.4")
        c.ehlo()
        c.expect(f"MAIL FROM <{SENDER}>", 501, "5.5.4")
        c.expect(f"MAIL <{SENDER}>", 501, "5.5.4")
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT <alice@{DOMAIN}>", 501, "5.5.4")
        c.expect("XYZZY", 500, "5.5.2")
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("RSET", 250)
        same_session_delivers(c, server, "alice")


def test_nul_bytes_in_commands(server: Server) -> None:
    with server.connect() as c:
        c.ehlo()
        check(c.cmd(b"NOOP\x00"), 500, "5.5.2", "NUL after verb")
        check(c.cmd(b"\x00"), 500, "5.5.2", "lone NUL")
        check(c.cmd(b"MAIL FROM:<a\x00b@client.test>"), 500, "5.5.2", "NUL in MAIL")
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        check(c.cmd(f"RCPT TO:<alice@{DOMAIN}>\x00".encode()), 500, "5.5.2", "NUL in RCPT")
        c.expect("RSET", 250)
        same_session_delivers(c, server, "bob")
    assert server.mail("alice") == []
    assert_still_serves(server)


def test_nul_bytes_in_data(server: Server) -> None:
    """NUL in message text: refused, or kept byte for byte -- never mangled, never a crash."""
    msg = make_message("nul", b"before\x00after\r\n\x00\r\n")
    with server.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(msg))
        assert r.code in (250, 554), r
        if r.code == 250:
            (f,) = server.wait_mail("alice", 1, settle=0.3)
            check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)
        same_session_delivers(c, server, "bob")


def test_bare_cr_and_lf_in_command_lines(server: Server) -> None:
    with server.connect() as c:
        c.ehlo()
        # a bare LF does not end a command line: the whole line up to CRLF is one bad line
        c.send(b"NOOP\nQUIT\r\n")
        check(c.reply(), 500, "5.5.2", "bare LF")
        assert c.nothing_more(0.3)
        c.send(b"NOOP\rQUIT\r\n")
        check(c.reply(), 500, "5.5.2", "bare CR")
        assert c.nothing_more(0.3)
        same_session_delivers(c, server, "alice")


def read_until_closed(c: SMTPClient, lines: list[bytes]) -> list:
    """Send each line and read its reply, until the server closes (or lines run out)."""
    replies = []
    for line in lines:
        try:
            c.send(line + b"\r\n")
            r = c.reply(timeout=10)
        except (ConnectionClosed, BrokenPipeError, ConnectionResetError):
            break
        replies.append(r)
        if r.code == 421:
            break
    return replies


def test_binary_garbage(make_server) -> None:
    srv = make_server({"smtpd": {"max_errors": 10}})
    rng = random.Random(20241129)
    junk = [bytes(rng.randrange(256) for _ in range(rng.randint(1, 700))).replace(b"\r\n", b"--") for _ in range(40)]
    with srv.connect() as c:
        replies = read_until_closed(c, junk)
        c.wait_closed(5)
    codes = [(r.code, r.enhanced) for r in replies]
    assert codes and codes[-1] == (421, "4.7.0"), codes
    assert all(500 <= code < 600 for code, _ in codes[:-1]), codes
    assert 9 <= len(codes) - 1 <= 10, f"{len(codes) - 1} error replies before 421 with max_errors=10"
    # garbage without any line end at all, then a hang-up
    with srv.connect() as c:
        c.send(bytes(rng.randrange(256) for _ in range(100_000)).replace(b"\r\n", b"--"))
        c.close()
    assert srv.alive()
    assert_still_serves(srv)


def test_malformed_addresses(make_server) -> None:
    srv = make_server({"smtpd": {"max_errors": 1000}})
    bad_paths = [
        "<a@>",
        "<@example.test>",
        "<a@b@example.test>",
        "<a b@example.test>",
        "<a..b@example.test>",
        "<.a@example.test>",
        "<a.@example.test>",
        "<a@-example.test>",
        "<a@example..test>",
        "<a@exa mple.test>",
        "<a@[300.1.1.1]>",
        "<a@[IPv6:zz::1]>",
        '<"unterminated@example.test>',
        "<a@example.test",
        "a@example.test>",
        "<<a@example.test>>",
        "<a(comment)@example.test>",
        "<a@example.test,b@example.test>",
    ]
    with srv.connect() as c:
        c.ehlo()
        for path in bad_paths:
            r = c.cmd(f"MAIL FROM:{path}")
            assert r.code in (501, 553), f"MAIL FROM:{path} -> {r}"
            if r.code == 553:
                assert r.enhanced == "5.1.7", f"MAIL FROM:{path} -> {r}"
        for bad_syntax in (
            "MAIL",
            "MAIL FROM",
            "MAIL TO:<a@client.test>",
            "MAIL FROM:",
            "MAIL FROM:<a@client.test> NOSUCHPARAM=1",
        ):
            r = c.cmd(bad_syntax)
            assert r.code in (501, 553, 555), f"{bad_syntax} -> {r}"
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        for path in bad_paths:
            r = c.cmd(f"RCPT TO:{path}")
            assert r.code in (501, 553), f"RCPT TO:{path} -> {r}"
            if r.code == 553:
                assert r.enhanced == "5.1.3", f"RCPT TO:{path} -> {r}"
        r = c.cmd("RCPT TO:<>")
        assert r.code in (501, 553), f"RCPT TO:<> -> {r}"
        c.expect("RSET", 250)
        same_session_delivers(c, srv, "alice")
    assert set(srv.all_mail()) == {"alice"}
    assert_still_serves(srv)


# -- order of commands -----------------------------------------------------


def test_rcpt_before_mail(server: Server) -> None:
    with server.connect() as c:
        c.ehlo()
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 503, "5.5.1")
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"MAIL FROM:<{SENDER}>", 503, "5.5.1")  # nested MAIL
        c.expect(f"RCPT TO:<bob@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        msg = make_message("rcpt before mail", "x\r\n")
        c.send(stuff(msg) + b".\r\n")
        r = c.reply()
        check(r, 250, "2.0.0")
    (f,) = server.wait_mail("bob", 1, settle=0.5)
    check_delivered(f, msg, sender=SENDER, rcpt=f"bob@{DOMAIN}", qid=r.qid)
    assert server.mail("alice") == []
    assert_still_serves(server)


def test_data_before_rcpt(server: Server) -> None:
    with server.connect() as c:
        c.ehlo()
        c.expect("DATA", 503, "5.5.1")  # before MAIL
        # the server did not go into data mode: the next line is a command again
        c.expect("Subject: not a command", 500, "5.5.2")
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect("DATA", 503, "5.5.1")  # before RCPT
        c.expect(".", 500, "5.5.2")
        # BDAT before RCPT: refused, and its chunk is skipped (not read as commands)
        chunk = b"QUIT\r\nRSET\r\n"
        c.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk)
        check(c.reply(), 503, "5.5.1", "BDAT before RCPT")
        assert c.nothing_more(0.3), "the BDAT chunk was run as commands"
        same_session_delivers(c, server, "alice")
    assert_still_serves(server)


def test_pipelined_data_with_no_valid_recipient(server: Server) -> None:
    """RFC 2920: DATA after only refused RCPTs is refused; the text after it is not a message."""
    with server.connect() as c:
        c.ehlo()
        c.send(f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<x@elsewhere.test>\r\nDATA\r\n".encode())
        check(c.reply(), 250)
        check(c.reply(), 554, "5.7.1")
        r = c.reply()
        assert r.code in (503, 554), r
        c.expect("RSET", 250)
        same_session_delivers(c, server, "alice")
    assert set(server.all_mail()) == {"alice"}


# -- DATA content ----------------------------------------------------------


def test_text_line_of_1200_octets(server: Server) -> None:
    long_line = b"L" * 1200
    msg = make_message("long line", b"before\r\n" + long_line + b"\r\nafter\r\n")
    with server.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(msg))
        check(r, 554, "5.6.0", "1200-octet text line")
        assert c.nothing_more(0.3), "more than one reply to the end of data"
        # 999 octets + CRLF: one over the limit
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(make_message("1001", b"M" * 999 + b"\r\n")))
        check(r, 554, "5.6.0", "1001-octet text line")
        same_session_delivers(c, server, "bob")
    time.sleep(0.5)
    assert server.mail("alice") == []
    assert_still_serves(server)


SMUGGLING_SEPARATORS = {
    "lf-dot-lf": b"\n.\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-lf": b"\r\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-crlf": b"\r.\r\n",
    "crlf-dot-cr": b"\r\n.\r",
    "crlf-dot-cr-crlf": b"\r\n.\r\r\n",
    "lf-dot-cr": b"\n.\r",
    "crlf-dot-lf-crlf": b"\r\n.\n\r\n",
    "lf-dot-lf-crlf": b"\n.\n\r\n",
}


@pytest.mark.parametrize("sep", list(SMUGGLING_SEPARATORS), ids=list(SMUGGLING_SEPARATORS))
def test_smuggling_bare_newlines(server: Server, sep: str) -> None:
    """A bare CR or LF "end of data" followed by a smuggled transaction never makes a second message."""
    smuggled = (
        b"MAIL FROM:<admin@" + DOMAIN.encode() + b">\r\n"
        b"RCPT TO:<bob@" + DOMAIN.encode() + b">\r\n"
        b"DATA\r\n"
        b"From: admin@" + DOMAIN.encode() + b"\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
    )
    payload = (
        b"From: sender@client.test\r\nSubject: carrier\r\n\r\ncarrier body"
        + SMUGGLING_SEPARATORS[sep]
        + smuggled
        + b".\r\n"
    )
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        c.send(payload)
        r = c.reply()
        check(r, 554, "5.5.2", f"bare line end {sep}")
        assert c.nothing_more(0.5), "more replies after the one end of data: the smuggled commands were run"
        c.expect("QUIT", 221)
    time.sleep(1.0)
    assert server.all_mail() == {} or all(not files for files in server.all_mail().values()), server.all_mail()
    assert_still_serves(server, "alice")
    time.sleep(0.5)
    assert server.mail("bob") == [], "the smuggled message was delivered"
    assert len(server.mail("alice")) == 1


SMUGGLED = (
    b"MAIL FROM:<admin@" + DOMAIN.encode() + b">\r\n"
    b"RCPT TO:<bob@" + DOMAIN.encode() + b">\r\n"
    b"DATA\r\n"
    b"From: admin@" + DOMAIN.encode() + b"\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n"
)
CARRIER = b"From: sender@client.test\r\nSubject: carrier\r\n\r\ncarrier body"


def _send_in_pieces(c: SMTPClient, pieces: list[bytes]) -> None:
    """Each piece in its own segment (no Nagle, a pause between), so the server reads them apart."""
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for piece in pieces:
        c.send(piece)
        time.sleep(0.05)


@pytest.mark.parametrize("sep", ["lf-dot-lf", "crlf-dot-lf", "crlf-dot-cr", "cr-dot-crlf", "lf-dot-crlf"])
def test_smuggling_split_across_reads(server: Server, sep: str) -> None:
    """The bare separators again, each byte in its own read: no chunk boundary turns them into an end."""
    separator = SMUGGLING_SEPARATORS[sep]
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        _send_in_pieces(c, [CARRIER] + [separator[i : i + 1] for i in range(len(separator))] + [SMUGGLED, b".\r\n"])
        check(c.reply(), 554, "5.5.2", f"split {sep}")
        assert c.nothing_more(0.5), "more replies after the one end of data: the smuggled commands were run"
        c.expect("QUIT", 221)
    time.sleep(0.5)
    assert server.mail("bob") == [] and server.mail("alice") == []


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_end_of_data_split_across_reads_is_still_the_end(server: Server, cut: int) -> None:
    """CRLF.CRLF cut anywhere (e.g. "\\r\\n.\\r" then "\\n") ends the data, once; what follows is a command."""
    msg = make_message(f"cut at {cut}", "the end of data arrives in two reads\r\n")
    end = b"\r\n.\r\n"
    body = stuff(msg)[:-2]  # the message without its last CRLF: that CRLF starts the end sequence
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        _send_in_pieces(c, [body + end[:cut], end[cut:] + b"NOOP\r\n"])
        r = c.reply()
        check(r, 250, "2.0.0", f"end of data cut at {cut}")
        check(c.reply(), 250, "2.0.0", "the NOOP after the end")
        assert c.nothing_more(0.3)
    (f,) = server.wait_mail("alice", 1, settle=0.3)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)


LOOK_ALIKES = {
    "crlf-nul-dot-crlf": b"\r\n\x00.\r\n",
    "crlf-dot-nul-crlf": b"\r\n.\x00\r\n",
    "crlf-dot-space-crlf": b"\r\n. \r\n",
    "crlf-dot-dot-crlf": b"\r\n..\r\n",
    "crlf-dot-tab-crlf": b"\r\n.\t\r\n",
}


@pytest.mark.parametrize("sep", list(LOOK_ALIKES), ids=list(LOOK_ALIKES))
def test_smuggling_look_alikes_are_content(server: Server, sep: str) -> None:
    """Lines that look like the end to a careless reader ("\\x00.", ". ", "..") are message text: one
    message (kept whole, or refused whole), one reply, never a second transaction."""
    payload = CARRIER + LOOK_ALIKES[sep] + SMUGGLED + b".\r\n"
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        c.send(payload)
        r = c.reply()
        assert r.code in (250, 554), r
        assert c.nothing_more(0.5), "more replies after the one end of data: the smuggled commands were run"
        c.expect("QUIT", 221)
    time.sleep(0.5)
    assert server.mail("bob") == [], "the smuggled message was delivered"
    if r.code == 250:
        (f,) = server.wait_mail("alice", 1)
        # the whole payload is the message (un-stuffed), the smuggled "commands" included
        lines = payload[: -len(b".\r\n")].split(b"\r\n")
        unstuffed = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
        check_delivered(f, unstuffed, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)
    else:
        check(r, 554, None)
        assert server.mail("alice") == []


@pytest.mark.parametrize("bare", [b"\n", b"\r"], ids=["LF", "CR"])
def test_bare_line_end_in_data_is_refused(server: Server, bare: bytes) -> None:
    msg = b"Subject: bare\r\n\r\nline one" + bare + b"line two\r\n"
    with server.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], msg)
        check(r, 554, "5.5.2")
        same_session_delivers(c, server, "bob")
    assert server.mail("alice") == []


def test_smuggling_in_bdat_is_just_data(server: Server) -> None:
    """In BDAT, '\\n.\\n' and what follows is content: one message, to alice only."""
    content = (
        b"Subject: chunk\r\n\r\ncarrier\n.\nMAIL FROM:<x@client.test>\r\nRCPT TO:<bob@"
        + DOMAIN.encode()
        + b">\r\nDATA\r\nevil\r\n.\r\n"
    )
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.send(f"BDAT {len(content)} LAST\r\n".encode() + content)
        r = c.reply()
        assert r.code in (250, 554), r
        assert c.nothing_more(0.5), "the BDAT chunk was run as commands"
    time.sleep(1.0)
    assert server.mail("bob") == [], "a second message came out of one BDAT chunk"
    assert len(server.mail("alice")) == (1 if r.code == 250 else 0)


# -- limits ----------------------------------------------------------------


def _rss_sampler(srv: Server, stop: threading.Event, out: list[int]) -> None:
    while not stop.is_set():
        try:
            out.append(srv.proc_status("VmRSS"))
        except (OSError, AssertionError):
            return
        stop.wait(0.02)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_message_over_size_limit_memory_bounded(server: Server) -> None:
    """100 MB streamed against the default 10 MB limit: refused after the final dot (552 5.3.4), and
    the server's memory does not grow by more than a few MB while it streams (it keeps nothing)."""
    limit = 10 * 1024 * 1024
    srv = server
    line = b"0123456789" * 9 + b"ABCDEFG\r\n"  # 99 octets
    block = line * 662  # ~64 KiB
    with srv.connect(timeout=120) as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}> SIZE={limit + 1}", 552, "5.3.4")
        # warm up with a message just under the limit: buffers, threads, the spill to a file
        c.expect(f"MAIL FROM:<{SENDER}> SIZE={limit - 4096}", 250)
        c.expect(f"RCPT TO:<carol@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        sent = 0
        c.send(b"Subject: nearly 10 MB\r\n\r\n")
        while sent + len(block) < limit - 8192:
            c.send(block)
            sent += len(block)
        c.send(b".\r\n")
        check(c.reply(timeout=60), 250, "2.0.0", "a message under the limit")
        srv.wait_mail("carol", 1, timeout=30)
        time.sleep(0.5)
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        rss_before = srv.proc_status("VmRSS")
        try:  # reset the peak (VmHWM) to the current RSS, so the peak of this stream alone is seen
            Path(f"/proc/{srv.pid}/clear_refs").write_text("5")
        except OSError:
            pass
        hwm_before = srv.proc_status("VmHWM")
        samples: list[int] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_rss_sampler, args=(srv, stop, samples), daemon=True)
        sampler.start()
        sent = 0
        try:
            c.send(b"Subject: huge\r\n\r\n")
            while sent < 100 * 1024 * 1024:
                c.send(block)
                sent += len(block)
            c.send(b".\r\n")
            r = c.reply(timeout=120)
        finally:
            stop.set()
            sampler.join(5)
        hwm_after = srv.proc_status("VmHWM")
        check(r, 552, "5.3.4", "100 MB against a 10 MB limit")
        peak = max(samples + [srv.proc_status("VmRSS")])
        if hwm_after > hwm_before:
            peak = max(peak, hwm_after)
        growth = peak - rss_before
        print(
            f"RSS {rss_before / 2**20:.1f} MiB before, peak {peak / 2**20:.1f} MiB (HWM {hwm_before / 2**20:.1f} -> {hwm_after / 2**20:.1f}), {len(samples)} samples"
        )
        assert growth < 4 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB while 100 MiB were refused"
        same_session_delivers(c, srv, "bob")
    # the refused content is not kept in the spool
    deadline = time.monotonic() + 5
    while sum(srv.spool_snapshot().values()) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sum(srv.spool_snapshot().values()) == 0, srv.spool_snapshot()
    assert srv.mail("alice") == []


def test_bdat_over_size_limit(make_server) -> None:
    limit = 64 * 1024
    srv = make_server({"smtpd": {"max_message_size": limit}})
    with srv.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        chunk = (b"Subject: big\r\n\r\n" + b"b" * 98 + b"\r\n") * 700  # ~80 KB
        c.send(f"BDAT {len(chunk)}\r\n".encode() + chunk)
        r = c.reply()
        if r.code == 250:  # a server may wait for LAST to refuse
            c.send(b"BDAT 0 LAST\r\n")
            r = c.reply()
        check(r, 552, "5.3.4", "BDAT over the limit")
        c.expect("RSET", 250)
        same_session_delivers(c, srv, "bob")
    time.sleep(0.5)
    assert srv.mail("alice") == []


def test_too_many_recipients(make_server) -> None:
    srv = make_server({"smtpd": {"max_recipients": 3}})
    msg = make_message("limited", "three copies\r\n")
    with srv.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        for user in ("u1", "u2", "u3"):
            c.expect(f"RCPT TO:<{user}@{DOMAIN}>", 250)
        c.expect(f"RCPT TO:<u4@{DOMAIN}>", 452, "4.5.3")
        c.expect(f"RCPT TO:<u5@{DOMAIN}>", 452, "4.5.3")
        c.expect("DATA", 354)
        c.send(stuff(msg) + b".\r\n")
        r = c.reply()
        check(r, 250, "2.0.0")
    for user in ("u1", "u2", "u3"):
        (f,) = srv.wait_mail(user, 1, settle=0.2)
        check_delivered(f, msg, sender=SENDER, rcpt=f"{user}@{DOMAIN}", qid=r.qid)
    time.sleep(0.5)
    assert srv.mail("u4") == [] and srv.mail("u5") == []


def test_too_many_errors(make_server) -> None:
    srv = make_server({"smtpd": {"max_errors": 3}})
    with srv.connect() as c:
        c.ehlo()
        replies = read_until_closed(c, [b"FOO%d" % i for i in range(10)])
        c.wait_closed(5)
    codes = [(r.code, r.enhanced) for r in replies]
    assert codes and codes[-1] == (421, "4.7.0"), codes
    assert all(code == (500, "5.5.2") for code in codes[:-1]), codes
    assert 2 <= len(codes) - 1 <= 3, codes
    # errors of any kind count: syntax, order, bad addresses
    with srv.connect() as c:
        c.ehlo()
        replies = read_until_closed(
            c, [b"RCPT TO:<a@example.test>", b"MAIL FROM:<a@>", b"DATA", b"NOOP", b"BAR", b"BAZ"]
        )
        c.wait_closed(5)
    codes = [r.code for r in replies]
    assert codes[-1] == 421, codes
    assert len([x for x in codes if x >= 500]) <= 3, codes
    assert_still_serves(srv)


def test_idle_timeout(make_server) -> None:
    srv = make_server({"smtpd": {"command_timeout": 1.0}})
    with srv.connect() as c:
        c.ehlo()
        t0 = time.monotonic()
        r = c.reply(timeout=10)
        elapsed = time.monotonic() - t0
        check(r, 421, "4.4.2", "idle session")
        assert 0.8 <= elapsed <= 6, f"timed out after {elapsed:.2f}s with command_timeout = 1"
        c.wait_closed(5)
    # a session that keeps talking is not cut off by the timeout
    with srv.connect() as c:
        c.ehlo()
        for _ in range(4):
            time.sleep(0.5)
            c.expect("NOOP", 250)
        same_session_delivers(c, srv, "alice")
    assert_still_serves(srv)


def test_data_timeout(make_server) -> None:
    srv = make_server({"smtpd": {"data_timeout": 1.0}})
    with srv.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        c.send(b"Subject: stalled\r\n\r\nhalf a message")
        r = c.reply(timeout=10)
        check(r, 421, "4.4.2", "stalled DATA")
        c.wait_closed(5)
    time.sleep(0.5)
    assert srv.mail("alice") == []
    assert_still_serves(srv)


def test_mail_loop_received_headers(server: Server) -> None:
    def looped(n: int) -> bytes:
        trace = [
            f"Received: from hop{i}.test by hop{i + 1}.test with SMTP id H{i}; Fri, 29 Nov 2024 08:00:{i % 60:02d} +0000"
            for i in range(n)
        ]
        return make_message(f"{n} hops", "looping\r\n", trace)

    with server.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(looped(51)))
        check(r, 554, "5.4.6", "51 Received fields")
        ok = looped(50)
        r = c.send_message(SENDER, [f"bob@{DOMAIN}"], stuff(ok))
        check(r, 250, "2.0.0", "50 Received fields")
    (f,) = server.wait_mail("bob", 1, settle=0.5)
    check_delivered(f, ok, sender=SENDER, rcpt=f"bob@{DOMAIN}", qid=r.qid)
    assert server.mail("alice") == []


def test_loop_limit_is_configurable(make_server) -> None:
    srv = make_server({"smtpd": {"max_received_headers": 2}})
    trace = ["Received: from a.test by b.test; Fri, 29 Nov 2024 08:00:00 +0000"] * 3
    with srv.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(make_message("3 hops", "x\r\n", trace)))
        check(r, 554, "5.4.6")
        same_session_delivers(c, srv, "bob")


def test_unknown_user(make_server) -> None:
    srv = make_server({"local": {"users": ["alice", "bob"]}})
    msg = make_message("known users", "only alice\r\n")
    with srv.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<carol@{DOMAIN}>", 550, "5.1.1")
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect(f"RCPT TO:<mallory@{DOMAIN}>", 550, "5.1.1")
        c.expect("DATA", 354)
        c.send(stuff(msg) + b".\r\n")
        r = c.reply()
        check(r, 250, "2.0.0")
    (f,) = srv.wait_mail("alice", 1, settle=0.5)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)
    assert set(srv.all_mail()) == {"alice"}
    assert not srv.maildir("carol").exists()


def test_relay_refused(server: Server) -> None:
    before = server.spool_snapshot()
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        for rcpt in (
            "<someone@elsewhere.test>",
            f"<someone@sub.{DOMAIN}>",
            f"<someone@{DOMAIN}.evil.test>",
            "<someone@[127.0.0.1]>",
            f"<@{DOMAIN}:someone@elsewhere.test>",
        ):
            c.expect(f"RCPT TO:{rcpt}", 554, "5.7.1")
        r = c.cmd("DATA")
        assert r.code in (503, 554), r
        c.expect("RSET", 250)
        # a message with local and remote recipients: only the local one is kept
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect("RCPT TO:<someone@elsewhere.test>", 554, "5.7.1")
        msg = make_message("mixed", "local only\r\n")
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        c.send(stuff(msg) + b".\r\n")
        r = c.reply()
        check(r, 250, "2.0.0")
    (f,) = server.wait_mail("alice", 1, settle=0.5)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)
    assert set(server.all_mail()) == {"alice"}
    # after the one accepted message has left, nothing is in the spool for the refused ones
    deadline = time.monotonic() + 5
    while server.spool_snapshot() != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [k for k in server.spool_snapshot() if k not in before and r.qid not in k], server.spool_snapshot()
    for line in server.log().splitlines():
        assert not re.search(r": [0-9A-Z]+: to=<someone@", line), f"a refused recipient reached the queue: {line}"
    rejects = [line for line in server.log().splitlines() if "reject" in line and "someone@elsewhere.test" in line]
    assert rejects and all("554 5.7.1" in line for line in rejects), "each refused RCPT is logged with its reply"


def test_connection_dropped_mid_transaction(server: Server) -> None:
    """A client that hangs up in the middle of DATA leaves no message behind."""
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        c.send(b"Subject: cut\r\n\r\nhalf")
        c.sock.shutdown(socket.SHUT_WR)
        c.wait_closed(5)
    assert_still_serves(server)
    time.sleep(0.5)
    assert server.mail("alice") == []


def test_bdat_without_a_valid_size(server: Server) -> None:
    """A BDAT whose size cannot be read leaves the stream unframed: refused, and the server goes on."""
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.send(b"BDAT abc\r\nQUIT\r\n")
        check(c.reply(), 501, "5.5.4", "BDAT abc")
        try:
            r = c.reply(timeout=5)
        except ConnectionClosed:
            r = None
        # either the session ends (421) or it goes on (and the QUIT that followed is answered)
        assert r is None or r.code in (421, 221), r
    time.sleep(0.5)
    assert server.mail("alice") == []
    assert_still_serves(server)


def test_connection_limit(make_server) -> None:
    srv = make_server({"smtpd": {"max_connections": 2}})
    first, second = srv.connect(), srv.connect()
    with SMTPClient(srv.port) as third:
        check(third.reply(), 421, "4.3.2", "a session over max_connections")
        third.wait_closed(5)
    second.ehlo()  # the sessions already open are not disturbed
    first.close()
    deadline = time.monotonic() + 5
    while True:  # the freed slot is given to the next client
        with SMTPClient(srv.port) as c:
            r = c.reply()
            if r.code == 220:
                c.ehlo()
                same_session_delivers(c, srv, "alice")
                break
        assert time.monotonic() < deadline, "a closed session did not free its slot"
        time.sleep(0.1)
    second.close()
