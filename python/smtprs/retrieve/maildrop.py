"""A user's Maildir as a POP3 maildrop: a locked snapshot, sizes, deletions.

Reads and renames files in one Maildir (``tmp/ new/ cur/``); never writes a
message.  ``Maildrop.open`` (blocking: call it in a worker thread):

1. takes an exclusive, non-blocking ``flock`` on the Maildir directory itself,
   so one POP3 session at a time holds a maildrop (RFC 1939 section 8), across
   processes, without creating any file in the user's Maildir;
2. moves every message in ``new/`` to ``cur/``, as every Maildir reader does,
   naming it ``NAME,S=<size>,W=<size with CRLF>:2,`` (the Maildir++ size
   fields Dovecot writes too), so the POP3 size is computed once per message;
3. lists ``cur/``: that list is the session's snapshot.  Mail delivered later
   lands in ``new/`` (the agent's ``tmp/`` -> ``new/`` rename is atomic) and
   waits for the next session; it can never appear half written.

A message is identified by its unique name (the file name up to the first
``,`` or ``:``), which is also its UIDL: another client (IMAP) renaming a
file to change its flags does not lose it -- ``_find`` looks it up again by
that name.  Deletions are applied only by ``expunge`` (the UPDATE state);
a message another client removed meanwhile counts as deleted.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

CHUNK = 256 * 1024
_SIZES = re.compile(r",S=(\d+)(?:,W=(\d+))?|,W=(\d+)")
_UIDL_OK = re.compile(r"[\x21-\x7e]{1,70}")


class MaildropLocked(Exception):
    """Another session holds this maildrop."""


@dataclass
class Message:
    name: str  # current file name in cur/
    unique: str  # the part before the first "," or ":" (stable across flag changes)
    size: int  # octets as sent by POP3 (CRLF line ends), before dot-stuffing
    deleted: bool = False

    @property
    def uidl(self) -> str:
        """RFC 1939 7: 1 to 70 characters in 0x21..0x7E, the same in every session."""
        if _UIDL_OK.fullmatch(self.unique):
            return self.unique
        return hashlib.sha1(self.unique.encode("utf-8", "surrogateescape")).hexdigest()


def unique_name(filename: str) -> str:
    return re.split(r"[,:]", filename, maxsplit=1)[0]


def crlf_size(path: Path) -> int:
    """The message's size with CRLF line ends (what RETR sends, before dot-stuffing)."""
    size = 0
    prev = b""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            size += len(chunk) + chunk.count(b"\n") - chunk.count(b"\r\n")
            if prev == b"\r" and chunk[:1] == b"\n":
                size -= 1  # a CRLF cut between two chunks
            prev = chunk[-1:]
    return size


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Maildrop:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.messages: list[Message] = []
        self._lock_fd: int | None = None

    # -- life cycle (blocking; run in a worker thread) -----------------------------
    def open(self) -> None:
        """Lock, move new/ to cur/, take the snapshot.  Raises MaildropLocked, OSError."""
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise MaildropLocked(str(self.root)) from None
            raise
        self._lock_fd = fd
        try:
            self._take_new()
            self.messages = self._snapshot()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock (no deletions: those are ``expunge``'s)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _take_new(self) -> None:
        new, cur = self.root / "new", self.root / "cur"
        moved = False
        for entry in os.scandir(new):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            try:
                size = entry.stat().st_size
                vsize = crlf_size(Path(entry.path))
                base = entry.name.split(":", 1)[0]
                if ",S=" not in base and ",W=" not in base:
                    base += f",S={size},W={vsize}"
                os.rename(entry.path, cur / f"{base}:2,")
                moved = True
            except FileNotFoundError:
                continue  # taken by another reader meanwhile
        if moved:
            _fsync_dir(cur)
            _fsync_dir(new)

    def _snapshot(self) -> list[Message]:
        out = []
        for entry in os.scandir(self.root / "cur"):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            m = _SIZES.search(entry.name.split(":", 1)[0])
            vsize = int(m.group(2) or m.group(3)) if m and (m.group(2) or m.group(3)) else None
            try:
                size = vsize if vsize is not None else crlf_size(Path(entry.path))
            except FileNotFoundError:
                continue
            out.append(Message(entry.name, unique_name(entry.name), size))
        # oldest first: Maildir names start with the delivery time in seconds
        out.sort(key=lambda msg: (_leading_int(msg.unique), msg.unique))
        return out

    # -- reading ------------------------------------------------------------------------
    def path_of(self, msg: Message) -> Path | None:
        """The message's file now (found again by its unique name if it was renamed); None if gone."""
        path = self.root / "cur" / msg.name
        if path.exists():
            return path
        for entry in os.scandir(self.root / "cur"):
            if unique_name(entry.name) == msg.unique:
                msg.name = entry.name
                return Path(entry.path)
        return None

    # -- UPDATE ------------------------------------------------------------------------
    def expunge(self) -> tuple[int, list[str]]:
        """Remove the messages marked deleted: (number removed, problems)."""
        removed, problems = 0, []
        for msg in self.messages:
            if not msg.deleted:
                continue
            path = self.path_of(msg)
            if path is None:
                removed += 1  # another client removed it already: it is gone, as asked
                continue
            try:
                os.unlink(path)
                removed += 1
            except FileNotFoundError:
                removed += 1
            except OSError as e:
                problems.append(f"{msg.unique}: {e.strerror or e}")
        if removed:
            try:
                _fsync_dir(self.root / "cur")
            except OSError as e:
                problems.append(f"cur/: {e.strerror or e}")
        return removed, problems


def _leading_int(name: str) -> int:
    m = re.match(r"\d+", name)
    return int(m.group()) if m else 0
