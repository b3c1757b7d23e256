"""The SMTP client's connections kept for reuse, and the per-destination limit.

A connection that finished its transactions waits here, idle, for the next
message to the same destination (``relay.idle_timeout``; Postfix's
smtp_connection_cache); taking it sends RSET first, so a connection the
server dropped meanwhile is noticed before a transaction starts on it.  Idle
connections wait in the nursery that ``run`` holds, so stopping the agent
closes them.  ``limit`` bounds the deliveries to one destination
(``relay.destination_concurrency``).  The settings are passed on each call,
so a reload applies at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import trio

from .. import _core
from .client import Lost


class Reusable(Protocol):
    async def command(self, line: str, timeout: float) -> _core.Reply: ...
    async def close(self, quit: bool = True) -> None: ...
    async def abort(self) -> None: ...


C = TypeVar("C", bound=Reusable)


@dataclass(eq=False)
class _Idle(Generic[C]):
    conn: C


class ConnectionPool(Generic[C]):
    def __init__(self) -> None:
        self._idle: dict[str, list[_Idle[C]]] = {}
        self._limits: dict[str, trio.Semaphore] = {}
        self._nursery: trio.Nursery | None = None
        self.reused = 0  # connections taken from the pool (for tests and metrics)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the nursery in which idle connections wait; closes them on exit."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            idle, self._idle = self._idle, {}
            for entries in idle.values():
                for e in entries:
                    await e.conn.abort()

    @asynccontextmanager
    async def limit(self, destination: str, concurrency: int) -> AsyncIterator[None]:
        sem = self._limits.get(destination)
        if sem is None:
            sem = self._limits[destination] = trio.Semaphore(concurrency)
        try:
            async with sem:
                yield
        finally:
            if sem.value == concurrency and sem.statistics().tasks_waiting == 0:
                self._limits.pop(destination, None)

    async def checkout(self, destination: str, command_timeout: float) -> C | None:
        entries = self._idle.get(destination)
        while entries:
            conn = entries.pop().conn
            try:
                reply = await conn.command("RSET", command_timeout)
                if reply.code == 250:
                    self.reused += 1
                    return conn
                await conn.close(quit=False)
            except Lost:
                await conn.close(quit=False)
        self._idle.pop(destination, None)
        return None

    async def release(self, destination: str, conn: C, idle_timeout: float) -> None:
        nursery = self._nursery
        if nursery is None or idle_timeout <= 0:
            await conn.close()
            return
        entry = _Idle(conn)
        self._idle.setdefault(destination, []).append(entry)
        nursery.start_soon(self._expire, destination, entry, idle_timeout)

    async def _expire(self, destination: str, entry: _Idle[C], idle_timeout: float) -> None:
        await trio.sleep(idle_timeout)
        entries = self._idle.get(destination, [])
        if entry in entries:  # nobody took it meanwhile
            entries.remove(entry)
            if not entries:
                self._idle.pop(destination, None)
            await entry.conn.close()
