"""Embed smtprs in a Trio program: hooks that refuse a recipient and watch deliveries.

Run it with ``python examples/embed.py [DATA_DIR]``.  It starts a server on a
free loopback port, sends it two messages with ``smtprs.send`` (one to a
recipient the hook refuses), waits for the other to reach its Maildir, and
prints what happened.  tests/e2e/test_library.py runs it.
"""

from __future__ import annotations

import sys
import tempfile

import trio

import smtprs


class Policy(smtprs.Hooks):
    """Refuse mail for one address; count what the queue delivers."""

    def __init__(self) -> None:
        self.delivered = trio.Event()
        self.log: list[str] = []

    async def on_rcpt(self, session: smtprs.SessionInfo, sender: str, recipient: str) -> smtprs.Reply | None:
        if recipient.lower().startswith("blocked@"):
            return smtprs.Reply(550, "5.7.1", "This recipient does not take mail from you")
        return None  # the server's own checks decide

    async def on_data(self, session: smtprs.SessionInfo, envelope: smtprs.Envelope, content: smtprs.Content) -> smtprs.Reply | None:
        with content.open() as fh:
            head = fh.read(4096)
        self.log.append(f"data from {session.peer_ip}: {len(head)} octets read, queued as {envelope.queue_id}")
        return None

    async def on_delivered(self, envelope: smtprs.Envelope, recipient: smtprs.Recipient) -> None:
        self.log.append(f"delivered to {recipient.address}")
        self.delivered.set()


async def main(data_dir: str) -> None:
    config = smtprs.load_config(
        overrides={
            "data_dir": data_dir,
            "hostname": "mx.example.test",
            "smtpd": {"listeners": [{"address": "127.0.0.1:0"}]},
            "local": {"domains": ["example.test"]},
        }
    )
    hooks = Policy()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(smtprs.serve, config, hooks)
        message = b"From: <me@example.test>\r\nSubject: hello\r\n\r\nHello!\r\n"
        results = await smtprs.send(
            "me@example.test", ["alice@example.test", "blocked@example.test"], message, host="127.0.0.1", port=server.port(), tls="none"
        )
        for r in results:
            print(f"{r.recipient}: {r.status} ({r.detail})")
        with trio.fail_after(10):
            await hooks.delivered.wait()
        for line in hooks.log:
            print(line)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(main, sys.argv[1] if len(sys.argv) > 1 else tmp)
