"""``smtprs queue ...``: list, count, qshape (reading the spool, safe while the
server runs), and flush, hold, release, delete, requeue, show (asking the
running server through each worker's control socket, queue/control.py, so
nothing edits the spool behind the server's back).  The argument parser and
the other commands are cli.py's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

import trio

from . import config as config_mod
from .queue.control import ControlError

if TYPE_CHECKING:
    from .envelope import Envelope


def load_config(args: argparse.Namespace) -> config_mod.Config:
    """The command's configuration, found as config.locate says (``-c``,
    $SMTPRS_CONFIG, /etc/smtprs/smtprs.toml, the embedded defaults); the path
    is put back in ``args.config`` so that a server reloads the same file,
    and where it looked in ``args.config_looked`` (for ``where``)."""
    args.config, args.config_looked = config_mod.locate(args.config)
    return config_mod.load(args.config)


_load = load_config  # (the name the commands below use)


def where(args: argparse.Namespace) -> str:
    """Which configuration a command used and where it looked, for the
    messages that say something was not found: "configuration: X; looked at: ..."."""
    used = args.config or "the embedded defaults"
    looked = "; ".join(getattr(args, "config_looked", []) or [])
    return f"configuration: {used}" + (f"; looked at: {looked}" if looked else "")


def _spool(args: argparse.Namespace, cfg: config_mod.Config) -> list[tuple[Envelope, int]] | None:
    """The queue as read_queue reads it; None (and one line on stderr) when
    there is no spool where the configuration says: not "queue is empty",
    which would hide mail waiting in the spool of another configuration."""
    from .queue.spool import read_queue

    root = cfg.spool_path
    if not root.is_dir():
        what = "no spool at" if not root.exists() else "not a directory, so no spool:"
        print(f"smtprs: {what} {root} ({where(args)})", file=sys.stderr)
        return None
    return read_queue(root)


def unreachable(args: argparse.Namespace | None, error: ControlError | None) -> str:
    """The one line for a control socket no server answers on (it names the socket)."""
    return f"smtprs: {error or 'no server answered'}" + (f" ({where(args)})" if args is not None else "")


def cmd_queue_list(args: argparse.Namespace) -> int:
    cfg = _load(args)
    found = _spool(args, cfg)
    if found is None:
        return 1
    queued = sorted(found, key=lambda pair: (pair[0].arrival, pair[0].queue_id))
    now = time.time()
    entries = [_entry(env, size, now) for env, size in queued]
    if args.json:
        json.dump(entries, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    if not entries:
        print("queue is empty")
        return 0
    for e in entries:
        held = "  (on hold)" if e["held"] else ""
        print(f"{e['id']:<16} {e['size']:>9}  {_age(e['age'])} ago  <{e['sender']}>{held}")
        for r in e["recipients"]:
            line = f"    <{r['address']}>  {r['state']}"
            if r["attempts"]:
                line += f", {r['attempts']} attempt{'s' if r['attempts'] != 1 else ''}"
            if r["next_attempt_in"] is not None:
                line += f", next in {_age(r['next_attempt_in'])}"
            print(line)
            if r["last_error"]:
                print(f"        {r['last_error']}")
    total = sum(e["size"] for e in entries)
    print(f"-- {len(entries)} message{'s' if len(entries) != 1 else ''}, {total} octets")
    return 0


def queue_counts(entries: list[tuple[Envelope, int]]) -> dict[str, int]:
    """What `smtprs queue count` reports: messages, their open (not yet final)
    recipients, of those the deferred ones, messages on hold, octets."""
    return {
        "messages": len(entries),
        "recipients": sum(1 for env, _ in entries for r in env.recipients if not r.final),
        "deferred": sum(1 for env, _ in entries for r in env.recipients if r.state == "deferred"),
        "held": sum(1 for env, _ in entries if env.held),
        "octets": sum(size for _, size in entries),
    }


def cmd_queue_count(args: argparse.Namespace) -> int:
    cfg = _load(args)
    found = _spool(args, cfg)
    if found is None:
        return 1
    counts = queue_counts(found)
    if args.json:
        print(json.dumps(counts))
    else:
        for key, value in counts.items():
            print(f"{key}: {value}")
    return 0


def _entry(env: Envelope, size: int, now: float) -> dict[str, Any]:
    return {
        "id": env.queue_id,
        "size": size,
        "arrival": env.arrival,
        "age": max(0.0, now - env.arrival),
        "sender": env.sender,
        "held": env.held,
        "recipients": [
            {
                "address": r.address,
                "state": r.state,
                "attempts": r.attempts,
                "next_attempt": r.next_attempt if not r.final else None,
                "next_attempt_in": max(0.0, r.next_attempt - now) if not r.final else None,
                "last_error": r.last_error,
            }
            for r in env.recipients
        ],
    }


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _ask_all(cfg: config_mod.Config, command: str, timeout: float = 10.0) -> tuple[list[str], ControlError | None]:
    """Send ``command`` to every worker's control socket; their answers, and the
    first error if some could not be reached (a stale socket of a worker that is gone)."""
    from .queue.control import request

    answers: list[str] = []
    first_error: ControlError | None = None
    for path in cfg.control_sockets():  # one per worker
        try:
            answers.append(trio.run(request, path, command, timeout))
        except ControlError as e:
            first_error = first_error or e
    return answers, first_error


def _about_one(
    cfg: config_mod.Config, command: str, qid: str, args: argparse.Namespace | None = None
) -> tuple[int, str]:
    """A command about one message: the owner's answer wins; (exit status, line).
    ``args``: the command's, for saying which configuration was used."""
    answers, error = _ask_all(cfg, f"{command} {qid}")
    if not answers:
        return 1, unreachable(args, error)
    for a in answers:
        if a.startswith("OK"):
            return 0, a
    for a in answers:
        if not a.startswith("ERR notqueued"):
            return 1, a
    return 1, f"smtprs: no message {qid} in the queue"


