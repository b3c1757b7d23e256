#!/usr/bin/env python3
"""Memory of N idle connections: `smtprs serve` holding N sessions that got
their greeting and then say nothing.

    python benches/idle_connections.py [--connections 10000] [--workers N]

It starts smtprs on a free loopback port with a generated config (limits
raised so that N sessions from 127.0.0.1 are allowed), opens the connections,
waits until every one has read its 220 greeting, then sums VmRSS over the
server's processes (supervisor and workers) and prints it beside the figure
with no connection open.  Everything it starts is stopped when it ends.
"""

from __future__ import annotations

import argparse
import os
import resource
import selectors
import socket
import sys
import tempfile
import time
from pathlib import Path

from smtprs_process import smtprs_serve


def tree_rss_kib(root: int) -> int:
    """Sum of VmRSS over ``root`` and its descendants."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=0, help="smtprs serve --workers (default: its own, one per CPU)")
    args = p.parse_args()
    n = args.connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))

    def config(port):
        return (
            f'hostname = "idle.test"\ndata_dir = "data"\n[smtpd]\nmax_connections = {n + 100}\n'
            f"max_connections_per_client = {n + 100}\ncommand_timeout = 3600\n"
            f'[[smtpd.listeners]]\naddress = "127.0.0.1:{port}"\n'
        )

    with (
        tempfile.TemporaryDirectory(prefix="smtprs-idle-") as tmp,
        smtprs_serve(Path(tmp), config, args.workers) as (proc, port, cmd),
    ):
        socks: list[socket.socket] = []
        try:
            time.sleep(1.0)
            base = tree_rss_kib(proc.pid)
            sel = selectors.DefaultSelector()
            for _ in range(n):
                s = socket.socket()
                s.connect(("127.0.0.1", port))
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ)
                socks.append(s)
            greeted = 0
            deadline = time.monotonic() + 120
            while greeted < n and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=1):
                    data = key.fileobj.recv(512)  # type: ignore[union-attr]
                    if not data.startswith(b"220 "):
                        raise SystemExit(f"not a greeting: {data!r}")
                    sel.unregister(key.fileobj)
                    greeted += 1
            if greeted < n:
                raise SystemExit(f"only {greeted} of {n} connections were greeted")
            time.sleep(2.0)
            held = tree_rss_kib(proc.pid)
            print(
                f"smtprs ({' '.join(cmd[3:])}) idle: {base / 1024:.1f} MiB RSS; with {n} idle connections: {held / 1024:.1f} MiB "
                f"(+{(held - base) / 1024:.1f} MiB, {(held - base) / n:.1f} KiB per connection)"
            )
        finally:
            for s in socks:
                s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
