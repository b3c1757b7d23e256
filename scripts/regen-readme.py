#!/usr/bin/env python3
"""Rewrite README.md's configuration table from the schema.

The table is the one contiguous block of lines that starts with
``| key | type | default | meaning |``; it is replaced by
``smtprs.config.reference_markdown()``.  Run after any change to
config/schema.py:  PYTHONPATH=python python scripts/regen-readme.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from smtprs.config import reference_markdown

HEADER = "| key | type | default | meaning |"


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "README.md")
    lines = path.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[start:end] = [reference_markdown()]
    path.write_text("".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
