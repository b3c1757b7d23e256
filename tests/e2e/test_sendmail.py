"""sendmail(1) and mailq against a real ``smtprs serve``: called as cron, PHP's
mail() and mutt call it (through a ``sendmail`` wrapper on a temporary PATH
that runs this worktree's ``python -m smtprs.sendmail``), with the server
running (SMTP to its mx listener) and with it down (the pickup directory,
taken in when the server starts: nothing lost); mail the relay policy refuses
to a local client goes the pickup way too and shows in ``mailq`` as deferred
at a closed loopback port; ``-q`` flushes it; ``-bs`` speaks SMTP on stdio.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .harness import DOMAIN, Server, maildir_files
from .peers import free_port, wait_until

pytestmark = pytest.mark.e2e

PYTHONPATH = str(Path(__file__).resolve().parents[2] / "python")


def _env(srv: Server) -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return dict(
        os.environ,
        SMTPRS_CONFIG=str(srv.config_path),
        PYTHONPATH=PYTHONPATH + (os.pathsep + path if path else ""),
    )


def wrapper(srv: Server) -> Path:
    """A ``sendmail`` (and ``mailq``) on a temporary PATH, as /usr/sbin/sendmail would be."""
    bin_dir = srv.base / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, extra in (("sendmail", ""), ("mailq", " -bp")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {sys.executable} -m smtprs.sendmail{extra} "$@"\n')
        script.chmod(0o755)
    return bin_dir


def sendmail(srv: Server, *args: str, data: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "smtprs.sendmail", *args],
        input=data,
        capture_output=True,
        env=_env(srv),
        timeout=timeout,
    )


def shell(srv: Server, command: str, data: bytes = b"", timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """``command`` run by /bin/sh with the wrapper first on PATH, as cron runs its mailer."""
    env = _env(srv)
    env["PATH"] = f"{wrapper(srv)}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["/bin/sh", "-c", command], input=data, capture_output=True, env=env, timeout=timeout)


def pickup_files(srv: Server) -> list[Path]:
    d = srv.data_dir / "pickup"
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


def fields(path: Path) -> tuple[list[tuple[str, str]], bytes]:
    head, _, body = path.read_bytes().partition(b"\n\n")
    out: list[tuple[str, str]] = []
    for line in head.decode().split("\n"):
        if line[:1] in (" ", "\t"):
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        else:
            name, _, value = line.partition(":")
            out.append((name.lower(), value.strip()))
    return out, body


def get(fs: list[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in fs if n == name]


# --------------------------------------------------------------------------


def test_cron_style(server: Server) -> None:
    # exactly what cron runs, the message as cron writes it (no From: cron relies on -F)
    cron_mail = (
        b"To: user\nSubject: Cron <root@host> /usr/local/bin/job\n"
        b"Content-Type: text/plain; charset=UTF-8\n\njob output line 1\njob output line 2\n"
    )
    p = shell(server, "sendmail -FCronDaemon -i -B8BITMIME -oem user", cron_mail)
    assert p.returncode == 0, (p.stdout, p.stderr)
    (path,) = server.wait_mail("user", 1)
    fs, body = fields(path)
    login = __import__("pwd").getpwuid(os.getuid()).pw_name
    assert get(fs, "return-path") == [f"<{login}@{DOMAIN}>"]
    assert get(fs, "delivered-to") == [f"user@{DOMAIN}"]
    assert get(fs, "from") == [f"CronDaemon <{login}@{DOMAIN}>"]
    assert get(fs, "to") == ["user"]  # the header is the sender's; only the envelope is qualified
    assert len(get(fs, "date")) == 1 and get(fs, "message-id")[0].endswith("@mx.test>")
    assert body == b"job output line 1\njob output line 2\n"
    assert pickup_files(server) == []  # it went over SMTP


def test_php_mail_style_keeps_a_single_dot_line_and_drops_bcc(server: Server) -> None:
    # PHP's mail(): sendmail_path = "sendmail -t -i", plus "-f" in additional_parameters
    msg = (
        b"To: Bob <bob@example.test>\r\nBcc: carol@example.test\r\nSubject: php\r\n"
        b"From: Web <www@example.test>\r\n\r\nbefore\r\n.\r\nafter\r\n"
    )
    p = shell(server, "sendmail -t -i -f bounces@example.test", msg)
    assert p.returncode == 0, (p.stdout, p.stderr)
    for user in ("bob", "carol"):
        (path,) = server.wait_mail(user, 1)
        fs, body = fields(path)
        assert get(fs, "return-path") == ["<bounces@example.test>"]
        assert get(fs, "bcc") == []
        assert get(fs, "from") == ["Web <www@example.test>"]
        assert body == b"before\n.\nafter\n"


def test_without_i_a_single_dot_ends_the_message(server: Server) -> None:
    p = sendmail(server, "dave", data=b"Subject: dot\n\nkept\n.\nnot kept\n")
    assert p.returncode == 0, p.stderr
    (path,) = server.wait_mail("dave", 1)
    assert fields(path)[1] == b"kept\n"


def test_no_recipients_is_ex_dataerr(server: Server) -> None:
    p = sendmail(server, "-t", data=b"Subject: nobody\n\nbody\n")
    assert p.returncode == 65, p.stderr
    assert b"no recipient" in p.stderr
    p = sendmail(server, data=b"Subject: nobody\n\nbody\n")
    assert p.returncode == 64
    time.sleep(0.5)
    assert server.all_mail() == {} and pickup_files(server) == []


def test_server_down_then_started_nothing_lost(make_server: Callable[..., Server]) -> None:
    srv = make_server(start=False)
    one = sendmail(srv, "-f", "alice@example.test", "erin", data=b"Subject: while down 1\n\none\n")
    two = sendmail(srv, "-t", "-i", data=b"To: frank@example.test\nSubject: while down 2\n\n.\ntwo\n")
    assert (one.returncode, two.returncode) == (0, 0), (one.stderr, two.stderr)
    assert len(pickup_files(srv)) == 2
    srv.start()
    (e,) = srv.wait_mail("erin", 1)
    (f,) = srv.wait_mail("frank", 1)
    fs, body = fields(e)
    assert get(fs, "return-path") == ["<alice@example.test>"]
    assert get(fs, "received")[0].startswith("by mx.test (smtprs, from userid")
    assert body == b"one\n"
    assert fields(f)[1] == b".\ntwo\n"
    wait_until(lambda: pickup_files(srv) == [], 10, "the pickup directory emptied")
    srv.restart()  # taken once: a restart delivers nothing again
    time.sleep(1.5)
    assert len(srv.mail("erin")) == 1 and len(srv.mail("frank")) == 1


def test_pickup_not_writable_is_ex_tempfail(make_server: Callable[..., Server]) -> None:
    srv = make_server(start=False)
    srv.data_dir.mkdir(parents=True)
    (srv.data_dir / "pickup").write_text("a file where the directory belongs\n")
    p = sendmail(srv, "gina", data=b"Subject: s\n\nb\n")
    assert p.returncode == 75, p.stderr
    assert b"cannot write into" in p.stderr


def test_relayed_mail_goes_through_pickup_then_mailq_shows_it_deferred(make_server: Callable[..., Server]) -> None:
    srv = make_server(
        {
            # no relay.trusted_networks: the server refuses to relay for 127.0.0.1
            "relay": {"transport": {"closed.test": f"[127.0.0.1]:{free_port()}"}, "connect_timeout": 2.0},
            "queue": {"retry_min": 300.0, "retry_max": 600.0},
        }
    )
    empty = shell(srv, "mailq")
    assert empty.returncode == 0 and empty.stdout == b"Mail queue is empty\n", empty
    p = sendmail(srv, "-v", "-f", "alice@example.test", "x@closed.test", data=b"Subject: far\n\nbody\n")
    assert p.returncode == 0, p.stderr
    assert b"Relay access denied" in p.stderr and b"pickup" in p.stderr
    line = srv.wait_log(r"to=<x@closed.test>.*status=deferred", timeout=20)
    qid = line.split()[3].rstrip(":")
    for out in (shell(srv, "mailq"), sendmail(srv, "-bp")):
        assert out.returncode == 0, out
        lines = out.stdout.decode().splitlines()
        assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
        assert lines[1].startswith(qid) and lines[1].endswith("alice@example.test")
        assert lines[2].startswith("(") and lines[2].endswith(")") and "127.0.0.1" in lines[2]
        assert lines[3] == " " * 41 + "x@closed.test"
        assert lines[-1] == "-- 1 Kbytes in 1 Request."
    # -q: the server tries again now, not in 5 minutes
    attempts = len([x for x in srv.log_lines(qid) if "status=deferred" in x])
    q = sendmail(srv, "-q")
    assert q.returncode == 0, q.stderr
    wait_until(
        lambda: len([x for x in srv.log_lines(qid) if "status=deferred" in x]) > attempts, 20, "a flushed attempt"
    )


def test_q_without_a_server_is_ex_unavailable(make_server: Callable[..., Server]) -> None:
    srv = make_server(start=False)
    p = sendmail(srv, "-q")
    assert p.returncode == 69, p.stderr
    assert b"cannot reach the server" in p.stderr


def test_bs_speaks_smtp_on_stdio(server: Server) -> None:
    dialogue = (
        b"EHLO local.test\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<hank@example.test>\r\nDATA\r\n"
        b"Subject: bs\r\n\r\n..stuffed\r\n.\r\nQUIT\r\n"
    )
    p = sendmail(server, "-bs", data=dialogue)
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    assert out.startswith("220 mx.test"), out
    assert "250 2.0.0 Ok: queued as" in out and out.rstrip().endswith("221 2.0.0 Bye"), out
    (path,) = server.wait_mail("hank", 1)
    assert fields(path)[1] == b".stuffed\n"


def test_mutt_with_smtprs_sendmail(server: Server, tmp_path: Path) -> None:
    if shutil.which("mutt") is None:
        pytest.skip("mutt is not installed (Debian package: mutt; scripts/install-deps.sh)")
    home = tmp_path / "home"
    home.mkdir()
    muttrc = home / "muttrc"
    muttrc.write_text(
        f'set sendmail="{wrapper(server)}/sendmail -oi"\n'
        'set from="Ivy <ivy@example.test>"\nset use_from=yes\nset envelope_from=yes\n'
        "set record=\nset copy=no\nset charset=utf-8\nset send_charset=utf-8\n"
    )
    body = home / "body"
    body.write_text("hello from mutt\n.\nend\n")
    env = _env(server)
    env.update(HOME=str(home), MAILDIR=str(home / "Mail"), MAIL="", EMAIL="")
    with body.open("rb") as fh:
        p = subprocess.run(
            ["mutt", "-n", "-F", str(muttrc), "-s", "subj from mutt", f"jack@{DOMAIN}"],
            stdin=fh,
            capture_output=True,
            env=env,
            timeout=60,
        )
    assert p.returncode == 0, (p.stdout, p.stderr)
    (path,) = server.wait_mail("jack", 1)
    fs, body_bytes = fields(path)
    assert get(fs, "subject") == ["subj from mutt"]
    assert get(fs, "return-path") == ["<ivy@example.test>"]
    assert get(fs, "from") == ["Ivy <ivy@example.test>"]
    assert b"hello from mutt\n.\nend\n" in body_bytes
    assert maildir_files(server.maildir("jack")) == [path]


def test_unknown_recipient_is_ex_nouser_and_the_others_get_it(make_server: Callable[..., Server]) -> None:
    srv = make_server({"local": {"users": ["kim"]}})
    p = sendmail(srv, "kim", "nobody", data=b"Subject: some\n\nbody\n")
    assert p.returncode == 67, p.stderr
    assert b"<nobody@example.test>: refused: 550" in p.stderr
    (path,) = srv.wait_mail("kim", 1)
    assert fields(path)[1] == b"body\n"
    assert pickup_files(srv) == []


def test_damaged_pickup_files_are_set_aside_and_the_good_one_delivered(make_server: Callable[..., Server]) -> None:
    srv = make_server(start=False)
    good = sendmail(srv, "lee", data=b"Subject: good\n\ngood\n")
    assert good.returncode == 0, good.stderr
    d = srv.data_dir / "pickup"
    (d / "1.1.garbage").write_bytes(b"\x00\xff not a pickup file\n" * 1000)
    (d / "1.2.truncated").write_bytes(b'smtprs-pickup 1\n{"sender": "a@example.test", "recipi')
    srv.start()
    (path,) = srv.wait_mail("lee", 1)
    assert fields(path)[1] == b"good\n"
    wait_until(
        lambda: sorted(p.name for p in (d / "corrupt").glob("*")) == ["1.1.garbage", "1.2.truncated"], 10, "set aside"
    )
    assert pickup_files(srv) == []
    srv.wait_log(r"pickup: 1\.1\.garbage: not a pickup file")
    assert srv.alive()
