"""Milters end to end, with a scripted milter: a real ``smtprs serve`` whose
``[milter]`` names a milter that this test runs on loopback (a thread per
connection speaking the protocol with smtprs's own codec, so what it sends
is exactly what the test says).  Each test checks what the client was
answered, what the milter was sent (steps, macros, headers, the body, octet
for octet), and what was delivered to the Maildir (the changes applied, the
envelope changed) -- and, for the bad milters (garbage, an oversized packet,
a close in the middle of the message, silence), that the session gets the
default action, the server keeps serving, and nothing accepted is lost."""

from __future__ import annotations

import email
import email.policy
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from smtprs.milter import protocol as P

from .harness import DOMAIN, HOSTNAME, Server, check, make_message, merge, smtprs_command, stuff
from .peers import SinkDump, SmtpSink

pytestmark = pytest.mark.e2e

Reply = bytes | Callable[[P.Command], bytes | None] | None
CONTINUE = P.encode_response(P.Verdict("continue"))
ACCEPT = P.encode_response(P.Verdict("accept"))


class ScriptedMilter:
    """A milter on 127.0.0.1: ``replies[code]`` is what it answers to that
    command (bytes sent as they are; a callable given the command returns
    them, or None to close the connection; the string "hang" sends nothing).
    Every connection's commands are kept in ``sessions``."""

    def __init__(self, *, actions: int = P.ALL_ACTIONS, steps: int = 0) -> None:
        self.actions = actions
        self.steps = steps
        self.replies: dict[bytes, Any] = {}
        self.sessions: list[list[P.Command]] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []

    @property
    def spec(self) -> str:
        return f"inet:127.0.0.1:{self.port}"

    def start(self) -> ScriptedMilter:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop = True
        self._sock.close()
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            cmds: list[P.Command] = []
            self.sessions.append(cmds)
            t = threading.Thread(target=self._serve, args=(conn, cmds), daemon=True)
            t.start()

    def _serve(self, conn: socket.socket, cmds: list[P.Command]) -> None:
        d = P.Decoder()
        conn.settimeout(30)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                d.feed(data)
                while (pkt := d.next()) is not None:
                    cmd = P.decode_command(*pkt)
                    cmds.append(cmd)
                    if cmd.code == P.SMFIC_OPTNEG:
                        conn.sendall(P.encode_response(P.OptNeg(6, self.actions, self.steps)))
                        continue
                    if cmd.code in (P.SMFIC_MACRO, P.SMFIC_ABORT):
                        continue
                    if cmd.code == P.SMFIC_QUIT:
                        return
                    no, no_reply = P.STEP_FLAGS.get(cmd.code, (0, 0))
                    if self.steps & no_reply:
                        continue
                    default = ACCEPT if cmd.code == P.SMFIC_BODYEOB else CONTINUE
                    r = self.replies.get(cmd.code, default)
                    if r == "hang":
                        time.sleep(5)
                        return
                    if callable(r):
                        r = r(cmd)
                    if r is None:
                        return
                    conn.sendall(r)
        except OSError:
            return
        finally:
            conn.close()

    # -- what it was sent ---------------------------------------------------------
    def commands(self, session: int = -1) -> list[P.Command]:
        return self.sessions[session]

    def codes(self, session: int = -1) -> bytes:
        return b"".join(c.code for c in self.commands(session) if c.code != P.SMFIC_MACRO)

    def macros(self, stage: bytes, session: int = -1) -> dict[str, str]:
        out: dict[str, str] = {}
        for c in self.commands(session):
            if c.code == P.SMFIC_MACRO and c.stage == stage:
                out.update(zip(c.args[::2], c.args[1::2]))
        return out

    def body(self, session: int = -1) -> bytes:
        return b"".join(c.data for c in self.commands(session) if c.code == P.SMFIC_BODY)

    def headers(self, session: int = -1) -> list[tuple[str, str]]:
        return [(c.args[0], c.args[1]) for c in self.commands(session) if c.code == P.SMFIC_HEADER]


