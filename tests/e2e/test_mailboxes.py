"""Mailboxes with real peers: LMTP out to Dovecot (read back over IMAP), Dovecot
reading smtprs's Maildir, mbox read by Python's mailbox module, the lmtp
listener driven by swaks and smtplib.LMTP, and aliases / sub-addressing
through a real ``smtprs serve``.
"""

from __future__ import annotations

import imaplib
import mailbox
import re
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from smtprs.envelope import Envelope
from smtprs.queue.spool import read_queue

from .dovecot import Dovecot, make_dovecot  # noqa: F401  (fixture)
from .harness import DOMAIN, HOSTNAME, Server, check, make_message, stuff, wait_maildir

pytestmark = pytest.mark.e2e

SENDER = "sender@client.test"


def queued(srv: Server) -> dict[str, Envelope]:
    """The envelopes in the server's queue, read with the spool's read-only lister."""
    return {env.queue_id: env for env, _size in read_queue(srv.spool_dir)}


def imap_messages(dv: Dovecot, user: str, password: str) -> list[bytes]:
    """Every message of the user's INBOX, as IMAP returns it (BODY.PEEK[])."""
    m = imaplib.IMAP4("127.0.0.1", dv.ports["imap"], timeout=10)
    try:
        m.login(user, password)
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK", data
        count = int(data[0])
        out = []
        for i in range(1, count + 1):
            typ, got = m.fetch(str(i), "(BODY.PEEK[])")
            assert typ == "OK", got
            out.append(bytes(got[0][1]))  # type: ignore[index]
        return out
    finally:
        m.logout()


def our_received(prefix: bytes, qid: str) -> None:
    """The header block Dovecot saw ends with our Received field for ``qid``."""
    m = re.search(
        rb"Received: from client\.test \(\[127\.0\.0\.1\]\)\r\n\tby "
        + HOSTNAME.encode()
        + rb" \(smtprs\) with E?SMTP id "
        + qid.encode()
        + rb"\r\n\t[^\r]*\r\n$",
        prefix,
    )
    assert m, f"our Received field for {qid} is not the last field before the message: {prefix[-400:]!r}"


TRICKY_BODY = "From the start of a line\r\n>From quoted\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n"


# --------------------------------------------------------------------------
# LMTP out: smtprs -> Dovecot


def test_lmtp_delivery_to_dovecot_read_back_over_imap(make_server, make_dovecot, tmp_path: Path) -> None:
    dv = make_dovecot({"alice": "pw-alice", "bob": "pw-bob"}).start()
    srv = make_server({"local": {"delivery": "lmtp", "lmtp": f"127.0.0.1:{dv.ports['lmtp']}"}})
    msg = make_message("over lmtp", TRICKY_BODY)
    with srv.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}", f"bob+tag@{DOMAIN}", f"nobody@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0")
    qid = r.qid
    srv.wait_log(rf"{qid}: to=<alice@{DOMAIN}>, relay=127\.0\.0\.1:{dv.ports['lmtp']}, .*status=sent")
    srv.wait_log(rf"{qid}: to=<bob\+tag@{DOMAIN}>, .*status=sent")
    # Dovecot does not know nobody: that recipient fails on its own, the others are delivered
    line = srv.wait_log(rf"{qid}: to=<nobody@{DOMAIN}>, .*status=bounced")
    assert "5.1.1" in line, line
    srv.wait_log(rf"{qid}: removed")
    for user, pw in (("alice", "pw-alice"), ("bob", "pw-bob")):
        (got,) = imap_messages(dv, user, pw)
        assert got.endswith(msg), f"{user}: the message read over IMAP is not the one sent: {got[-300:]!r}"
        prefix = got[: len(got) - len(msg)]
        assert prefix.startswith(f"Return-Path: <{SENDER}>\r\n".encode()), prefix[:200]
        our_received(prefix, qid)


def test_lmtp_over_unix_socket_defers_until_dovecot_is_up(make_server, make_dovecot, tmp_path: Path) -> None:
    dv = make_dovecot({"alice": "pw-alice"})
    srv = make_server({"local": {"delivery": "lmtp", "lmtp": f"unix:{dv.lmtp_socket}"}})
    msg = make_message("wait for dovecot", "patience\r\n")
    with srv.connect() as c:
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(msg), ehlo=True)
        check(r, 250)
    line = srv.wait_log(rf"{r.qid}: to=<alice@{DOMAIN}>, .*status=deferred")
    assert "cannot connect" in line and "4.4.1" in line, line
    assert r.qid in queued(srv)
    dv.start()
    srv.wait_log(rf"{r.qid}: to=<alice@{DOMAIN}>, relay=unix:.*status=sent")
    (got,) = imap_messages(dv, "alice", "pw-alice")
    assert got.endswith(msg)


