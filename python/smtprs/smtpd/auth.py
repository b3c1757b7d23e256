"""SMTP AUTH: the AUTH dialog, SASL PLAIN and LOGIN, the users file, password
hashes, failure delays.

Owns the users file (``smtpd.auth.users_file``): one ``name:hash`` line per
user, where the hash is ``$scrypt$ln=14,r=8,p=1$SALT$HASH`` (hashlib.scrypt,
salt and parameters stored with it, base64 without padding).  It never holds a
password: ``smtprs passwd`` writes it (atomically, mode 0640) through
``read_users`` / ``write_users``, and the server re-reads it when it changes.

The SASL mechanisms are sans-I/O: the session feeds them the initial response
and the client's continuation lines and gets back a challenge to send, the
credentials, or a reply refusing malformed input.  ``Authenticator.verify``
checks credentials in a worker thread (scrypt is deliberately slow; a
CapacityLimiter keeps it from taking every core), with a comparison in
constant time and the same work for unknown users as for known ones.
``FailureDelays`` says how long to wait before a 535 reply: a delay per client
address that doubles with each failure, bounded, and forgotten after a while.

``Dialog`` is the AUTH command's exchange for one session (RFC 4954): it
answers AUTH, sends the mechanism's challenges and feeds it the client's
continuation lines (read by the core's line mode), has the credentials
checked (by the library's ``on_auth`` hook first when one is loaded: True
accepts, False refuses, None falls back to the users file; a hook that
raises is answered 451 4.3.0), and answers a failure only after its delay.  It is the one part
here that logs (through maillog: the mechanism and the user name, never a
password); no password is ever put in a log line, a reply or an exception
message.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import ipaddress
import os
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import trio

from .. import _core, maillog
from .. import reply as R
from ..hooks import HOOK_FAILED, HookFailed, Hooks, overrides

# --------------------------------------------------------------------------
# Password hashes

SCRYPT_LN = 14  # N = 2**14, r = 8: 16 MiB and some 70 ms per check (scrypt's "interactive login" figure)
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_HASH_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: bytes, salt: bytes, ln: int, r: int, p: int, dklen: int) -> bytes:
    n = 1 << ln
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=2 * 128 * n * r * p + (1 << 20))


def hash_password(password: str, *, ln: int = SCRYPT_LN, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``$scrypt$ln=14,r=8,p=1$SALT$HASH`` for ``password`` (UTF-8), with a fresh random salt."""
    salt = secrets.token_bytes(_SALT_BYTES)
    digest = _scrypt(password.encode("utf-8"), salt, ln, r, p, _HASH_BYTES)
    return f"$scrypt$ln={ln},r={r},p={p}${_b64(salt)}${_b64(digest)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "scrypt":
        raise ValueError("not an scrypt hash ($scrypt$ln=..,r=..,p=..$salt$hash)")
    try:
        params = dict(kv.split("=", 1) for kv in parts[2].split(","))
        ln, r, p = int(params["ln"]), int(params["r"]), int(params["p"])
        salt, digest = _unb64(parts[3]), _unb64(parts[4])
    except (KeyError, ValueError, binascii.Error):
        raise ValueError("malformed scrypt hash") from None
    if not (1 <= ln <= 24 and 1 <= r <= 64 and 1 <= p <= 16 and salt and len(digest) >= 16):
        raise ValueError("scrypt parameters out of range")
    return ln, r, p, salt, digest


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches ``encoded`` (compared in constant time)."""
    try:
        ln, r, p, salt, digest = _parse_hash(encoded)
    except ValueError:
        return False
    derived = _scrypt(password.encode("utf-8"), salt, ln, r, p, len(digest))
    return hmac.compare_digest(derived, digest)


# --------------------------------------------------------------------------
# The users file


class UsersFileError(Exception):
    """The users file cannot be read or holds a bad line (the message says where)."""


def valid_username(name: str) -> bool:
    """Printable, no spaces, no colon (the file's separator), at most 255 characters."""
    return 0 < len(name) <= 255 and ":" not in name and all(c.isprintable() and not c.isspace() for c in name)


def normalize_username(name: str) -> str:
    """User names are compared without regard to case."""
    return name.lower()


def parse_users(text: str, source: str = "users file") -> dict[str, str]:
    users: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        if not sep or not valid_username(name):
            raise UsersFileError(f"{source}:{n}: expected name:$scrypt$..., got a line without a valid name")
        try:
            _parse_hash(encoded)
        except ValueError as e:
            raise UsersFileError(f"{source}:{n}: user {name}: {e}") from None
        users[normalize_username(name)] = encoded
    return users


def read_users(path: Path) -> dict[str, str]:
    """The users file as {name: hash}; a missing file is an empty one."""
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise UsersFileError(f"{path}: cannot read: {e}") from None
    return parse_users(text, str(path))


def write_users(path: Path, users: dict[str, str]) -> None:
    """Replace the users file atomically (temporary file, fsync, rename, directory fsync)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# smtprs users: name:scrypt hash (managed by `smtprs passwd`)"]
    lines += [f"{name}:{encoded}" for name, encoded in sorted(users.items())]
    data = ("\n".join(lines) + "\n").encode("utf-8")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class UsersFile:
    """The users file as the server sees it: read again whenever it changed on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: dict[str, str] = {}

    def load(self) -> dict[str, str]:
        """The current users (raises UsersFileError; a missing file is no users)."""
        with self._lock:
            try:
                st = self.path.stat()
                stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
            except FileNotFoundError:
                stamp = None
            except OSError as e:
                raise UsersFileError(f"{self.path}: {e.strerror or e}") from None
            if stamp != self._stamp or stamp is None:
                self._users = read_users(self.path) if stamp is not None else {}
                self._stamp = stamp
            return self._users


# --------------------------------------------------------------------------
# Checking credentials


# "unknown": no such user (a failure like "bad", but the name is not worth logging)
Verdict = Literal["ok", "bad", "unknown", "unavailable"]


class Authenticator:
    """Checks a user name and password against the users file, in a worker thread."""

    def __init__(self, users: UsersFile, *, max_threads: int | None = None) -> None:
        self.users = users
        self.limiter = trio.CapacityLimiter(max_threads or max(1, os.cpu_count() or 1))
        self._dummy: str | None = None
        self.last_error: str = ""

    async def verify(self, username: str, password: str) -> Verdict:
        return await trio.to_thread.run_sync(self._verify, username, password, limiter=self.limiter)

    def _verify(self, username: str, password: str) -> Verdict:
        try:
            users = self.users.load()
        except UsersFileError as e:
            self.last_error = str(e)
            return "unavailable"
        encoded = users.get(normalize_username(username))
        if encoded is None:
            # the same work as for a real user, so timing does not tell which names exist
            if self._dummy is None:
                self._dummy = hash_password(secrets.token_urlsafe(16))
            verify_password(password, self._dummy)
            return "unknown"
        return "ok" if verify_password(password, encoded) else "bad"


class FailureDelays:
    """How long to wait before answering a failed AUTH, per client address.

    The n-th failure from an address (an IPv6 /64 counts as one address)
    within ``window`` seconds of the previous one waits ``base * 2**(n-1)``
    seconds, at most ``maximum``.  At most ``max_entries`` addresses are
    remembered (the least recently failing are forgotten first), so memory is
    bounded whatever an attacker does.
    """

    def __init__(self, base: float, maximum: float, window: float, max_entries: int = 10_000) -> None:
        self.base = base
        self.maximum = maximum
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()

    @staticmethod
    @functools.lru_cache(maxsize=4096)  # asked at every connect and disconnect
    def key(ip: str) -> str:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return ip
        if isinstance(addr, ipaddress.IPv6Address):
            if addr.ipv4_mapped is not None:
                return str(addr.ipv4_mapped)
            return str(ipaddress.ip_network(f"{addr}/64", strict=False))
        return str(addr)

    def failures(self, ip: str, now: float) -> int:
        count, last = self._seen.get(self.key(ip), (0, 0.0))
        return count if now - last < self.window else 0

    def record(self, ip: str, now: float) -> float:
        """Count a failure from ``ip`` at ``now``; return the delay before its 535."""
        key = self.key(ip)
        count = self.failures(ip, now) + 1
        self._seen.pop(key, None)
        self._seen[key] = (count, now)
        while len(self._seen) > self.max_entries:
            self._seen.popitem(last=False)
        return float(min(self.maximum, self.base * 2 ** min(count - 1, 62)))


# --------------------------------------------------------------------------
# SASL mechanisms (sans-I/O)


@dataclass(frozen=True)
class Challenge:
    """Send ``334 base64(text)`` and read the client's next line."""

    text: str

    def encode(self) -> bytes:
        # RFC 4954 4: "334" SP [base64] CRLF -- the space stays even when the challenge is empty
        return b"334 " + base64.b64encode(self.text.encode()) + b"\r\n"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True)
