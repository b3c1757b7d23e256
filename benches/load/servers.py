"""The servers under test: one adapter per peer, each started fresh for every run.

An adapter writes its server's configuration into a new directory, starts it
on a free loopback port (never 25, never the system's Postfix instance), tells
the driver which process tree to account and which Maildir ``new/`` to count,
and stops it again:

- ``Smtprs``: ``smtprs serve`` with a generated config (sink mode: the null
  spool backend, ``[queue] backend = "null"``; otherwise the defaults);
- ``Postfix``: a private instance in its own ``config_directory``, or its C
  ``smtp-sink`` in sink mode;
- ``Aiosmtpd``, ``Floor``, ``FloorAccept``: the scripts ``aiosmtpd_server.py``
  and ``trio_floor.py`` beside this module, started by path.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .procs import STARTED, descendants, follow_counter, kill_pids, pid_alive, scan_proc, stop_started, wait_gone
from .settings import (
    BASE_MODES,
    DKIM_MODES,
    DOMAIN,
    HELPERS,
    MILTER_MODES,
    MODES,
    PEER_LABEL,
    POSTCONF,
    POSTFIX,
    SENDER_DOMAIN,
    SMTP_SINK,
    Settings,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_smtp(port: int, timeout: float, alive: Callable[[], bool] = lambda: True) -> None:
    """Until the port answers with a 220 greeting."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("server exited while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                greeting = s.recv(512)
                if greeting.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return
                last = RuntimeError(f"greeting {greeting!r}")
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise RuntimeError(f"no SMTP greeting on 127.0.0.1:{port} after {timeout} s: {last}")


def run_text(cmd: list[str], env: dict[str, str] | None = None) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


