"""The supervisor: runs N worker processes and keeps them running.

``smtprs serve`` with more than one worker (``workers`` in the config, or
``--workers N``; one per CPU by default) starts this supervisor instead of
serving itself.  It starts each worker as ``smtprs serve --worker-index K
--workers N`` (same configuration); every worker opens the listening sockets
with SO_REUSEPORT, owns spool shard K (``spool/shard-K``, locked with flock)
and delivers from it and from any shard left by an earlier run with more
workers (shard s goes to worker s mod N), so no message is handled by two
workers and changing N loses nothing.  Each worker loads the configuration's
Python hooks (``hooks = "package.module:factory"``) itself, so each has its
own hooks object; the supervisor never imports them (a hooks module that
cannot be loaded makes the workers exit 2 at start, and so the supervisor).

Resource policy: SIGTERM/SIGINT are passed on to every worker and the
supervisor exits when they have, logging "worker K stopped" for each; SIGHUP
is passed on.  A service manager or a terminal may signal the whole process
group at once (systemd's KillMode=control-group, Ctrl-C): a worker that exits
while a stop is pending is stopping, never "started again", and a worker takes
SIGTERM/SIGINT as "drain" however often they come (the group's copy and the
supervisor's), so the drain is not cut short; a second stop signal to the
supervisor sends the workers SIGQUIT, "stop at once".  A worker that dies is
started again after a delay that doubles while it keeps dying quickly (1 s up
to 30 s).  A worker that fails at start-up with exit status 1 or 2 (port in
use, bad configuration) stops everything: retrying cannot help.  Workers ask
the kernel for SIGTERM if the supervisor dies (PR_SET_PDEATHSIG), so they
never outlive it.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import time

from . import maillog

_PR_SET_PDEATHSIG = 1
START_GRACE = 5.0  # a worker that exits sooner than this failed to start
STOP_TIMEOUT = 60.0  # a worker still running this long after the stop is killed


def die_with_parent() -> None:
    """In a worker: get SIGTERM when the supervisor goes away (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class _Worker:
    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restart_delay = 1.0
        self.restart_at = 0.0
        self.ever_up = False

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv)
        self.started = time.monotonic()
        maillog.supervisor(f"started worker {self.index} (pid {self.proc.pid})")


def run(config_path: str | None, workers: int) -> int:
    """Run ``workers`` workers until SIGTERM/SIGINT; returns the exit status."""
    stop: list[int] = []
    hup: list[int] = []

    def on_stop(signum: int, frame: object) -> None:
        stop.append(signum)

    def on_hup(signum: int, frame: object) -> None:
        hup.append(signum)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    base = [sys.executable, "-m", "smtprs", "serve"] + (["--config", config_path] if config_path else [])
    pool = [_Worker(k, base + ["--workers", str(workers), "--worker-index", str(k)]) for k in range(workers)]
    for w in pool:
        w.start()
    status = 0
    while not stop:
        time.sleep(0.1)
        if stop:  # (a signal during the sleep: a worker that exited meanwhile is stopping, not dying)
            break
        while hup:
            hup.pop()
            for w in pool:
                if w.proc is not None and w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGHUP)
        now = time.monotonic()
        for w in pool:
            if w.proc is None:
                if now >= w.restart_at:
                    w.start()
                continue
            code = w.proc.poll()
            if code is None:
                if now - w.started > START_GRACE:
                    w.ever_up = True
                    w.restart_delay = 1.0
                continue
            w.proc = None
            if stop:  # a stop came in while we looked: nothing is started again
                maillog.supervisor(f"worker {w.index} stopped (exit status {code})")
                continue
            if code in (1, 2) and not w.ever_up:
                maillog.supervisor(f"worker {w.index} could not start (exit {code}); stopping", problem=True)
                stop.append(signal.SIGTERM)
                status = code
                break
            maillog.supervisor(
                f"worker {w.index} exited with status {code}; starting it again in {w.restart_delay:.0f}s", problem=True
            )
            w.restart_at = now + w.restart_delay
            w.restart_delay = min(30.0, w.restart_delay * 2) if now - w.started < START_GRACE else 1.0
    for w in pool:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)  # drain (a worker given it twice, by the group too, still drains)
    stops = len(stop)
    deadline = time.monotonic() + STOP_TIMEOUT
    left = [w for w in pool if w.proc is not None]
    while left:
        if len(stop) > stops and stops > 0:  # signalled again: the workers stop at once
            stops = 0
            maillog.supervisor("stop signal again: workers stop now")
            for w in left:
                if w.proc is not None and w.proc.poll() is None:
                    w.proc.send_signal(signal.SIGQUIT)
        for w in list(left):
            assert w.proc is not None
            code = w.proc.poll()
            if code is None and time.monotonic() > deadline:
                maillog.supervisor(
                    f"worker {w.index} did not stop within {STOP_TIMEOUT:.0f}s; killing it", problem=True
                )
                w.proc.kill()
                code = w.proc.wait()
            if code is not None:
                left.remove(w)
                # 0: drained; -SIGTERM/-SIGINT: stopped by the signal itself (before its handler was up)
                stopped = code == 0 or -code in (signal.SIGTERM, signal.SIGINT)
                maillog.supervisor(f"worker {w.index} stopped (exit status {code})", problem=not stopped)
        if left:
            time.sleep(0.05)
    maillog.supervisor("all workers stopped")
    return status