class Malformed:
    reply: R.Reply


Step = Challenge | Credentials | Malformed


def _decode(text: str, *, initial: bool) -> str | None:
    """Base64 -> UTF-8 text; ``=`` is an empty initial response (RFC 4954 4)."""
    if initial and text == "=":
        return ""
    try:
        return base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None


class Mechanism:
    name = ""

    def start(self, initial: str | None) -> Step:
        raise NotImplementedError

    def respond(self, line: str) -> Step:
        raise NotImplementedError


class Plain(Mechanism):
    """RFC 4616: one message, ``[authzid] NUL authcid NUL passwd``."""

    name = "PLAIN"

    def start(self, initial: str | None) -> Step:
        if initial is None:
            return Challenge("")
        return self._message(_decode(initial, initial=True))

    def respond(self, line: str) -> Step:
        return self._message(_decode(line, initial=False))

    @staticmethod
    def _message(text: str | None) -> Step:
        if text is None:
            return Malformed(R.AUTH_BAD_BASE64)
        parts = text.split("\0")
        if len(parts) != 3 or not parts[1]:
            return Malformed(R.AUTH_BAD_PLAIN)
        authzid, username, password = parts
        return Credentials(username, password, authzid)


class Login(Mechanism):
    """The LOGIN mechanism (draft-murchison-sasl-login): user name, then password."""

    name = "LOGIN"

    def __init__(self) -> None:
        self.username: str | None = None

    def start(self, initial: str | None) -> Step:
        if initial is None:
            return Challenge("Username:")
        return self.respond(initial)

    def respond(self, line: str) -> Step:
        text = _decode(line, initial=self.username is None)
        if text is None:
            return Malformed(R.AUTH_BAD_BASE64)
        if self.username is None:
            self.username = text
            return Challenge("Password:")
        return Credentials(self.username, text)


