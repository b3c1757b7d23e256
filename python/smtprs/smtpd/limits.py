"""Connection limits per client address: concurrent sessions and connection rate.

Owns, per client address (an IPv6 /64 counts as one address, as for the AUTH
failure delays), the number of sessions open and the times of its latest
connection attempts.  Reads nothing itself: the limits
(``smtpd.max_connections_per_client``, ``max_connection_rate``,
``connection_rate_window``) are passed to each ``admit`` call, so a reloaded
configuration applies to the next connection.  Time is passed in too
(``trio.current_time()`` from the session), so unit tests run in virtual time.

Memory is bounded whatever clients do: at most ``max_rate + 1`` times are kept
per address, and at most ``max_clients`` addresses are remembered for the
rate (those that connected least recently are forgotten first).  Open-session
counts exist only while sessions do.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from .. import reply as R
from .auth import FailureDelays


def client_key(ip: str) -> str:
    """The address limits are counted by: the IP, or its /64 for IPv6."""
    return FailureDelays.key(ip)


class ClientLimits:
    def __init__(self, max_clients: int = 10_000) -> None:
        self.max_clients = max_clients
        self._open: dict[str, int] = {}
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def admit(self, ip: str, now: float, *, per_client: int, rate: int, window: float) -> R.Reply | None:
        """Count a connection attempt from ``ip``; None admits it (call ``release``
        when its session ends), else the 421 reply refusing it."""
        key = client_key(ip)
        if rate > 0:
            times = self._attempts.pop(key, None)
            if times is None or times.maxlen != rate + 1:
                times = deque(times or (), maxlen=rate + 1)
            times.append(now)
            self._attempts[key] = times  # most recent last
            while len(self._attempts) > self.max_clients:
                self._attempts.popitem(last=False)
            if len(times) > rate and now - times[0] < window:
                return R.CONNECTION_RATE_EXCEEDED
        if self._open.get(key, 0) >= per_client:
            return R.TOO_MANY_FROM_CLIENT
        self._open[key] = self._open.get(key, 0) + 1
        return None

    def release(self, ip: str) -> None:
        key = client_key(ip)
        n = self._open.get(key, 0) - 1
        if n > 0:
            self._open[key] = n
        else:
            self._open.pop(key, None)

    def open_sessions(self, ip: str) -> int:
        return self._open.get(client_key(ip), 0)

    @property
    def remembered(self) -> int:
        """Addresses whose recent attempts are remembered (for tests: it stays bounded)."""
        return len(self._attempts)
