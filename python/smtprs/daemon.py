"""The composition root: builds the process (spool, scheduler, delivery agents,
router, notifier, POP3, metrics), owns its life cycle, reload and spool shards.

The stages (smtpd/, queue/, route/, deliver/, retrieve/) never import this
module; it imports them and wires them together.  Sessions get only the
narrow ``SessionContext`` (smtpd/context.py) it builds; listening and
accepting is smtpd/listen.py's.

``Server(cfg, config_path).run()`` locks and opens its spool shard, starts the
scheduler (which picks up mail left in the spool by an earlier run) and the
SMTP delivery agent (whose idle connections live in its own task), opens the
control socket (queue/control.py), binds every listener and serves sessions
until ``stop()``.  Worker 0 also takes in what ``sendmail`` left in the
pickup directory (queue/pickup.py), at start and every second.
``build(cfg)`` makes what sessions share
(``ServerContext``): the TLS context (loaded once; a bad certificate stops
the start with a ConfigError), the users file and failure delays of AUTH, the
relay/sender policy, the delivery agents and the notifier (bounce.py), and the
``Runtime`` that outlives a reload (open sessions, per-client counts, the
shutdown state).  Binding happens before ``task_status.started()``, which
returns the context, so callers (tests) can use port 0.  As worker K of N
(supervisor.py) the listening sockets have SO_REUSEPORT and the spool is
shard K (plus shards left by an earlier run with more workers).

Metrics (metrics.py) are counted in ``ctx.metrics``; worker 0 serves them
over HTTP when ``metrics.enabled`` (metrics_http.py), every worker returns
its own through the control socket's STATS.  ``hooks`` (hooks.py) are
the library's: given to ``serve`` by a program that embeds the server, or
loaded by ``Server.run`` from the configuration's ``hooks =
"package.module:factory"`` (``hooks.load``) when none is given -- in every
worker, as the supervisor starts each worker as its own ``smtprs serve``
process; a module or factory that cannot be loaded is a ConfigError (exit 2).

Life cycle (the ``smtprs serve`` command maps signals onto it):

- ``stop()`` (SIGTERM, SIGINT): the listeners are closed at once; SMTP
  sessions with no transaction open get 421 4.3.2 and are closed; sessions in
  the middle of one get ``smtpd.shutdown_timeout`` seconds to finish it, and
  then 421 4.3.2 (a message whose data is still arriving is not acknowledged
  and not kept).  When they are done (at most a few seconds after the
  deadline) everything else is cancelled: POP3 sessions (an unfinished POP3
  session deletes nothing), deliveries in progress (local delivery is
  idempotent, remote at least once), the scheduler.  The spool's fsyncs
  finish first (they run in threads that are not abandoned), so nothing
  acknowledged is lost.  ``stop(now=True)`` (a second signal) skips the wait.
- ``reload()`` (SIGHUP): the configuration file is read again.  If it loads
  (and its TLS files, and its new listeners bind), new sessions use it and
  sessions already open keep theirs; listeners are added, closed or change
  mode; the scheduler routes and retries queued mail by it; aliases and
  virtual maps are read again; the log file is reopened.  The keys in
  ``RESTART_ONLY`` keep their running value, with a warning naming them.  A
  configuration that does not load is refused with one log line naming the
  key, and the running one stays.

Resource policy: each connection runs in its own task and closes its stream
in ``finally``; running out of file descriptors while accepting is logged and
waited out (as ``trio.serve_listeners`` does); limits on sessions (all, and
per client address) and connection rate are checked by the session, which
answers 421 (the per-client counts are one table for all workers,
``data_dir/client-limits.shm``: smtpd/limits.py); an
unexpected exception in a session is logged and ends that session only.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import ssl
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from . import config as config_mod
from . import hooks as hooks_mod
from . import maillog, metrics_http
from .bounce import Notifier
from .config import POP3_MODES, SUBMISSION_MODES, Config
from .deliver.base import DeliveryAgent
from .deliver.discard import DiscardAgent
from .deliver.lmtp import LmtpAgent
from .deliver.maildir import MaildirAgent
from .deliver.mbox import MboxAgent
from .deliver.smtp import SmtpAgent
from .envelope import Envelope
from .errors import ConfigError, ListenError, SpoolError
from .hooks import Hooks
from .mailauth.dkim import Signer
from .mailauth.inbound import Checker
from .metrics import Metrics
from .milter.driver import settings_by_listener as milter_settings
from .queue import control, pickup
from .queue.backend import SpoolBackend
from .queue.null import NullSpool
from .queue.scheduler import Scheduler
from .queue.spool import Spool
from .retrieve.pop3 import Pop3Context, Pop3Session
from .route.router import Router
from .screen import greylist as greylist_mod
from .smtpd import tls as tls_mod
from .smtpd.auth import Authenticator, FailureDelays, UsersFile, UsersFileError
from .smtpd.context import HandOff, Runtime, SessionContext
from .smtpd.limits import ClientLimits
from .smtpd.listen import Bound, accept_loop, bind, describe
from .smtpd.policy import Policy
from .smtpd.session import Session

# Seconds sessions get, after the shutdown deadline, to send their 421 and close
# before they are cancelled.
SHUTDOWN_GRACE = 5.0

CLIENT_LIMITS_FILE = "client-limits.shm"  # relative to data_dir: the per-client counts all workers share

# Keys (or whole sections) read once at start: a reload keeps their running
# values and says so.  They name things opened at start (the spool, the
# control socket, worker processes, the resolver, TLS client contexts) or
# given to long-lived objects (the delivery agents' host name and timeouts).
RESTART_ONLY = (
    "hostname",
    "data_dir",
    "workers",
    "hooks",  # imported and made once per worker, at start
    "queue.directory",
    "queue.backend",
    "unsafe_no_fsync",
    "queue.delivery_concurrency",
    "queue.control_socket",
    "local.lock_timeout",
    "local.lmtp_timeout",
    "relay.tls_ca_file",
    "relay.address_preference",
    "dns",
    "metrics",
    "mta_sts",  # the SMTP client's MtaSts (deliver/mtasts.py) is built once, with its cache
)


@dataclass
class ServerContext:
    """The process as built for one configuration: what it runs (spool,
    scheduler, agents, POP3, metrics) and what its sessions get (``session``)."""

    cfg: Config
    spool: SpoolBackend
    router: Router
    scheduler: Scheduler
    hostname: str
    smtp: SmtpAgent
    session: SessionContext
    agents: dict[str, DeliveryAgent] = field(default_factory=dict)  # by next-hop kind
    pop3: Pop3Context | None = None
    bound: list[tuple[str, int, str]] = field(default_factory=list)  # (address, port, mode) of each listening socket
    hooks: Hooks | None = None
    schedulers: list[Scheduler] = field(default_factory=list)  # ours first, then those of orphaned shards
    metrics_address: tuple[str, int] | None = None  # where the metrics endpoint listens, when it does

    @property
    def runtime(self) -> Runtime:
        return self.session.runtime

    @property
    def metrics(self) -> Metrics:
        return self.session.metrics

    @property
    def tls(self) -> ssl.SSLContext | None:
        return self.session.tls

    @property
    def authenticator(self) -> Authenticator:
        return self.session.authenticator

    @property
    def auth_delays(self) -> FailureDelays:
        return self.session.auth_delays

    @property
    def active_sessions(self) -> int:
        return self.runtime.active_sessions


def _watch(ctx: ServerContext) -> None:
    """The gauges, read at each scrape (through ``ctx.runtime`` and ``ctx.schedulers``,
    which a reloaded context shares)."""
    m = ctx.metrics
    m.gauge("smtprs_sessions_active", lambda: ctx.active_sessions)
    m.gauge("smtprs_queue_messages", lambda: sum(s.spool.count for s in ctx.schedulers))
    m.gauge("smtprs_queue_held_messages", lambda: sum(len(s.held) for s in ctx.schedulers))
    m.gauge("smtprs_queue_active_deliveries", lambda: sum(len(s._active) for s in ctx.schedulers))
    m.gauge("smtprs_spool_commits_total", lambda: sum(s.spool.commit_batches for s in ctx.schedulers))
    m.gauge("smtprs_spool_records_total", lambda: sum(s.spool.committed_messages for s in ctx.schedulers))
    m.gauge(
        "smtprs_queue_oldest_age_seconds", lambda: max((s.stats()["oldest_age"] for s in ctx.schedulers), default=0.0)
    )


def make_spool(cfg: Config, shard: int) -> SpoolBackend:
    """The spool backend ``queue.backend`` names, for one shard."""
    if cfg.queue.backend == "null":
        return NullSpool()
    return Spool(shard_path(cfg, shard), fsync=not cfg.unsafe_no_fsync)


def _hand_off(scheduler: Scheduler) -> HandOff:
    def hand_off(env: Envelope, peer: str, auth_user: str | None) -> None:
        maillog.queued(env.queue_id, env.sender, env.size, len(env.recipients), peer, auth_user)
        if env.held:  # a milter's quarantine: on hold until `smtprs queue release`
            scheduler.held.add(env.queue_id)
            maillog.held(env.queue_id, "quarantined by a milter")
        else:
            scheduler.submit(env)

    return hand_off


def _keep_nothing(env: Envelope, peer: str, auth_user: str | None) -> None:
    """The null backend's hand-off: nothing was kept, so nothing is queued."""


