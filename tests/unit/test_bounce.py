"""The DSN builder (RFC 3464), read back with Python's email package, and the notifier's way into the spool."""

from __future__ import annotations

import email
import email.message
import email.policy

import trio

from smtprs.bounce import Entry, Notifier, build_dsn, header_block
from smtprs.envelope import Envelope, Recipient

ORIGINAL = (
    b"Received: from client.test ([192.0.2.7])\r\n\tby mx.test (smtprs) with ESMTP id Q1; Fri, 29 Nov 2024 08:00:00 +0000\r\n"
    b"From: <sender@example.test>\r\nSubject: the original\r\nMessage-ID: <orig@client.test>\r\n\r\n"
    b"the body\r\n.dot line\r\n"
)


def _env(**params: str) -> Envelope:
    return Envelope(
        queue_id="Q1",
        sender="sender@example.test",
        recipients=[
            Recipient(
                "ghost@remote.test",
                state="failed",
                status="5.1.1",
                remote_mta="mx.remote.test",
                diagnostic="550 5.1.1 No such user here",
                last_error="host mx.remote.test[192.0.2.9]:25 said: 550 5.1.1 No such user here (in reply to RCPT TO command)",
                last_attempt=1_700_000_100.0,
                params={"NOTIFY": "FAILURE", "ORCPT": "rfc822;Ghost@remote.test"},
            ),
            Recipient(
                "late@remote.test",
                state="failed",
                status="4.4.7",
                last_error="message expired after 432000s in the queue; last error: connect to x: Connection refused",
                last_attempt=1_700_000_200.0,
            ),
        ],
        arrival=1_700_000_000.0,
        size=len(ORIGINAL),
        params=params,
    )


def _parse(data: bytes) -> email.message.EmailMessage:
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def _blocks(msg: email.message.EmailMessage) -> list[dict[str, str]]:
    status = list(msg.iter_parts())[1]
    assert status.get_content_type() == "message/delivery-status"
    return [{k.lower(): str(v) for k, v in b.items()} for b in status.get_payload()]


def test_failure_dsn_fields():
    env = _env(ENVID="env 42")
    entries = [Entry(env.recipients[0], "failed"), Entry(env.recipients[1], "failed")]
    data = build_dsn(
        env,
        entries,
        "failed",
        hostname="mx.test",
        notice_id="N1",
        original=header_block(ORIGINAL),
        full=False,
        now=1_700_000_300.0,
    )
    msg = _parse(data)
    assert msg["To"].addresses[0].addr_spec == "sender@example.test"
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mx.test"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Message-ID"] == "<N1@mx.test>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, returned = msg.iter_parts()
    assert human.get_content_type() == "text/plain"
    text = " ".join(human.get_content().split())
    assert "<ghost@remote.test>: host mx.remote.test[192.0.2.9]:25 said: 550 5.1.1 No such user here" in text
    per_msg, ghost, late = _blocks(msg)
    assert per_msg["reporting-mta"] == "dns; mx.test"
    assert per_msg["original-envelope-id"] == "env 42"
    assert email.utils.parsedate_to_datetime(per_msg["arrival-date"]).timestamp() == 1_700_000_000
    assert ghost == {
        "original-recipient": "rfc822;Ghost@remote.test",
        "final-recipient": "rfc822; ghost@remote.test",
        "action": "failed",
        "status": "5.1.1",
        "remote-mta": "dns; mx.remote.test",
        "diagnostic-code": "smtp; 550 5.1.1 No such user here",
        "last-attempt-date": ghost["last-attempt-date"],
    }
    assert late["status"] == "4.4.7" and late["action"] == "failed"
    assert late["diagnostic-code"].startswith("X-smtprs; message expired")
    assert "remote-mta" not in late
    assert returned.get_content_type() == "text/rfc822-headers"
    body = returned.get_payload() if isinstance(returned.get_payload(), str) else returned.get_content()
    assert "Subject: the original" in body and "the body" not in body


