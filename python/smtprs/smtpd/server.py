"""The running server: listeners, sessions and the queue, in one Trio nursery.

``serve(cfg)`` opens the spool, starts the scheduler (which picks up mail left
in the spool by an earlier run) and the SMTP delivery agent (whose idle
connections live in its own task), opens the control socket
(queue/control.py), binds every listener and serves sessions until
cancelled.  ``build(cfg)`` makes what sessions share: the TLS context
(loaded once; a bad certificate stops the start with a ConfigError), the
users file and failure delays of AUTH, the relay/sender policy, the delivery
agents and the notifier (bounce.py).  Binding happens before
``task_status.started()``, which
returns the bound addresses, so callers (tests) can use port 0.

Metrics (metrics.py) are counted in ``ctx.metrics``; worker 0 serves them
over HTTP when ``metrics.enabled`` (metrics_http.py), every worker returns
its own through the control socket's STATS.  ``hooks`` (smtpd/hooks.py) are
the library's: given to ``serve`` by a program that embeds the server.

Resource policy: each connection runs in its own task and closes its stream in
``finally``; running out of file descriptors while accepting is logged and
waited out by ``trio.serve_listeners``; a session over ``max_connections``
gets 421 and is closed; an unexpected exception in a session is logged and
ends that session only.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import ssl
from dataclasses import dataclass, field
from functools import partial

from pathlib import Path

import trio

from .. import maillog, metrics_http
from ..bounce import Notifier
from ..config import POP3_MODES, SUBMISSION_MODES, Config, Listener, parse_host_port
from ..deliver.base import DeliveryAgent
from ..deliver.lmtp import LmtpAgent
from ..deliver.maildir import MaildirAgent
from ..deliver.mbox import MboxAgent
from ..deliver.smtp import SmtpAgent
from ..errors import ListenError, SpoolError
from ..metrics import Metrics
from ..queue import control
from ..queue.scheduler import Scheduler
from ..queue.spool import Spool
from ..retrieve.pop3 import Pop3Context, Pop3Session
from ..route.router import Router
from . import tls as tls_mod
from .auth import Authenticator, FailureDelays, UsersFile, UsersFileError
from .hooks import Hooks
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
    smtp: SmtpAgent
    agents: dict[str, DeliveryAgent] = field(default_factory=dict)  # by next-hop kind
    pop3: Pop3Context | None = None
    active_sessions: int = 0
    bound: list[tuple[str, int, str]] = field(default_factory=list)  # (address, port, mode) of each listening socket
    metrics: Metrics = field(default_factory=Metrics)
    hooks: Hooks | None = None
    schedulers: list[Scheduler] = field(default_factory=list)  # ours first, then those of orphaned shards
    metrics_address: tuple[str, int] | None = None  # where the metrics endpoint listens, when it does


def _watch(ctx: ServerContext) -> None:
    """The gauges, read at each scrape."""
    m = ctx.metrics
    m.gauge("smtprs_sessions_active", lambda: ctx.active_sessions)
    m.gauge("smtprs_queue_messages", lambda: sum(s.spool.count for s in ctx.schedulers))
    m.gauge("smtprs_queue_held_messages", lambda: sum(len(s.held) for s in ctx.schedulers))
    m.gauge("smtprs_queue_active_deliveries", lambda: sum(len(s._active) for s in ctx.schedulers))
    m.gauge("smtprs_queue_oldest_age_seconds", lambda: max((s.stats()["oldest_age"] for s in ctx.schedulers), default=0.0))


def build(cfg: Config, shard: int = 0, hooks: Hooks | None = None) -> ServerContext:
    hostname = cfg.host_name
    spool = Spool(shard_path(cfg, shard), fsync=cfg.queue.fsync)
    router = Router(cfg)
    smtp = SmtpAgent(cfg, hostname)
    agents: dict[str, DeliveryAgent] = {
        "maildir": MaildirAgent(hostname, fsync=cfg.queue.fsync),
        "mbox": MboxAgent(lock_timeout=cfg.local.lock_timeout, fsync=cfg.queue.fsync),
        "lmtp": LmtpAgent(hostname, timeout=cfg.local.lmtp_timeout),
        "smtp": smtp,
    }
    scheduler = Scheduler(cfg, spool, router, agents)
    scheduler.notifier = Notifier(cfg, hostname, spool, scheduler.submit)
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
        smtp=smtp,
        agents=agents,
        hooks=hooks,
    )
    ctx.schedulers.append(scheduler)
    scheduler.metrics = ctx.metrics
    scheduler.hooks = hooks
    _watch(ctx)
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


def shard_path(cfg: Config, shard: int) -> Path:
    return cfg.spool_path / f"shard-{shard}"


def owned_shards(cfg: Config, worker: int, workers: int) -> list[int]:
    """The spool shards worker ``worker`` of ``workers`` delivers from: its own,
    and those left by an earlier run with more workers (shard s goes to worker s mod N)."""
    found = set()
    if cfg.spool_path.is_dir():
        for p in cfg.spool_path.iterdir():
            name = p.name
            if p.is_dir() and name.startswith("shard-") and name[6:].isdigit():
                found.add(int(name[6:]))
    return [worker] + sorted(s for s in found if s >= workers and s % workers == worker)


def lock_shard(path: Path) -> int:
    """Hold an exclusive lock on a spool shard for the life of the process, so two
    servers never deliver from one shard. Returns the lock's fd; raises SpoolError."""
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolError(f"spool shard {path} is in use by another smtprs process") from None
    return fd


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