def build(cfg: Config, shard: int = 0, hooks: Hooks | None = None) -> ServerContext:
    hostname = cfg.host_name
    spool = make_spool(cfg, shard)
    router = Router(cfg)
    smtp = SmtpAgent(cfg, hostname)
    fsync = not cfg.unsafe_no_fsync
    agents: dict[str, DeliveryAgent] = {
        "maildir": MaildirAgent(hostname, fsync=fsync),
        "mbox": MboxAgent(lock_timeout=cfg.local.lock_timeout, fsync=fsync),
        "lmtp": LmtpAgent(hostname, timeout=cfg.local.lmtp_timeout),
        "smtp": smtp,
        "discard": DiscardAgent(),
    }
    scheduler = Scheduler(cfg, spool, router, agents)
    scheduler.notifier = Notifier(cfg, hostname, spool, scheduler.submit)
    a = cfg.smtpd.auth
    metrics = Metrics()
    null = isinstance(spool, NullSpool)
    runtime = Runtime()
    session = SessionContext(
        cfg,
        hostname,
        spool,
        router,
        hand_off=_keep_nothing if null else _hand_off(scheduler),
        tls=tls_mod.server_context(cfg),
        authenticator=Authenticator(UsersFile(cfg.users_path)),
        auth_delays=FailureDelays(a.failure_delay, a.max_failure_delay, a.failure_window),
        policy=Policy(cfg),
        runtime=runtime,
        metrics=metrics,
        agents=agents,
        hooks=hooks,
        flow=None if null else scheduler,
        dkim=Signer.for_config(cfg),
        mailauth=Checker.for_config(cfg, hostname),
        milters=milter_settings(cfg),
        greylist=greylist_mod.for_config(cfg, runtime),
    )
    ctx = ServerContext(cfg, spool, router, scheduler, hostname, smtp, session, agents=agents, hooks=hooks)
    ctx.schedulers.append(scheduler)
    scheduler.metrics = metrics
    smtp.metrics = metrics  # TLS-RPT counts (deliver/mtasts.py, deliver/dane.py)
    scheduler.hooks = hooks
    _watch(ctx)
    ctx.pop3 = _pop3_context(ctx)
    return ctx


