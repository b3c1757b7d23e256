"""``sendmail`` and ``mailq``: the sendmail(1) command line that cron, PHP's
mail(), mutt and monitoring tools call, after Postfix's sendmail(1).

``sendmail [options] [recipient ...]`` reads a message on standard input and
hands it to the running server over SMTP on the configuration's first ``mx``
listener (an unspecified address, 0.0.0.0 or ::, is reached on loopback).
When no server answers, when it answers 4xx, or when it refuses a recipient
with the relay policy (5.7.1: a local client is not in relay.trusted_networks
by default), the message is written durably into the pickup directory
(``<data_dir>/pickup/``, queue/pickup.py), which the server takes in at start
and every second: writing there is the local right to send, as Postfix's
postdrop/pickup.  Nothing is acknowledged (exit 0) before the message is in
the spool or durably in that directory.

The message: a first ``From `` line (mbox) is dropped; LF or CRLF line ends
become CRLF; without ``-i``/``-oi`` a line holding a single dot ends it;
Bcc, Resent-Bcc, Content-Length and Return-Path fields are removed (Postfix's
message_drop_headers); From (with ``-F``'s full name), Date and Message-ID
are added when missing (as Postfix's cleanup does: the server adds them only
on submission listeners, so here they are added before the hand-over, one
place for both ways in).  A bare name as recipient or sender gets
``@`` the first of local.domains (Postfix appends myorigin).  ``-t`` takes
the recipients from To, Cc and Bcc (Resent-To/Cc/Bcc when the message has
Resent- recipients) and adds those of the command line (Postfix's rule since
2.1).  Dot-stuffing is smtplib's when the message goes over SMTP.

Exit codes are sysexits.h's (EX_*, below).
"""

from __future__ import annotations

import email.message
import email.parser
import email.policy
import email.utils
import os
import pwd
import re
import smtplib
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from . import config as config_mod
from .envelope import Envelope
from .errors import ConfigError
from .queue import pickup
from .reply import RELAY_DENIED

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78

SMTP_TIMEOUT = 60.0  # seconds for each step of the hand-over to the server

# options that take a value (attached, -fsender, or as the next argument)
WITH_VALUE = frozenset("BCFLNRVXbfhorpOAe")
# options taking no value
FLAGS = frozenset("itvmnUGI")
# accepted and ignored (besides -o values other than i): the legacy ones real callers pass
IGNORED = "-B type, -C is the config file, -L label, -X file, -h hops, -p proto, -O opt=val, -A[mc], -e x, -m, -n, -U, -G, -oXXX, -odb, -odi, -oem, -q with an interval"

# header fields a locally submitted message loses (Postfix's message_drop_headers)
DROP_FIELDS = frozenset({b"bcc", b"resent-bcc", b"content-length", b"return-path"})
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")


class UsageError(Exception):
    pass


class Failure(Exception):
    """Stops the command: the line to print and the exit code."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code


@dataclass
class Options:
    mode: str = "m"  # -b: m deliver, p list the queue, s SMTP on stdio, i newaliases; q: -q flush
    extract: bool = False  # -t
    ignore_dots: bool = False  # -i, -oi
    sender: str | None = None  # -f, -r
    fullname: str | None = None  # -F
    verbose: bool = False  # -v
    config: str | None = None  # -C
    notify: str = ""  # -N
    ret: str = ""  # -R
    envid: str = ""  # -V
    recipients: list[str] = field(default_factory=list)


def parse_args(argv: Sequence[str], prog: str = "sendmail") -> Options:
    """sendmail(1)'s options, getopt style (-ti, -fsender or -f sender, -oi); raises UsageError."""
    opts = Options()
    if prog.endswith("mailq"):
        opts.mode = "p"
    elif prog.endswith("newaliases"):
        opts.mode = "i"
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            opts.recipients.extend(args[i:])
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        j = 1
        while j < len(arg):
            c = arg[j]
            j += 1
            if c == "q":
                opts.mode = "q"  # -q, -q1h, -qRsite...: flush the whole queue once
                break
            if c in FLAGS:
                if c == "t":
                    opts.extract = True
                elif c == "i":
                    opts.ignore_dots = True
                elif c == "v":
                    opts.verbose = True
                elif c == "I":
                    opts.mode = "i"
                continue
            if c not in WITH_VALUE:
                raise UsageError(f"unknown option -{c}")
            if j < len(arg):
                value, j = arg[j:], len(arg)
            elif i < len(args):
                value = args[i]
                i += 1
            else:
                raise UsageError(f"option -{c} needs a value")
            _take(opts, c, value)
    return opts


