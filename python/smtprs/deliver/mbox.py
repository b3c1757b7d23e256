"""mbox delivery: the MDA for users whose mailbox is one file.

Each recipient's copy is appended to its mbox file (``local.mbox``) as::

    From <sender, or MAILER-DAEMON for <>> <arrival time, asctime format>
    Return-Path: <sender>
    Delivered-To: <recipient>
    <the spooled content, LF line ends, mboxrd-quoted>
    <an empty line>

mboxrd quoting: every line that starts with ``From `` after any number of
``>`` gets one more ``>`` (``From x`` -> ``>From x``, ``>From x`` ->
``>>From x``), so a reader that removes one ``>`` gets the message back
exactly, and no line of a message can be taken for a separator.

Locking: the file is locked with fcntl (``lockf``, what mutt, Python's
``mailbox``, Postfix and Dovecot use) *and* a dotlock (``<mbox>.lock``, made
with O_EXCL; one older than ``STALE_DOTLOCK`` seconds is taken as left over
from a crash and removed).  Both are tried without blocking and retried until
``local.lock_timeout``; a mailbox that stays locked defers the recipient
(4.2.0), the queue retries.  Deliveries to the same file from this process are
also serialised by a thread lock, because fcntl locks do not exclude threads
of one process.

Durability: the file is fsync'd before the delivery is reported (and its
directory when the file was created).  A failed write (disk full, I/O error)
truncates the file back to its size before the append, so the mbox is left
as it was; the recipient is deferred.

Idempotence, as far as mbox allows: the copy is a deterministic function of
(queue id, recipient, arrival time), so before appending we compare it with
the end of the file.  A retry after a crash between the fsync and the
envelope update therefore finds its copy and does not append it again --
unless another message was appended to the same mbox in between, in which
case the message is delivered twice (Maildir, which names each copy, has no
such window).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from .. import _core
from ..hops import MboxMailbox
from .base import DeliveryRequest, Outcome
from .maildir import make_dir

CHUNK = 256 * 1024
STALE_DOTLOCK = 300.0  # seconds
_COMPARE = 4096  # octets compared at each end of a copy for the idempotence check

_FROM_LINE = re.compile(rb"^(>*From )", re.M)
_UNDECIDED = re.compile(rb">*(?:F(?:r(?:o(?:m)?)?)?)?")
_MAX_UNDECIDED = 64 * 1024


class MboxrdQuoter:
    """Streaming mboxrd quoting of LF text: ``^>*From `` gets one more ``>``.

    A line split across chunks is handled: the start of a line is held back
    only while it could still become ``>*From `` (a short run of ``>`` and a
    prefix of ``From``).
    """

    def __init__(self) -> None:
        self._pending = b""  # the start of a line, not yet known to need quoting
        self._mid_line = False  # the next octets continue a line already written

    def feed(self, data: bytes) -> bytes:
        buf = self._pending + data
        self._pending = b""
        out: list[bytes] = []
        start = 0
        if self._mid_line:
            nl = buf.find(b"\n")
            if nl < 0:
                return buf
            out.append(buf[: nl + 1])
            start = nl + 1
            self._mid_line = False
        cut = buf.rfind(b"\n", start) + 1
        if cut > start:
            out.append(_FROM_LINE.sub(rb">\1", buf[start:cut]))
        else:
            cut = start
        tail = buf[cut:]
        if tail:
            if len(tail) < _MAX_UNDECIDED and _UNDECIDED.fullmatch(tail):
                self._pending = tail
            else:
                out.append(_FROM_LINE.sub(rb">\1", tail))
                self._mid_line = True
        return b"".join(out)

    def finish(self) -> bytes:
        tail, self._pending = self._pending, b""
        return _FROM_LINE.sub(rb">\1", tail)


def from_line(sender: str, arrival: float) -> bytes:
    """The separator: ``From sender Fri Nov 29 08:00:00 2024``."""
    who = "".join("_" if c.isspace() else c for c in sender) or "MAILER-DAEMON"
    return f"From {who} {time.asctime(time.localtime(arrival))}\n".encode("utf-8", "surrogateescape")


def render(request: DeliveryRequest, address: str) -> Iterator[bytes]:
    """The octets appended for one recipient (separator, added fields, quoted content, blank line)."""
    yield from_line(request.sender, request.arrival)
    yield f"Return-Path: <{request.sender}>\nDelivered-To: {address}\n".encode("utf-8", "surrogateescape")
    conv = _core.LfConverter()
    quote = MboxrdQuoter()
    last = b"\n"
    with request.content.open() as src:
        while chunk := src.read(CHUNK):
            out = quote.feed(conv.feed(chunk))
            if out:
                last = out[-1:]
                yield out
    out = quote.feed(conv.finish()) + quote.finish()
    if out:
        last = out[-1:]
        yield out
    yield b"\n" if last == b"\n" else b"\n\n"


class MailboxLocked(Exception):
    pass


_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(str(path), threading.Lock())


def _try_dotlock(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        try:
            if time.time() - lock.stat().st_mtime > STALE_DOTLOCK:
                os.unlink(lock)  # left by a crashed writer; the next try takes it
        except FileNotFoundError:
            pass
        return False
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return True


def lock_mbox(fd: int, path: Path, timeout: float) -> Path:
    """Take the fcntl lock and the dotlock, retrying until ``timeout``; returns the dotlock path."""
    dotlock = path.with_name(path.name + ".lock")
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EAGAIN):
                raise
        else:
            if _try_dotlock(dotlock):
                return dotlock
            fcntl.lockf(fd, fcntl.LOCK_UN)  # never hold one while waiting for the other
        if time.monotonic() >= deadline:
            raise MailboxLocked(f"{path} is locked")
        time.sleep(pause)
        pause = min(pause * 2, 0.25)


def unlock_mbox(fd: int, dotlock: Path) -> None:
    try:
        os.unlink(dotlock)
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_at(fd: int, offset: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        got = os.pread(fd, n - len(out), offset + len(out))
        if not got:
            break
        out += got
    return out


class MboxAgent:
    name = "mbox"

    def __init__(self, *, lock_timeout: float = 30.0, fsync: bool = True) -> None:
        self.lock_timeout = lock_timeout
        self.fsync = fsync

    async def deliver(self, request: DeliveryRequest) -> list[Outcome]:
        return await trio.to_thread.run_sync(self._deliver_all, request)

    def _deliver_all(self, request: DeliveryRequest) -> list[Outcome]:
        outcomes = []
        for t in request.targets:
            assert isinstance(t.hop, MboxMailbox)
            path = t.hop.path
            try:
                again = self._deliver_one(request, t.address, t.hop)
                what = "already in mbox" if again else "delivered to mbox"
                outcomes.append(Outcome(t.index, "delivered", f"{what} {path}", "local"))
            except MailboxLocked:
                outcomes.append(Outcome(t.index, "deferred", f"451 4.2.0 mailbox {path} is locked", "local"))
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    detail = f"452 4.2.2 mailbox full: {e.strerror}"
                else:
                    detail = f"451 4.3.0 cannot write mbox {path}: {e.strerror or e}"
                outcomes.append(Outcome(t.index, "deferred", detail, "local"))
        return outcomes

    def _deliver_one(self, request: DeliveryRequest, address: str, box: MboxMailbox) -> bool:
        """Append one copy; True if it was already there (a retry after a crash)."""
        path = box.path
        make_dir(path.parent, box.mode, box.owner)
        with _thread_lock(path):
            flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:
                fd = os.open(path, flags)
                created = False
            try:
                if created:
                    # a new mailbox gets the configured mode and owner (one that exists keeps its own)
                    try:
                        if box.mode != 0o700:
                            os.fchmod(fd, box.mode & 0o666)
                        if box.owner is not None:
                            os.fchown(fd, *box.owner)
                    except OSError:
                        os.unlink(path)  # not left behind with the wrong owner for the retry to find
                        raise
                if created and self.fsync:
                    _fsync_dir(path.parent)
                dotlock = lock_mbox(fd, path, self.lock_timeout)
                try:
                    return self._append(fd, request, address)
                finally:
                    unlock_mbox(fd, dotlock)
            finally:
                os.close(fd)

    def _append(self, fd: int, request: DeliveryRequest, address: str) -> bool:
        old_size = os.fstat(fd).st_size
        length = 0
        head = b""
        tail = b""
        for part in render(request, address):  # measure: size, first and last octets
            length += len(part)
            if len(head) < _COMPARE:
                head += part[: _COMPARE - len(head)]
            tail = (tail + part)[-_COMPARE:]
        if old_size >= length:
            start = old_size - length
            if _read_at(fd, start, len(head)) == head and _read_at(fd, old_size - len(tail), len(tail)) == tail:
                return True
        try:
            for part in render(request, address):
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            # leave the mbox as it was: no half message for a reader to trip over
            try:
                os.ftruncate(fd, old_size)
                if self.fsync:
                    os.fsync(fd)
            except OSError:
                pass
            raise
        return False
