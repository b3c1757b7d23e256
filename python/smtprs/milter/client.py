"""One connection to one milter, on Trio: connect (``inet:host:port``,
``unix:/path``), option negotiation, and packets out and in, each bounded in
time.

Every failure -- refused or timed-out connect, a timeout waiting for a reply,
the milter closing, a malformed or oversized packet, a reply that does not fit
the step -- is raised as ``MilterError`` and leaves the connection closed; the
driver (driver.py) then applies the configured default action.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from ..config.values import parse_host_port
from ..errors import ConfigError
from . import protocol as P


class MilterError(Exception):
    """The milter is unusable for this message (down, slow, or speaking nonsense)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a milter listens: ``inet:host:port`` (or ``inet:port@host``,
    ``inet6:...``) or ``unix:/path``."""

    spec: str
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, spec: str, key: str = "milter.milters") -> Endpoint:
        kind, sep, rest = spec.partition(":")
        if not sep or not rest:
            raise ConfigError(f"{key}: expected inet:host:port or unix:/path, got {spec!r}")
        if kind == "unix":
            return cls(spec, path=rest)
        if kind in ("inet", "inet6"):
            if "@" in rest:  # Sendmail's form: inet:port@host
                port, _, host = rest.partition("@")
                rest = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            host, port_n = parse_host_port(rest, key)
            if not 0 < port_n < 65536:
                raise ConfigError(f"{key}: port out of range in {spec!r}")
            return cls(spec, host=host, port=port_n)
        raise ConfigError(f"{key}: expected inet:host:port or unix:/path, got {spec!r}")


class Connection:
    """One milter session over a stream (one per mail transaction, see driver.py)."""

    def __init__(self, stream: trio.SocketStream, endpoint: Endpoint) -> None:
        self.stream = stream
        self.endpoint = endpoint
        self.decoder = P.Decoder()
        self.closed = False
        # negotiated: what the milter may do and which steps it wants
        self.version = P.VERSION
        self.actions = 0
        self.steps = 0
        self.symlists: dict[bytes, tuple[str, ...]] = {}  # the macros the milter asked for, per stage

    @classmethod
    async def open(cls, endpoint: Endpoint, connect_timeout: float, command_timeout: float) -> Connection:
        """Connect and negotiate (SMFIC_OPTNEG); MilterError if either fails."""
        try:
            with trio.fail_after(connect_timeout):
                if endpoint.path:
                    stream = await trio.open_unix_socket(endpoint.path)
                else:
                    stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        except (OSError, trio.TooSlowError) as e:
            raise MilterError(f"cannot connect: {_why(e)}") from None
        conn = cls(stream, endpoint)
        try:
            await conn.send(P.optneg(), command_timeout)
            r = await conn.read(command_timeout)
            if not isinstance(r, P.OptNeg):
                raise MilterError(f"option negotiation: unexpected reply {r!r}")
            if r.version < P.MIN_VERSION:
                raise MilterError(f"option negotiation: protocol version {r.version} is too old")
            # a step we did not offer (RCPT_REJ, HDR_LEADSPC, MDS_*) is dropped:
            # the milter gets what we offered, as from Postfix
            conn.version = min(r.version, P.VERSION)
            conn.actions = r.actions & P.ALL_ACTIONS
            conn.steps = r.steps & P.OUR_STEPS
            conn.symlists = dict(r.symlists)
        except BaseException:
            conn.close_now()
            raise
        return conn

    async def send(self, data: bytes, timeout: float) -> None:
        if self.closed:
            raise MilterError("connection already closed")
        try:
            with trio.fail_after(timeout):
                await self.stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as e:
            self.close_now()
            raise MilterError(f"write: {_why(e)}") from None

    async def read(self, timeout: float) -> P.Response:
        """The next reply; a timeout, EOF or bad packet is a MilterError (and closes)."""
        try:
            with trio.fail_after(timeout):
                while True:
                    pkt = self.decoder.next()
                    if pkt is not None:
                        return P.decode_response(*pkt)
                    data = await self.stream.receive_some(max(65536, min(self.decoder.wanted, P.MAX_PACKET)))
                    if not data:
                        raise MilterError("the milter closed the connection")
                    self.decoder.feed(data)
        except P.ProtocolError as e:
            self.close_now()
            raise MilterError(f"protocol error: {e}") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as e:
            self.close_now()
            raise MilterError(f"read: {_why(e)}") from None
        except MilterError:
            self.close_now()
            raise

    def close_now(self) -> None:
        """Close at once, without a QUIT (synchronous: usable from any clean-up)."""
        if not self.closed:
            self.closed = True
            self.stream.socket.close()

    async def quit(self) -> None:
        """SMFIC_QUIT, then close; never raises."""
        if self.closed:
            return
        try:
            with trio.move_on_after(1.0):
                await self.stream.send_all(P.packet(P.SMFIC_QUIT))
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        self.close_now()


def _why(e: BaseException) -> str:
    if isinstance(e, trio.TooSlowError):
        return "timed out"
    if isinstance(e, OSError):
        return e.strerror or str(e) or type(e).__name__
    return str(e) or type(e).__name__
