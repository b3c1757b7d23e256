"""The end-to-end harness: a real ``smtprs serve`` process and small clients.

``Server`` writes a per-test TOML configuration, starts ``smtprs serve`` on a
free loopback port (an ``mx`` listener, plus one more free port per extra
listener mode asked for, e.g. ``modes=("submission", "submissions")``) with
its standard error in a log file, waits until the port
accepts connections, and stops it with SIGTERM (SIGKILL after a bound).
``SMTPClient`` is a raw-socket SMTP client for what smtplib will not do
(pipelining, BDAT, bad input).  The Maildir helpers poll with a bounded wait,
and ``check_delivered`` checks a delivered file byte for byte: the message as
sent (CRLF turned into LF) preceded by exactly Return-Path, Delivered-To and
our Received field.

Everything here is bounded in time: no helper waits forever.
"""

from __future__ import annotations

import atexit
import email.utils
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOSTNAME = "mx.test"
DOMAIN = "example.test"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DELIVERY_TIMEOUT = 10.0
QUEUED_RE = re.compile(r"queued as (\S+)")


# --------------------------------------------------------------------------
# Configuration


def free_port() -> int:
    """A loopback port that was free a moment ago (bind port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        out = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{out}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as a TOML value")


def _toml_key(key: str) -> str:
    """A bare key when TOML allows one, else a quoted one ("example.org" = ...)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_value(key)


