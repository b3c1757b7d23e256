#!/usr/bin/env python3
"""Cross-MTA load benchmark: smtprs against Postfix and aiosmtpd, same run, same machine.

    python benches/load.py [--quick] [--out DIR]

It sets up every server itself, on free loopback ports, in temporary
directories (never port 25, never the system's Postfix instance), runs them in
turn (A B C, then B C A, ...) for several rounds, and stops everything it
started when it ends, also on Ctrl-C or SIGTERM.

Servers, per mode:

=========  =================================  ===============================  ==================================
mode       smtprs                             Postfix                          aiosmtpd
=========  =================================  ===============================  ==================================
sink       ``queue.discard = true``           its C ``smtp-sink``              handler that discards
durable    fsync'd spool, then local          private instance: queue file     handler that writes an fsync'd
           delivery to a Maildir              fsync'd before 250, then         Maildir file (file + directory)
                                              ``virtual`` delivery to Maildir  before 250
e2e        as durable; measured by files      as durable; measured by files    as durable (delivery is inline)
           landing in Maildir ``new/``        landing in Maildir ``new/``
=========  =================================  ===============================  ==================================

A fourth server, ``floor`` (``benches/load/trio_floor.py``), runs only when
asked for (``--servers smtprs,postfix,aiosmtpd,floor``): canned replies on one
Trio task per session, and in durable/e2e modes a group-committed segment and
batched Maildir delivery, with nothing else.  It is not an MTA; its msgs/s is
the most a server built on Trio sessions can reach on the machine, so the
targets table can say which targets are within reach of the design at all.

Load: Postfix's ``smtp-source`` (C, cheap; one message per connection, HELO,
MAIL, RCPT, DATA, QUIT; ``-c`` prints a counter after each 250, read here with
timestamps).  Throughput is counted over a window after a warm-up.

Acceptance latency (end of DATA to 250) comes from ``benches/load/probe.py``:
at concurrency C >= 2 it is one of the C sessions (smtp-source runs the other
C-1), so the latency is sampled at exactly the load being measured; at C = 1
it runs alone after the throughput phase.

Per run it records msgs/s, MB/s, p50/p99 latency, the server's peak memory
(sum of VmRSS over its process tree, sampled every 0.2 s, and the sum of PSS,
which does not count shared pages once per process), the server's CPU per
message, the load generator's CPU, and the CPU used by everything else on the
machine (other people's compilers), so a disturbed run can be seen.

Output in --out DIR: results.md (also printed), results.json (all runs,
summary, machine), runs.jsonl (written as runs finish), msgs_per_s.png.
``--report DIR/results.json`` re-renders the table and chart from saved data.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

HERE = Path(__file__).resolve().parent
HELPERS = HERE / "load"
DOMAIN = "bench.test"
RCPT = f"box@{DOMAIN}"
SENDER = "load@source.test"
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
NCPU = os.cpu_count() or 1

SERVERS = ("smtprs", "postfix", "aiosmtpd", "floor", "floor-accept")
DEFAULT_SERVERS = ("smtprs", "postfix", "aiosmtpd")
MODES = ("sink", "durable", "e2e")
MODE_TITLES = {
    "sink": "Sink mode (accept and discard; no fsync)",
    "durable": "Durable acceptance (250 only once the message is fsync'd)",
    "e2e": "End to end (accept, then delivery to an fsync'd Maildir), steady state",
}
PEER_LABEL = {  # what each server is in each mode, for the tables
    ("postfix", "sink"): "Postfix smtp-sink",
    ("aiosmtpd", "sink"): "aiosmtpd (no-op handler)",
    ("smtprs", "sink"): "smtprs (queue.discard)",
    ("postfix", "durable"): "Postfix",
    ("postfix", "e2e"): "Postfix",
    ("aiosmtpd", "durable"): "aiosmtpd (fsync'd Maildir)",
    ("aiosmtpd", "e2e"): "aiosmtpd (fsync'd Maildir)",
    ("floor", "sink"): "Trio floor (canned replies)",
    ("floor", "durable"): "Trio floor (canned replies, group commit, syncfs Maildir)",
    ("floor", "e2e"): "Trio floor (canned replies, group commit, syncfs Maildir)",
    ("floor-accept", "durable"): "Trio floor, acceptance only (nothing delivered)",
}


def size_label(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


# --------------------------------------------------------------------------
# settings


@dataclass
class Settings:
    rounds: int = 3
    warmup: float = 2.0  # seconds of load before the window (sink, durable)
    window: float = 10.0  # seconds counted (sink, durable)
    latency_seconds: float = 8.0  # the probe alone, at concurrency 1
    e2e_warmup: float = 10.0
    e2e_window: float = 60.0
    servers: tuple[str, ...] = DEFAULT_SERVERS
    modes: tuple[str, ...] = MODES
    sizes: tuple[int, ...] = (1024, 102400)
    concurrency: tuple[int, ...] = (1, 10, 50)
    smtprs_cmd: tuple[str, ...] = (sys.executable, "-m", "smtprs")
    smtprs_workers: int | None = None
    smtprs_pythonpath: str | None = None  # a snapshot of python/ to import smtprs from
    quick: bool = False

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(rounds=1, warmup=0.5, window=2.0, latency_seconds=2.0, e2e_warmup=1.0, e2e_window=4.0, quick=True)


# --------------------------------------------------------------------------
# /proc: process trees, CPU, memory


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


# --------------------------------------------------------------------------
# small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_smtp(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Until the port answers with a 220 greeting."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server exited while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                greeting = s.recv(512)
                if greeting.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last = RuntimeError(f"greeting {greeting!r}")
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"no SMTP greeting on 127.0.0.1:{port} after {timeout} s: {last}")


def count_dir(path: Path) -> int:
    try:
        with os.scandir(path) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


def run_text(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# servers

STARTED: list[Any] = []  # everything that must be stopped at exit (servers, load generators)


class Server:
    name = ""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings
        self.port = 0
        self.mode = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path = root
        self.runs = 0

    def label(self, mode: str) -> str:
        return PEER_LABEL.get((self.name, mode), self.name)

    def problem(self) -> str | None:
        """Why this server cannot run here (None if it can)."""
        return None

    def version(self) -> str:
        return ""

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def maildir_new(self) -> Path | None:
        return None

    def figures(self) -> dict[str, Any]:
        """Server-specific figures read while it still runs (after the window)."""
        return {}

    def start(self, mode: str) -> None:
        raise NotImplementedError

    def _fresh_dir(self, mode: str) -> Path:
        self.runs += 1
        d = self.root / f"{self.name}-{mode}-{self.runs}"
        d.mkdir(parents=True)
        d.chmod(0o755)
        return d

    def _spawn(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        STARTED.append(self)
        try:
            wait_smtp(self.port, 30, lambda: self.proc is not None and self.proc.poll() is None)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {e}\n{tail(log)}") from None

    def stop(self) -> None:
        if self in STARTED:
            STARTED.remove(self)
        proc, self.proc = self.proc, None
        if proc is None:
            return
        tree = descendants([proc.pid], scan_proc())
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if not wait_gone(tree, 5):
            kill_pids(tree)

    def cleanup(self) -> None:
        pass


def smtprs_env(settings: Settings) -> dict[str, str] | None:
    if not settings.smtprs_pythonpath:
        return None
    return {**os.environ, "PYTHONPATH": settings.smtprs_pythonpath}


class Smtprs(Server):
    name = "smtprs"

    def version(self) -> str:
        if self.settings.smtprs_cmd[1:2] != ("-m",):
            return ""
        code = "import smtprs, importlib.metadata as m; print(m.version('smtprs'))"
        return run_text([self.settings.smtprs_cmd[0], "-c", code], smtprs_env(self.settings))

    def problem(self) -> str | None:
        if not run_text([*self.settings.smtprs_cmd, "serve", "--help"], smtprs_env(self.settings)):
            return f"`{shlex.join(self.settings.smtprs_cmd)} serve --help` failed: is smtprs installed?"
        return None

    def maildir_new(self) -> Path | None:
        return self.dir / "mail" / "box" / "new"

    def start(self, mode: str) -> None:
        self.mode = mode
        self.dir = self._fresh_dir(mode)
        self.port = free_port()
        cfg = self.dir / "smtprs.toml"
        cfg.write_text(
            "\n".join(
                [
                    'hostname = "smtprs-bench.test"',
                    f'data_dir = "{self.dir / "data"}"',
                    "[smtpd]",
                    "max_connections = 1000",
                    "[[smtpd.listeners]]",
                    f'address = "127.0.0.1:{self.port}"',
                    "[local]",
                    f'domains = ["{DOMAIN}"]',
                    f'maildir = "{self.dir / "mail" / "{user}"}"',
                    "[queue]",
                    # sink: accept and throw away, as smtp-sink and the aiosmtpd sink do
                    f"discard = {'true' if mode == 'sink' else 'false'}",
                    "",
                ]
            )
        )
        cmd = [*self.settings.smtprs_cmd, "serve", "--config", str(cfg)]
        if self.settings.smtprs_workers is not None:
            cmd += ["--workers", str(self.settings.smtprs_workers)]
        self._spawn(cmd, self.dir / "smtprs.log", smtprs_env(self.settings))

    def figures(self) -> dict[str, Any]:
        """How many spool records each fdatasync covered (group commit), from `smtprs status`."""
        out = run_text([*self.settings.smtprs_cmd, "status", "--config", str(self.dir / "smtprs.toml")], smtprs_env(self.settings))
        m = re.search(r"spool commits:\s+(\d+) for (\d+) records", out)
        if not m or not int(m.group(1)):
            return {}
        return {"spool_commits": int(m.group(1)), "spool_records": int(m.group(2)), "records_per_fdatasync": int(m.group(2)) / int(m.group(1))}

    def cleanup(self) -> None:
        pass


class HelperServer(Server):
    """A script of benches/load/ on a free port; its Maildir (when it keeps mail) is DIR/mail/box."""

    script = ""

    def maildir_new(self) -> Path | None:
        return None if self.mode == "sink" else self.dir / "mail" / "box" / "new"

    def args(self, mode: str) -> list[str]:
        raise NotImplementedError

    def start(self, mode: str) -> None:
        self.mode = mode
        self.dir = self._fresh_dir(mode)
        self.port = free_port()
        cmd = [sys.executable, str(HELPERS / self.script), "--port", str(self.port), *self.args(mode)]
        self._spawn(cmd, self.dir / f"{self.name}.log")


class Aiosmtpd(HelperServer):
    name = "aiosmtpd"
    script = "aiosmtpd_server.py"

    def version(self) -> str:
        return run_text([sys.executable, "-c", "import aiosmtpd; print(aiosmtpd.__version__)"])

    def problem(self) -> str | None:
        return None if self.version() else "aiosmtpd is not importable (pip install aiosmtpd)"

    def args(self, mode: str) -> list[str]:
        if mode == "sink":
            return ["--mode", "sink"]
        return ["--mode", "durable", "--maildir", str(self.dir / "mail" / "box")]


class Floor(HelperServer):
    """benches/load/trio_floor.py: the least a Trio-orchestrated server costs (not an MTA)."""

    name = "floor"
    script = "trio_floor.py"
    extra: tuple[str, ...] = ()

    def args(self, mode: str) -> list[str]:
        return ["--dir", str(self.dir), "--mode", "sink" if mode == "sink" else "durable", *self.extra]


class FloorAccept(Floor):
    """The floor in durable mode delivering nothing: a bound for acceptance alone
    (every other server delivers while it accepts)."""

    name = "floor-accept"
    extra = ("--no-delivery",)

    def maildir_new(self) -> Path | None:
        return None

    def problem(self) -> str | None:
        return None if set(self.settings.modes) == {"durable"} else "floor-accept runs in durable mode only (--modes durable)"


class Postfix(Server):
    """A private Postfix instance in a temporary config_directory, or smtp-sink (sink mode).

    One config_directory for the whole benchmark; each run gets a fresh queue
    directory (a copy, with ownership, of a template that ``postfix check``
    made once) and a fresh Maildir tree, so no run starts by deleting the
    previous run's files."""

    name = "postfix"

    def __init__(self, root: Path, settings: Settings) -> None:
        super().__init__(root, settings)
        self.base = root / "postfix"
        self.instance_port = 0
        self.master_pid = 0
        self.made = False

    def version(self) -> str:
        return run_text([POSTCONF, "-d", "-h", "mail_version"])

    def problem(self) -> str | None:
        for tool in (POSTFIX, SMTP_SINK):
            if not os.access(tool, os.X_OK):
                return f"{tool} is missing (apt-get install postfix)"
        if os.geteuid() != 0:
            return "a private Postfix instance needs root (postfix start)"
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            return "no postfix user"
        return None

    def roots(self) -> list[int]:
        if self.mode == "sink":
            return super().roots()
        return [self.master_pid] if self.master_pid else []

    def maildir_new(self) -> Path | None:
        return None if self.mode == "sink" else self.dir / "mail" / "box" / "new"

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    def main_cf(self, run_dir: Path) -> dict[str, str]:
        pw = pwd.getpwnam("postfix")
        return {
            "compatibility_level": "3.6",
            "queue_directory": str(run_dir / "queue"),
            "data_directory": str(self.base / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix-bench.test",
            "mydomain": "postfix-bench.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP",
            # delivery: any user of the bench domain into one Maildir (trailing / = Maildir)
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_base": str(run_dir / "mail"),
            "virtual_mailbox_maps": "static:box/",
            "virtual_uid_maps": f"static:{pw.pw_uid}",
            "virtual_gid_maps": f"static:{pw.pw_gid}",
            "virtual_minimum_uid": "1",
            "local_recipient_maps": "",
            # its own log file through postlogd, not syslog
            "maillog_file": str(run_dir / "maillog"),
            "maillog_file_prefixes": str(self.root),
            "biff": "no",
        }

    MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{port} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def _configure(self, run_dir: Path) -> None:
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf(run_dir).items()))

    def _make(self) -> None:
        """The instance: main.cf and master.cf (the services of Debian's
        master.cf that a mail server needs, chroot off, smtpd on a loopback
        port), and a template queue directory made by ``postfix check``."""
        pw = pwd.getpwnam("postfix")
        for d in ("etc", "data", "template/queue"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        os.chown(self.base / "data", pw.pw_uid, pw.pw_gid)
        self.instance_port = free_port()
        (self.etc / "master.cf").write_text(self.MASTER_CF.format(port=f"127.0.0.1:{self.instance_port}"))
        self._configure(self.base / "template")
        r = subprocess.run([POSTFIX, "-c", str(self.etc), "check"], capture_output=True, text=True)
        if r.returncode != 0 or not (self.base / "template" / "queue" / "incoming").is_dir():
            raise RuntimeError(f"postfix check failed: {r.stdout}{r.stderr}")
        self.made = True

    def start(self, mode: str) -> None:
        self.mode = mode
        self.dir = self._fresh_dir(mode)
        if mode == "sink":
            self.port = free_port()
            cmd = [SMTP_SINK]
            if os.geteuid() == 0:
                cmd += ["-u", "postfix"]
            cmd += [f"127.0.0.1:{self.port}", "1024"]
            self._spawn(cmd, self.dir / "smtp-sink.log")
            return
        if not self.made:
            self._make()
        pw = pwd.getpwnam("postfix")
        subprocess.run(["cp", "-a", str(self.base / "template" / "queue"), str(self.dir / "queue")], check=True)
        (self.dir / "mail").mkdir()
        os.chown(self.dir / "mail", pw.pw_uid, pw.pw_gid)
        self._configure(self.dir)
        self.port = self.instance_port
        r = subprocess.run([POSTFIX, "-c", str(self.etc), "start"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stdout}{r.stderr}\n{tail(self.dir / 'maillog')}")
        STARTED.append(self)
        try:
            self.master_pid = int((self.dir / "queue" / "pid" / "master.pid").read_text().split()[0])
            wait_smtp(self.port, 30, lambda: pid_alive(self.master_pid))
        except (OSError, ValueError, RuntimeError) as e:
            self.stop()
            raise RuntimeError(f"postfix did not start: {e}\n{tail(self.dir / 'maillog')}") from None

    def stop(self) -> None:
        if self.mode == "sink" or not self.master_pid:
            super().stop()
            return
        if self in STARTED:
            STARTED.remove(self)
        tree = descendants([self.master_pid], scan_proc())
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True)
        if not wait_gone(tree, 15):
            subprocess.run([POSTFIX, "-c", str(self.etc), "abort"], capture_output=True)
            if not wait_gone(tree, 5):
                kill_pids(tree)
        self.master_pid = 0

    def postconf_n(self) -> str:
        if not self.made:
            self._make()
        return run_text([POSTCONF, "-c", str(self.etc), "-n"])


SERVER_CLASSES: dict[str, type[Server]] = {"smtprs": Smtprs, "postfix": Postfix, "aiosmtpd": Aiosmtpd, "floor": Floor, "floor-accept": FloorAccept}


# --------------------------------------------------------------------------
# load


class Source:
    """smtp-source with -c, its running counter read with timestamps."""

    def __init__(self, port: int, size: int, sessions: int) -> None:
        self.cmd = [
            SMTP_SOURCE, "-c", "-l", str(size), "-m", "1000000000", "-s", str(sessions),
            "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}",
        ]  # fmt: skip
        self.count = 0
        self.t_count = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        STARTED.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = b""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
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
            last = done.replace(b"\n", b"\r").rsplit(b"\r", 1)[-1].strip() or b"0"
            try:
                self.count, self.t_count = int(last), time.monotonic()
            except ValueError:
                pass

    def cpu_ticks(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/stat", "rb") as f:
                data = f.read()
            fields = data[data.rfind(b")") + 2 :].split()
            return int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            return 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self in STARTED:
            STARTED.remove(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read()
            self.proc.stderr.close()


class Probe:
    def __init__(self, port: int, size: int, seconds: float) -> None:
        cmd = [sys.executable, str(HELPERS / "probe.py"), "--port", str(port), "--size", str(size), "--seconds", str(seconds), "--to", RCPT]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        STARTED.append(self)

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError("latency probe did not finish") from None
        if self in STARTED:
            STARTED.remove(self)
        if self.proc.returncode != 0:
            raise RuntimeError(f"latency probe failed: {err.decode(errors='replace')[-2000:]}")
        res: dict[str, Any] = json.loads(out)
        res["wall_s"] = time.monotonic() - self.started
        return res

    def stop(self) -> None:
        if self in STARTED:
            STARTED.remove(self)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Snap:
    t: float
    sent: int
    server_ticks: int
    client_ticks: int
    machine_busy: int
    machine_total: int
    self_cpu: float
    delivered: int = 0


def snap(server: Server, source: Source | None, count_new: bool = False) -> Snap:
    procs = scan_proc()
    busy, total = machine_ticks()
    s = Snap(
        t=time.monotonic(),
        sent=source.count if source else 0,
        server_ticks=tree_cpu_ticks(server.roots(), procs),
        client_ticks=source.cpu_ticks() if source else 0,
        machine_busy=busy,
        machine_total=total,
        self_cpu=time.process_time(),
    )
    if source is not None:
        s.t = source.t_count  # the counter's own time stamp
    if count_new:
        nd = server.maildir_new()
        s.delivered = count_dir(nd) if nd else 0
    return s


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def message_octets(size: int) -> int:
    # smtp-source's header block (From, To, Date, Message-Id, blank line) is about 130 octets
    return size + 130


# --------------------------------------------------------------------------
# one run


def run_one(server: Server, mode: str, size: int, conc: int, rnd: int, st: Settings) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "server": server.name, "label": server.label(mode), "mode": mode, "size": size,
        "concurrency": conc, "round": rnd, "ok": False, "loadavg_before": os.getloadavg()[0],
    }  # fmt: skip
    t_start = time.monotonic()
    server.start(mode)
    sampler = MemorySampler(server.roots).start()
    source: Source | None = None
    probe: Probe | None = None
    try:
        if mode == "e2e":
            source = Source(server.port, size, conc)
            series = []
            deadline = time.monotonic() + st.e2e_warmup
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            a = s = snap(server, source, count_new=True)
            series.append((a.t, a.sent, a.delivered))
            end = time.monotonic() + st.e2e_window
            step = max(1.0, st.e2e_window / 30)
            while time.monotonic() < end:
                time.sleep(min(step, max(0.0, end - time.monotonic())))
                s = snap(server, source, count_new=True)
                series.append((s.t, s.sent, s.delivered))
                if not source.alive():
                    break
            b = s
            if not source.alive():
                source.stop()
                raise RuntimeError(f"smtp-source stopped: {source.stderr.decode(errors='replace')[-500:]}")
            source.stop()
            dt = b.t - a.t
            rec["accepted_per_s"] = (b.sent - a.sent) / dt
            rec["delivered_per_s"] = (b.delivered - a.delivered) / dt
            rec["msgs_per_s"] = rec["delivered_per_s"]
            rec["series"] = [[round(t - a.t, 3), n, d] for t, n, d in series]
            # second half vs first half of the window: is it steady?
            mid = len(series) // 2
            if mid >= 1 and len(series) - 1 > mid:
                (t0, _, d0), (tm, _, dm), (t1, _, d1) = series[0], series[mid], series[-1]
                rec["delivered_first_half"] = (dm - d0) / (tm - t0) if tm > t0 else None
                rec["delivered_second_half"] = (d1 - dm) / (t1 - tm) if t1 > tm else None
            lat: list[float] = []
            probe_count = 0
        else:
            if conc >= 2:
                source = Source(server.port, size, conc - 1)
                probe = Probe(server.port, size, st.warmup + st.window + 0.3)
            else:
                source = Source(server.port, size, 1)
            time.sleep(st.warmup)
            a = snap(server, source)
            time.sleep(st.window)
            b = snap(server, source)
            if not source.alive():
                source.stop()
                raise RuntimeError(f"smtp-source stopped: {source.stderr.decode(errors='replace')[-500:]}")
            if probe is not None:
                pres = probe.result(timeout=st.window + 60)
                source.stop()
            else:
                source.stop()
                probe = Probe(server.port, size, st.latency_seconds)
                pres = probe.result(timeout=st.latency_seconds + 60)
            if pres["error_count"]:
                rec["probe_errors"] = pres["errors"]
            done = pres["done"]
            if conc >= 2:
                inwin = [lat for t, lat in done if a.t <= t <= b.t]
                probe_count = len(inwin)
            else:
                inwin = [lat for _, lat in done[len(done) // 10 :]]  # first tenth is warm-up
                probe_count = 0
            lat = sorted(inwin)
            rec["probe_cpu_share"] = pres["cpu_s"] / max(pres["wall_s"], 1e-9)
            rec["probe_messages"] = len(done)
            dt = b.t - a.t
            rec["msgs_per_s"] = (b.sent - a.sent + probe_count) / dt
        rec["window_s"] = dt
        rec["mb_per_s"] = rec["msgs_per_s"] * message_octets(size) / 1e6
        rec["latency_samples"] = len(lat)
        if lat:
            rec["p50_ms"] = quantile(lat, 0.5) * 1000
            rec["p90_ms"] = quantile(lat, 0.9) * 1000
            rec["p99_ms"] = quantile(lat, 0.99) * 1000
            rec["max_ms"] = lat[-1] * 1000
        msgs = (b.sent - a.sent + probe_count) if mode != "e2e" else max(b.delivered - a.delivered, 1)
        server_cores = (b.server_ticks - a.server_ticks) / TICK / dt
        client_cores = (b.client_ticks - a.client_ticks) / TICK / dt
        busy_cores = (b.machine_busy - a.machine_busy) / max(b.machine_total - a.machine_total, 1) * NCPU
        self_cores = (b.self_cpu - a.self_cpu) / dt
        probe_cores = rec.get("probe_cpu_share", 0.0) if conc >= 2 and mode != "e2e" else 0.0
        rec["server_cores"] = server_cores
        rec["server_cpu_us_per_msg"] = server_cores * dt / max(msgs, 1) * 1e6
        rec["client_cores"] = client_cores + probe_cores
        rec["machine_busy_cores"] = busy_cores
        rec["other_cores"] = max(0.0, busy_cores - server_cores - client_cores - probe_cores - self_cores)
        if mode != "sink":
            rec.update(server.figures())
        rec["ok"] = True
    except Exception as e:  # recorded, the benchmark goes on
        rec["error"] = f"{type(e).__name__}: {e}"
    finally:
        for p in (source, probe):
            if p is not None:
                p.stop()
        sampler.stop()
        server.stop()
    rec["peak_rss_mb"] = sampler.peak_rss / 2**20
    rec["peak_pss_mb"] = sampler.peak_pss / 2**20
    rec["peak_processes"] = sampler.peak_procs
    rec["loadavg_after"] = os.getloadavg()[0]
    rec["run_s"] = time.monotonic() - t_start
    rec["dir"] = str(server.dir)
    return rec


# --------------------------------------------------------------------------
# summary, tables, chart


def median_min_max(values: list[float]) -> tuple[float, float, float] | None:
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


METRICS = (
    "msgs_per_s", "mb_per_s", "p50_ms", "p99_ms", "peak_rss_mb", "peak_pss_mb", "server_cpu_us_per_msg",
    "accepted_per_s", "delivered_per_s", "client_cores", "other_cores", "server_cores", "records_per_fdatasync",
)  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, int, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["mode"], r["size"], r["concurrency"], r["server"]), []).append(r)
    out = []
    for (mode, size, conc, server), rs in cells.items():
        ok = [r for r in rs if r.get("ok")]
        row: dict[str, Any] = {
            "mode": mode, "size": size, "concurrency": conc, "server": server,
            "label": rs[0]["label"], "rounds": len(ok), "failed": len(rs) - len(ok),
            "errors": sorted({r["error"] for r in rs if "error" in r})[:3],
        }  # fmt: skip
        for m in METRICS:
            mm = median_min_max([r.get(m) for r in ok])  # type: ignore[misc]
            if mm:
                row[m] = {"median": mm[0], "min": mm[1], "max": mm[2]}
        out.append(row)
    by_key = {(r["mode"], r["size"], r["concurrency"], r["server"]): r for r in out}
    for r in out:
        for peer in ("postfix", "aiosmtpd", "floor"):
            ref = by_key.get((r["mode"], r["size"], r["concurrency"], peer))
            if ref and "msgs_per_s" in r and "msgs_per_s" in ref and ref["msgs_per_s"]["median"] > 0:
                r[f"x_{peer}"] = r["msgs_per_s"]["median"] / ref["msgs_per_s"]["median"]
    order = {m: i for i, m in enumerate(MODES)}
    sorder = {s: i for i, s in enumerate(SERVERS)}
    out.sort(key=lambda r: (order.get(r["mode"], 9), r["size"], r["concurrency"], sorder.get(r["server"], 9)))
    return out


def fmt_num(v: float) -> str:
    if v != v:
        return "–"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(row: dict[str, Any], metric: str, spread: bool = False) -> str:
    m = row.get(metric)
    if not m:
        return "–"
    s = fmt_num(m["median"])
    if spread and row["rounds"] > 1:
        s += f" ({fmt_num(m['min'])}–{fmt_num(m['max'])})"
    return s


TARGETS = (
    # (mode, size, concurrency, peer, minimum ratio, what the issue says)
    ("durable", 1024, 10, "postfix", 4.0, "durable ≥ 4× Postfix, 1 KiB"),
    ("durable", 1024, 50, "postfix", 4.0, "durable ≥ 4× Postfix, 1 KiB"),
    ("durable", 102400, 10, "postfix", 2.0, "durable ≥ 2× Postfix, 100 KiB"),
    ("durable", 102400, 50, "postfix", 2.0, "durable ≥ 2× Postfix, 100 KiB"),
    ("e2e", 1024, 10, "postfix", 3.0, "end to end ≥ 3× Postfix"),
    ("e2e", 1024, 50, "postfix", 3.0, "end to end ≥ 3× Postfix"),
    ("e2e", 102400, 10, "postfix", 3.0, "end to end ≥ 3× Postfix"),
    ("e2e", 102400, 50, "postfix", 3.0, "end to end ≥ 3× Postfix"),
    ("sink", 1024, 10, "postfix", 0.75, "sink ≥ 0.75× smtp-sink"),
    ("sink", 1024, 50, "postfix", 0.75, "sink ≥ 0.75× smtp-sink"),
    ("sink", 102400, 10, "postfix", 0.75, "sink ≥ 0.75× smtp-sink"),
    ("sink", 102400, 50, "postfix", 0.75, "sink ≥ 0.75× smtp-sink"),
)


def targets_table(summary: list[dict[str, Any]]) -> list[str]:
    by_key = {(r["mode"], r["size"], r["concurrency"], r["server"]): r for r in summary}
    lines = [
        "| target | cell | smtprs ÷ Postfix | smtprs ÷ aiosmtpd | met? |",
        "|---|---|---|---|---|",
    ]
    floor = any(r["server"] == "floor" for r in summary)
    if floor:  # the Trio floor's own ratio: is the target within the design's reach here at all?
        lines = [lines[0] + " Trio floor ÷ Postfix | smtprs ÷ Trio floor |", lines[1] + "---|---|"]
    any_row = False
    for mode, size, conc, _peer, minimum, what in TARGETS:
        r = by_key.get((mode, size, conc, "smtprs"))
        if not r or "x_postfix" not in r:
            continue
        any_row = True
        xp = r["x_postfix"]
        xa = r.get("x_aiosmtpd")
        met = xp >= minimum
        if mode != "sink" and xa is not None:
            met = met and xa >= xp  # "ahead of aiosmtpd by at least as much as of Postfix"
        line = (
            f"| {what} | {mode} {size_label(size)} c={conc} | {xp:.2f}× | {f'{xa:.2f}×' if xa is not None else '–'} | "
            f"{'yes' if met else f'no ({xp / minimum:.0%} of the target)'} |"
        )
        if floor:
            f = by_key.get((mode, size, conc, "floor"), {})
            fx, sf = f.get("x_postfix"), r.get("x_floor")
            line += f" {f'{fx:.2f}×' if fx is not None else '–'} | {f'{sf:.0%}' if sf is not None else '–'} |"
        lines.append(line)
    return lines if any_row else []


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    summary = results["summary"]
    st = results["settings"]
    out = ["# smtprs load benchmark", ""]
    out.append(
        f"{meta['date']} · {meta['nproc']} × {meta['cpu']} · Linux {meta['kernel']} · work dir on {meta['workdir_fs']} · "
        f"load average {meta['loadavg_start']:.2f} at start, {meta.get('loadavg_end', float('nan')):.2f} at end"
    )
    out.append("")
    workers = st.get("smtprs_workers")
    if meta.get("smtprs_has_workers"):
        wtext = f", {workers} worker(s)" if workers else ", workers: its default (one per CPU)"
    else:
        wtext = ", one process"
    out.append(
        f"smtprs {meta['versions'].get('smtprs', '?')} (commit {meta.get('smtprs_commit') or '?'}{wtext}) · "
        f"Postfix {meta['versions'].get('postfix', '?')} · "
        f"aiosmtpd {meta['versions'].get('aiosmtpd', '?')} · Python {meta['python']}"
    )
    out.append("")
    out.append(
        f"{st['rounds']} round(s), servers in turn; window {st['window']} s after {st['warmup']} s warm-up "
        f"(end to end: {st['e2e_window']} s after {st['e2e_warmup']} s). Figures are medians over rounds, "
        "(min–max) when there are several. × Postfix: ratio of medians (in sink mode, to smtp-sink)."
    )
    for mode in MODES:
        rows = [r for r in summary if r["mode"] == mode]
        if not rows:
            continue
        out += ["", f"## {MODE_TITLES[mode]}", ""]
        if mode == "e2e":
            out.append("| size | conc | server | delivered msgs/s | accepted msgs/s | MB/s | peak RSS / PSS MB | server CPU µs/msg | × Postfix | × aiosmtpd |")
            out.append("|---|---|---|---|---|---|---|---|---|---|")
        else:
            out.append("| size | conc | server | msgs/s | MB/s | p50 ms | p99 ms | peak RSS / PSS MB | server CPU µs/msg | × Postfix | × aiosmtpd |")
            out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            name = r["label"]
            if r["failed"]:
                name += f" ⚠ {r['failed']} failed"
            xp = f"{r['x_postfix']:.2f}" if "x_postfix" in r and r["server"] != "postfix" else "–"
            xa = f"{r['x_aiosmtpd']:.2f}" if "x_aiosmtpd" in r and r["server"] != "aiosmtpd" else "–"
            mem = f"{cell(r, 'peak_rss_mb')} / {cell(r, 'peak_pss_mb')}"
            if mode == "e2e":
                out.append(
                    f"| {size_label(r['size'])} | {r['concurrency']} | {name} | {cell(r, 'delivered_per_s', True)} | "
                    f"{cell(r, 'accepted_per_s')} | {cell(r, 'mb_per_s')} | {mem} | {cell(r, 'server_cpu_us_per_msg')} | {xp} | {xa} |"
                )
            else:
                out.append(
                    f"| {size_label(r['size'])} | {r['concurrency']} | {name} | {cell(r, 'msgs_per_s', True)} | "
                    f"{cell(r, 'mb_per_s')} | {cell(r, 'p50_ms')} | {cell(r, 'p99_ms')} | {mem} | "
                    f"{cell(r, 'server_cpu_us_per_msg')} | {xp} | {xa} |"
                )
        oth = [r["other_cores"]["median"] for r in rows if "other_cores" in r]
        if oth:
            out.append("")
            out.append(
                f"CPU taken by other processes on the machine during these windows: median {statistics.median(oth):.2f}, "
                f"up to {max(r['other_cores']['max'] for r in rows if 'other_cores' in r):.2f} cores of {meta['nproc']}."
            )
    gc = [r for r in summary if r["server"] == "smtprs" and "records_per_fdatasync" in r]
    if gc:
        out += ["", "## Group commit (smtprs)", ""]
        out.append("Spool records (a new message; a finished one) written per fdatasync, from `smtprs status` after each window:")
        out.append("")
        out.append("| mode | size | conc | records per fdatasync |")
        out.append("|---|---|---|---|")
        for r in gc:
            out.append(f"| {r['mode']} | {size_label(r['size'])} | {r['concurrency']} | {cell(r, 'records_per_fdatasync')} |")
    tt = targets_table(summary)
    if tt:
        out += ["", "## Targets of issue 4", ""] + tt
    errs = [r for r in summary if r["errors"]]
    if errs:
        out += ["", "## Failed runs", ""]
        for r in errs:
            for e in r["errors"]:
                out.append(f"- {r['mode']} {size_label(r['size'])} c={r['concurrency']} {r['server']}: {e.splitlines()[0][:300]}")
    return "\n".join(out) + "\n"


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is missing (pip install matplotlib): no chart", file=sys.stderr)
        return False
    summary = results["summary"]
    modes = [m for m in MODES if any(r["mode"] == m for r in summary)]
    sizes = sorted({r["size"] for r in summary})
    if not modes or not sizes:
        return False
    colors = {"smtprs": "#c0392b", "postfix": "#2c3e50", "aiosmtpd": "#2980b9", "floor": "#95a5a6"}
    fig, axes = plt.subplots(len(sizes), len(modes), figsize=(4.6 * len(modes), 3.6 * len(sizes)), squeeze=False)
    for i, size in enumerate(sizes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for server in SERVERS:
                rows = sorted((r for r in summary if r["mode"] == mode and r["size"] == size and r["server"] == server and "msgs_per_s" in r), key=lambda r: r["concurrency"])
                if not rows:
                    continue
                xs = [r["concurrency"] for r in rows]
                med = [r["msgs_per_s"]["median"] for r in rows]
                lo = [r["msgs_per_s"]["median"] - r["msgs_per_s"]["min"] for r in rows]
                hi = [r["msgs_per_s"]["max"] - r["msgs_per_s"]["median"] for r in rows]
                style = "--" if server == "floor" else "-"
                ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=rows[0]["label"], color=colors.get(server), linestyle=style)
            ax.set_xscale("log")
            conc = sorted({r["concurrency"] for r in summary})
            ax.set_xticks(conc)
            ax.set_xticklabels([str(c) for c in conc])
            ax.set_ylim(bottom=0)
            ax.set_title(f"{mode} · {size_label(size)}", fontsize=10)
            ax.set_xlabel("concurrent sessions")
            ax.set_ylabel("delivered msgs/s" if mode == "e2e" else "accepted msgs/s")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    meta = results["meta"]
    fig.suptitle(
        f"smtprs vs Postfix vs aiosmtpd · {meta['nproc']} × {meta['cpu']} · {meta['date'][:10]} · "
        f"medians of {results['settings']['rounds']} round(s), bars min–max",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------
# machine description


def machine(work: Path, servers: dict[str, Server], settings: Settings) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = run_text(["df", "--output=fstype", str(work)]).splitlines()[-1:] or ["?"]
    versions = {name: s.version() for name, s in servers.items()}
    env = smtprs_env(settings)
    code = "import smtprs, os; print(os.path.dirname(smtprs.__file__))"
    smtprs_src = run_text([settings.smtprs_cmd[0], "-c", code], env) if settings.smtprs_cmd[1:2] == ("-m",) else ""
    commit = run_text(["git", "-C", smtprs_src, "rev-parse", "--short", "HEAD"]) if smtprs_src else ""
    dirty = run_text(["git", "-C", smtprs_src, "status", "--porcelain", "--untracked-files=no", "."]) if commit else ""
    if smtprs_src and not commit:  # a snapshot made with `git archive`: its COMMIT file, if any
        try:
            commit = (Path(smtprs_src).parent / "COMMIT").read_text().strip()
        except OSError:
            pass
    help_text = run_text([*settings.smtprs_cmd, "serve", "--help"], env)
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": NCPU,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_mb": os.sysconf("SC_PHYS_PAGES") * PAGE // 2**20,
        "workdir": str(work),
        "workdir_fs": fs[0].strip(),
        "versions": versions,
        "smtprs_source": smtprs_src,
        "smtprs_commit": commit + ("+dirty" if dirty else ""),
        "smtprs_has_workers": "--workers" in help_text,
        "smtp_source": SMTP_SOURCE,
        "loadavg_start": os.getloadavg()[0],
        "command": shlex.join([sys.executable, *sys.argv]),
    }


# --------------------------------------------------------------------------
# main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 round, short windows: a smoke run of a few minutes")
    p.add_argument("--out", type=Path, help="output directory (default: bench-results/<date>-<time>)")
    p.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    p.add_argument("--servers", help=f"comma-separated subset of {','.join(SERVERS)}")
    p.add_argument("--modes", help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--sizes", help="comma-separated payload sizes in octets (default 1024,102400)")
    p.add_argument("--concurrency", help="comma-separated session counts (default 1,10,50)")
    p.add_argument("--window", type=float, help="seconds counted per sink/durable run (default 10; --quick 2)")
    p.add_argument("--warmup", type=float, help="seconds of load before the window (default 2; --quick 0.5)")
    p.add_argument("--e2e-window", type=float, help="seconds counted per end-to-end run (default 60; --quick 4)")
    p.add_argument("--e2e-warmup", type=float, help="seconds before the end-to-end window (default 10; --quick 1)")
    p.add_argument("--smtprs-cmd", help="command that runs smtprs (default: this Python -m smtprs)")
    p.add_argument("--smtprs-workers", type=int, help="pass --workers N to smtprs serve (default: its own default)")
    p.add_argument(
        "--smtprs-pythonpath",
        help="import smtprs from this directory (PYTHONPATH), e.g. a snapshot of python/ so that commits landing during a long run do not change what is measured",
    )
    p.add_argument("--workdir", type=Path, help="where the temporary server directories go (default: the system temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    p.add_argument("--min-free-gb", type=float, default=20, help="delete finished runs' files early when the disk has less free (default 20)")
    p.add_argument("--report", type=Path, metavar="RESULTS_JSON", help="only re-render results.md and the chart from a results.json")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    st = Settings.quick_settings() if args.quick else Settings()
    if args.rounds:
        st.rounds = args.rounds
    if args.servers:
        st.servers = tuple(s for s in args.servers.split(",") if s)
        bad = set(st.servers) - set(SERVERS)
        if bad:
            sys.exit(f"unknown server(s): {', '.join(sorted(bad))}")
    if args.modes:
        st.modes = tuple(m for m in args.modes.split(",") if m)
        bad = set(st.modes) - set(MODES)
        if bad:
            sys.exit(f"unknown mode(s): {', '.join(sorted(bad))}")
    if args.sizes:
        st.sizes = tuple(int(x) for x in args.sizes.split(","))
    if args.concurrency:
        st.concurrency = tuple(int(x) for x in args.concurrency.split(","))
    for name in ("window", "warmup", "e2e_window", "e2e_warmup"):
        if getattr(args, name) is not None:
            setattr(st, name, getattr(args, name))
    if args.smtprs_cmd:
        st.smtprs_cmd = tuple(shlex.split(args.smtprs_cmd))
    st.smtprs_workers = args.smtprs_workers
    st.smtprs_pythonpath = args.smtprs_pythonpath
    return st


def write_outputs(results: dict[str, Any], out: Path) -> str:
    results["summary"] = summarize(results["runs"])
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    md = markdown(results)
    if chart(results, out / "msgs_per_s.png"):
        md += "\n![msgs/s against concurrency](msgs_per_s.png)\n"
    (out / "results.md").write_text(md)
    return md


def estimate(st: Settings, n_servers: int) -> float:
    per_cell = 0.0
    for mode in st.modes:
        for conc in st.concurrency:
            if mode == "e2e":
                per_cell += st.e2e_warmup + st.e2e_window + 2
            else:
                per_cell += st.warmup + st.window + 1.5 + (st.latency_seconds if conc == 1 else 0.3)
    return per_cell * len(st.sizes) * n_servers * st.rounds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        print(write_outputs(saved, args.report.parent))
        return 0
    st = settings_from(args)
    if not os.access(SMTP_SOURCE, os.X_OK):
        sys.exit(f"{SMTP_SOURCE} is missing: apt-get install postfix (it ships smtp-source and smtp-sink)")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    out = args.out or Path("bench-results") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="smtprs-bench-", dir=args.workdir))
    results: dict[str, Any] = {"meta": {}, "settings": asdict(st), "runs": []}
    t0 = time.monotonic()
    interrupted = False
    # Finished runs' directories are deleted at the end of a round (or when the
    # disk fills up), not after each run: on a journal-less ext4 the inode
    # allocator skips inodes freed in the last minute or so, so deleting tens
    # of thousands of files just before a run would slow the next server down.
    finished: list[Path] = []
    purged_before = False

    def purge() -> None:
        nonlocal purged_before
        for d in finished:
            shutil.rmtree(d, ignore_errors=True)
        purged_before = bool(finished)
        finished.clear()

    jsonl = open(out / "runs.jsonl", "a")
    try:
        work.chmod(0o755)  # Postfix's unprivileged processes must reach their directories
        servers: dict[str, Server] = {}
        for name in st.servers:
            srv = SERVER_CLASSES[name](work, st)
            why = srv.problem()
            if why:
                print(f"skipping {name}: {why}", file=sys.stderr)
                continue
            servers[name] = srv
        if not servers:
            raise SystemExit("no server can run")
        results["meta"] = machine(work, servers, st)
        if results["meta"]["workdir_fs"] in ("tmpfs", "ramfs"):
            print(f"warning: {work} is on {results['meta']['workdir_fs']}: fsync is free there, durable figures mean nothing (use --workdir)", file=sys.stderr)
        if "postfix" in servers and set(st.modes) - {"sink"}:
            results["meta"]["postfix_main_cf"] = servers["postfix"].postconf_n()  # type: ignore[attr-defined]
        names = list(servers)
        plan = [(rnd, mode, size, conc) for rnd in range(st.rounds) for mode in st.modes for size in st.sizes for conc in st.concurrency]
        total = len(plan) * len(names)
        print(
            f"{total} runs ({len(names)} servers × {len(plan) // st.rounds} cells × {st.rounds} rounds), "
            f"about {estimate(st, len(names)) / 60:.0f} min; work dir {work}; load average {os.getloadavg()[0]:.2f}; results in {out}",
            flush=True,
        )
        i = 0
        last_round = 0
        for rnd, mode, size, conc in plan:
            if rnd != last_round:
                purge()
                last_round = rnd
            k = rnd % len(names)
            for name in names[k:] + names[:k]:  # A B C, B C A, C A B: nobody always goes first
                i += 1
                if shutil.disk_usage(work).free < args.min_free_gb * 2**30:
                    purge()
                rec = run_one(servers[name], mode, size, conc, rnd, st)
                finished.append(Path(rec.pop("dir")))
                rec["purged_before"], purged_before = purged_before, False
                results["runs"].append(rec)
                jsonl.write(json.dumps(rec) + "\n")
                jsonl.flush()
                print(progress_line(rec, i, total, time.monotonic() - t0), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping everything, writing what was measured", file=sys.stderr)
    finally:
        for thing in list(reversed(STARTED)):
            try:
                thing.stop()
            except Exception as e:  # keep stopping the others
                print(f"while stopping {thing}: {e}", file=sys.stderr)
        jsonl.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not results["runs"]:
        return 130 if interrupted else 1
    results["meta"]["loadavg_end"] = os.getloadavg()[0]
    results["meta"]["duration_s"] = time.monotonic() - t0
    results["meta"]["interrupted"] = interrupted
    md = write_outputs(results, out)
    print()
    print(md)
    print(f"written: {out / 'results.md'}, {out / 'results.json'}, {out / 'msgs_per_s.png'}")
    return 130 if interrupted else 0


def progress_line(rec: dict[str, Any], i: int, total: int, elapsed: float) -> str:
    if rec["ok"]:
        if "p50_ms" in rec:
            lat = f"p50 {rec['p50_ms']:7.2f} p99 {rec['p99_ms']:7.2f} ms"
        else:
            lat = f"accepted {rec.get('accepted_per_s', 0):7.0f}/s".ljust(27)
        line = (
            f"{rec['msgs_per_s']:8.0f} msg/s {lat}  rss {rec['peak_rss_mb']:6.1f} MB  "
            f"cpu {rec['server_cpu_us_per_msg']:6.0f} µs/msg  other {rec['other_cores']:.2f}"
        )
        if "records_per_fdatasync" in rec:
            line += f"  {rec['records_per_fdatasync']:.1f} rec/fdatasync"
    else:
        line = "FAILED " + rec.get("error", "").splitlines()[0][:150]
    return (
        f"[{i:3}/{total}] r{rec['round'] + 1} {rec['mode']:7} {size_label(rec['size']):7} c={rec['concurrency']:<3} "
        f"{rec['server']:9} {line}  (la {os.getloadavg()[0]:.2f}, {elapsed / 60:.1f} min)"
    )


if __name__ == "__main__":
    sys.exit(main())
