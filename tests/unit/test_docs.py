"""Every code example in the docs runs: each fenced block whose info string is
``python runnable`` in README.md and docs/*.md is run as a program of its own
(a fresh interpreter, in a temporary directory) and must exit 0; each
``toml config`` block must load as a configuration."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from smtprs import config

ROOT = Path(__file__).parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)


def blocks(kind: str) -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m.group(1).strip() == kind:
                line = text.count("\n", 0, m.start()) + 1
                out.append((f"{doc.relative_to(ROOT)}:{line}", m.group(2)))
    return out


RUNNABLE = blocks("python runnable")
CONFIGS = blocks("toml config")


def test_the_docs_have_runnable_examples() -> None:
    assert len(RUNNABLE) >= 3 and len(CONFIGS) >= 1


@pytest.mark.parametrize("where,code", RUNNABLE, ids=[w for w, _ in RUNNABLE])
def test_python_example_runs(where: str, code: str, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"{where}:\n{p.stdout}\n{p.stderr}"


@pytest.mark.parametrize("where,text", CONFIGS, ids=[w for w, _ in CONFIGS])
def test_config_example_loads(where: str, text: str, tmp_path: Path) -> None:
    tomllib.loads(text)
    f = tmp_path / "smtprs.toml"
    f.write_text(text)
    config.load(f)
