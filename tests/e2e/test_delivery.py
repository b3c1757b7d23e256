"""Messages that must go through: smtplib, swaks and raw sockets in, Maildir out.

Each delivered file is checked byte for byte with ``check_delivered``: the
message as sent (un-stuffed, CRLF turned into LF) preceded by exactly our
Return-Path, Delivered-To and Received fields.
"""

from __future__ import annotations

import random
import re
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from .harness import DOMAIN, HOSTNAME, Server, check, check_delivered, make_message, stuff

pytestmark = pytest.mark.e2e

SENDER = "sender@client.test"


def test_greeting_and_ehlo_keywords(make_server) -> None:
    srv = make_server({"smtpd": {"max_message_size": 12345678}})
    with srv.connect(greet=False) as c:
        greet = c.reply()
        check(greet, 220)
        assert greet.lines[0].startswith(f"{HOSTNAME} ESMTP smtprs"), greet
        r = c.ehlo("client.test")
        assert r.lines[0].split()[0] == HOSTNAME, r
        keywords = {line.split()[0].upper(): line.split()[1:] for line in r.lines[1:]}
        for kw in ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "CHUNKING"):
            assert kw in keywords, f"EHLO lacks {kw}: {r}"
        assert keywords.get("SIZE") == ["12345678"], f"SIZE should advertise max_message_size: {r}"
        c.expect("QUIT", 221, "2.0.0")
        c.wait_closed()


def test_basic_commands(server: Server) -> None:
    with server.connect() as c:
        r = c.expect("HELO client.test", 250)
        assert HOSTNAME in r.text
        c.expect("EHLO client.test", 250)
        c.expect("NOOP", 250, "2.0.0")
        c.expect("NOOP ignored argument", 250, "2.0.0")
        c.expect("RSET", 250, "2.0.0")
        c.expect("VRFY alice", 252)
        c.expect(f"VRFY <alice@{DOMAIN}>", 252)
        c.expect("HELP", 214)
        c.expect("noop", 250, "2.0.0")  # verbs are case-insensitive
        c.expect("QUIT", 221, "2.0.0")
        c.wait_closed()


def test_rset_ends_the_transaction(server: Server) -> None:
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("RSET", 250, "2.0.0")
        c.expect("DATA", 503, "5.5.1")
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 503, "5.5.1")
        # a fresh transaction works and only its recipient gets mail
        msg = make_message("after rset", "body\r\n")
        r = c.send_message(SENDER, [f"bob@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0")
    (f,) = server.wait_mail("bob", 1, settle=0.5)
    check_delivered(f, msg, sender=SENDER, rcpt=f"bob@{DOMAIN}", qid=r.qid)
    assert server.mail("alice") == []


def test_plain_message_smtplib(server: Server) -> None:
    msg = make_message("plain", "Hello Alice,\r\n\r\nthis is a plain message.\r\n-- \r\nsender\r\n")
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=10) as s:
        code, _ = s.ehlo()
        assert code == 250
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt(f"alice@{DOMAIN}")[0] == 250
        code, resp = s.data(msg)
    assert code == 250, resp
    m = re.match(rb"2\.0\.0 Ok: queued as (\S+)$", resp)
    assert m, resp
    qid = m.group(1).decode()
    (f,) = server.wait_mail("alice", 1, settle=0.5)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=qid, with_protocol="ESMTP")
    maildir = server.maildir("alice")
    assert (maildir / "cur").is_dir() and (maildir / "tmp").is_dir()
    assert list((maildir / "tmp").iterdir()) == [], "a file was left in tmp/"
    # the log: one line per event, greppable by queue id
    server.wait_log(rf"{qid}: to=<alice@{DOMAIN}>, relay=local.*status=sent")
    lines = server.log_lines(qid)
    assert any(f"from=<{SENDER}>" in line and "size=" in line and "nrcpt=1" in line for line in lines), lines
    assert any("connect" in line and "127.0.0.1" in line for line in server.log().splitlines()), (
        "no connect line in the log"
    )


