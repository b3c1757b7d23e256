"""Submission end to end: a real ``smtprs serve`` with mx, submission (587-style,
STARTTLS) and submissions (465-style, implicit TLS) listeners, driven by swaks,
smtplib and raw sockets; the certificate and the users file are made with the
``smtprs tls selfsigned`` and ``smtprs passwd`` commands themselves."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from .harness import DOMAIN, Server, SMTPClient, check, check_delivered, merge, smtprs_command, split_fields
from .peers import SinkDump, SmtpSink

pytestmark = pytest.mark.e2e

USER = f"alice@{DOMAIN}"
PASSWORD = "Tr0ub4dor&3 horse"
WRONG = "not-the-Password-42"
MODES = ("submission", "submissions")


def run(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*smtprs_command(), *args], capture_output=True, text=True, timeout=60, cwd=cwd, input=input)


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A certificate (smtprs tls selfsigned) and a users file (smtprs passwd add --stdin)."""
    base = tmp_path_factory.mktemp("credentials")
    p = run("tls", "selfsigned", "--out", "tls", "--hostname", "mx.test", cwd=base)
    assert p.returncode == 0, p.stderr
    for user, password in ((USER, PASSWORD), ("carol", "carol's password")):
        p = run("passwd", "add", user, "--stdin", "--file", "users", cwd=base, input=password + "\n")
        assert p.returncode == 0, p.stderr
    return {"cert": base / "tls" / "cert.pem", "key": base / "tls" / "key.pem", "users": base / "users"}


def msa_config(credentials: dict[str, Path]) -> dict[str, Any]:
    return {
        "smtpd": {
            "tls": {"cert_file": str(credentials["cert"]), "key_file": str(credentials["key"])},
            "auth": {
                "users_file": str(credentials["users"]),
                "failure_delay": 0.2,
                "max_failure_delay": 1.0,
                "received_user": True,
                "senders": {USER: [f"postmaster@{DOMAIN}"]},
            },
        }
    }


@pytest.fixture
def msa(make_server: Callable[..., Server], credentials: dict[str, Path]) -> Server:
    return make_server(msa_config(credentials), modes=MODES)


def client_context(credentials: dict[str, Path]) -> ssl.SSLContext:
    # the self-signed certificate names mx.test, localhost and 127.0.0.1: verify it for real
    return ssl.create_default_context(cafile=str(credentials["cert"]))


