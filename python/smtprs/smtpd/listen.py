"""Listening: binding the configured addresses and taking connections.

``bind`` opens the sockets of one listener address (one per address of the
host; IPv6 ones IPv6-only; SO_REUSEPORT when workers share the port);
``accept_loop`` takes every waiting connection at each wake-up and starts the
handler the composition root gave it (daemon.py: an SMTP, LMTP or POP3
session) in the sessions' nursery.  What to run on a connection, and when a
listener is opened or closed, is the daemon's; this module only listens.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .. import maillog
from ..config import parse_host_port
from ..errors import ListenError

# accept() errors that mean "out of a resource": wait and try again
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
# accept() errors about one connection that went away or was refused by a
# firewall rule before we took it: skip it, take the next.  The same list as
# trio's SocketListener (Linux's accept(2) passes on a pending connection's
# network error, ECONNRESET and ETIMEDOUT among them); by name, since not every
# platform defines every one.
_ACCEPT_SKIP_ERRNOS = {
    getattr(errno, name)
    for name in (
        "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
        "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT", "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET",
    )
    if hasattr(errno, name)
}  # fmt: skip
# connections taken per wake-up of an accept loop before it lets other tasks run
ACCEPT_BATCH = 64

# what runs on one accepted connection: (stream, listener, peer address)
Handler = Callable[[trio.SocketStream, "Bound", tuple[Any, ...]], Awaitable[None]]


@dataclass
class Bound:
    """One configured listener: its address, current mode, sockets and accept tasks' scope."""

    address: str
    mode: str
    sockets: list[trio.SocketListener]
    raw: list[socket.socket]  # the same sockets as the standard library's objects (see accept_loop)
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


async def bind(address: str, reuseport: bool = False) -> tuple[list[trio.SocketListener], list[socket.socket]]:
    host, port = parse_host_port(address, "smtpd.listeners")
    bind_host = None if host in ("*", "") else host
    try:
        return await tcp_listeners(bind_host, port, reuseport)
    except OSError as e:
        raise ListenError(f"cannot listen on {address}: {e.strerror or e}") from e


async def tcp_listeners(
    host: str | None, port: int, reuseport: bool
) -> tuple[list[trio.SocketListener], list[socket.socket]]:
    """As trio.open_tcp_listeners (one socket per address of ``host``; IPv6
    sockets IPv6-only), with SO_REUSEPORT when the workers share the port.
    Also returns the standard library's socket object of each: the very same
    socket (trio wraps it, no duplicate descriptor), which the accept loop
    calls directly."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    listeners: list[trio.SocketListener] = []
    raw: list[socket.socket] = []
    try:
        for family, type_, proto, _, sockaddr in infos:
            sock = socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuseport:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(sockaddr)
                sock.listen(4096)
            except OSError:
                sock.close()
                raise
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            raw.append(sock)
    except OSError:
        for tl in listeners:
            await tl.aclose()
        raise
    return listeners, raw


def describe(tl: trio.SocketListener) -> tuple[str, int, str]:
    sockname = tl.socket.getsockname()
    text = f"[{sockname[0]}]:{sockname[1]}" if tl.socket.family == socket.AF_INET6 else f"{sockname[0]}:{sockname[1]}"
    return sockname[0], sockname[1], text


async def accept_loop(
    b: Bound, tl: trio.SocketListener, raw: socket.socket, sessions: trio.Nursery, handle: Handler
) -> None:
    """Take every connection waiting (up to ACCEPT_BATCH) at each wake-up.

    trio's SocketListener.accept goes through the scheduler for every
    connection and hands out no peer address (a getpeername each); this
    calls accept() on the listening socket itself (non-blocking: trio
    set it so) until nothing is left, then waits for readiness.  The
    errors are trio's: a connection gone before it was taken is skipped,
    running out of descriptors or memory is logged and waited out."""
    with b.scope:
        async with tl:  # closes the socket (raw is the same one) when the loop ends
            while True:
                await trio.lowlevel.wait_readable(raw)
                for _ in range(ACCEPT_BATCH):
                    try:
                        conn, addr = raw.accept()
                    except BlockingIOError:
                        break
                    except OSError as e:
                        if e.errno in _ACCEPT_SKIP_ERRNOS:
                            continue
                        if e.errno in _ACCEPT_CAPACITY_ERRNOS:
                            maillog.accept_capacity(b.address, e.strerror or str(e))
                            await trio.sleep(0.1)
                            break
                        raise
                    try:
                        stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
                    except OSError:  # (setting the socket non-blocking failed: it is gone already)
                        conn.close()
                        continue
                    sessions.start_soon(handle, stream, b, addr)