def test_lmtp_per_recipient_deferral_from_dovecot_quota(make_server, make_dovecot, tmp_path: Path) -> None:
    # bob's quota is 1 octet: Dovecot answers 452 4.2.2 for him alone (quota_full_tempfail)
    quota = """
mail_plugins = $mail_plugins quota
quota_full_tempfail = yes
plugin {
  quota = maildir:User quota
}
"""
    dv = make_dovecot({"alice": "pw-alice", "bob": "pw-bob"}, extra=quota)
    users = "".join(
        line + ("userdb_quota_rule=*:storage=1B" if line.startswith("bob:") else "") + "\n"
        for line in (dv.base / "users").read_text().splitlines()
    )
    (dv.base / "users").write_text(users)
    dv.start()
    srv = make_server(
        {
            "local": {"delivery": "lmtp", "lmtp": f"127.0.0.1:{dv.ports['lmtp']}"},
            "queue": {"retry_min": 60, "retry_max": 60},
        }
    )
    msg = make_message("quota", "a body bigger than one octet\r\n")
    with srv.connect() as c:
        r = c.send_message(SENDER, [f"alice@{DOMAIN}", f"bob@{DOMAIN}"], stuff(msg), ehlo=True)
        check(r, 250)
    srv.wait_log(rf"{r.qid}: to=<alice@{DOMAIN}>, .*status=sent")
    line = srv.wait_log(rf"{r.qid}: to=<bob@{DOMAIN}>, .*status=deferred")
    assert "452 4.2.2" in line or "4.2.2" in line, line
    # the message stays queued for bob alone
    deadline = time.monotonic() + 10
    while [(rc.address, rc.state) for rc in queued(srv)[r.qid].recipients] != [
        (f"alice@{DOMAIN}", "delivered"),
        (f"bob@{DOMAIN}", "deferred"),
    ]:
        assert time.monotonic() < deadline, queued(srv)
        time.sleep(0.05)
    assert len(imap_messages(dv, "alice", "pw-alice")) == 1


# --------------------------------------------------------------------------
# Dovecot reading the Maildir smtprs wrote


def test_dovecot_lists_and_returns_smtprs_maildir(make_server, make_dovecot, tmp_path: Path) -> None:
    # smtprs writes the Maildirs where Dovecot (maybe another user) can reach them
    dv = make_dovecot({"carol": "pw-carol"}, protocols=("imap",))
    srv = make_server({"local": {"maildir": f"{dv.mail_root}/{{user}}"}})
    sent = [
        make_message("first", "hello\r\n"),
        make_message("second", TRICKY_BODY),
        make_message("third", "8-bit: caf\xe9 na\xefve\r\n".encode("latin-1")),
    ]
    with srv.connect() as c:
        c.ehlo()
        for msg in sent:
            check(c.send_message(SENDER, [f"carol@{DOMAIN}"], stuff(msg)), 250)
    files = wait_maildir(dv.mail_root / "carol", 3)
    written = [p.read_bytes() for p in files]
    dv.give_mail()
    dv.start()
    got = imap_messages(dv, "carol", "pw-carol")
    # Dovecot lists the three and returns each file as written, with CRLF line ends
    assert len(got) == 3
    assert sorted(got) == sorted(w.replace(b"\n", b"\r\n") for w in written)
    for msg in sent:
        assert sum(g.endswith(msg) for g in got) == 1


# --------------------------------------------------------------------------
# mbox


def unquote_mboxrd(data: bytes) -> bytes:
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


