"""The POP3 server (RFC 1939, with CAPA and response codes from RFC 2449,
STLS from RFC 2595 and SASL AUTH from RFC 5034): users fetch their Maildir.

One ``Pop3Session`` per connection on a ``pop3`` listener (STLS offered when
a TLS context is configured) or a ``pop3s`` listener (TLS from the first
octet, RFC 8314).  States, as RFC 1939 names them:

- AUTHORIZATION: CAPA, STLS, USER/PASS, AUTH PLAIN, QUIT.  Credentials are
  checked by the ``Verifier`` (the users file, shared with SMTP AUTH); they
  are refused on a connection without TLS unless plaintext is allowed.  A
  failed login waits (``Delays``) before its -ERR.  Success locks the user's
  maildrop (``maildrop.py``) and takes its snapshot; a maildrop in use gets
  ``-ERR [IN-USE]``.
- TRANSACTION: STAT, LIST, RETR, TOP, UIDL, DELE, RSET, NOOP, CAPA, QUIT.
  DELE only marks; nothing is removed yet.
- UPDATE (QUIT from TRANSACTION): the marked messages are removed, then the
  lock is released.  A connection that ends any other way (timeout, reset)
  removes nothing.

Messages go out with CRLF line ends and dot-stuffed by the core's
``DotStuffer``, streamed from the file.  Resource policy: every read waits at
most ``pop3.timeout`` (RFC 1939's autologout timer, at least 10 minutes by
default), every write ``smtpd.send_timeout``; a command line longer than
``MAX_LINE`` is refused and skipped; nothing is held in memory per message.
Passwords are never logged.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from .. import _core, maillog
from .maildrop import CHUNK, Maildrop, MaildropLocked, Message

MAX_LINE = 1024  # RFC 2449 says 255 for commands; AUTH responses can be longer


class Verifier(Protocol):
    """Checks a user name and password (the users file): "ok", "unavailable"
    (the users file cannot be read), anything else is a failure."""

    async def verify(self, username: str, password: str) -> str: ...


class Delays(Protocol):
    """How long to wait before answering a failed login from an address."""

    def record(self, ip: str, now: float) -> float: ...


@dataclass
class Pop3Context:
    """What every POP3 session shares."""

    hostname: str
    verifier: Verifier
    maildir_of: Callable[[str], Path]  # login name -> the user's Maildir (ValueError: none)
    tls: ssl.SSLContext | None = None
    allow_plaintext: bool = False  # USER/PASS and AUTH without TLS
    delays: Delays | None = None
    timeout: float = 600.0
    send_timeout: float = 300.0
    handshake_timeout: float = 30.0


class _Close(Exception):
    pass


_ids = itertools.count(1)


class Pop3Session:
    def __init__(
        self, ctx: Pop3Context, stream: trio.abc.Stream, peer_ip: str, peer_port: int, *, implicit_tls: bool = False
    ) -> None:
        self.ctx = ctx
        self.stream: trio.abc.Stream = stream
        self.peer_ip = peer_ip
        self.peer = f"[{peer_ip}]:{peer_port}"
        self.id = f"P{next(_ids):06d}"
        self.implicit_tls = implicit_tls
        self.secure = False
        self.buf = b""
        self.out = bytearray()
        self.user: str | None = None  # USER given, PASS pending
        self.login: str | None = None  # authenticated
        self.drop: Maildrop | None = None
        self.commands = 0

    # -- I/O ------------------------------------------------------------------------------
    def ok(self, text: str = "") -> None:
        self.out += b"+OK" + (b" " + text.encode() if text else b"") + b"\r\n"

    def err(self, text: str, code: str = "") -> None:
        self.out += b"-ERR " + (f"[{code}] " if code else "").encode() + text.encode() + b"\r\n"

    async def flush(self) -> None:
        if self.out:
            data, self.out = bytes(self.out), bytearray()
            await self._send(data)

    async def _send(self, data: bytes) -> None:
        with trio.fail_after(self.ctx.send_timeout):
            await self.stream.send_all(data)

    async def _line(self) -> bytes | None:
        """The next command line without its line end; None at EOF.  Lines over MAX_LINE are refused."""
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line, self.buf = self.buf[:nl], self.buf[nl + 1 :]
                if len(line) + 1 > MAX_LINE:
                    self.err("Line too long")
                    continue
                return line.rstrip(b"\r")
            if len(self.buf) > MAX_LINE:
                self.buf = b""
                self.err("Line too long")
                await self._skip_to_line_end()
                continue
            await self.flush()  # replies to pipelined commands go out once the input is used up
            with trio.fail_after(self.ctx.timeout):
                data = await self.stream.receive_some(65536)
            if not data:
                return None
            self.buf += bytes(data)

    async def _skip_to_line_end(self) -> None:
        while True:
            await self.flush()
            with trio.fail_after(self.ctx.timeout):
                data = await self.stream.receive_some(65536)
            if not data:
                raise _Close
            nl = data.find(b"\n")
            if nl >= 0:
                self.buf = bytes(data[nl + 1 :])
                return

    async def _start_tls(self) -> None:
        assert self.ctx.tls is not None
        ssl_stream = trio.SSLStream(self.stream, self.ctx.tls, server_side=True, https_compatible=False)
        with trio.fail_after(self.ctx.handshake_timeout):
            await ssl_stream.do_handshake()
        self.stream = ssl_stream
        self.secure = True

    # -- the session ---------------------------------------------------------------------
    async def run(self) -> None:
        """Serve until QUIT, EOF or timeout; never raises for what the peer does."""
        maillog.connect(self.id, self.peer)
        try:
            if self.implicit_tls:
                await self._start_tls()
            self.ok(f"{self.ctx.hostname} POP3 smtprs ready")
            while True:
                line = await self._line()
                if line is None:
                    break
                self.commands += 1
                await self._command(line)
        except _Close:
            pass
        except trio.TooSlowError:
            try:
                self.err("Autologout: idle for too long")
                await self.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            pass
        finally:
            try:
                await self.flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
                pass
            if self.drop is not None:
                self.drop.close()  # no UPDATE: nothing is deleted
            maillog.pop3_disconnect(self.id, self.peer, self.login or "", self.commands)

    async def _command(self, raw: bytes) -> None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.err("Invalid UTF-8 in the command")
            return
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        table = _TRANSACTION if self.login is not None else _AUTHORIZATION
        handler = table.get(verb)
        if handler is None:
            known = verb in _TRANSACTION or verb in _AUTHORIZATION
            self.err("Not allowed in this state" if known else "Unknown command")
            return
        await handler(self, arg)

    # -- AUTHORIZATION --------------------------------------------------------------------
    def _capabilities(self) -> list[str]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.login is None:
            if self.secure or self.ctx.allow_plaintext:
                caps += ["USER", "SASL PLAIN"]
            if self.ctx.tls is not None and not self.secure:
                caps.append("STLS")
        caps.append("IMPLEMENTATION smtprs")
        return caps

    async def _capa(self, arg: str) -> None:
        self.ok("Capability list follows")
        for cap in self._capabilities():
            self.out += cap.encode() + b"\r\n"
        self.out += b".\r\n"

    async def _stls(self, arg: str) -> None:
        if self.ctx.tls is None:
            self.err("TLS is not available")
            return
        if self.secure:
            self.err("Already using TLS")
            return
        self.ok("Begin TLS negotiation")
        await self.flush()
        self.buf = b""  # anything sent before the handshake is not trusted (RFC 2595 4)
        self.user = None
        await self._start_tls()

    def _plaintext_refused(self) -> bool:
        if self.secure or self.ctx.allow_plaintext:
            return False
        self.err("Authentication is only offered over TLS: use STLS first", "AUTH")
        return True

    async def _user(self, arg: str) -> None:
        if self._plaintext_refused():
            return
        if not arg or " " in arg.strip():
            self.err("USER needs one name")
            return
        self.user = arg.strip()
        self.ok("Send PASS")

    async def _pass(self, arg: str) -> None:
        if self.user is None:
            self.err("USER first")
            return
        user, self.user = self.user, None
        await self._login(user, arg)

    async def _auth(self, arg: str) -> None:
        if self._plaintext_refused():
            return
        mech, _, initial = arg.strip().partition(" ")
        if mech.upper() != "PLAIN":
            self.err("Only AUTH PLAIN is supported")
            return
        if not initial:
            self.out += b"+ \r\n"
            line = await self._line()
            if line is None:
                raise _Close
            initial = line.decode("utf-8", "replace").strip()
            if initial == "*":
                self.err("AUTH cancelled")
                return
        try:
            text = "" if initial == "=" else base64.b64decode(initial, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            self.err("Invalid base64 in the AUTH response")
            return
        parts = text.split("\0")
        if len(parts) != 3 or not parts[1]:
            self.err("Invalid PLAIN response: [authzid] NUL authcid NUL password")
            return
        authzid, user, password = parts
        if authzid and authzid.lower() != user.lower():
            self.err("Authorization as another user is not allowed", "AUTH")
            return
        await self._login(user, password)

    async def _login(self, user: str, password: str) -> None:
        verdict = await self.ctx.verifier.verify(user, password)
        if verdict == "unavailable":
            maillog.pop3_login(self.id, self.peer, user, "unavailable")
            self.err("Authentication is unavailable, try again later", "SYS/TEMP")
            return
        if verdict != "ok":
            # a name that is not a user is often a password typed in the wrong field: not logged
            maillog.pop3_login(self.id, self.peer, user if verdict != "unknown" else "(unknown)", "failed")
            if self.ctx.delays is not None:
                await trio.sleep(self.ctx.delays.record(self.peer_ip, trio.current_time()))
            self.err("Authentication failed", "AUTH")
            return
        try:
            drop = Maildrop(self.ctx.maildir_of(user))
        except ValueError:
            maillog.pop3_login(self.id, self.peer, user, "no local mailbox for this login")
            self.err("No mailbox for this login", "SYS/PERM")
            return
        try:
            await trio.to_thread.run_sync(drop.open)
        except MaildropLocked:
            maillog.pop3_login(self.id, self.peer, user, "maildrop in use")
            self.err("Maildrop already in use by another session", "IN-USE")
            return
        except OSError as e:
            maillog.pop3_login(self.id, self.peer, user, f"cannot open maildrop: {e}")
            self.err("Cannot open the maildrop", "SYS/TEMP")
            return
        self.login, self.drop = user, drop
        maillog.pop3_login(self.id, self.peer, user, f"ok, {len(drop.messages)} messages")
        count, size = self._totals()
        self.ok(f"Logged in, {count} messages ({size} octets)")

    async def _quit(self, arg: str) -> None:
        if self.drop is not None:  # TRANSACTION -> UPDATE
            drop = self.drop
            removed, problems = await trio.to_thread.run_sync(drop.expunge)
            drop.close()
            self.drop = None
            maillog.pop3_update(self.id, self.login or "", removed, problems)
            if problems:
                self.err("Some deleted messages were not removed", "SYS/TEMP")
            else:
                self.ok(f"Bye ({removed} messages deleted)")
        else:
            self.ok("Bye")
        raise _Close

    # -- TRANSACTION ----------------------------------------------------------------------
    def _live(self) -> list[tuple[int, Message]]:
        assert self.drop is not None
        return [(i, m) for i, m in enumerate(self.drop.messages, 1) if not m.deleted]

    def _totals(self) -> tuple[int, int]:
        live = self._live()
        return len(live), sum(m.size for _, m in live)

    def _message(self, arg: str) -> Message | None:
        assert self.drop is not None
        word = arg.split(" ", 1)[0]
        if not word.isdigit():
            self.err("A message number is needed")
            return None
        n = int(word)
        if not 1 <= n <= len(self.drop.messages):
            self.err(f"No message {n}")
            return None
        msg = self.drop.messages[n - 1]
        if msg.deleted:
            self.err(f"Message {n} is deleted")
            return None
        return msg

    async def _stat(self, arg: str) -> None:
        count, size = self._totals()
        self.ok(f"{count} {size}")

    async def _list(self, arg: str) -> None:
        await self._listing(arg, lambda m: str(m.size))

    async def _uidl(self, arg: str) -> None:
        await self._listing(arg, lambda m: m.uidl)

    async def _listing(self, arg: str, field: Callable[[Message], str]) -> None:
        if arg.strip():
            msg = self._message(arg.strip())
            if msg is not None:
                assert self.drop is not None
                self.ok(f"{self.drop.messages.index(msg) + 1} {field(msg)}")
            return
        count, size = self._totals()
        self.ok(f"{count} messages ({size} octets)")
        for i, m in self._live():
            self.out += f"{i} {field(m)}\r\n".encode()
        self.out += b".\r\n"

    async def _retr(self, arg: str) -> None:
        msg = self._message(arg)
        if msg is not None:
            await self._send_message(msg, None)

    async def _top(self, arg: str) -> None:
        parts = arg.split()
        if len(parts) != 2 or not parts[1].isdigit():
            self.err("TOP needs a message number and a number of lines")
            return
        msg = self._message(parts[0])
        if msg is not None:
            await self._send_message(msg, int(parts[1]))

    async def _send_message(self, msg: Message, body_lines: int | None) -> None:
        assert self.drop is not None
        path = await trio.to_thread.run_sync(self.drop.path_of, msg)
        try:
            if path is None:
                raise FileNotFoundError
            f = await trio.open_file(path, "rb")
        except OSError:
            self.err("The message was removed by another client", "SYS/TEMP")
            return
        async with f:
            self.ok(f"{msg.size} octets")
            await self.flush()
            stuffer = _core.DotStuffer()
            if body_lines is None:
                while chunk := await f.read(CHUNK):
                    await self._send(stuffer.feed(chunk))
            else:
                await self._send_top(f, stuffer, body_lines)
            await self._send(stuffer.finish())

    async def _send_top(self, f: Any, stuffer: _core.DotStuffer, body_lines: int) -> None:
        """The header block, the blank line after it, and ``body_lines`` lines of the body."""
        in_header = True
        left = body_lines
        carry = b""
        while True:
            chunk = await f.read(CHUNK)
            if not chunk:
                if carry:
                    await self._send(stuffer.feed(carry))
                return
            data = carry + chunk
            pos = end = 0
            done = False
            while (nl := data.find(b"\n", pos)) >= 0:
                line, pos = data[pos:nl], nl + 1
                if in_header:
                    in_header = line not in (b"", b"\r")
                elif left > 0:
                    left -= 1
                else:
                    done = True
                    break
                end = pos
                if not in_header and left == 0:
                    done = True
                    break
            await self._send(stuffer.feed(data[:end]))
            if done:
                return
            carry = data[end:]

    async def _dele(self, arg: str) -> None:
        msg = self._message(arg)
        if msg is not None:
            msg.deleted = True
            self.ok("Marked for deletion")

    async def _rset(self, arg: str) -> None:
        assert self.drop is not None
        for m in self.drop.messages:
            m.deleted = False
        count, size = self._totals()
        self.ok(f"{count} messages ({size} octets)")

    async def _noop(self, arg: str) -> None:
        self.ok()


_AUTHORIZATION = {
    "CAPA": Pop3Session._capa,
    "STLS": Pop3Session._stls,
    "USER": Pop3Session._user,
    "PASS": Pop3Session._pass,
    "AUTH": Pop3Session._auth,
    "QUIT": Pop3Session._quit,
}

_TRANSACTION = {
    "CAPA": Pop3Session._capa,
    "STAT": Pop3Session._stat,
    "LIST": Pop3Session._list,
    "RETR": Pop3Session._retr,
    "TOP": Pop3Session._top,
    "UIDL": Pop3Session._uidl,
    "DELE": Pop3Session._dele,
    "RSET": Pop3Session._rset,
    "NOOP": Pop3Session._noop,
    "QUIT": Pop3Session._quit,
}
