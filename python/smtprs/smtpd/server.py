"""The running server: listeners, sessions and the queue, in one Trio nursery.

``serve(cfg)`` opens the spool, starts the scheduler (which picks up mail left
in the spool by an earlier run), binds every listener and serves sessions
until cancelled.  ``build(cfg)`` makes what sessions share: the TLS context
(loaded once; a bad certificate stops the start with a ConfigError), the
users file and failure delays of AUTH, and the relay/sender policy.  Binding happens before ``task_status.started()``, which
returns the bound addresses, so callers (tests) can use port 0.

Resource policy: each connection runs in its own task and closes its stream in
``finally``; running out of file descriptors while accepting is logged and
waited out by ``trio.serve_listeners``; a session over ``max_connections``
gets 421 and is closed; an unexpected exception in a session is logged and
ends that session only.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import dataclass, field

import trio

from .. import maillog
from ..config import POP3_MODES, SUBMISSION_MODES, Config, Listener, parse_host_port
from ..errors import ListenError
from ..deliver.base import DeliveryAgent
from ..deliver.lmtp import LmtpAgent
from ..deliver.maildir import MaildirAgent
from ..deliver.mbox import MboxAgent
from ..envelope import Envelope
from ..queue.scheduler import Scheduler
from ..queue.spool import Spool
from ..retrieve.pop3 import Pop3Context, Pop3Session
from ..route.router import Router
from . import tls as tls_mod
from .auth import Authenticator, FailureDelays, UsersFile, UsersFileError
from .policy import Policy
from .session import Session


@dataclass
class ServerContext:
    """What every session shares: configuration, spool, router, scheduler, TLS, AUTH, policy."""

    cfg: Config
    spool: Spool
    router: Router
    scheduler: Scheduler
    hostname: str
    tls: ssl.SSLContext | None
    authenticator: Authenticator
    auth_delays: FailureDelays
    policy: Policy
    agents: dict[str, DeliveryAgent] = field(default_factory=dict)  # by next-hop kind
    pop3: Pop3Context | None = None
    active_sessions: int = 0
    bound: list[tuple[str, int, str]] = field(default_factory=list)


def build(cfg: Config) -> ServerContext:
    hostname = cfg.host_name
    spool = Spool(cfg.spool_path, fsync=cfg.queue.fsync)
    router = Router(cfg)
    agents: dict[str, DeliveryAgent] = {
        "maildir": MaildirAgent(hostname, fsync=cfg.queue.fsync),
        "mbox": MboxAgent(lock_timeout=cfg.local.lock_timeout, fsync=cfg.queue.fsync),
        "lmtp": LmtpAgent(hostname, timeout=cfg.local.lmtp_timeout),
    }
    scheduler = Scheduler(cfg, spool, router, agents)
    scheduler.on_final_failure = _no_bounce_yet
    a = cfg.smtpd.auth
    ctx = ServerContext(
        cfg,
        spool,
        router,
        scheduler,
        hostname,
        tls=tls_mod.server_context(cfg),
        authenticator=Authenticator(UsersFile(cfg.users_path)),
        auth_delays=FailureDelays(a.failure_delay, a.max_failure_delay, a.failure_window),
        policy=Policy(cfg),
        agents=agents,
    )
    ctx.pop3 = Pop3Context(
        hostname,
        verifier=ctx.authenticator,
        maildir_of=router.maildir_of,
        tls=ctx.tls,
        allow_plaintext=a.allow_plaintext,
        delays=ctx.auth_delays,
        timeout=cfg.pop3.timeout,
        send_timeout=cfg.smtpd.send_timeout,
        handshake_timeout=cfg.smtpd.tls.handshake_timeout,
    )
    return ctx


def _check_users(ctx: ServerContext) -> None:
    """At start: say so in the log if nobody will be able to authenticate."""
    if not any(lst.mode in SUBMISSION_MODES + POP3_MODES for lst in ctx.cfg.smtpd.listeners):
        return
    try:
        users = ctx.authenticator.users.load()
    except UsersFileError as e:
        maillog.warning(f"smtpd.auth.users_file: {e}; AUTH will fail with 454 until it is fixed")
        return
    if not users:
        maillog.warning(f"smtpd.auth.users_file: no users in {ctx.cfg.users_path} (add some with `smtprs passwd add`): nobody can authenticate")


async def _no_bounce_yet(env: Envelope, failed: list[int]) -> None:
    rcpts = ", ".join(env.recipients[i].address for i in failed)
    maillog.warning(f"{env.queue_id}: no bounce sent to <{env.sender}> for {rcpts}: bounces are not implemented yet")


async def serve(cfg: Config, *, task_status: trio.TaskStatus[ServerContext] = trio.TASK_STATUS_IGNORED) -> None:
    ctx = build(cfg)
    _check_users(ctx)
    # Bind every listener first, so a port in use fails the start with one clear error.
    bound: list[list[trio.SocketListener]] = []
    for lst in cfg.smtpd.listeners:
        host, port = parse_host_port(lst.address, "smtpd.listeners")
        bind_host = None if host in ("*", "") else host
        try:
            bound.append(await trio.open_tcp_listeners(port, host=bind_host))
        except OSError as e:
            for group in bound:
                for tl in group:
                    await tl.aclose()
            raise ListenError(f"cannot listen on {lst.address}: {e.strerror or e}") from e
    async with trio.open_nursery() as nursery:
        await nursery.start(ctx.scheduler.run)
        for lst, listeners in zip(cfg.smtpd.listeners, bound):
            for tl in listeners:
                sockname = tl.socket.getsockname()
                addr = f"[{sockname[0]}]:{sockname[1]}" if tl.socket.family == socket.AF_INET6 else f"{sockname[0]}:{sockname[1]}"
                ctx.bound.append((sockname[0], sockname[1], lst.mode))
                maillog.listening(addr, lst.mode)
            nursery.start_soon(trio.serve_listeners, _handler(ctx, lst), listeners)
        task_status.started(ctx)


def _handler(ctx: ServerContext, listener: Listener):  # type: ignore[no-untyped-def]
    async def handle(stream: trio.SocketStream) -> None:
        ctx.active_sessions += 1
        try:
            try:
                peer = stream.socket.getpeername()
            except OSError:
                return
            session: Session | Pop3Session
            if listener.mode in POP3_MODES:
                assert ctx.pop3 is not None
                session = Pop3Session(ctx.pop3, stream, peer[0], peer[1], implicit_tls=listener.mode == "pop3s")
            else:
                session = Session(ctx, stream, peer[0], peer[1], listener)
            try:
                await session.run()
            except Exception as e:  # a bug in one session must not stop the server
                maillog.error(f"{session.id}: session ended by an internal error: {e!r}")
                logging.getLogger("smtprs").debug("session traceback", exc_info=True)
        finally:
            ctx.active_sessions -= 1
            with trio.move_on_after(1):
                await stream.aclose()

    return handle