def _pop3_context(ctx: ServerContext) -> Pop3Context:
    cfg = ctx.cfg
    return Pop3Context(
        ctx.hostname,
        verifier=ctx.authenticator,
        maildir_of=ctx.router.maildir_of,
        tls=ctx.tls,
        allow_plaintext=cfg.smtpd.auth.allow_plaintext,
        delays=ctx.auth_delays,
        timeout=cfg.pop3.timeout,
        send_timeout=cfg.smtpd.send_timeout,
        handshake_timeout=cfg.smtpd.tls.handshake_timeout,
    )


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _set(cfg: Any, key: str, value: Any) -> Any:
    head, _, rest = key.partition(".")
    if not rest:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _set(getattr(cfg, head), rest, value)})


def restart_only_changes(old: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with the RESTART_ONLY keys of ``old``, and the names of those that differed."""
    changed = []
    for key in RESTART_ONLY:
        if _get(old, key) != _get(new, key):
            changed.append(key)
            new = _set(new, key, _get(old, key))
    return new, changed


def rebuild(old: ServerContext, cfg: Config) -> ServerContext:
    """A context for ``cfg`` that shares the spool, scheduler, agents, AUTH delays and
    runtime of ``old``.  Raises ConfigError (TLS files, aliases) without changing anything."""
    router = Router(cfg)
    session = dataclasses.replace(
        old.session,
        cfg=cfg,
        router=router,
        tls=tls_mod.server_context(cfg),
        authenticator=Authenticator(UsersFile(cfg.users_path)),
        policy=Policy(cfg),
        dkim=Signer.for_config(cfg),
        mailauth=Checker.for_config(cfg, old.hostname),
        milters=milter_settings(cfg),
        greylist=greylist_mod.for_config(cfg, old.runtime),
    )
    ctx = dataclasses.replace(old, cfg=cfg, router=router, session=session, bound=list(old.bound))
    ctx.pop3 = _pop3_context(ctx)
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
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise SpoolError(f"cannot use the spool directory {path}: {e.strerror or e}") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolError(f"spool shard {path} is in use by another smtprs process") from None
    return fd


def _check_settings(ctx: ServerContext) -> None:
    """At start and reload: say so in the log if nobody will be able to authenticate
    (or if every message is being thrown away)."""
    if ctx.cfg.queue.backend == "null":
        maillog.warning(
            'queue.backend is "null": every message is answered 250 and thrown away (a benchmark setting; no mail is kept)'
        )
    if ctx.cfg.unsafe_no_fsync:
        maillog.warning("unsafe_no_fsync is on: mail answered 250 is lost in a crash or power loss")
    if not any(lst.mode in SUBMISSION_MODES + POP3_MODES for lst in ctx.cfg.smtpd.listeners):
        return
    try:
        users = ctx.authenticator.users.load()
    except UsersFileError as e:
        maillog.warning(f"smtpd.auth.users_file: {e}; AUTH will fail with 454 until it is fixed")
        return
    if not users:
        maillog.warning(
            f"smtpd.auth.users_file: no users in {ctx.cfg.users_path} (add some with `smtprs passwd add`): nobody can authenticate"
        )


class Server:
    """One server process (or worker): the current context, its listeners, and the life cycle above."""

    def __init__(
        self,
        cfg: Config,
        config_path: str | os.PathLike[str] | None = None,
        *,
        worker: int = 0,
        workers: int = 1,
        hooks: Hooks | None = None,
    ) -> None:
        self.cfg = cfg
        self.hooks = hooks
        self.config_path = Path(config_path) if config_path is not None else None
        self.worker = worker
        self.workers = workers
        self._listeners: dict[str, Bound] = {}
        self._sessions: trio.Nursery | None = None
        self._stop = trio.Event()
        self._stop_now = False
        self._reloading = trio.Lock()
        self._ctx: ServerContext | None = None
        self.reloads = 0  # configurations taken by reload() (for tests)

    @property
    def ctx(self) -> ServerContext:
        assert self._ctx is not None, "the server is not running"
        return self._ctx

    @property
    def runtime(self) -> Runtime:
        return self.ctx.runtime

    # -- running -------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[ServerContext] = trio.TASK_STATUS_IGNORED) -> None:
        cfg, worker, workers = self.cfg, self.worker, self.workers
        if self.hooks is None and cfg.hooks:
            # each worker makes its own; a module that cannot be loaded is a ConfigError (exit 2)
            self.hooks = hooks_mod.load(cfg.hooks)
        shards = owned_shards(cfg, worker, workers)
        locks = [lock_shard(shard_path(cfg, shards[0]))]  # our own shard: refuse to start without it
        try:
            ctx = self._ctx = build(cfg, shards[0], self.hooks)
            for s in shards[1:]:
                try:
                    locks.append(lock_shard(shard_path(cfg, s)))
                except SpoolError as e:
                    maillog.warning(str(e))
                    continue
                maillog.warning(f"worker {worker}: delivering what is left in spool shard {s}")
                extra = Scheduler(cfg, make_spool(cfg, s), ctx.router, ctx.scheduler.agents)
                extra.notifier = Notifier(cfg, ctx.hostname, extra.spool, extra.submit)
                extra.metrics = ctx.metrics
                extra.hooks = self.hooks
                ctx.schedulers.append(extra)
            _check_settings(ctx)
            # per-client counts for the whole server, shared with the other workers (smtpd/limits.py)
            ctx.runtime.limits = ClientLimits.shared(str(cfg.path(CLIENT_LIMITS_FILE)), worker, workers)
            # Bind every listener first, so a port in use fails the start with one clear error.
            bound: list[Bound] = []
            try:
                for lst in cfg.smtpd.listeners:
                    bound.append(Bound(lst.address, lst.mode, *await bind(lst.address, workers > 1)))
            except ListenError:
                for b in bound:
                    for tl in b.sockets:
                        await tl.aclose()
                raise
            try:
                async with trio.open_nursery() as nursery:
                    # the control socket first: it refuses to start when another server uses this data directory
                    await nursery.start(
                        partial(
                            control.serve, cfg.control_socket_for(worker), ctx.schedulers, stats=ctx.metrics.snapshot
                        )
                    )
                    if cfg.metrics.enabled and worker == 0:
                        ctx.metrics_address = await nursery.start(
                            metrics_http.serve, cfg, ctx.metrics, worker == 0 and workers > 1
                        )
                    await nursery.start(ctx.smtp.run)
                    for sched in ctx.schedulers:
                        await nursery.start(sched.run)
                    if worker == 0 and not isinstance(ctx.spool, NullSpool):
                        # mail `sendmail` wrote when no server answered (queue/pickup.py)
                        await nursery.start(
                            partial(
                                pickup.run,
                                pickup.directory(cfg.data_path),
                                ctx.spool,
                                lambda env: self.ctx.session.hand_off(env, "local", None),
                                ctx.hostname,
                                lambda: self.ctx.cfg.smtpd.max_message_size,
                                lambda: self.ctx.session.dkim,
                            )
                        )
                    async with trio.open_nursery() as sessions:
                        self._sessions = sessions
                        for b in bound:
                            self._start_listener(b)
                        task_status.started(ctx)
                        await self._stop.wait()
                        await self._shut_down()
                        sessions.cancel_scope.cancel()
                    nursery.cancel_scope.cancel()  # scheduler and agents: deliveries are idempotent, the spool durable
            finally:
                self._sessions = None
                for b in bound:  # (those never started: a failure before the accept loops)
                    for tl in b.sockets:
                        tl.socket.close()
        finally:
            if self._ctx is not None:
                for sched in self._ctx.schedulers:
                    sched.spool.close()
                self._ctx.runtime.limits.close()
                if self._ctx.runtime.greylist is not None:
                    self._ctx.runtime.greylist.close()
            for fd in locks:
                os.close(fd)

    def _start_listener(self, b: Bound) -> None:
        assert self._sessions is not None
        self._listeners[b.address] = b
        for tl, raw in zip(b.sockets, b.raw):
            host, port, text = describe(tl)
            self.ctx.bound.append((host, port, b.mode))
            maillog.listening(text, b.mode)
            self._sessions.start_soon(accept_loop, b, tl, raw, self._sessions, self._handle)

    async def _handle(self, stream: trio.SocketStream, b: Bound, peer: tuple[Any, ...]) -> None:
        ctx = self.ctx  # the configuration of the moment the connection came in
        ctx.metrics.inc("smtprs_connections_total", mode=b.mode)
        pop3 = b.mode in POP3_MODES
        if pop3:
            ctx.runtime.other_sessions += 1
        try:
            listener = next((lst for lst in ctx.cfg.smtpd.listeners if lst.address == b.address), None)
            session: Session | Pop3Session
            if pop3:
                assert ctx.pop3 is not None
                session = Pop3Session(ctx.pop3, stream, peer[0], peer[1], implicit_tls=b.mode == "pop3s")
            else:
                session = Session(ctx.session, stream, peer[0], peer[1], listener)
            try:
                await session.run()
            except Exception as e:  # a bug in one session must not stop the server
                maillog.error(f"{session.id}: session ended by an internal error: {e!r}")
                logging.getLogger("smtprs").debug("session traceback", exc_info=True)
        finally:
            if pop3:
                ctx.runtime.other_sessions -= 1
            # SocketStream.aclose is this and a checkpoint; the session's own
            # TLS layer (if any) was above this stream, so nothing is owed to
            # the peer here, and a plain close spares a cancel scope per connection.
            stream.socket.close()

    # -- stopping ------------------------------------------------------------
    def stop(self, *, now: bool = False) -> None:
        """Begin the graceful shutdown (see the module docstring); ``now``: no waiting."""
        if now and self._ctx is not None:
            self._stop_now = True
            self.runtime.drain_deadline = min(self.runtime.drain_deadline, trio.current_time())
            for s in list(self.runtime.sessions):
                s.shutdown_notice()
        self._stop.set()

    async def _shut_down(self) -> None:
        rt = self.runtime
        for b in self._listeners.values():
            b.scope.cancel()  # the accept loops end
            for tl in b.sockets:
                # Close now, not when the accept tasks next run: a session
                # told 421 below answers at once, and its client must not be
                # able to connect again in between.
                tl.socket.close()
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
            maillog.warning(
                f"{len(rt.sessions)} sessions still open {SHUTDOWN_GRACE:.0f}s after the shutdown deadline; cancelled"
            )

    # -- reloading -----------------------------------------------------------
    async def reload(self) -> bool:
        """Read the configuration file again and use it for new sessions; False if refused."""
        async with self._reloading:
            return await self._reload()

    async def _reload(self) -> bool:
        if self._ctx is None or self.runtime.closing:
            return False
        if self.config_path is None:
            maillog.reload_refused("(embedded default)", "there is no configuration file to read again")
            return False
        old = self.ctx
        added: list[Bound] = []
        try:
            cfg = config_mod.load(self.config_path)
            cfg, kept = restart_only_changes(old.cfg, cfg)
            ctx = rebuild(old, cfg)
            handler = maillog.make_handler(cfg.log.file, cfg.log.format)
            wanted = {lst.address: lst.mode for lst in cfg.smtpd.listeners}
            for address, mode in wanted.items():
                if address not in self._listeners:
                    added.append(Bound(address, mode, *await bind(address, self.workers > 1)))
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
        ctx.bound = [
            (host, port, b.mode) for b in self._listeners.values() for host, port, _ in map(describe, b.sockets)
        ]
        self._ctx = ctx
        for sched in ctx.schedulers:
            sched.reconfigure(cfg, ctx.router)
            if sched.notifier is not None:
                sched.notifier.cfg = cfg
        ctx.smtp.cfg, ctx.smtp.r = cfg, cfg.relay
        ctx.auth_delays.base = cfg.smtpd.auth.failure_delay
        ctx.auth_delays.maximum = cfg.smtpd.auth.max_failure_delay
        ctx.auth_delays.window = cfg.smtpd.auth.failure_window
        for b in added:
            self._start_listener(b)  # (adds to ctx.bound)
        _check_settings(ctx)
        self.reloads += 1
        maillog.reloaded(str(self.config_path), len(self.runtime.sessions), len(added), len(removed))
        return True


async def serve(
    cfg: Config,
    *,
    config_path: str | os.PathLike[str] | None = None,
    worker: int = 0,
    workers: int = 1,
    hooks: Hooks | None = None,
    task_status: trio.TaskStatus[ServerContext] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a ``Server`` until it is cancelled (for callers that need no life cycle: the library's
    ``smtprs.serve``)."""
    await Server(cfg, config_path, worker=worker, workers=workers, hooks=hooks).run(task_status=task_status)
