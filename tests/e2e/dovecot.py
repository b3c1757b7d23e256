"""A private Dovecot for the end-to-end tests: LMTP, IMAP and POP3 on loopback.

``Dovecot`` writes a configuration of its own (base_dir, state and log in a
temporary directory, listeners on free loopback ports, a passwd-file userdb
and passdb with plain passwords, ``mail_location = maildir:...``) and runs
``dovecot -F -c CONFIG`` in the foreground as a child of the test, stopped
with SIGTERM (SIGKILL after a bound).  It never touches the system's Dovecot
configuration, sockets or services.

Dovecot never accesses mail as root.  When the tests run as root, mail is
accessed as ``nobody`` (and the mail directory is handed to it); otherwise
everything runs as the current user (Dovecot's "rootless" mode).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .harness import free_port

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def need_dovecot(*protocols: str) -> None:
    if not os.path.exists(DOVECOT):
        pytest.skip("dovecot is not installed (scripts/install-deps.sh installs it)")
    for proto in protocols:
        binary = Path("/usr/lib/dovecot") / proto
        if not binary.exists():
            pytest.skip(f"dovecot's {proto} is not installed (scripts/install-deps.sh installs it)")


class Dovecot:
    def __init__(
        self,
        users: dict[str, str],
        *,
        mail_root: Path | None = None,
        protocols: tuple[str, ...] = ("imap", "lmtp"),
        extra: str = "",
    ) -> None:
        need_dovecot(*protocols)
        # a short directory: unix socket paths are limited to 107 octets
        self.base = Path(tempfile.mkdtemp(prefix="dv", dir="/tmp"))
        # under base by default: every directory above it must be searchable by the mail user
        self.mail_root = mail_root or self.base / "mail"
        self.protocols = protocols
        self.ports = {p: free_port() for p in protocols}
        self.lmtp_socket = self.base / "run" / "lmtp-test"
        self.log_path = self.base / "dovecot.log"
        self.proc: subprocess.Popen[bytes] | None = None
        if os.getuid() == 0:
            mail_user = pwd.getpwnam("nobody")
            internal, login = "dovecot", "dovenull"
        else:
            mail_user = pwd.getpwuid(os.getuid())
            internal = login = mail_user.pw_name
        self.uid, self.gid = mail_user.pw_uid, mail_user.pw_gid
        for d in ("run", "state", "home"):
            (self.base / d).mkdir()
        passwd = "".join(
            f"{u}:{{PLAIN}}{pw}:{self.uid}:{self.gid}::{self.base}/home/{u}::\n" for u, pw in users.items()
        )
        (self.base / "users").write_text(passwd)
        for u in users:
            (self.base / "home" / u).mkdir()
            if os.getuid() == 0:
                os.chown(self.base / "home" / u, self.uid, self.gid)
        self.base.chmod(0o755)  # Dovecot's auth and mail processes (other users when root) reach into it
        self.mail_root.mkdir(parents=True, exist_ok=True)
        self.give_mail()
        listeners = []
        if "imap" in protocols:
            listeners.append(
                f"service imap-login {{\n  chroot =\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {self.ports['imap']}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n"
            )
        if "pop3" in protocols:
            listeners.append(
                f"service pop3-login {{\n  chroot =\n  inet_listener pop3 {{\n    address = 127.0.0.1\n    port = {self.ports['pop3']}\n  }}\n  inet_listener pop3s {{\n    port = 0\n  }}\n}}\n"
            )
        if "lmtp" in protocols:
            listeners.append(
                f"service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {self.ports['lmtp']}\n  }}\n"
                f"  unix_listener lmtp-test {{\n    mode = 0666\n  }}\n}}\n"
            )
        self.config_path = self.base / "dovecot.conf"
        self.config_path.write_text(
            f"""# written by the smtprs end-to-end tests
base_dir = {self.base}/run
state_dir = {self.base}/state
log_path = {self.log_path}
info_log_path = {self.log_path}
protocols = {" ".join(protocols)}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {internal}
default_login_user = {login}
mail_location = maildir:{self.mail_root}/%n
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
pop3_uidl_format = %f
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
{"".join(listeners)}
passdb {{
  driver = passwd-file
  args = username_format=%n {self.base}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {self.base}/users
}}
{extra}
"""
        )

    def give_mail(self) -> None:
        """Hand the mail directory to the mail user (only when running as root)."""
        if os.getuid() != 0:
            return
        for dirpath, _dirs, files in os.walk(self.mail_root):
            os.chown(dirpath, self.uid, self.gid)
            for name in files:
                os.chown(os.path.join(dirpath, name), self.uid, self.gid)

    def start(self, timeout: float = 20.0) -> Dovecot:
        self.proc = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=open(self.base / "stdout.log", "ab"),  # noqa: SIM115 (the child holds it for its life)
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"dovecot exited with {self.proc.returncode}:\n{self.log()}")
            if all(_accepts(port) for port in self.ports.values()):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"dovecot not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def log(self) -> str:
        out = ""
        for name in ("dovecot.log", "stdout.log"):
            try:
                out += (self.base / name).read_text(errors="replace")
            except FileNotFoundError:
                pass
        return out


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def make_dovecot():  # type: ignore[no-untyped-def]
    started: list[Dovecot] = []

    def factory(users: dict[str, str], **kw) -> Dovecot:  # type: ignore[no-untyped-def]
        dv = Dovecot(users, **kw)
        started.append(dv)
        return dv

    yield factory
    for dv in started:
        # captured: pytest shows it only when the test failed
        print(f"----- dovecot log ({dv.base}) -----\n{dv.log()[-6000:]}")
        dv.cleanup()