MECHANISMS: dict[str, type[Mechanism]] = {"PLAIN": Plain, "LOGIN": Login}


def mechanism(name: str) -> Mechanism | None:
    cls = MECHANISMS.get(name.upper())
    return cls() if cls is not None else None


# --------------------------------------------------------------------------
# The AUTH command (RFC 4954)


class _Services(Protocol):
    """What the dialog uses of the session's context (smtpd/context.py)."""

    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def auth_delays(self) -> FailureDelays: ...


class AuthSession(Protocol):
    """What the dialog uses of its session (smtpd/session.py)."""

    auth_user: str | None  # set here once the client has authenticated

    @property
    def ctx(self) -> _Services: ...
    @property
    def conn(self) -> _core.ServerConnection: ...  # a challenge is not a reply: it is queued there directly
    @property
    def id(self) -> str: ...
    @property
    def peer(self) -> str: ...
    @property
    def peer_ip(self) -> str: ...
    @property
    def submission(self) -> bool: ...
    @property
    def auth_offered(self) -> bool: ...

    @property
    def hooks(self) -> Hooks | None: ...

    def reply(self, r: R.Reply) -> None: ...

    async def flush(self) -> None: ...

    async def call_hook(self, name: str, *args: object, refused: R.Reply | None = None) -> object: ...