def test_ret_full_carries_the_message():
    env = _env(RET="FULL")
    data = build_dsn(
        env,
        [Entry(env.recipients[0], "failed")],
        "failed",
        hostname="mx.test",
        notice_id="N2",
        original=ORIGINAL,
        full=True,
        now=1_700_000_300.0,
    )
    msg = _parse(data)
    returned = list(msg.iter_parts())[2]
    assert returned.get_content_type() == "message/rfc822"
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "the original"
    assert ".dot line" in inner.get_content()


def test_success_and_delay_notices():
    env = _env()
    r = Recipient(
        "ok@remote.test", state="delivered", status="2.0.0", remote_mta="mx.remote.test", diagnostic="250 2.0.0 Ok"
    )
    env.recipients.append(r)
    msg = _parse(
        build_dsn(
            env, [Entry(r, "relayed")], "success", hostname="mx.test", notice_id="N3", original=b"", full=False, now=1.0
        )
    )
    assert msg["Subject"] == "Successful Mail Delivery Report"
    assert len(list(msg.iter_parts())) == 2  # no returned content (RFC 3461 4.3)
    _, block = _blocks(msg)
    assert block["action"] == "relayed" and block["status"] == "2.0.0"
    d = Recipient("slow@remote.test", state="deferred", status="4.3.0", diagnostic="451 4.3.0 try later")
    msg = _parse(
        build_dsn(
            env,
            [Entry(d, "delayed")],
            "delayed",
            hostname="mx.test",
            notice_id="N4",
            original=header_block(ORIGINAL),
            full=False,
            now=1.0,
            retry_until=1_700_432_000.0,
        )
    )
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    _, block = _blocks(msg)
    assert block["action"] == "delayed" and block["status"] == "4.3.0"
    assert email.utils.parsedate_to_datetime(block["will-retry-until"]).timestamp() == 1_700_432_000


def test_utf8_recipient_and_8bit_original():
    env = _env()
    r = Recipient("zoë@bücher.test", state="failed", status="5.6.7", last_error="SMTPUTF8 is required")
    original = b"Subject: caf\xc3\xa9\r\n"
    data = build_dsn(
        env, [Entry(r, "failed")], "failed", hostname="mx.test", notice_id="N5", original=original, full=False, now=1.0
    )
    assert b"Content-Transfer-Encoding: 8bit" in data
    _, block = _blocks(_parse(data))
    assert block["final-recipient"] == "utf-8; zoë@bücher.test"


def test_boundary_is_not_in_the_content():
    env = _env()
    data = build_dsn(
        env,
        [Entry(env.recipients[0], "failed")],
        "failed",
        hostname="mx.test",
        notice_id="N6",
        original=ORIGINAL,
        full=True,
        now=1.0,
    )
    boundary = _parse(data).get_boundary()
    assert boundary and boundary.encode() not in ORIGINAL


async def test_notifier_queues_a_bounce_from_the_null_sender(ctx_factory):
    ctx = ctx_factory()
    w = ctx.spool.create()
    w.write(ORIGINAL)
    env = _env()
    env.queue_id = w.queue_id
    env.recipients[0].notice = "failed"
    env.recipients[1].notice = "failed"
    await ctx.spool.commit(w, env)
    submitted: list[Envelope] = []
    notifier = Notifier(ctx.cfg, "mx.test", ctx.spool, submitted.append)
    assert await notifier.send(env, 1_700_000_300.0)
    assert all(not r.notice for r in env.recipients)
    (notice,) = submitted
    assert notice.sender == "" and [r.address for r in notice.recipients] == ["sender@example.test"]
    stored = ctx.spool.load(notice.queue_id)
    assert stored is not None and stored.sender == ""
    with ctx.spool.content(notice.queue_id).open() as fh:
        msg = _parse(fh.read())
    assert len(_blocks(msg)) == 3


async def test_no_notice_to_the_null_sender(ctx_factory):
    ctx = ctx_factory()
    env = _env()
    env.sender = ""
    env.recipients[0].notice = "failed"
    submitted: list[Envelope] = []
    notifier = Notifier(ctx.cfg, "mx.test", ctx.spool, submitted.append)
    assert await notifier.send(env, 1.0)
    assert submitted == [] and env.recipients[0].notice == ""
    await trio.sleep(0)
