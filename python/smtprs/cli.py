"""The ``smtprs`` command: serve, check-config, queue list/flush.

``smtprs serve [--config FILE]`` runs the server in the foreground until
SIGTERM or SIGINT; ``smtprs check-config [--config FILE]`` loads and validates
the configuration and exits 0 ("config ok") or 2 with the key at fault.
``smtprs queue list`` reads the spool directly (read-only, safe while the
server runs); ``smtprs queue flush`` asks the running server, through its
control socket (queue/control.py), to retry every queued message now.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
import time
from typing import TYPE_CHECKING, Any

import trio

from . import config as config_mod
from . import maillog
from .errors import ConfigError, ListenError
from .queue.control import ControlError

if TYPE_CHECKING:
    from .envelope import Envelope


def _load(args: argparse.Namespace) -> config_mod.Config:
    return config_mod.load(args.config)


async def _serve(cfg: config_mod.Config) -> None:
    from .smtpd.server import serve

    async with trio.open_nursery() as nursery:
        await nursery.start(serve, cfg)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                maillog.warning(f"received {signal.Signals(signum).name}, shutting down")
                nursery.cancel_scope.cancel()
                break


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args)
    maillog.setup(cfg.log.level, cfg.log.file)
    _warn_readable_secrets(args.config, cfg)
    failed = False
    try:
        trio.run(_serve, cfg)
    except* (ListenError, ControlError) as group:
        failed = True
        for e in _leaves(group):
            maillog.error(str(e))
    return 1 if failed else 0


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for e in group.exceptions for leaf in _leaves(e)]
    return [group]


def _warn_readable_secrets(path: str | None, cfg: config_mod.Config) -> None:
    """A configuration holding a password should be readable by its owner only."""
    if path is None or not cfg.relay.auth_password:
        return
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        maillog.warning(f"{path} holds relay.auth_password but is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 it")


def cmd_queue_list(args: argparse.Namespace) -> int:
    from .queue.spool import Spool

    cfg = _load(args)
    envelopes = Spool(cfg.spool_path, fsync=False).list_envelopes()
    now = time.time()
    if args.json:
        json.dump([_entry(e, now) for e in envelopes], sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    if not envelopes:
        print("queue is empty")
        return 0
    for env in envelopes:
        e = _entry(env, now)
        print(f"{e['id']:<16} {e['size']:>9}  {_age(e['age'])} ago  <{e['sender']}>")
        for r in e["recipients"]:
            line = f"    <{r['address']}>  {r['state']}"
            if r["attempts"]:
                line += f", {r['attempts']} attempt{'s' if r['attempts'] != 1 else ''}"
            if r["next_attempt_in"] is not None:
                line += f", next in {_age(r['next_attempt_in'])}"
            print(line)
            if r["last_error"]:
                print(f"        {r['last_error']}")
    print(f"-- {len(envelopes)} message{'s' if len(envelopes) != 1 else ''}, {sum(e.size for e in envelopes)} octets")
    return 0


def _entry(env: "Envelope", now: float) -> dict[str, Any]:
    return {
        "id": env.queue_id,
        "size": env.size,
        "arrival": env.arrival,
        "age": max(0.0, now - env.arrival),
        "sender": env.sender,
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


def cmd_queue_flush(args: argparse.Namespace) -> int:
    from .queue.control import request

    cfg = _load(args)
    try:
        answer = trio.run(request, cfg.control_socket_path, "FLUSH")
    except ControlError as e:
        print(f"smtprs: {e}", file=sys.stderr)
        return 1
    print(answer)
    return 0 if answer.startswith("OK") else 1


def cmd_check_config(args: argparse.Namespace) -> int:
    _load(args)
    print("config ok")
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(config_mod.reference_markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smtprs", description="smtprs mail transfer agent")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the server in the foreground")
    p.add_argument("--config", "-c", help="TOML configuration file (default: the embedded defaults)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check-config", help="validate the configuration and exit")
    p.add_argument("--config", "-c")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    p.set_defaults(func=cmd_config_reference)
    q = sub.add_parser("queue", help="look at or act on the mail queue").add_subparsers(dest="queue_command", required=True)
    p = q.add_parser("list", help="list queued messages with each recipient's state (reads the spool)")
    p.add_argument("--config", "-c")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_queue_list)
    p = q.add_parser("flush", help="ask the running server to retry every queued message now")
    p.add_argument("--config", "-c")
    p.set_defaults(func=cmd_queue_flush)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"smtprs: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