class Server:
    name = ""
    modes: tuple[str, ...] = BASE_MODES  # the modes it runs in (the others are skipped for it)

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings
        self.port = 0
        self.mode = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path = root
        self.runs = 0
        self.next_hop = 0  # relay mode: the port of the bench's smtp-sink, set before start()
        self.milter_port = 0  # milter-rspamd mode: the port of the bench's rspamd, set before start()

    def label(self, mode: str) -> str:
        return PEER_LABEL.get((self.name, mode), self.name)

    def problem(self) -> str | None:
        """Why this server cannot run here (None if it can)."""
        return None

    def version(self) -> str:
        return ""

    def roots(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def maildir_new(self) -> Path | None:
        return None

    def figures(self) -> dict[str, Any]:
        """Server-specific figures read while it still runs (after the window)."""
        return {}

    def start(self, mode: str) -> None:
        raise NotImplementedError

    def _fresh_dir(self, mode: str) -> Path:
        self.runs += 1
        d = self.root / f"{self.name}-{mode}-{self.runs}"
        d.mkdir(parents=True)
        d.chmod(0o755)
        return d

    def _spawn(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        STARTED.append(self)
        try:
            wait_smtp(self.port, 30, lambda: self.proc is not None and self.proc.poll() is None)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{self.name} did not start: {e}\n{tail(log)}") from None

    def stop(self) -> None:
        if self in STARTED:
            STARTED.remove(self)
        proc, self.proc = self.proc, None
        if proc is None:
            return
        tree = descendants([proc.pid], scan_proc())
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        if not wait_gone(tree, 5):
            kill_pids(tree)

    def cleanup(self) -> None:
        pass


def smtprs_env(settings: Settings) -> dict[str, str] | None:
    if not settings.smtprs_pythonpath:
        return None
    return {**os.environ, "PYTHONPATH": settings.smtprs_pythonpath}


class Smtprs(Server):
    name = "smtprs"
    modes = MODES  # the DKIM modes too

    def __init__(self, root: Path, settings: Settings) -> None:
        super().__init__(root, settings)
        self.dkim_keys: dict[str, tuple[Path, str, str]] = {}  # algorithm -> key file, selector, TXT value

    def version(self) -> str:
        if self.settings.smtprs_cmd[1:2] != ("-m",):
            return ""
        code = "import smtprs, importlib.metadata as m; print(m.version('smtprs'))"
        return run_text([self.settings.smtprs_cmd[0], "-c", code], smtprs_env(self.settings))

    def problem(self) -> str | None:
        if not run_text([*self.settings.smtprs_cmd, "serve", "--help"], smtprs_env(self.settings)):
            return f"`{shlex.join(self.settings.smtprs_cmd)} serve --help` failed: is smtprs installed?"
        return None

    def maildir_new(self) -> Path | None:
        return None if self.mode == "relay" else self.dir / "mail" / "box" / "new"

    def start(self, mode: str) -> None:
        self.mode = mode
        self.dir = self._fresh_dir(mode)
        self.port = free_port()
        cfg = self.dir / "smtprs.toml"
        cfg.write_text(
            "\n".join(
                [
                    'hostname = "smtprs-bench.test"',
                    f'data_dir = "{self.dir / "data"}"',
                    "[smtpd]",
                    "max_connections = 1000",
                    "[[smtpd.listeners]]",
                    f'address = "127.0.0.1:{self.port}"',
                    "[local]",
                    # relay: the bench domain is not local; it goes to the sink through the transport map
                    *([f'domains = ["{DOMAIN}"]'] if mode != "relay" else []),
                    f'maildir = "{self.dir / "mail" / "{user}"}"',
                    # sink: accept and throw away, as smtp-sink and the aiosmtpd sink do
                    *(["[queue]", 'backend = "null"'] if mode == "sink" else []),
                    *(self.relay_config() if mode == "relay" else []),
                    *(self.dkim_config(DKIM_MODES[mode]) if mode in DKIM_MODES else []),
                    *(["[milter]", f'milters = ["inet:127.0.0.1:{self.milter_port}"]'] if mode in MILTER_MODES else []),
                    "",
                ]
            )
        )
        cmd = [*self.settings.smtprs_cmd, "serve", "--config", str(cfg)]
        if self.settings.smtprs_workers is not None:
            cmd += ["--workers", str(self.settings.smtprs_workers)]
        self._spawn(cmd, self.dir / "smtprs.log", smtprs_env(self.settings))

    def relay_config(self) -> list[str]:
        """Relay mode: the durable spool (the defaults), and every message of the
        bench domain to the sink by the transport map, over SMTP, without TLS
        (smtp-sink offers none; Postfix's client does not try either), pooled
        connections as configured by default."""
        return [
            "[relay]",
            'trusted_networks = ["127.0.0.0/8"]',
            'tls = "none"',
            "[relay.transport]",
            f'"{DOMAIN}" = "smtp:[127.0.0.1]:{self.next_hop}"',
        ]

    def dkim_key(self, algorithm: str) -> tuple[Path, str, str]:
        """A key made by ``smtprs dkim keygen`` (once per benchmark and algorithm):
        its file, selector and the TXT record's value."""
        if algorithm not in self.dkim_keys:
            selector = "rsa" if algorithm == "rsa-sha256" else "ed"
            path = self.root / f"dkim-{selector}.pem"
            path.unlink(missing_ok=True)
            cmd = [*self.settings.smtprs_cmd, "dkim", "keygen", "--domain", SENDER_DOMAIN, "--selector", selector]
            cmd += ["--algorithm", algorithm, "--out", str(path)]
            line = run_text(cmd, smtprs_env(self.settings))
            if " IN TXT " not in line:
                raise RuntimeError(f"`{shlex.join(cmd)}` printed no TXT record: {line!r}")
            value = "".join(line.split(" IN TXT ", 1)[1].split('"')[1::2])
            self.dkim_keys[algorithm] = (path, selector, value)
        return self.dkim_keys[algorithm]

    def dkim_config(self, algorithm: str) -> list[str]:
        """The DKIM modes: the load's From: domain has a key, and the load comes
        from a trusted network (smtp-source does not authenticate), so every
        message is signed before its 250."""
        path, selector, _ = self.dkim_key(algorithm)
        return [
            "[relay]",
            'trusted_networks = ["127.0.0.0/8"]',
            "[[dkim.keys]]",
            f'domain = "{SENDER_DOMAIN}"',
            f'selector = "{selector}"',
            f'key_file = "{path}"',
            f'algorithm = "{algorithm}"',
        ]

    def dkim_check(self, algorithm: str, sample: int = 20) -> dict[str, Any]:
        """The DKIM modes, after the window: of up to ``sample`` delivered
        messages, the share that carries a DKIM-Signature field and the share
        that dkimpy verifies with the published key (so a run that measured
        unsigned mail cannot pass as a signed one)."""
        import dkim  # dkimpy, a dependency of smtprs

        new = self.maildir_new()
        files = sorted(new.iterdir())[:sample] if new is not None and new.is_dir() else []
        if not files:
            return {"dkim_checked": 0}
        _, selector, value = self.dkim_key(algorithm)
        name = f"{selector}._domainkey.{SENDER_DOMAIN}.".encode()

        def dnsfunc(q: bytes, timeout: float = 5) -> bytes | None:
            return value.encode() if q == name else None

        signed = verified = 0
        for f in files:
            data = f.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            signed += b"\r\nDKIM-Signature: " in b"\r\n" + data.split(b"\r\n\r\n", 1)[0]
            try:
                verified += bool(dkim.verify(data, dnsfunc=dnsfunc))
            except Exception:  # dkimpy raises on some bad input: counted as not verified
                pass
        return {
            "dkim_checked": len(files),
            "dkim_signed_share": signed / len(files),
            "dkim_verified_share": verified / len(files),
        }

    def figures(self) -> dict[str, Any]:
        """How many spool records each fdatasync covered (group commit), from
        `smtprs status`; in the DKIM modes, what ``dkim_check`` found."""
        more = self.dkim_check(DKIM_MODES[self.mode]) if self.mode in DKIM_MODES else {}
        return {**self._commits(), **more}

    def _commits(self) -> dict[str, Any]:
        out = run_text(
            [*self.settings.smtprs_cmd, "status", "--config", str(self.dir / "smtprs.toml")], smtprs_env(self.settings)
        )
        m = re.search(r"spool commits:\s+(\d+) for (\d+) records", out)
        if not m or not int(m.group(1)):
            return {}
        return {
            "spool_commits": int(m.group(1)),
            "spool_records": int(m.group(2)),
            "records_per_fdatasync": int(m.group(2)) / int(m.group(1)),
        }

    def cleanup(self) -> None:
        pass


class HelperServer(Server):
    """A script of benches/load/ on a free port; its Maildir (when it keeps mail) is DIR/mail/box."""

    script = ""

    def maildir_new(self) -> Path | None:
        return None if self.mode in ("sink", "relay") else self.dir / "mail" / "box" / "new"

    def args(self, mode: str) -> list[str]:
        raise NotImplementedError

    def start(self, mode: str) -> None:
        self.mode = mode
        self.dir = self._fresh_dir(mode)
        self.port = free_port()
        cmd = [sys.executable, str(HELPERS / self.script), "--port", str(self.port), *self.args(mode)]
        self._spawn(cmd, self.dir / f"{self.name}.log")


class Aiosmtpd(HelperServer):
    name = "aiosmtpd"
    script = "aiosmtpd_server.py"

    def version(self) -> str:
        return run_text([sys.executable, "-c", "import aiosmtpd; print(aiosmtpd.__version__)"])

    def problem(self) -> str | None:
        return None if self.version() else "aiosmtpd is not importable (pip install aiosmtpd)"

    def args(self, mode: str) -> list[str]:
        if mode == "sink":
            return ["--mode", "sink"]
        if mode == "relay":
            return ["--mode", "forward", "--spool", str(self.dir / "spool"), "--next-hop", f"127.0.0.1:{self.next_hop}"]
        return ["--mode", "durable", "--maildir", str(self.dir / "mail" / "box")]


class Floor(HelperServer):
    """benches/load/trio_floor.py: the least a Trio-orchestrated server costs (not an MTA)."""

    name = "floor"
    script = "trio_floor.py"
    modes = ("sink", "durable", "e2e")  # not relay: it has no SMTP client
    extra: tuple[str, ...] = ()

    def args(self, mode: str) -> list[str]:
        # as many processes as smtprs has workers: a floor on one core would bound nothing
        processes = str(self.settings.server_processes)
        return [
            "--dir",
            str(self.dir),
            "--mode",
            "sink" if mode == "sink" else "durable",
            "--processes",
            processes,
            *self.extra,
        ]


class FloorAccept(Floor):
    """The floor in durable mode delivering nothing: a bound for acceptance alone
    (every other server delivers while it accepts)."""

    name = "floor-accept"
    extra = ("--no-delivery",)

    def maildir_new(self) -> Path | None:
        return None

    def problem(self) -> str | None:
        return (
            None
            if set(self.settings.modes) == {"durable"}
            else "floor-accept runs in durable mode only (--modes durable)"
        )


class Postfix(Server):
    """A private Postfix instance in a temporary config_directory, or smtp-sink (sink mode).

    One config_directory for the whole benchmark; each run gets a fresh queue
    directory (a copy, with ownership, of a template that ``postfix check``
    made once) and a fresh Maildir tree, so no run starts by deleting the
    previous run's files."""

    name = "postfix"
    modes = (*BASE_MODES, *MILTER_MODES)

    def __init__(self, root: Path, settings: Settings) -> None:
        super().__init__(root, settings)
        self.base = root / "postfix"
        self.instance_port = 0
        self.master_pid = 0
        self.made = False

    def version(self) -> str:
        return run_text([POSTCONF, "-d", "-h", "mail_version"])

    def problem(self) -> str | None:
        for tool in (POSTFIX, SMTP_SINK):
            if not os.access(tool, os.X_OK):
                return f"{tool} is missing (apt-get install postfix)"
        if os.geteuid() != 0:
            return "a private Postfix instance needs root (postfix start)"
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            return "no postfix user"
        return None

    def roots(self) -> list[int]:
        if self.mode == "sink":
            return super().roots()
        return [self.master_pid] if self.master_pid else []

    def maildir_new(self) -> Path | None:
        return None if self.mode in ("sink", "relay") else self.dir / "mail" / "box" / "new"

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    def main_cf(self, run_dir: Path, mode: str = "") -> dict[str, str]:
        pw = pwd.getpwnam("postfix")
        cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(run_dir / "queue"),
            "data_directory": str(self.base / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix-bench.test",
            "mydomain": "postfix-bench.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_banner": "$myhostname ESMTP",
            # delivery: any user of the bench domain into one Maildir (trailing / = Maildir)
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_base": str(run_dir / "mail"),
            "virtual_mailbox_maps": "static:box/",
            "virtual_uid_maps": f"static:{pw.pw_uid}",
            "virtual_gid_maps": f"static:{pw.pw_gid}",
            "virtual_minimum_uid": "1",
            "local_recipient_maps": "",
            # its own log file through postlogd, not syslog
            "maillog_file": str(run_dir / "maillog"),
            "maillog_file_prefixes": str(self.root),
            "biff": "no",
        }
        if mode == "relay":
            # relay: nothing is local; all mail to the bench's smtp-sink, Postfix's smtp client
            # with its defaults (connection cache on demand, 20 connections per destination)
            cf["virtual_mailbox_domains"] = ""
            cf["relayhost"] = f"[127.0.0.1]:{self.next_hop}"
        if mode in MILTER_MODES:
            cf["smtpd_milters"] = f"inet:127.0.0.1:{self.milter_port}"
            cf["milter_default_action"] = "tempfail"
            cf["milter_protocol"] = "6"
        return cf

    MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{port} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def _configure(self, run_dir: Path, mode: str = "") -> None:
        cf = self.main_cf(run_dir, mode)
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in cf.items()))

    def _make(self) -> None:
        """The instance: main.cf and master.cf (the services of Debian's
        master.cf that a mail server needs, chroot off, smtpd on a loopback
        port), and a template queue directory made by ``postfix check``."""
        pw = pwd.getpwnam("postfix")
        for d in ("etc", "data", "template/queue"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        os.chown(self.base / "data", pw.pw_uid, pw.pw_gid)
        self.instance_port = free_port()
        (self.etc / "master.cf").write_text(self.MASTER_CF.format(port=f"127.0.0.1:{self.instance_port}"))
        self._configure(self.base / "template")
        r = subprocess.run([POSTFIX, "-c", str(self.etc), "check"], capture_output=True, text=True)
        if r.returncode != 0 or not (self.base / "template" / "queue" / "incoming").is_dir():
            raise RuntimeError(f"postfix check failed: {r.stdout}{r.stderr}")
        self.made = True

    def start(self, mode: str) -> None:
        self.mode = mode
        self.dir = self._fresh_dir(mode)
        if mode == "sink":
            self.port = free_port()
            cmd = [SMTP_SINK]
            if os.geteuid() == 0:
                cmd += ["-u", "postfix"]
            cmd += [f"127.0.0.1:{self.port}", "1024"]
            self._spawn(cmd, self.dir / "smtp-sink.log")
            return
        if not self.made:
            self._make()
        pw = pwd.getpwnam("postfix")
        subprocess.run(["cp", "-a", str(self.base / "template" / "queue"), str(self.dir / "queue")], check=True)
        (self.dir / "mail").mkdir()
        os.chown(self.dir / "mail", pw.pw_uid, pw.pw_gid)
        self._configure(self.dir, mode)
        self.port = self.instance_port
        r = subprocess.run([POSTFIX, "-c", str(self.etc), "start"], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stdout}{r.stderr}\n{tail(self.dir / 'maillog')}")
        STARTED.append(self)
        try:
            self.master_pid = int((self.dir / "queue" / "pid" / "master.pid").read_text().split()[0])
            wait_smtp(self.port, 30, lambda: pid_alive(self.master_pid))
        except (OSError, ValueError, RuntimeError) as e:
            self.stop()
            raise RuntimeError(f"postfix did not start: {e}\n{tail(self.dir / 'maillog')}") from None

    def stop(self) -> None:
        if self.mode == "sink" or not self.master_pid:
            super().stop()
            return
        if self in STARTED:
            STARTED.remove(self)
        tree = descendants([self.master_pid], scan_proc())
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True)
        if not wait_gone(tree, 15):
            subprocess.run([POSTFIX, "-c", str(self.etc), "abort"], capture_output=True)
            if not wait_gone(tree, 5):
                kill_pids(tree)
        self.master_pid = 0

    def figures(self) -> dict[str, Any]:
        """Relay mode: the instance's `postconf -n` as it ran (results.json's meta holds the template's, with no relayhost)."""
        if self.mode != "relay":
            return {}
        return {"postconf_n": run_text([POSTCONF, "-c", str(self.etc), "-n"])}

    def postconf_n(self) -> str:
        if not self.made:
            self._make()
        return run_text([POSTCONF, "-c", str(self.etc), "-n"])