async def serve(
    cfg: Config,
    *,
    worker: int = 0,
    workers: int = 1,
    hooks: Hooks | None = None,
    task_status: trio.TaskStatus[ServerContext] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve as worker ``worker`` of ``workers`` (see supervisor.py); with more
    than one worker the listening sockets are opened with SO_REUSEPORT, so the
    kernel spreads connections over the workers."""
    shards = owned_shards(cfg, worker, workers)
    locks = [lock_shard(shard_path(cfg, shards[0]))]  # our own shard: refuse to start without it
    ctx = build(cfg, shards[0], hooks)
    extra: list[Scheduler] = []
    for s in shards[1:]:
        try:
            locks.append(lock_shard(shard_path(cfg, s)))
        except SpoolError as e:
            maillog.warning(str(e))
            continue
        maillog.warning(f"worker {worker}: delivering what is left in spool shard {s}")
        extra.append(Scheduler(cfg, Spool(shard_path(cfg, s), fsync=cfg.queue.fsync), ctx.router, ctx.scheduler.agents))
        extra[-1].notifier = Notifier(cfg, ctx.hostname, extra[-1].spool, extra[-1].submit)
        extra[-1].metrics = ctx.metrics
        extra[-1].hooks = hooks
        ctx.schedulers.append(extra[-1])
    _check_users(ctx)
    # Bind every listener first, so a port in use fails the start with one clear error.
    bound: list[list[trio.SocketListener]] = []
    for lst in cfg.smtpd.listeners:
        host, port = parse_host_port(lst.address, "smtpd.listeners")
        bind_host = None if host in ("*", "") else host
        try:
            if workers > 1:
                bound.append(await _reuseport_listeners(bind_host, port))
            else:
                bound.append(await trio.open_tcp_listeners(port, host=bind_host))
        except OSError as e:
            for group in bound:
                for tl in group:
                    await tl.aclose()
            raise ListenError(f"cannot listen on {lst.address}: {e.strerror or e}") from e
    try:
        async with trio.open_nursery() as nursery:
            # the control socket first: it refuses to start when another server uses this data directory
            await nursery.start(partial(control.serve, cfg.control_socket_for(worker), [ctx.scheduler, *extra], stats=ctx.metrics.snapshot))
            if cfg.metrics.enabled and worker == 0:
                ctx.metrics_address = await nursery.start(metrics_http.serve, cfg, ctx.metrics, worker == 0 and workers > 1)
            await nursery.start(ctx.smtp.run)
            await nursery.start(ctx.scheduler.run)
            for sched in extra:
                await nursery.start(sched.run)
            for lst, listeners in zip(cfg.smtpd.listeners, bound):
                for tl in listeners:
                    sockname = tl.socket.getsockname()
                    addr = f"[{sockname[0]}]:{sockname[1]}" if tl.socket.family == socket.AF_INET6 else f"{sockname[0]}:{sockname[1]}"
                    ctx.bound.append((sockname[0], sockname[1], lst.mode))
                    maillog.listening(addr, lst.mode)
                nursery.start_soon(trio.serve_listeners, _handler(ctx, lst), listeners)
            task_status.started(ctx)
    finally:
        ctx.spool.close()
        for sched in extra:
            sched.spool.close()
        for fd in locks:
            os.close(fd)


async def _reuseport_listeners(host: str | None, port: int) -> list[trio.SocketListener]:
    """Like trio.open_tcp_listeners, with SO_REUSEPORT on every socket."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners = []
    try:
        for family, type_, proto, _, sockaddr in infos:
            sock = trio.socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(sockaddr)
                sock.listen(4096)
            except OSError:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except OSError:
        for tl in listeners:
            await tl.aclose()
        raise
    return listeners


def _handler(ctx: ServerContext, listener: Listener):  # type: ignore[no-untyped-def]
    async def handle(stream: trio.SocketStream) -> None:
        ctx.metrics.inc("smtprs_connections_total", mode=listener.mode)
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
