"""aiosmtpd as a benchmark peer of smtprs (started by benches/load/servers.py).

    python benches/load/aiosmtpd_server.py --port 2600 --mode durable --maildir DIR
    python benches/load/aiosmtpd_server.py --port 2600 --mode forward --spool DIR --next-hop 127.0.0.1:2601

Modes:

* ``sink``: the handler returns 250 and throws the message away.
* ``durable``: the handler delivers the message to the Maildir DIR the way a
  careful MDA does before it answers 250: ``tmp/NAME`` is written and fsync'd,
  renamed to ``new/NAME``, and ``new/`` is fsync'd.  The file work runs in the
  event loop's default thread pool (``run_in_executor``), so that concurrent
  sessions overlap their fsyncs instead of blocking the loop one by one; that
  is the better of the two obvious ways to write such a handler.

* ``forward`` (relay mode): the handler writes the message to an fsync'd file
  in the spool directory (file + directory fsync, as ``durable``), sends it on
  to the next hop with ``smtplib`` (one SMTP connection per thread of the
  default pool, kept open and reused for later messages, as an MTA's
  connection cache would), deletes the spool file and only then answers 250.
  It is a store-and-forward done inline: no queue manager, no retries (a
  failed forward answers 451, and the client must try again).

This is the same promise smtprs gives ("250 means on disk"), with the delivery
done inline, so for aiosmtpd durable acceptance and end-to-end delivery are
the same thing.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import smtplib
import socket
import threading
import time

from aiosmtpd.smtp import SMTP, Envelope, Session

HOSTNAME = "aiosmtpd-bench.test"


class SinkHandler:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok: discarded"


class MaildirHandler:
    def __init__(self, maildir: str) -> None:
        self.tmp = os.path.join(maildir, "tmp")
        self.new = os.path.join(maildir, "new")
        for d in (maildir, self.tmp, self.new, os.path.join(maildir, "cur")):
            os.makedirs(d, exist_ok=True)
        self.counter = itertools.count()
        self.host = socket.gethostname().replace("/", "_").replace(":", "_")
        self.pid = os.getpid()

    def _deliver(self, name: str, data: bytes) -> None:
        tmp_path = os.path.join(self.tmp, name)
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp_path, os.path.join(self.new, name))
        dfd = os.open(self.new, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        # LF line ends on disk, as Postfix and smtprs write Maildir files
        head = (
            f"Return-Path: <{envelope.mail_from}>\nDelivered-To: {envelope.rcpt_tos[0] if envelope.rcpt_tos else ''}\n"
        ).encode()
        data = head + content.replace(b"\r\n", b"\n")
        now = time.time()
        name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{self.pid}Q{next(self.counter)}.{self.host}"
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._deliver, name, data)
        except OSError as e:
            return f"451 4.3.0 Cannot deliver: {e.strerror}"
        return "250 2.0.0 Ok: delivered"


class ForwardHandler(MaildirHandler):
    """Spool (fsync'd), forward with smtplib on a per-thread reused connection, unlink, then 250."""

    def __init__(self, spool: str, next_hop: str) -> None:
        super().__init__(spool)
        host, _, port = next_hop.rpartition(":")
        self.next_hop = (host, int(port))
        self.local = threading.local()

    def _client(self) -> smtplib.SMTP:
        client: smtplib.SMTP | None = getattr(self.local, "client", None)
        if client is None:
            client = smtplib.SMTP(*self.next_hop, local_hostname=HOSTNAME, timeout=60)
            client.ehlo()
            self.local.client = client
        return client

    def _forward(self, name: str, data: bytes, sender: str, rcpts: list[str], content: bytes) -> None:
        self._deliver(name, data)
        for attempt in (1, 2):  # a cached connection the next hop closed: reconnect once
            try:
                client = self._client()
                client.sendmail(sender, rcpts, content)
                break
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                self.local.client = None
                if attempt == 2:
                    raise
        os.unlink(os.path.join(self.new, name))

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        now = time.time()
        name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{self.pid}Q{next(self.counter)}.{self.host}"
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                None, self._forward, name, content, envelope.mail_from or "", list(envelope.rcpt_tos), content
            )
        except (OSError, smtplib.SMTPException) as e:
            return f"451 4.4.0 Cannot forward: {e}"
        return "250 2.0.0 Ok: forwarded"


async def serve(args: argparse.Namespace) -> None:
    handler: object
    if args.mode == "sink":
        handler = SinkHandler()
    elif args.mode == "forward":
        handler = ForwardHandler(args.spool, args.next_hop)
    else:
        handler = MaildirHandler(args.maildir)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=HOSTNAME, ident="aiosmtpd bench", enable_SMTPUTF8=True),
        host=args.host,
        port=args.port,
        backlog=1024,
        reuse_address=True,
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("sink", "durable", "forward"), required=True)
    p.add_argument("--maildir", help="Maildir (tmp/ new/ cur/) for --mode durable")
    p.add_argument("--spool", help="spool directory for --mode forward")
    p.add_argument("--next-hop", help="HOST:PORT to forward to (--mode forward)")
    args = p.parse_args()
    if args.mode == "durable" and not args.maildir:
        p.error("--mode durable needs --maildir")
    if args.mode == "forward" and not (args.spool and args.next_hop):
        p.error("--mode forward needs --spool and --next-hop")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
