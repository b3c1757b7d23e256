"""Greylisting (``[screen.greylist]``, off by default), as postgrey does it.

A recipient is deferred (450 4.7.1) the first time a (client network, sender,
recipient) triplet is seen; the same triplet retried after ``delay`` seconds,
and within ``retry_window`` of the first attempt, passes, and then passes at
once for ``max_age`` days after its last use.  Real MTAs retry; most spam
engines do not.  The client network is the IPv4 /24 or IPv6 /64, so a sender
retrying from another address of its pool is still recognised.  A client that
has passed ``auto_allowlist`` triplets is allowlisted as a whole for
``max_age``: it is not delayed again.

The store is one SQLite database (``data_dir/greylist.sqlite``, WAL mode),
shared by every worker process, durable across restarts; entries older than
``max_age`` (and first attempts never retried within ``retry_window``) are
purged as new checks come.  Each check is one short transaction run in a
worker thread, so a session's Trio loop never waits on the file.

Only ``mx`` listeners are screened, never submission, LMTP or authenticated
sessions; ``exempt_networks`` (by default relay.trusted_networks) and
``exempt_domains`` (recipient domains) are never delayed.  The session asks
``check`` after the recipient is otherwise accepted.
"""

from __future__ import annotations

import ipaddress
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Protocol

import trio

from .. import reply as R
from ..config import Config
from ..config.values import address_in, client_address, networks

DB_FILE = "greylist.sqlite"  # relative to data_dir
PURGE_EVERY = 1000  # checks between two purges of expired entries

_SCHEMA = """
CREATE TABLE IF NOT EXISTS triplets (
    key TEXT PRIMARY KEY,  -- client network / sender / recipient
    first REAL NOT NULL,  -- first attempt (of the current try)
    last REAL NOT NULL,  -- last attempt or pass
    passes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS clients (
    client TEXT PRIMARY KEY,  -- client network
    passes INTEGER NOT NULL,
    last REAL NOT NULL
);
"""


def client_network(ip: str) -> str:
    """The network a client is greylisted by: IPv4 /24, IPv6 /64."""
    addr = client_address(ip)
    if addr is None:
        return ip
    prefix = 24 if isinstance(addr, ipaddress.IPv4Address) else 64
    return str(ipaddress.ip_network((addr, prefix), strict=False))


@dataclass(frozen=True)
class Verdict:
    """``passed``, or deferred for ``remaining`` more seconds; ``why`` for the log."""

    passed: bool
    why: str  # "new", "early", "retried", "known", "allowlisted"
    remaining: float = 0.0

    def reply(self, rcpt: str) -> R.Reply:
        wait = max(1, int(self.remaining + 0.999))
        return R.Reply(450, "4.7.1", f"<{rcpt}>: Recipient address rejected: Greylisted, try again in {wait} seconds")


@dataclass(frozen=True)
class Timing:
    """The times of one configuration, in seconds."""

    delay: float
    retry_window: float
    max_age: float
    auto_allowlist: int


class Store:
    """The triplets in the shared database: ``check_now`` is the whole decision,
    ``check`` runs it off the Trio thread.  One per process, kept across reloads
    (``Runtime.greylist``); the times come with each check, from the configuration."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last checks, never the file
        self._db.executescript(_SCHEMA)
        self._checks = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def check_now(self, client_ip: str, sender: str, rcpt: str, now: float, t: Timing) -> Verdict:
        net = client_network(client_ip)
        key = f"{net}/{sender.lower()}/{rcpt.lower()}"
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                verdict = _decide(db, net, key, now, t)
                self._checks += 1
                if self._checks % PURGE_EVERY == 1:
                    _purge(db, now, t)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return verdict

    def purge(self, now: float, t: Timing) -> None:
        with self._lock:
            _purge(self._db, now, t)

    def count(self) -> int:
        """Triplets stored (for tests: expiry keeps it bounded)."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM triplets").fetchone()[0])


def _decide(db: sqlite3.Connection, net: str, key: str, now: float, t: Timing) -> Verdict:
    if t.auto_allowlist > 0:
        row = db.execute("SELECT passes, last FROM clients WHERE client = ?", (net,)).fetchone()
        if row is not None and row[0] >= t.auto_allowlist and now - row[1] <= t.max_age:
            db.execute("UPDATE clients SET last = ? WHERE client = ?", (now, net))
            return Verdict(True, "allowlisted")
    row = db.execute("SELECT first, last, passes FROM triplets WHERE key = ?", (key,)).fetchone()
    if row is not None:
        first, last, passes = row
        if passes > 0 and now - last <= t.max_age:
            db.execute("UPDATE triplets SET last = ? WHERE key = ?", (now, key))
            return Verdict(True, "known")
        if passes == 0 and now - first < t.delay:
            db.execute("UPDATE triplets SET last = ? WHERE key = ?", (now, key))
            return Verdict(False, "early", t.delay - (now - first))
        if passes == 0 and now - first <= t.retry_window:
            db.execute("UPDATE triplets SET last = ?, passes = 1 WHERE key = ?", (now, key))
            if t.auto_allowlist > 0:
                db.execute(
                    "INSERT INTO clients (client, passes, last) VALUES (?, 1, ?) "
                    "ON CONFLICT(client) DO UPDATE SET passes = passes + 1, last = excluded.last",
                    (net, now),
                )
            return Verdict(True, "retried")
    # new, not retried within the window, or unused for max_age: start again
    db.execute("INSERT OR REPLACE INTO triplets (key, first, last, passes) VALUES (?, ?, ?, 0)", (key, now, now))
    return Verdict(False, "new", t.delay)


def _purge(db: sqlite3.Connection, now: float, t: Timing) -> None:
    db.execute(
        "DELETE FROM triplets WHERE (passes > 0 AND last < ?) OR (passes = 0 AND first < ?)",
        (now - t.max_age, now - max(t.retry_window, t.delay)),
    )
    db.execute("DELETE FROM clients WHERE last < ?", (now - t.max_age,))


def for_config(cfg: Config, runtime: HasGreylistStore) -> Greylist | None:
    """The greylist of ``cfg`` (None when off), over the process's store, opened on first use."""
    g = cfg.screen.greylist
    if not g.enabled:
        return None
    if runtime.greylist is None:
        runtime.greylist = Store(str(cfg.path(DB_FILE)))
    return Greylist(cfg, runtime.greylist)


class HasGreylistStore(Protocol):
    greylist: Store | None


class Greylist:
    """The settings of one configuration over the shared store: who is screened, and the check."""

    def __init__(self, cfg: Config, store: Store) -> None:
        g = cfg.screen.greylist
        self.store = store
        self._exempt = networks(g.exempt_networks, cfg.relay.trusted_networks)
        self._domains = {d.lower().rstrip(".") for d in g.exempt_domains}
        self.timing = Timing(g.delay, g.retry_window, g.max_age * 86400.0, g.auto_allowlist)

    async def check(self, client_ip: str, sender: str, rcpt: str) -> Verdict:
        return await trio.to_thread.run_sync(self.store.check_now, client_ip, sender, rcpt, time.time(), self.timing)

    def exempt(self, client_ip: str, rcpt: str) -> bool:
        domain = rcpt.rpartition("@")[2].lower()
        if domain in self._domains or any(domain.endswith("." + d) for d in self._domains):
            return True
        return address_in(client_ip, self._exempt)