def test_sendmail_with_size_parameter(server: Server) -> None:
    """smtplib's sendmail() sends SIZE= when SIZE is advertised."""
    msg = make_message("sendmail", "sent with SMTP.sendmail\r\n")
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=10) as s:
        refused = s.sendmail(SENDER, [f"alice@{DOMAIN}", f"bob@{DOMAIN}"], msg)
    assert refused == {}
    for user in ("alice", "bob"):
        (f,) = server.wait_mail(user, 1, settle=0.3)
        check_delivered(f, msg, sender=SENDER, rcpt=f"{user}@{DOMAIN}")


def _swaks(server: Server, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.port}", "--helo", "client.test", "--timeout", "15", *args],
        input=input,
        capture_output=True,
        timeout=60,
    )


def _swaks_qid(out: bytes) -> str:
    m = re.search(rb"<[-~] +250 2\.0\.0 Ok: queued as (\S+)", out)
    assert m, out.decode(errors="replace")
    return m.group(1).decode()


def test_swaks_plain(server: Server, tmp_path: Path) -> None:
    # swaks turns LF into CRLF, dot-stuffs, and ends the data with CRLF.CRLF
    text = b"From: swaks <s@client.test>\nSubject: swaks plain\n\nline one\n.line two starts with a dot\n..\nlast line"
    data = tmp_path / "msg.txt"
    data.write_bytes(text)
    p = _swaks(server, "--from", SENDER, "--to", f"alice@{DOMAIN}", "--data", f"@{data}")
    assert p.returncode == 0, p.stdout.decode(errors="replace") + p.stderr.decode(errors="replace")
    qid = _swaks_qid(p.stdout)
    (f,) = server.wait_mail("alice", 1, settle=0.5)
    sent = text.replace(b"\n", b"\r\n") + b"\r\n"
    check_delivered(f, sent, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=qid)


def test_swaks_pipelining_several_recipients(server: Server, tmp_path: Path) -> None:
    text = b"Subject: swaks pipelined\n\npipelined body"
    data = tmp_path / "msg.txt"
    data.write_bytes(text)
    rcpts = [f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"carol@{DOMAIN}"]
    p = _swaks(server, "--pipeline", "--from", SENDER, "--to", ",".join(rcpts), "--data", f"@{data}")
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, out + p.stderr.decode(errors="replace")
    assert "PIPELINING" in out
    qid = _swaks_qid(p.stdout)
    sent = text.replace(b"\n", b"\r\n") + b"\r\n"
    for rcpt in rcpts:
        user = rcpt.split("@")[0]
        (f,) = server.wait_mail(user, 1, settle=0.3)
        check_delivered(f, sent, sender=SENDER, rcpt=rcpt, qid=qid)


def test_swaks_relay_refused(server: Server) -> None:
    p = _swaks(server, "--from", SENDER, "--to", "someone@elsewhere.test")
    out = p.stdout.decode(errors="replace")
    assert p.returncode != 0, out
    assert re.search(r"<\*\* +554 5\.7\.1", out), out


