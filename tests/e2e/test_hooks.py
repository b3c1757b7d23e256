"""Python hooks loaded by a real ``smtprs serve`` (issue 18 part 3).

A hooks module is written to a temporary directory put on the server's
PYTHONPATH and named by ``hooks = "module:factory"``.  The hooks write what
they see to files (one per process), so the tests see which worker loaded
them and what each event was told.  Peers: Postfix's smtp-sink as the relay
a permitted recipient goes to; a closed port for a deferral."""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from smtprs.smtpd.auth import hash_password, write_users

from .harness import DOMAIN, Server, smtprs_command
from .peers import SinkDump, SmtpSink, free_port

pytestmark = pytest.mark.e2e

MODULE = """
import json
import os
import pathlib

import smtprs

OUT = pathlib.Path(os.environ["SMTPRS_TEST_HOOKS_OUT"])


def note(event, **fields):
    with open(OUT / f"{os.getpid()}.jsonl", "a") as fh:
        fh.write(json.dumps({"event": event, **fields}) + "\\n")


class TestHooks(smtprs.Hooks):
    async def on_rcpt(self, session, sender, recipient):
        local = recipient.partition("@")[0]
        if local == "boom":
            raise RuntimeError("rcpt hook exploded")
        if local.startswith("permit") and session.refused is not None:
            note("permit", rcpt=recipient, refused=str(session.refused))
            return smtprs.PERMIT
        return None

    async def on_data(self, session, envelope, content):
        h = content.headers()
        note("data", qid=envelope.queue_id, subject=h["Subject"], received=len(h.get_all("Received") or []))
        if h["Subject"] == "boom":
            raise RuntimeError("data hook exploded")
        return None

    async def on_auth(self, session, mechanism, username, password):
        note("auth", mechanism=mechanism, user=username)
        if username == "ext":
            return password == "secret"
        if username == "broken":
            raise RuntimeError("directory down")
        return None

    async def on_disconnect(self, session):
        note("disconnect", id=session.id, helo=session.helo_name)

    async def on_delivered(self, envelope, recipient):
        note("delivered", qid=envelope.queue_id, rcpt=recipient.address)

    async def on_deferred(self, envelope, recipient):
        note("deferred", qid=envelope.queue_id, rcpt=recipient.address, error=recipient.last_error)


def make():
    note("loaded")
    return TestHooks()


def not_hooks():
    return "a string"


def broken():
    raise RuntimeError("cannot reach the directory")
"""