SERVER_CLASSES: dict[str, type[Server]] = {
    "smtprs": Smtprs,
    "postfix": Postfix,
    "aiosmtpd": Aiosmtpd,
    "floor": Floor,
    "floor-accept": FloorAccept,
}


class NextHop:
    """Relay mode's next hop: Postfix's C ``smtp-sink`` on its own free loopback
    port, started by the bench for every relay run (whichever server is under
    test), with ``-c``: it prints running counters (``sess=N quit=N mesg=N``,
    ``mesg`` counting every message's final ``.``) that are read here with
    timestamps, as smtp-source's.  It keeps nothing, so counting costs no disk."""

    MESG = re.compile(rb"sess=(\d+).*?mesg=(\d+)")

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.count = 0
        self.sessions = 0
        self.t_count = time.monotonic()
        cmd = [SMTP_SINK, "-c"]
        if os.geteuid() == 0:
            cmd += ["-u", "postfix"]
        cmd += [f"127.0.0.1:{self.port}", "1024"]
        self.err = open(log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.err, start_new_session=True
        )
        STARTED.append(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            wait_smtp(self.port, 30, lambda: self.proc.poll() is None)
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"the next hop (smtp-sink) did not start: {e}") from None
        self.base = self.count  # wait_smtp's own probe session sends no message, but be exact
        self.base_sessions = self.sessions  # and it is one session

    def _read(self) -> None:
        assert self.proc.stdout is not None
        follow_counter(self.proc.stdout.fileno(), self._counted)

    def _counted(self, lines: bytes) -> None:
        found = self.MESG.findall(lines)
        if found:
            self.sessions, self.count = int(found[-1][0]), int(found[-1][1])
            self.t_count = time.monotonic()

    def received(self) -> int:
        return self.count - self.base

    def connections(self) -> int:
        """SMTP sessions the server under test opened to the next hop (connection reuse: fewer than messages)."""
        return self.sessions - self.base_sessions

    def stop(self) -> None:
        stop_started(self, self.proc)
        self._reader.join(5)
        self.err.close()
