"""Delivery status notifications (RFC 3464): bounces, delay and success notices.

Reads an envelope whose recipients owe a notice (``Recipient.notice``, set by
the scheduler as outcomes are recorded, following the DSN NOTIFY parameter of
RFC 3461) and the original content from the spool; writes a new message into
the spool through the same door as network mail (``spool.create`` /
``commit``, then ``scheduler.submit``), with the null sender ``<>`` so that a
notice is never answered by another notice.  A message whose own sender is
``<>`` never gets one.

The notice is ``multipart/report; report-type=delivery-status``: a human
part, a ``message/delivery-status`` part (Reporting-MTA, Original-Envelope-Id,
Arrival-Date; per recipient Original-Recipient, Final-Recipient, Action,
Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until),
then the original headers (``text/rfc822-headers``), or the whole message
(``message/rfc822``) when the sender asked for it with RET=FULL and it is
not larger than ``queue.bounce_size_limit``.  Success notices never carry the
message (RFC 3461 4.3).
"""

from __future__ import annotations

import email.utils
import secrets
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import trio

from . import maillog
from .config import Config
from .content import Content
from .envelope import Envelope, Recipient
from .errors import SpoolError
from .queue.backend import SpoolBackend

# kind -> (Subject, the human part's first paragraph)
_WORDING = {
    "failed": (
        "Undelivered Mail Returned to Sender",
        "I'm sorry to have to inform you that your message could not be delivered to one or more "
        "recipients. It's attached below.\n\nFor further assistance, please send mail to postmaster.\n\n"
        "If you do so, please include this problem report. You can delete your own text from the "
        "attached returned message.",
    ),
    "delayed": (
        "Delayed Mail (still being retried)",
        "This is a warning only; you do not need to resend your message.\n\n"
        "Your message could not be delivered yet to one or more recipients. The mail system will "
        "keep trying until {until}.",
    ),
    "success": (
        "Successful Mail Delivery Report",
        "Your message was successfully delivered to the destination(s) listed below. If the message "
        "was delivered to a mailbox you will receive no further notifications. Otherwise you may "
        "still receive notifications of mail delivery errors from other systems.",
    ),
}

EXPIRED = "4.4.7"  # RFC 3463: delivery time expired
MAX_FIELD = 900  # octets of one delivery-status field value (lines stay under 998)


@dataclass(frozen=True)
class Entry:
    """One recipient line of a notice."""

    recipient: Recipient
    action: str  # failed | delayed | delivered | relayed


def _date(ts: float) -> str:
    return email.utils.formatdate(ts, localtime=True)


def _addr_field(address: str) -> str:
    """``rfc822;addr``, or ``utf-8;addr`` for an internationalized address (RFC 6533)."""
    return f"rfc822; {address}" if address.isascii() else f"utf-8; {address}"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_FIELD else text[: MAX_FIELD - 3] + "..."


def header_block(content: bytes) -> bytes:
    """The original header block, ending with its last CRLF (the blank line left out)."""
    end = content.find(b"\r\n\r\n")
    if content.startswith(b"\r\n"):
        return b""
    return content if end < 0 else content[: end + 2]


def build_dsn(
    env: Envelope,
    entries: list[Entry],
    kind: str,
    *,
    hostname: str,
    notice_id: str,
    original: bytes,
    full: bool,
    now: float,
    retry_until: float | None = None,
    boundary: str | None = None,
) -> bytes:
    """The notice about ``env`` as CRLF bytes.

    ``kind`` is "failed", "delayed" or "success"; ``original`` is the header
    block (``full`` false) or the whole original message (``full`` true).
    """
    subject, intro = _WORDING[kind]
    boundary = boundary or f"{notice_id}.{secrets.token_hex(8)}/{hostname}"
    until = _date(retry_until) if retry_until else "the message expires"
    crlf = "\r\n"

    human = [f"This is the mail system at host {hostname}.", ""]
    human += _wrap(intro.format(until=until))
    human += ["", "                   The mail system", ""]
    for e in entries:
        r = e.recipient
        why = r.last_error or r.diagnostic or e.action
        human += _wrap(f"<{r.address}>: {why}", indent="    ")
        human.append("")

    status = [f"Reporting-MTA: dns; {hostname}"]
    if env.params.get("ENVID"):
        status.append(f"Original-Envelope-Id: {env.params['ENVID']}")
    status.append(f"X-Smtprs-Queue-ID: {env.queue_id}")
    if env.sender:
        status.append(f"X-Smtprs-Sender: {_addr_field(env.sender)}")
    status.append(f"Arrival-Date: {_date(env.arrival)}")
    for e in entries:
        r = e.recipient
        status.append("")
        orcpt = r.params.get("ORCPT")
        if orcpt:
            kind_, _, value = orcpt.partition(";")
            status.append(f"Original-Recipient: {kind_.strip()};{value}")
        status.append(f"Final-Recipient: {_addr_field(r.address)}")
        status.append(f"Action: {e.action}")
        status.append(f"Status: {_status(r, e.action)}")
        if r.remote_mta:
            status.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.diagnostic:
            status.append(f"Diagnostic-Code: smtp; {_one_line(r.diagnostic)}")
        elif e.action in ("failed", "delayed") and r.last_error:
            status.append(f"Diagnostic-Code: X-smtprs; {_one_line(r.last_error)}")
        if r.last_attempt:
            status.append(f"Last-Attempt-Date: {_date(r.last_attempt)}")
        if e.action == "delayed" and retry_until:
            status.append(f"Will-Retry-Until: {_date(retry_until)}")

    eight_bit = not original.isascii() or not "".join(status + human).isascii()
    head = [
        f"Date: {_date(now)}",
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{env.sender}>",
        f"Subject: {subject}",
        f"Message-ID: <{notice_id}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;{crlf}\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Transfer-Encoding: {'8bit' if not ''.join(human).isascii() else '7bit'}",
        "",
        *human,
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        *status,
        "",
    ]
    out = (crlf.join(head) + crlf).encode("utf-8")
    if kind != "success":
        if full:
            part = ["Content-Description: Undelivered Message", "Content-Type: message/rfc822"]
        else:
            part = ["Content-Description: Undelivered Message Headers", "Content-Type: text/rfc822-headers"]
        if not original.isascii():
            part.append("Content-Transfer-Encoding: 8bit")
        out += (f"--{boundary}{crlf}" + crlf.join(part) + crlf + crlf).encode()
        out += original
        if original and not original.endswith(b"\r\n"):
            out += b"\r\n"
        out += b"\r\n"
    out += f"--{boundary}--{crlf}".encode()
    return out