def swaks(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{port}", "--helo", "client.test", "--timeout", "15", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def swaks_qid(out: str) -> str:
    for line in out.splitlines():
        if "queued as" in line:
            return line.rsplit(" ", 1)[1]
    raise AssertionError(f"no queue id in swaks output:\n{out}")


def assert_no_secrets(server: Server) -> None:
    """Neither a password nor its base64 (PLAIN or LOGIN form) is in the log."""
    log = server.log()
    for secret in (PASSWORD, WRONG, "carol's password"):
        for form in (
            secret,
            base64.b64encode(secret.encode()).decode(),
            base64.b64encode(f"\0{USER}\0{secret}".encode()).decode(),
        ):
            assert form not in log, f"a password ({form!r}) is in the server log"


def queue_files(server: Server) -> list[str]:
    """What the spool holds (queued ids and content files), as the spool's own reader sees it."""
    return sorted(server.spool_snapshot())


# -- swaks ------------------------------------------------------------------------


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth(msa: Server, mech: str) -> None:
    p = swaks(
        msa.ports["submission"],
        "--tls",
        "--auth",
        mech,
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
        "--from",
        USER,
        "--to",
        f"bob@{DOMAIN}",
        "--header",
        f"Subject: swaks {mech}",
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "235 2.7.0" in p.stdout
    qid = swaks_qid(p.stdout)
    (f,) = msa.wait_mail("bob", 1)
    content = f.read_bytes()
    assert f"with ESMTPSA id {qid}".encode() in content
    assert f"(Authenticated sender: {USER})".encode() in content
    assert b"(using TLSv1." in content
    msa.wait_log(rf"AUTH {mech} from \[127\.0\.0\.1\]:\d+: authenticated as {USER}")
    assert_no_secrets(msa)


@pytest.mark.parametrize("mech", ["PLAIN", "LOGIN"])
def test_swaks_tls_on_connect_auth(msa: Server, mech: str) -> None:
    p = swaks(
        msa.ports["submissions"],
        "--tls-on-connect",
        "--auth",
        mech,
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
        "--from",
        USER,
        "--to",
        f"bob@{DOMAIN}",
    )
    assert p.returncode == 0, p.stdout + p.stderr
    qid = swaks_qid(p.stdout)
    (f,) = msa.wait_mail("bob", 1)
    assert f"with ESMTPSA id {qid}".encode() in f.read_bytes()
    assert_no_secrets(msa)


def test_swaks_wrong_password(msa: Server) -> None:
    p = swaks(
        msa.ports["submission"],
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        WRONG,
        "--from",
        USER,
        "--to",
        f"bob@{DOMAIN}",
    )
    assert p.returncode != 0
    assert "535 5.7.8" in p.stdout, p.stdout
    assert msa.mail("bob") == []
    assert_no_secrets(msa)


def test_swaks_unauthenticated_relay_refused_and_nothing_queued(msa: Server) -> None:
    for args in ((), ("--tls",)):  # port 25, in the clear and with opportunistic STARTTLS
        p = swaks(msa.port, *args, "--from", "someone@remote.test", "--to", "friend@elsewhere.test")
        assert p.returncode != 0
        assert "554 5.7.1 Relay access denied" in p.stdout, p.stdout
    assert queue_files(msa) == []
    msa.wait_log(r"reject: RCPT from .*554 5\.7\.1 Relay access denied.*to=<friend@elsewhere\.test>")


# -- smtplib -------------------------------------------------------------------------


def test_smtplib_starttls_login_and_fixups(msa: Server, credentials: dict[str, Path]) -> None:
    with smtplib.SMTP("127.0.0.1", msa.ports["submission"], timeout=15) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls") and not s.has_extn("auth")
        s.starttls(context=client_context(credentials))
        s.ehlo("client.test")
        assert s.has_extn("auth") and not s.has_extn("starttls")
        assert set(s.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        code, _ = s.login(USER, PASSWORD)
        assert code == 235
        # a message without Date and Message-ID (RFC 6409 8: the MSA adds them)
        msg = b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: no date\r\n\r\nhello\r\n"
        s.sendmail(USER, [f"bob@{DOMAIN}"], msg)
    (f,) = msa.wait_mail("bob", 1)
    content = f.read_bytes()
    head = content.split(b"\n\n", 1)[0] + b"\n"
    names = [n.lower() for n, _ in split_fields(head)]
    assert names == ["return-path", "delivered-to", "received", "date", "message-id", "from", "to", "subject"]
    assert content.endswith(msg.replace(b"\r\n", b"\n"))
    assert_no_secrets(msa)


def test_smtplib_implicit_tls_auth_login(msa: Server, credentials: dict[str, Path]) -> None:
    with smtplib.SMTP_SSL("127.0.0.1", msa.ports["submissions"], timeout=15, context=client_context(credentials)) as s:
        s.ehlo("client.test")
        s.user, s.password = USER, PASSWORD
        code, _ = s.auth("LOGIN", s.auth_login)
        assert code == 235
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = USER, f"bob@{DOMAIN}", "over 465"
        msg["Date"], msg["Message-ID"] = "Fri, 29 Nov 2024 08:00:00 +0000", "<kept@client.test>"
        msg.set_content("body")
        s.send_message(msg)
    (f,) = msa.wait_mail("bob", 1)
    wire = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    check_delivered(f, wire, sender=USER, rcpt=f"bob@{DOMAIN}", with_protocol="ESMTPSA")


def test_smtplib_wrong_password_gets_535(msa: Server, credentials: dict[str, Path]) -> None:
    with smtplib.SMTP("127.0.0.1", msa.ports["submission"], timeout=15) as s:
        s.starttls(context=client_context(credentials))
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login(USER, WRONG)
        assert e.value.smtp_code == 535 and e.value.smtp_error.startswith(b"5.7.8")
        code, _ = s.login(USER, PASSWORD)  # the right one still works afterwards
        assert code == 235
    msa.wait_log(rf"AUTH PLAIN from .* failed as {USER}")
    assert_no_secrets(msa)


def test_smtplib_mail_before_auth_gets_530(msa: Server, credentials: dict[str, Path]) -> None:
    with smtplib.SMTP("127.0.0.1", msa.ports["submission"], timeout=15) as s:
        s.starttls(context=client_context(credentials))
        s.ehlo("client.test")
        code, text = s.mail(USER)
        assert (code, text[:5]) == (530, b"5.7.0")
    with smtplib.SMTP_SSL("127.0.0.1", msa.ports["submissions"], timeout=15, context=client_context(credentials)) as s:
        s.ehlo("client.test")
        code, text = s.mail(USER)
        assert (code, text[:5]) == (530, b"5.7.0")
    assert queue_files(msa) == []


def test_authenticated_user_relays_and_it_is_delivered(
    make_server: Callable[..., Server], credentials: dict[str, Path], tmp_path: Path
) -> None:
    sink = SmtpSink(tmp_path / "sink").start()  # the next hop for elsewhere.test
    try:
        msa = make_server(
            merge(msa_config(credentials), {"relay": {"transport": {"elsewhere.test": f"[127.0.0.1]:{sink.port}"}}}),
            modes=MODES,
        )
        with smtplib.SMTP("127.0.0.1", msa.ports["submission"], timeout=15) as s:
            s.starttls(context=client_context(credentials))
            s.login(USER, PASSWORD)
            s.sendmail(USER, ["friend@elsewhere.test"], b"Subject: out\r\n\r\nto the world\r\n")
        line = msa.wait_log(r"from=<alice@example\.test>, .*sasl_username=alice@example\.test \(queue active\)")
        qid = line.split(": ")[1]
        msa.wait_log(
            rf"{qid}: to=<friend@elsewhere\.test>, relay=127\.0\.0\.1\[127\.0\.0\.1\]:{sink.port}, .*status=sent"
        )
        (dump,) = sink.wait_dumps(1)
        got = SinkDump.read(dump)
        assert got.mail_args.startswith(f"<{USER}>") and got.rcpt_args == ["<friend@elsewhere.test>"]
        assert got.message.endswith(b"Subject: out\n\nto the world\n")
        assert b" with ESMTPSA id " in got.message  # our Received field says how it was submitted
    finally:
        sink.stop()


def test_sending_as_someone_else_gets_553(msa: Server, credentials: dict[str, Path]) -> None:
    with smtplib.SMTP("127.0.0.1", msa.ports["submission"], timeout=15) as s:
        s.starttls(context=client_context(credentials))
        s.login(USER, PASSWORD)
        code, text = s.mail(f"bob@{DOMAIN}")
        assert (code, text[:5]) == (553, b"5.7.1")
        s.rset()
        assert s.mail(f"postmaster@{DOMAIN}")[0] == 250  # listed for alice in smtpd.auth.senders
        s.rset()
        assert s.mail(USER)[0] == 250
    with smtplib.SMTP("127.0.0.1", msa.ports["submission"], timeout=15) as s:
        s.starttls(context=client_context(credentials))
        s.login("carol", "carol's password")
        assert s.mail(f"carol@{DOMAIN}")[0] == 250  # a bare login: login@ each local domain
        s.rset()
        code, text = s.mail(USER)
        assert (code, text[:5]) == (553, b"5.7.1")
    assert queue_files(msa) == []


# -- raw sockets ----------------------------------------------------------------------


def test_auth_before_starttls_gets_538(msa: Server) -> None:
    with SMTPClient(msa.ports["submission"]) as c:
        check(c.reply(), 220)
        r = c.ehlo()
        assert "STARTTLS" in r.lines and not any(line.startswith("AUTH") for line in r.lines)
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
        c.expect(f"AUTH PLAIN {plain}", 538, "5.7.11")
        c.expect(f"MAIL FROM:<{USER}>", 530, "5.7.0")
    assert_no_secrets(msa)


def test_starttls_then_rset_in_one_packet_gets_no_reply_to_rset(msa: Server, credentials: dict[str, Path]) -> None:
    for port in (msa.ports["submission"], msa.port):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        c = SMTPClient.__new__(SMTPClient)
        c.sock, c.timeout, c.buf, c.eof = sock, 10.0, b"", False
        check(c.reply(), 220)
        c.ehlo()
        c.send(b"STARTTLS\r\nRSET\r\n")  # one write, one packet
        check(c.reply(), 220, "2.0.0")
        assert c.nothing_more(0.3), f"a reply came in the clear after 220: {c.buf!r}"
        c.sock = client_context(credentials).wrap_socket(sock, server_hostname="mx.test")
        # the first reply under TLS answers our EHLO, not the injected RSET
        r = c.ehlo()
        assert r.lines[0] == "mx.test"
        c.expect("NOOP", 250)
        assert c.nothing_more(0.3)
        c.expect("QUIT", 221)
        c.close()
    msa.wait_log(r"sent 6 octets after STARTTLS before the TLS handshake; discarded, not executed")


def test_starttls_injection_of_a_whole_transaction(msa: Server, credentials: dict[str, Path]) -> None:
    """A man in the middle appends a whole transaction to STARTTLS, in the clear; none of it runs,
    on mx or submission listeners, whether it arrives with the STARTTLS line or just after it."""
    injected = (
        f"MAIL FROM:<admin@{DOMAIN}>\r\nRCPT TO:<bob@{DOMAIN}>\r\nDATA\r\n"
        "Subject: injected\r\n\r\ninjected in the clear\r\n.\r\nQUIT\r\n"
    ).encode()
    for port in (msa.port, msa.ports["submission"]):
        for together in (True, False):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = SMTPClient.__new__(SMTPClient)
            c.sock, c.timeout, c.buf, c.eof = sock, 10.0, b"", False
            check(c.reply(), 220)
            c.ehlo()
            if together:
                c.send(b"STARTTLS\r\n" + injected)
            else:
                c.send(b"STARTTLS\r\n")
                c.send(injected)  # before the 220 is read: still before the handshake
            check(c.reply(), 220, "2.0.0")
            c.nothing_more(0.3)
            assert not c.buf, f"a reply came in the clear after 220: {c.buf!r}"
            if c.eof:
                # the injected bytes reached the server after it had read the
                # STARTTLS line, were read as the TLS handshake, broke it, and
                # the server closed: fine too (nothing was answered or run)
                sock.close()
                continue
            try:
                c.sock = client_context(credentials).wrap_socket(sock, server_hostname="mx.test")
            except (ssl.SSLError, OSError):
                sock.close()  # the injected bytes were read as the handshake and broke it: fine too
                continue
            r = c.ehlo()
            assert r.lines[0] == "mx.test"
            c.expect("NOOP", 250)
            assert c.nothing_more(0.3)
            c.expect("QUIT", 221)
            c.close()
    time.sleep(0.5)
    assert msa.mail("bob") == []
    assert queue_files(msa) == []


# -- the commands and the example --------------------------------------------------------


def test_passwd_command(tmp_path: Path, msa: Server, credentials: dict[str, Path]) -> None:
    users = tmp_path / "users"
    p = run(
        "passwd", "add", "dave@example.test", "--stdin", "--file", str(users), cwd=tmp_path, input="dave's secret\n"
    )
    assert p.returncode == 0 and "added dave@example.test" in p.stdout, p.stderr
    text = users.read_text()
    assert "dave's secret" not in text and "dave@example.test:$scrypt$ln=14,r=8,p=1$" in text
    assert "dave's secret" not in p.stdout + p.stderr
    p = run("passwd", "add", "Dave@Example.TEST", "--stdin", "--file", str(users), cwd=tmp_path, input="a new one\n")
    assert p.returncode == 0 and "updated dave@example.test" in p.stdout
    assert run("passwd", "list", "--file", str(users), cwd=tmp_path).stdout == "dave@example.test\n"
    # never on the command line: there is no argument for it
    p = run("passwd", "add", "eve", "password-on-the-command-line", "--file", str(users), cwd=tmp_path)
    assert p.returncode == 2 and "eve" not in users.read_text()
    p = run("passwd", "add", "eve", "--stdin", "--file", str(users), cwd=tmp_path, input="\n")
    assert p.returncode == 1 and "empty password" in p.stderr
    p = run("passwd", "remove", "dave@example.test", "--file", str(users), cwd=tmp_path)
    assert p.returncode == 0
    assert run("passwd", "list", "--file", str(users), cwd=tmp_path).stdout == ""
    assert run("passwd", "remove", "nobody", "--file", str(users), cwd=tmp_path).returncode == 1

    # a user added while the server runs can log in at once
    live = Path(msa.config()["smtpd"]["auth"]["users_file"])
    backup = live.read_bytes()
    try:
        p = run("passwd", "add", "frank", "--stdin", "--file", str(live), cwd=tmp_path, input="frank's pw\n")
        assert p.returncode == 0
        with smtplib.SMTP("127.0.0.1", msa.ports["submission"], timeout=15) as s:
            s.starttls(context=client_context(credentials))
            assert s.login("frank", "frank's pw")[0] == 235
    finally:
        live.write_bytes(backup)


def test_check_config_with_submission(tmp_path: Path, credentials: dict[str, Path]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path}/data"\n[[smtpd.listeners]]\naddress = "127.0.0.1:2587"\nmode = "submission"\n'
    )
    p = run("check-config", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2 and "smtpd.listeners[0].mode" in p.stderr
    cfg.write_text(
        cfg.read_text() + f'[smtpd.tls]\ncert_file = "{credentials["cert"]}"\nkey_file = "{tmp_path}/missing.pem"\n'
    )
    p = run("check-config", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2 and "smtpd.tls.key_file: cannot read" in p.stderr
    cfg.write_text(cfg.read_text().replace(f"{tmp_path}/missing.pem", str(credentials["key"])))
    p = run("check-config", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 0 and "config ok" in p.stdout
    assert "no users" in p.stderr  # a warning: nobody could log in yet


def test_serve_refuses_an_unusable_certificate(tmp_path: Path, credentials: dict[str, Path]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path}/data"\n[[smtpd.listeners]]\naddress = "127.0.0.1:0"\nmode = "submissions"\n'
        f'[smtpd.tls]\ncert_file = "{credentials["cert"]}"\nkey_file = "{credentials["cert"]}"\n'
    )
    p = run("serve", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert "smtpd.tls.cert_file: cannot use" in p.stderr and "Traceback" not in p.stderr


def test_example_config(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "examples" / "smtprs.toml"
    # as shipped: it is valid, only the certificate is not on this machine
    p = run("check-config", "--config", str(example), cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.startswith(
        "smtprs: configuration error: smtpd.tls.cert_file: cannot read /etc/smtprs/tls/cert.pem"
    ), p.stderr
    # with its paths moved under tmp_path and the files made by our own commands, it is ready to run
    etc, var = tmp_path / "etc", tmp_path / "var"
    text = example.read_text().replace("/etc/smtprs", str(etc)).replace("/var/lib/smtprs", str(var))
    cfg = tmp_path / "smtprs.toml"
    cfg.write_text(text)
    assert run("tls", "selfsigned", "--out", str(etc / "tls"), "--config", str(cfg), cwd=tmp_path).returncode == 0
    p = run("passwd", "add", "alice@example.org", "--stdin", "--config", str(cfg), cwd=tmp_path, input="pw\n")
    assert p.returncode == 0 and str(etc / "users") in p.stdout
    p = run("check-config", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 0 and p.stdout == "config ok\n" and p.stderr == "", p.stderr
    text = cfg.read_text()
    for needed in (
        'mode = "mx"',
        'mode = "submission"',
        'mode = "submissions"',
        ':25"',
        ':587"',
        ':465"',
        "cert_file",
        "users_file",
    ):
        assert needed in text


def test_tls_selfsigned_command(tmp_path: Path) -> None:
    p = run("tls", "selfsigned", "--out", "tls", "--hostname", "smtp.example.net", "--days", "30", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)  # they belong together
    p = run("tls", "selfsigned", "--out", "tls", cwd=tmp_path)
    assert p.returncode == 1 and "exists" in p.stderr
    assert run("tls", "selfsigned", "--out", "tls", "--force", cwd=tmp_path).returncode == 0


def test_no_password_in_the_log_after_everything(msa: Server, credentials: dict[str, Path]) -> None:
    """Every way a password can travel, then a grep of the whole log."""
    for mech in ("PLAIN", "LOGIN"):
        for password in (PASSWORD, WRONG):
            swaks(
                msa.ports["submission"],
                "--tls",
                "--auth",
                mech,
                "--auth-user",
                USER,
                "--auth-password",
                password,
                "--from",
                USER,
                "--to",
                f"bob@{DOMAIN}",
            )
    # a password typed as the user name must not be logged either
    swaks(
        msa.ports["submissions"],
        "--tls-on-connect",
        "--auth",
        "LOGIN",
        "--auth-user",
        PASSWORD,
        "--auth-password",
        WRONG,
        "--from",
        USER,
        "--to",
        f"bob@{DOMAIN}",
    )
    time.sleep(0.2)
    assert_no_secrets(msa)
