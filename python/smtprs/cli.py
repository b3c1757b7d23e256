"""The ``smtprs`` command: serve, check-config.

``smtprs serve [--config FILE]`` runs the server in the foreground until
SIGTERM or SIGINT; ``smtprs check-config [--config FILE]`` loads and validates
the configuration and exits 0 ("config ok") or 2 with the key at fault.
"""

from __future__ import annotations

import argparse
import signal
import sys

import trio

from . import config as config_mod
from . import maillog
from .errors import ConfigError, ListenError


def _load(args: argparse.Namespace) -> tuple[config_mod.Config, list[str]]:
    """The configuration, with the files it names (aliases, virtual map) read
    and checked; returns the aliases that cannot be expanded (loops), to warn of."""
    from .route.router import Router

    cfg = config_mod.load(args.config)
    router = Router(cfg)  # reads the addressing tables: raises ConfigError naming file:line
    return cfg, router.alias_problems()


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
    cfg, problems = _load(args)
    maillog.setup(cfg.log.level, cfg.log.file)
    for problem in problems:
        maillog.warning(f"aliases: {problem}")
    failed = False
    try:
        trio.run(_serve, cfg)
    except* ListenError as group:
        failed = True
        for e in group.exceptions:
            maillog.error(str(e))
    return 1 if failed else 0


def cmd_check_config(args: argparse.Namespace) -> int:
    _cfg, problems = _load(args)
    for problem in problems:
        print(f"warning: {problem}")
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
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"smtprs: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
