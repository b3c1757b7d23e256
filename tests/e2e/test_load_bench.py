"""The shipped load benchmark (python -m benches.load) runs: a short smoke run.

Figures are not asserted (this machine is noisy; see docs/performance.md):
only that the harness sets up smtprs and aiosmtpd, drives them with
smtp-source, and writes its table and JSON with the fields the issue asks
for, including smtprs's group-commit figure.  The chart needs matplotlib (the
``bench`` extra): it is checked when matplotlib is there, and otherwise the
benchmark must say so and draw nothing.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_load_benchmark_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "benches.load", "--quick", "--out", str(out), "--workdir", str(tmp_path),
        "--servers", "smtprs,aiosmtpd", "--modes", "sink,durable", "--sizes", "1024", "--concurrency", "4",
        "--smtprs-workers", "1",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    runs = {(r["server"], r["mode"]): r for r in results["runs"]}
    assert set(runs) == {("smtprs", "sink"), ("smtprs", "durable"), ("aiosmtpd", "sink"), ("aiosmtpd", "durable")}
    for key, r in runs.items():
        assert r["ok"], (key, r.get("error"))
        assert r["msgs_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["server_cpu_us_per_msg"] > 0, (key, r)
        assert r["p50_ms"] <= r["p99_ms"], (key, r)
    # group commit: at least one record per fdatasync, read from `smtprs status`
    assert runs[("smtprs", "durable")]["records_per_fdatasync"] >= 1.0
    assert "records_per_fdatasync" not in runs[("smtprs", "sink")]  # the null spool backend: nothing written
    md = (out / "results.md").read_text()
    assert "## Durable acceptance" in md and "## Group commit (smtprs)" in md
    assert "× aiosmtpd" in md
    png = out / "msgs_per_s.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "(msgs_per_s.png)" in md
    else:
        assert not png.exists() and "(msgs_per_s.png)" not in md
        assert "matplotlib is not installed" in p.stderr


def test_load_benchmark_relay_smoke_run(tmp_path: Path) -> None:
    """Relay mode: each server relays to the bench's own smtp-sink, which counts what it receives."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "benches.load", "--quick", "--out", str(out), "--workdir", str(tmp_path),
        "--servers", "smtprs,aiosmtpd,floor", "--modes", "relay", "--sizes", "1024", "--concurrency", "4",
        "--smtprs-workers", "1", "--e2e-warmup", "0.5", "--e2e-window", "2",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    runs = {(r["server"], r["mode"]): r for r in results["runs"]}
    assert set(runs) == {("smtprs", "relay"), ("aiosmtpd", "relay")}  # the floor has no SMTP client: skipped
    for key, r in runs.items():
        assert r["ok"], (key, r.get("error"))
        assert r["msgs_per_s"] > 0 and r["delivered_per_s"] == r["msgs_per_s"], (key, r)
        # aiosmtpd forwards before its 250: a session's last message may reach the sink before smtp-source counts it
        assert 0 < r["received_total"] <= r["accepted_total"] + 4, (key, r)
        assert r["next_hop_sessions"] >= 1, (key, r)
    # smtprs pools its connections to the next hop: many messages per session
    assert runs[("smtprs", "relay")]["msgs_per_next_hop_session"] > 2
    md = (out / "results.md").read_text()
    assert "## Relay" in md and "received at the sink msgs/s" in md and "Messages per SMTP session at the sink" in md


def test_load_benchmark_dkim_modes_sign_every_message(tmp_path: Path) -> None:
    """The durable-dkim-* modes: smtprs's durable mode with the load from a
    trusted network and a key for its From: domain; the messages delivered carry
    a DKIM-Signature that dkimpy verifies with the key the bench made with
    `smtprs dkim keygen`, and the report sets signing on beside off."""
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "benches.load", "--quick", "--out", str(out), "--workdir", str(tmp_path),
        "--servers", "smtprs,aiosmtpd", "--modes", "durable,durable-dkim-rsa,durable-dkim-ed25519",
        "--sizes", "1024", "--concurrency", "4", "--smtprs-workers", "1",
    ]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    runs = {(r["server"], r["mode"]): r for r in results["runs"]}
    # aiosmtpd has no DKIM signing: it runs durable only
    assert set(runs) == {
        ("smtprs", "durable"),
        ("smtprs", "durable-dkim-rsa"),
        ("smtprs", "durable-dkim-ed25519"),
        ("aiosmtpd", "durable"),
    }
    for mode in ("durable-dkim-rsa", "durable-dkim-ed25519"):
        r = runs[("smtprs", mode)]
        assert r["ok"], (mode, r.get("error"))
        assert r["msgs_per_s"] > 0 and r["dkim_checked"] >= 1, r
        assert r["dkim_signed_share"] == 1.0 and r["dkim_verified_share"] == 1.0, r
    assert "dkim_checked" not in runs[("smtprs", "durable")]
    md = (out / "results.md").read_text()
    section = md.split("## DKIM signing on beside off (smtprs, durable)", 1)[1]
    assert "| 1 KiB | 4 | off |" in section
    assert "| 1 KiB | 4 | rsa-sha256 |" in section and "| 1 KiB | 4 | ed25519-sha256 |" in section
