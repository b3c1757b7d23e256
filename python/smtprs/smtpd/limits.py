"""Connection limits per client address: concurrent sessions and connection rate,
one count per client for the whole server.

Owns, per client address (an IPv6 /64 counts as one address, as for the AUTH
failure delays), the number of sessions open and the rate of its latest
connection attempts.  Reads nothing itself: the limits
(``smtpd.max_connections_per_client``, ``max_connection_rate``,
``connection_rate_window``) are passed to each ``admit`` call, so a reloaded
configuration applies to the next connection; clients in
``smtpd.limit_exempt_networks`` are never passed here (the session asks
``Policy.limit_exempt`` first).

**Shared by the workers.**  With ``workers = N`` every worker process opens
the same table, ``data_dir/client-limits.shm``, and maps it (mmap): a
fixed-size hash table of client slots, each holding one open-session count per
worker (a column) and the rate counters.  Every operation takes an exclusive
``fcntl`` lock on the file for a few microseconds, so the limits hold for the
server as a whole, not N times over (Postfix's anvil(8) does this with one
server process; a file lock needs no extra process).  A worker counts only in
its own column, and clears that column when it starts: the counts of a worker
that was killed do not outlive it.  Worker 0 also clears the columns of
workers beyond N (an earlier run with more).  Without a file (the library,
the unit tests) the same table lives in anonymous memory.

**Rate** is a sliding-window estimate, as many limiters count: the attempts in
the current window plus those of the previous window weighted by how much of
it still overlaps (``prev * (1 - elapsed / window) + current``); every
attempt counts, refused ones too.  It needs two numbers per client whatever
the rate, and matches the exact count when a client backs off.

**Bounded memory**, whatever clients do: the table has a fixed number of slots
(``SLOTS``), in buckets of ``BUCKET``; a new client takes a free slot of its
bucket or the least recently seen one with no open session.  A client that
finds its bucket full of clients with open sessions is admitted uncounted (it
needs more than ``BUCKET`` busy clients hashing to one bucket); such
admissions are counted in ``untracked``.

Time is passed in (``now()``: ``time.monotonic()``, one clock for all
processes, for a shared table; the Trio clock for an anonymous one, so unit
tests run in virtual time).
"""

from __future__ import annotations

import fcntl
import ipaddress
import mmap
import os
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from .. import reply as R
from ..config.values import client_address

MAGIC = b"SMTPRSCL"
VERSION = 1
SLOTS = 8192
BUCKET = 16
MAX_COLUMNS = 64
_HEADER = struct.Struct("<8sIII")  # magic, version, slots, columns
_HEADER_SIZE = 64
# key (16 bytes: the packed IPv6 /64 or IPv4 address), last seen (monotonic
# seconds), start of the current rate window, attempts in it, in the previous one
_SLOT_HEAD = struct.Struct("<16sddII")


def _packed(ip: str) -> bytes:
    """16 bytes naming the client (the IP, or its /64 for IPv6, as ``FailureDelays.key``):
    never all zero, which marks a free slot."""
    addr = client_address(ip)
    if addr is None:
        return b"\x02" + zlib.crc32(ip.encode()).to_bytes(4, "big") + b"\x00" * 11
    if isinstance(addr, ipaddress.IPv4Address):
        return b"\x04" + addr.packed + b"\x00" * 11
    return b"\x06" + addr.packed[:8] + b"\x00" * 7


