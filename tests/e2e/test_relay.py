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
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from .harness import DOMAIN, HOSTNAME, Server, merge, stuff
from .peers import Dnsmasq, Script, ScriptedPeer, SinkDump, SmtpSink, free_port, make_cert, wait_until

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


def send(server: Server, rcpts: list[str], message: bytes, sender: str = SENDER, mail_options: list[str] | None = None, rcpt_options: list[str] | None = None) -> str:
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


def bounces(server: Server, user: str = "sender", n: int = 1, timeout: float = 20.0) -> list[email.message.EmailMessage]:
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


def test_relay_by_mx_byte_for_byte(tmp_path: Path, dns_server: Dnsmasq, make_server: Callable[..., Server], peers: list[Any]) -> None:
    """Dots, 8-bit text and 998-octet lines arrive at the MX exactly as sent, with one Received of ours."""
    sink = SmtpSink(tmp_path / "sink").start()
    peers.append(sink)
    server = make_server(relay_overrides(dns_server, sink.port))
    body = (
        b".leading dot\r\n"
        b"..two dots\r\n"
        b".\r\n"
        b"caf\xc3\xa9 8-bit \xff\xfe text\r\n"
        + b"x" * 998 + b"\r\n"
        + b"." + b"y" * 997 + b"\r\n"
        + b"last line\r\n"
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
    assert added.startswith(b"Received: from client.test ([127.0.0.1])\n\tby mx.test (smtprs) with ESMTP id " + qid.encode())
    assert added.count(b"\n") == 3, added  # exactly our three-line Received field, nothing else
    server.wait_log(rf"{qid}: removed")
    assert not list((server.spool_dir / "queue").glob(f"{qid}.*"))