def test_pipelined_batch(server: Server) -> None:
    """Several commands in one write; the replies come back in order, one per command."""
    m1 = make_message("pipelined one", "first pipelined message\r\n")
    m2 = make_message("pipelined two", "second pipelined message\r\n")
    with server.connect() as c:
        c.send(
            b"EHLO client.test\r\n"
            b"NOOP\r\n"
            b"RSET\r\n"
            + f"MAIL FROM:<{SENDER}>\r\n".encode()
            + f"RCPT TO:<alice@{DOMAIN}>\r\n".encode()
            + b"RCPT TO:<nobody@elsewhere.test>\r\n"
            + f"RCPT TO:<bob@{DOMAIN}>\r\n".encode()
            + b"VRFY alice\r\n"
            + b"NOOP\r\n"
            + b"DATA\r\n"
        )
        expected = [
            (250, None),
            (250, "2.0.0"),
            (250, "2.0.0"),
            (250, None),
            (250, None),
            (554, "5.7.1"),
            (250, None),
            (252, None),
            (250, "2.0.0"),
            (354, None),
        ]
        for i, (code, enh) in enumerate(expected):
            check(c.reply(), code, enh, f"pipelined reply #{i}")
        # end of data and a whole second transaction in one write
        c.send(stuff(m1) + b".\r\n" + f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<carol@{DOMAIN}>\r\nDATA\r\n".encode())
        r1 = c.reply()
        check(r1, 250, "2.0.0", "end of first data")
        check(c.reply(), 250, None, "MAIL")
        check(c.reply(), 250, None, "RCPT")
        check(c.reply(), 354, None, "DATA")
        c.send(stuff(m2) + b".\r\nQUIT\r\n")
        r2 = c.reply()
        check(r2, 250, "2.0.0", "end of second data")
        check(c.reply(), 221, "2.0.0", "QUIT")
        c.wait_closed()
    assert r1.qid != r2.qid
    for user in ("alice", "bob"):
        (f,) = server.wait_mail(user, 1, settle=0.3)
        check_delivered(f, m1, sender=SENDER, rcpt=f"{user}@{DOMAIN}", qid=r1.qid)
    (f,) = server.wait_mail("carol", 1, settle=0.3)
    check_delivered(f, m2, sender=SENDER, rcpt=f"carol@{DOMAIN}", qid=r2.qid)


def test_command_split_across_writes(server: Server) -> None:
    """Commands sent a few bytes at a time (the server must reassemble lines)."""
    import time

    msg = make_message("trickle", "sent in small pieces\r\n.dot\r\n")
    wire = f"EHLO client.test\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<alice@{DOMAIN}>\r\nDATA\r\n".encode()
    with server.connect() as c:
        for i in range(0, len(wire), 3):
            c.send(wire[i : i + 3])
            time.sleep(0.002)
        for code in (250, 250, 250, 354):
            check(c.reply(), code)
        data = stuff(msg) + b".\r\n"
        for i in range(0, len(data), 7):
            c.send(data[i : i + 7])
            time.sleep(0.002)
        r = c.reply()
        check(r, 250, "2.0.0")
    (f,) = server.wait_mail("alice", 1, settle=0.3)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)


def test_bdat(server: Server) -> None:
    body = b"Subject: chunked\r\n\r\nfirst chunk\r\n.\r\n..not stuffed in BDAT\r\n" + b"x" * 300 + b"\r"
    part2 = b"\nsecond chunk\r\n"
    msg = body + part2  # the CRLF is split across the two chunks
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}> BODY=8BITMIME", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.send(f"BDAT {len(body)}\r\n".encode() + body)
        check(c.reply(), 250, None, "BDAT chunk 1")
        c.send(f"BDAT {len(part2)} LAST\r\n".encode() + part2)
        r = c.reply()
        check(r, 250, "2.0.0", "BDAT LAST")
        # a second message: all chunks pipelined in one write, ending with BDAT 0 LAST
        m2 = b"Subject: pipelined chunks\r\n\r\nabc\r\n"
        c.send(
            f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<bob@{DOMAIN}>\r\n".encode()
            + b"BDAT 10\r\n"
            + m2[:10]
            + f"BDAT {len(m2) - 10}\r\n".encode()
            + m2[10:]
            + b"BDAT 0 LAST\r\n"
        )
        for code in (250, 250, 250, 250):
            check(c.reply(), code)
        r2 = c.reply()
        check(r2, 250, "2.0.0", "BDAT 0 LAST")
    (f,) = server.wait_mail("alice", 1, settle=0.3)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)
    (f,) = server.wait_mail("bob", 1, settle=0.3)
    check_delivered(f, m2, sender=SENDER, rcpt=f"bob@{DOMAIN}", qid=r2.qid)


def test_8bit_body(server: Server) -> None:
    body = (
        "Grüße aus Köln — ½ € ✓ 日本語\r\n".encode()
        + bytes(range(0x80, 0x100))
        + b"\r\nlatin-1: caf\xe9\r\n"
        + bytes(range(0x01, 0x09))
        + b"\x0b\x0c\x0e\x1f\x7f\r\n"
    )
    msg = make_message(
        "8bit",
        body,
        ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit"],
    )
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=10) as s:
        s.ehlo()
        assert s.has_extn("8bitmime")
        assert s.mail(SENDER, ["BODY=8BITMIME"])[0] == 250
        assert s.rcpt(f"alice@{DOMAIN}")[0] == 250
        code, resp = s.data(msg)
    assert code == 250, resp
    (f,) = server.wait_mail("alice", 1, settle=0.3)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}")


