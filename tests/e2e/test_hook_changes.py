"""Hooks that change mail (issue 18 part 3), loaded by a real ``smtprs serve``.

A hooks module written to a temporary directory on the server's PYTHONPATH
(``hooks = "module:factory"``) has ``on_message`` do what the Subject asks:
add a header field and change the Subject, replace the body, add and remove
recipients, remove every recipient, raise.  What lands in the Maildirs and
in the relay (Postfix's smtp-sink on loopback) is checked, and so is the
spool after a crash: the changed message is there, whole, under the queue id
of the 250, and nothing of the version it was received as."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from smtprs.queue.spool import Spool

from .harness import DOMAIN, QUEUED_RE, smtprs_command
from .peers import SinkDump, SmtpSink

pytestmark = pytest.mark.e2e

MODULE = """
import smtprs


class Changer(smtprs.Hooks):
    async def on_message(self, session, message):
        subject = str(message.headers()["Subject"])
        if subject == "tag":
            message.add_header("X-Hook", "added by e2e_changes")
            message.change_header("Subject", "[checked] tag")
        elif subject == "body":
            message.replace_body(b"a new body\\nfrom the hook\\n")
        elif subject == "rcpts":
            message.remove_recipient("bob@example.test")
            message.add_recipient("carol@example.test")
            message.add_recipient("copy@sink.test")
        elif subject == "none":
            for r in message.envelope.recipients:
                message.remove_recipient(r.address)
        elif subject == "hold":
            message.quarantine("held for review")
        elif subject == "boom":
            message.add_header("X-Never", "written")
            raise RuntimeError("message hook exploded")
        return None


def make():
    return Changer()
