"""Process accounting from /proc: process trees, their CPU and memory, and stopping them.

``STARTED`` holds everything the benchmark has started and not yet stopped
(servers, load generators, probes); the CLI stops what is left in it when it
ends, also on Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NCPU = os.cpu_count() or 1


@dataclass
class ProcStat:
    ppid: int
    state: str
    cpu_ticks: int  # utime + stime + cutime + cstime
    rss_pages: int


def scan_proc() -> dict[int, ProcStat]:
    out: dict[int, ProcStat] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rp = data.rfind(b")")
        fields = data[rp + 2 :].split()
        try:
            out[int(name)] = ProcStat(
                ppid=int(fields[1]),
                state=fields[0].decode(),
                cpu_ticks=int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14]),
                rss_pages=int(fields[21]),
            )
        except (IndexError, ValueError):
            continue
    return out


def descendants(roots: Iterable[int], procs: dict[int, ProcStat]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, st in procs.items():
        children.setdefault(st.ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in procs]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return seen


def tree_cpu_ticks(roots: Iterable[int], procs: dict[int, ProcStat] | None = None) -> int:
    """CPU of a process tree, including children it has reaped (cutime), so
    processes that come and go inside a window (Postfix's smtpd) are counted."""
    procs = procs if procs is not None else scan_proc()
    return sum(procs[p].cpu_ticks for p in descendants(roots, procs))


def pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + parts[4]
    total = sum(parts[:8])
    return total - idle, total


class MemorySampler:
    """Peak memory of a process tree: sum of RSS every 0.2 s, sum of PSS every 1 s."""

    def __init__(self, roots: Callable[[], list[int]]) -> None:
        self.roots = roots
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MemorySampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while True:
            try:
                procs = scan_proc()
                pids = [p for p in descendants(self.roots(), procs) if procs[p].state != "Z"]
                self.peak_rss = max(self.peak_rss, sum(procs[p].rss_pages for p in pids) * PAGE)
                self.peak_procs = max(self.peak_procs, len(pids))
                if n % 5 == 0:
                    self.peak_pss = max(self.peak_pss, sum(pss_kb(p) for p in pids) * 1024)
            except Exception:  # a process vanishing mid-scan; the next sample will do
                pass
            n += 1
            if self._stop.wait(0.2):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] != b"Z"


def wait_gone(pids: Iterable[int], timeout: float) -> bool:
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return not any(pid_alive(p) for p in pids)


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


STARTED: list[Any] = []  # everything that must be stopped at exit (servers, load generators)


def follow_counter(fd: int, on_lines: Callable[[bytes], None]) -> None:
    """Read ``fd`` (a counter's stdout: smtp-source, smtp-sink -c) until EOF and
    hand ``on_lines`` each run of complete lines, up to the last CR or LF read
    (the counters rewrite one line with CR)."""
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        buf += chunk
        cut = max(buf.rfind(b"\r"), buf.rfind(b"\n"))
        if cut < 0:
            continue
        done, buf = buf[:cut], buf[cut + 1 :]
        on_lines(done)


def stop_started(owner: object, proc: subprocess.Popen[Any], grace: float = 5) -> None:
    """Forget ``owner`` (no longer cleaned up at exit) and stop its process:
    SIGTERM, then SIGKILL after ``grace`` seconds."""
    if owner in STARTED:
        STARTED.remove(owner)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
