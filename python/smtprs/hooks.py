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
- ``on_message(session, message)`` at the end of the data, before the
  commit that earns the 250 (and after the milters): ``message`` (a
  ``Message``) shows the envelope and the staged content, and its methods
  ask for changes -- header fields added, inserted, changed or deleted, a
  new body, recipients added or removed, a new sender, quarantine -- that
  are collected in one ``rewrite.Edit`` and applied by ``rewrite.apply``
  (smtpd/hookdata.py) once the hook returns None (or a 2xx).  A refusal
  drops the changes and the message.  The changed message is what is
  committed: durable before the 250, never half of it.
- ``on_data(session, envelope, content)`` after ``on_message`` (its changes
  applied), before the commit: ``content.open()`` reads the message as it
  will be committed (our Received header first), ``content.headers()`` gives
  its parsed header fields.  A reply rejects the message, which is then
  never committed (nothing was durable yet).
- ``on_disconnect(session)`` when the session ends, however it ends.
- ``on_delivered(envelope, recipient)`` / ``on_bounced(envelope, recipient)``
  when a recipient reaches its final state (failed includes expired);
  ``on_deferred(envelope, recipient)`` each time an attempt defers it.

Hooks run in the server's Trio task: they may await, but every moment they
take delays the session (or the queue) that called them.  An exception in a
hook is logged (with the queue id when the hook was given an envelope or a
message) and answered 451 4.3.0 (SMTP stages, AUTH included; at the end of
the data the message is dropped, its spool writer aborted) or ignored
(outcomes, on_disconnect).  on_message and on_data are not called for LMTP
data (delivered at once, never queued) nor for POP3.

``smtprs serve`` loads hooks from the configuration's ``hooks =
"package.module:factory"`` in every worker process (``load``): the factory is
called with no arguments and must return a ``Hooks``.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from email.message import EmailMessage

from . import _core
from .content import Content
from .envelope import Envelope, Recipient
from .errors import ConfigError
from .reply import Reply
from .rewrite import AddHeader, ChangeHeader, Edit, InsertHeader


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


class Message:
    """What ``on_message`` is given: the message as received, and the changes
    the hook asks for.

    ``envelope`` is a copy of the envelope (queue id, sender, recipients,
    client): changing it changes nothing, use the methods.  ``content`` is
    the staged content (``content.open()``, ``content.headers()``), as the
    milters left it.  The methods collect one ``rewrite.Edit`` (``changes``),
    applied in the order asked once the hook returns; they check their
    arguments and raise ValueError (an address: smtprs.AddressError) at
    once, so a mistake fails the hook (451 4.3.0) instead of the message.

    Header fields follow the milter semantics (rewrite.py): ``add_header``
    appends a field, ``insert_header(0, ...)`` puts one at the top (above
    our Received field), ``change_header(name, value, index)`` replaces the
    index-th field of that name (from 1; names without case; a missing one
    is added), ``delete_header(name, index)`` removes it.  A value may be
    folded with "\\n" (a tab is put before a continuation line that does not
    start with white space); it may not hold a CR alone or a NUL."""

    def __init__(self, envelope: Envelope, content: Content) -> None:
        self.envelope = copy.deepcopy(envelope)
        self.content = content
        self.changes = Edit()

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id

    def headers(self) -> EmailMessage:
        """``content.headers()``: the parsed header fields (email.message.EmailMessage)."""
        return self.content.headers()

    def add_header(self, name: str, value: str) -> None:
        self.changes.headers.append(AddHeader(_field_name(name), _field_value(value)))

    def insert_header(self, index: int, name: str, value: str) -> None:
        if not isinstance(index, int) or index < 0:
            raise ValueError(f"insert_header: index must be an int >= 0, not {index!r}")
        self.changes.headers.append(InsertHeader(index, _field_name(name), _field_value(value)))

    def change_header(self, name: str, value: str, index: int = 1) -> None:
        """Replace the index-th ``name`` field (from 1) by ``value``; added if missing.
        An empty value deletes the field (as ``delete_header``)."""
        self.changes.headers.append(ChangeHeader(_field_index(index), _field_name(name), _field_value(value)))

    def delete_header(self, name: str, index: int = 1) -> None:
        self.changes.headers.append(ChangeHeader(_field_index(index), _field_name(name), ""))

    def replace_body(self, body: bytes) -> None:
        """The new body (everything after the header block); any line ends, stored as CRLF."""
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise ValueError(f"replace_body: bytes expected, not {type(body).__name__}")
        self.changes.body = bytes(body)

    def add_recipient(self, address: str) -> None:
        """One more recipient (routed as at RCPT: aliases expanded; relaying allowed)."""
        self.changes.rcpt_add.append(_address(address, null=False))

    def remove_recipient(self, address: str) -> None:
        """Remove a recipient, named as the client gave it at RCPT or as its final
        address (after aliases); names without case.  Removing every one discards
        the message (answered 250, logged, kept nowhere)."""
        self.changes.rcpt_del.append(_address(address, null=False))

    def change_sender(self, address: str) -> None:
        """The new envelope sender ("" for the null sender)."""
        self.changes.sender = _address(address, null=True)

    def quarantine(self, reason: str) -> None:
        """Accept the message onto the hold queue (``smtprs queue release`` sends it)."""
        self.changes.quarantine = str(reason) or "quarantined by a hook"


def _field_name(name: str) -> str:
    if not isinstance(name, str) or not name or any(not 33 <= ord(c) <= 126 or c == ":" for c in name):
        raise ValueError(f"not a header field name: {name!r}")
    return name


def _field_value(value: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"a header field value is a str, not {type(value).__name__}")
    if "\0" in value or "\r" in value.replace("\r\n", ""):
        raise ValueError(f"a header field value may not hold a NUL or a CR alone: {value!r}")
    return value


def _field_index(index: int) -> int:
    if not isinstance(index, int) or index < 1:
        raise ValueError(f"a header field index counts from 1, not {index!r}")
    return index


def _address(address: str, null: bool) -> str:
    """``address`` checked as the Rust parser checks a path (AddressError if it is none)."""
    if not isinstance(address, str):
        raise ValueError(f"an address is a str, not {type(address).__name__}")
    if null and address == "":
        return ""
    return _core.parse_path(f"<{address}>", smtputf8=True, allow_null=False).address()


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

    async def on_message(self, session: SessionInfo, message: Message) -> Reply | None:
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
    "on_message",
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
