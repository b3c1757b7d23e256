"""Run `smtprs serve` for a benchmark script: a free loopback port, a
generated config, wait for its greeting, stop it (and its workers) at the end."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtprs_serve(
    directory: Path, config: Callable[[int], str], workers: int = 0
) -> Iterator[tuple[subprocess.Popen[bytes], int, list[str]]]:
    """Start smtprs with ``config(port)`` as its configuration; yields (process, port, command)
    once it greets, and stops it (SIGTERM, then SIGKILL of its group) when the block ends."""
    port = free_port()
    cfg = directory / "smtprs.toml"
    cfg.write_text(config(port))
    cmd = [sys.executable, "-m", "smtprs", "serve", "--config", str(cfg)]
    if workers:
        cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.recv(100)
                break
            except OSError:
                if proc.poll() is not None:
                    raise SystemExit(f"smtprs exited with {proc.returncode}") from None
                if time.monotonic() > deadline:
                    raise SystemExit("smtprs did not start") from None
                time.sleep(0.1)
        yield proc, port, cmd
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
