"""The spool: the durable store of accepted messages (content + envelope).

Layout under the spool directory::

    seg/NNNNNNNNNNNN.seg  append-only segments: records of new messages (M: the
                          envelope and, inline, the content) and of finished ones
                          (D: the queue id); checksummed, written in batches
    files/ID.msg          content kept as a file of its own: messages too big to
                          hold in memory while they arrive, and every message that
                          was deferred (moved out of its segment)
    files/ID.env          the envelope of a moved-out message, rewritten atomically
                          after each delivery attempt
    corrupt/              files that could not be read, moved aside and logged

Why segments (see docs/internals.md): creating, writing, fsyncing and renaming a
file per message, plus a directory fsync, costs ~450 µs of kernel CPU per
message here; appending the message to a shared segment and fdatasync'ing once
per batch costs ~20 µs.  Most mail is delivered at its first attempt, so the
segment is where most messages live and die; mail that has to wait is moved
into files/ (Postfix's deferred queue has the same shape), so a segment is
not pinned for days by one slow destination.

Durability (``commit``): a batch of messages is appended to the active segment
in one write and fdatasync'd (content files of big messages are fsync'd first,
and files/ once); only then does ``commit`` return and the session answer 250.
A record is valid only if its checksum is; a torn tail (a crash in the middle
of a batch, before any of it was acknowledged) is ignored at start-up, and new
records always go to a new segment after a restart.  ``remove`` appends a D
record through the same batches, so a finished message never comes back.

Segments are deleted oldest first, once every message in them is finished:
D records for an old segment live in newer ones, so a newer segment must not
disappear before the older one it speaks about.

Memory: the index holds, per live message, where its envelope and content are
(not the envelope itself); a message being received is held in memory up to
``inline_max`` octets and within a total budget, beyond which it streams to its
own file.
"""

from __future__ import annotations

import errno
import functools
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, cast

import trio

from .. import _threads, maillog
from ..content import Content
from ..envelope import Envelope
from ..errors import SpoolError
from .records import (
    HEAD,
    INLINE,
    KIND_DONE,
    KIND_MESSAGE,
    MAGIC,
    MHEAD,
    Entry,
    fsync_dir,
    new_queue_id,
    queue_id_time,
    spool_error,
    unlink_quietly,
)
from .recovery import SpoolRecovery

if TYPE_CHECKING:
    from .backend import Writer

SEGMENT_MAX = 32 * 1024 * 1024
FRESH_MAX = 10_000  # envelopes kept for the first delivery attempt (see Spool._fresh)


class MessageWriter:
    """The content of a message being received: in memory while small, else a file."""

    def __init__(self, spool: Spool, queue_id: str) -> None:
        self.queue_id = queue_id
        self.size = 0
        self.failed: OSError | None = None
        self._spool = spool
        self._buf: bytearray | None = bytearray()
        self._fh: BinaryIO | None = None
        self.path: Path | None = None  # set when the content spilled to its own file
        self._head = b""  # prepended fields (DKIM-Signature) not yet in place: see prepend

    def write(self, data: bytes) -> None:
        if self.failed is not None:
            return
        try:
            if self._buf is not None:
                if len(self._buf) + len(data) <= self._spool.inline_max and self._spool._reserve(len(data)):
                    self._buf += data
                    self.size += len(data)
                    return
                self._spill()
            assert self._fh is not None
            self._fh.write(data)
            self.size += len(data)
        except OSError as e:  # ENOSPC, EDQUOT, EIO: remembered, reported at commit
            self.failed = e

    def prepend(self, data: bytes) -> None:
        """Put ``data`` before the content (see the backend interface).  Content
        still in memory gets it at commit, in the record (no copy); a spilled
        file is rewritten with it in front before the commit (``_put_head``)."""
        if self.failed is not None:
            return
        self._head = data + self._head
        self.size += len(data)

    def _put_head(self) -> None:
        """Runs in a worker thread: write files/ID.msg anew with the prepended
        fields first and the content copied behind them in the kernel
        (copy_file_range), then rename it over the old file.  A crash leaves at
        most a files/ID.msg.tmp, removed at start-up."""
        assert self._fh is not None and self.path is not None
        try:
            self._fh.flush()
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            fh = os.fdopen(fd, "wb", buffering=256 * 1024)
            try:
                fh.write(self._head)
                fh.flush()
                src = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)  # (the writer's own is write-only)
                try:
                    left = self.size - len(self._head)
                    offset = 0
                    while left > 0:
                        n = os.copy_file_range(src, fd, left, offset)
                        if n == 0:
                            raise OSError(errno.EIO, "queue file shorter than written")
                        offset += n
                        left -= n
                finally:
                    os.close(src)
                os.replace(tmp, self.path)
            except BaseException:
                fh.close()
                unlink_quietly(tmp)
                raise
            self._fh.close()
            self._fh = fh
            fh.seek(0, os.SEEK_END)
            self._head = b""
        except OSError as e:
            self.failed = self.failed or e

    def staged(self) -> Content:
        """The content received so far, as a file another reader can open: for
        a message delivered without being queued (the LMTP listener).  Spills
        it to files/ID.msg if it is still in memory and flushes it (no fsync:
        the mailbox write is the durable one); ``abort`` removes the file, and
        a crash leaves a file without a record, removed at start-up.
        Raises OSError."""
        if self.failed is not None:
            raise self.failed
        if self._buf is not None:
            self._spill()  # (writes a prepended field first)
        elif self._head:
            self._put_head()
            if self.failed is not None:
                raise self.failed
        assert self._fh is not None and self.path is not None
        self._fh.flush()
        return Content(self.path, 0, self.size)

    def _spill(self) -> None:
        path = self._spool.files_dir / f"{self.queue_id}.msg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.path = path
        self._fh = os.fdopen(fd, "wb", buffering=256 * 1024)
        assert self._buf is not None
        self._fh.write(self._head)
        self._head = b""
        self._fh.write(self._buf)
        self._release()

    def _release(self) -> None:
        if self._buf is not None:
            self._spool._reserved -= len(self._buf)
            self._buf = None

    def _close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            try:
                self._fh.close()
            except OSError as e:
                self.failed = self.failed or e


