"""The rspamd that the milter-rspamd mode puts behind both smtprs and Postfix.

One rspamd for the whole benchmark, started only when that mode is asked
for: its proxy worker in milter mode, scanning by itself (``self_scan``: no
normal worker, no redis), one process per CPU, its own config, database,
run and log directories under the benchmark's work directory, and the stock
modules of /etc/rspamd.  Its DNS is a dnsmasq of its own that answers every
name NXDOMAIN at once (``--local=/#/``), so no lookup leaves the machine and
neither server waits on the network.  ``milter_headers`` adds the same
headers to every message for both servers (``skip_local = false``: the load
comes from loopback).

Both servers get the same milter settings: Postfix ``smtpd_milters`` with
``milter_default_action = tempfail``; smtprs ``[milter] milters`` with its
default action, tempfail.  The figures then say what each MTA costs around
the same content filter; rspamd's own CPU is in neither server's column.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from .procs import STARTED, stop_started

RSPAMD = shutil.which("rspamd") or "/usr/bin/rspamd"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"

CONF = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "warning";
}}
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{port}";
    milter = yes;
    timeout = 120s;
    count = {count};
    upstream "local" {{
        default = yes;
        self_scan = yes;
    }}
}}
"""
LOCAL = {
    "options.inc": 'dns {{ nameserver = ["127.0.0.1:{dns}"]; timeout = 1s; retransmits = 1; }}\n',
    "milter_headers.conf": (
        'use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", "x-spam-status"];\n'
        "skip_local = false;\nskip_authenticated = false;\n"
    ),
}


def _free_port(udp_too: bool = False) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not udp_too:
            return port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def problem() -> str | None:
    """Why the milter-rspamd mode cannot run here (None if it can)."""
    for exe, package in ((RSPAMD, "rspamd"), (DNSMASQ, "dnsmasq-base")):
        if not os.access(exe, os.X_OK):
            return f"{exe} is missing (apt-get install {package})"
    return None


class Rspamd:
    def __init__(self, work: Path) -> None:
        self.base = work / "rspamd"
        self.port = 0
        self.procs: list[subprocess.Popen[Any]] = []

    def start(self) -> None:
        for d in ("db", "run", "log", "local.d"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        dns_port = _free_port(udp_too=True)
        dns = subprocess.Popen(
            [DNSMASQ, "--keep-in-foreground", f"--port={dns_port}", "--listen-address=127.0.0.1", "--bind-interfaces",
             "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--pid-file=", "--local=/#/",
             *(["--user=root"] if os.getuid() == 0 else [])],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.procs.append(dns)
        self.port = _free_port()
        (self.base / "rspamd.conf").write_text(CONF.format(port=self.port, count=os.cpu_count() or 1))
        for name, text in LOCAL.items():
            (self.base / "local.d" / name).write_text(text.format(dns=dns_port))
        argv = [RSPAMD, "-f", "-u", "root", "-g", "root", "-c", str(self.base / "rspamd.conf")]
        for name, sub in (("DBDIR", "db"), ("RUNDIR", "run"), ("LOGDIR", "log")):
            argv += ["--var", f"{name}={self.base / sub}"]
        argv += ["--var", f"LOCAL_CONFDIR={self.base}"]
        with open(self.base / "stdout.log", "wb") as out:
            self.procs.append(
                subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        STARTED.append(self)
        deadline = time.monotonic() + 60  # rspamd compiles its rules at start: seconds
        while time.monotonic() < deadline:
            if self.procs[-1].poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        log = (
            (self.base / "log" / "rspamd.log").read_text(errors="replace")[-2000:]
            if (self.base / "log" / "rspamd.log").exists()
            else ""
        )
        self.stop()
        raise RuntimeError(f"rspamd did not start on 127.0.0.1:{self.port}:\n{log}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            try:
                os.killpg(p.pid, 15)  # the group: rspamd's workers too
            except ProcessLookupError:
                pass
            stop_started(self, p, grace=10)
        self.procs.clear()
        if self in STARTED:
            STARTED.remove(self)
