"""The spool: the durable store of accepted messages (content + envelope).

Layout under the spool directory::

    queue/ID.msg   the content, exactly as it will be delivered (our Received
                   header first); written while DATA streams in
    queue/ID.env   the envelope (JSON); its presence is what makes the message
                   exist, so a crash never leaves half a message that looks whole
    queue/*.tmp    envelopes being written (removed at start-up)
    corrupt/       files that could not be read, moved aside and logged

Durability (``commit``): the content file is fsync'd, the envelope is written to
a temporary name, fsync'd and renamed into place, and the directory is fsync'd;
only then does ``commit`` return and the session answer 250.  Commits that
arrive while another is in progress are batched (group commit): one thread call
fsyncs all of them and the directory once, so concurrent messages share the
directory fsync and the thread hop.

The spool knows nothing of delivery or routing; the scheduler reads and updates
envelopes through it.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import trio

from .. import maillog
from ..envelope import Envelope
from ..errors import SpoolError

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # 31 symbols, no vowels: ids never spell words


def new_queue_id() -> str:
    """A time-ordered, unique-enough queue id (the spool's O_EXCL catches a clash)."""
    n = time.time_ns() // 1000
    out = []
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(reversed(out)) + "".join(secrets.choice(_ALPHABET) for _ in range(4))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MessageWriter:
    """The content file of a message being received."""

    def __init__(self, queue_id: str, path: Path, fh: BinaryIO) -> None:
        self.queue_id = queue_id
        self.path = path
        self._fh = fh
        self.size = 0
        self.failed: OSError | None = None

    def write(self, data: bytes) -> None:
        if self.failed is not None:
            return
        try:
            self._fh.write(data)
            self.size += len(data)
        except OSError as e:  # ENOSPC, EDQUOT, EIO: remembered, reported at commit
            self.failed = e

    def flush(self) -> None:
        """Hand buffered content to the file (no fsync), so another reader sees it all."""
        if self.failed is None and not self._fh.closed:
            try:
                self._fh.flush()
            except OSError as e:
                self.failed = e

    def _close(self) -> None:
        if not self._fh.closed:
            try:
                self._fh.close()
            except OSError as e:
                self.failed = self.failed or e


@dataclass
class _Pending:
    writer: MessageWriter
    envelope: Envelope
    done: trio.Event = field(default_factory=trio.Event)
    error: SpoolError | None = None


class Spool:
    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.root = Path(directory)
        self.queue_dir = self.root / "queue"
        self.corrupt_dir = self.root / "corrupt"
        self.fsync = fsync
        self._pending: list[_Pending] = []
        self._committing = False
        # figures for benchmarks and metrics: how many messages each commit batch covered
        self.commit_batches = 0
        self.committed_messages = 0

    # -- start-up ----------------------------------------------------------
    def open(self) -> list[str]:
        """Create the directories, clear what no 250 was ever given for, and
        return the ids of the messages in the queue (oldest first)."""
        for d in (self.root, self.queue_dir, self.corrupt_dir):
            d.mkdir(parents=True, exist_ok=True)
        ids, contents = set(), set()
        for entry in os.scandir(self.queue_dir):
            name = entry.name
            stem, _, ext = name.rpartition(".")
            if ext == "env":
                ids.add(stem)
            elif ext == "msg":
                contents.add(stem)
            elif ext == "tmp":
                os.unlink(entry.path)
            else:
                self._move_aside(Path(entry.path), "not a spool file")
        for orphan in contents - ids:  # content whose envelope never landed: no 250 was sent
            os.unlink(self.queue_dir / f"{orphan}.msg")
        for qid in ids - contents:
            self._move_aside(self.queue_dir / f"{qid}.env", "envelope without content")
            ids.discard(qid)
        if self.fsync:
            fsync_dir(self.queue_dir)
        return sorted(ids)

    def _move_aside(self, path: Path, why: str) -> None:
        target = self.corrupt_dir / f"{path.name}.{int(time.time())}"
        try:
            os.replace(path, target)
            maillog.spool_problem(f"moved {path.name} to {target}: {why}")
        except OSError as e:
            maillog.spool_problem(f"cannot move {path} aside ({why}): {e}")

    # -- receiving -----------------------------------------------------------
    def create(self) -> MessageWriter:
        """Open the content file of a new message (raises SpoolError)."""
        for _ in range(10):
            qid = new_queue_id()
            path = self.queue_dir / f"{qid}.msg"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError as e:
                raise _spool_error("cannot create queue file", e) from e
            return MessageWriter(qid, path, os.fdopen(fd, "wb", buffering=256 * 1024))
        raise SpoolError("cannot find a free queue id")

    def abort(self, writer: MessageWriter) -> None:
        writer._close()
        try:
            os.unlink(writer.path)
        except FileNotFoundError:
            pass

    async def commit(self, writer: MessageWriter, envelope: Envelope) -> None:
        """Make the message durable; returns only when content, envelope and the
        directory entry are on disk.  Raises SpoolError (and removes the files)."""
        item = _Pending(writer, envelope)
        self._pending.append(item)
        if not self._committing:
            self._committing = True
            try:
                while self._pending:
                    batch, self._pending = self._pending, []
                    await trio.to_thread.run_sync(self._commit_batch, batch)
                    self.commit_batches += 1
                    self.committed_messages += len(batch)
                    for p in batch:
                        p.done.set()
            finally:
                self._committing = False
        await item.done.wait()
        if item.error is not None:
            raise item.error

    def _commit_batch(self, batch: list[_Pending]) -> None:
        """Runs in a worker thread: fsync each file, then the directory once."""
        landed = []
        for p in batch:
            w = p.writer
            try:
                if w.failed is None:
                    w._fh.flush()
                    if self.fsync:
                        os.fsync(w._fh.fileno())
                w._close()
                if w.failed is not None:
                    raise w.failed
                self._write_envelope(p.envelope)
                landed.append(p)
            except OSError as e:
                p.error = _spool_error("cannot write queue file", e)
                for path in (w.path, self._env_path(w.queue_id)):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
        if landed and self.fsync:
            try:
                fsync_dir(self.queue_dir)
            except OSError as e:
                for p in landed:
                    p.error = _spool_error("cannot sync the queue directory", e)

    def _env_path(self, qid: str) -> Path:
        return self.queue_dir / f"{qid}.env"

    def _write_envelope(self, envelope: Envelope) -> None:
        final = self._env_path(envelope.queue_id)
        tmp = final.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            data = envelope.to_json()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except OSError:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, final)

    # -- the scheduler's side -------------------------------------------------
    def content_path(self, qid: str) -> Path:
        return self.queue_dir / f"{qid}.msg"

    def load(self, qid: str) -> Envelope | None:
        """The envelope of ``qid``; None (and the files moved aside) if it can't be read."""
        try:
            raw = self._env_path(qid).read_bytes()
        except FileNotFoundError:
            return None
        try:
            return Envelope.from_json(raw)
        except (ValueError, TypeError, KeyError) as e:
            self._move_aside(self._env_path(qid), f"unreadable envelope: {e}")
            self._move_aside(self.content_path(qid), "its envelope was unreadable")
            return None

    async def save(self, envelope: Envelope) -> None:
        """Rewrite the envelope atomically (after a delivery attempt)."""

        def work() -> None:
            self._write_envelope(envelope)
            if self.fsync:
                fsync_dir(self.queue_dir)

        await trio.to_thread.run_sync(work)

    async def remove(self, qid: str) -> None:
        """Remove a finished message: the envelope first, so it never exists half."""

        def work() -> None:
            for path in (self._env_path(qid), self.content_path(qid)):
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
            if self.fsync:
                fsync_dir(self.queue_dir)

        await trio.to_thread.run_sync(work)


def _spool_error(what: str, e: OSError) -> SpoolError:
    return SpoolError(f"{what}: {e.strerror or e}", storage_full=e.errno in (errno.ENOSPC, errno.EDQUOT))
