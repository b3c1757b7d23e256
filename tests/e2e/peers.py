"""Real peers for the relay tests: a DNS server, downstream SMTP servers, certificates.

``Dnsmasq`` runs dnsmasq on a free loopback port with the records a test
gives (MX, A, null MX, NXDOMAIN and SERVFAIL domains under ``.test``).
``SmtpSink`` runs Postfix's smtp-sink, which dumps every message it takes
into a directory.  ``ScriptedPeer`` is an aiosmtpd server in a thread, for the
faults smtp-sink cannot script (n temporary failures then success, a SIZE
limit, STARTTLS with AUTH, per-recipient answers).  ``make_cert`` makes a
self-signed certificate with openssl.

Every peer stops by itself at teardown (the fixtures' finalizers, and an
``atexit`` guard) and every wait is bounded.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype

_LIVE: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for peer in list(_LIVE):
        try:
            peer.stop()
        except Exception:
            pass


def free_port(udp_too: bool = False) -> int:
    """A loopback port free a moment ago (for TCP, and UDP when asked)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not udp_too:
            return port
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


def wait_until(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# --------------------------------------------------------------------------
# DNS


class Dnsmasq:
    """dnsmasq answering for ``.test`` names only, from its command line.

    ``records`` are dnsmasq options: ``--mx-host=dom,host,pref``,
    ``--host-record=name,ip``, ``--mx-host=dom,.,0`` (a null MX),
    ``--server=/dom/127.0.0.1#1`` (upstream that never answers: SERVFAIL).
    Names under .test without a record get NXDOMAIN.
    """

    def __init__(self, base: Path, records: list[str], ttl: int = 0) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.records = list(records)
        self.ttl = ttl
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "dnsmasq.log"

    def start(self) -> Dnsmasq:
        exe = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        for _ in range(3):
            self.port = free_port(udp_too=True)
            args = [
                exe,
                "--keep-in-foreground",
                f"--port={self.port}",
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--no-poll",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--local=/test/",
                "--log-queries",
                f"--log-facility={self.log_path}",
                "--host-record=ready.probe.test,127.0.0.9",
                *([f"--local-ttl={self.ttl}"] if self.ttl else []),
                *self.records,
            ]
            if os.getuid() == 0:
                args.append("--user=root")  # writes its log file; drops nothing else we need
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            _LIVE.add(self)
            try:
                wait_until(self._ready, 10, "dnsmasq to answer")
                return self
            except AssertionError:
                err = self._stop_and_stderr()
                if "in use" not in err:
                    raise AssertionError(f"dnsmasq did not start: {err}") from None
        raise AssertionError("dnsmasq: no free port")

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"dnsmasq exited with {self.proc.returncode}: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
            )
        q = dns.message.make_query("ready.probe.test", dns.rdatatype.A)
        try:
            r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=0.5)
        except Exception:
            return False
        return bool(r.answer)

    def _stop_and_stderr(self) -> str:
        if self.proc is None:
            return ""
        self.proc.kill()
        _, err = self.proc.communicate(timeout=5)
        return err.decode(errors="replace")

    def queries(self, name: str) -> int:
        """How many queries for ``name`` dnsmasq has seen (from its log)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return 0
        return sum(1 for line in text.splitlines() if "query[" in line and f" {name} from" in line)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def config(self) -> dict[str, Any]:
        """The smtprs [dns] section that points at this server."""
        return {"nameservers": ["127.0.0.1"], "port": self.port, "timeout": 2.0}


# --------------------------------------------------------------------------
# smtp-sink


class SmtpSink:
    """Postfix's smtp-sink on a loopback port, dumping each message to a file.

    ``options`` are smtp-sink flags, e.g. ``["-8"]`` (no 8BITMIME),
    ``["-r", "RCPT"]`` (4xx to RCPT), ``["-f", "RCPT"]`` (5xx to RCPT).
    A dump file is smtp-sink's own header lines (X-Client-Addr, X-Mail-Args,
    X-Rcpt-Args..., its three-line Received field) and then the message as
    received, with LF line ends and an empty line at the end.
    """

    def __init__(
        self, base: Path, options: list[str] | None = None, port: int | None = None, hostname: str = "sink.test"
    ) -> None:
        self.base = base
        self.dump_dir = base / "dump"
        self.dump_dir.mkdir(parents=True, exist_ok=True)
        self.options = options or []
        self.port = port or free_port()
        self.hostname = hostname
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SmtpSink:
        exe = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        user = ["-u", pwd.getpwuid(os.getuid()).pw_name] if os.getuid() == 0 else []
        self.proc = subprocess.Popen(
            [
                exe,
                *user,
                "-h",
                self.hostname,
                "-d",
                f"{self.dump_dir}/msg.",
                *self.options,
                f"127.0.0.1:{self.port}",
                "64",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _LIVE.add(self)
        wait_until(self._accepts, 10, f"smtp-sink on port {self.port}")
        return self

    def _accepts(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"smtp-sink exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.settimeout(2)
                return s.recv(100).startswith(b"220")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def dumps(self) -> list[Path]:
        return sorted(self.dump_dir.glob("msg.*"), key=lambda p: p.stat().st_mtime_ns)

    def wait_dumps(self, n: int, timeout: float = 20.0) -> list[Path]:
        def enough() -> list[Path] | None:
            d = self.dumps()
            return d if len(d) >= n else None

        return wait_until(enough, timeout, f"{n} messages in smtp-sink's dump directory")


@dataclass
class SinkDump:
    """One smtp-sink dump file, split into its parts."""

    mail_args: str
    rcpt_args: list[str]
    helo: str
    message: bytes  # as received, LF line ends

    @classmethod
    def read(cls, path: Path) -> SinkDump:
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        mail, rcpts, helo = "", [], ""
        i = 0
        while not lines[i].startswith(b"Received: "):
            key, _, value = lines[i].decode().partition(": ")
            if key == "X-Mail-Args":
                mail = value
            elif key == "X-Rcpt-Args":
                rcpts.append(value)
            elif key == "X-Helo-Args":
                helo = value
            i += 1
        i += 3  # smtp-sink's own Received field is three lines
        body = b"\n".join(lines[i:])
        assert body.endswith(b"\n\n"), "smtp-sink dump should end with an empty line"
        return cls(mail, rcpts, helo, body[:-1])


# --------------------------------------------------------------------------
# aiosmtpd, for scripted faults


@dataclass
class Received:
    sender: str
    rcpts: list[str]
    mail_options: list[str]
    rcpt_options: list[list[str]]
    content: bytes
    tls: bool
    authenticated: bool


@dataclass
class Script:
    """What a ScriptedPeer answers. Lists are consumed one item per command;
    None (or an empty list) means "accept"."""

    rcpt: dict[str, list[str]] = field(default_factory=dict)  # address -> replies, in order
    data: list[str] = field(default_factory=list)  # replies to the end of DATA, in order
    mail: list[str] = field(default_factory=list)


class ScriptedPeer:
    """An aiosmtpd server in a thread with scripted replies."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        port: int | None = None,
        data_size_limit: int | None = None,
        tls_cert: tuple[Path, Path] | None = None,
        credentials: tuple[str, str] | None = None,
        smtputf8: bool = False,
        hostname: str = "peer.test",
    ) -> None:
        self.script = script or Script()
        self.port = port or free_port()
        self.received: list[Received] = []
        self.auth_attempts: list[tuple[str, str]] = []
        self.connections = 0
        self.lock = threading.Lock()
        kwargs: dict[str, Any] = {"ident": "peer", "server_hostname": hostname, "enable_SMTPUTF8": smtputf8}
        if data_size_limit is not None:
            kwargs["data_size_limit"] = data_size_limit
        if tls_cert is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(str(tls_cert[0]), str(tls_cert[1]))
            kwargs["tls_context"] = ctx
        if credentials is not None:
            kwargs["authenticator"] = self._authenticator(credentials)
            kwargs["auth_required"] = True
            kwargs["auth_require_tls"] = True
        self._kwargs = kwargs
        self.controller: Any = None

    def _authenticator(self, creds: tuple[str, str]) -> Callable[..., Any]:
        from aiosmtpd.smtp import AuthResult, LoginPassword

        def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
            if not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            login, password = data.login.decode(), data.password.decode()
            with self.lock:
                self.auth_attempts.append((mechanism, login))
            return AuthResult(success=(login, password) == creds, handled=False)

        return check

    def start(self) -> ScriptedPeer:
        from aiosmtpd.controller import Controller

        self.controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=self.port, ready_timeout=10, **self._kwargs
        )
        self.controller.start()
        _LIVE.add(self)
        return self

    def stop(self) -> None:
        if self.controller is not None:
            try:
                self.controller.stop()
            except Exception:
                pass
            self.controller = None

    def wait_received(self, n: int, timeout: float = 20.0) -> list[Received]:
        return wait_until(
            lambda: list(self.received) if len(self.received) >= n else None,
            timeout,
            f"{n} messages at the scripted peer",
        )


class _Handler:
    def __init__(self, peer: ScriptedPeer) -> None:
        self.peer = peer

    @staticmethod
    def _next(replies: list[str]) -> str | None:
        return replies.pop(0) if replies else None

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not getattr(session, "_counted", False):
            session._counted = True
            with self.peer.lock:
                self.peer.connections += 1
        return responses

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        reply = self._next(self.peer.script.mail)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.rcpt_opts = []
        return "250 2.1.0 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        reply = self._next(self.peer.script.rcpt.get(address, []))
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_opts = getattr(envelope, "rcpt_opts", []) + [list(options)]
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = self._next(self.peer.script.data)
        if reply:
            return reply
        with self.peer.lock:
            self.peer.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    list(envelope.mail_options),
                    list(getattr(envelope, "rcpt_opts", [])),
                    bytes(envelope.original_content or envelope.content),
                    session.ssl is not None,
                    bool(getattr(session, "authenticated", False)),
                )
            )
        return "250 2.0.0 OK queued"


# --------------------------------------------------------------------------
# Certificates


def make_cert(directory: Path, name: str, *, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate (CA:TRUE, so it is its own trust anchor) for ``name``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name},IP:{ip}",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
