"""What an SMTP or LMTP session is given: ``SessionContext``, and the ``Runtime``
that outlives a reload.

The composition root (daemon.py) builds one ``SessionContext`` per
configuration and hands it to every session it starts; a reload makes a new
one and sessions already open keep theirs.  It holds only what a session uses
-- the configuration, the spool it writes to (through the backend interface),
the router it asks at RCPT, the hand-off to the scheduler and its flow
control, TLS, AUTH, policy, hooks, metrics -- and not the process around it (no scheduler, no listeners),
so this package never imports the daemon.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ..config import Config
from ..deliver.base import DeliveryAgent
from ..envelope import Envelope
from ..hooks import Hooks
from ..mailauth.dkim import Signer
from ..mailauth.inbound import Checker
from ..metrics import Metrics
from ..milter.driver import Settings as MilterSettings
from ..queue.backend import SpoolBackend
from ..reply import Reply
from ..route.router import Router
from ..screen.greylist import Greylist
from ..screen.greylist import Store as GreylistStore
from .auth import Authenticator, FailureDelays
from .limits import ClientLimits
from .policy import Policy


class OpenSession(Protocol):
    """What the shutdown needs of an open session."""

    @property
    def idle(self) -> bool: ...

    def shutdown_notice(self) -> None: ...


@dataclass
class Runtime:
    """What outlives a configuration reload: open sessions, per-client counts, shutdown state."""

    sessions: set[OpenSession] = field(default_factory=set)
    other_sessions: int = 0  # POP3 sessions (they count towards smtpd.max_connections too)
    limits: ClientLimits = field(default_factory=ClientLimits)
    greylist: GreylistStore | None = None  # the greylisting database, opened on first use (screen/greylist.py)
    closing: bool = False
    drain_deadline: float = math.inf
    all_closed: trio.Event = field(default_factory=trio.Event)

    @property
    def active_sessions(self) -> int:
        return len(self.sessions) + self.other_sessions

    def add(self, session: OpenSession) -> None:
        self.sessions.add(session)

    def discard(self, session: OpenSession) -> None:
        self.sessions.discard(session)
        if self.closing and not self.sessions:
            self.all_closed.set()


class Flow(Protocol):
    """The scheduler's flow control as a session sees it (queue.in_flow_delay):
    is delivery behind, and a wait until it has caught up (bounded by the caller)."""

    def behind(self) -> bool: ...

    async def caught_up(self) -> None: ...


# After a message is committed: log it as queued and give it to the scheduler
# (the envelope, the client as logged, the AUTH user).  A null spool wires a
# hand-off that does nothing: nothing was kept.
HandOff = Callable[[Envelope, str, "str | None"], None]


@dataclass(frozen=True)
class SessionContext:
    """What every session of one configuration shares."""

    cfg: Config
    hostname: str
    spool: SpoolBackend
    router: Router
    hand_off: HandOff
    tls: ssl.SSLContext | None
    authenticator: Authenticator
    auth_delays: FailureDelays
    policy: Policy
    runtime: Runtime
    metrics: Metrics
    agents: dict[str, DeliveryAgent]  # by next-hop kind: the LMTP listener delivers at once
    hooks: Hooks | None = None
    flow: Flow | None = None  # None: nothing is queued (the null spool), so MAIL never waits
    dkim: Signer | None = None  # DKIM signing (dkim.keys), None when no key is configured
    mailauth: Checker | None = None  # inbound SPF/DKIM/ARC/DMARC on mx listeners (mailauth.enabled), else None
    # the milters of each listener that has some, by listener address (empty: no milter anywhere)
    milters: dict[str, MilterSettings] = field(default_factory=dict)
    greylist: Greylist | None = None  # screen.greylist on mx listeners, None when off

    @property
    def active_sessions(self) -> int:
        return self.runtime.active_sessions


class SessionView(Protocol):
    """What the session's parts (greeting.py, transaction.py, intake.py) read of
    the session that holds them; each part's own Protocol adds what it changes."""

    @property
    def ctx(self) -> SessionContext: ...
    @property
    def id(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def peer_ip(self) -> str: ...
    @property
    def submission(self) -> bool: ...
    @property
    def lmtp(self) -> bool: ...
    @property
    def auth_user(self) -> str | None: ...
    @property
    def hooks(self) -> Hooks | None: ...

    def reply(self, r: Reply) -> None: ...

    async def ask_hook(self, name: str, *args: object) -> Reply | None: ...