def _status(r: Recipient, action: str) -> str:
    code = r.status
    want = {"failed": "5", "delayed": "4", "delivered": "2", "relayed": "2"}[action]
    if action == "failed" and code == EXPIRED:
        return code  # delivery time expired: the usual 4.4.7 with Action: failed
    if action == "failed" and code.startswith("4."):
        return "5" + code[1:]
    if not code or code[0] != want:
        return {"failed": "5.0.0", "delayed": "4.0.0", "delivered": "2.0.0", "relayed": "2.0.0"}[action]
    return code


def _wrap(text: str, indent: str = "") -> list[str]:
    out: list[str] = []
    for para in text.split("\n"):
        if not para:
            out.append("")
            continue
        out += textwrap.wrap(
            para, 76, initial_indent=indent, subsequent_indent=indent, break_long_words=True, break_on_hyphens=False
        ) or [""]
    return out


class Notifier:
    """Sends the notices an envelope owes; called by the scheduler after each attempt."""

    def __init__(self, cfg: Config, hostname: str, spool: SpoolBackend, submit: Callable[[Envelope], None]) -> None:
        self.cfg = cfg
        self.hostname = hostname
        self.spool = spool
        self.submit = submit

    def owes_delay_notice(self, env: Envelope, r: Recipient, now: float) -> bool:
        wait = self.cfg.queue.delay_warning
        if not wait or not env.sender or r.final or r.delay_notified:
            return False
        notify = r.notify
        if notify and "DELAY" not in notify:
            return False
        return now - env.arrival >= wait

    async def send(self, env: Envelope, now: float) -> bool:
        """Queue every notice ``env`` owes; mark them sent in ``env`` (not saved
        here).  Returns True if anything changed.  Raises SpoolError when a
        notice cannot be queued (what was not sent stays owed)."""
        changed = False
        groups: dict[str, list[Entry]] = {"failed": [], "success": [], "delayed": []}
        for r in env.recipients:
            if r.notice == "failed":
                groups["failed"].append(Entry(r, "failed"))
            elif r.notice in ("delivered", "relayed"):
                groups["success"].append(Entry(r, r.notice))
            elif self.owes_delay_notice(env, r, now):
                groups["delayed"].append(Entry(r, "delayed"))
        for kind, entries in groups.items():
            if not entries:
                continue
            if not env.sender:  # never a notice to <> (RFC 3461 6.2, RFC 5321 6.1)
                maillog.no_notice(env.queue_id, "the sender is <>")
            else:
                await self._queue_notice(env, entries, kind, now)
            for e in entries:
                if kind == "delayed":
                    e.recipient.delay_notified = True
                else:
                    e.recipient.notice = ""
            changed = True
        return changed

    async def _queue_notice(self, env: Envelope, entries: list[Entry], kind: str, now: float) -> None:
        q = self.cfg.queue
        full = kind == "failed" and env.params.get("RET", "").upper() == "FULL" and env.size <= q.bounce_size_limit
        original = await trio.to_thread.run_sync(_read_original, self.spool.content(env.queue_id), full)
        writer = self.spool.create()
        try:
            data = build_dsn(
                env,
                entries,
                kind,
                hostname=self.hostname,
                notice_id=writer.queue_id,
                original=original,
                full=full,
                now=now,
                retry_until=env.arrival + q.max_lifetime if kind == "delayed" else None,
            )
            writer.write(data)
        except BaseException:
            self.spool.abort(writer)
            raise
        params: dict[str, str] = {}
        if not data.isascii():
            params["BODY"] = "8BITMIME"
        if not env.sender.isascii():
            params["SMTPUTF8"] = ""
        notice = Envelope(
            queue_id=writer.queue_id,
            sender="",
            recipients=[Recipient(env.sender)],
            arrival=now,
            size=writer.size,
            protocol="local",
            params=params,
        )
        await self.spool.commit(writer, notice)  # raises SpoolError; the notice stays owed
        maillog.notice(
            env.queue_id,
            {"success": "success", "delayed": "delay", "failed": "non-delivery"}[kind],
            env.sender,
            notice.queue_id,
            [e.recipient.address for e in entries],
        )
        self.submit(notice)


def _read_original(content: Content, full: bool) -> bytes:
    """The whole message, or its header block (read until the blank line)."""
    try:
        with content.open() as fh:
            if full:
                return fh.read()
            data = b""
            while chunk := fh.read(64 * 1024):
                data += chunk
                if b"\r\n\r\n" in data or data.startswith(b"\r\n"):
                    break
            return header_block(data)
    except FileNotFoundError:
        return b""


__all__ = ["Entry", "Notifier", "build_dsn", "header_block", "SpoolError"]