def to_toml(tree: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for nested dicts (tables) and lists of dicts (arrays of tables)."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for key, value in tree.items():
        if isinstance(value, dict) or (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
            tables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in tables:
        name = f"{prefix}{_toml_key(key)}"
        if isinstance(value, dict):
            lines.append(f"\n[{name}]")
            lines.append(to_toml(value, name + "."))
        else:
            for item in value:
                lines.append(f"\n[[{name}]]")
                lines.append(to_toml(item, name + "."))
    return "\n".join(line for line in lines if line != "") + "\n"


def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def smtprs_command() -> list[str]:
    """How to run smtprs: $SMTPRS_CMD, the script beside this Python, on PATH, or -m."""
    env = os.environ.get("SMTPRS_CMD")
    if env:
        return env.split()
    beside = Path(sys.executable).parent / "smtprs"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("smtprs")
    if found and "shims" not in found:
        return [found]
    return [sys.executable, "-m", "smtprs"]


_LIVE: weakref.WeakSet[Server] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """No server outlives the test run, whatever happened to the fixtures."""
    for srv in list(_LIVE):
        srv.kill()


# --------------------------------------------------------------------------
# The server process


class ServerError(AssertionError):
    pass


class Server:
    """One ``smtprs serve`` process with its own configuration and data directory."""

    def __init__(self, base: Path, overrides: dict[str, Any] | None = None, modes: Iterable[str] = ()) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.data_dir = base / "data"
        self.config_path = base / "smtprs.toml"
        self.log_path = base / "server.log"
        self.port = free_port()
        self.ports: dict[str, int] = {"mx": self.port, **{mode: free_port() for mode in modes}}
        self.overrides = overrides or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.write_config()

    # -- configuration ---------------------------------------------------
    def config(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "data_dir": str(self.data_dir),
            "hostname": HOSTNAME,
            # one process, so /proc/PID, signals and per-process limits speak of the
            # server itself; tests/e2e/test_workers.py covers several workers
            "workers": 1,
            "smtpd": {
                "command_timeout": 30.0,
                "data_timeout": 30.0,
                "shutdown_timeout": 3.0,  # below STOP_TIMEOUT, so a test's leftover session cannot fail the teardown
                "listeners": [{"address": f"127.0.0.1:{self.port}"}],
            },
            "local": {"domains": [DOMAIN], "users": [], "maildir": "mail/{user}"},
            "queue": {"retry_min": 0.5, "retry_max": 2.0},
        }
        cfg = merge(base, self.overrides)
        cfg["smtpd"]["listeners"] = [{"address": f"127.0.0.1:{self.port}"}]
        cfg["smtpd"]["listeners"] += [
            {"address": f"127.0.0.1:{port}", "mode": mode} for mode, port in self.ports.items() if mode != "mx"
        ]
        return cfg

    def write_config(self) -> None:
        self.config_path.write_text(to_toml(self.config()))

    # -- life cycle ------------------------------------------------------
    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = START_TIMEOUT) -> Server:
        """Start and wait until the listener is announced and accepts connections."""
        for attempt in range(3):
            try:
                self._start_once(timeout)
                return self
            except ServerError as e:
                if "in use" in str(e) and attempt < 2:  # the free port was taken meanwhile
                    self.ports = {mode: free_port() for mode in self.ports}
                    self.port = self.ports["mx"]
                    self.write_config()
                    continue
                raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            log.write(f"----- harness: start #{self.starts} -----\n".encode())
            log.flush()
            # faulthandler: SIGABRT makes a stuck server print every thread's stack
            env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1")
            self.proc = subprocess.Popen(
                [*smtprs_command(), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.base,
            )
            _LIVE.add(self)
        deadline = time.monotonic() + timeout
        announce = f"listening on 127.0.0.1:{self.port}"
        while True:
            text = self._read_log(offset)
            if self.proc.poll() is not None:
                raise ServerError(f"smtprs serve exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            if (
                announce in text
                and all(f"listening on 127.0.0.1:{p}" in text for p in self.ports.values())
                and _accepts(self.port)
            ):
                return
            if time.monotonic() > deadline:
                self.dump_and_kill()
                raise ServerError(f"smtprs serve not ready after {timeout}s (want {announce!r}):\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (or ``sig``), wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.dump_and_kill()
                raise ServerError(
                    f"smtprs serve did not stop within {timeout}s of signal {sig}:\n{self.log_tail()}"
                ) from None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, at once (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def dump_and_kill(self) -> None:
        """A stuck server: SIGABRT (faulthandler prints the stacks into the log), then SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def restart(self) -> Server:
        self.stop()
        return self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- log -------------------------------------------------------------
    def _read_log(self, offset: int = 0) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log(self) -> str:
        return self._read_log()

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def log_lines(self, qid: str) -> list[str]:
        """The log lines about queue id ``qid`` (``QID: ...``)."""
        return [line for line in self.log().splitlines() if f"{qid}:" in line]

    def wait_log(self, pred: Callable[[str], bool] | str, timeout: float = DELIVERY_TIMEOUT) -> str:
        """Wait for a log line matching ``pred`` (a regex or a predicate); return it."""
        check: Callable[[str], bool]
        if isinstance(pred, str):
            rx = re.compile(pred)
            check = lambda line: rx.search(line) is not None  # noqa: E731
        else:
            check = pred
        deadline = time.monotonic() + timeout
        while True:
            for line in self.log().splitlines():
                if check(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pred!r} within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    # -- memory ----------------------------------------------------------
    def proc_status(self, key: str) -> int:
        """A field of /proc/PID/status in bytes (VmRSS, VmHWM)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        m = re.search(rf"^{key}:\s+(\d+) kB", text, re.M)
        assert m, f"{key} not in /proc/{self.pid}/status"
        return int(m.group(1)) * 1024

    # -- files -----------------------------------------------------------
    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def shard_dir(self) -> Path:
        """The spool shard of a single-worker server (seg/, files/, corrupt/)."""
        return self.spool_dir / "shard-0"

    def maildir(self, user: str) -> Path:
        return self.data_dir / "mail" / user

    def mail(self, user: str) -> list[Path]:
        return maildir_files(self.maildir(user))

    def block_maildir(self, user: str) -> Path:
        """Put a plain file where ``user``'s Maildir belongs: deliveries to them
        are deferred (and the mail stays queued) until it is removed."""
        blocker = self.maildir(user)
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("not a Maildir\n")
        return blocker

    def send_deferred(
        self, user: str, subject: str, body: str, sender: str = "sender@client.test"
    ) -> tuple[bytes, str]:
        """Send one message to ``user`` (whose Maildir is blocked), check its
        250 2.0.0 and wait until its first delivery attempt is deferred.
        Returns the message as sent and its queue id."""
        msg = make_message(subject, body)
        with self.connect() as c:
            c.ehlo()
            r = c.send_message(sender, [f"{user}@{DOMAIN}"], stuff(msg))
            check(r, 250, "2.0.0")
        self.wait_log(rf"{r.qid}: to=<{user}@{DOMAIN}>.*status=deferred")
        return msg, r.qid

    def wait_mail(self, user: str, n: int, timeout: float = DELIVERY_TIMEOUT, settle: float = 0.0) -> list[Path]:
        files = wait_maildir(self.maildir(user), n, timeout)
        if settle:
            time.sleep(settle)
            again = maildir_files(self.maildir(user))
            assert len(again) == n, f"{user}: expected exactly {n} messages, found {len(again)}: {again}"
        return files

    def all_mail(self) -> dict[str, list[Path]]:
        root = self.data_dir / "mail"
        if not root.is_dir():
            return {}
        return {d.name: maildir_files(d) for d in sorted(root.iterdir()) if d.is_dir()}

    def spool_snapshot(self) -> dict[str, int]:
        """What the spool holds: each queued message (queue id -> content size, read
        with the spool's own read-only lister) and every file in each shard's files/."""
        from smtprs.queue.spool import read_queue

        out = {env.queue_id: size for env, size in read_queue(self.spool_dir)}
        for files in sorted(self.spool_dir.glob("shard-*/files")):
            out.update({f"{files.parent.name}/files/{k}": v for k, v in tree_snapshot(files).items()})
        return out

    # -- clients ---------------------------------------------------------
    def connect(
        self, timeout: float = 10.0, greet: bool = True, source: str | None = None, port: int | None = None
    ) -> SMTPClient:
        c = SMTPClient(port or self.port, timeout=timeout, source=source)
        if greet:
            r = c.reply()
            assert r.code == 220, r
        return c


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def tree_snapshot(root: Path) -> dict[str, int]:
    """Every regular file under ``root`` with its size."""
    out: dict[str, int] = {}
    if not root.exists():
        return out
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            try:
                out[str(p.relative_to(root))] = p.stat().st_size
            except FileNotFoundError:
                pass
    return out


# --------------------------------------------------------------------------
# A raw SMTP client


@dataclass
class Reply:
    code: int
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def enhanced(self) -> str:
        m = re.match(r"(\d\.\d{1,3}\.\d{1,3})(?:\s|$)", self.lines[-1] if self.lines else "")
        return m.group(1) if m else ""

    @property
    def qid(self) -> str:
        m = QUEUED_RE.search(self.text)
        assert m, f"no queue id in {self}"
        return m.group(1)

    def __str__(self) -> str:
        return " / ".join(f"{self.code} {line}" for line in self.lines) or str(self.code)


class ConnectionClosed(AssertionError):
    pass


class SMTPClient:
    """A raw-socket SMTP client: send bytes, read whole replies, bounded waits."""

    def __init__(self, port: int, timeout: float = 10.0, source: str | None = None) -> None:
        # source: connect from this address (any 127.x.y.z works on Linux), to look like another client
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> SMTPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
        self.buf += chunk

    def reply(self, timeout: float | None = None) -> Reply:
        """Read one whole (possibly multi-line) reply."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        code: int | None = None
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buf:
                if self.eof:
                    raise ConnectionClosed(f"connection closed; partial reply {lines!r} {self.buf!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no complete reply within the timeout; have {lines!r} {self.buf[:200]!r}")
                self._fill(left)
            raw, self.buf = self.buf.split(b"\r\n", 1)
            line = raw.decode("utf-8", "replace")
            m = re.match(r"(\d{3})([ -])(.*)$", line, re.S)
            assert m, f"malformed reply line {raw!r}"
            c = int(m.group(1))
            assert code is None or c == code, f"reply code changed inside a multi-line reply: {lines!r} then {line!r}"
            code = c
            lines.append(m.group(3))
            if m.group(2) == " ":
                return Reply(code, lines)

    def replies(self, n: int, timeout: float | None = None) -> list[Reply]:
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line: bytes | str, timeout: float | None = None) -> Reply:
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def expect(self, line: bytes | str, code: int, enhanced: str | None = None) -> Reply:
        r = self.cmd(line)
        check(r, code, enhanced, line)
        return r

    def nothing_more(self, wait: float = 0.5) -> bool:
        """True when no further byte arrives within ``wait`` seconds (and the peer did not close)."""
        if self.buf:
            return False
        if _readable(self.sock, wait):
            self._fill(wait)
        return not self.buf and not self.eof

    def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Wait until the server closes the connection; return what it sent meanwhile."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"connection still open after {timeout}s; got {self.buf!r}")
            try:
                self._fill(left)
            except TimeoutError:
                continue
            except OSError:
                self.eof = True
        out, self.buf = self.buf, b""
        return out

    # -- conveniences --------------------------------------------------
    def ehlo(self, name: str = "client.test") -> Reply:
        return self.expect(f"EHLO {name}", 250)

    def send_message(self, sender: str, rcpts: Iterable[str], wire_data: bytes, ehlo: bool = False) -> Reply:
        """MAIL, RCPT..., DATA and the (already stuffed, CRLF-terminated) data; returns the final reply."""
        if ehlo:
            self.ehlo()
        self.expect(f"MAIL FROM:<{sender}>", 250)
        for r in rcpts:
            self.expect(f"RCPT TO:<{r}>", 250)
        self.expect("DATA", 354)
        self.send(wire_data + b".\r\n")
        return self.reply()


def _readable(sock: socket.socket, wait: float) -> bool:
    import select

    r, _, _ = select.select([sock], [], [], wait)
    return bool(r)


def check(r: Reply, code: int, enhanced: str | None = None, what: object = "") -> None:
    assert r.code == code, f"{what!r}: expected {code} {enhanced or ''}, got {r}"
    if enhanced is not None:
        assert r.enhanced == enhanced, f"{what!r}: expected enhanced code {enhanced}, got {r}"


# --------------------------------------------------------------------------
# Messages


def submit(port: int, sender: str, rcpt: str, msg: bytes, helo: str = "client.test") -> str:
    """One message over smtplib to 127.0.0.1:port, each reply checked; its queue id."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=30) as s:
        code, text = s.ehlo()
        assert code == 250, text
        assert s.mail(sender)[0] == 250
        code, text = s.rcpt(rcpt)
        assert code == 250, text
        code, text = s.data(msg)
        assert code == 250, text
        m = re.search(rb"queued as (\S+)", text)
        assert m, text
        return m.group(1).decode()


def stuff(message: bytes) -> bytes:
    """Dot-stuff a CRLF message for DATA (a leading '.' doubled); ends with CRLF."""
    assert message.endswith(b"\r\n")
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines)


def make_message(subject: str, body: bytes | str, extra_headers: Iterable[str] = ()) -> bytes:
    """A small RFC 5322 message with CRLF line ends (ending with CRLF)."""
    if isinstance(body, str):
        body = body.encode()
    head = [
        "From: Sender <sender@client.test>",
        f"To: {DOMAIN} users <users@{DOMAIN}>",
        f"Subject: {subject}",
        "Date: Fri, 29 Nov 2024 08:00:00 +0000",
        f"Message-ID: <{abs(hash(subject))}.{time.monotonic_ns()}@client.test>",
        *extra_headers,
    ]
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return "\r\n".join(head).encode() + b"\r\n\r\n" + body


# --------------------------------------------------------------------------
# Maildir


def maildir_files(root: Path) -> list[Path]:
    new = root / "new"
    if not new.is_dir():
        return []
    return sorted(p for p in new.iterdir() if not p.name.startswith("."))


def wait_maildir(root: Path, n: int, timeout: float = DELIVERY_TIMEOUT) -> list[Path]:
    """Wait until ``root/new`` holds at least ``n`` messages; fail past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        files = maildir_files(root)
        if len(files) >= n:
            return files
        if time.monotonic() > deadline:
            raise AssertionError(f"{root}: {len(files)} of {n} messages after {timeout}s: {files}")
        time.sleep(0.05)


def split_fields(block: bytes) -> list[tuple[str, str]]:
    """Header fields of an LF header block (name, unfolded value); fails on junk."""
    fields: list[tuple[str, str]] = []
    assert block.endswith(b"\n"), f"added header block does not end with a line end: {block[-80:]!r}"
    for raw in block[:-1].split(b"\n"):
        line = raw.decode("utf-8")
        assert "\r" not in line, f"CR left in a delivered header line: {raw!r}"
        if line[:1] in (" ", "\t"):
            assert fields, f"continuation line before any field: {line!r}"
            name, value = fields[-1]
            fields[-1] = (name, value + " " + line.strip())
            continue
        m = re.match(r"([!-9;-~]+):[ \t]?(.*)$", line)
        assert m, f"not a header field: {line!r}"
        fields.append((m.group(1), m.group(2).strip()))
    return fields


def check_delivered(
    path: Path,
    message: bytes,
    *,
    sender: str,
    rcpt: str,
    qid: str | None = None,
    with_protocol: str | None = None,
) -> list[tuple[str, str]]:
    """Check a delivered Maildir file byte for byte; return the fields we added.

    ``message`` is the message as the client meant it (un-stuffed, CRLF): the
    file must end with it, CRLF turned into LF, and what comes before must be
    exactly Return-Path (first), Delivered-To and our Received field.
    """
    content = path.read_bytes()
    expected = message.replace(b"\r\n", b"\n")
    assert content.endswith(expected), (
        f"{path.name}: delivered content does not end with the message as sent "
        f"({len(content)} octets delivered, {len(expected)} expected); "
        f"first difference near: {_first_diff(content[-len(expected) :], expected)}"
    )
    prefix = content[: len(content) - len(expected)]
    fields = split_fields(prefix)
    names = [n.lower() for n, _ in fields]
    assert names and names[0] == "return-path", f"{path.name}: first field should be Return-Path: {fields}"
    assert sorted(names) == ["delivered-to", "received", "return-path"], (
        f"{path.name}: added fields should be exactly Return-Path, Delivered-To, Received: {fields}"
    )
    got = dict((n.lower(), v) for n, v in fields)
    assert got["return-path"] == f"<{sender}>", f"Return-Path {got['return-path']!r}, expected <{sender}>"
    assert got["delivered-to"].lower() in (rcpt.lower(), f"<{rcpt.lower()}>"), (
        f"Delivered-To {got['delivered-to']!r}, expected {rcpt}"
    )
    rec = got["received"]
    assert re.search(rf"\bby {re.escape(HOSTNAME)} \(smtprs\)", rec), (
        f"Received: {rec!r} lacks 'by {HOSTNAME} (smtprs)'"
    )
    assert re.match(r"from \S", rec), f"Received: {rec!r} should start with 'from'"
    m = re.search(r"\bby \S+ \(smtprs\) with (\S+)", rec)  # not a "with" inside a comment (TLS)
    assert m, f"Received: {rec!r} lacks 'with PROTOCOL'"
    if with_protocol is not None:
        assert m.group(1).rstrip(";") == with_protocol, f"Received: {rec!r}: expected 'with {with_protocol}'"
    if qid is not None:
        assert re.search(rf"\bid {re.escape(qid)}\b", rec), f"Received: {rec!r} lacks 'id {qid}'"
    assert ";" in rec, f"Received: {rec!r} lacks '; date-time'"
    date = rec.rsplit(";", 1)[1].strip()
    assert email.utils.parsedate_to_datetime(date) is not None, f"Received date {date!r} unparsable"
    return fields


def _first_diff(a: bytes, b: bytes) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"offset {i}: got {a[max(0, i - 20) : i + 20]!r}, expected {b[max(0, i - 20) : i + 20]!r}"
    return f"lengths {len(a)} vs {len(b)}"