def _take(opts: Options, c: str, value: str) -> None:
    if c in "fr":
        opts.sender = value
    elif c == "F":
        opts.fullname = value
    elif c == "C":
        opts.config = value
    elif c == "N":
        opts.notify = value
    elif c == "R":
        opts.ret = value
    elif c == "V":
        opts.envid = value
    elif c == "o":
        if value == "i" or value == "i true":
            opts.ignore_dots = True
    elif c == "b":
        mode = value[:1]
        if mode in ("m", "p", "s", "i"):
            opts.mode = mode
        elif mode in ("d", "D"):
            raise UsageError("-bd: run the server with `smtprs serve`")
        elif mode in ("v", "t"):
            raise UsageError(f"-b{value}: address testing is not supported")
        else:
            raise UsageError(f"-b{value}: mode not supported")
    # B, L, X, h, p, O, A, e: accepted and ignored


# -- the message ------------------------------------------------------------


@dataclass
class Prepared:
    content: bytes  # CRLF, not dot-stuffed
    recipients: list[str]
    sender: str
    eight_bit: bool = False


def read_lines(data: bytes, ignore_dots: bool) -> list[bytes]:
    """The input's lines without their line ends: LF or CRLF; without ``ignore_dots``
    the first line holding a single dot ends the message (and is not part of it)."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not ignore_dots and line == b".":
            break
        out.append(line)
    if out and out[0].startswith(b"From ") and not _FIELD.match(out[0]):
        out.pop(0)  # an mbox "From " line (Postfix's sendmail drops it too)
    return out


def split_header(lines: list[bytes]) -> tuple[list[list[bytes]], list[bytes]]:
    """(the header fields, each its lines; the body lines).  The header ends at the
    first empty line, or at the first line that is neither a field nor a continuation
    (such a message gets the empty line it lacked)."""
    fields: list[list[bytes]] = []
    for n, line in enumerate(lines):
        if line == b"":
            return fields, lines[n + 1 :]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif _FIELD.match(line):
            fields.append([line])
        else:
            return fields, lines[n:]
    return fields, []


def _name(f: list[bytes]) -> bytes:
    m = _FIELD.match(f[0])
    assert m is not None
    return m.group(1).lower()


def header_addresses(fields: list[list[bytes]], names: Sequence[str]) -> list[str]:
    """The addresses of the named fields (To, Cc...), parsed by the email package."""
    block = b"".join(b"\r\n".join(f) + b"\r\n" for f in fields) + b"\r\n"
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    values: list[str] = []
    for name in names:
        values.extend(str(v) for v in msg.get_all(name, []))
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


def qualify(address: str, domain: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    return address if "@" in address or not address else f"{address}@{domain}"


def prepare(
    data: bytes,
    opts: Options,
    *,
    domain: str,
    hostname: str,
    login: str,
    gecos: str = "",
) -> Prepared:
    """The message and envelope to send for ``data`` read on standard input; raises Failure."""
    lines = read_lines(data, opts.ignore_dots)
    fields, body = split_header(lines)
    names = {_name(f) for f in fields}
    recipients: list[str] = []
    if opts.extract:
        resent = {b"resent-to", b"resent-cc", b"resent-bcc"} & names
        which = ("resent-to", "resent-cc", "resent-bcc") if resent else ("to", "cc", "bcc")
        recipients.extend(header_addresses(fields, which))
    recipients.extend(addr for _, addr in email.utils.getaddresses(opts.recipients) if addr)
    seen: set[str] = set()
    rcpts = []
    for r in (qualify(r, domain) for r in recipients):
        if r and r.lower() not in seen:
            seen.add(r.lower())
            rcpts.append(r)
    if not rcpts:
        if opts.extract:
            raise Failure(EX_DATAERR, "no recipient addresses found in the message header")
        raise Failure(EX_USAGE, "no recipients given (name them as arguments, or use -t)")
    if opts.sender is None:
        sender = f"{login}@{domain}"
    elif opts.sender.strip() in ("", "<>"):
        sender = ""
    else:
        sender = qualify(opts.sender, domain)
    kept = [f for f in fields if _name(f) not in DROP_FIELDS]
    added = []
    if b"from" not in names:
        name = opts.fullname if opts.fullname is not None else os.environ.get("NAME", gecos)
        added.append("From: " + email.utils.formataddr((name, sender or f"{login}@{domain}")))
    if b"date" not in names:
        added.append("Date: " + email.utils.formatdate(localtime=True))
    if b"message-id" not in names:
        added.append("Message-ID: " + email.utils.make_msgid(domain=hostname))
    header = [line for f in kept for line in f] + [a.encode("utf-8") for a in added]
    content = b"\r\n".join([*header, b"", *body]) + b"\r\n"
    return Prepared(content, rcpts, sender, eight_bit=any(b > 127 for b in content))


# -- handing it over --------------------------------------------------------


def listener_address(cfg: config_mod.Config) -> tuple[str, int] | None:
    """Where the server takes mail from us: its first mx listener; an unspecified
    address is reached on loopback."""
    for lst in cfg.smtpd.listeners:
        if lst.mode != "mx":
            continue
        host, _, port = lst.address.rpartition(":")
        host = host.strip("[]")
        if host in ("", "0.0.0.0", "*"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        try:
            return host, int(port)
        except ValueError:
            return None
    return None


@dataclass
class Result:
    delivered: list[str] = field(default_factory=list)  # accepted by the server
    refused: list[tuple[str, str]] = field(default_factory=list)  # (recipient, reply) 5xx not of policy
    later: list[str] = field(default_factory=list)  # for the pickup directory
    why: str = ""  # why they go to pickup
    relay_denied: bool = False
    fatal: Failure | None = None
    queue_id: str = ""


def xtext(value: str) -> str:
    """RFC 3461 4: xtext (``+HH`` for '+', '=' and what is not printable ASCII)."""
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in value)


def _reply(code: int, text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(text.split())}"


def hand_over(address: tuple[str, int], msg: Prepared, opts: Options, log: BinaryIO | None = None) -> Result:
    """The SMTP dialogue with the server; what became of each recipient."""
    res = Result()
    try:
        with smtplib.SMTP(address[0], address[1], local_hostname="localhost", timeout=SMTP_TIMEOUT) as s:
            if opts.verbose:
                s.set_debuglevel(1)
            _dialogue(s, msg, opts, res)
    except (OSError, smtplib.SMTPException) as e:
        if res.delivered and not res.later:
            return res  # (only the QUIT went wrong)
        res.delivered = []
        res.later = [r for r in msg.recipients if r not in {a for a, _ in res.refused}]
        res.why = f"no answer from the server at {address[0]}:{address[1]} ({e.__class__.__name__}: {e})"
    return res


def _dialogue(s: smtplib.SMTP, msg: Prepared, opts: Options, res: Result) -> None:
    code, text = s.ehlo()
    if code != 250:
        code, text = s.helo()
    if code != 250:
        res.later, res.why = list(msg.recipients), f"greeting refused: {_reply(code, text)}"
        return
    mail_opts = []
    if msg.eight_bit and s.has_extn("8bitmime"):
        mail_opts.append("BODY=8BITMIME")
    utf8 = any(not a.isascii() for a in [msg.sender, *msg.recipients])
    if utf8:
        if not s.has_extn("smtputf8"):
            res.fatal = Failure(EX_DATAERR, "the server does not take UTF-8 addresses (SMTPUTF8)")
            return
        mail_opts.append("SMTPUTF8")
    dsn = s.has_extn("dsn")
    if dsn and opts.ret.upper() in ("FULL", "HDRS"):
        mail_opts.append(f"RET={opts.ret.upper()}")
    if dsn and opts.envid:
        mail_opts.append("ENVID=" + xtext(opts.envid))
    code, text = s.mail(msg.sender, mail_opts)
    if code >= 400:
        if code < 500:
            res.later, res.why = list(msg.recipients), f"MAIL refused for now: {_reply(code, text)}"
        else:
            res.fatal = Failure(
                EX_NOPERM if b"5.7." in text[:6] else EX_UNAVAILABLE,
                f"sender <{msg.sender}> refused: {_reply(code, text)}",
            )
        s.rset()
        return
    rcpt_opts = [f"NOTIFY={opts.notify.upper()}"] if dsn and opts.notify else []
    accepted = []
    for r in msg.recipients:
        code, text = s.rcpt(r, rcpt_opts)
        if code < 300:
            accepted.append(r)
        elif code < 500:
            res.later.append(r)
            res.why = res.why or f"recipient refused for now: {_reply(code, text)}"
        elif code == RELAY_DENIED.code and text.startswith((RELAY_DENIED.enhanced or "").encode()):
            # the relay policy (a local client is not trusted by default): local mail relays through pickup
            res.later.append(r)
            res.relay_denied = True
            res.why = res.why or f"the server's relay policy: {_reply(code, text)}"
        else:
            res.refused.append((r, _reply(code, text)))
    if res.later:
        # one way for the whole message: a partial hand-over would split it in two copies
        res.later += accepted
        s.rset()
        return
    if not accepted:
        s.rset()
        return
    try:
        code, text = s.data(msg.content)
    except smtplib.SMTPDataError as e:
        code = e.smtp_code
        text = e.smtp_error if isinstance(e.smtp_error, bytes) else e.smtp_error.encode()
    if code == 250:
        res.delivered = accepted
        m = re.search(rb"queued as (\S+)", text)
        res.queue_id = m.group(1).decode() if m else ""
    elif code < 500:
        res.later, res.why = accepted, f"message refused for now: {_reply(code, text)}"
    else:
        what = EX_DATAERR if text.startswith((b"5.3.4", b"5.6.")) else EX_UNAVAILABLE
        res.fatal = Failure(what, f"message refused: {_reply(code, text)}")


def to_pickup(cfg: config_mod.Config, msg: Prepared, recipients: list[str], login: str) -> Path:
    """Write the message for the server to take later; raises OSError."""
    params = {"BODY": "8BITMIME"} if msg.eight_bit else {}
    if any(not a.isascii() for a in [msg.sender, *recipients]):
        params["SMTPUTF8"] = ""
    entry = pickup.Entry(msg.sender, recipients, msg.content, params, login, os.getuid(), time.time())
    return pickup.write(pickup.directory(cfg.data_path), entry, fsync=not cfg.unsafe_no_fsync)


# -- the commands -----------------------------------------------------------


def _login() -> tuple[str, str]:
    """The invoking user's login name and full name (GECOS)."""
    try:
        pw = pwd.getpwuid(os.getuid())
        return pw.pw_name, pw.pw_gecos.split(",")[0]
    except KeyError:
        return os.environ.get("LOGNAME") or os.environ.get("USER") or f"uid{os.getuid()}", ""