"""


@pytest.fixture
def hooks_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pydir = tmp_path / "py"
    pydir.mkdir()
    (pydir / "e2e_changes.py").write_text(MODULE)
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{pydir}{os.pathsep}{path}" if path else str(pydir))


def message(subject: str, body: str = "the original body") -> bytes:
    return (
        f"From: <a@client.test>\r\nTo: <bob@{DOMAIN}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n"
        f"\r\n{body}\r\n"
    ).encode()


def send(c: smtplib.SMTP, subject: str, rcpts: list[str]) -> tuple[int, bytes]:
    assert c.mail("a@client.test")[0] == 250
    for r in rcpts:
        assert c.rcpt(r)[0] == 250
    return c.data(message(subject))


def qid_of(answer: tuple[int, bytes]) -> str:
    code, text = answer
    assert code == 250, answer
    m = QUEUED_RE.search(text.decode())
    assert m, answer
    return m.group(1)


def test_changes_land_in_the_maildirs_and_the_relay(tmp_path: Path, hooks_path: None, make_server: Any) -> None:
    sink = SmtpSink(tmp_path / "sink").start()
    try:
        srv = make_server(
            {
                "hooks": "e2e_changes:make",
                "local": {"users": ["bob", "carol"]},
                "relay": {"tls": "none", "transport": {"sink.test": f"[127.0.0.1]:{sink.port}"}},
            }
        )
        bob, carol = f"bob@{DOMAIN}", f"carol@{DOMAIN}"
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=15) as c:
            c.ehlo("client.test")
            tagged = qid_of(send(c, "tag", [bob]))
            body = qid_of(send(c, "body", [bob]))
            rcpts = qid_of(send(c, "rcpts", [bob]))
            dropped = qid_of(send(c, "none", [bob, carol]))  # 250, kept nowhere
            code, text = send(c, "boom", [bob])
            assert (code, text[:5]) == (451, b"4.3.0")
            after = qid_of(send(c, "after", [bob]))  # the same session goes on
        got = {p.read_bytes().split(b"Subject: ")[1].split(b"\n")[0]: p.read_bytes() for p in srv.wait_mail("bob", 3)}
        assert set(got) == {b"[checked] tag", b"body", b"after"}, got
        tag = got[b"[checked] tag"]
        assert b"\nX-Hook: added by e2e_changes\n" in tag and b"\nSubject: tag\n" not in tag
        assert f"id {tagged}".encode() in tag  # our Received field names the new queue id
        assert tag.endswith(b"\n\nthe original body\n")
        assert got[b"body"].endswith(b"\n\na new body\nfrom the hook\n")
        assert b"X-Never" not in got[b"after"]
        [to_carol] = srv.wait_mail("carol", 1)
        assert b"Subject: rcpts" in to_carol.read_bytes()
        [dump] = sink.wait_dumps(1)
        relayed = SinkDump.read(dump)
        assert [a.split()[0] for a in relayed.rcpt_args] == ["<copy@sink.test>"]
        assert b"Subject: rcpts" in relayed.message
        srv.wait_log(rf"{tagged}: hook on_message: content rewritten \(received as \w+; 2 header change\(s\)\)")
        srv.wait_log(rf"{body}: hook on_message: content rewritten \(received as \w+; 0 header change\(s\), new body\)")
        srv.wait_log(
            rf"{rcpts}: hook on_message: recipient <bob@example\.test> removed; recipient <carol@example\.test> added;"
            r" recipient <copy@sink\.test> added"
        )
        srv.wait_log(rf"{dropped}: hook on_message: discarded, every recipient removed \(session C\d+\)")
        srv.wait_log(r"\w+: hook on_message failed \(session C\d+\): RuntimeError\('message hook exploded'\)")
        srv.wait_log(rf"{after}: to=<bob@example\.test>.*status=sent")
        assert srv.alive()
        assert not any(dropped in line and "status=sent" in line for line in srv.log().splitlines())
        assert len(srv.mail("bob")) == 3
        assert len(srv.mail("carol")) == 1  # the discarded message reached nobody
    finally:
        sink.stop()


def test_the_changed_message_is_durable_before_the_250(tmp_path: Path, hooks_path: None, make_server: Any) -> None:
    """Deliveries held (bob's Maildir blocked), a message changed by the hook,
    then the server killed: the spool holds the changed message under the
    queue id of the 250, whole, and nothing under the id it was received as.
    Started again with the Maildir back, it delivers that version once."""
    srv = make_server({"hooks": "e2e_changes:make", "local": {"users": ["bob"]}})
    blocker = srv.block_maildir("bob")
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=15) as c:
        c.ehlo("client.test")
        qid = qid_of(send(c, "tag", [f"bob@{DOMAIN}"]))
    received_as = srv.wait_log(rf"{qid}: hook on_message: content rewritten").split("received as ")[1].split(";")[0]
    assert received_as != qid
    srv.wait_log(rf"{qid}: to=<bob@example\.test>.*status=deferred")
    srv.kill()  # SIGKILL: no clean shutdown
    files = srv.shard_dir / "files"
    leftovers = [p.name for p in files.iterdir()] if files.exists() else []
    assert not any(received_as in name for name in leftovers), leftovers  # (read before Spool.open cleans up)
    spool = Spool(srv.shard_dir)
    try:
        assert spool.open() == [qid]
        with spool.content(qid).open() as fh:
            raw = fh.read()
        env = spool.load(qid)
        assert env is not None and env.size == len(raw)
    finally:
        spool.close()
    assert raw.count(b"X-Hook: added by e2e_changes\r\n") == 1 and b"Subject: [checked] tag\r\n" in raw
    assert raw.endswith(b"\r\n\r\nthe original body\r\n")
    blocker.unlink()
    srv.start()
    [delivered] = srv.wait_mail("bob", 1, settle=0.5)
    text = delivered.read_bytes()
    assert text.count(b"X-Hook: added by e2e_changes\n") == 1 and b"Subject: [checked] tag\n" in text


def test_quarantine_holds_the_message_until_released(tmp_path: Path, hooks_path: None, make_server: Any) -> None:
    srv = make_server({"hooks": "e2e_changes:make", "local": {"users": ["bob"]}})

    def queue(*args: str) -> str:
        p = subprocess.run(
            [*smtprs_command(), "queue", *args, "--config", str(srv.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, (args, p.stdout, p.stderr, srv.log_tail())
        return p.stdout

    with smtplib.SMTP("127.0.0.1", srv.port, timeout=15) as c:
        c.ehlo("client.test")
        held = qid_of(send(c, "hold", [f"bob@{DOMAIN}"]))
        plain = qid_of(send(c, "plain", [f"bob@{DOMAIN}"]))
    srv.wait_log(rf"{held}: hook on_message: quarantined \(held for review\)")
    srv.wait_log(rf"{plain}: to=<bob@example\.test>.*status=sent")
    time.sleep(0.5)
    listed = {e["id"]: e for e in json.loads(queue("list", "--json"))}
    assert list(listed) == [held] and listed[held]["held"] is True
    assert len(srv.mail("bob")) == 1  # only the plain one
    assert queue("release", held).strip() == f"OK {held} released"
    srv.wait_log(rf"{held}: to=<bob@example\.test>.*status=sent")
    assert len(srv.wait_mail("bob", 2)) == 2
