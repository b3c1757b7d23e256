"""POP3 end to end: a real ``smtprs serve`` with pop3 (STLS) and pop3s
(implicit TLS) listeners; mail comes in over SMTP, Python's poplib and
fetchmail take it out again and delete it.  The certificate and the users
file are made with ``smtprs tls selfsigned`` and ``smtprs passwd``."""

from __future__ import annotations

import poplib
import shutil
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import DOMAIN, Server, check, make_message, smtprs_command, stuff

pytestmark = pytest.mark.e2e

USER = "alice"
PASSWORD = "correct horse battery staple"
SENDER = "sender@client.test"


def run(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*smtprs_command(), *args], capture_output=True, text=True, timeout=60, cwd=cwd, input=input)


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pop3-credentials")
    p = run("tls", "selfsigned", "--out", "tls", "--hostname", "mx.test", cwd=base)
    assert p.returncode == 0, p.stderr
    for user, password in ((USER, PASSWORD), (f"bob@{DOMAIN}", "bob's password")):
        p = run("passwd", "add", user, "--stdin", "--file", "users", cwd=base, input=password + "\n")
        assert p.returncode == 0, p.stderr
    return {"cert": base / "tls" / "cert.pem", "key": base / "tls" / "key.pem", "users": base / "users"}


@pytest.fixture
def pop(make_server: Callable[..., Server], credentials: dict[str, Path]) -> Server:
    return make_server(
        {
            "smtpd": {
                "tls": {"cert_file": str(credentials["cert"]), "key_file": str(credentials["key"])},
                "auth": {"users_file": str(credentials["users"]), "failure_delay": 0.2, "max_failure_delay": 0.5},
            },
            "local": {"users": ["alice", "bob"]},
        },
        modes=("pop3", "pop3s"),
    )


def tls_context(credentials: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(credentials["cert"]))


def deliver(srv: Server, user: str, messages: list[bytes]) -> list[bytes]:
    """Send over SMTP, wait for the Maildir; return the stored files' bytes in order of sending."""
    before = len(srv.mail(user))
    with srv.connect() as c:
        c.ehlo()
        for msg in messages:
            check(c.send_message(SENDER, [f"{user}@{DOMAIN}"], stuff(msg)), 250)
    files = srv.wait_mail(user, before + len(messages))
    stored = {f.read_bytes() for f in files}
    out = []
    for msg in messages:
        (match,) = [b for b in stored if b.endswith(msg.replace(b"\r\n", b"\n"))]
        out.append(match)
    return out


def pop3_stls(srv: Server, credentials: dict[str, Path]) -> poplib.POP3:
    p = poplib.POP3("127.0.0.1", srv.ports["pop3"], timeout=10)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps, caps  # no passwords in the clear
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.user(USER)
    p.stls(tls_context(credentials))
    caps = p.capa()
    assert "USER" in caps and "SASL" in caps and "STLS" not in caps, caps
    return p


BODIES = ["Hello over POP3.\r\n", ".leading dot\r\n..two\r\n.\r\nFrom the middle\r\n", "last\r\n"]


def test_poplib_stls_retrieve_and_delete(pop: Server, credentials: dict[str, Path]) -> None:
    sent = [make_message(f"pop {i}", body) for i, body in enumerate(BODIES)]
    stored = deliver(pop, "alice", sent)
    p = pop3_stls(pop, credentials)
    assert p.user(USER).startswith(b"+OK")
    assert p.pass_(PASSWORD).startswith(b"+OK")
    count, size = p.stat()
    assert count == 3 and size == sum(len(s.replace(b"\n", b"\r\n")) for s in stored)
    _, listing, _ = p.list()
    sizes = [int(line.split()[1]) for line in listing]
    _, uidls, _ = p.uidl()
    assert len({u.split()[1] for u in uidls}) == 3
    got = []
    for i in range(1, 4):
        _, lines, octets = p.retr(i)
        got.append(b"\r\n".join(lines) + b"\r\n")
        assert len(got[-1]) == sizes[i - 1]
    # byte for byte: the stored file with CRLF line ends (poplib un-stuffs the dots)
    assert sorted(got) == sorted(s.replace(b"\n", b"\r\n") for s in stored)
    for g, msg in zip(sorted(got, key=lambda b: [s.replace(b"\n", b"\r\n") for s in stored].index(b)), sent):
        assert g.endswith(msg)
    _, top, _ = p.top(1, 0)
    assert top[-1] == b"" and all(b": " in line or line[:1] in (b" ", b"\t") for line in top[:-1])
    # mail delivered during the session waits for the next one
    deliver(pop, "alice", [make_message("late", "arrived while logged in\r\n")])
    assert p.stat()[0] == 3
    p.dele(1)
    p.dele(3)
    assert p.stat()[0] == 1
    assert len(list((pop.maildir("alice") / "cur").iterdir())) == 3  # nothing removed before QUIT
    assert p.quit().startswith(b"+OK")
    left = sorted(f.read_bytes() for f in (pop.maildir("alice") / "cur").iterdir()) + [
        f.read_bytes() for f in pop.mail("alice")
    ]
    assert len(left) == 2
    # the next session sees the survivor and the late one
    p = pop3_stls(pop, credentials)
    p.user(USER)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 2
    p.quit()
    assert f"pop3 update user=<{USER}>: 2 deleted" in pop.log()
    assert PASSWORD not in pop.log()


