#!/usr/bin/env python3
"""CPU per message of one `smtprs serve`, for A/B work on the hot path.

    python benches/cpu_per_message.py [--mode sink|durable] [--workers 1]
                                      [--messages 4000] [--sessions 10] [--size 1024]

Starts smtprs on a free loopback port with a generated config (`sink`:
queue.discard, nothing kept; `durable`: fsync'd spool and Maildir delivery),
sends --messages messages with Postfix's smtp-source (a new connection per
message), and prints msgs/s and the server's user and system CPU per message
(utime and stime of its processes from /proc, over the load only).  Run it
several times, alternating the versions compared: the machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_ticks(root: int) -> tuple[int, int]:
    """(utime, stime) summed over ``root`` and its children, in clock ticks."""
    pids = [root] + [int(p) for p in Path(f"/proc/{root}/task/{root}/children").read_text().split()]
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    return user, system


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("sink", "durable"), default="sink")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--size", type=int, default=1024)
    args = p.parse_args()
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    with tempfile.TemporaryDirectory(prefix="smtprs-cpu-", dir="/var/tmp") as tmp:
        port = free_port()
        cfg = Path(tmp) / "smtprs.toml"
        cfg.write_text(
            f'hostname = "cpu.test"\ndata_dir = "{tmp}/data"\n[smtpd]\nmax_connections = 1000\nmax_connections_per_client = 1000\n'
            f'[[smtpd.listeners]]\naddress = "127.0.0.1:{port}"\n[local]\ndomains = ["bench.test"]\nmaildir = "{tmp}/mail/{{user}}"\n'
            f"[queue]\ndiscard = {'true' if args.mode == 'sink' else 'false'}\n"
        )
        cmd = [sys.executable, "-m", "smtprs", "serve", "--config", str(cfg), "--workers", str(args.workers)]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                        s.recv(100)
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("smtprs did not start") from None
                    time.sleep(0.1)
            time.sleep(0.5 * args.workers)
            u0, s0 = tree_ticks(proc.pid)
            t0 = time.monotonic()
            subprocess.run(
                [source, "-s", str(args.sessions), "-m", str(args.messages), "-l", str(args.size), "-f", "load@source.test", "-t", "box@bench.test", f"127.0.0.1:{port}"],
                check=True,
            )
            t1 = time.monotonic()
            u1, s1 = tree_ticks(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    n = args.messages
    us = 1e6 / TICK / n
    print(
        f"{args.mode}, {args.workers} worker(s), {args.sessions} sessions, {args.size} octets: {n / (t1 - t0):.0f} msgs/s, "
        f"user {(u1 - u0) * us:.0f} µs/msg, system {(s1 - s0) * us:.0f} µs/msg"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
