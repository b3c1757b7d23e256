"""Relaying end to end: a real smtprs, a real DNS server (dnsmasq), real next hops.

The next hops are Postfix's smtp-sink (which dumps what it receives) and, for
faults smtp-sink cannot script, aiosmtpd.  Every MX and A record points at a
loopback address; ``relay.smtp_port`` makes smtprs connect to the test's port
instead of 25.  Times are short settings (retries after a fraction of a
second, lifetimes of a few seconds), never waited out in minutes.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from smtprs.queue.spool import read_queue

from .harness import DOMAIN, HOSTNAME, Server, merge
from .peers import Dnsmasq, Script, ScriptedPeer, SinkDump, SmtpSink, free_port, make_cert

SENDER = f"sender@{DOMAIN}"  # a local sender: bounces land in its Maildir

# the zone every test shares: names under .test, all on loopback
RECORDS = [
    # relay.test: two MX hosts, the preferred one on an address where nothing listens
    "--mx-host=relay.test,mx1.relay.test,10",
    "--mx-host=relay.test,mx2.relay.test,20",
    "--host-record=mx1.relay.test,127.0.0.2",
    "--host-record=mx2.relay.test,127.0.0.1",
    # good.test: one MX that works
    "--mx-host=good.test,mx.good.test,10",
    "--host-record=mx.good.test,127.0.0.1",
    # amx.test: no MX at all, an A record (the implicit MX)
    "--host-record=amx.test,127.0.0.1",
    # nullmx.test: RFC 7505 null MX
    "--mx-host=nullmx.test,.,0",
    # servfail.test: its upstream never answers
    "--server=/servfail.test/127.0.0.1#9",
    # smart.test: the smart host's name
    "--host-record=smart.test,127.0.0.1",
    # tls.test: an MX whose certificate names it
    "--mx-host=tls.test,mx.tls.test,10",
    "--host-record=mx.tls.test,127.0.0.1",
]


@pytest.fixture
def dns_server(tmp_path: Path) -> Iterator[Dnsmasq]:
    d = Dnsmasq(tmp_path / "dns", RECORDS).start()
    yield d
    d.stop()


@pytest.fixture
def peers() -> Iterator[list[Any]]:
    started: list[Any] = []
    yield started
    for p in started:
        p.stop()


def relay_overrides(dns: Dnsmasq, port: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    base = {
        "dns": dns.config(),
        "relay": {
            "smtp_port": port,
            "trusted_networks": ["127.0.0.0/8"],
            "connect_timeout": 2.0,
            "command_timeout": 10.0,
            "idle_timeout": 0.5,
        },
        "queue": {"retry_min": 0.3, "retry_max": 1.0},
    }
    return merge(base, extra or {})


def send(
    server: Server,
    rcpts: list[str],
    message: bytes,
    sender: str = SENDER,
    mail_options: list[str] | None = None,
    rcpt_options: list[str] | None = None,
) -> str:
    """Submit with smtplib; return the queue id."""
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30) as s:
        s.ehlo()
        code, _ = s.mail(sender, mail_options or [])
        assert code == 250
        for r in rcpts:
            code, text = s.rcpt(r, rcpt_options or [])
            assert code == 250, (r, code, text)
        code, text = s.data(message)
        assert code == 250, text
        m = re.search(rb"queued as (\S+)", text)
        assert m
        return m.group(1).decode()


def message(subject: str, body: bytes) -> bytes:
    head = (
        f"From: <{SENDER}>\r\nTo: <someone@good.test>\r\nSubject: {subject}\r\n"
        f"Date: Fri, 29 Nov 2024 08:00:00 +0000\r\nMessage-ID: <{time.monotonic_ns()}@client.test>\r\n"
    ).encode()
    return head + b"\r\n" + body


def our_received(content: bytes) -> list[bytes]:
    """The Received fields that smtprs added (by mx.test (smtprs))."""
    fields = re.findall(rb"^Received: .*?(?=^\S)", content, re.M | re.S)
    return [f for f in fields if f"by {HOSTNAME} (smtprs)".encode() in f]


def bounces(
    server: Server, user: str = "sender", n: int = 1, timeout: float = 20.0
) -> list[email.message.EmailMessage]:
    files = server.wait_mail(user, n, timeout=timeout)
    return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default) for f in files]  # type: ignore[misc]


def dsn_fields(msg: email.message.EmailMessage) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The per-message and per-recipient fields of a DSN's delivery-status part."""
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = list(msg.iter_parts())
    status = parts[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = [dict((k.lower(), str(v)) for k, v in b.items()) for b in status.get_payload()]
    return blocks[0], blocks[1:]


# --------------------------------------------------------------------------


def test_relay_by_mx_byte_for_byte(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    """Dots, 8-bit text and 998-octet lines arrive at the MX exactly as sent, with one Received of ours."""
    sink = SmtpSink(tmp_path / "sink").start()
    peers.append(sink)
    server = make_server(relay_overrides(dns_server, sink.port))
    body = (
        b".leading dot\r\n"
        b"..two dots\r\n"
        b".\r\n"
        b"caf\xc3\xa9 8-bit \xff\xfe text\r\n" + b"x" * 998 + b"\r\n" + b"." + b"y" * 997 + b"\r\n" + b"last line\r\n"
    )
    msg = message("byte for byte", body)
    qid = send(server, ["someone@good.test"], msg)
    server.wait_log(rf"{qid}: to=<someone@good.test>, relay=mx\.good\.test\[127\.0\.0\.1\]:{sink.port}, .*status=sent")
    (path,) = sink.wait_dumps(1)
    dump = SinkDump.read(path)
    assert dump.mail_args.startswith(f"<{SENDER}>")
    assert "BODY=8BITMIME" in dump.mail_args
    assert dump.rcpt_args == ["<someone@good.test>"]
    assert dump.helo == HOSTNAME
    content = dump.message
    expected = msg.replace(b"\r\n", b"\n")
    assert content.endswith(expected), "the message did not arrive byte for byte"
    added = content[: -len(expected)]
    assert len(our_received(content)) == 1
    assert added.startswith(
        b"Received: from client.test ([127.0.0.1])\n\tby mx.test (smtprs) with ESMTP id " + qid.encode()
    )
    assert added.count(b"\n") == 3, added  # exactly our three-line Received field, nothing else
    server.wait_log(rf"{qid}: removed")
    assert [env.queue_id for env, _ in read_queue(server.spool_dir)] == []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_relay_ten_megabytes(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    sink = SmtpSink(tmp_path / "sink").start()
    peers.append(sink)
    server = make_server(relay_overrides(dns_server, sink.port, {"smtpd": {"max_message_size": 12 * 1024 * 1024}}))
    line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
    body = b"".join(b"." + line if i % 7 == 0 else line for i in range(10 * 1024 * 1024 // len(line)))
    msg = message("ten megabytes", body)
    assert len(msg) > 10_000_000
    qid = send(server, ["big@good.test"], msg)
    server.wait_log(rf"{qid}: to=<big@good.test>, .*status=sent", timeout=90)
    (path,) = sink.wait_dumps(1)
    content = SinkDump.read(path).message
    assert content.endswith(msg.replace(b"\r\n", b"\n"))
    assert len(our_received(content)) == 1


def test_all_recipients_of_a_destination_in_one_transaction(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    sink = SmtpSink(tmp_path / "sink").start()
    peers.append(sink)
    server = make_server(relay_overrides(dns_server, sink.port))
    qid = send(
        server, ["a@good.test", "b@good.test", f"local@{DOMAIN}", "c@amx.test"], message("fan out", b"hello\r\n")
    )
    for r in ("a@good.test", "b@good.test", "c@amx.test"):
        server.wait_log(rf"{qid}: to=<{r}>, .*status=sent")
    server.wait_mail("local", 1)
    dumps = [SinkDump.read(p) for p in sink.wait_dumps(2)]
    rcpt_sets = sorted(sorted(d.rcpt_args) for d in dumps)
    assert rcpt_sets == [["<a@good.test>", "<b@good.test>"], ["<c@amx.test>"]]


def test_mx_fallback_when_preferred_mx_is_down(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    sink = SmtpSink(tmp_path / "sink").start()
    peers.append(sink)
    server = make_server(relay_overrides(dns_server, sink.port))
    qid = send(server, ["someone@relay.test"], message("fallback", b"via the backup MX\r\n"))
    server.wait_log(
        rf"{qid}: to=<someone@relay.test>, relay=mx2\.relay\.test\[127\.0\.0\.1\]:{sink.port}, .*status=sent"
    )
    # the preferred MX was tried first, in the same attempt
    assert any(f"relay=mx1.relay.test[127.0.0.2]:{sink.port}: connect to" in line for line in server.log_lines(qid))
    assert len(sink.wait_dumps(1)) == 1


def test_implicit_mx_a_record(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    sink = SmtpSink(tmp_path / "sink").start()
    peers.append(sink)
    server = make_server(relay_overrides(dns_server, sink.port))
    qid = send(server, ["someone@amx.test"], message("a record", b"no MX here\r\n"))
    server.wait_log(rf"{qid}: to=<someone@amx.test>, relay=amx\.test\[127\.0\.0\.1\]:{sink.port}, .*status=sent")


def test_null_mx_bounces_to_local_sender(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server]
) -> None:
    server = make_server(relay_overrides(dns_server, free_port()))
    msg = message("null mx", b"nobody will take this\r\n")
    qid = send(server, ["someone@nullmx.test"], msg)
    server.wait_log(rf"{qid}: to=<someone@nullmx.test>, .*status=bounced")
    (dsn,) = bounces(server)
    assert dsn["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{HOSTNAME}"
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    assert dsn["Auto-Submitted"] == "auto-replied"
    per_msg, rcpts = dsn_fields(dsn)
    assert per_msg["reporting-mta"] == f"dns; {HOSTNAME}"
    assert "arrival-date" in per_msg
    (r,) = rcpts
    assert r["final-recipient"] == "rfc822; someone@nullmx.test"
    assert r["action"] == "failed"
    assert r["status"] == "5.1.10"
    # the original headers come back (text/rfc822-headers), not the body
    parts = list(dsn.iter_parts())
    assert parts[2].get_content_type() == "text/rfc822-headers"
    returned = parts[2].get_payload() if isinstance(parts[2].get_payload(), str) else parts[2].get_content()
    assert "Subject: null mx" in returned
    assert "nobody will take this" not in dsn.as_string()
    # the bounce went out with the null sender, and nothing is left in the queue
    f = server.mail("sender")[0].read_bytes()
    assert f.startswith(b"Return-Path: <>\n")
    server.wait_log(rf"{qid}: removed")


def test_nxdomain_bounces_servfail_defers(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server]
) -> None:
    server = make_server(relay_overrides(dns_server, free_port(), {"queue": {"retry_min": 30.0, "retry_max": 60.0}}))
    qid1 = send(server, ["someone@nowhere.test"], message("nxdomain", b"x\r\n"))
    qid2 = send(server, ["someone@servfail.test"], message("servfail", b"x\r\n"))
    server.wait_log(rf"{qid1}: to=<someone@nowhere.test>, .*status=bounced \(550 5\.1\.2 ")
    server.wait_log(rf"{qid2}: to=<someone@servfail.test>, .*status=deferred \(451 4\.4\.3 ")
    (dsn,) = bounces(server)
    _, (r,) = dsn_fields(dsn)
    assert r["status"] == "5.1.2"
    time.sleep(0.5)
    assert len(server.mail("sender")) == 1  # no bounce for the deferred one


def test_temporary_failure_then_delivered_once(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    peer = ScriptedPeer(
        Script(rcpt={"someone@good.test": ["451 4.3.0 try again later", "452 4.2.2 still busy"]})
    ).start()
    peers.append(peer)
    server = make_server(relay_overrides(dns_server, peer.port))
    msg = message("retry", b"patience\r\n")
    qid = send(server, ["someone@good.test"], msg)
    server.wait_log(rf"{qid}: to=<someone@good.test>, .*status=sent", timeout=20)
    deferred = [line for line in server.log_lines(qid) if "status=deferred" in line]
    assert len(deferred) == 2
    assert "451 4.3.0 try again later" in deferred[0] and "452 4.2.2 still busy" in deferred[1]
    server.wait_log(rf"{qid}: removed")
    time.sleep(1.0)  # would a duplicate come?
    (got,) = peer.received
    assert got.rcpts == ["someone@good.test"]
    assert got.content.replace(b"\r\n", b"\n").endswith(msg.replace(b"\r\n", b"\n"))
    assert server.mail("sender") == []  # no notice for a delivered message


def test_permanent_failure_bounces_with_peer_diagnostic(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    sink = SmtpSink(tmp_path / "sink", ["-f", "RCPT", "-B", "550 5.1.1 No such user here"]).start()
    peers.append(sink)
    server = make_server(relay_overrides(dns_server, sink.port))
    qid = send(server, ["ghost@good.test"], message("five hundred", b"x\r\n"))
    server.wait_log(rf"{qid}: to=<ghost@good.test>, .*status=bounced")
    (dsn,) = bounces(server)
    _, (r,) = dsn_fields(dsn)
    assert r["action"] == "failed"
    assert r["status"] == "5.1.1"
    assert r["remote-mta"] == "dns; mx.good.test"
    assert r["diagnostic-code"] == "smtp; 550 5.1.1 No such user here"
    human = " ".join(list(dsn.iter_parts())[0].get_content().split())
    assert "<ghost@good.test>: host mx.good.test[127.0.0.1]" in human and "550 5.1.1 No such user here" in human


def test_expiry_bounces(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    sink = SmtpSink(tmp_path / "sink", ["-r", "RCPT"]).start()  # 450 4.3.0 to every RCPT
    peers.append(sink)
    server = make_server(
        relay_overrides(dns_server, sink.port, {"queue": {"max_lifetime": 2.0, "retry_min": 0.3, "retry_max": 0.6}})
    )
    t0 = time.monotonic()
    qid = send(server, ["slow@good.test"], message("expiry", b"x\r\n"))
    server.wait_log(rf"{qid}: to=<slow@good.test>, .*status=bounced \(message expired", timeout=20)
    assert time.monotonic() - t0 >= 2.0
    (dsn,) = bounces(server)
    _, (r,) = dsn_fields(dsn)
    assert r["action"] == "failed"
    assert r["status"] == "4.4.7"
    assert r["diagnostic-code"].startswith("smtp; 450 4.3.0")
    assert sum("status=deferred" in line for line in server.log_lines(qid)) >= 2


def test_smart_host_with_auth_over_starttls(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    cert = make_cert(tmp_path / "certs", "smart.test")
    secret = "s3cret-Pa55word"
    peer = ScriptedPeer(tls_cert=cert, credentials=("relayuser", secret), hostname="smart.test").start()
    peers.append(peer)
    server = make_server(
        relay_overrides(
            dns_server,
            free_port(),  # MX delivery would go nowhere: everything must take the smart host
            {
                "relay": {
                    "relayhost": f"[smart.test]:{peer.port}",
                    "auth_username": "relayuser",
                    "auth_password": secret,
                }
            },
        )
    )
    os.chmod(server.config_path, 0o600)
    qid = send(server, ["someone@good.test", "other@elsewhere.test"], message("smart host", b"via the relayhost\r\n"))
    for r in ("someone@good.test", "other@elsewhere.test"):
        server.wait_log(rf"{qid}: to=<{r}>, relay=smart\.test\[127\.0\.0\.1\]:{peer.port}, .*status=sent")
    (got,) = peer.wait_received(1)
    assert sorted(got.rcpts) == ["other@elsewhere.test", "someone@good.test"]  # one transaction for the one next hop
    assert got.tls and got.authenticated
    assert peer.auth_attempts == [("PLAIN", "relayuser")]
    log = server.log()
    assert "Untrusted TLS connection established to smart.test[127.0.0.1]" in log
    assert f"authenticated to smart.test[127.0.0.1]:{peer.port} as relayuser" in log
    assert secret not in log
    for p in server.data_dir.rglob("*"):
        if p.is_file():
            assert secret.encode() not in p.read_bytes(), p


def test_smart_host_wrong_password_defers(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    cert = make_cert(tmp_path / "certs", "smart.test")
    peer = ScriptedPeer(tls_cert=cert, credentials=("relayuser", "right"), hostname="smart.test").start()
    peers.append(peer)
    server = make_server(
        relay_overrides(
            dns_server,
            free_port(),
            {
                "relay": {
                    "relayhost": f"[smart.test]:{peer.port}",
                    "auth_username": "relayuser",
                    "auth_password": "wrong-one",
                }
            },
        )
    )
    qid = send(server, ["someone@good.test"], message("bad login", b"x\r\n"))
    line = server.wait_log(rf"{qid}: to=<someone@good.test>, .*status=deferred")
    assert "SASL authentication" in line and "535" in line
    assert "wrong-one" not in server.log()
    assert peer.received == []


def test_restart_with_deferred_mail_still_delivers(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    port = free_port()
    server = make_server(relay_overrides(dns_server, port))
    msg = message("survives restart", b"still here\r\n")
    qid = send(server, ["someone@good.test", "local@example.test"], msg)
    server.wait_log(rf"{qid}: to=<someone@good.test>, .*status=deferred")
    server.wait_mail("local", 1)
    server.stop()
    ((env, _),) = read_queue(server.spool_dir)
    states = {r.address: r.state for r in env.recipients}
    assert states == {"someone@good.test": "deferred", "local@example.test": "delivered"}
    peer = ScriptedPeer(port=port).start()
    peers.append(peer)
    server.start()
    server.wait_log(rf"{qid}: to=<someone@good.test>, .*status=sent")
    server.wait_log(rf"{qid}: removed")
    (got,) = peer.wait_received(1)
    assert got.rcpts == ["someone@good.test"]  # the local recipient is not delivered twice
    assert len(server.mail("local")) == 1


def _smtprs(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smtprs", *args, "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_queue_list_and_flush(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    port = free_port()
    server = make_server(relay_overrides(dns_server, port, {"queue": {"retry_min": 120.0, "retry_max": 600.0}}))
    p = _smtprs(server, "queue", "list")
    assert p.returncode == 0 and "queue is empty" in p.stdout
    msg = message("queued", b"waiting\r\n")
    qid = send(server, ["someone@good.test"], msg)
    server.wait_log(rf"{qid}: to=<someone@good.test>, .*status=deferred")
    p = _smtprs(server, "queue", "list", "--json")
    assert p.returncode == 0, p.stderr
    (entry,) = json.loads(p.stdout)
    assert entry["id"] == qid and entry["sender"] == SENDER and entry["size"] > len(msg)
    (r,) = entry["recipients"]
    assert r["address"] == "someone@good.test" and r["state"] == "deferred" and r["attempts"] == 1
    assert 60 < r["next_attempt_in"] <= 140
    assert "connect to mx.good.test[127.0.0.1]" in r["last_error"]
    text = _smtprs(server, "queue", "list").stdout
    assert qid in text and "<someone@good.test>  deferred, 1 attempt, next in" in text and "Connection refused" in text
    # the next hop comes up; without a flush the next try would be minutes away
    peer = ScriptedPeer(port=port).start()
    peers.append(peer)
    p = _smtprs(server, "queue", "flush")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("OK 1 message")
    server.wait_log(rf"{qid}: to=<someone@good.test>, .*status=sent", timeout=10)
    peer.wait_received(1)
    server.wait_log(rf"{qid}: removed")
    assert json.loads(_smtprs(server, "queue", "list", "--json").stdout) == []


def test_queue_flush_without_server_fails_clearly(tmp_path: Path, make_server: Callable[..., Server]) -> None:
    server = make_server(start=False)
    p = _smtprs(server, "queue", "flush")
    assert p.returncode == 1
    assert "no server is running" in p.stderr


def test_message_too_big_for_peer_bounces(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    peer = ScriptedPeer(data_size_limit=2000).start()
    peers.append(peer)
    server = make_server(relay_overrides(dns_server, peer.port))
    qid = send(server, ["someone@good.test"], message("big", (b"z" * 70 + b"\r\n") * 80))
    line = server.wait_log(rf"{qid}: to=<someone@good.test>, .*status=bounced")
    assert "exceeds size limit 2000" in line
    _, (r,) = dsn_fields(bounces(server)[0])
    assert r["status"] == "5.3.4"
    assert sum("status=" in line for line in server.log_lines(qid)) == 1  # no retry loop
    assert peer.received == []


def test_8bit_to_peer_without_8bitmime_bounces(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    sink = SmtpSink(tmp_path / "sink", ["-8"]).start()
    peers.append(sink)
    server = make_server(relay_overrides(dns_server, sink.port))
    qid7 = send(server, ["seven@good.test"], message("7bit", b"plain ascii\r\n"))
    qid8 = send(server, ["eight@good.test"], message("8bit", b"caf\xc3\xa9\r\n"))
    server.wait_log(rf"{qid7}: to=<seven@good.test>, .*status=sent")
    server.wait_log(rf"{qid8}: to=<eight@good.test>, .*status=bounced")
    _, (r,) = dsn_fields(bounces(server)[0])
    assert r["status"] == "5.6.3"
    assert len(sink.dumps()) == 1


def test_utf8_envelope_to_peer_without_smtputf8_bounces(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    sink = SmtpSink(tmp_path / "sink").start()  # smtp-sink does not offer SMTPUTF8
    utf8_peer = ScriptedPeer(smtputf8=True).start()
    peers += [sink, utf8_peer]
    server = make_server(
        relay_overrides(dns_server, sink.port, {"relay": {"transport": {"utf8.test": f"[127.0.0.1]:{utf8_peer.port}"}}})
    )
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.test", timeout=30) as s:
        s.command_encoding = "utf-8"
        s.ehlo()
        assert s.mail(SENDER, ["SMTPUTF8"])[0] == 250
        assert s.rcpt("zoë@good.test")[0] == 250
        assert s.rcpt("zoë@utf8.test")[0] == 250
        code, text = s.data(message("utf8", b"hello\r\n"))
        assert code == 250
        qid = re.search(rb"queued as (\S+)", text).group(1).decode()  # type: ignore[union-attr]
    server.wait_log(rf"{qid}: to=<zoë@good.test>, .*status=bounced")
    server.wait_log(rf"{qid}: to=<zoë@utf8.test>, .*status=sent")
    (got,) = utf8_peer.wait_received(1)
    assert "SMTPUTF8" in got.mail_options
    _, (r,) = dsn_fields(bounces(server)[0])
    assert r["status"] == "5.6.7"
    assert r["final-recipient"] == "utf-8; zoë@good.test"
    assert sink.dumps() == []


def test_dsn_parameters_are_relayed_to_dsn_peer(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    sink = SmtpSink(tmp_path / "sink").start()  # smtp-sink offers DSN
    peers.append(sink)
    server = make_server(relay_overrides(dns_server, sink.port))
    qid = send(
        server,
        ["someone@good.test"],
        message("dsn relayed", b"x\r\n"),
        mail_options=["RET=HDRS", "ENVID=QQ+2B314"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Someone+2BTag@good.test"],
    )
    server.wait_log(rf"{qid}: to=<someone@good.test>, .*status=sent")
    dump = SinkDump.read(sink.wait_dumps(1)[0])
    assert "RET=HDRS" in dump.mail_args and "ENVID=QQ+2B314" in dump.mail_args
    assert dump.rcpt_args == ["<someone@good.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Someone+2BTag@good.test"]
    time.sleep(1.0)
    assert server.mail("sender") == []  # the DSN-capable next hop owns the success notice


def test_success_notice_when_peer_has_no_dsn_and_never_means_never(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    peer = ScriptedPeer(Script(rcpt={"never@good.test": ["550 5.1.1 no such user"]})).start()  # aiosmtpd offers no DSN
    peers.append(peer)
    server = make_server(relay_overrides(dns_server, peer.port))
    qid = send(
        server,
        ["someone@good.test"],
        message("notify success", b"x\r\n"),
        mail_options=["ENVID=env-1"],
        rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;someone@good.test"],
    )
    qid2 = send(server, ["never@good.test"], message("notify never", b"x\r\n"), rcpt_options=["NOTIFY=NEVER"])
    server.wait_log(rf"{qid}: to=<someone@good.test>, .*status=sent")
    server.wait_log(rf"{qid2}: to=<never@good.test>, .*status=bounced")
    (notice,) = bounces(server)
    assert notice["Subject"] == "Successful Mail Delivery Report"
    per_msg, (r,) = dsn_fields(notice)
    assert per_msg["original-envelope-id"] == "env-1"
    assert r["action"] == "relayed"
    assert r["status"].startswith("2.")
    assert r["original-recipient"] == "rfc822;someone@good.test"
    assert len(list(notice.iter_parts())) == 2  # a success notice does not carry the message
    time.sleep(1.0)
    assert len(server.mail("sender")) == 1  # NOTIFY=NEVER: no bounce for the failed one


def test_ret_full_returns_the_whole_message(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server]
) -> None:
    server = make_server(relay_overrides(dns_server, free_port()))
    msg = message("return it all", b"the body comes back\r\n")
    qid = send(server, ["someone@nullmx.test"], msg, mail_options=["RET=FULL"])
    server.wait_log(rf"{qid}: to=<someone@nullmx.test>, .*status=bounced")
    (dsn,) = bounces(server)
    part = list(dsn.iter_parts())[2]
    assert part.get_content_type() == "message/rfc822"
    inner = part.get_payload()[0]
    assert inner["Subject"] == "return it all"
    assert "the body comes back" in inner.get_content()


def test_no_bounce_for_null_sender(tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server]) -> None:
    server = make_server(relay_overrides(dns_server, free_port()))
    qid = send(server, ["someone@nullmx.test"], message("from <>", b"x\r\n"), sender="")
    server.wait_log(rf"{qid}: no notification sent: the sender is <>")
    server.wait_log(rf"{qid}: removed")
    assert server.all_mail() == {}


def test_delay_warning(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    sink = SmtpSink(tmp_path / "sink", ["-r", "RCPT"]).start()
    peers.append(sink)
    server = make_server(
        relay_overrides(
            dns_server,
            sink.port,
            {"queue": {"delay_warning": 1.0, "max_lifetime": 60.0, "retry_min": 0.3, "retry_max": 0.5}},
        )
    )
    qid = send(server, ["slow@good.test"], message("delayed", b"x\r\n"))
    (notice,) = bounces(server, timeout=15)
    assert notice["Subject"] == "Delayed Mail (still being retried)"
    _, (r,) = dsn_fields(notice)
    assert r["action"] == "delayed"
    assert r["status"] == "4.3.0"
    assert "will-retry-until" in r
    time.sleep(1.5)
    assert len(server.mail("sender")) == 1  # once only
    assert any("status=deferred" in line for line in server.log_lines(qid)[-3:])


def test_connection_reused_for_next_message(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    peer = ScriptedPeer().start()
    peers.append(peer)
    server = make_server(relay_overrides(dns_server, peer.port, {"relay": {"idle_timeout": 5.0}}))
    q1 = send(server, ["one@good.test"], message("first", b"1\r\n"))
    server.wait_log(rf"{q1}: to=<one@good.test>, .*status=sent")
    q2 = send(server, ["two@good.test"], message("second", b"2\r\n"))
    server.wait_log(rf"{q2}: to=<two@good.test>, .*status=sent")
    peer.wait_received(2)
    assert peer.connections == 1


def test_opportunistic_tls_and_verify_policy(
    tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]
) -> None:
    cert = make_cert(tmp_path / "certs", "mx.tls.test")
    wrong = make_cert(tmp_path / "certs", "someone-else.test")
    good = ScriptedPeer(tls_cert=cert).start()
    bad = ScriptedPeer(tls_cert=wrong).start()
    peers += [good, bad]
    server = make_server(
        relay_overrides(
            dns_server,
            good.port,
            {
                "relay": {
                    "tls_ca_file": str(cert[0]),
                    "tls_policy": {"tls.test": "verify", "bad.test": "verify"},
                    "transport": {"bad.test": f"mx.tls.test:{bad.port}"},
                }
            },
        )
    )
    q1 = send(server, ["a@tls.test"], message("verified", b"x\r\n"))
    q2 = send(server, ["b@bad.test"], message("wrong certificate", b"x\r\n"))
    q3 = send(server, ["c@good.test"], message("opportunistic", b"x\r\n"))
    server.wait_log(rf"{q1}: to=<a@tls.test>, .*status=sent")
    server.wait_log(rf"{q3}: to=<c@good.test>, .*status=sent")
    line = server.wait_log(rf"{q2}: to=<b@bad.test>, .*status=deferred")
    assert "TLS handshake" in line and "certificate" in line.lower()
    assert "Verified TLS connection established to mx.tls.test[127.0.0.1]" in server.log()
    assert "Untrusted TLS connection established to mx.good.test[127.0.0.1]" in server.log()
    got = good.wait_received(2)
    assert all(g.tls for g in got)
    assert bad.received == []


def test_relay_needs_a_trusted_client(tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server]) -> None:
    server = make_server(relay_overrides(dns_server, free_port(), {"relay": {"trusted_networks": ["192.0.2.0/24"]}}))
    with server.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect("RCPT TO:<someone@good.test>", 554, "5.7.1")
        c.expect(f'RCPT TO:<"someone%good.test"@{DOMAIN}>', 550, "5.1.1")
        c.expect(f"RCPT TO:<someone%good.test@{DOMAIN}>", 550, "5.1.1")
        c.expect(f"RCPT TO:<@{DOMAIN}:someone@good.test>", 554, "5.7.1")