@pytest.fixture
def milter() -> Iterator[ScriptedMilter]:
    m = ScriptedMilter().start()
    try:
        yield m
    finally:
        m.stop()


def with_milter(m: ScriptedMilter | str, **more: Any) -> dict[str, Any]:
    spec = m if isinstance(m, str) else m.spec
    return {"milter": {"milters": [spec], "command_timeout": 2.0, "content_timeout": 2.0, **more}}


ACCEPT_VERDICT = P.Verdict("accept")


def eom(*actions: P.Response, final: P.Response = ACCEPT_VERDICT) -> bytes:
    return b"".join(P.encode_response(a) for a in actions) + P.encode_response(final)


def parse(path: Path) -> email.message.EmailMessage:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def send(srv: Server, rcpts: list[str], msg: bytes, sender: str = "sender@client.test") -> Any:
    with srv.connect() as c:
        c.ehlo()
        return c.send_message(sender, rcpts, stuff(msg))


# -- the steps and what a milter is told ---------------------------------------------------
def test_steps_macros_headers_and_body_reach_the_milter(
    make_server: Callable[..., Server], milter: ScriptedMilter
) -> None:
    srv = make_server(with_milter(milter))
    body = "".join(f"line {i:06d} of a message long enough for several body chunks\n" for i in range(6000))
    msg = make_message("to the milter", body)
    r = send(srv, [f"alice@{DOMAIN}"], msg)
    check(r, 250, "2.0.0")
    (path,) = srv.wait_mail("alice", 1)
    assert milter.codes() == b"OCHMRTL" + b"L" * 5 + b"N" + b"B" * milter.codes().count(b"B") + b"EQ"
    assert milter.codes().count(b"B") >= 6  # ~400 KiB in chunks of at most 64 KiB
    assert all(len(c.data) <= P.CHUNK_SIZE for c in milter.commands() if c.code == P.SMFIC_BODY)
    # the body octet for octet, CRLF as on the wire; the header fields as spooled (our Received first)
    assert milter.body() == msg.split(b"\r\n\r\n", 1)[1]
    names = [n for n, _ in milter.headers()]
    assert names == ["Received", "From", "To", "Subject", "Date", "Message-ID"]
    assert dict(milter.headers())["Subject"] == "to the milter"
    assert f"by {HOSTNAME} (smtprs) with ESMTP id {r.qid}" in milter.headers()[0][1]
    connect = next(c for c in milter.commands() if c.code == P.SMFIC_CONNECT)
    assert connect.family == b"4" and connect.args == ["[127.0.0.1]", "127.0.0.1"]
    assert milter.macros(P.SMFIC_CONNECT)["j"] == HOSTNAME
    assert milter.macros(P.SMFIC_CONNECT)["{client_addr}"] == "127.0.0.1"
    assert milter.macros(P.SMFIC_CONNECT)["{daemon_name}"] == HOSTNAME
    assert milter.macros(P.SMFIC_CONNECT)["_"] == "unknown [127.0.0.1]"
    assert milter.macros(P.SMFIC_MAIL)["{mail_addr}"] == "sender@client.test"
    assert milter.macros(P.SMFIC_RCPT)["{rcpt_addr}"] == f"alice@{DOMAIN}"
    assert milter.macros(P.SMFIC_BODYEOB)["i"] == r.qid
    helo = next(c for c in milter.commands() if c.code == P.SMFIC_HELO)
    assert helo.args == ["client.test"]
    # delivered unchanged
    assert path.read_bytes().endswith(msg.replace(b"\r\n", b"\n"))


def test_negotiated_steps_are_left_out(make_server: Callable[..., Server]) -> None:
    m = ScriptedMilter(steps=P.SMFIP_NOHDRS | P.SMFIP_NOHELO | P.SMFIP_NR_RCPT | P.SMFIP_NOBODY).start()
    try:
        srv = make_server(with_milter(m))
        check(send(srv, [f"alice@{DOMAIN}", f"bob@{DOMAIN}"], make_message("steps", "body\n")), 250, "2.0.0")
        srv.wait_mail("alice", 1)
        assert m.codes() == b"OCMRRTNEQ"  # no HELO, no header, no body; RCPT answered by nobody
    finally:
        m.stop()


