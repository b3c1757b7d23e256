"""A stored message's content, as every stage after the spool reads it.

``Content`` says where the bytes are (a whole file, or a range of a spool
segment); ``RangeReader`` reads them with pread, so a segment shared by many
messages is never seeked.  The spool makes them; delivery agents, bounces,
hooks and the library API read them.  Outside queue/ so that those readers
do not import the spool.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Content:
    """Where a message's content is: a whole file, or a range of a segment."""

    path: Path
    offset: int
    length: int

    def open(self) -> RangeReader:
        return RangeReader(self)


class RangeReader:
    """A read-only binary file over ``Content`` (pread, so segments are never seeked)."""

    def __init__(self, content: Content) -> None:
        self._fd = os.open(content.path, os.O_RDONLY | os.O_CLOEXEC)
        self._pos = content.offset
        self._end = content.offset + content.length

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        if n < 0 or n > left:
            n = left
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._pos)
        self._pos += len(data)
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