class ClientLimits:
    """The per-client table; ``shared()`` opens the server's file, ``ClientLimits()`` is process-local."""

    def __init__(
        self,
        max_clients: int = SLOTS,
        *,
        path: str | None = None,
        column: int = 0,
        columns: int = 1,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.bucket = min(BUCKET, max(1, max_clients))
        self.slots = -(-max(1, max_clients) // self.bucket) * self.bucket
        self.columns = max(1, columns)
        self.column = column % self.columns
        self.path = path
        self.now = clock or (time.monotonic if path else trio.current_time)
        self._slot = _SLOT_HEAD.size + 2 * self.columns
        self._open_fmt = struct.Struct(f"<{self.columns}H")
        size = _HEADER_SIZE + self.slots * self._slot
        self._fd = -1
        self.untracked = 0
        if path is None:
            self._map = mmap.mmap(-1, size)
            _HEADER.pack_into(self._map, 0, MAGIC, VERSION, self.slots, self.columns)
            return
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            with self._locked_fd():
                head = os.pread(self._fd, _HEADER.size, 0)
                if len(head) != _HEADER.size or _HEADER.unpack(head) != (MAGIC, VERSION, self.slots, self.columns):
                    os.ftruncate(self._fd, 0)  # another layout (or a new file): start afresh
                    os.ftruncate(self._fd, size)
                    os.pwrite(self._fd, _HEADER.pack(MAGIC, VERSION, self.slots, self.columns), 0)
                elif os.fstat(self._fd).st_size != size:
                    os.ftruncate(self._fd, size)
                self._map = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise

    @classmethod
    def shared(cls, path: str, worker: int, workers: int) -> ClientLimits:
        """The server's table at ``path``, as worker ``worker`` of ``workers``: its
        column (and worker 0 those beyond ``workers``) cleared of an earlier run's counts."""
        # one layout for every run of up to MAX_COLUMNS workers, so a restart with
        # another number of workers finds the table as it left it
        limits = cls(SLOTS, path=path, column=worker, columns=max(MAX_COLUMNS, workers))
        with limits._locked():
            clear = [limits.column] + (list(range(workers, limits.columns)) if worker == 0 else [])
            for i in range(limits.slots):
                counts = list(limits._opens(i))
                if any(counts[c] for c in clear):
                    for c in clear:
                        counts[c] = 0
                    limits._set_opens(i, counts)
        return limits

    def close(self) -> None:
        self._map.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- the table -----------------------------------------------------------------
    @contextmanager
    def _locked_fd(self) -> Iterator[None]:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if self._fd < 0:
            yield
        else:
            with self._locked_fd():
                yield

    def _offset(self, i: int) -> int:
        return _HEADER_SIZE + i * self._slot

    def _opens(self, i: int) -> tuple[int, ...]:
        return self._open_fmt.unpack_from(self._map, self._offset(i) + _SLOT_HEAD.size)

    def _set_opens(self, i: int, counts: list[int]) -> None:
        self._open_fmt.pack_into(self._map, self._offset(i) + _SLOT_HEAD.size, *counts)

    def _find(self, key: bytes, now: float, *, create: bool) -> int | None:
        """The slot of ``key``; with ``create``, a free or reclaimed one when it has none."""
        first = (zlib.crc32(key) % (self.slots // self.bucket)) * self.bucket
        free: int | None = None
        oldest: tuple[float, int] | None = None
        m = self._map
        for i in range(first, first + self.bucket):
            off = self._offset(i)
            k = m[off : off + 16]
            if k == key:
                return i
            if not create or free is not None:
                continue
            if k == b"\x00" * 16:
                free = i
            elif not any(self._opens(i)):
                last = _SLOT_HEAD.unpack_from(m, off)[1]
                if oldest is None or last < oldest[0]:
                    oldest = (last, i)
        if not create:
            return None
        slot = free if free is not None else (oldest[1] if oldest is not None else None)
        if slot is not None:
            _SLOT_HEAD.pack_into(m, self._offset(slot), key, now, now, 0, 0)
            self._set_opens(slot, [0] * self.columns)
        return slot

    # -- the questions -------------------------------------------------------------
    def admit(self, ip: str, now: float, *, per_client: int, rate: int, window: float) -> R.Reply | None:
        """Count a connection attempt from ``ip``; None admits it (call ``release``
        when its session ends), else the 421 reply refusing it."""
        key = _packed(ip)
        with self._locked():
            i = self._find(key, now, create=True)
            if i is None:
                self.untracked += 1
                return None
            off = self._offset(i)
            _, _, start, current, previous = _SLOT_HEAD.unpack_from(self._map, off)
            if rate > 0:
                elapsed = now - start
                if elapsed >= window:  # the window moves on (by whole windows)
                    previous = current if elapsed < 2 * window else 0
                    current = 0
                    start += (elapsed // window) * window
                    elapsed = now - start
                current += 1
                estimate = previous * max(0.0, 1.0 - elapsed / window) + current
            _SLOT_HEAD.pack_into(self._map, off, key, now, start, current, previous)
            if rate > 0 and estimate > rate:
                return R.CONNECTION_RATE_EXCEEDED
            counts = list(self._opens(i))
            if sum(counts) >= per_client:
                return R.TOO_MANY_FROM_CLIENT
            counts[self.column] += 1
            self._set_opens(i, counts)
            return None

    def release(self, ip: str) -> None:
        with self._locked():
            i = self._find(_packed(ip), 0.0, create=False)
            if i is None:
                return
            counts = list(self._opens(i))
            if counts[self.column] > 0:
                counts[self.column] -= 1
                self._set_opens(i, counts)

    def open_sessions(self, ip: str) -> int:
        """Sessions open from ``ip``'s address, in all workers."""
        with self._locked():
            i = self._find(_packed(ip), 0.0, create=False)
            return 0 if i is None else sum(self._opens(i))

    @property
    def remembered(self) -> int:
        """Client addresses in the table (for tests: it stays bounded)."""
        empty = b"\x00" * 16
        return sum(1 for i in range(self.slots) if self._map[self._offset(i) : self._offset(i) + 16] != empty)