def test_mbox_read_by_python_mailbox(make_server) -> None:
    srv = make_server({"local": {"delivery": "mbox", "mbox": "mbox/{user}"}})
    sent = [
        make_message(f"mbox {i}", body)
        for i, body in enumerate(["From me to you\r\n", TRICKY_BODY, ">>From deep\r\nFrom\r\n"])
    ]
    with srv.connect() as c:
        c.ehlo()
        qids = [c.send_message(SENDER if i else "", [f"dave@{DOMAIN}"], stuff(msg)).qid for i, msg in enumerate(sent)]
    for qid in qids:
        srv.wait_log(rf"{qid}: removed")
    path = srv.data_dir / "mbox" / "dave"
    box = mailbox.mbox(path, create=False)
    try:
        assert len(box) == 3
        # Local deliveries run concurrently, so the mbox order is not the
        # submission order: pair each stored message with what was sent by
        # its Subject.
        by_subject = {box[key]["Subject"]: key for key in box.keys()}  # noqa: SIM118 (iterating a Mailbox yields messages)
        assert sorted(by_subject) == [f"mbox {i}" for i in range(3)]
        for i, msg in enumerate(sent):
            key = by_subject[f"mbox {i}"]
            raw = box.get_bytes(key)
            assert unquote_mboxrd(raw).endswith(msg.replace(b"\r\n", b"\n")), raw
            m = box[key]
            assert m["Delivered-To"] == f"dave@{DOMAIN}"
            assert m["Return-Path"] == ("<>" if i == 0 else f"<{SENDER}>")
            assert m.get_from().split()[0] == ("MAILER-DAEMON" if i == 0 else SENDER)
    finally:
        box.close()
    data = path.read_bytes()
    assert len(re.findall(rb"(?m)^From ", data)) == 3, "a body line was taken for a separator"
    assert not (srv.data_dir / "mbox" / "dave.lock").exists()


# --------------------------------------------------------------------------
# The lmtp listener


def lmtp_server(make_server, **local) -> Server:  # type: ignore[no-untyped-def]
    return make_server({"local": {"users": ["alice", "bob"], **local}}, modes=("lmtp",))


def test_lmtp_listener_smtplib_one_reply_per_recipient(make_server) -> None:
    srv = lmtp_server(make_server)
    port = srv.ports["lmtp"]
    # bob's Maildir cannot be made: his recipient gets its own 4xx after the data
    (srv.data_dir / "mail").mkdir(parents=True, exist_ok=True)
    (srv.data_dir / "mail" / "bob").write_text("not a directory")
    msg = make_message("to the lmtp listener", TRICKY_BODY)
    with smtplib.LMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as s:
        assert s.docmd("EHLO", "client.test")[0] == 500  # not LMTP
        assert s.docmd("HELO", "client.test")[0] == 500
        code, _ = s.ehlo("client.test")  # smtplib's LMTP class sends LHLO
        assert code == 250 and s.has_extn("pipelining") and s.has_extn("enhancedstatuscodes")
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt(f"alice@{DOMAIN}")[0] == 250
        assert s.rcpt(f"bob@{DOMAIN}")[0] == 250
        assert s.rcpt(f"carol@{DOMAIN}")[0] == 550  # unknown: refused at RCPT, no reply after the data
        assert s.rcpt(f"alice+lists@{DOMAIN}")[0] == 250
        first = s.data(msg)  # smtplib reads one reply; LMTP sends one per accepted RCPT
        rest = [s.getreply() for _ in range(2)]
        replies = [first, *rest]
        assert [code for code, _ in replies] == [250, 451, 250], replies
        assert f"<alice@{DOMAIN}>".encode() in replies[0][1] and f"<bob@{DOMAIN}>".encode() in replies[1][1]
        # nothing more is pending: the next command gets its own reply
        assert s.docmd("NOOP")[0] == 250
    files = wait_maildir(srv.data_dir / "mail" / "alice", 2)
    assert len(files) == 2 and all(f.read_bytes().endswith(msg.replace(b"\r\n", b"\n")) for f in files)
    assert queued(srv) == {} and srv.spool_snapshot() == {}  # delivered, never queued
    assert "LMTP: delivering now, not queued" in srv.log()


