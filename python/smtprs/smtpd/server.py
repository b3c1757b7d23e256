"""The running server: listeners, sessions and the queue, and their life cycle.

``Server(cfg, config_path).run()`` opens the spool, starts the scheduler
(which picks up mail left in the spool by an earlier run), binds every
listener and serves sessions until ``stop()``.  ``build(cfg)`` makes what
sessions share (``ServerContext``): the TLS context (loaded once; a bad
certificate stops the start with a ConfigError), the users file and failure
delays of AUTH, the relay/sender policy, and the ``Runtime`` that outlives a
reload (open sessions, per-client counts, the shutdown state).  Binding
happens before ``task_status.started()``, which returns the context, so
callers (tests) can use port 0.

Life cycle (the ``smtprs serve`` command maps signals onto it):

- ``stop()`` (SIGTERM, SIGINT): the listeners are closed at once; sessions
  with no transaction open get 421 4.3.2 and are closed; sessions in the
  middle of one get ``smtpd.shutdown_timeout`` seconds to finish it, and then
  421 4.3.2 (a message whose data is still arriving is not acknowledged and
  not kept).  A few seconds later whatever is left is cancelled; the spool's
  fsyncs finish first (they run in threads that are not abandoned), so
  nothing acknowledged is lost.  ``stop(now=True)`` (a second signal) skips
  the wait.
- ``reload()`` (SIGHUP): the configuration file is read again.  If it loads
  (and its TLS files, and its new listeners bind), new sessions use it and
  sessions already open keep theirs; listeners are added, closed or change
  mode; the scheduler routes queued mail by it; the log is reopened.  Keys
  that need a restart (``data_dir``, ``queue.directory``, ``queue.fsync``,
  ``queue.delivery_concurrency``) keep their running value, with a warning.
  A configuration that does not load is refused with one log line naming the
  key, and the running one stays.

Resource policy: each connection runs in its own task and closes its stream
in ``finally``; running out of file descriptors while accepting is logged and
waited out (as ``trio.serve_listeners`` does); limits on sessions (all, and
per client address) and connection rate are checked by the session, which
answers 421; an unexpected exception in a session is logged and ends that
session only.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from .. import config as config_mod
from .. import maillog
from ..config import SUBMISSION_MODES, Config, parse_host_port
from ..deliver.maildir import MaildirAgent
from ..envelope import Envelope
from ..errors import ConfigError, ListenError
from ..queue.scheduler import Scheduler
from ..queue.spool import Spool
from ..route.router import Router
from . import tls as tls_mod
from .auth import Authenticator, FailureDelays, UsersFile, UsersFileError
from .limits import ClientLimits
from .policy import Policy
from .session import Session

if TYPE_CHECKING:
    from ..config import Listener

# Seconds sessions get, after the shutdown deadline, to send their 421 and close
# before they are cancelled.
SHUTDOWN_GRACE = 5.0

# accept() errors that mean "out of a resource": wait and try again
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass
class Runtime:
    """What outlives a configuration reload: open sessions, per-client counts, shutdown state."""

    sessions: set[Session] = field(default_factory=set)
    limits: ClientLimits = field(default_factory=ClientLimits)
    closing: bool = False
    drain_deadline: float = math.inf
    all_closed: trio.Event = field(default_factory=trio.Event)

    def add(self, session: Session) -> None:
        self.sessions.add(session)

    def discard(self, session: Session) -> None:
        self.sessions.discard(session)
        if self.closing and not self.sessions:
            self.all_closed.set()


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
    runtime: Runtime = field(default_factory=Runtime)
    bound: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def active_sessions(self) -> int:
        return len(self.runtime.sessions)


def build(cfg: Config) -> ServerContext:
    hostname = cfg.host_name
    spool = Spool(cfg.spool_path, fsync=cfg.queue.fsync)
    router = Router(cfg)
    agents = {"local": MaildirAgent(hostname, fsync=cfg.queue.fsync)}
    scheduler = Scheduler(cfg, spool, router, agents)  # type: ignore[arg-type]
    scheduler.on_final_failure = _no_bounce_yet
    a = cfg.smtpd.auth
    return ServerContext(
        cfg,
        spool,
        router,
        scheduler,
        hostname,
        tls=tls_mod.server_context(cfg),
        authenticator=Authenticator(UsersFile(cfg.users_path)),
        auth_delays=FailureDelays(a.failure_delay, a.max_failure_delay, a.failure_window),
        policy=Policy(cfg),
    )


# Keys read once at start: a reload keeps their running values.
_RESTART_ONLY = ("data_dir", "queue.directory", "queue.fsync", "queue.delivery_concurrency")


def _get(cfg: Config, key: str) -> object:
    value: object = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def restart_only_changes(old: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the restart-only keys of ``old``, and the names of those that differed."""
    changed = [k for k in _RESTART_ONLY if _get(old, k) != _get(new, k)]
    queue = dataclasses.replace(
        new.queue, directory=old.queue.directory, fsync=old.queue.fsync, delivery_concurrency=old.queue.delivery_concurrency
    )
    return dataclasses.replace(new, data_dir=old.data_dir, queue=queue), changed


