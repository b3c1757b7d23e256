"""Cross-MTA load benchmark: smtprs against Postfix and aiosmtpd, same run, same machine.

    python -m benches.load [--quick] [--out DIR]     (from the repository's top)
    python benches/load [--quick] [--out DIR]        (the same, by path)

The command line: it parses the options, checks which servers can run here,
runs the plan (every cell, the servers in turn, for several rounds), stops
everything it started when it ends (also on Ctrl-C, SIGTERM or SIGHUP), and
writes results.md, results.json, runs.jsonl and the chart to --out
(default: benches/results/<date>-<time>/, git-ignored).  The method is in
the package's docstring (benches/load/__init__.py) and benches/README.md.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

BY_PATH = not __package__  # `python benches/load`: the folder was run as a script, not imported as the package
if BY_PATH:  # then import the package from the repository's top, and this file's relative imports from it (PEP 366)
    _here = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0]).resolve() == _here:
        del sys.path[0]  # its modules are benches.load.*, not top-level ones
    sys.path.insert(0, str(_here.parents[1]))
    __package__ = "benches.load"

from .driver import run_one  # noqa: E402
from .procs import NCPU, PAGE, STARTED  # noqa: E402
from .report import progress_line, write_outputs  # noqa: E402
from .servers import SERVER_CLASSES, Server, run_text, smtprs_env  # noqa: E402
from .settings import DEFAULT_MODES, MILTER_MODES, MODES, RESULTS, SERVERS, SMTP_SOURCE, Settings  # noqa: E402


def invocation() -> list[str]:
    """The command line of this run, as it can be typed again."""
    if not BY_PATH:  # python -m benches.load
        return [sys.executable, "-m", "benches.load", *sys.argv[1:]]
    return [sys.executable, *sys.argv]


def machine(work: Path, servers: dict[str, Server], settings: Settings) -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fs = run_text(["df", "--output=fstype", str(work)]).splitlines()[-1:] or ["?"]
    versions = {name: s.version() for name, s in servers.items()}
    env = smtprs_env(settings)
    code = "import smtprs, os; print(os.path.dirname(smtprs.__file__))"
    smtprs_src = run_text([settings.smtprs_cmd[0], "-c", code], env) if settings.smtprs_cmd[1:2] == ("-m",) else ""
    commit = run_text(["git", "-C", smtprs_src, "rev-parse", "--short", "HEAD"]) if smtprs_src else ""
    dirty = run_text(["git", "-C", smtprs_src, "status", "--porcelain", "--untracked-files=no", "."]) if commit else ""
    if smtprs_src and not commit:  # a snapshot made with `git archive`: its COMMIT file, if any
        try:
            commit = (Path(smtprs_src).parent / "COMMIT").read_text().strip()
        except OSError:
            pass
    help_text = run_text([*settings.smtprs_cmd, "serve", "--help"], env)
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": NCPU,
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory_mb": os.sysconf("SC_PHYS_PAGES") * PAGE // 2**20,
        "workdir": str(work),
        "workdir_fs": fs[0].strip(),
        "versions": versions,
        "smtprs_source": smtprs_src,
        "smtprs_commit": commit + ("+dirty" if dirty else ""),
        "smtprs_has_workers": "--workers" in help_text,
        "smtp_source": SMTP_SOURCE,
        "loadavg_start": os.getloadavg()[0],
        "command": shlex.join(invocation()),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=None if BY_PATH else "python -m benches.load",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="1 round, short windows: a smoke run of a few minutes")
    p.add_argument("--out", type=Path, help="output directory (default: benches/results/<date>-<time>)")
    p.add_argument("--rounds", type=int, help="rounds (default 3; --quick 1)")
    p.add_argument("--servers", help=f"comma-separated subset of {','.join(SERVERS)}")
    p.add_argument(
        "--modes",
        help=f"comma-separated subset of {','.join(MODES)} (default {','.join(DEFAULT_MODES)}; "
        "the durable-dkim-* modes are smtprs's durable mode with DKIM signing on: run them with durable "
        "for the table of signing on beside off; milter-rspamd is durable acceptance with one rspamd as a "
        "milter behind smtprs and Postfix alike, which needs smtprs's [milter] support and rspamd installed)",
    )
    p.add_argument("--sizes", help="comma-separated payload sizes in octets (default 1024,102400)")
    p.add_argument("--concurrency", help="comma-separated session counts (default 1,10,50)")
    p.add_argument("--window", type=float, help="seconds counted per sink/durable run (default 10; --quick 2)")
    p.add_argument("--warmup", type=float, help="seconds of load before the window (default 2; --quick 0.5)")
    p.add_argument(
        "--e2e-window", type=float, help="seconds counted per end-to-end or relay run (default 60; --quick 4)"
    )
    p.add_argument(
        "--e2e-warmup", type=float, help="seconds before the end-to-end or relay window (default 10; --quick 1)"
    )
    p.add_argument("--smtprs-cmd", help="command that runs smtprs (default: this Python -m smtprs)")
    p.add_argument("--smtprs-workers", type=int, help="pass --workers N to smtprs serve (default: its own default)")
    p.add_argument(
        "--smtprs-pythonpath",
        help="import smtprs from this directory (PYTHONPATH), e.g. a snapshot of python/ so that commits landing during a long run do not change what is measured",
    )
    p.add_argument(
        "--workdir", type=Path, help="where the temporary server directories go (default: the system temp dir)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    p.add_argument(
        "--min-free-gb",
        type=float,
        default=20,
        help="delete finished runs' files early when the disk has less free (default 20)",
    )
    p.add_argument(
        "--report",
        type=Path,
        metavar="RESULTS_JSON",
        help="only re-render results.md and the chart from a results.json",
    )
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    st = Settings.quick_settings() if args.quick else Settings()
    if args.rounds:
        st.rounds = args.rounds
    if args.servers:
        st.servers = tuple(s for s in args.servers.split(",") if s)
        bad = set(st.servers) - set(SERVERS)
        if bad:
            sys.exit(f"unknown server(s): {', '.join(sorted(bad))}")
    if args.modes:
        st.modes = tuple(m for m in args.modes.split(",") if m)
        bad = set(st.modes) - set(MODES)
        if bad:
            sys.exit(f"unknown mode(s): {', '.join(sorted(bad))}")
    if args.sizes:
        st.sizes = tuple(int(x) for x in args.sizes.split(","))
    if args.concurrency:
        st.concurrency = tuple(int(x) for x in args.concurrency.split(","))
    for name in ("window", "warmup", "e2e_window", "e2e_warmup"):
        if getattr(args, name) is not None:
            setattr(st, name, getattr(args, name))
    if args.smtprs_cmd:
        st.smtprs_cmd = tuple(shlex.split(args.smtprs_cmd))
    st.smtprs_workers = args.smtprs_workers
    st.smtprs_pythonpath = args.smtprs_pythonpath
    return st


def estimate(st: Settings, n_servers: int) -> float:
    per_cell = 0.0
    for mode in st.modes:
        for conc in st.concurrency:
            if mode in ("e2e", "relay"):
                per_cell += st.e2e_warmup + st.e2e_window + 2
            else:
                per_cell += st.warmup + st.window + 1.5 + (st.latency_seconds if conc == 1 else 0.3)
    return per_cell * len(st.sizes) * n_servers * st.rounds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        saved = json.loads(args.report.read_text())
        print(write_outputs(saved, args.report.parent)[0])
        return 0
    st = settings_from(args)
    if not os.access(SMTP_SOURCE, os.X_OK):
        sys.exit(f"{SMTP_SOURCE} is missing: apt-get install postfix (it ships smtp-source and smtp-sink)")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    out = args.out or RESULTS / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="smtprs-bench-", dir=args.workdir))
    results: dict[str, Any] = {"meta": {}, "settings": asdict(st), "runs": []}
    t0 = time.monotonic()
    interrupted = False
    # Finished runs' directories are deleted at the end of a round (or when the
    # disk fills up), not after each run: on a journal-less ext4 the inode
    # allocator skips inodes freed in the last minute or so, so deleting tens
    # of thousands of files just before a run would slow the next server down.
    finished: list[Path] = []
    purged_before = False

    def purge() -> None:
        nonlocal purged_before
        for d in finished:
            shutil.rmtree(d, ignore_errors=True)
        purged_before = bool(finished)
        finished.clear()

    jsonl = open(out / "runs.jsonl", "a")  # noqa: SIM115 (closed in the finally below, once everything is stopped)
    try:
        work.chmod(0o755)  # Postfix's unprivileged processes must reach their directories
        servers: dict[str, Server] = {}
        for name in st.servers:
            srv = SERVER_CLASSES[name](work, st)
            why = srv.problem()
            if why:
                print(f"skipping {name}: {why}", file=sys.stderr)
                continue
            servers[name] = srv
        if not servers:
            raise SystemExit("no server can run")
        if set(st.modes) & set(MILTER_MODES):  # one rspamd behind both servers (benches/load/rspamd.py)
            from .rspamd import Rspamd, problem

            if why := problem():
                raise SystemExit(f"milter-rspamd: {why}")
            milter = Rspamd(work)
            milter.start()
            for srv in servers.values():
                srv.milter_port = milter.port
        results["meta"] = machine(work, servers, st)
        results["meta"]["floor_processes"] = st.server_processes
        if results["meta"]["workdir_fs"] in ("tmpfs", "ramfs"):
            print(
                f"warning: {work} is on {results['meta']['workdir_fs']}: fsync is free there, durable figures mean nothing (use --workdir)",
                file=sys.stderr,
            )
        if "postfix" in servers and set(st.modes) - {"sink"}:
            results["meta"]["postfix_main_cf"] = servers["postfix"].postconf_n()  # type: ignore[attr-defined]
        names = list(servers)
        plan = [
            (rnd, mode, size, conc)
            for rnd in range(st.rounds)
            for mode in st.modes
            for size in st.sizes
            for conc in st.concurrency
        ]
        total = sum(1 for _, mode, _, _ in plan for name in names if mode in servers[name].modes)
        print(
            f"{total} runs ({len(names)} servers × {len(plan) // st.rounds} cells × {st.rounds} rounds), "
            f"about {estimate(st, len(names)) / 60:.0f} min; work dir {work}; load average {os.getloadavg()[0]:.2f}; results in {out}",
            flush=True,
        )
        i = 0
        last_round = 0
        for rnd, mode, size, conc in plan:
            if rnd != last_round:
                purge()
                last_round = rnd
            k = rnd % len(names)
            for name in names[k:] + names[:k]:  # A B C, B C A, C A B: nobody always goes first
                if mode not in servers[name].modes:  # the floors do not relay
                    continue
                i += 1
                if shutil.disk_usage(work).free < args.min_free_gb * 2**30:
                    purge()
                rec = run_one(servers[name], mode, size, conc, rnd, st)
                finished.append(Path(rec.pop("dir")))
                rec["purged_before"], purged_before = purged_before, False
                results["runs"].append(rec)
                jsonl.write(json.dumps(rec) + "\n")
                jsonl.flush()
                print(progress_line(rec, i, total, time.monotonic() - t0), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping everything, writing what was measured", file=sys.stderr)
    finally:
        for thing in list(reversed(STARTED)):
            try:
                thing.stop()
            except Exception as e:  # keep stopping the others
                print(f"while stopping {thing}: {e}", file=sys.stderr)
        jsonl.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if not results["runs"]:
        return 130 if interrupted else 1
    results["meta"]["loadavg_end"] = os.getloadavg()[0]
    results["meta"]["duration_s"] = time.monotonic() - t0
    results["meta"]["interrupted"] = interrupted
    md, written = write_outputs(results, out)
    print()
    print(md)
    print(f"written: {', '.join(str(f) for f in written)}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