def _say(prog: str, text: str) -> None:
    print(f"{prog}: {text}", file=sys.stderr)


def load(opts: Options) -> config_mod.Config:
    path, looked = config_mod.locate(opts.config)
    try:
        return config_mod.load(path)
    except ConfigError as e:
        raise Failure(EX_CONFIG, f"configuration ({', '.join(looked)}): {e}") from None
    except OSError as e:
        raise Failure(EX_CONFIG, f"configuration {path}: {e.strerror or e}") from None


def send(opts: Options, stdin: BinaryIO, prog: str = "sendmail") -> int:
    cfg = load(opts)
    login, gecos = _login()
    domain = next(iter(cfg.local.domains), "") or cfg.host_name
    limit = cfg.smtpd.max_message_size
    try:
        data = stdin.read(limit + 1)
    except OSError as e:
        raise Failure(EX_IOERR, f"cannot read the message: {e.strerror or e}") from None
    if len(data) > limit:
        raise Failure(EX_DATAERR, f"message is larger than smtpd.max_message_size ({limit} octets)")
    msg = prepare(data, opts, domain=domain, hostname=cfg.host_name, login=login, gecos=gecos)
    address = listener_address(cfg)
    if address is None:
        res = Result(later=list(msg.recipients), why="the configuration has no mx listener")
    else:
        res = hand_over(address, msg, opts)
    if res.fatal is not None:
        raise res.fatal
    for rcpt, reply in res.refused:
        _say(prog, f"<{rcpt}>: refused: {reply}")
    if res.delivered and opts.verbose:
        _say(prog, f"queued as {res.queue_id} for {', '.join(res.delivered)}")
    if res.later:
        try:
            path = to_pickup(cfg, msg, res.later, login)
        except OSError as e:
            where = pickup.directory(cfg.data_path)
            detail = f"{res.why}; cannot write into {where}: {e.strerror or e}"
            if isinstance(e, PermissionError) and res.relay_denied:
                raise Failure(
                    EX_NOPERM,
                    detail + " (add 127.0.0.0/8 to relay.trusted_networks, or run as the server's user)",
                ) from None
            raise Failure(EX_TEMPFAIL, detail) from None
        if opts.verbose:
            _say(prog, f"{res.why}: written to {path} for the server to take")
    if res.refused:
        return EX_NOUSER
    return EX_OK


