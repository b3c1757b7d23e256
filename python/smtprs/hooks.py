"""Hooks: how Python code takes part in each session and in the queue.

A ``Hooks`` is a plain base class whose async methods all do nothing (they
return ``None``); subclass it and override the ones you need.  ``Hooks()``
itself is a valid hooks object that changes nothing.  Each SMTP-stage hook
returns ``None`` to go on as the server would, or a ``Reply`` to answer
instead (a 4xx or 5xx rejects; a 2xx is taken as "accept", the server then
answering as usual).  The session calls them (smtpd/session.py, with the
AUTH exchange in smtpd/auth.py), the scheduler calls ``on_delivered``,
``on_bounced`` and ``on_deferred`` (queue/scheduler.py) once the outcome is
on disk.  Only the methods a class overrides are called (``overrides``), so
the engine's fast path (EHLO and MAIL answered in the core) stays on for a
hooks class that does not look at them.

- ``on_connect(session)`` before the greeting: a reply is sent and the
  connection closed (use 554 or 421).
- ``on_helo(session, name)`` for HELO, EHLO and LHLO.
- ``on_auth(session, mechanism, username, password)`` for AUTH (an external
  authentication back end): True accepts, False refuses (535 after the
  failure delay), None asks the users file as without the hook.
- ``on_mail(session, sender)`` after the server's own checks of MAIL;
  ``sender`` is "" for the null sender ``<>``.
- ``on_rcpt(session, sender, recipient)`` for every RCPT: after the
  server's own checks (relaying, unknown users) accepted it, and also when
  they refused it -- then ``session.refused`` is their reply, and the hook
  may answer ``PERMIT`` (or any ``Permit``) to accept the recipient anyway
  (logged); otherwise the refusal stands.
- ``on_data(session, envelope, content)`` after the message is durably
  spooled and before the 250: ``content.open()`` reads it (our Received
  header first), ``content.headers()`` gives its parsed header fields.  A
  reply rejects the message, which is then removed from the spool; if the
  server dies while the hook runs, the message is delivered at the next
  start (it was already spooled).
- ``on_disconnect(session)`` when the session ends, however it ends.
- ``on_delivered(envelope, recipient)`` / ``on_bounced(envelope, recipient)``
  when a recipient reaches its final state (failed includes expired);
  ``on_deferred(envelope, recipient)`` each time an attempt defers it.

Hooks run in the server's Trio task: they may await, but every moment they
take delays the session (or the queue) that called them.  An exception in a
hook is logged (with the queue id when the hook was given an envelope) and
answered 451 4.3.0 (SMTP stages, AUTH included) or ignored (outcomes,
on_disconnect).  Not called for LMTP data (delivered at once, never queued)
nor for POP3.

``smtprs serve`` loads hooks from the configuration's ``hooks =
"package.module:factory"`` in every worker process (``load``): the factory is
called with no arguments and must return a ``Hooks``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .content import Content
from .envelope import Envelope, Recipient
from .errors import ConfigError
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
    # on_rcpt only: the server's own refusal of this recipient (relay denied,
    # unknown user, ...), None when its checks accepted it
    refused: Reply | None = None


@dataclass(frozen=True, slots=True)
class Permit(Reply):
    """A 2xx reply from ``on_rcpt`` that accepts a recipient the server's own
    checks refused.  ``PERMIT`` is the usual one; the reply sent is this one."""

    code: int = 250
    enhanced: str | None = "2.1.5"
    text: str | tuple[str, ...] = "Ok"

    def __post_init__(self) -> None:
        if not 200 <= self.code < 300:
            raise ValueError(f"a Permit is a 2xx reply, not {self.code}")


PERMIT = Permit()


class Hooks:
    """Override the hooks you need; the defaults do nothing (they accept)."""

    async def on_connect(self, session: SessionInfo) -> Reply | None:
        return None

    async def on_helo(self, session: SessionInfo, name: str) -> Reply | None:
        return None

    async def on_auth(self, session: SessionInfo, mechanism: str, username: str, password: str) -> bool | None:
        return None

    async def on_mail(self, session: SessionInfo, sender: str) -> Reply | None:
        return None

    async def on_rcpt(self, session: SessionInfo, sender: str, recipient: str) -> Reply | None:
        return None

    async def on_data(self, session: SessionInfo, envelope: Envelope, content: Content) -> Reply | None:
        return None

    async def on_disconnect(self, session: SessionInfo) -> None:
        return None

    async def on_delivered(self, envelope: Envelope, recipient: Recipient) -> None:
        return None

    async def on_bounced(self, envelope: Envelope, recipient: Recipient) -> None:
        return None

    async def on_deferred(self, envelope: Envelope, recipient: Recipient) -> None:
        return None


HOOK_NAMES = (
    "on_connect",
    "on_helo",
    "on_auth",
    "on_mail",
    "on_rcpt",
    "on_data",
    "on_disconnect",
    "on_delivered",
    "on_bounced",
    "on_deferred",
)


def overrides(hooks: Hooks | None, name: str) -> bool:
    """Does ``hooks`` (its class) define hook ``name`` other than as the do-nothing default?"""
    return hooks is not None and getattr(type(hooks), name, None) is not getattr(Hooks, name)


class HookFailed(Exception):
    """A hook raised or answered something it may not (logged where it happened)."""


HOOK_FAILED = Reply(451, "4.3.0", "Error: local policy hook failed")


def load(spec: str) -> Hooks:
    """The hooks object that ``spec`` ("package.module:factory") makes: the
    module imported, the factory (a callable, e.g. a ``Hooks`` subclass, or
    a dotted attribute path inside the module) called with no arguments.
    Raises ConfigError naming the key ``hooks`` when any step fails."""
    module_name, sep, attr = spec.strip().partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f'hooks: expected "package.module:factory", got {spec!r}')
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or anything the module raised while importing
        raise ConfigError(f"hooks: cannot import {module_name}: {type(e).__name__}: {e}") from None
    factory: object = module
    for part in attr.split("."):
        try:
            factory = getattr(factory, part)
        except AttributeError:
            raise ConfigError(f"hooks: {module_name} has no {attr}") from None
    if not callable(factory):
        raise ConfigError(f"hooks: {spec} is not callable (a factory or a Hooks subclass)")
    try:
        made = factory()
    except Exception as e:
        raise ConfigError(f"hooks: {spec}() failed: {type(e).__name__}: {e}") from None
    if not isinstance(made, Hooks):
        raise ConfigError(f"hooks: {spec}() returned a {type(made).__name__}, not a smtprs.Hooks")
    return made
