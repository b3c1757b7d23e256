"""Soak: many clients for a while; the server's memory stays flat and no file descriptor leaks.

The load is mixed, so that error paths get their share: Postfix's smtp-source
sending steadily over kept-open connections, over a new connection per
message, and to a remote domain relayed to smtp-sink (outbound connections
too); and Python clients that hang up in the middle of DATA, send garbage
until they get 421, stay idle until the command timeout closes them, send
with BDAT, and get refused by the per-client connection limit.

Every second the server's RSS (/proc/PID/status) and its open descriptors
other than sockets (/proc/PID/fd) are sampled.  After a warm-up, the median
RSS of the last third of the run must not exceed that of the first third by
more than 5 % or 6 MiB (whichever is larger): a leak of a few kB per message
shows at these message counts.  The non-socket descriptors of the last third
(median) must not exceed those of the first third by more than 2 (a segment
being rotated, a mailbox file being written); and once the clients stop and
the queue is empty, all descriptors, sockets included, must be back at their
idle count.

The default run is about 40 s; SMTPRS_SOAK=1 runs 5 minutes (SMTPRS_SOAK_SECONDS
to choose).
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import subprocess
import threading
import time

import pytest

from smtprs.queue.spool import read_queue

from .harness import DOMAIN, ConnectionClosed, Server, SMTPClient, make_message
from .peers import SmtpSink

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SOAK = os.environ.get("SMTPRS_SOAK") == "1"
DURATION = float(os.environ.get("SMTPRS_SOAK_SECONDS", "300" if SOAK else "40"))
WARMUP = max(5.0, DURATION * 0.1)
REMOTE = "remote.test"
PER_CLIENT = 48  # max_connections_per_client; smtp-source opens 42 sessions from 127.0.0.1


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def file_fds(pid: int) -> int:
    """Descriptors that are not sockets (files, pipes, epoll): their number does not follow
    the clients connected at the moment of the sample, so a leak stands out."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            n += not os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return n


