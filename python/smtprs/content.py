"""A stored message's content, as every stage after the spool reads it.

``Content`` says where the bytes are (a whole file, or a range of a spool
segment); ``RangeReader`` reads them with pread, so a segment shared by many
messages is never seeked.  The spool makes them; delivery agents, bounces,
hooks and the library API read them.  Outside queue/ so that those readers
do not import the spool.

``Content.headers()`` parses the header block with the standard library's
email parser (``BytesHeaderParser``, ``policy.default``), reading only the
header block from the file (at most ``HEADER_READ_MAX`` octets), so a filter
never has to search raw bytes for a field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from pathlib import Path

HEADER_READ_MAX = 1024 * 1024  # the header block read by headers(), at most (the session bounds it lower)
_READ_CHUNK = 16 * 1024


@dataclass(frozen=True)
class Content:
    """Where a message's content is: a whole file, or a range of a segment."""

    path: Path
    offset: int
    length: int

    def open(self) -> RangeReader:
        return RangeReader(self)

    def headers(self, limit: int = HEADER_READ_MAX) -> EmailMessage:
        """The message's header fields, parsed (``policy.default``): ``h["Subject"]``,
        ``h.get_all("Received")``, ``h.items()`` in order.  Only the header
        block is read (up to the empty line that ends it, at most ``limit``
        octets); the result has no body.  Malformed fields do not raise: the
        parser keeps what it can and notes the problem in ``h.defects`` or the
        field's own ``defects``.  A header block longer than ``limit`` is cut
        at its last complete line within it."""
        return parse_headers(read_header_block(self, limit))


def read_header_block(content: Content, limit: int = HEADER_READ_MAX) -> bytes:
    """The header block of ``content``: everything before the empty line that
    ends it (the lines keep their line ends), at most ``limit`` octets (then
    up to the last line end within them).  Reads in chunks; never the body."""
    buf = bytearray()
    with content.open() as fh:
        while len(buf) < limit:
            chunk = fh.read(min(_READ_CHUNK, limit - len(buf)))
            if not chunk:
                return bytes(buf)  # no body: the whole message is header
            start = max(0, len(buf) - 3)
            buf += chunk
            if buf.startswith((b"\r\n", b"\n")):
                return b""  # an empty header block: the message starts with its body
            ends = [(i, len(end) // 2) for end in (b"\r\n\r\n", b"\n\n") if (i := buf.find(end, start)) >= 0]
            if ends:
                i, keep = min(ends)
                return bytes(buf[: i + keep])
    cut = buf.rfind(b"\n")
    return bytes(buf[: cut + 1]) if cut >= 0 else b""


def parse_headers(block: bytes) -> EmailMessage:
    """A header block parsed by the standard library (headers only, ``policy.default``)."""
    message = BytesHeaderParser(policy=policy.default).parsebytes(block)
    assert isinstance(message, EmailMessage)  # policy.default makes EmailMessage objects
    return message


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
