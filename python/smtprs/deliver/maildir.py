"""Maildir delivery: the MDA for local mailboxes.

Writes each recipient's copy as ``tmp/NAME`` (O_EXCL-free rewrite of a stale
temp file is fine: the name is ours), fsyncs it, renames it into ``new/`` and
fsyncs ``new/``.  NAME is derived from the queue id and the recipient's index
(``<arrival>.Q<qid>R<index>.<host>``), so delivering the same recipient twice
after a crash finds ``new/NAME`` and does not make a second copy.

The copy is the spooled content with LF line ends (as Unix mailbox files and
Dovecot expect), preceded by ``Return-Path:`` (RFC 5321 4.4) and
``Delivered-To:``.  Disk trouble defers (4.2.2 when full, 4.3.0 otherwise);
the queue retries.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import trio

from .. import _core
from ..route.router import LocalMailbox
from .base import DeliveryRequest, Outcome

CHUNK = 256 * 1024


def _safe_host(host: str) -> str:
    # Maildir names: "/" and ":" are not allowed in the host part
    return host.replace("/", "\\057").replace(":", "\\072")


def maildir_name(request: DeliveryRequest, index: int, host: str) -> str:
    return f"{int(request.arrival)}.Q{request.queue_id}R{index}.{_safe_host(host)}"


def ensure_maildir(root: Path) -> None:
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MaildirAgent:
    name = "maildir"

    def __init__(self, hostname: str, *, fsync: bool = True) -> None:
        self.hostname = hostname
        self.fsync = fsync

    async def deliver(self, request: DeliveryRequest) -> list[Outcome]:
        return await trio.to_thread.run_sync(self._deliver_all, request)

    def _deliver_all(self, request: DeliveryRequest) -> list[Outcome]:
        outcomes = []
        for t in request.targets:
            assert isinstance(t.hop, LocalMailbox)
            try:
                name = self._deliver_one(request, t.index, t.address, t.hop)
                outcomes.append(Outcome(t.index, "delivered", f"delivered to maildir {t.hop.maildir}/new/{name}", "local"))
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    detail = f"452 4.2.2 mailbox full: {e.strerror}"
                else:
                    detail = f"451 4.3.0 cannot write maildir {t.hop.maildir}: {e.strerror or e}"
                outcomes.append(Outcome(t.index, "deferred", detail, "local"))
        return outcomes

    def _deliver_one(self, request: DeliveryRequest, index: int, address: str, box: LocalMailbox) -> str:
        name = maildir_name(request, index, self.hostname)
        final = box.maildir / "new" / name
        if final.exists():  # delivered before a crash lost the bookkeeping
            return name
        ensure_maildir(box.maildir)
        tmp = box.maildir / "tmp" / name
        head = f"Return-Path: <{request.sender}>\nDelivered-To: {address}\n".encode()
        conv = _core.LfConverter()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with open(request.content, "rb") as src, os.fdopen(fd, "wb", buffering=CHUNK, closefd=False) as out:
                out.write(head)
                while chunk := src.read(CHUNK):
                    out.write(conv.feed(chunk))
                out.write(conv.finish())
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        os.close(fd)
        os.rename(tmp, final)
        if self.fsync:
            _fsync_dir(final.parent)
        return name