def hooks_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Write the hooks module, put it on PYTHONPATH; return the directory the hooks write to."""
    pydir = tmp_path / "py"
    pydir.mkdir()
    (pydir / "e2e_hooks.py").write_text(MODULE)
    out = tmp_path / "hook-events"
    out.mkdir()
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{pydir}{os.pathsep}{path}" if path else str(pydir))
    monkeypatch.setenv("SMTPRS_TEST_HOOKS_OUT", str(out))
    return out


def events(out: Path) -> list[dict[str, Any]]:
    found = []
    for p in sorted(out.glob("*.jsonl")):
        for line in p.read_text().splitlines():
            found.append({"pid": int(p.stem), **json.loads(line)})
    return found


def wait_events(out: Path, pred: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = [e for e in events(out) if pred(e)]
        if got:
            return got
        assert time.monotonic() < deadline, events(out)
        time.sleep(0.05)


def message(subject: str) -> bytes:
    return f"From: <a@client.test>\r\nTo: <bob@{DOMAIN}>\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n".encode()


def test_every_worker_loads_the_hooks_and_a_failing_hook_answers_451(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_server: Any
) -> None:
    out = hooks_env(tmp_path, monkeypatch)
    srv = make_server({"workers": 2, "hooks": "e2e_hooks:make"})
    deadline = time.monotonic() + 15
    while len({e["pid"] for e in events(out) if e["event"] == "loaded"}) < 2:
        assert time.monotonic() < deadline, (events(out), srv.log_tail())
        time.sleep(0.05)
    loaded = {e["pid"] for e in events(out) if e["event"] == "loaded"}
    assert len(loaded) == 2 and srv.pid not in loaded  # each worker made its own; the supervisor none

    # the hook's exceptions: 451 4.3.0, logged (with the queue id at DATA), and the server keeps serving
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=15) as c:
        assert c.ehlo("client.test")[0] == 250
        assert c.mail("a@client.test")[0] == 250
        code, text = c.rcpt(f"boom@{DOMAIN}")
        assert (code, text[:5]) == (451, b"4.3.0")
        assert c.rcpt(f"bob@{DOMAIN}")[0] == 250
        code, text = c.data(message("boom"))
        assert (code, text[:5]) == (451, b"4.3.0")
        c.rset()
        c.sendmail("a@client.test", [f"bob@{DOMAIN}"], message("fine"))
    boom = wait_events(out, lambda e: e["event"] == "data" and e["subject"] == "boom")[0]
    assert boom["received"] == 1  # our Received field, parsed by content.headers()
    srv.wait_log(rf"{boom['qid']}: hook on_data failed \(session C\d+\): RuntimeError\('data hook exploded'\)")
    srv.wait_log(r"hook on_rcpt failed: RuntimeError\('rcpt hook exploded'\)")
    delivered = wait_events(out, lambda e: e["event"] == "delivered")
    assert [d["rcpt"] for d in delivered] == [f"bob@{DOMAIN}"]
    assert len(srv.mail("bob")) == 1  # the refused message was removed, never delivered
    assert wait_events(out, lambda e: e["event"] == "disconnect" and e["helo"] == "client.test")
    # several connections spread over both workers: every one serves with its hooks
    for _i in range(12):
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=15) as c:
            c.ehlo("many.test")
            c.mail("a@client.test")
            assert c.rcpt(f"boom@{DOMAIN}")[0] == 451
    assert srv.alive()


def test_permit_relays_a_refused_recipient_and_on_deferred_is_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_server: Any
) -> None:
    out = hooks_env(tmp_path, monkeypatch)
    sink = SmtpSink(tmp_path / "sink").start()
    try:
        srv = make_server(
            {
                "hooks": "e2e_hooks:make",
                "local": {"users": ["bob"]},
                "relay": {
                    "tls": "none",
                    "transport": {"sink.test": f"[127.0.0.1]:{sink.port}", "down.test": f"[127.0.0.1]:{free_port()}"},
                },
            }
        )
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=15) as c:
            c.ehlo("client.test")
            assert c.mail("a@client.test")[0] == 250
            code, text = c.rcpt("plain@sink.test")
            assert (code, text[:5]) == (554, b"5.7.1")  # relay denied, the hook said nothing
            code, text = c.rcpt(f"permit-nobody@{DOMAIN}")
            assert (code, text[:5]) == (550, b"5.1.1")  # no route even when permitted: refused
            assert c.rcpt("permit@sink.test")[0] == 250
            assert c.rcpt("permit@down.test")[0] == 250
            code, text = c.data(message("permitted"))
            assert code == 250
        srv.wait_log(
            r"permit: RCPT from \[127\.0\.0\.1\]:\d+: from=<a@client\.test> to=<permit@sink\.test>: permitted by a hook over 554 5\.7\.1"
        )
        srv.wait_log(
            r"to=<permit-nobody@example\.test>: a hook permitted it, but it has no route; refused with 550 5\.1\.1"
        )
        [dump] = sink.wait_dumps(1)
        got = SinkDump.read(dump)
        assert [a.split()[0] for a in got.rcpt_args] == ["<permit@sink.test>"]
        assert b"Subject: permitted" in got.message
        deferred = wait_events(out, lambda e: e["event"] == "deferred")
        assert deferred[0]["rcpt"] == "permit@down.test" and deferred[0]["error"]
        assert wait_events(out, lambda e: e["event"] == "delivered" and e["rcpt"] == "permit@sink.test")
        permits = [e["rcpt"] for e in events(out) if e["event"] == "permit"]
        assert permits == [f"permit-nobody@{DOMAIN}", "permit@sink.test", "permit@down.test"]
    finally:
        sink.stop()


def test_on_auth_is_an_external_back_end_with_the_users_file_behind_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_server: Any
) -> None:
    out = hooks_env(tmp_path, monkeypatch)
    users = tmp_path / "users"
    write_users(users, {"carol": hash_password("carol's password", ln=8)})
    srv = make_server(
        {
            "hooks": "e2e_hooks:make",
            "smtpd": {
                "auth": {
                    "users_file": str(users),
                    "allow_plaintext": True,
                    "failure_delay": 0.05,
                    "max_failure_delay": 0.1,
                }
            },
        },
        modes=("submission",),
    )

    def login(user: str, password: str) -> tuple[int, bytes]:
        # one AUTH PLAIN (smtplib's login() would try the next mechanism after a failure)
        with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=15) as c:
            c.ehlo("msa-client.test")
            c.user, c.password = user, password
            try:
                return c.auth("PLAIN", c.auth_plain)
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code, e.smtp_error

    assert login("ext", "secret")[0] == 235
    assert login("ext", "wrong")[0] == 535
    code, text = login("broken", "x")
    assert (code, text[:5]) == (451, b"4.3.0")
    assert login("carol", "carol's password")[0] == 235  # the hook said None: the users file
    assert login("carol", "wrong")[0] == 535
    seen = [e["user"] for e in events(out) if e["event"] == "auth"]
    assert seen == ["ext", "ext", "broken", "carol", "carol"]
    log = srv.log()
    assert "secret" not in log and "carol's password" not in log
    assert "hook on_auth failed: RuntimeError('directory down')" in log
    deadline = time.monotonic() + 10
    while len([e for e in events(out) if e["event"] == "disconnect" and e["helo"] == "msa-client.test"]) < 5:
        assert time.monotonic() < deadline, events(out)
        time.sleep(0.05)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_hooks_module:make", "hooks: cannot import no_such_hooks_module: ModuleNotFoundError"),
        ("e2e_hooks:missing", "hooks: e2e_hooks has no missing"),
        ("e2e_hooks:not_hooks", "hooks: e2e_hooks:not_hooks() returned a str, not a smtprs.Hooks"),
        ("e2e_hooks:broken", "hooks: e2e_hooks:broken() failed: RuntimeError: cannot reach the directory"),
        ("e2e_hooks", 'hooks: expected "package.module:factory"'),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_hooks_that_cannot_be_loaded_stop_the_start_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, message: str, workers: int
) -> None:
    hooks_env(tmp_path, monkeypatch)
    srv = Server(tmp_path / "srv", {"hooks": spec, "workers": workers})
    p = subprocess.run(
        [*smtprs_command(), "serve", "--config", str(srv.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=srv.base,
    )
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"smtprs: configuration error: {message}" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