class Dialog:
    """One session's AUTH exchanges: the command, the continuation lines, the verdict."""

    def __init__(self, session: AuthSession) -> None:
        self.session = session
        self.waiting: Mechanism | None = None  # an AUTH exchange waiting for the client's line

    async def command(self, cmd: _core.Command) -> None:
        """AUTH mechanism [initial-response]."""
        s = self.session
        if not s.submission:
            s.reply(R.AUTH_NOT_ENABLED)
            return
        if s.auth_user is not None:
            s.reply(R.AUTH_ALREADY)
            return
        if not s.auth_offered:
            s.reply(R.AUTH_NEEDS_TLS)
            return
        name, _, initial = cmd.arg.strip().partition(" ")
        mech = mechanism(name)
        if mech is None:
            s.reply(R.AUTH_UNKNOWN_MECHANISM)
            return
        await self._step(mech, mech.start(initial.strip() or None))

    async def line(self, line: bytes) -> None:
        """The client's answer to our last challenge (a RawLine event)."""
        s = self.session
        mech, self.waiting = self.waiting, None
        if mech is None:  # nothing asked for a line; cannot happen, but never execute it
            s.reply(R.Reply(500, "5.5.2", "Error: unexpected line"))
            return
        text = line.decode("ascii", "replace").strip()
        if text == "*":
            maillog.reject(s.id, s.peer, "AUTH", R.AUTH_CANCELLED)
            s.reply(R.AUTH_CANCELLED)
            return
        await self._step(mech, mech.respond(text))

    async def _ask_hook(self, mechanism: str, creds: Credentials) -> Verdict | None:
        """The on_auth hook's verdict: True "ok", False "bad", None (ask the users
        file).  Raises HookFailed (logged) when it raises or answers anything else."""
        s = self.session
        answer = await s.call_hook("on_auth", mechanism, creds.username, creds.password)
        if answer is None:
            return None
        if answer is True:
            return "ok"
        if answer is False:
            return "bad"
        maillog.error(f"{s.id}: hook on_auth answered a {type(answer).__name__}, not True, False or None")
        raise HookFailed("on_auth")

    async def _step(self, mech: Mechanism, step: Step) -> None:
        s = self.session
        if isinstance(step, Challenge):
            s.conn.write(step.encode())
            self.waiting = mech
            s.conn.read_line()
            return
        if isinstance(step, Malformed):
            maillog.reject(s.id, s.peer, "AUTH", step.reply)
            s.reply(step.reply)
            return
        authenticator = s.ctx.authenticator
        verdict: Verdict | None = "unknown"  # another authorization identity: refused unchecked
        if not step.authzid or normalize_username(step.authzid) == normalize_username(step.username):
            verdict = None
            if overrides(s.hooks, "on_auth"):  # an external back end first; None: the users file
                try:
                    verdict = await self._ask_hook(mech.name, step)
                except HookFailed:
                    s.reply(HOOK_FAILED)
                    return
            if verdict is None:
                verdict = await authenticator.verify(step.username, step.password)
        if verdict == "ok":
            s.auth_user = normalize_username(step.username)
            maillog.auth_ok(s.id, s.peer, mech.name, s.auth_user)
            s.reply(R.AUTH_OK)
            return
        if verdict == "unavailable":
            maillog.warning(f"{s.id}: AUTH {mech.name}: users file unavailable: {authenticator.last_error}")
            s.reply(R.AUTH_UNAVAILABLE)
            return
        delays = s.ctx.auth_delays
        delay = delays.record(s.peer_ip, trio.current_time())
        known = normalize_username(step.username) if verdict == "bad" else None
        maillog.auth_failed(s.id, s.peer, mech.name, known, delays.failures(s.peer_ip, trio.current_time()), delay)
        await s.flush()  # what was answered before goes out now, not after the delay
        await trio.sleep(delay)
        s.reply(R.AUTH_FAILED)