def _smtp_source(port: int, *args: str) -> subprocess.Popen[bytes]:
    exe = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    return subprocess.Popen(
        [exe, "-M", "client.test", "-f", "soak@client.test", *args, f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


class Misbehaving:
    """Python clients that take the error paths, at a modest pace."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(kind,), daemon=True)
            for kind in ("hangup", "garbage", "idle", "bdat", "crowd")
        ]
        self.rounds = {t.name: 0 for t in self.threads}
        self.errors: list[str] = []

    def __enter__(self) -> Misbehaving:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def _run(self, kind: str) -> None:
        rng = random.Random(kind)
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                getattr(self, f"_{kind}")(rng, n)
            except (OSError, ConnectionClosed, TimeoutError):
                pass
            except AssertionError as e:
                self.errors.append(f"{kind}: {e}")
                return
            self.rounds[threading.current_thread().name] = n
            self.stop.wait(rng.uniform(0.05, 0.3))

    def _hangup(self, rng: random.Random, n: int) -> None:
        with self.srv.connect(source="127.0.0.2") as c:
            c.ehlo()
            c.expect("MAIL FROM:<hangup@client.test>", 250)
            c.expect(f"RCPT TO:<hangup@{DOMAIN}>", 250)
            c.expect("DATA", 354)
            c.send(b"Subject: never finished\r\n\r\n" + b"x" * rng.randint(0, 400_000))

    def _garbage(self, rng: random.Random, n: int) -> None:
        with self.srv.connect(source="127.0.0.3") as c:
            for _ in range(20):
                r = c.cmd(bytes(rng.choice(b"ABCXYZ <>:@.") for _ in range(rng.randint(1, 60))))
                if r.code == 421:
                    c.wait_closed(5)
                    return
            raise AssertionError("garbage never got a 421")

    def _idle(self, rng: random.Random, n: int) -> None:
        with self.srv.connect(source="127.0.0.4") as c:
            c.ehlo()
            r = c.reply(timeout=15)  # the command timeout (2 s)
            assert r.code == 421, r

    def _bdat(self, rng: random.Random, n: int) -> None:
        msg = make_message(f"bdat {n}", "sent with BDAT\r\n" * rng.randint(1, 50))
        with self.srv.connect(source="127.0.0.5") as c:
            c.ehlo()
            c.expect("MAIL FROM:<bdat@client.test>", 250)
            c.expect(f"RCPT TO:<bdat@{DOMAIN}>", 250)
            half = len(msg) // 2
            c.send(f"BDAT {half}\r\n".encode() + msg[:half])
            assert c.reply().code == 250
            c.send(f"BDAT {len(msg) - half} LAST\r\n".encode() + msg[half:])
            assert c.reply().code == 250
            c.expect("QUIT", 221)

    def _crowd(self, rng: random.Random, n: int) -> None:
        # more sessions than max_connections_per_client allows from one address: the rest get 421
        held = []
        refused = 0
        try:
            for _ in range(PER_CLIENT + 3):
                c = SMTPClient(self.srv.port, timeout=10, source="127.0.0.6")
                held.append(c)
                r = c.reply()
                assert r.code in (220, 421), r
                refused += r.code == 421
        finally:
            for c in held:
                c.close()
        assert refused >= 3, f"{refused} of {PER_CLIENT + 3} sessions refused"
        self.stop.wait(1.0)


@pytest.mark.timeout(DURATION * 3 + 180)
def test_soak_memory_flat_and_no_fd_leak(make_server, smtp_sink: SmtpSink) -> None:
    sink = smtp_sink
    srv = make_server(
        {
            "smtpd": {
                "command_timeout": 2.0,
                "max_connections_per_client": PER_CLIENT,
                "limit_exempt_networks": [],  # the crowd comes from 127.0.0.6, loopback
            },
            "queue": {"retry_min": 0.5, "retry_max": 2.0},
            "relay": {
                "transport": {REMOTE: f"[127.0.0.1]:{sink.port}"},
                "trusted_networks": ["127.0.0.1/32"],
                "idle_timeout": 0.5,
            },
        }
    )
    idle_fds = fd_count(srv.pid)
    sources = [
        _smtp_source(srv.port, "-d", "-s", "30", "-m", "100000000", "-w", "1", "-l", "3000", "-t", f"steady@{DOMAIN}"),
        _smtp_source(srv.port, "-s", "8", "-m", "100000000", "-w", "1", "-l", "1500", "-t", f"churn@{DOMAIN}"),
        _smtp_source(srv.port, "-d", "-s", "4", "-m", "100000000", "-w", "1", "-l", "2000", "-t", f"far@{REMOTE}"),
    ]
    samples: list[tuple[float, int, int]] = []
    try:
        with Misbehaving(srv) as bad:
            start = time.monotonic()
            while time.monotonic() - start < WARMUP + DURATION:
                time.sleep(1.0)
                assert srv.alive(), srv.log_tail()
                for p in sources:
                    assert p.poll() is None, f"smtp-source stopped: {p.stderr.read().decode() if p.stderr else ''}"
                if time.monotonic() - start >= WARMUP:
                    samples.append((time.monotonic() - start, srv.proc_status("VmRSS"), file_fds(srv.pid)))
            assert not bad.errors, bad.errors
            rounds = dict(bad.rounds)
    finally:
        for p in sources:
            p.terminate()
            p.wait(10)
    third = len(samples) // 3
    first, last = samples[:third], samples[-third:]
    rss_first = statistics.median(s[1] for s in first)
    rss_last = statistics.median(s[1] for s in last)
    fds_first = statistics.median(s[2] for s in first)
    fds_last = statistics.median(s[2] for s in last)
    steady = len(srv.mail("steady"))
    report = (
        f"{len(samples)} samples over {DURATION:.0f}s: RSS median {rss_first / 2**20:.1f} -> {rss_last / 2**20:.1f} MiB, "
        f"file fds median {fds_first} -> {fds_last}, all fds at rest before {idle_fds}; delivered so far: steady {steady}, churn {len(srv.mail('churn'))}, "
        f"bdat {len(srv.mail('bdat'))}, relayed {len(sink.dumps())}; misbehaving rounds {rounds}"
    )
    print(report)
    print("fds", [s[2] for s in samples])
    print("RSS MiB", [round(s[1] / 2**20, 1) for s in samples])
    # not a speed check: a soak that moved (almost) nothing would prove nothing
    assert steady > DURATION * 2, f"too little mail went through for a soak: {report}"
    assert rss_last <= rss_first + max(6 * 2**20, rss_first * 0.05), f"memory grew: {report}"
    assert fds_last <= fds_first + 2, f"file descriptors grew: {report}"
    # when everything has been delivered and every client is gone, the descriptors are back
    deadline = time.monotonic() + 60
    while (read_queue(srv.spool_dir) or fd_count(srv.pid) > idle_fds + 2) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert read_queue(srv.spool_dir) == [], "the queue did not drain"
    assert fd_count(srv.pid) <= idle_fds + 2, (
        f"{fd_count(srv.pid)} descriptors open at rest, {idle_fds} before the soak: {os.listdir(f'/proc/{srv.pid}/fd')}"
    )
    assert "internal error" not in srv.log() and "Traceback" not in srv.log()
