#!/usr/bin/env python3
"""CPU per message of one `smtprs serve`, for A/B work on the hot path.

    python benches/cpu_per_message.py [--mode sink|durable] [--workers 1]
                                      [--messages 4000] [--sessions 10] [--size 1024]

Starts smtprs on a free loopback port with a generated config (`sink`: the
null spool backend, queue.backend = "null", nothing kept; `durable`: the
default fsync'd spool and Maildir delivery), sends --messages messages with
Postfix's smtp-source (a new connection per message), and prints msgs/s and the server's user and system CPU per message
(utime and stime of its processes from /proc, over the load only).  Run it
several times, alternating the versions compared: the machine is noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smtprs_process import smtprs_serve

TICK = os.sysconf("SC_CLK_TCK")


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
    p.add_argument(
        "--extra-config", default="", help="TOML appended to the generated config, e.g. '[log]\\nlevel = \"warning\"'"
    )
    args = p.parse_args()
    source = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    extra: str = args.extra_config.replace("\\n", "\n")

    def config(port: int) -> str:
        return (
            f'hostname = "cpu.test"\ndata_dir = "data"\n[smtpd]\nmax_connections = 1000\nmax_connections_per_client = 1000\n'
            f'[[smtpd.listeners]]\naddress = "127.0.0.1:{port}"\n[local]\ndomains = ["bench.test"]\nmaildir = "mail/{{user}}"\n'
            + (
                '[queue]\nbackend = "null"\n' if args.mode == "sink" else ""
            )  # sink: keep nothing; durable: the defaults
            + extra
            + "\n"
        )

    with (
        tempfile.TemporaryDirectory(prefix="smtprs-cpu-", dir="/var/tmp") as tmp,
        smtprs_serve(Path(tmp), config, args.workers) as (proc, port, _),
    ):
        time.sleep(0.5 * args.workers)
        u0, s0 = tree_ticks(proc.pid)
        t0 = time.monotonic()
        subprocess.run(
            [
                source,
                "-s",
                str(args.sessions),
                "-m",
                str(args.messages),
                "-l",
                str(args.size),
                "-f",
                "load@source.test",
                "-t",
                "box@bench.test",
                f"127.0.0.1:{port}",
            ],
            check=True,
        )
        t1 = time.monotonic()
        u1, s1 = tree_ticks(proc.pid)
    n = args.messages
    us = 1e6 / TICK / n
    print(
        f"{args.mode}, {args.workers} worker(s), {args.sessions} sessions, {args.size} octets: {n / (t1 - t0):.0f} msgs/s, "
        f"user {(u1 - u0) * us:.0f} µs/msg, system {(s1 - s0) * us:.0f} µs/msg"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
