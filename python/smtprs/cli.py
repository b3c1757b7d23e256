"""The ``smtprs`` command: serve, check-config, passwd, tls, queue list/count/flush.

``smtprs serve [--config FILE]`` runs the server in the foreground until
SIGTERM or SIGINT (a graceful shutdown: see ``daemon.py``; a second
signal stops at once), and reloads the configuration on SIGHUP; ``smtprs check-config [--config FILE]`` loads and validates
the configuration (and the TLS certificate and users file it names) and exits
0 ("config ok") or 2 with the key at fault.  ``smtprs passwd add|remove|list``
manages the users file of SMTP AUTH: a password is read from the terminal
(twice) or, with ``--stdin``, from one line of standard input -- never from the
command line -- and only its scrypt hash is written.  ``smtprs tls selfsigned
--out DIR`` writes a self-signed certificate and key for trying TLS out.
``smtprs dns-records --domain D`` prints the DNS records to publish for D
(mailauth/records.py).
``smtprs queue list``, ``count`` and ``qshape`` read the spool without
changing it (safe while the server runs).  The commands that act -- ``flush
[ID]``, ``hold``, ``release``, ``delete ID|--all-deferred``, ``requeue`` -- and
``show ID`` go to the running server through its control socket
(queue/control.py): to every worker's, and the worker that owns the message
acts, so nothing edits the spool behind the server's back.  ``smtprs status``
prints the server's figures (the metrics of every worker, through the same
sockets) for a person.  The queue commands live in cli_queue.py.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from . import config as config_mod
from . import maillog
from .errors import ConfigError, ListenError, SpoolError
from .queue.control import ControlError

if TYPE_CHECKING:
    from .daemon import Server


from .cli_queue import (
    _age,
    _ask_all,
    cmd_queue_act,
    cmd_queue_count,
    cmd_queue_flush,
    cmd_queue_list,
    cmd_queue_qshape,
    cmd_queue_show,
    unreachable,
)
from .cli_queue import load_config as _load


def _alias_problems(cfg: config_mod.Config) -> list[str]:
    """Read the addressing tables the configuration names (aliases, virtual
    map: a ConfigError names file:line); return the aliases that cannot be
    expanded (loops, unknown targets), to warn of."""
    from .route.router import Router

    return Router(cfg).alias_problems()


async def _serve(cfg: config_mod.Config, config_path: str | None, worker: int, workers: int, supervised: bool) -> None:
    from .daemon import Server

    server = Server(cfg, config_path, worker=worker, workers=workers)
    async with trio.open_nursery() as nursery:
        await nursery.start(_signals, server, supervised)
        await server.run()
        nursery.cancel_scope.cancel()


async def _signals(
    server: Server, supervised: bool = False, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """SIGTERM/SIGINT: graceful shutdown (a second one: at once); SIGHUP: reload.

    A worker of the supervisor (``supervised``) takes SIGTERM/SIGINT as
    "drain" however often they come, and SIGQUIT as "at once": a service
    manager or a terminal signals the whole process group, so a worker gets
    the stop both from it and, forwarded, from the supervisor, and the copy
    must not cut the drain short.  The supervisor sends SIGQUIT when it is
    itself signalled a second time (supervisor.py)."""
    wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) + ((signal.SIGQUIT,) if supervised else ())
    with trio.open_signal_receiver(*wanted) as signals:
        task_status.started()
        stopping = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                maillog.warning(f"received {name}, reloading the configuration")
                await server.reload()
            elif not stopping and signum != signal.SIGQUIT:
                stopping = True
                maillog.warning(f"received {name}, shutting down")
                server.stop()
            elif supervised and signum != signal.SIGQUIT:
                pass  # the same stop again (the group's and the supervisor's copy): still draining
            else:
                maillog.warning(
                    f"received {name} again, stopping now" if not supervised else f"received {name}, stopping now"
                )
                server.stop(now=True)


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args)
    problems = _alias_problems(cfg)
    try:
        maillog.setup(cfg.log.level, cfg.log.file, cfg.log.format)
    except OSError as err:
        raise ConfigError(f"log.file: cannot open {cfg.log.file} for appending: {err.strerror or err}") from None
    _warn_readable_secrets(args.config, cfg)
    if args.worker_index is None:
        for problem in problems:
            maillog.warning(f"aliases: {problem}")
    workers = args.workers if args.workers is not None else cfg.worker_count()
    if workers < 1:
        raise ConfigError(f"--workers: expected a number >= 1, got {workers}")
    if args.worker_index is None and workers > 1:
        from . import supervisor

        return supervisor.run(args.config, workers)
    if args.worker_index is not None:
        from .supervisor import die_with_parent

        die_with_parent()
    status = 0
    try:
        trio.run(_serve, cfg, args.config, args.worker_index or 0, workers, args.worker_index is not None)
    except* (ListenError, SpoolError, ControlError) as group:
        status = 1
        for e in _leaves(group):
            maillog.error(str(e))
    except* ConfigError as errors:  # found while starting: the TLS certificate or key
        status = 2
        for c in _leaves(errors):
            print(f"smtprs: configuration error: {c}", file=sys.stderr)
    return status


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
        maillog.warning(
            f"{path} holds relay.auth_password but is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
        )


def cmd_status(args: argparse.Namespace) -> int:
    from .metrics import merge, value

    cfg = _load(args)
    answers, error = _ask_all(cfg, "STATS")
    sockets = len(cfg.control_sockets())
    snaps = [json.loads(a[3:]) for a in answers if a.startswith("OK ")]
    if not snaps:
        print(unreachable(args, error), file=sys.stderr)
        return 1
    snap = merge(snaps)
    if args.json:
        json.dump(snap, sys.stdout)
        sys.stdout.write("\n")
        return 0

    def n(name: str, **labels: str) -> int:
        return int(value(snap, name, **labels))

    def by(name: str, label: str) -> str:
        counts: dict[str, float] = {}
        for kind in ("counters",):
            for nm, ls, v in snap[kind]:
                if nm == name:
                    key = dict((k, val) for k, val in ls).get(label, "")
                    counts[key] = counts.get(key, 0) + v
        return ", ".join(f"{k} {int(v)}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none"

    def latency(name: str) -> str:
        from .metrics import BUCKETS

        hs = [h for nm, _, h in snap["histograms"] if nm == name]
        if not hs:
            return "no samples"
        total = [sum(col) for col in zip(*hs)]
        count = total[-1]
        cumulative, p50, p99 = 0.0, None, None
        for le, c in zip((*BUCKETS, float("inf")), total[: len(BUCKETS) + 1]):
            cumulative += c
            if p50 is None and cumulative >= 0.5 * count:
                p50 = le
            if p99 is None and cumulative >= 0.99 * count:
                p99 = le
        return f"{int(count)} samples, mean {total[-2] / count * 1000:.1f} ms, p50 <= {_secs(p50)}, p99 <= {_secs(p99)}"

    print(f"workers answering:   {len(snaps)} of {sockets}")
    print(f"sessions active:     {n('smtprs_sessions_active')}")
    print(f"connections:         {n('smtprs_connections_total')} ({by('smtprs_connections_total', 'mode')})")
    print(f"messages accepted:   {n('smtprs_messages_accepted_total')}")
    print(
        f"rejections:          {n('smtprs_messages_rejected_total')} ({by('smtprs_messages_rejected_total', 'reason')})"
    )
    for result in ("delivered", "deferred", "bounced"):
        total = n("smtprs_deliveries_total", result=result)
        detail = ", ".join(
            f"{t} {int(v)}"
            for t, v in sorted(
                (
                    (dict(map(tuple, ls)).get("transport", ""), v)
                    for nm, ls, v in snap["counters"]
                    if nm == "smtprs_deliveries_total" and dict(map(tuple, ls)).get("result") == result
                )
            )
        )
        print(f"{result + ':':<21}{total}" + (f" ({detail})" if detail else ""))
    print(
        f"queue:               {n('smtprs_queue_messages')} messages, {n('smtprs_queue_held_messages')} on hold, {n('smtprs_queue_active_deliveries')} being delivered"
    )
    print(f"oldest in queue:     {_age(value(snap, 'smtprs_queue_oldest_age_seconds'))}")
    commits, records = value(snap, "smtprs_spool_commits_total"), value(snap, "smtprs_spool_records_total")
    per = f" ({records / commits:.2f} per fdatasync)" if commits else ""
    print(f"spool commits:       {int(commits)} for {int(records)} records{per}")
    print(f"acceptance latency:  {latency('smtprs_acceptance_seconds')}")
    print(f"delivery latency:    {latency('smtprs_delivery_seconds')}")
    return 0


def _secs(le: float | None) -> str:
    if le is None or le == float("inf"):
        return "inf"
    return f"{le * 1000:g} ms" if le < 1 else f"{le:g} s"


def cmd_check_config(args: argparse.Namespace) -> int:
    from .smtpd import auth, tls

    cfg = _load(args)
    for problem in _alias_problems(cfg):
        print(f"warning: {problem}")
    tls.server_context(cfg)  # ConfigError naming smtpd.tls.* if the files are unusable
    if any(lst.mode in config_mod.SUBMISSION_MODES + config_mod.POP3_MODES for lst in cfg.smtpd.listeners):
        try:
            users = auth.read_users(cfg.users_path)
        except auth.UsersFileError as e:
            raise ConfigError(f"smtpd.auth.users_file: {e}") from None
        if not users:
            print(
                f"warning: smtpd.auth.users_file: no users in {cfg.users_path}; add them with `smtprs passwd add`",
                file=sys.stderr,
            )
    print("config ok")
    return 0


def _users_path(args: argparse.Namespace) -> Path:
    if args.file:
        return Path(args.file)
    return _load(args).users_path


def _read_password(args: argparse.Namespace) -> str | None:
    if args.stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    elif not sys.stdin.isatty():  # (getpass would read a pipe with a warning, or end in EOFError)
        print(
            "smtprs passwd: standard input is not a terminal: give --password-stdin to read the password "
            "from one line of it; nothing changed",
            file=sys.stderr,
        )
        return None
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("smtprs passwd: the passwords differ; nothing changed", file=sys.stderr)
            return None
    if not password:
        print("smtprs passwd: empty password refused; nothing changed", file=sys.stderr)
        return None
    return password


def cmd_passwd(args: argparse.Namespace) -> int:
    from .smtpd import auth

    path = _users_path(args)
    try:
        users = auth.read_users(path)
    except auth.UsersFileError as e:
        print(f"smtprs passwd: {e}", file=sys.stderr)
        return 1
    if args.action == "list":
        for name in sorted(users):
            print(name)
        return 0
    name = auth.normalize_username(args.user)
    if args.action == "remove":
        if users.pop(name, None) is None:
            print(f"smtprs passwd: no user {name} in {path}", file=sys.stderr)
            return 1
        auth.write_users(path, users)
        print(f"removed {name} from {path}")
        return 0
    if not auth.valid_username(name):
        print(f"smtprs passwd: {name!r} is not a valid user name (printable, no spaces, no colon)", file=sys.stderr)
        return 2
    password = _read_password(args)
    if password is None:
        return 1
    existed = name in users
    users[name] = auth.hash_password(password)
    auth.write_users(path, users)
    print(f"{'updated' if existed else 'added'} {name} in {path}")
    return 0


def cmd_tls(args: argparse.Namespace) -> int:
    from .smtpd import tls

    hostname = args.hostname or _load(args).host_name
    try:
        cert, key = tls.make_self_signed(Path(args.out), hostname, days=args.days, overwrite=args.force)
    except (FileExistsError, OSError) as e:
        print(f"smtprs tls: {e}", file=sys.stderr)
        return 1
    print(f"wrote {cert} and {key} (self-signed for {hostname}, {args.days} days)")
    print(f'[smtpd.tls]\ncert_file = "{cert.resolve()}"\nkey_file = "{key.resolve()}"')
    return 0


def cmd_dkim_keygen(args: argparse.Namespace) -> int:
    """Write a new DKIM private key (mode 0600) and print the TXT record to publish."""
    from .mailauth import keys

    try:
        domain = keys.a_label(args.domain)  # d= and the record's name are A-labels (RFC 8616)
    except keys.DkimKeyError as e:
        print(f"smtprs dkim keygen: --domain: {e}", file=sys.stderr)
        return 2
    out = Path(args.out or f"dkim-{domain}-{args.selector}.pem")
    try:
        pem, key = keys.generate(args.algorithm, args.bits)
        keys.write_private(out, pem)
    except keys.DkimKeyError as e:
        print(f"smtprs dkim keygen: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"smtprs dkim keygen: cannot write {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(keys.txt_record(domain, args.selector, key))
    print(
        f"wrote {out} ({args.algorithm}, mode 0600); publish the TXT record above, then add to the configuration:\n"
        f'[[dkim.keys]]\ndomain = "{domain}"\nselector = "{args.selector}"\nkey_file = "{out.resolve()}"\n'
        f'algorithm = "{args.algorithm}"',
        file=sys.stderr,
    )
    return 0


def cmd_dns_records(args: argparse.Namespace) -> int:
    """Print the DNS records to publish for a domain (mailauth/records.py)."""
    from .mailauth import records

    cfg = _load(args)
    try:
        found = records.build(
            cfg,
            args.domain,
            mx=args.mx or (),
            ips=args.ip or (),
            rua=args.rua or "",
            tlsrpt_rua=args.tlsrpt_rua or "",
            mta_sts_mode=args.mta_sts_mode,
        )
    except records.RecordsError as e:
        print(f"smtprs dns-records: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(records.render(found))
    return 0


def version_text() -> str:
    """What ``smtprs --version`` prints: the package, the Rust core's version
    (the core exposes no build id beyond it), Python, OpenSSL, trio, dnspython."""
    from .metrics import build_info

    info = build_info()
    return (
        f"smtprs {info['version']}\n"
        f"core {info['core']} (Rust, smtprs._core)\n"
        f"Python {info['python']}\n"
        f"{info['openssl']}\n"
        f"trio {info['trio']}, dnspython {info['dnspython']}\n"
    )


class _VersionAction(argparse.Action):
    """``--version``: print version_text() and exit 0 (argparse's own prints one line)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version, the core's, Python's and OpenSSL's")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        sys.stdout.write(version_text())
        parser.exit(0)


def cmd_version(args: argparse.Namespace) -> int:
    sys.stdout.write(version_text())
    return 0


def cmd_config_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(config_mod.reference_markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smtprs", description="smtprs mail transfer agent")
    parser.add_argument("--version", "-V", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("version", help="print the version, the core's, Python's and OpenSSL's")
    p.set_defaults(func=cmd_version)
    p = sub.add_parser("serve", help="run the server in the foreground")
    p.add_argument("--config", "-c", help="TOML configuration file (default: the embedded defaults)")
    p.add_argument(
        "--workers",
        "-w",
        type=int,
        help="worker processes (default: the config's `workers`, 0 there meaning one per CPU)",
    )
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)  # set by the supervisor for its workers
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check-config", help="validate the configuration and exit")
    p.add_argument("--config", "-c")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("config-reference", help="print the configuration reference (Markdown)")
    p.set_defaults(func=cmd_config_reference)

    p = sub.add_parser("passwd", help="manage the users of SMTP AUTH (the users file)")
    psub = p.add_subparsers(dest="action", required=True)
    for action, text in (
        ("add", "add a user or change a password"),
        ("remove", "remove a user"),
        ("list", "list the users"),
    ):
        q = psub.add_parser(action, help=text)
        if action != "list":
            q.add_argument("user", help="the login name (an address such as alice@example.org, or a bare name)")
        if action == "add":
            q.add_argument(
                "--password-stdin",
                "--stdin",
                dest="stdin",
                action="store_true",
                help="read the password from one line of standard input instead of the terminal "
                "(needed when standard input is not a terminal: scripts, configuration management)",
            )
        q.add_argument("--config", "-c", help="take the users file from this configuration (smtpd.auth.users_file)")
        q.add_argument("--file", "-f", help="the users file to edit (overrides --config)")
        q.set_defaults(func=cmd_passwd)

    p = sub.add_parser("tls", help="TLS helpers")
    tsub = p.add_subparsers(dest="action", required=True)
    q = tsub.add_parser(
        "selfsigned", help="write a self-signed certificate and key (cert.pem, key.pem) for trying TLS out"
    )
    q.add_argument("--out", "-o", required=True, help="directory to write cert.pem and key.pem into")
    q.add_argument("--hostname", help="the name in the certificate (default: the configured hostname)")
    q.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    q.add_argument("--force", action="store_true", help="replace existing files")
    q.add_argument("--config", "-c", help="configuration to take the hostname from")
    q.set_defaults(func=cmd_tls)

    p = sub.add_parser("dkim", help="DKIM helpers")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser(
        "keygen", help="write a new DKIM private key (mode 0600) and print the DNS TXT record that publishes it"
    )
    q.add_argument("--domain", "-d", required=True, help="the signing domain (d=)")
    q.add_argument(
        "--selector", "-s", required=True, help="the selector (s=): the record is SELECTOR._domainkey.DOMAIN"
    )
    q.add_argument(
        "--algorithm", "-a", choices=("rsa-sha256", "ed25519-sha256"), default="rsa-sha256", help="default rsa-sha256"
    )
    q.add_argument("--bits", "-b", type=int, default=2048, help="RSA key size (default 2048; at least 1024)")
    q.add_argument("--out", "-o", help="the key file to write (default dkim-DOMAIN-SELECTOR.pem); never replaced")
    q.set_defaults(func=cmd_dkim_keygen)

    p = sub.add_parser(
        "dns-records",
        help="print the DNS records to publish for a domain (MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, TLSA), from the configuration",
    )
    p.add_argument("--domain", "-d", required=True, help="one of the configuration's domains")
    p.add_argument("--config", "-c", help="TOML configuration file (default: the embedded defaults)")
    p.add_argument(
        "--mx",
        action="append",
        metavar="HOST",
        help="an MX host of the domain, in order of preference (repeatable; default: the configured hostname)",
    )
    p.add_argument(
        "--ip",
        action="append",
        metavar="ADDRESS",
        help="an address mail is sent from, added to SPF as ip4:/ip6: (repeatable)",
    )
    p.add_argument("--rua", help="address for DMARC aggregate reports (default postmaster@DOMAIN)")
    p.add_argument("--tlsrpt-rua", help="address for TLS-RPT reports (default: the --rua address)")
    p.add_argument("--mta-sts-mode", choices=("testing", "enforce", "none"), default="testing", help="default testing")
    p.set_defaults(func=cmd_dns_records)

    qsub = sub.add_parser("queue", help="look at or act on the mail queue").add_subparsers(
        dest="queue_command", required=True
    )
    p = qsub.add_parser("list", help="list queued messages with each recipient's state (reads the spool)")
    p.add_argument("--config", "-c")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_queue_list)
    p = qsub.add_parser(
        "count", help="how many messages and open recipients are queued, for scripts and monitoring (reads the spool)"
    )
    p.add_argument("--config", "-c")
    p.add_argument(
        "--json", action="store_true", help='one JSON object: {"messages", "recipients", "deferred", "held", "octets"}'
    )
    p.set_defaults(func=cmd_queue_count)
    p = qsub.add_parser("flush", help="ask the running server to retry every queued message (or one) now")
    p.add_argument("--config", "-c")
    p.add_argument("id", nargs="?", help="only this message")
    p.set_defaults(func=cmd_queue_flush)
    p = qsub.add_parser(
        "show", help="a message's envelope, each recipient's state and the header (from the running server)"
    )
    p.add_argument("--config", "-c")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("id")
    p.set_defaults(func=cmd_queue_show)
    for name, text in (
        ("hold", "put messages on hold: not delivered until released"),
        ("release", "release held messages"),
        ("requeue", "route the open recipients again and retry them now (after a transport change)"),
        ("delete", "remove messages without delivering them and without a bounce"),
    ):
        p = qsub.add_parser(name, help=text)
        p.add_argument("--config", "-c")
        p.add_argument("ids", nargs="*", metavar="ID")
        if name == "delete":
            p.add_argument(
                "--all-deferred",
                action="store_true",
                help="every message with a deferred recipient (held ones excepted)",
            )
        p.set_defaults(func=cmd_queue_act)
    p = qsub.add_parser(
        "qshape", help="open recipients by destination domain and age in minutes, as Postfix's qshape (reads the spool)"
    )
    p.add_argument("--config", "-c")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--top", type=int, default=0, help="only the N busiest domains")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--held", action="store_true", help="only messages on hold")
    g.add_argument("--not-held", action="store_true", help="only messages not on hold")
    p.set_defaults(func=cmd_queue_qshape)

    p = sub.add_parser("status", help="the running server's figures: sessions, messages, deliveries, queue, latency")
    p.add_argument("--config", "-c")
    p.add_argument("--json", action="store_true", help="the merged metrics snapshot")
    p.set_defaults(func=cmd_status)
    from . import cli_inspect

    cli_inspect.register(sub)  # route test, config show
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as e:
        print(f"smtprs: configuration error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except ControlError as e:
        print(f"smtprs: error: {_one_line(str(e))}", file=sys.stderr)
        return 1
    except OSError as e:  # last resort: a file the command reads or writes (never a traceback)
        what = f"{e.filename}: {e.strerror}" if e.filename and e.strerror else (e.strerror or str(e))
        print(f"smtprs: error: {_one_line(what)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("smtprs: interrupted", file=sys.stderr)
        return 130


def _one_line(text: str) -> str:
    """An error message on one line (a TOML error quotes the line it is about)."""
    return " ".join(text.split())


if __name__ == "__main__":
    raise SystemExit(main())
