"""The control socket: one line in, one line out; 0600; one server per data directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio

from smtprs.queue import control


class FakeQueue:
    """The one scheduler method the control socket calls."""

    def __init__(self) -> None:
        self.flushes = 0

    def flush(self) -> int:
        self.flushes += 1
        return 3


async def test_commands_mode_and_single_owner(tmp_path: Path) -> None:
    # deeper than a Unix socket address may be: reached through /proc/self/fd
    path = tmp_path / ("d" * 80) / ("e" * 80) / "control.sock"
    queue = FakeQueue()
    async with trio.open_nursery() as n:
        await n.start(control.serve, path, [queue])
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert await control.request(path, "FLUSH") == "OK 3 messages scheduled now"
        assert queue.flushes == 1
        assert await control.request(path, "ping") == "OK smtprs"
        assert (await control.request(path, "DROP TABLES")).startswith("ERR")
        with pytest.raises(control.ControlError, match="another smtprs serve"):
            await control.serve(path, [queue])
        n.cancel_scope.cancel()
    assert not path.exists()


async def test_stale_socket_is_replaced_and_absent_server_reported(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    with pytest.raises(control.ControlError, match="no server is running"):
        await control.request(path, "FLUSH")
    import socket

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))  # left behind by a server that was killed
    stale.close()
    async with trio.open_nursery() as n:
        await n.start(control.serve, path, [FakeQueue()])
        assert await control.request(path, "PING") == "OK smtprs"
        n.cancel_scope.cancel()