def test_smtputf8_sender(server: Server) -> None:
    msg = make_message("utf8", "from a UTF-8 mailbox\r\n")
    with server.connect() as c:
        c.ehlo()
        c.expect("MAIL FROM:<jörg@bücher.test> SMTPUTF8", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        c.send(stuff(msg) + b".\r\n")
        queued = c.reply()
        check(queued, 250, "2.0.0")
        # without SMTPUTF8 a non-ASCII address is refused
        r = c.cmd("MAIL FROM:<jörg@bücher.test>")
        assert r.code == 553, r
        c.expect("RSET", 250)
        # with it, a UTF-8 local part parses: the answer is about the mailbox (policy), not the syntax
        c.expect("MAIL FROM:<a@client.test> SMTPUTF8", 250)
        r = c.cmd(f"RCPT TO:<zoë@{DOMAIN}>")
        assert (r.code, r.enhanced) in ((250, "2.1.5"), (550, "5.1.1")), r
        c.expect("RCPT TO:<zoë@bücher.test>", 554, "5.7.1")
    (f,) = server.wait_mail("alice", 1, settle=0.3)
    check_delivered(f, msg, sender="jörg@bücher.test", rcpt=f"alice@{DOMAIN}", qid=queued.qid)


def test_unsafe_mailbox_names_stay_inside_the_mail_directory(server: Server) -> None:
    """Local parts that would be paths never write outside data_dir/mail."""
    before = {p for p in server.base.rglob("*")}
    msg = make_message("traversal", "x\r\n")
    with server.connect() as c:
        c.ehlo()
        for local in ('"../../escape"', '"a/b"', '"/tmp"', '".."', '"."', '"x\\y"', "..x", '"new"'):
            c.expect(f"MAIL FROM:<{SENDER}>", 250)
            r = c.cmd(f"RCPT TO:<{local}@{DOMAIN}>")
            if r.code == 250:
                c.expect("DATA", 354)
                c.send(stuff(msg) + b".\r\n")
                check(c.reply(), 250)
            else:
                assert 500 <= r.code < 600, f"{local}: {r}"
                c.expect("RSET", 250)
    time.sleep(1.0)
    mail_root = server.data_dir / "mail"
    for p in server.base.rglob("*"):
        if p in before or p.is_dir():
            continue
        assert p == server.log_path or mail_root in p.parents or server.spool_dir in p.parents, (
            f"file written outside the mail and spool directories: {p}"
        )
    assert not (server.base.parent / "escape").exists()


def test_null_sender_and_special_addresses(server: Server) -> None:
    msg = make_message("bounce-like", "from the null sender\r\n")
    with server.connect() as c:
        c.ehlo()
        for mail in (
            '<"john doe"@client.test>',
            "<u@[192.0.2.1]>",
            "<u@[IPv6:2001:db8::1]>",
            "<@relay.test,@other.test:u@client.test>",
        ):
            c.expect(f"MAIL FROM:{mail}", 250)
            c.expect("RSET", 250)
        r = c.send_message("", [f"alice@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0")
    (f,) = server.wait_mail("alice", 1, settle=0.3)
    check_delivered(f, msg, sender="", rcpt=f"alice@{DOMAIN}", qid=r.qid)


def test_leading_dots(server: Server) -> None:
    body = b".\r\n..\r\n...\r\n.hidden\r\n. space\r\nmiddle . dot\r\n   \r\n\t\r\ntrailing  \r\n\r\n\r\n.\r\n"
    msg = make_message("dots", body)
    with server.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0")
    (f,) = server.wait_mail("alice", 1, settle=0.3)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)
    assert f.read_bytes().endswith(b"\n.\n..\n...\n.hidden\n. space\nmiddle . dot\n   \n\t\ntrailing  \n\n\n.\n")


def test_line_of_998_octets(server: Server) -> None:
    """998 octets + CRLF is the longest legal text line (RFC 5321 4.5.3.1.6),
    also when it starts with a dot (the stuffed dot is not counted)."""
    rng = random.Random(998)
    plain = bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(998))
    dotted = b"." + plain[1:]
    body = plain + b"\r\nshort\r\n" + dotted + b"\r\n"
    msg = make_message("998", body)
    assert max(len(line) for line in msg.split(b"\r\n")) == 998
    with server.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0")
    (f,) = server.wait_mail("alice", 1, settle=0.3)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)


