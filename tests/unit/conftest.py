"""Unit-test helpers: a server context on a temporary data dir, and an SMTP
client on a memory stream (no sockets), for driving sessions in virtual time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from smtprs import _core, config
from smtprs.daemon import ServerContext, build
from smtprs.smtpd.session import Session


def make_config(tmp_path: Path, **sections: Any) -> config.Config:
    overrides: dict[str, Any] = {"data_dir": str(tmp_path), "hostname": "mx.test"}
    base_local = {"domains": ["example.test"]}
    overrides["local"] = {**base_local, **sections.pop("local", {})}
    overrides.update(sections)
    return config.load(None, overrides=overrides)


class Client:
    """Drives one Session over a memory stream and parses its replies with the Rust parser."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = _core.ReplyParser()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def reply(self) -> _core.Reply:
        while (r := self.parser.next_reply()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("server closed")
            self.parser.receive_data(data)
        return r

    async def cmd(self, line: str | bytes) -> _core.Reply:
        await self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def closed(self) -> bool:
        """True when the server has closed the stream (after any pending bytes)."""
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return True
            self.parser.receive_data(data)


@pytest.fixture
def ctx_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    def factory(**sections: Any) -> ServerContext:
        ctx = build(make_config(tmp_path, **sections))
        ctx.spool.open()
        return ctx

    return factory


async def start_session(nursery: trio.Nursery, ctx: ServerContext) -> Client:
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def serve() -> None:
        await Session(ctx.session, server_stream, "192.0.2.7", 40000).run()
        await server_stream.aclose()

    nursery.start_soon(serve)
    client = Client(client_stream)
    greeting = await client.reply()
    assert greeting.code == 220
    return client


def spooled(ctx: ServerContext, qid: str) -> bytes:
    """The content the spool holds for ``qid``."""
    with ctx.spool.content(qid).open() as fh:
        return fh.read()
