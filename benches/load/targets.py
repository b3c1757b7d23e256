"""Issue 4's throughput targets (and issue 13's relay target), and the table that says which of them a run met.

Each target is a cell (mode, size, concurrency) and a minimum ratio of
smtprs's msgs/s to Postfix's (in sink mode, to ``smtp-sink``); outside sink
mode smtprs must also be ahead of aiosmtpd by at least as much.  When the Trio
floor ran, two more columns say whether the target is within the design's
reach on the machine at all.
"""

from __future__ import annotations

from typing import Any

from .settings import size_label

TARGETS = (
    # (mode, size, concurrency, peer, minimum ratio, what the issue says)
    ("durable", 1024, 10, "postfix", 4.0, "durable ≥ 4× Postfix, 1 KiB"),
    ("durable", 1024, 50, "postfix", 4.0, "durable ≥ 4× Postfix, 1 KiB"),
    ("durable", 102400, 10, "postfix", 2.0, "durable ≥ 2× Postfix, 100 KiB"),
    ("durable", 102400, 50, "postfix", 2.0, "durable ≥ 2× Postfix, 100 KiB"),
    ("e2e", 1024, 10, "postfix", 3.0, "end to end ≥ 3× Postfix"),
    ("e2e", 1024, 50, "postfix", 3.0, "end to end ≥ 3× Postfix"),
    ("e2e", 102400, 10, "postfix", 3.0, "end to end ≥ 3× Postfix"),
    ("e2e", 102400, 50, "postfix", 3.0, "end to end ≥ 3× Postfix"),
    ("relay", 1024, 10, "postfix", 3.0, "relay ≥ 3× Postfix"),
    ("relay", 1024, 50, "postfix", 3.0, "relay ≥ 3× Postfix"),
    ("relay", 102400, 10, "postfix", 3.0, "relay ≥ 3× Postfix"),
    ("relay", 102400, 50, "postfix", 3.0, "relay ≥ 3× Postfix"),
    ("sink", 1024, 10, "postfix", 0.75, "sink ≥ 0.75× smtp-sink"),
    ("sink", 1024, 50, "postfix", 0.75, "sink ≥ 0.75× smtp-sink"),
    ("sink", 102400, 10, "postfix", 0.75, "sink ≥ 0.75× smtp-sink"),
    ("sink", 102400, 50, "postfix", 0.75, "sink ≥ 0.75× smtp-sink"),
)


def targets_table(summary: list[dict[str, Any]]) -> list[str]:
    by_key = {(r["mode"], r["size"], r["concurrency"], r["server"]): r for r in summary}
    lines = [
        "| target | cell | smtprs ÷ Postfix | smtprs ÷ aiosmtpd | met? |",
        "|---|---|---|---|---|",
    ]
    floor = any(r["server"] == "floor" for r in summary)
    if floor:  # the Trio floor's own ratio: is the target within the design's reach here at all?
        lines = [lines[0] + " Trio floor ÷ Postfix | smtprs ÷ Trio floor |", lines[1] + "---|---|"]
    any_row = False
    for mode, size, conc, _peer, minimum, what in TARGETS:
        r = by_key.get((mode, size, conc, "smtprs"))
        if not r or "x_postfix" not in r:
            continue
        any_row = True
        xp = r["x_postfix"]
        xa = r.get("x_aiosmtpd")
        met = xp >= minimum
        if mode != "sink" and xa is not None:
            met = met and xa >= xp  # "ahead of aiosmtpd by at least as much as of Postfix"
        line = (
            f"| {what} | {mode} {size_label(size)} c={conc} | {xp:.2f}× | {f'{xa:.2f}×' if xa is not None else '–'} | "
            f"{'yes' if met else f'no ({xp / minimum:.0%} of the target)'} |"
        )
        if floor:
            f = by_key.get((mode, size, conc, "floor"), {})
            fx, sf = f.get("x_postfix"), r.get("x_floor")
            line += f" {f'{fx:.2f}×' if fx is not None else '–'} | {f'{sf:.0%}' if sf is not None else '–'} |"
        lines.append(line)
    return lines if any_row else []
