#!/usr/bin/env python3
"""The least a Trio-orchestrated MTA can cost: a floor for the load benchmark (benches/load/).

    python benches/load/trio_floor.py --port P [--mode sink|durable] [--dir D] [--processes N]

Not an MTA.  It answers smtp-source's dialogue with canned replies: no
command parsing beyond the first four octets, no address or parameter
checks, no un-stuffing, no envelope, no logging, no limits.  What it keeps is
what any server built as the project's design says (one Trio task per
session, Python orchestrating) must do per message:

- accept the connection and run a task for it; read and write the socket
  directly (os.read/os.write on the non-blocking fd, waiting through Trio only
  when nothing is there, as smtprs's session does);
- ``durable``: append the message to one segment file and answer 250 only
  after an fdatasync that covers it (group commit: every message waiting when
  a sync starts shares it, the sync runs in a thread); then deliver each
  committed message to a Maildir (``DIR/mail/box``) in batches: write every
  file of the batch into tmp/, one syncfs(2) for the batch, rename each into
  new/, one fsync of new/.  syncfs is the cheapest correct way to make many
  new files durable at once on Linux; smtprs fsyncs each file, as Postfix does.

What it leaves out (un-stuffing, spool records for finished messages,
retries, bounces) only makes it cheaper, so its msgs/s is an upper bound for
smtprs's design on the machine it runs on.  The load benchmark runs it beside
smtprs and Postfix (``--servers ...,floor``); docs/performance.md uses it to say
which targets the design can reach here.
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import signal
import socket
import sys
from pathlib import Path

import trio

REPLIES = {
    b"EHLO": b"250-floor\r\n250 PIPELINING\r\n",
    b"HELO": b"250 floor\r\n",
    b"MAIL": b"250 2.1.0 Ok\r\n",
    b"RCPT": b"250 2.1.5 Ok\r\n",
    b"DATA": b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"RSET": b"250 2.0.0 Ok\r\n",
    b"NOOP": b"250 2.0.0 Ok\r\n",
    b"QUIT": b"221 2.0.0 Bye\r\n",
}
UNKNOWN = b"502 5.5.2 Error: command not recognized\r\n"
QUEUED = b"250 2.0.0 Ok: queued\r\n"

_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    if _libc.syncfs(fd) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class Store:
    """Group-committed segment, then batched Maildir delivery."""

    def __init__(self, root: Path, deliver: bool = True) -> None:
        self.deliver = deliver
        self.seg = os.open(root / f"segment.{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.maildir = root / "mail" / "box"
        for sub in ("tmp", "new", "cur"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        self.waiting: list[bytes] = []  # appended, not yet covered by a sync
        self.synced = trio.Event()  # set when the sync covering ``waiting`` is done
        self.wake = trio.Event()
        self.send, self.receive = trio.open_memory_channel[list[bytes]](1000)
        self.names = itertools.count()

    async def commit(self, message: bytes) -> None:
        os.write(self.seg, message)
        self.waiting.append(message)
        done = self.synced
        self.wake.set()
        await done.wait()

    async def committer(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            batch, self.waiting = self.waiting, []
            done, self.synced = self.synced, trio.Event()
            await trio.to_thread.run_sync(os.fdatasync, self.seg)
            done.set()
            if self.deliver:
                await self.send.send(batch)

    async def deliverer(self) -> None:
        while True:
            batch = await self.receive.receive()
            while True:  # take whatever else is ready: one batch
                try:
                    batch += self.receive.receive_nowait()
                except trio.WouldBlock:
                    break
            names = [f"{os.getpid()}.{next(self.names)}.floor" for _ in batch]
            await trio.to_thread.run_sync(self._write, batch, names)

    def _write(self, batch: list[bytes], names: list[str]) -> None:
        tmp, new = self.maildir / "tmp", self.maildir / "new"
        for message, name in zip(batch, names):
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, message)
            os.close(fd)
        dfd = os.open(new, os.O_RDONLY)
        try:
            syncfs(dfd)
            for name in names:
                os.rename(tmp / name, new / name)
            os.fsync(dfd)
        finally:
            os.close(dfd)


async def session(sock: socket.socket, store: Store | None) -> None:
    fd = sock.fileno()
    try:
        os.write(fd, b"220 floor ESMTP\r\n")
        buf = b""
        body: list[bytes] | None = None  # inside DATA: the chunks so far
        answered = True  # after a reply, wait first: the answer is a round trip away
        while True:
            if answered:
                await trio.lowlevel.wait_readable(sock)
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                answered = True
                continue
            answered = False
            if not data:
                return
            buf += data
            out: list[bytes] = []
            while True:
                if body is not None:
                    i = buf.find(b"\r\n.\r\n")
                    if i < 0:  # keep 4 octets: the end may straddle two reads
                        body.append(buf[:-4])
                        buf = buf[-4:]
                        break
                    body.append(buf[: i + 2])
                    buf = buf[i + 5 :]
                    if store is not None:
                        os.write(fd, b"".join(out))
                        out = []
                        await store.commit(b"".join(body)[2:])
                    body = None
                    out.append(QUEUED)
                    continue
                i = buf.find(b"\r\n")
                if i < 0:
                    break
                line, buf = buf[:i], buf[i + 2 :]
                r = REPLIES.get(line[:4].upper(), UNKNOWN)
                out.append(r)
                if r is REPLIES[b"DATA"]:
                    body, buf = [], b"\r\n" + buf  # the CRLF that ends DATA's line starts the content
                elif r is REPLIES[b"QUIT"]:
                    os.write(fd, b"".join(out))
                    return
            if out:
                os.write(fd, b"".join(out))
                answered = True
    except OSError:
        pass
    finally:
        sock.close()


async def serve(port: int, store: Store | None) -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    async with trio.open_nursery() as nursery:
        if store is not None:
            nursery.start_soon(store.committer)
            nursery.start_soon(store.deliverer)
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    break
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(session, conn, store)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=("sink", "durable"), default="sink")
    p.add_argument("--dir", type=Path, default=Path("."))
    p.add_argument("--processes", type=int, default=1)
    p.add_argument(
        "--no-delivery",
        action="store_true",
        help="durable: commit only, deliver nothing (an upper bound for acceptance alone)",
    )
    args = p.parse_args()
    children: list[int] = []
    for _ in range(max(1, args.processes) - 1):
        pid = os.fork()
        if pid == 0:
            children = []
            break
        children.append(pid)

    def stop(signum: int, frame: object) -> None:
        for pid in children:
            os.kill(pid, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    store = Store(args.dir, deliver=not args.no_delivery) if args.mode == "durable" else None
    try:
        trio.run(serve, args.port, store)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
