"""A session's byte stream to its client: reads under a deadline, writes, the TLS handshake.

``Channel`` owns the Trio stream (a plain socket, or the SSLStream that
replaces it after a handshake) and nothing of SMTP: the session gives it the
bytes of its replies and asks for the client's next bytes with a deadline.

Two things make it more than ``send_all`` and ``receive_some``, both for the
cost per command on the hot path.  On a plain TCP socket it reads and writes
the non-blocking socket directly when that can succeed at once (see
``send`` and ``receive``).  And every wait for the client's bytes runs in
one cancel scope kept for the whole session (``wait_scope``), whose deadline
is set for the wait and taken off after it; the session enters the scope
once, around its command loop, and when the scope is cancelled (a deadline
passed, or the shutdown woke an idle session) the loop ends and the session
answers why.
"""

from __future__ import annotations

import math
import os
import ssl

import trio

from .. import maillog
from .tls import describe as describe_tls


class Channel:
    """The client's connection, for one session."""

    def __init__(self, stream: trio.abc.Stream, session_id: str, peer: str, send_timeout: float) -> None:
        self.stream = stream
        self.id = session_id  # for the log lines of the handshake
        self.peer = peer
        self.send_timeout = send_timeout
        self.wait_scope = trio.CancelScope()
        self.waiting = False  # a wait for the client's bytes is under way (in wait_scope)
        self._quick_reads = 0  # reads in a row that found data without waiting (see receive)
        self._answered = False  # the last send was a reply: the client's next bytes are a round trip away

    async def send(self, data: bytes) -> None:
        """Write ``data`` (a nonempty batch of replies) within send_timeout."""
        self._answered = True
        if type(self.stream) is trio.SocketStream:
            # Fast path: a reply nearly always fits in the socket's send
            # buffer, so write it straight away (the socket is non-blocking)
            # and skip send_all's cancel scope, context managers and
            # scheduler round trip.  The loop still checkpoints at every read.
            try:
                sent = os.write(self.stream.socket.fileno(), data)
            except BlockingIOError:
                sent = 0
            except OSError as e:  # EPIPE, ECONNRESET: the peer is gone
                raise trio.BrokenResourceError(str(e)) from e
            if sent == len(data):
                return
            data = data[sent:]
        with trio.fail_after(self.send_timeout):
            await self.stream.send_all(data)

    async def receive(self, deadline: float) -> bytes:
        """The client's next bytes (b"" at EOF).  When ``deadline`` passes first
        (or the shutdown cancels the wait) ``wait_scope`` is cancelled, which
        ends the session's command loop.

        On a plain TCP socket, bytes already waiting are read at once, without
        a trip through the scheduler (message content streaming in).  Not
        right after a reply: the client's answer to it is a round trip away,
        and the read would nearly always fail (EAGAIN), a wasted system call
        and exception.  After 16 such reads in a row the session waits for
        readiness anyway, which lets other tasks run, so a client that never
        pauses cannot starve them.

        The wait's deadline is set on the one scope the session keeps for its
        waits, and taken off again as soon as the wait is over, before any
        other checkpoint, so it can fire only in a wait: a cancel scope
        entered and left per wait cost more than the rest of the wait.
        """
        stream = self.stream
        plain = type(stream) is trio.SocketStream
        answered, self._answered = self._answered, False
        if plain and not answered and self._quick_reads < 16 and trio.current_time() < deadline:
            try:
                data = os.read(stream.socket.fileno(), 65536)  # type: ignore[attr-defined]
            except BlockingIOError:
                pass
            except OSError as e:
                raise trio.BrokenResourceError(str(e)) from e
            else:
                self._quick_reads += 1
                return data
        self._quick_reads = 0
        scope = self.wait_scope
        scope.deadline = deadline
        self.waiting = True
        try:
            if plain:
                sock = stream.socket  # type: ignore[attr-defined]
                while True:
                    await trio.lowlevel.wait_readable(sock)
                    try:
                        return os.read(sock.fileno(), 65536)
                    except BlockingIOError:  # woken without bytes after all: wait again
                        continue
                    except OSError as e:
                        raise trio.BrokenResourceError(str(e)) from e
            got = await stream.receive_some(65536)
            return got if isinstance(got, bytes) else bytes(got)  # TLS streams hand out bytearrays
        finally:
            self.waiting = False
            scope.deadline = math.inf

    async def start_tls(self, context: ssl.SSLContext, timeout: float) -> str | None:
        """Handshake as the server on the current stream: the TLS description
        ("TLSv1.3 with cipher ..."), or None (logged) if it fails."""
        stream = trio.SSLStream(self.stream, context, server_side=True)
        try:
            with trio.fail_after(timeout):
                await stream.do_handshake()
        except trio.TooSlowError:
            maillog.tls_failed(self.id, self.peer, "timeout")
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            maillog.tls_failed(self.id, self.peer, str(e.__cause__ or e) or type(e).__name__)
            return None
        self.stream = stream
        description = describe_tls(stream)
        maillog.tls_established(self.id, self.peer, description)
        return description