def flush(opts: Options) -> int:
    """-q: ask every worker to try its queue now (the control socket of `smtprs queue flush`)."""
    import trio

    from .queue.control import ControlError, request

    cfg = load(opts)
    answers, error = [], None
    for path in cfg.control_sockets():
        try:
            answers.append(trio.run(request, path, "FLUSH", 10.0))
        except ControlError as e:
            error = error or e
    if not answers:
        raise Failure(EX_UNAVAILABLE, f"cannot reach the server: {error}")
    for a in answers:
        if opts.verbose or not a.startswith("OK"):
            print(a)
    return EX_OK if all(a.startswith("OK") for a in answers) else EX_SOFTWARE


def smtp_stdio(opts: Options, stdin: BinaryIO, stdout: BinaryIO) -> int:
    """-bs: the server's own SMTP dialogue on standard input and output: the bytes are
    relayed both ways to its mx listener (so its replies, limits and policy are the server's)."""
    cfg = load(opts)
    address = listener_address(cfg)
    try:
        if address is None:
            raise OSError("the configuration has no mx listener")
        sock = socket.create_connection(address, timeout=SMTP_TIMEOUT)
    except OSError as e:
        stdout.write(b"421 4.3.0 mail system unavailable\r\n")
        stdout.flush()
        raise Failure(EX_UNAVAILABLE, f"cannot reach the server: {e}") from None
    sock.settimeout(None)

    def up() -> None:
        try:
            while data := os.read(stdin.fileno(), 65536):
                sock.sendall(data)
        except OSError:
            pass
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=up, daemon=True).start()
    try:
        while data := sock.recv(65536):
            stdout.write(data)
            stdout.flush()
    except OSError:
        pass
    finally:
        sock.close()
    return EX_OK


