"""The client side of one SMTP or LMTP connection, shared by both agents.

Owns what deliver/smtp.py and deliver/lmtp.py do alike over a Trio stream:
replies read with the Rust ``ReplyParser`` (lines up to the core's 4,096
octets, at most 64 KiB per read), commands sent, content sent dot-stuffed by
the core's ``DotStuffer`` in 256 KiB chunks, QUIT and closing.  Every send
and every reply is bounded by the timeout its caller passes.  Anything that
makes the connection unusable (closed, broken, timed out, garbage) is raised
as ``Lost``, whose text says what happened; the agents put it into their
outcomes, so each agent keeps its own wording (class attributes below).

What differs stays with the agent: LHLO and one reply per recipient after
DATA in lmtp.py; EHLO/HELO, STARTTLS, AUTH, pipelining and connection reuse
in smtp.py.  Reads the content it is given; writes nothing but the network.
"""

from __future__ import annotations

import trio

from .. import _core
from ..content import RangeReader
from ..errors import ParseError

CHUNK = 256 * 1024  # content read and sent per step
RECEIVE = 65536  # octets asked of the stream per read


class Lost(Exception):
    """The connection cannot be used any more (closed, timed out, garbage)."""


class ClientConnection:
    """Commands out, replies in, over one stream."""

    # the texts of ``Lost``, formatted with ``e`` (the exception) and ``timeout``
    SEND_BROKEN = "connection broken: {e}"
    CLOSED = "connection closed by the server"
    NO_REPLY = "timeout waiting for a reply"
    READ_BROKEN = "connection broken: {e}"

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = _core.ReplyParser()

    def replace_stream(self, stream: trio.abc.Stream) -> None:
        """Go on over ``stream`` (TLS over the old one); nothing read before counts."""
        self.stream = stream
        self.parser = _core.ReplyParser()

    async def send(self, data: bytes, timeout: float) -> None:
        try:
            with trio.fail_after(timeout):
                await self.stream.send_all(data)
        except trio.TooSlowError:
            raise Lost("timeout while sending") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise Lost(self.SEND_BROKEN.format(e=e, timeout=timeout)) from None

    async def read(self, timeout: float) -> _core.Reply:
        try:
            with trio.fail_after(timeout):
                while (reply := self.parser.next_reply()) is None:
                    data = await self.stream.receive_some(RECEIVE)
                    if not data:
                        raise Lost(self.CLOSED)
                    self.parser.receive_data(bytes(data))
        except trio.TooSlowError:
            raise Lost(self.NO_REPLY.format(timeout=timeout)) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            raise Lost(self.READ_BROKEN.format(e=e, timeout=timeout)) from None
        except ParseError as e:
            raise Lost(f"malformed reply: {e}") from None
        return reply

    async def command(self, line: str, timeout: float) -> _core.Reply:
        """Send one command line (UTF-8, CRLF added) and read its reply."""
        await self.send(line.encode("utf-8") + b"\r\n", timeout)
        return await self.read(timeout)

    async def send_content(self, src: RangeReader, timeout: float) -> None:
        """The message after a 354: dot-stuffed, CRLF line ends, the final ``.``;
        ``timeout`` bounds each chunk.  The caller opens and closes ``src``."""
        stuffer = _core.DotStuffer()
        while chunk := await trio.to_thread.run_sync(src.read, CHUNK):
            await self.send(stuffer.feed(chunk), timeout)
        await self.send(stuffer.finish(), timeout)

    async def quit(self, timeout: float) -> None:
        """QUIT and its reply, each within ``timeout``; a lost connection is no matter now."""
        try:
            await self.command("QUIT", timeout)
        except Lost:
            pass

    async def abort(self) -> None:
        """Close the stream at once, without a word to the peer."""
        await trio.aclose_forcefully(self.stream)