def rebuild(old: ServerContext, cfg: Config) -> ServerContext:
    """A context for ``cfg`` that shares the spool, scheduler, AUTH delays and runtime of ``old``.
    Raises ConfigError (TLS files) without changing anything."""
    tls = tls_mod.server_context(cfg)
    a = cfg.smtpd.auth
    return dataclasses.replace(
        old,
        cfg=cfg,
        router=Router(cfg),
        hostname=cfg.host_name,
        tls=tls,
        authenticator=Authenticator(UsersFile(cfg.users_path)),
        policy=Policy(cfg),
        bound=list(old.bound),
    )


def _check_users(ctx: ServerContext) -> None:
    """At start and reload: say so in the log if nobody will be able to authenticate."""
    if not any(lst.mode in SUBMISSION_MODES for lst in ctx.cfg.smtpd.listeners):
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


@dataclass
class _Bound:
    """One configured listener: its address, current mode, sockets and accept tasks' scope."""

    address: str
    mode: str
    sockets: list[trio.SocketListener]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


async def _bind(address: str) -> list[trio.SocketListener]:
    host, port = parse_host_port(address, "smtpd.listeners")
    bind_host = None if host in ("*", "") else host
    try:
        return await trio.open_tcp_listeners(port, host=bind_host)
    except OSError as e:
        raise ListenError(f"cannot listen on {address}: {e.strerror or e}") from e


def _describe(tl: trio.SocketListener) -> tuple[str, int, str]:
    sockname = tl.socket.getsockname()
    text = f"[{sockname[0]}]:{sockname[1]}" if tl.socket.family == socket.AF_INET6 else f"{sockname[0]}:{sockname[1]}"
    return sockname[0], sockname[1], text


