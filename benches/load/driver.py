"""The load driver: one run of one server, under smtp-source, measured.

``run_one`` starts the server, drives it with Postfix's ``smtp-source`` (C,
cheap; one message per connection, HELO, MAIL, RCPT, DATA, QUIT; ``-c`` prints
a counter after each 250, read here with timestamps), counts over a window
after a warm-up, samples acceptance latency with ``probe.py`` (one of the C
sessions at concurrency C >= 2; alone after the window at C = 1), accounts
the server's CPU and memory, and returns one record (a dict, as it goes into
results.json).  A failure is recorded in the record, not raised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .procs import (
    NCPU,
    STARTED,
    TICK,
    MemorySampler,
    follow_counter,
    machine_ticks,
    scan_proc,
    stop_started,
    tree_cpu_ticks,
)
from .servers import NextHop, Server
from .settings import HELPERS, RCPT, SENDER, SMTP_SOURCE, Settings


def count_dir(path: Path) -> int:
    try:
        with os.scandir(path) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


class Source:
    """smtp-source with -c, its running counter read with timestamps."""

    def __init__(self, port: int, size: int, sessions: int) -> None:
        self.cmd = [
            SMTP_SOURCE, "-c", "-l", str(size), "-m", "1000000000", "-s", str(sessions),
            "-f", SENDER, "-t", RCPT, f"127.0.0.1:{port}",
        ]  # fmt: skip
        self.count = 0
        self.t_count = time.monotonic()
        self.proc = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        STARTED.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = b""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        follow_counter(self.proc.stdout.fileno(), self._counted)

    def _counted(self, lines: bytes) -> None:
        last = lines.replace(b"\n", b"\r").rsplit(b"\r", 1)[-1].strip() or b"0"
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
        stop_started(self, self.proc)
        self._reader.join(5)
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read()
            self.proc.stderr.close()


class Probe:
    def __init__(self, port: int, size: int, seconds: float) -> None:
        cmd = [
            sys.executable,
            str(HELPERS / "probe.py"),
            "--port",
            str(port),
            "--size",
            str(size),
            "--seconds",
            str(seconds),
            "--to",
            RCPT,
        ]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
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


def snap(server: Server, source: Source | None, count_new: bool = False, hop: NextHop | None = None) -> Snap:
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
    if hop is not None:  # relay: what reached the next hop
        s.delivered = hop.received()
    elif count_new:
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


def run_one(server: Server, mode: str, size: int, conc: int, rnd: int, st: Settings) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "server": server.name, "label": server.label(mode), "mode": mode, "size": size,
        "concurrency": conc, "round": rnd, "ok": False, "loadavg_before": os.getloadavg()[0],
    }  # fmt: skip
    t_start = time.monotonic()
    hop: NextHop | None = None
    if mode == "relay":  # the next hop first: the server's config names its port
        hop = NextHop(server.root / f"next-hop-{server.name}-{server.runs + 1}.log")
        server.next_hop = hop.port
    try:
        server.start(mode)
    except BaseException:
        if hop is not None:
            hop.stop()
        raise
    sampler = MemorySampler(server.roots).start()
    source: Source | None = None
    probe: Probe | None = None
    try:
        if mode in ("e2e", "relay"):
            source = Source(server.port, size, conc)
            series = []
            deadline = time.monotonic() + st.e2e_warmup
            while time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            a = s = snap(server, source, count_new=True, hop=hop)
            series.append((a.t, a.sent, a.delivered))
            end = time.monotonic() + st.e2e_window
            step = max(1.0, st.e2e_window / 30)
            while time.monotonic() < end:
                time.sleep(min(step, max(0.0, end - time.monotonic())))
                s = snap(server, source, count_new=True, hop=hop)
                series.append((s.t, s.sent, s.delivered))
                if not source.alive():
                    break
            b = s
            if not source.alive():
                source.stop()
                raise RuntimeError(f"smtp-source stopped: {source.stderr.decode(errors='replace')[-500:]}")
            source.stop()
            if hop is not None:  # totals since the start: what was accepted, what the next hop got
                rec["accepted_total"] = source.count
                rec["received_total"] = hop.received()
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
        msgs = (b.sent - a.sent + probe_count) if mode not in ("e2e", "relay") else max(b.delivered - a.delivered, 1)
        server_cores = (b.server_ticks - a.server_ticks) / TICK / dt
        client_cores = (b.client_ticks - a.client_ticks) / TICK / dt
        busy_cores = (b.machine_busy - a.machine_busy) / max(b.machine_total - a.machine_total, 1) * NCPU
        self_cores = (b.self_cpu - a.self_cpu) / dt
        probe_cores = rec.get("probe_cpu_share", 0.0) if conc >= 2 and mode not in ("e2e", "relay") else 0.0
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
        if hop is not None:
            # smtp-sink counts a session when it ends: the server's cached connections end as it stops
            time.sleep(0.3)
            if rec["ok"]:
                rec["next_hop_sessions"] = hop.connections()
                rec["msgs_per_next_hop_session"] = hop.received() / max(rec["next_hop_sessions"], 1)
            hop.stop()
    rec["peak_rss_mb"] = sampler.peak_rss / 2**20
    rec["peak_pss_mb"] = sampler.peak_pss / 2**20
    rec["peak_processes"] = sampler.peak_procs
    rec["loadavg_after"] = os.getloadavg()[0]
    rec["run_s"] = time.monotonic() - t_start
    rec["dir"] = str(server.dir)
    return rec