def test_lmtp_listener_swaks(make_server) -> None:
    srv = lmtp_server(make_server, delivery="mbox")
    port = srv.ports["lmtp"]
    p = subprocess.run(
        [
            "swaks",
            "--protocol",
            "LMTP",
            "--server",
            f"127.0.0.1:{port}",
            "--helo",
            "client.test",
            "--from",
            SENDER,
            "--to",
            f"alice@{DOMAIN},bob@{DOMAIN}",
            "--body",
            "From swaks\n.dot line\n",
            "--timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert re.search(r"-> LHLO client\.test", p.stdout), p.stdout
    after_dot = p.stdout.split("\n -> .\n", 1)[1]
    finals = re.findall(r"<[-~] +(250 2\.0\.0 <[^>]+> Ok: delivered)", after_dot)
    assert finals == [f"250 2.0.0 <alice@{DOMAIN}> Ok: delivered", f"250 2.0.0 <bob@{DOMAIN}> Ok: delivered"], p.stdout
    for user in ("alice", "bob"):
        (m,) = list(mailbox.mbox(srv.data_dir / "mbox" / user))
        assert unquote_mboxrd(m.as_bytes()).rstrip().endswith(b"From swaks\n.dot line")


# --------------------------------------------------------------------------
# Aliases, virtual domains and sub-addressing through the real server


def test_aliases_nested_loop_and_sub_addressing(make_server, tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text(
        "# test aliases\n"
        "postmaster: root\n"
        "root:       alice\n"
        "staff:      alice,\n"
        "            bob\n"
        "everyone:   staff, carol\n"
        "ping:       pong\n"
        "pong:       ping\n"
    )
    virtual = tmp_path / "virtual"
    virtual.write_text("info@virt.test   staff@example.test\n@virt.test       carol\n")
    srv = make_server(
        {
            "local": {
                "users": ["alice", "bob", "carol"],
                "aliases": str(aliases),
                "virtual_map": str(virtual),
                "virtual_domains": ["virt.test"],
            }
        }
    )
    assert "alias ping" in srv.log() and "Alias loop" in srv.log(), "the loop is reported at start-up"
    msg = make_message("aliases", "to many\r\n")
    with srv.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<everyone@{DOMAIN}>", 250)
        r = c.expect(f"RCPT TO:<ping@{DOMAIN}>", 550, "5.4.6")
        assert f"Alias loop: ping@{DOMAIN} -> pong@{DOMAIN} -> ping@{DOMAIN}" in r.text
        c.expect(f"RCPT TO:<Alice+Orders@{DOMAIN}>", 250)
        c.expect("RCPT TO:<info@virt.test>", 250)
        c.expect("RCPT TO:<whoever@virt.test>", 250)
        c.expect(f"RCPT TO:<nobody@{DOMAIN}>", 550, "5.1.1")
        c.expect("DATA", 354)
        c.send(stuff(msg) + b".\r\n")
        qid = c.reply().qid
    srv.wait_log(rf"{qid}: removed")
    # alice: via everyone -> staff, and once more by her sub-address; bob via staff; carol directly and by catch-all
    alice = srv.wait_mail("alice", 2, settle=0.3)
    assert len(srv.wait_mail("bob", 1, settle=0.2)) == 1
    assert len(srv.wait_mail("carol", 1, settle=0.2)) == 1
    delivered_to = sorted(re.search(rb"^Delivered-To: (.*)$", f.read_bytes(), re.M).group(1) for f in alice)  # type: ignore[union-attr]
    assert delivered_to == [f"alice+orders@{DOMAIN}".encode(), f"alice@{DOMAIN}".encode()]
    log = srv.log()
    assert f"to=<alice@{DOMAIN}>, orig_to=<everyone@{DOMAIN}>" in log
    assert f"to=<carol@{DOMAIN}>, orig_to=<everyone@{DOMAIN}>" in log


def test_check_config_reads_the_addressing_tables(tmp_path: Path) -> None:
    from .harness import smtprs_command

    aliases = tmp_path / "aliases"
    aliases.write_text("staff: alice, bob\nping: pong\npong: ping\n")
    cfg = tmp_path / "smtprs.toml"
    cfg.write_text(f'data_dir = "{tmp_path}"\n[local]\ndomains = ["example.test"]\naliases = "{aliases}"\n')
    p = subprocess.run(
        [*smtprs_command(), "check-config", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "config ok" in p.stdout
    assert (
        f"{aliases}:2: alias ping: 550 5.4.6 Alias loop: ping@example.test -> pong@example.test -> ping@example.test"
        in p.stdout
    )
    aliases.write_text("ok: alice\nmail: |/usr/bin/procmail\n")
    for command in ("check-config", "serve"):
        p = subprocess.run(
            [*smtprs_command(), command, "--config", str(cfg)], capture_output=True, text=True, timeout=60
        )
        assert p.returncode == 2, p.stdout + p.stderr
        assert (
            f"{aliases}:2: target '|/usr/bin/procmail': file, command and :include: targets are not supported"
            in p.stderr
        )
        assert "Traceback" not in p.stderr
