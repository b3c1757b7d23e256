"""The segment spool's record format and the small pieces its modules share:
queue ids, the index entry of a live message, file helpers.

A segment (``seg/NNNNNNNNNNNN.seg``) is a run of records, each
``magic "SMR1" | kind | payload length (u32 LE) | crc32 of payload (u32 LE) | payload``:
``M`` (a new message: envelope length, flags, the envelope as JSON, then --
with the ``INLINE`` flag -- the content) or ``D`` (a finished message: its
queue id).
"""

from __future__ import annotations

import errno
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpoolError

_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZ"  # 31 symbols, no vowels: ids never spell words

# record: magic, kind, payload length, crc32 of payload
HEAD = struct.Struct("<4sBII")
MAGIC = b"SMR1"
KIND_MESSAGE = ord("M")
KIND_DONE = ord("D")
# M payload: envelope length, flags, envelope JSON, then the content (inline only)
MHEAD = struct.Struct("<IB")
INLINE = 1


def new_queue_id() -> str:
    """A time-ordered, unique-enough queue id (time in microseconds, base 31, + 4 random)."""
    n = time.time_ns() // 1000
    out = []
    while n:
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    r = int.from_bytes(os.urandom(3), "big") % len(_ALPHABET) ** 4  # one getrandom, not four
    for _ in range(4):
        r, i = divmod(r, len(_ALPHABET))
        out.insert(0, _ALPHABET[i])
    return "".join(reversed(out))


def queue_id_time(qid: str) -> float | None:
    """When a queue id was made (seconds since the epoch), read back from the id; None if it is not one of ours."""
    n = 0
    for ch in qid[:-4]:
        i = _ALPHABET.find(ch)
        if i < 0:
            return None
        n = n * len(_ALPHABET) + i
    return n / 1e6 if qid[:-4] else None


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Entry:
    """Where a live message is. seg == 0: moved out (files/ID.env + files/ID.msg)."""

    seg: int
    env_off: int = 0
    env_len: int = 0
    content_off: int = 0  # -1: content in files/ID.msg
    content_len: int = 0


def regular_file(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_file(follow_symlinks=False)
    except OSError:
        return False


def unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def spool_error(what: str, e: OSError) -> SpoolError:
    return SpoolError(f"{what}: {e.strerror or e}", storage_full=e.errno in (errno.ENOSPC, errno.EDQUOT))
