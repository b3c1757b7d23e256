"""Maildir delivery: the MDA for local mailboxes.

Each recipient's copy is written as ``tmp/NAME``, fsync'd, renamed into
``new/`` and ``new/`` is fsync'd.  NAME is derived from the queue id and the
recipient's index (``<arrival>.Q<qid>R<index>.<host>``), so delivering the
same recipient again after a crash finds ``new/NAME`` and makes no second copy.

Deliveries that arrive while a batch is being written go together into the
next one: one call into the Rust core (``_core.write_files``) writes the whole
batch with the GIL released and fsyncs each ``new/`` directory once per batch
(group commit again; see docs/internals.md for why this is not done with
Python file calls in a worker thread).

The copy is the spooled content with LF line ends (as Unix mailbox files and
Dovecot expect), preceded by ``Return-Path:`` (RFC 5321 4.4) and
``Delivered-To:``.  Disk trouble defers (4.2.2 when full, 4.3.0 otherwise);
the queue retries.
"""

from __future__ import annotations

import errno
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import trio

from .. import _core, _threads
from ..hops import LocalMailbox
from .base import DeliveryRequest, Outcome


def _safe_host(host: str) -> str:
    # Maildir names: "/" and ":" are not allowed in the host part
    return host.replace("/", "\\057").replace(":", "\\072")


def maildir_name(request: DeliveryRequest, index: int, host: str) -> str:
    return f"{int(request.arrival)}.Q{request.queue_id}R{index}.{_safe_host(host)}"


def make_dir(path: Path, mode: int = 0o700, owner: tuple[int, int] | None = None) -> None:
    """``mkdir -p``; the directory itself, when made here, gets ``mode``
    (exactly, whatever the umask) and ``owner``.  One that exists is left as
    it is: its owner and mode are the administrator's."""
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        return
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            return
    try:
        if mode != 0o700:
            os.chmod(path, mode)
        if owner is not None:
            os.chown(path, *owner)
    except OSError:
        path.rmdir()  # not left behind with the wrong owner for the retry to find
        raise


def ensure_maildir(root: Path, mode: int = 0o700, owner: tuple[int, int] | None = None) -> None:
    make_dir(root, mode, owner)
    for sub in ("tmp", "new", "cur"):
        make_dir(root / sub, mode, owner)


@dataclass
class _Batch:
    jobs: list[tuple[Path, int, int, bytes, str, str, int, tuple[int, int] | None]] = field(default_factory=list)
    results: list[tuple[int, str] | None] = field(default_factory=list)
    done: trio.Event = field(default_factory=trio.Event)


class MaildirAgent:
    name = "maildir"

    def __init__(self, hostname: str, *, fsync: bool = True) -> None:
        self.hostname = hostname
        self.fsync = fsync
        self._known: set[Path] = set()  # Maildirs seen to exist (tmp/ new/ cur/)
        self._next = _Batch()
        self._writing = False
        self.batches = 0
        self.files = 0

    async def deliver(self, request: DeliveryRequest) -> list[Outcome]:
        outcomes: list[Outcome] = []
        jobs: list[tuple[Path, int, int, bytes, str, str, int, tuple[int, int] | None]] = []
        targets: list[tuple[int, LocalMailbox]] = []
        content = request.content
        for t in request.targets:
            assert isinstance(t.hop, LocalMailbox)
            box = t.hop
            try:
                if box.maildir not in self._known:
                    await trio.to_thread.run_sync(ensure_maildir, box.maildir, box.mode, box.owner)
                    self._known.add(box.maildir)
            except OSError as e:
                outcomes.append(_failure(t.index, box, e.errno, e.strerror or str(e)))
                continue
            name = maildir_name(request, t.index, self.hostname)
            head = f"Return-Path: <{request.sender}>\nDelivered-To: {t.address}\n".encode()
            targets.append((t.index, box))
            root = str(box.maildir)  # (strings: two pathlib joins per file cost more than the rest of this loop)
            jobs.append(
                (
                    content.path,
                    content.offset,
                    content.length,
                    head,
                    f"{root}/tmp/{name}",
                    f"{root}/new/{name}",
                    box.mode & 0o666,
                    box.owner,
                )
            )
        if not jobs:
            return outcomes
        batch = self._next  # no await between here and the append: the batch is still open
        first = len(batch.jobs)
        batch.jobs.extend(jobs)
        await self._run(batch)
        for k, (index, box) in enumerate(targets):
            err = batch.results[first + k]
            if err is None:
                outcomes.append(Outcome(index, "delivered", f"delivered to maildir {jobs[k][5]}", "local"))
            else:
                if err[0] == errno.ENOENT:
                    self._known.discard(box.maildir)  # someone removed it: make it again next time
                outcomes.append(_failure(index, box, err[0], err[1]))
        return outcomes

    async def _run(self, batch: _Batch) -> None:
        """Wait until ``batch`` has been written: the first caller writes batches
        until none is left; the others wait for theirs."""
        if not self._writing:
            self._writing = True
            try:
                while self._next.jobs:
                    current, self._next = self._next, _Batch()
                    jobs = current.jobs
                    write = functools.partial(_core.write_files, jobs, to_lf=True, fsync=self.fsync)  # type: ignore[arg-type]
                    current.results = await _threads.run_sync(write)
                    self.batches += 1
                    self.files += len(current.jobs)
                    current.done.set()
            finally:
                self._writing = False
        await batch.done.wait()


def _failure(index: int, box: LocalMailbox, code: int | None, text: str) -> Outcome:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return Outcome(index, "deferred", f"452 4.2.2 mailbox full: {text}", "local")
    return Outcome(index, "deferred", f"451 4.3.0 cannot write maildir {box.maildir}: {text}", "local")