def mailq_text(entries: list[tuple[Envelope, int]]) -> str:
    """The queue in Postfix's mailq format."""
    if not entries:
        return "Mail queue is empty\n"
    out = ["-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"]
    total = 0
    for env, size in sorted(entries, key=lambda p: (p[0].arrival, p[0].queue_id)):
        total += size
        mark = "!" if env.held else " "
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(env.arrival))
        out.append(f"{env.queue_id + mark:<11} {size:>8} {arrival:>20}  {env.sender or 'MAILER-DAEMON'}")
        for r in env.recipients:
            if r.final:
                continue
            if r.last_error:
                out.append(f"({' '.join(r.last_error.split())[:200]})")
            out.append(f"{'':41}{r.address}")
        out.append("")
    n = len(entries)
    out.append(f"-- {(total + 1023) // 1024} Kbytes in {n} Request{'' if n == 1 else 's'}.")
    return "\n".join(out) + "\n"


def list_queue(opts: Options) -> int:
    """-bp, mailq: the queue as read from the spool (safe while the server runs)."""
    from .queue.spool import read_queue

    cfg = load(opts)
    if not cfg.spool_path.is_dir():
        raise Failure(EX_UNAVAILABLE, f"no spool at {cfg.spool_path} (has the server run with this configuration?)")
    sys.stdout.write(mailq_text(list(read_queue(cfg.spool_path))))
    return EX_OK


def run(argv: Sequence[str], prog: str) -> int:
    name = Path(prog).name
    try:
        opts = parse_args(argv, name)
    except UsageError as e:
        _say(name, str(e))
        return EX_USAGE
    try:
        if opts.mode == "p":
            return list_queue(opts)
        if opts.mode == "q":
            return flush(opts)
        if opts.mode == "i":
            return EX_OK  # newaliases: the server reads local.aliases itself (again at reload)
        if opts.mode == "s":
            return smtp_stdio(opts, sys.stdin.buffer, sys.stdout.buffer)
        return send(opts, sys.stdin.buffer, name)
    except Failure as e:
        _say(name, str(e))
        return e.code
    except KeyboardInterrupt:
        return EX_TEMPFAIL
    except Exception as e:  # a bug: one line, and a code the caller can act on
        _say(name, f"internal error: {e.__class__.__name__}: {e}")
        return EX_SOFTWARE


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sendmail`` entry point."""
    return run(sys.argv[1:] if argv is None else argv, sys.argv[0] if argv is None else "sendmail")


def mailq_main(argv: Sequence[str] | None = None) -> int:
    """The ``mailq`` entry point (= ``sendmail -bp``)."""
    return run(sys.argv[1:] if argv is None else argv, "mailq")


if __name__ == "__main__":
    sys.exit(main())