def test_deletions_need_quit(pop: Server, credentials: dict[str, Path]) -> None:
    deliver(pop, "alice", [make_message("keep me", "x\r\n")])
    p = pop3_stls(pop, credentials)
    p.user(USER)
    p.pass_(PASSWORD)
    p.dele(1)
    p.close()  # no QUIT: no UPDATE state, nothing deleted
    p = pop3_stls(pop, credentials)
    p.user(USER)
    p.pass_(PASSWORD)
    assert p.stat()[0] == 1
    # one session per maildrop
    other = pop3_stls(pop, credentials)
    other.user(USER)
    with pytest.raises(poplib.error_proto, match=r"IN-USE"):
        other.pass_(PASSWORD)
    other.close()
    p.quit()


def test_pop3s_implicit_tls_and_wrong_password(pop: Server, credentials: dict[str, Path]) -> None:
    deliver(pop, "bob", [make_message("for bob", "hi bob\r\n")])
    p = poplib.POP3_SSL("127.0.0.1", pop.ports["pop3s"], context=tls_context(credentials), timeout=10)
    p.user(f"bob@{DOMAIN}")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("wrong")
    p.user(f"Bob@{DOMAIN}")
    p.pass_("bob's password")
    assert p.stat()[0] == 1
    _, lines, _ = p.retr(1)
    assert lines[-1] == b"hi bob"
    p.quit()


FETCHMAIL_MDA = """
import sys, os, time
out = sys.argv[1]
data = sys.stdin.buffer.read()
with open(os.path.join(out, "%d.%d" % (time.time_ns(), os.getpid())), "wb") as f:
    f.write(data)
"""


@pytest.mark.skipif(
    shutil.which("fetchmail") is None, reason="fetchmail is not installed (scripts/install-deps.sh installs it)"
)
def test_fetchmail_stls_fetches_and_deletes(pop: Server, credentials: dict[str, Path], tmp_path: Path) -> None:
    sent = [make_message(f"fetchmail {i}", body) for i, body in enumerate(BODIES)]
    stored = deliver(pop, "alice", sent)
    out = tmp_path / "fetched"
    out.mkdir()
    mda = tmp_path / "mda.py"
    mda.write_text(FETCHMAIL_MDA)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 service {pop.ports['pop3']} protocol POP3 auth password timeout 20\n"
        f'  user "{USER}" there with password "{PASSWORD}" is root here\n'
        f'  sslproto "tls1.2+" sslcertck sslcertfile "{credentials["cert"]}" sslcommonname "mx.test"\n'
        f'  mda "{sys.executable} {mda} {out}"\n'
        "  fetchall nokeep\n"
    )
    rc.chmod(0o600)
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    p = subprocess.run(
        [
            "fetchmail",
            "--fetchmailrc",
            str(rc),
            "--idfile",
            str(tmp_path / "fetchids"),
            "--pidfile",
            str(tmp_path / "fetchmail.pid"),
            "--nosyslog",
            "--invisible",
            "-v",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "STLS" in p.stdout + p.stderr, "fetchmail did not use STLS"
    fetched = [f.read_bytes() for f in sorted(out.iterdir())]
    assert len(fetched) == 3, p.stdout + p.stderr
    for s in stored:  # fetchmail hands the MDA the message with LF line ends, as we stored it
        assert sum(f.endswith(s) for f in fetched) == 1, (s[-80:], [f[-80:] for f in fetched])
    # fetchmail deleted them (nokeep), through QUIT
    assert list((pop.maildir("alice") / "cur").iterdir()) == [] and pop.mail("alice") == []
    assert f"pop3 update user=<{USER}>: 3 deleted" in pop.log()
