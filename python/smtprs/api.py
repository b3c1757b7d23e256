"""The library API: run the server inside a Trio program, send a message.

``serve(config, hooks)`` runs one smtprs worker (listeners, spool, queue,
control socket, metrics if enabled) in the caller's Trio nursery until
cancelled; ``await nursery.start(smtprs.serve, cfg, hooks)`` returns a
``RunningServer`` once every listener is bound (port 0 in the configuration
gives a free port, read back from ``RunningServer.port()``).  Hooks are
hooks.py's: the ``hooks`` argument, or when it is None those the
configuration's ``hooks = "package.module:factory"`` names (loaded at start;
a ConfigError if they cannot be).  ``smtprs.testing`` runs this in a
background thread for synchronous test code.

``send(sender, recipients, message)`` hands a message to other servers
through smtprs's own SMTP client (deliver/smtp.py), with the same TLS,
timeouts and AUTH settings as the queue (``[relay]``): to a given host, or
by MX lookup for each recipient domain.  It delivers once, now, without a
queue: the caller gets one ``SendResult`` per recipient and decides about
retries.  The content is written to a private temporary file for the time of
the call (the client streams from a file); nothing else is written.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import trio

from . import daemon as _server
from .config import Config, load
from .content import Content
from .deliver.base import DeliveryRequest, Target
from .deliver.smtp import SmtpAgent
from .hooks import Hooks
from .hops import RemoteHop
from .queue.records import new_queue_id


@dataclass(frozen=True)
class RunningServer:
    """What ``serve`` reports once it listens."""

    addresses: tuple[tuple[str, int, str], ...]  # (address, port, listener mode) of each listening socket
    metrics_address: tuple[str, int] | None  # the metrics endpoint, when metrics.enabled
    control_socket: Path  # where `smtprs queue ...` reaches this server

    def port(self, mode: str = "mx") -> int:
        """The port of the first listener of ``mode``."""
        for _, port, m in self.addresses:
            if m == mode:
                return port
        raise LookupError(f"no {mode} listener")


async def serve(
    config: Config | None = None,
    hooks: Hooks | None = None,
    *,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server until cancelled (one worker; ``smtprs serve`` is the way to
    run several).  ``config`` defaults to the embedded configuration.  Raises
    ListenError, SpoolError or ControlError when it cannot start (a port in use,
    another server on the same data directory)."""
    cfg = config if config is not None else load()
    async with trio.open_nursery() as nursery:
        ctx = await nursery.start(partial(_server.serve, cfg, hooks=hooks))
        task_status.started(RunningServer(tuple(ctx.bound), ctx.metrics_address, cfg.control_socket_for(0)))


SendStatus = Literal["delivered", "deferred", "failed"]


@dataclass(frozen=True)
class SendResult:
    recipient: str
    status: SendStatus  # deferred: a temporary failure (4xx, no connection): try again later
    detail: str  # the server's reply or what went wrong: "250 2.0.0 Ok: queued as ..."
    relay: str  # "host[ip]:port", or "none" when no host was reached


async def send(
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    *,
    host: str | None = None,
    port: int | None = None,
    tls: Literal["none", "may", "verify"] | None = None,
    config: Config | None = None,
) -> list[SendResult]:
    """Send ``message`` (RFC 5322 bytes, CRLF or LF line ends) from ``sender``
    ("" for the null sender) to ``recipients``, now, with smtprs's SMTP client.

    ``host`` given: to that host (a name, looked up as A/AAAA, or an IP
    address) on ``port`` (default ``relay.smtp_port``, 25), no MX lookup.
    Otherwise each recipient domain's MX hosts are tried in order.  ``tls``
    overrides ``relay.tls``; ``config`` gives the other client settings (the
    embedded defaults when None).  Returns one result per recipient, in order."""
    cfg = config if config is not None else load()
    agent = SmtpAgent(cfg, cfg.host_name)
    level = tls or cfg.relay.tls
    default_port = port or cfg.relay.smtp_port
    targets = []
    for i, rcpt in enumerate(recipients):
        domain = rcpt.rpartition("@")[2].lower()
        hop = (
            RemoteHop(domain, host, default_port, False, level)
            if host
            else RemoteHop(domain, domain, default_port, True, level)
        )
        targets.append(Target(i, rcpt, hop))
    fd, name = tempfile.mkstemp(prefix="smtprs-send-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(message)
        eight_bit = any(b > 127 for b in message)
        request = DeliveryRequest(
            new_queue_id(),
            sender,
            Content(Path(name), 0, len(message)),
            time.time(),
            tuple(targets),
            len(message),
            {"BODY": "8BITMIME"} if eight_bit else {},
        )
        outcomes = await agent.deliver(request)
    finally:
        os.unlink(name)
    by_index = {o.index: o for o in outcomes}
    return [
        SendResult(t.address, by_index[t.index].status, by_index[t.index].detail, by_index[t.index].relay or "none")
        for t in targets
    ]