def cmd_queue_flush(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.id:
        status, line = _about_one(cfg, "FLUSH", args.id, args)
        print(line, file=sys.stdout if status == 0 else sys.stderr)
        return status
    answers, first_error = _ask_all(cfg, "FLUSH")
    if not answers:
        print(unreachable(args, first_error), file=sys.stderr)
        return 1
    if len(answers) == 1:
        print(answers[0])
        return 0 if answers[0].startswith("OK") else 1
    total = sum(int(a.split()[1]) for a in answers if a.startswith("OK ") and a.split()[1].isdigit())
    print(f"OK {total} message{'' if total == 1 else 's'} scheduled now ({len(answers)} workers)")
    return 0 if all(a.startswith("OK") for a in answers) else 1


def cmd_queue_act(args: argparse.Namespace) -> int:
    """hold, release, requeue, delete: carried out by the worker that owns the message."""
    cfg = _load(args)
    verb = args.queue_command.upper()
    if verb == "DELETE" and args.all_deferred:
        if args.ids:
            print("smtprs queue delete: give queue ids or --all-deferred, not both", file=sys.stderr)
            return 2
        answers, error = _ask_all(cfg, "DELETE-DEFERRED", timeout=120.0)
        if not answers:
            print(unreachable(args, error), file=sys.stderr)
            return 1
        n = sum(int(a.split()[1]) for a in answers if a.startswith("OK ") and a.split()[1].isdigit())
        print(f"OK {n} message{'' if n == 1 else 's'} deleted")
        return 0 if all(a.startswith("OK") for a in answers) else 1
    if not args.ids:
        print(f"smtprs queue {args.queue_command}: give one or more queue ids", file=sys.stderr)
        return 2
    status = 0
    for qid in args.ids:
        rc, line = _about_one(cfg, verb, qid, args)
        print(line, file=sys.stdout if rc == 0 else sys.stderr)
        status = status or rc
    return status


def cmd_queue_show(args: argparse.Namespace) -> int:
    cfg = _load(args)
    rc, line = _about_one(cfg, "SHOW", args.id, args)
    if rc != 0:
        print(line, file=sys.stderr)
        return rc
    info = json.loads(line[3:])
    if args.json:
        json.dump(info, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    now = time.time()
    state = "on hold" if info["held"] else ("being delivered" if info["active"] else "queued")
    print(f"Queue-ID:  {info['queue_id']} ({state})")
    print(
        f"Arrival:   {time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime(info['arrival']))} ({_age(now - info['arrival'])} ago)"
    )
    print(f"Size:      {info['content_size']} octets")
    print(f"Sender:    <{info['sender']}>")
    client = info["client_address"] or "local"
    print(
        f"Client:    {client} helo={info['client_helo'] or '-'} protocol={info['protocol']}"
        + (f" auth={info['auth']}" if info["auth"] else "")
    )
    if info["params"]:
        print("Params:    " + " ".join(f"{k}={v}" if v else k for k, v in info["params"].items()))
    print("Recipients:")
    for r in info["recipients"]:
        line = f"  <{r['address']}>  {r['state']}"
        if r["original"]:
            line += f" (to <{r['original']}>)"
        if r["attempts"]:
            line += f", {r['attempts']} attempt{'s' if r['attempts'] != 1 else ''}"
        if r["state"] not in ("delivered", "failed") and r["next_attempt"] > now:
            line += f", next in {_age(r['next_attempt'] - now)}"
        print(line)
        if r["last_error"]:
            print(f"      {r['last_error']}")
    print("Headers:")
    sys.stdout.write(info["headers"].replace("\r\n", "\n"))
    return 0


# Postfix qshape's age buckets, in minutes: each twice the one before
QSHAPE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)


def qshape(entries: list[tuple[Envelope, int]], now: float, *, held: bool | None = None) -> dict[str, list[int]]:
    """Open recipients by destination domain and message age: {domain: [total, per bucket..., older]}
    (``held``: only held messages, or only not held; None: all)."""
    import bisect

    rows: dict[str, list[int]] = {}
    for env, _ in entries:
        if held is not None and env.held != held:
            continue
        minutes = max(0.0, now - env.arrival) / 60
        column = 1 + bisect.bisect_left(QSHAPE_BUCKETS, minutes)
        for r in env.recipients:
            if r.final:
                continue
            domain = r.address.rpartition("@")[2].lower() or "(local)"
            row = rows.setdefault(domain, [0] * (len(QSHAPE_BUCKETS) + 2))
            row[0] += 1
            row[column] += 1
    return rows


def cmd_queue_qshape(args: argparse.Namespace) -> int:
    cfg = _load(args)
    found = _spool(args, cfg)
    if found is None:
        return 1
    held = True if args.held else (False if args.not_held else None)
    rows = qshape(found, time.time(), held=held)
    if args.json:
        json.dump({"buckets_minutes": list(QSHAPE_BUCKETS), "domains": rows}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    order = sorted(rows.items(), key=lambda kv: (-kv[1][0], kv[0]))
    if args.top:
        order = order[: args.top]
    total = [sum(col) for col in zip(*rows.values())] if rows else [0] * (len(QSHAPE_BUCKETS) + 2)
    width = max([len("TOTAL"), *(len(d) for d, _ in order)])
    heads = ["T", *(str(b) for b in QSHAPE_BUCKETS), f"{QSHAPE_BUCKETS[-1]}+"]
    print(" " * width + " " + " ".join(f"{h:>5}" for h in heads))
    for name, row in [("TOTAL", total), *order]:
        print(f"{name:>{width}} " + " ".join(f"{n:>5}" for n in row))
    return 0
