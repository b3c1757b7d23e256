"""Hooks: how a Python program that embeds smtprs takes part in each session.

A ``Hooks`` is a typed ``Protocol`` whose async methods all have defaults
that accept; subclass it and override the ones you need.  Each SMTP-stage
hook returns ``None`` to go on as the server would, or a ``Reply`` to answer
instead (a 4xx or 5xx rejects; a 2xx is taken as "accept", the server then
answering as usual).  The session calls them (smtpd/session.py), the
scheduler calls ``on_delivered`` and ``on_bounced`` (queue/scheduler.py) once
the outcome is on disk.

- ``on_connect(session)`` before the greeting: a reply is sent and the
  connection closed (use 554 or 421).
- ``on_helo(session, name)`` for HELO, EHLO and LHLO.
- ``on_mail(session, sender)`` after the server's own checks of MAIL;
  ``sender`` is "" for the null sender ``<>``.
- ``on_rcpt(session, sender, recipient)`` after the server's own checks of
  RCPT (relaying, unknown users).
- ``on_data(session, envelope, content)`` after the message is durably
  spooled and before the 250: ``content.open()`` reads it (our Received
  header first).  A reply rejects the message, which is then removed from
  the spool; if the server dies while the hook runs, the message is
  delivered at the next start (it was already spooled).
- ``on_delivered(envelope, recipient)`` / ``on_bounced(envelope, recipient)``
  when a recipient reaches its final state (failed includes expired).

Hooks run in the server's Trio task: they may await, but every moment they
take delays the session (or the queue) that called them.  An exception in a
hook is logged and answered 451 4.3.0 (SMTP stages) or ignored (outcomes).
Not called for LMTP data (delivered at once, never queued) nor for POP3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .content import Content
from .envelope import Envelope, Recipient
from .reply import Reply


@dataclass(frozen=True)
class SessionInfo:
    """What a hook knows of the client: read-only, a fresh value per call."""

    id: str  # the session id in the mail log, "C000042"
    peer_ip: str
    peer_port: int
    mode: str  # the listener's mode: "mx", "submission", ...
    helo_name: str = ""
    tls: str | None = None  # "TLSv1.3 with cipher ..." once TLS is up
    auth_user: str | None = None


class Hooks(Protocol):
    """Override the hooks you need; the defaults accept everything."""

    async def on_connect(self, session: SessionInfo) -> Reply | None:
        return None

    async def on_helo(self, session: SessionInfo, name: str) -> Reply | None:
        return None

    async def on_mail(self, session: SessionInfo, sender: str) -> Reply | None:
        return None

    async def on_rcpt(self, session: SessionInfo, sender: str, recipient: str) -> Reply | None:
        return None

    async def on_data(self, session: SessionInfo, envelope: Envelope, content: Content) -> Reply | None:
        return None

    async def on_delivered(self, envelope: Envelope, recipient: Recipient) -> None:
        return None

    async def on_bounced(self, envelope: Envelope, recipient: Recipient) -> None:
        return None


HOOK_FAILED = Reply(451, "4.3.0", "Error: local policy hook failed")
