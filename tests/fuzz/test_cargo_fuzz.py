"""A bounded libFuzzer run of the Rust core's fuzz targets (rust/fuzz).

Runs ``scripts/fuzz.sh`` with a fixed seed and 30,000 runs per target
(command, address, data, reply, server, server_auto; a few seconds each), after building
them (about a minute on a fresh checkout, seconds when rust/fuzz/target is
warm).  Skipped, with the reason,
where cargo-fuzz is not installed (``cargo install cargo-fuzz --locked``) or
when SMTPRS_SKIP_CARGO_FUZZ=1.  SMTPRS_CARGO_FUZZ_RUNS / _SEED / _SECONDS change the
runs, the seed and the time bound per target.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "fuzz.sh"


def _cargo_fuzz_missing() -> str | None:
    if os.environ.get("SMTPRS_SKIP_CARGO_FUZZ") == "1":
        return "SMTPRS_SKIP_CARGO_FUZZ=1"
    env = {**os.environ, "PATH": f"{Path.home() / '.cargo' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    if shutil.which("cargo", path=env["PATH"]) is None:
        return "cargo is not installed"
    probe = subprocess.run(["cargo", "fuzz", "--version"], capture_output=True, env=env)
    if probe.returncode != 0:
        return "cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"
    return None


def test_cargo_fuzz_targets_survive_a_bounded_run() -> None:
    missing = _cargo_fuzz_missing()
    if missing:
        pytest.skip(missing)
    seconds = os.environ.get("SMTPRS_CARGO_FUZZ_SECONDS", "60")  # an upper bound; -runs ends it first
    # A fixed seed and a fixed number of runs: on a fresh checkout (empty
    # corpus) the run is the same inputs every time, on any machine, so the
    # suite cannot fail on a random find that has nothing to do with the change
    # under test.  Past finds are replayed as seeds (rust/fuzz/seeds/*/regress-*).
    # Longer, random runs: `make fuzz`.
    fuzz_seed = os.environ.get("SMTPRS_CARGO_FUZZ_SEED", "1")
    fuzz_runs = os.environ.get("SMTPRS_CARGO_FUZZ_RUNS", "30000")
    env = {**os.environ, "FUZZ_ARGS": f"{os.environ.get('FUZZ_ARGS', '')} -seed={fuzz_seed} -runs={fuzz_runs}".strip()}
    proc = subprocess.run(
        ["bash", str(SCRIPT), seconds],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    output = proc.stdout + proc.stderr
    print(output)
    assert proc.returncode == 0, f"scripts/fuzz.sh {seconds} failed:\n{output[-6000:]}"
    assert output.count(" ok: ") == 6, output  # command address data reply server server_auto