class Server:
    """One server process: the current context, its listeners, and the life cycle above."""

    def __init__(self, cfg: Config, config_path: str | os.PathLike[str] | None = None) -> None:
        self.ctx = build(cfg)
        self.config_path = Path(config_path) if config_path is not None else None
        self._listeners: dict[str, _Bound] = {}
        self._sessions: trio.Nursery | None = None
        self._stop = trio.Event()
        self._stop_now = False
        self._reloading = trio.Lock()
        self.reloads = 0  # configurations taken by reload() (for tests)

    @property
    def runtime(self) -> Runtime:
        return self.ctx.runtime

    # -- running -------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[ServerContext] = trio.TASK_STATUS_IGNORED) -> None:
        ctx = self.ctx
        _check_users(ctx)
        # Bind every listener first, so a port in use fails the start with one clear error.
        bound: list[_Bound] = []
        try:
            for lst in ctx.cfg.smtpd.listeners:
                bound.append(_Bound(lst.address, lst.mode, await _bind(lst.address)))
        except ListenError:
            for b in bound:
                for tl in b.sockets:
                    await tl.aclose()
            raise
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(ctx.scheduler.run)
                async with trio.open_nursery() as sessions:
                    self._sessions = sessions
                    for b in bound:
                        self._start_listener(b)
                    task_status.started(ctx)
                    await self._stop.wait()
                    await self._shut_down()
                    sessions.cancel_scope.cancel()
                nursery.cancel_scope.cancel()  # the scheduler: deliveries are idempotent, the spool durable
        finally:
            self._sessions = None
            ctx.spool.close()

    def _start_listener(self, b: _Bound) -> None:
        assert self._sessions is not None
        self._listeners[b.address] = b
        for tl in b.sockets:
            host, port, text = _describe(tl)
            self.ctx.bound.append((host, port, b.mode))
            maillog.listening(text, b.mode)
            self._sessions.start_soon(self._accept, b, tl)

    async def _accept(self, b: _Bound, tl: trio.SocketListener) -> None:
        with b.scope:
            async with tl:
                while True:
                    try:
                        stream = await tl.accept()
                    except OSError as e:
                        if e.errno in _ACCEPT_CAPACITY_ERRNOS:
                            maillog.accept_capacity(b.address, e.strerror or str(e))
                            await trio.sleep(0.1)
                            continue
                        raise
                    assert self._sessions is not None
                    self._sessions.start_soon(self._handle, stream, b)

    async def _handle(self, stream: trio.SocketStream, b: _Bound) -> None:
        ctx = self.ctx  # the configuration of the moment the connection came in
        try:
            try:
                peer = stream.socket.getpeername()
            except OSError:
                return
            listener = next((lst for lst in ctx.cfg.smtpd.listeners if lst.address == b.address), None)
            session = Session(ctx, stream, peer[0], peer[1], listener)
            try:
                await session.run()
            except Exception as e:  # a bug in one session must not stop the server
                maillog.error(f"{session.id}: session ended by an internal error: {e!r}")
                logging.getLogger("smtprs").debug("session traceback", exc_info=True)
        finally:
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    # -- stopping ------------------------------------------------------------
    def stop(self, *, now: bool = False) -> None:
        """Begin the graceful shutdown (see the module docstring); ``now``: no waiting."""
        if now:
            self._stop_now = True
            self.runtime.drain_deadline = min(self.runtime.drain_deadline, trio.current_time())
            for s in list(self.runtime.sessions):
                s.shutdown_notice()
        self._stop.set()

    async def _shut_down(self) -> None:
        rt = self.runtime
        for b in self._listeners.values():
            b.scope.cancel()  # no new connections; the sockets close
        timeout = 0.0 if self._stop_now else self.ctx.cfg.smtpd.shutdown_timeout
        rt.closing = True
        rt.drain_deadline = min(rt.drain_deadline, trio.current_time() + timeout)
        busy = [s for s in rt.sessions if not s.idle]
        maillog.shutting_down(len(rt.sessions), len(busy), timeout)
        if not rt.sessions:
            rt.all_closed.set()
        for s in list(rt.sessions):
            s.shutdown_notice()
        with trio.move_on_at(rt.drain_deadline + SHUTDOWN_GRACE):
            await rt.all_closed.wait()
        if rt.sessions:
            maillog.warning(f"{len(rt.sessions)} sessions still open {SHUTDOWN_GRACE:.0f}s after the shutdown deadline; cancelled")

    # -- reloading -----------------------------------------------------------
    async def reload(self) -> bool:
        """Read the configuration file again and use it for new sessions; False if refused."""
        async with self._reloading:
            return await self._reload()

    async def _reload(self) -> bool:
        if self.runtime.closing:
            return False
        if self.config_path is None:
            maillog.reload_refused("(embedded default)", "there is no configuration file to read again")
            return False
        old = self.ctx
        added: list[_Bound] = []
        try:
            cfg = config_mod.load(self.config_path)
            cfg, kept = restart_only_changes(old.cfg, cfg)
            ctx = rebuild(old, cfg)
            handler = maillog.make_handler(cfg.log.file)
            wanted = {lst.address: lst.mode for lst in cfg.smtpd.listeners}
            for address, mode in wanted.items():
                if address not in self._listeners:
                    added.append(_Bound(address, mode, await _bind(address)))
        except (ConfigError, ListenError, OSError) as e:
            for b in added:
                for tl in b.sockets:
                    await tl.aclose()
            maillog.reload_refused(str(self.config_path), str(e))
            return False
        # from here on nothing can fail: switch
        maillog.use_handler(handler, cfg.log.level)
        for key in kept:
            maillog.warning(f"reload: {key} changed in {self.config_path}; it takes effect after a restart")
        removed = [b for address, b in self._listeners.items() if address not in wanted]
        for b in removed:
            b.scope.cancel()
            del self._listeners[b.address]
            maillog.listener_closed(b.address)
        for address, b in self._listeners.items():
            b.mode = wanted[address]
        ctx.bound = [(host, port, b.mode) for b in self._listeners.values() for host, port, _ in map(_describe, b.sockets)]
        self.ctx = ctx
        ctx.scheduler.reconfigure(cfg, ctx.router)
        ctx.auth_delays.base = cfg.smtpd.auth.failure_delay
        ctx.auth_delays.maximum = cfg.smtpd.auth.max_failure_delay
        ctx.auth_delays.window = cfg.smtpd.auth.failure_window
        for b in added:
            self._start_listener(b)  # (adds to ctx.bound)
        _check_users(ctx)
        self.reloads += 1
        maillog.reloaded(str(self.config_path), len(self.runtime.sessions), len(added), len(removed))
        return True


async def serve(cfg: Config, *, config_path: str | os.PathLike[str] | None = None, task_status: trio.TaskStatus[ServerContext] = trio.TASK_STATUS_IGNORED) -> None:
    """Run a ``Server`` until it is cancelled (for callers that need no life cycle)."""
    await Server(cfg, config_path).run(task_status=task_status)