def test_empty_message(server: Server) -> None:
    """DATA followed at once by the final dot: a message of zero octets, delivered as our three fields."""
    with server.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], b"")
        check(r, 250, "2.0.0")
    (f,) = server.wait_mail("alice", 1, settle=0.3)
    check_delivered(f, b"", sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)


@pytest.mark.slow
def test_10mb_message(make_server) -> None:
    srv = make_server({"smtpd": {"max_message_size": 32 * 1024 * 1024}})
    rng = random.Random(10)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/. "
    lines = []
    size = 0
    while size < 10 * 1000 * 1000:
        n = rng.randint(0, 200)
        line = bytes(rng.choice(alphabet) for _ in range(8)) * (n // 8) + b".end" * (n % 2)
        if rng.random() < 0.05:
            line = b"." + line
        lines.append(line)
        size += len(line) + 2
    msg = make_message("ten megabytes", b"\r\n".join(lines) + b"\r\n")
    assert len(msg) > 10_000_000
    with srv.connect(timeout=60) as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}> SIZE={len(msg)}", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        c.send(stuff(msg) + b".\r\n")
        r = c.reply(timeout=60)
        check(r, 250, "2.0.0")
    (f,) = srv.wait_mail("alice", 1, timeout=30, settle=0.3)
    check_delivered(f, msg, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=r.qid)


def test_several_recipients(server: Server) -> None:
    msg = make_message("several", "one copy each\r\n")
    rcpts = [f"alice@{DOMAIN}", f"bob@{DOMAIN}", f"Carol@{DOMAIN}", f"dave@{DOMAIN.upper()}"]
    with server.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, rcpts, stuff(msg))
        check(r, 250, "2.0.0")
    for rcpt, user in zip(rcpts, ("alice", "bob", "carol", "dave")):
        (f,) = server.wait_mail(user, 1, settle=0.3)
        check_delivered(f, msg, sender=SENDER, rcpt=rcpt, qid=r.qid)
    assert sorted(server.all_mail()) == ["alice", "bob", "carol", "dave"]


def test_several_messages_one_session(server: Server) -> None:
    msgs = [make_message(f"session {i}", f"message number {i}\r\n") for i in range(5)]
    qids = []
    with server.connect() as c:
        c.ehlo()
        for m in msgs:
            r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(m))
            check(r, 250, "2.0.0")
            qids.append(r.qid)
    assert len(set(qids)) == 5
    files = server.wait_mail("alice", 5, settle=0.5)
    by_qid = {}
    for f in files:
        m = re.search(rb"\bid (\S+)", f.read_bytes())
        assert m
        by_qid[m.group(1).decode().rstrip(";")] = f
    assert sorted(by_qid) == sorted(qids)
    for qid, m in zip(qids, msgs):
        check_delivered(by_qid[qid], m, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=qid)


def test_null_backend_answers_250_and_keeps_nothing(make_server) -> None:
    """queue.backend = "null" (the benchmark sink): 250, yet nothing spooled, queued or delivered."""
    srv = make_server({"queue": {"backend": "null"}})
    assert 'queue.backend is "null"' in srv.log()
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as client:
        refused = client.sendmail(SENDER, [f"alice@{DOMAIN}"], make_message("thrown away", "gone\r\n"))
        assert refused == {}
        code, text = client.noop()
        assert code == 250
    srv.wait_log(r"disconnect from")
    log = srv.log()
    # a spooled message is logged "(queue active)" before its 250: none was
    assert "(queue active)" not in log, srv.log_tail()
    assert srv.spool_snapshot() == {}, srv.spool_snapshot()
    assert srv.mail("alice") == []
    # the same server still refuses what it would refuse without the setting
    with srv.connect() as c:
        c.ehlo()
        c.expect("MAIL FROM:<sender@client.test>", 250)
        c.expect("RCPT TO:<alice@elsewhere.test>", 554, "5.7.1")