@dataclass
class _Pending:
    record: bytes  # M or D record
    writer: MessageWriter | None = None
    envelope: Envelope | None = None
    done: trio.Event = field(default_factory=trio.Event)
    error: SpoolError | None = None
    record_offset: int = 0  # where the record landed in the active segment


class Spool(SpoolRecovery):
    """The segment spool backend (see the module docstring); start-up is recovery.py's."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: bool = True,
        inline_max: int = 256 * 1024,
        memory_budget: int = 64 * 1024 * 1024,
    ) -> None:
        self.root = Path(directory)
        self.seg_dir = self.root / "seg"
        self.files_dir = self.root / "files"
        self.corrupt_dir = self.root / "corrupt"
        self.fsync = fsync
        self.inline_max = inline_max
        self.memory_budget = memory_budget
        self._reserved = 0
        self._index: dict[str, Entry] = {}
        self._live: dict[int, int] = {}  # segment -> live messages in it
        self._segments: list[int] = []  # existing segments, oldest first
        self._active = 0
        self._active_fd = -1
        self._active_size = 0
        self._pending: list[_Pending] = []
        self._committing = False
        self._missing: dict[str, tuple[int, bytes]] = {}  # (start-up only: see recovery.py)
        # Envelopes just committed, handed to the first load() (the scheduler's
        # first attempt) so that it need not read back and parse what it was
        # given a moment ago.  Bounded; any other change to a message drops its entry.
        self._fresh: dict[str, Envelope] = {}
        # figures for benchmarks and metrics: how many records each fdatasync covered
        self.commit_batches = 0
        self.committed_messages = 0

    def _close_active(self) -> None:
        if self._active_fd >= 0:
            os.close(self._active_fd)
            self._active_fd = -1

    def close(self) -> None:
        self._close_active()

    def free_space(self) -> int | None:
        """Octets free for us on the spool's file system (None if it cannot be told)."""
        try:
            st = os.statvfs(self.root)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    # -- receiving -----------------------------------------------------------
    def _reserve(self, n: int) -> bool:
        if self._reserved + n > self.memory_budget:
            return False
        self._reserved += n
        return True

    def create(self) -> MessageWriter:
        """A writer for the content of a new message."""
        qid = new_queue_id()
        while qid in self._index:
            qid = new_queue_id()
        return MessageWriter(self, qid)

    def abort(self, w: Writer) -> None:
        writer = cast(MessageWriter, w)  # (ours: the backend interface names the protocol)
        writer._release()
        writer._close()
        if writer.path is not None:
            try:
                os.unlink(writer.path)
            except FileNotFoundError:
                pass

    async def commit(self, w: Writer, envelope: Envelope) -> None:
        """Make the message durable; returns only when it is on disk.
        Raises SpoolError (and forgets the message)."""
        writer = cast(MessageWriter, w)
        if writer.failed is not None:
            self.abort(writer)
            raise spool_error("cannot write queue file", writer.failed)
        env = envelope.to_json()
        if writer._buf is not None:
            payload = MHEAD.pack(len(env), INLINE) + env + writer._head + writer._buf
        else:
            if writer._head:
                await trio.to_thread.run_sync(writer._put_head)
                if writer.failed is not None:
                    self.abort(writer)
                    raise spool_error("cannot write queue file", writer.failed)
            payload = MHEAD.pack(len(env), 0) + env
        item = _Pending(HEAD.pack(MAGIC, KIND_MESSAGE, len(payload), zlib.crc32(payload)) + payload, writer, envelope)
        await self._submit(item)

    async def _submit(self, item: _Pending) -> None:
        await self._submit_many([item])
        if item.error is not None:
            raise item.error

    async def _submit_many(self, items: list[_Pending]) -> None:
        """Queue records for the next group commit and wait until all are written
        (each item's ``error`` says how it went; nothing is raised)."""
        self._pending.extend(items)
        if not self._committing:
            self._committing = True
            try:
                while self._pending:
                    batch, self._pending = self._pending, []
                    await _threads.run_sync(functools.partial(self._write_batch, batch))
                    self.commit_batches += 1
                    self.committed_messages += len(batch)
                    self._after_batch(batch)
            finally:
                self._committing = False
        for item in items:
            if not item.done.is_set():
                await item.done.wait()

    def _write_batch(self, batch: list[_Pending]) -> None:
        """Runs in a worker thread: one append and one fdatasync for the whole batch."""
        spilled = False
        for p in batch:
            w = p.writer
            if w is None or w._fh is None:
                continue
            try:
                w._fh.flush()
                if self.fsync:
                    os.fsync(w._fh.fileno())
                w._close()
                if w.failed is not None:
                    raise w.failed
                spilled = True
            except OSError as e:
                p.error = spool_error("cannot write queue file", e)
        start = -1  # where this batch begins in the active segment
        try:
            if spilled and self.fsync:
                fsync_dir(self.files_dir)
            new_segment = self._active_fd < 0 or self._active_size >= SEGMENT_MAX
            if new_segment:
                self._rotate()
            start = offset = self._active_size
            chunks = []
            for p in batch:
                if p.error is None:
                    p.record_offset = offset
                    offset += len(p.record)
                    chunks.append(p.record)
            data = b"".join(chunks)
            view = memoryview(data)
            while view:
                view = view[os.write(self._active_fd, view) :]
            if self.fsync:
                os.fdatasync(self._active_fd)
                if new_segment:
                    fsync_dir(self.seg_dir)
            self._active_size += len(data)
        except OSError as e:
            # None of this batch is acknowledged, so none of it may come back
            # after a restart: cut off what was written (whole records among
            # it would be valid).  The next batch goes to a new segment.
            if start >= 0 and self._active_fd >= 0:
                try:
                    os.ftruncate(self._active_fd, start)
                    if self.fsync:
                        os.fdatasync(self._active_fd)
                except OSError as e2:
                    maillog.spool_problem(
                        f"segment {self._active}: cannot cut off a failed batch at {start}: {e2.strerror or e2}"
                    )
            self._close_active()
            err = spool_error("cannot write the queue", e)
            for p in batch:
                if p.error is None:
                    p.error = err

    def _rotate(self) -> None:
        self._close_active()
        if self._segments and self._segments[-1] >= self._active:
            self._active = self._segments[-1] + 1
        path = self._seg_path(self._active)
        self._active_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._active_size = 0
        self._segments.append(self._active)
        self._live.setdefault(self._active, 0)

    def _after_batch(self, batch: list[_Pending]) -> None:
        """Back on the Trio thread: index what landed, wake the waiters."""
        for p in batch:
            w = p.writer
            if p.error is None and w is not None and p.envelope is not None:
                env_len, flags = MHEAD.unpack_from(p.record, HEAD.size)
                env_off = p.record_offset + HEAD.size + MHEAD.size
                if flags & INLINE:
                    entry = Entry(self._active, env_off, env_len, env_off + env_len, w.size)
                else:
                    entry = Entry(self._active, env_off, env_len, -1, 0)
                self._index[w.queue_id] = entry
                self._live[self._active] = self._live.get(self._active, 0) + 1
                if len(self._fresh) < FRESH_MAX:
                    self._fresh[w.queue_id] = p.envelope
            if w is not None:
                w._release()
                if p.error is not None:
                    self.abort(w)
            p.done.set()
        self._drop_dead_segments()

    def _drop_dead_segments(self) -> None:
        """Delete finished segments, oldest first (see the module docstring)."""
        while self._segments and self._segments[0] != self._active and self._live.get(self._segments[0], 0) <= 0:
            seg = self._segments.pop(0)
            self._live.pop(seg, None)
            try:
                os.unlink(self._seg_path(seg))
            except FileNotFoundError:
                pass

    # -- the scheduler's side -------------------------------------------------
    def __contains__(self, qid: str) -> bool:
        return qid in self._index

    @property
    def count(self) -> int:
        """Messages queued."""
        return len(self._index)

    def ids(self) -> list[str]:
        """The queue ids of every queued message (oldest first: ids are time-ordered)."""
        return sorted(self._index)

    def oldest_arrival(self) -> float | None:
        """When the oldest queued message arrived (read from its id), None if the spool is empty."""
        return queue_id_time(min(self._index)) if self._index else None

    def content(self, qid: str) -> Content:
        entry = self._index[qid]
        if entry.seg and entry.content_off >= 0:
            return Content(self._seg_path(entry.seg), entry.content_off, entry.content_len)
        path = self.files_dir / f"{qid}.msg"
        return Content(path, 0, path.stat().st_size)

    def load(self, qid: str) -> Envelope | None:
        """The envelope of ``qid``; None if it is not queued or can't be read (moved aside)."""
        entry = self._index.get(qid)
        if entry is None:
            return None
        fresh = self._fresh.pop(qid, None)
        if fresh is not None:
            return fresh
        try:
            if entry.seg:
                with open(self._seg_path(entry.seg), "rb") as fh:
                    fh.seek(entry.env_off)
                    raw = fh.read(entry.env_len)
            else:
                raw = (self.files_dir / f"{qid}.env").read_bytes()
            return Envelope.from_json(raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as e:
            if not entry.seg:
                self._move_aside(self.files_dir / f"{qid}.env", f"unreadable envelope: {e}")
                self._move_aside(self.files_dir / f"{qid}.msg", "its envelope was unreadable")
                del self._index[qid]
            else:
                maillog.spool_problem(f"{qid}: cannot read its envelope in segment {entry.seg}: {e}")
            return None

    async def save(self, envelope: Envelope) -> None:
        """Record the envelope after a delivery attempt left recipients to retry.
        A message still in a segment is moved out into files/ first."""
        (error,) = await self.save_many([envelope])
        if error is not None:
            raise error

    def _write_env_file(self, envelope: Envelope) -> None:
        final = self.files_dir / f"{envelope.queue_id}.env"
        tmp = final.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            data = memoryview(envelope.to_json())
            while data:
                data = data[os.write(fd, data) :]
            if self.fsync:
                os.fsync(fd)
        except OSError:
            unlink_quietly(tmp)  # a full disk must not leave half an envelope behind
            raise
        finally:
            os.close(fd)
        os.replace(tmp, final)
        if self.fsync:
            fsync_dir(self.files_dir)

    def _move_out(self, envelope: Envelope, content: Content, copy: bool) -> None:
        """Copy the content out of its segment (if it is there) and write the envelope file.
        On failure (a full disk) nothing is left behind: the message stays in its segment."""
        path = self.files_dir / f"{envelope.queue_id}.msg"
        try:
            if copy:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    with content.open() as src:
                        while chunk := src.read(1024 * 1024):
                            view = memoryview(chunk)
                            while view:
                                view = view[os.write(fd, view) :]
                    if self.fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            self._write_env_file(envelope)  # fsyncs files/ as well
        except OSError:
            if copy:
                unlink_quietly(path)
            raise

    async def remove(self, qid: str) -> None:
        """Forget a finished message, durably (it never comes back after a restart)."""
        (error,) = await self.remove_many([qid])
        if error is not None:
            raise error

    # -- batches (the scheduler's batched delivery) -----------------------------
    async def save_many(self, envelopes: Sequence[Envelope]) -> list[Exception | None]:
        """``save`` for several envelopes: the files are written in one worker-thread
        hand-off and the segment records of the messages moved out go in one
        group commit.  Returns each envelope's error (None: saved), in order."""
        errors: list[Exception | None] = [None] * len(envelopes)
        jobs: list[tuple[int, Envelope, Entry, Content | None]] = []
        for i, env in enumerate(envelopes):
            qid = env.queue_id
            self._fresh.pop(qid, None)
            try:
                entry = self._index[qid]
                jobs.append((i, env, entry, self.content(qid) if entry.seg else None))
            except Exception as e:  # not queued (KeyError), its content file gone
                errors[i] = e

        def work() -> list[OSError | None]:
            out: list[OSError | None] = []
            for _, env, entry, content in jobs:
                try:
                    if content is None:
                        self._write_env_file(env)
                    else:
                        self._move_out(env, content, entry.content_off >= 0)
                    out.append(None)
                except OSError as e:
                    out.append(e)
            return out

        results = await trio.to_thread.run_sync(work) if jobs else []
        moved: list[tuple[int, str, Entry]] = []
        for (i, env, entry, _), err in zip(jobs, results):
            if err is not None:
                errors[i] = err
            elif entry.seg:
                self._index[env.queue_id] = Entry(0)
                moved.append((i, env.queue_id, entry))
        if moved:
            for (i, _, _), err2 in zip(moved, await self._finish_many([(q, e) for _, q, e in moved])):
                errors[i] = err2
        return errors

    async def _finish_many(self, items: list[tuple[str, Entry]]) -> list[SpoolError | None]:
        """D records for messages leaving their segments, in one group commit."""
        pending = []
        for qid, _ in items:
            record = qid.encode("ascii")
            pending.append(_Pending(HEAD.pack(MAGIC, KIND_DONE, len(record), zlib.crc32(record)) + record))
        await self._submit_many(pending)
        for (_, entry), p in zip(items, pending):
            if p.error is None:
                self._live[entry.seg] = self._live.get(entry.seg, 0) - 1
        self._drop_dead_segments()
        return [p.error for p in pending]

    async def remove_many(self, qids: Sequence[str]) -> list[Exception | None]:
        """``remove`` for several messages: their D records in one group commit,
        the files to unlink in one worker-thread hand-off (and files/ fsync'd
        once).  Returns each message's error (None: removed), in order."""
        errors: list[Exception | None] = [None] * len(qids)
        in_segments: list[tuple[int, str, Entry]] = []
        unlinks: list[tuple[int, str, bool]] = []  # (position, qid, the envelope file too)
        for i, qid in enumerate(qids):
            self._fresh.pop(qid, None)
            entry = self._index.pop(qid, None)
            if entry is None:
                continue
            if entry.seg:
                in_segments.append((i, qid, entry))
            else:
                unlinks.append((i, qid, True))
        if in_segments:
            results = await self._finish_many([(q, e) for _, q, e in in_segments])
            for (i, qid, entry), err in zip(in_segments, results):
                if err is not None:
                    self._index[qid] = entry  # still queued; the scheduler tries again
                    errors[i] = err
                elif entry.content_off < 0:
                    unlinks.append((i, qid, False))
        if unlinks:
            envelope_files = any(env for _, _, env in unlinks)

            def work() -> None:
                for _, qid, env in unlinks:
                    if env:
                        unlink_quietly(self.files_dir / f"{qid}.env")  # the envelope first: never half a message
                    unlink_quietly(self.files_dir / f"{qid}.msg")
                if envelope_files and self.fsync:
                    fsync_dir(self.files_dir)

            try:
                await trio.to_thread.run_sync(work)
            except OSError as e:
                for i, _, _ in unlinks:
                    errors[i] = e
        return errors


def read_queue(directory: Path) -> list[tuple[Envelope, int]]:
    """Every queued envelope with its content size, read without changing anything
    (for `smtprs queue list` while the server runs).  ``directory`` is a shard, or
    the spool root holding ``shard-N`` directories (all of them are read)."""
    directory = Path(directory)
    shards = sorted(p for p in directory.glob("shard-*") if p.is_dir()) if directory.is_dir() else []
    if shards:
        return [item for shard in shards for item in read_queue(shard)]
    spool = Spool(directory)
    out: list[tuple[Envelope, int]] = []
    # a read-only variant of open(): no clean-up, no directory creation
    if not spool.seg_dir.is_dir():
        return out
    contents = {p.stem for p in spool.files_dir.glob("*.msg")}
    for p in spool.files_dir.glob("*.env"):
        if p.stem in contents:
            spool._index[p.stem] = Entry(0)
    segs = sorted(int(p.stem) for p in spool.seg_dir.glob("*.seg") if p.stem.isdigit())
    spool._segments = segs
    # (a message without its content is not listed; the server's start-up
    # reports it, this read-only listing does not: it may race a removal)
    for seg in segs:
        try:
            spool._scan_segment(seg, contents)
        except FileNotFoundError:
            continue
    for qid in sorted(spool._index):
        env = spool.load(qid)
        if env is not None:
            try:
                size = spool.content(qid).length
            except FileNotFoundError:
                continue
            out.append((env, size))
    return out