# -- the changes -----------------------------------------------------------------------------
def test_header_and_envelope_changes_are_delivered(make_server: Callable[..., Server], milter: ScriptedMilter) -> None:
    milter.replies[P.SMFIC_BODYEOB] = eom(
        P.AddHeader("X-Milter", "added\n\tand folded"),
        P.InsertHeader(0, "X-Top", "above everything"),
        P.ChangeHeader(1, "Subject", "changed subject"),
        P.ChangeHeader(1, "X-Remove-Me", ""),
        P.DelRcpt(f"bob@{DOMAIN}"),
        P.AddRcpt(f"carol@{DOMAIN}"),
        P.ChangeFrom("bounces@client.test"),
        P.Verdict("progress"),
    )
    srv = make_server(with_milter(milter))
    msg = make_message("original subject", "the body\nstays\n", ["X-Remove-Me: yes", "X-Keep: this"])
    r = send(srv, [f"alice@{DOMAIN}", f"bob@{DOMAIN}"], msg)
    check(r, 250, "2.0.0")
    raw = srv.wait_mail("alice", 1)[0]
    assert b"\nX-Milter: added\n\tand folded\n" in raw.read_bytes()  # folded as sent (the Maildir has LF)
    alice = parse(raw)
    carol = parse(srv.wait_mail("carol", 1)[0])
    time.sleep(0.5)
    assert srv.mail("bob") == []
    for got in (alice, carol):
        assert got["Subject"] == "changed subject"
        assert got["X-Milter"] == "added\tand folded"  # unfolded: the CRLF removed, the tab kept (RFC 5322 2.2.3)
        assert got["X-Remove-Me"] is None and got["X-Keep"] == "this"
        assert got["Return-Path"] == "<bounces@client.test>"
        assert got.get_content() == "the body\nstays\n"
        # our Received field names the queue id the client was given
        assert f"id {r.qid}" in str(got["Received"])
    # X-Top is above our Received field (below the delivery's Return-Path and Delivered-To)
    names = [k.lower() for k in alice]
    assert names.index("x-top") < names.index("received")
    srv.wait_log(f"{r.qid}: milter:")
    assert "recipient <carol@example.test> added" in srv.log()


def test_added_recipients_are_routed_like_rcpt(
    make_server: Callable[..., Server], milter: ScriptedMilter, tmp_path: Path
) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("staff: bob, carol\n")
    milter.replies[P.SMFIC_BODYEOB] = eom(P.AddRcpt(f"staff@{DOMAIN}"), P.AddRcpt(f"nosuch@{DOMAIN}"))
    srv = make_server(
        merge(with_milter(milter), {"local": {"users": ["alice", "bob", "carol"], "aliases": str(aliases)}})
    )
    r = send(srv, [f"alice@{DOMAIN}"], make_message("to staff too", "body\n"))
    check(r, 250, "2.0.0")
    for user in ("alice", "bob", "carol"):
        srv.wait_mail(user, 1)
    srv.wait_log(f"{r.qid}: milter:")
    log = srv.log()
    # the alias was expanded; the unknown user was refused by the router, said in the log
    assert "recipient <bob@example.test> added" in log and "recipient <carol@example.test> added" in log
    assert "added recipient <nosuch@example.test> refused by the router: 550" in log
    assert "staff@example.test> added" not in log


