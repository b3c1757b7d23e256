"""The control socket: how ``smtprs queue ...`` talks to the running server.

A Unix stream socket in the data directory (``queue.control_socket``, mode
0600, so only the server's own user can use it).  The protocol is one command
line in, one reply line out, then the server closes::

    FLUSH            ->  OK 3 messages scheduled now
    FLUSH ID         ->  OK ID scheduled now
    HOLD ID          ->  OK ID held           (not delivered until released)
    RELEASE ID       ->  OK ID released
    DELETE ID        ->  OK ID deleted        (no bounce, as postsuper -d)
    DELETE-DEFERRED  ->  OK 2 messages deleted
    REQUEUE ID       ->  OK ID requeued       (open recipients routed again, due now)
    SHOW ID          ->  OK {"queue_id": ..., "recipients": [...], "headers": ...}
    STATS            ->  OK {"counters": [...], ...}   (metrics.py snapshot)
    PING             ->  OK smtprs
    other            ->  ERR unknown command

Replies start with ``OK`` or ``ERR``; a command about a message this
process does not own answers ``ERR notqueued ID`` (with several workers the
client asks every worker, and the owner acts), one about a message being
delivered waits for the attempt to end, or answers ``ERR busy ...``.  The
commands are carried out by the scheduler that owns the message
(queue/scheduler.py): nothing here touches the spool.

At start-up a socket that still answers means another server uses this data
directory: serving is refused rather than sharing a spool.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import trio

from .. import maillog
from ..errors import SmtprsError
from .scheduler import Busy, NotQueued, Scheduler

MAX_LINE = 1024
TIMEOUT = 5.0
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, minus the NUL


class ControlError(SmtprsError):
    """The control socket cannot be served or reached."""


async def serve(
    path: Path,
    schedulers: Sequence[Scheduler],
    *,
    stats: Callable[[], dict[str, Any]] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the control socket at ``path`` for this process's schedulers (one
    per spool shard it delivers from) until cancelled; removes it on exit.
    ``stats`` gives the metrics snapshot that STATS returns."""
    sock = await _bind(path)
    listener = trio.SocketListener(sock)
    task_status.started()

    async def handle(stream: trio.SocketStream) -> None:
        await _handle(stream, schedulers, stats)

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


async def _handle(
    stream: trio.abc.Stream, schedulers: Sequence[Scheduler], stats: Callable[[], dict[str, Any]] | None = None
) -> None:
    try:
        data = b""
        with trio.move_on_after(TIMEOUT):
            while b"\n" not in data and len(data) < MAX_LINE:
                chunk = await stream.receive_some(MAX_LINE)
                if not chunk:
                    break
                data += chunk
        line = data.split(b"\n", 1)[0].strip().decode("ascii", "replace")
        verb, _, arg = line.partition(" ")
        verb, arg = verb.upper(), arg.strip()
        answer = await _execute(verb, arg, schedulers, stats)
        if verb not in ("SHOW", "STATS", "PING"):  # the ones that change nothing are not logged
            maillog.control(line or "(empty)", answer)
        with trio.move_on_after(TIMEOUT):
            await stream.send_all(answer.encode() + b"\n")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


COMMANDS = "FLUSH [ID], HOLD ID, RELEASE ID, DELETE ID, DELETE-DEFERRED, REQUEUE ID, SHOW ID, STATS, PING"


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


async def _execute(
    verb: str, arg: str, schedulers: Sequence[Scheduler], stats: Callable[[], dict[str, Any]] | None
) -> str:
    if verb == "PING":
        return "OK smtprs"
    if verb == "FLUSH" and not arg:
        return f"OK {_plural(sum(s.flush() for s in schedulers), 'message')} scheduled now"
    if verb == "DELETE-DEFERRED":
        n = 0
        for s in schedulers:
            n += await s.delete_deferred()
        return f"OK {_plural(n, 'message')} deleted"
    if verb == "STATS":
        if stats is None:
            return "ERR no statistics here"
        return "OK " + json.dumps(stats(), separators=(",", ":"))
    actions = {
        "FLUSH": "scheduled now",
        "HOLD": "held",
        "RELEASE": "released",
        "DELETE": "deleted",
        "REQUEUE": "requeued",
        "SHOW": "",
    }
    if verb not in actions:
        return f"ERR unknown command ({COMMANDS})"
    if not arg or " " in arg or len(arg) > 64:
        return f"ERR usage: {verb} ID"
    owner = next((s for s in schedulers if arg in s.spool), None)
    if owner is None:
        return f"ERR notqueued {arg}"
    try:
        if verb == "SHOW":
            return "OK " + json.dumps(owner.show(arg), separators=(",", ":"), ensure_ascii=False)
        if verb == "FLUSH":
            if not owner.flush_one(arg):
                return f"ERR {arg} is on hold (release it first)"
        else:
            await getattr(owner, verb.lower())(arg)
    except NotQueued:
        return f"ERR notqueued {arg}"
    except Busy as e:
        return f"ERR busy: {e}"
    return f"OK {arg} {actions[verb]}"


async def request(path: Path, command: str, timeout: float = TIMEOUT) -> str:
    """Send one command to the server at ``path``; return its reply line."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.fail_after(timeout), _address(path) as address:
            await sock.connect(address)
            await sock.send(command.encode() + b"\n")
            data = b""
            while b"\n" not in data:
                chunk = await sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except trio.TooSlowError:
        raise ControlError(f"{path}: no answer from the server") from None
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise ControlError(
                f"{path}: no server is running (is `smtprs serve` started with this configuration?)"
            ) from None
        raise ControlError(f"{path}: {e.strerror or e}") from None
    finally:
        sock.close()
    return data.decode("utf-8", "replace").strip()
