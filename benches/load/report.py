"""Reporting: the summary over rounds, results.md, the chart, and the progress line.

Everything here works from the records ``driver.run_one`` returns (or from a
saved results.json, for ``--report``).  The chart needs matplotlib (the
``bench`` extra: ``pip install -e '.[bench]'``); without it the benchmark says
so in one line and draws nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from .settings import DKIM_MODES, MODE_TITLES, MODES, SERVERS, size_label
from .targets import targets_table

CHART = "msgs_per_s.png"


def median_min_max(values: list[float]) -> tuple[float, float, float] | None:
    vals = [v for v in values if v is not None and v == v]
    if not vals:
        return None
    return statistics.median(vals), min(vals), max(vals)


METRICS = (
    "msgs_per_s", "mb_per_s", "p50_ms", "p99_ms", "peak_rss_mb", "peak_pss_mb", "server_cpu_us_per_msg",
    "accepted_per_s", "delivered_per_s", "client_cores", "other_cores", "server_cores", "records_per_fdatasync",
    "msgs_per_next_hop_session", "dkim_signed_share", "dkim_verified_share",
)  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cells: dict[tuple[str, int, int, str], list[dict[str, Any]]] = {}
    for r in runs:
        cells.setdefault((r["mode"], r["size"], r["concurrency"], r["server"]), []).append(r)
    out = []
    for (mode, size, conc, server), rs in cells.items():
        ok = [r for r in rs if r.get("ok")]
        row: dict[str, Any] = {
            "mode": mode, "size": size, "concurrency": conc, "server": server,
            "label": rs[0]["label"], "rounds": len(ok), "failed": len(rs) - len(ok),
            "errors": sorted({r["error"] for r in rs if "error" in r})[:3],
        }  # fmt: skip
        for m in METRICS:
            mm = median_min_max([r.get(m) for r in ok])  # type: ignore[misc]
            if mm:
                row[m] = {"median": mm[0], "min": mm[1], "max": mm[2]}
        out.append(row)
    by_key = {(r["mode"], r["size"], r["concurrency"], r["server"]): r for r in out}
    for r in out:
        for peer in ("postfix", "aiosmtpd", "floor"):
            ref = by_key.get((r["mode"], r["size"], r["concurrency"], peer))
            if ref and "msgs_per_s" in r and "msgs_per_s" in ref and ref["msgs_per_s"]["median"] > 0:
                r[f"x_{peer}"] = r["msgs_per_s"]["median"] / ref["msgs_per_s"]["median"]
    order = {m: i for i, m in enumerate(MODES)}
    sorder = {s: i for i, s in enumerate(SERVERS)}
    out.sort(key=lambda r: (order.get(r["mode"], 9), r["size"], r["concurrency"], sorder.get(r["server"], 9)))
    return out


def fmt_num(v: float) -> str:
    if v != v:
        return "–"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(row: dict[str, Any], metric: str, spread: bool = False) -> str:
    m = row.get(metric)
    if not m:
        return "–"
    s = fmt_num(m["median"])
    if spread and row["rounds"] > 1:
        s += f" ({fmt_num(m['min'])}–{fmt_num(m['max'])})"
    return s


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    summary = results["summary"]
    st = results["settings"]
    out = ["# smtprs load benchmark", ""]
    out.append(
        f"{meta['date']} · {meta['nproc']} × {meta['cpu']} · Linux {meta['kernel']} · work dir on {meta['workdir_fs']} · "
        f"load average {meta['loadavg_start']:.2f} at start, {meta.get('loadavg_end', float('nan')):.2f} at end"
    )
    out.append("")
    workers = st.get("smtprs_workers")
    if meta.get("smtprs_has_workers"):
        wtext = f", {workers} worker(s)" if workers else ", workers: its default (one per CPU)"
    else:
        wtext = ", one process"
    out.append(
        f"smtprs {meta['versions'].get('smtprs', '?')} (commit {meta.get('smtprs_commit') or '?'}{wtext}) · "
        f"Postfix {meta['versions'].get('postfix', '?')} · "
        f"aiosmtpd {meta['versions'].get('aiosmtpd', '?')} · Python {meta['python']}"
        + (f" · the floor: {meta['floor_processes']} process(es)" if meta.get("floor_processes") else "")
    )
    out.append("")
    out.append(
        f"{st['rounds']} round(s), servers in turn; window {st['window']} s after {st['warmup']} s warm-up "
        f"(end to end and relay: {st['e2e_window']} s after {st['e2e_warmup']} s). Figures are medians over rounds, "
        "(min–max) when there are several. × Postfix: ratio of medians (in sink mode, to smtp-sink)."
    )
    for mode in MODES:
        rows = [r for r in summary if r["mode"] == mode]
        if not rows:
            continue
        out += ["", f"## {MODE_TITLES[mode]}", ""]
        if mode in ("e2e", "relay"):
            what = "received at the sink msgs/s" if mode == "relay" else "delivered msgs/s"
            out.append(
                f"| size | conc | server | {what} | accepted msgs/s | MB/s | peak RSS / PSS MB | server CPU µs/msg | × Postfix | × aiosmtpd |"
            )
            out.append("|---|---|---|---|---|---|---|---|---|---|")
        else:
            out.append(
                "| size | conc | server | msgs/s | MB/s | p50 ms | p99 ms | peak RSS / PSS MB | server CPU µs/msg | × Postfix | × aiosmtpd |"
            )
            out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            name = r["label"]
            if r["failed"]:
                name += f" ⚠ {r['failed']} failed"
            xp = f"{r['x_postfix']:.2f}" if "x_postfix" in r and r["server"] != "postfix" else "–"
            xa = f"{r['x_aiosmtpd']:.2f}" if "x_aiosmtpd" in r and r["server"] != "aiosmtpd" else "–"
            mem = f"{cell(r, 'peak_rss_mb')} / {cell(r, 'peak_pss_mb')}"
            if mode in ("e2e", "relay"):
                out.append(
                    f"| {size_label(r['size'])} | {r['concurrency']} | {name} | {cell(r, 'delivered_per_s', True)} | "
                    f"{cell(r, 'accepted_per_s')} | {cell(r, 'mb_per_s')} | {mem} | {cell(r, 'server_cpu_us_per_msg')} | {xp} | {xa} |"
                )
            else:
                out.append(
                    f"| {size_label(r['size'])} | {r['concurrency']} | {name} | {cell(r, 'msgs_per_s', True)} | "
                    f"{cell(r, 'mb_per_s')} | {cell(r, 'p50_ms')} | {cell(r, 'p99_ms')} | {mem} | "
                    f"{cell(r, 'server_cpu_us_per_msg')} | {xp} | {xa} |"
                )
        reuse = [r for r in rows if "msgs_per_next_hop_session" in r]
        if mode == "relay" and reuse:
            out.append("")
            out.append(
                "Messages per SMTP session at the sink (connection reuse to the next hop; the whole run, until the server stopped): "
                + "; ".join(
                    f"{r['server']} {size_label(r['size'])} c={r['concurrency']} {cell(r, 'msgs_per_next_hop_session')}"
                    for r in reuse
                )
                + "."
            )
        oth = [r["other_cores"]["median"] for r in rows if "other_cores" in r]
        if oth:
            out.append("")
            out.append(
                f"CPU taken by other processes on the machine during these windows: median {statistics.median(oth):.2f}, "
                f"up to {max(r['other_cores']['max'] for r in rows if 'other_cores' in r):.2f} cores of {meta['nproc']}."
            )
    gc = [r for r in summary if r["server"] == "smtprs" and "records_per_fdatasync" in r]
    if gc:
        out += ["", "## Group commit (smtprs)", ""]
        out.append(
            "Spool records (a new message; a finished one) written per fdatasync, from `smtprs status` after each window:"
        )
        out.append("")
        out.append("| mode | size | conc | records per fdatasync |")
        out.append("|---|---|---|---|")
        for r in gc:
            out.append(
                f"| {r['mode']} | {size_label(r['size'])} | {r['concurrency']} | {cell(r, 'records_per_fdatasync')} |"
            )
    out += dkim_section(summary)
    tt = targets_table(summary)
    if tt:
        out += ["", "## Targets of issues 4 and 13", ""] + tt
    errs = [r for r in summary if r["errors"]]
    if errs:
        out += ["", "## Failed runs", ""]
        for r in errs:
            for e in r["errors"]:
                out.append(
                    f"- {r['mode']} {size_label(r['size'])} c={r['concurrency']} {r['server']}: {e.splitlines()[0][:300]}"
                )
    return "\n".join(out) + "\n"


def dkim_section(summary: list[dict[str, Any]]) -> list[str]:
    """smtprs's durable cells with DKIM signing beside the same cells without."""
    rows = [r for r in summary if r["server"] == "smtprs" and r["mode"] in DKIM_MODES]
    if not rows:
        return []
    by_key = {(r["mode"], r["size"], r["concurrency"]): r for r in summary if r["server"] == "smtprs"}
    out = ["", "## DKIM signing on beside off (smtprs, durable)", ""]
    out.append(
        "Same run, same settings; signed: the load from relay.trusted_networks, its From: domain with a key. "
        "Signed / verified: of up to 20 delivered messages per run, the share with a DKIM-Signature field and "
        "the share dkimpy verifies with the published key."
    )
    out.append("")
    out.append(
        "| size | conc | signing | msgs/s | × unsigned | p50 ms | p99 ms | server CPU µs/msg | + µs/msg | signed | verified |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for size, conc in sorted({(r["size"], r["concurrency"]) for r in rows}):
        base = by_key.get(("durable", size, conc))
        if base is not None:
            out.append(
                f"| {size_label(size)} | {conc} | off | {cell(base, 'msgs_per_s', True)} | 1 | {cell(base, 'p50_ms')} | "
                f"{cell(base, 'p99_ms')} | {cell(base, 'server_cpu_us_per_msg')} | – | – | – |"
            )
        for mode in DKIM_MODES:
            r = by_key.get((mode, size, conc))
            if r is None:
                continue
            ratio = plus = "–"
            if base is not None and "msgs_per_s" in base and "msgs_per_s" in r and base["msgs_per_s"]["median"] > 0:
                ratio = f"{r['msgs_per_s']['median'] / base['msgs_per_s']['median']:.2f}"
            if base is not None and "server_cpu_us_per_msg" in base and "server_cpu_us_per_msg" in r:
                plus = fmt_num(r["server_cpu_us_per_msg"]["median"] - base["server_cpu_us_per_msg"]["median"])
            out.append(
                f"| {size_label(size)} | {conc} | {DKIM_MODES[mode]} | {cell(r, 'msgs_per_s', True)} | {ratio} | "
                f"{cell(r, 'p50_ms')} | {cell(r, 'p99_ms')} | {cell(r, 'server_cpu_us_per_msg')} | {plus} | "
                f"{cell(r, 'dkim_signed_share')} | {cell(r, 'dkim_verified_share')} |"
            )
    return out


def chart(results: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"no chart ({CHART}): matplotlib is not installed (pip install -e '.[bench]')", file=sys.stderr)
        return False
    summary = results["summary"]
    modes = [m for m in MODES if any(r["mode"] == m for r in summary)]
    sizes = sorted({r["size"] for r in summary})
    if not modes or not sizes:
        return False
    colors = {"smtprs": "#c0392b", "postfix": "#2c3e50", "aiosmtpd": "#2980b9", "floor": "#95a5a6"}
    fig, axes = plt.subplots(len(sizes), len(modes), figsize=(4.6 * len(modes), 3.6 * len(sizes)), squeeze=False)
    for i, size in enumerate(sizes):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            for server in SERVERS:
                rows = sorted(
                    (
                        r
                        for r in summary
                        if r["mode"] == mode and r["size"] == size and r["server"] == server and "msgs_per_s" in r
                    ),
                    key=lambda r: r["concurrency"],
                )
                if not rows:
                    continue
                xs = [r["concurrency"] for r in rows]
                med = [r["msgs_per_s"]["median"] for r in rows]
                lo = [r["msgs_per_s"]["median"] - r["msgs_per_s"]["min"] for r in rows]
                hi = [r["msgs_per_s"]["max"] - r["msgs_per_s"]["median"] for r in rows]
                style = "--" if server == "floor" else "-"
                ax.errorbar(
                    xs,
                    med,
                    yerr=[lo, hi],
                    marker="o",
                    capsize=3,
                    label=rows[0]["label"],
                    color=colors.get(server),
                    linestyle=style,
                )
            ax.set_xscale("log")
            conc = sorted({r["concurrency"] for r in summary})
            ax.set_xticks(conc)
            ax.set_xticklabels([str(c) for c in conc])
            ax.set_ylim(bottom=0)
            ax.set_title(f"{mode} · {size_label(size)}", fontsize=10)
            ax.set_xlabel("concurrent sessions")
            ax.set_ylabel("delivered msgs/s" if mode in ("e2e", "relay") else "accepted msgs/s")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
    meta = results["meta"]
    fig.suptitle(
        f"smtprs vs Postfix vs aiosmtpd · {meta['nproc']} × {meta['cpu']} · {meta['date'][:10]} · "
        f"medians of {results['settings']['rounds']} round(s), bars min–max",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_outputs(results: dict[str, Any], out: Path) -> tuple[str, list[Path]]:
    """results.json, the chart (when matplotlib is there) and results.md in ``out``:
    the markdown, and the files written."""
    results["summary"] = summarize(results["runs"])
    written = [out / "results.md", out / "results.json"]
    written[1].write_text(json.dumps(results, indent=1, default=str) + "\n")
    md = markdown(results)
    if chart(results, out / CHART):
        md += f"\n![msgs/s against concurrency]({CHART})\n"
        written.append(out / CHART)
    written[0].write_text(md)
    return md, written


def progress_line(rec: dict[str, Any], i: int, total: int, elapsed: float) -> str:
    if rec["ok"]:
        if "p50_ms" in rec:
            lat = f"p50 {rec['p50_ms']:7.2f} p99 {rec['p99_ms']:7.2f} ms"
        else:
            lat = f"accepted {rec.get('accepted_per_s', 0):7.0f}/s".ljust(27)
        line = (
            f"{rec['msgs_per_s']:8.0f} msg/s {lat}  rss {rec['peak_rss_mb']:6.1f} MB  "
            f"cpu {rec['server_cpu_us_per_msg']:6.0f} µs/msg  other {rec['other_cores']:.2f}"
        )
        if "records_per_fdatasync" in rec:
            line += f"  {rec['records_per_fdatasync']:.1f} rec/fdatasync"
    else:
        line = "FAILED " + rec.get("error", "").splitlines()[0][:150]
    return (
        f"[{i:3}/{total}] r{rec['round'] + 1} {rec['mode']:7} {size_label(rec['size']):7} c={rec['concurrency']:<3} "
        f"{rec['server']:9} {line}  (la {os.getloadavg()[0]:.2f}, {elapsed / 60:.1f} min)"
    )