def test_our_dkim_signature_covers_the_milters_changes(
    make_server: Callable[..., Server], milter: ScriptedMilter, tmp_path: Path
) -> None:
    """Signing comes after the milters: a milter that changes a signed field
    (Subject) and adds one does not break our signature."""
    key = tmp_path / "k.pem"
    p = subprocess.run(
        [
            *smtprs_command(),
            "dkim",
            "keygen",
            "--domain",
            DOMAIN,
            "--selector",
            "m1",
            "--algorithm",
            "rsa-sha256",
            "--out",
            str(key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    record = "".join(p.stdout.split(" IN TXT ", 1)[1].split('"')[1::2]).encode()
    sink = SmtpSink(tmp_path / "sink").start()
    try:
        milter.replies[P.SMFIC_BODYEOB] = eom(
            P.ChangeHeader(1, "Subject", "changed by the milter"), P.AddHeader("X-Scanned", "yes")
        )
        srv = make_server(
            merge(
                with_milter(milter),
                {
                    "relay": {
                        "trusted_networks": ["127.0.0.0/8"],
                        "transport": {"elsewhere.test": f"[127.0.0.1]:{sink.port}"},
                    },
                    "dkim": {"keys": [{"domain": DOMAIN, "selector": "m1", "key_file": str(key)}]},
                },
            )
        )
        msg = make_message("original", "signed after the milter\n").replace(
            b"sender@client.test", f"alice@{DOMAIN}".encode(), 1
        )
        check(send(srv, ["friend@elsewhere.test"], msg, sender=f"alice@{DOMAIN}"), 250, "2.0.0")
        srv.wait_log("status=sent")
        (dump,) = sink.wait_dumps(1)
        copy = SinkDump.read(dump).message.replace(b"\n", b"\r\n")
    finally:
        sink.stop()
    assert copy.startswith(b"DKIM-Signature: ")
    assert b"\r\nSubject: changed by the milter\r\n" in copy and b"\r\nX-Scanned: yes\r\n" in copy
    records = {f"m1._domainkey.{DOMAIN}.".encode(): record}
    d = dkim.DKIM(copy)
    assert d.verify(dnsfunc=lambda name, timeout=5: records.get(name)), copy[:800]
    assert b"subject" in [h.strip() for h in d.signature_fields[b"h"].lower().split(b":")]
    # the check can fail: the original subject back breaks it
    assert not dkim.verify(
        copy.replace(b"changed by the milter", b"original"), dnsfunc=lambda name, timeout=5: records.get(name)
    )


def test_replaced_body_of_a_large_message(make_server: Callable[..., Server], milter: ScriptedMilter) -> None:
    new_body = b"replaced\nby the milter\n" + b"x" * 70000 + b"\n"
    milter.replies[P.SMFIC_BODYEOB] = eom(
        P.ReplaceBody(new_body[:65535]), P.ReplaceBody(new_body[65535:]), P.AddHeader("X-Replaced", "1")
    )
    srv = make_server(with_milter(milter))
    msg = make_message("big", "y" * 990 + "\n" * 400 + "z\n" * 200000)  # spilled to its own file
    check(send(srv, [f"alice@{DOMAIN}"], msg), 250, "2.0.0")
    got = srv.wait_mail("alice", 1)[0].read_bytes()
    head, _, body = got.partition(b"\n\n")
    assert body == new_body
    assert b"X-Replaced: 1" in head and b"Subject: big" in head
    assert milter.body() == msg.split(b"\r\n\r\n", 1)[1]


def test_quarantine_puts_the_message_on_hold(make_server: Callable[..., Server], milter: ScriptedMilter) -> None:
    milter.replies[P.SMFIC_BODYEOB] = eom(P.Quarantine("suspicious"))
    srv = make_server(with_milter(milter))
    r = send(srv, [f"alice@{DOMAIN}"], make_message("held", "body\n"))
    check(r, 250, "2.0.0")
    srv.wait_log(f"{r.qid}: put on hold")
    time.sleep(1.0)
    assert srv.mail("alice") == []
    assert r.qid in srv.spool_snapshot()
    p = subprocess.run(
        [*smtprs_command(), "queue", "release", r.qid, "--config", str(srv.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    srv.wait_mail("alice", 1)


def test_discard_and_removing_every_recipient(make_server: Callable[..., Server], milter: ScriptedMilter) -> None:
    srv = make_server(with_milter(milter))
    milter.replies[P.SMFIC_BODYEOB] = eom(final=P.Verdict("discard"))
    r1 = send(srv, [f"alice@{DOMAIN}"], make_message("discarded", "body\n"))
    check(r1, 250, "2.0.0")
    milter.replies[P.SMFIC_BODYEOB] = eom(P.DelRcpt(f"alice@{DOMAIN}"))
    r2 = send(srv, [f"alice@{DOMAIN}"], make_message("no recipient left", "body\n"))
    check(r2, 250, "2.0.0")
    srv.wait_log(f"{r1.qid}: milter-discard")
    srv.wait_log(f"{r2.qid}: milter-discard: every recipient was removed")
    time.sleep(0.5)
    assert srv.mail("alice") == []
    assert srv.spool_snapshot() == {}


# -- refusals at each stage ----------------------------------------------------------------------
def test_refusals_at_mail_rcpt_and_end_of_data(make_server: Callable[..., Server], milter: ScriptedMilter) -> None:
    srv = make_server(with_milter(milter))

    def mail(cmd: P.Command) -> bytes:
        if cmd.args[0] == "<spammer@client.test>":
            return P.encode_response(P.ReplyCode(550, "5.7.1", ("Go away, spammer",)))
        return CONTINUE

    def rcpt(cmd: P.Command) -> bytes:
        if cmd.args[0] == f"<bad@{DOMAIN}>":
            return P.encode_response(P.Verdict("reject"))
        if cmd.args[0] == f"<later@{DOMAIN}>":
            return P.encode_response(P.Verdict("tempfail"))
        return CONTINUE

    milter.replies[P.SMFIC_MAIL] = mail
    milter.replies[P.SMFIC_RCPT] = rcpt
    with srv.connect() as c:
        c.ehlo()
        c.expect("MAIL FROM:<spammer@client.test>", 550, "5.7.1")
        assert "Go away, spammer" in c.cmd("MAIL FROM:<spammer@client.test>").text
        c.expect("MAIL FROM:<ok@client.test>", 250)
        c.expect(f"RCPT TO:<bad@{DOMAIN}>", 550, "5.7.1")
        c.expect(f"RCPT TO:<later@{DOMAIN}>", 451, "4.7.1")
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        r = c.cmd(stuff(make_message("accepted", "for alice only\n")) + b".")
        check(r, 250, "2.0.0")
        # the end of the data refused: nothing kept
        milter.replies[P.SMFIC_BODYEOB] = P.encode_response(P.ReplyCode(554, "5.7.1", ("Spam message rejected",)))
        c.expect("MAIL FROM:<ok@client.test>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        r = c.cmd(stuff(make_message("refused", "spam\n")) + b".")
        check(r, 554, "5.7.1")
        assert "Spam message rejected" in r.text
        milter.replies[P.SMFIC_BODYEOB] = P.encode_response(P.Verdict("tempfail"))
        c.expect("MAIL FROM:<ok@client.test>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        check(c.cmd(stuff(make_message("later", "x\n")) + b"."), 451, "4.7.1")
    assert len(srv.wait_mail("alice", 1, settle=0.5)) == 1
    assert srv.mail("bad") == [] and srv.mail("later") == []
    assert srv.spool_snapshot() == {}
    assert "milter-reject: MAIL" in srv.log() and "milter-reject: RCPT" in srv.log()


# -- bad milters ------------------------------------------------------------------------------------
BAD: dict[str, tuple[bytes, Any]] = {
    "garbage at connect": (P.SMFIC_CONNECT, b"\x00\x00\x00\x05zjunk"),
    "unknown reply at rcpt": (P.SMFIC_RCPT, P.packet(b"~", b"x")),
    "change at mail": (P.SMFIC_MAIL, P.encode_response(P.AddHeader("X", "y"))),
    "oversized packet at a header": (P.SMFIC_HEADER, b"\x7f\xff\xff\xff" + b"a" * 100),
    "length zero at eoh": (P.SMFIC_EOH, b"\x00\x00\x00\x00"),
    "close in the body": (P.SMFIC_BODY, lambda cmd: None),
    "close at the end": (P.SMFIC_BODYEOB, lambda cmd: None),
    "silence at the end": (P.SMFIC_BODYEOB, "hang"),
    "bad replycode at the end": (P.SMFIC_BODYEOB, P.packet(P.SMFIR_REPLYCODE, b"250 fine\0")),
    "unnegotiated change": (P.SMFIC_BODYEOB, eom(P.ChangeFrom("x@y.test"))),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_milter_gets_the_default_action(
    make_server: Callable[..., Server], milter: ScriptedMilter, case: str
) -> None:
    code, reply = BAD[case]
    milter.actions = P.SMFIF_ADDHDRS  # (so that CHGFROM is not negotiated)
    milter.replies[code] = reply
    srv = make_server(with_milter(milter, command_timeout=1.0, content_timeout=1.0))
    with srv.connect() as c:
        c.ehlo()
        msg = make_message(case, "body\n" * 100)
        replies = []
        r = c.cmd("MAIL FROM:<s@client.test>")
        replies.append(r)
        if r.code == 250:
            r = c.cmd(f"RCPT TO:<alice@{DOMAIN}>")
            replies.append(r)
            if r.code == 250:
                c.expect("DATA", 354)
                r = c.cmd(stuff(msg) + b".")
                replies.append(r)
        assert replies[-1].code == 451 and replies[-1].enhanced == "4.7.1", (case, [str(x) for x in replies])
        # the server keeps serving, in the same session too: the milter behaves again
        milter.replies.pop(code)
        c.expect("RSET", 250)  # (a refused RCPT leaves the transaction open)
        r = c.send_message("s@client.test", [f"alice@{DOMAIN}"], stuff(make_message("after " + case, "fine\n")))
        check(r, 250, "2.0.0")
    (path,) = srv.wait_mail("alice", 1, settle=0.3)
    assert b"after " + case.encode() in path.read_bytes()
    assert "milter.default_action=tempfail" in srv.log()
    assert srv.alive()


@pytest.mark.parametrize("action, code", [("accept", 250), ("reject", 550)])
def test_default_action_when_the_milter_is_down(make_server: Callable[..., Server], action: str, code: int) -> None:
    down = ScriptedMilter()
    spec = down.spec
    down.stop()  # nothing listens there any more
    srv = make_server(with_milter(spec, default_action=action, connect_timeout=2.0))
    with srv.connect() as c:
        c.ehlo()
        if code == 250:
            check(c.send_message("s@client.test", [f"alice@{DOMAIN}"], stuff(make_message("down", "x\n"))), 250)
        else:
            c.expect("MAIL FROM:<s@client.test>", 550, "5.7.1")
    if code == 250:
        srv.wait_mail("alice", 1)
    assert "cannot connect" in srv.log()


class OverrideServer(Server):
    """A server whose second listener (an mx one) has ``milters = ["none"]``."""

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        for lst in cfg["smtpd"]["listeners"]:
            if lst.get("mode") == "second":
                del lst["mode"]
                lst["milters"] = ["none"]
        return cfg


def test_tempfail_when_down_and_the_listener_override(tmp_path: Path) -> None:
    down = ScriptedMilter()
    spec = down.spec
    down.stop()
    srv = OverrideServer(tmp_path / "srv", with_milter(spec), modes=("second",)).start()
    try:
        with srv.connect() as c:
            c.ehlo()
            c.expect("MAIL FROM:<s@client.test>", 451, "4.7.1")
        with srv.connect(port=srv.ports["second"]) as c:
            c.ehlo()
            r = c.send_message("s@client.test", [f"alice@{DOMAIN}"], stuff(make_message("no milter here", "x\n")))
            check(r, 250, "2.0.0")
        srv.wait_mail("alice", 1)
    finally:
        srv.stop()
