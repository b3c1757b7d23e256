"""The control socket: how ``smtprs queue ...`` talks to the running server.

A Unix stream socket in the data directory (``queue.control_socket``, mode
0600, so only the server's own user can use it).  The protocol is one command
line in, one reply line out, then the server closes::

    FLUSH   ->  OK 3 messages scheduled now
    PING    ->  OK smtprs
    other   ->  ERR unknown command

Replies start with ``OK`` or ``ERR``.  Later queue tools add commands here.
At start-up a socket that still answers means another server uses this data
directory: serving is refused rather than sharing a spool.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import trio

from .. import maillog
from ..errors import SmtprsError
from .scheduler import Scheduler

MAX_LINE = 1024
TIMEOUT = 5.0
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, minus the NUL


class ControlError(SmtprsError):
    """The control socket cannot be served or reached."""


async def serve(path: Path, schedulers: Sequence[Scheduler], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control socket at ``path`` for this process's schedulers (one
    per spool shard it delivers from) until cancelled; removes it on exit."""
    sock = await _bind(path)
    listener = trio.SocketListener(sock)
    task_status.started()

    async def handle(stream: trio.SocketStream) -> None:
        await _handle(stream, schedulers)

    try:
        await trio.serve_listeners(handle, [listener])
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


async def _bind(path: Path) -> trio.socket.SocketType:
    try:
        return await _bind_socket(path)
    except OSError as e:
        raise ControlError(f"cannot open the control socket {path}: {e.strerror or e}") from e


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """The address to bind or connect: the path itself, or, when it is longer
    than a Unix socket address may be, the same file reached through
    /proc/self/fd/N of its directory (Linux)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        short = f"/proc/self/fd/{fd}/{path.name}"
        if len(os.fsencode(short)) > _SUN_PATH_MAX:
            raise ControlError(f"queue.control_socket: name too long for a Unix socket: {path.name}")
        yield short
    finally:
        os.close(fd)


async def _bind_socket(path: Path) -> trio.socket.SocketType:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        try:
            reply = await request(path, "PING")
        except ControlError:
            reply = ""
        if reply.startswith("OK"):
            raise ControlError(f"another smtprs serve is using {path.parent} (its control socket {path} answers)")
        path.unlink()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # the socket is born 0600: no window in which others could connect
    try:
        with _address(path) as address:
            await sock.bind(address)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


async def _handle(stream: trio.abc.Stream, schedulers: Sequence[Scheduler]) -> None:
    try:
        with trio.move_on_after(TIMEOUT):
            data = b""
            while b"\n" not in data and len(data) < MAX_LINE:
                chunk = await stream.receive_some(MAX_LINE)
                if not chunk:
                    break
                data += chunk
            command = data.split(b"\n", 1)[0].strip().decode("ascii", "replace").upper()
            if command == "FLUSH":
                n = sum(s.flush() for s in schedulers)
                answer = f"OK {n} message{'' if n == 1 else 's'} scheduled now"
            elif command == "PING":
                answer = "OK smtprs"
            else:
                answer = "ERR unknown command (FLUSH, PING)"
            maillog.control(command or "(empty)", answer)
            await stream.send_all(answer.encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def request(path: Path, command: str) -> str:
    """Send one command to the server at ``path``; return its reply line."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.fail_after(TIMEOUT), _address(path) as address:
            await sock.connect(address)
            await sock.send(command.encode() + b"\n")
            data = b""
            while b"\n" not in data:
                chunk = await sock.recv(MAX_LINE)
                if not chunk:
                    break
                data += chunk
    except trio.TooSlowError:
        raise ControlError(f"{path}: no answer from the server") from None
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise ControlError(f"{path}: no server is running (is `smtprs serve` started with this configuration?)") from None
        raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        sock.close()
    return data.decode("utf-8", "replace").strip()
