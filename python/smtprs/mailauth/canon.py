"""The relaxed body canonicalization of DKIM (RFC 6376 3.4.4) and its hash,
computed as the content streams by, so a large message is never held whole.

The result is byte for byte what dkimpy computes over the whole body
(``dkim.canonicalization.Relaxed.canonicalize_body`` after dkimpy's own
message split): lines end at LF or CRLF, whitespace at the end of a line is
removed, other runs of spaces and tabs become one space, empty lines at the
end are ignored, a last line without its CRLF gets one, and a body of nothing
but empty lines is empty.  tests/unit/test_dkim.py checks it against dkimpy.
"""

from __future__ import annotations

import hashlib
import re

_NEWLINE = re.compile(rb"\r?\n")
_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")  # only what changes: a tab, or two or more blanks
_WSP = re.compile(rb"[\t ]+")


def _relaxed_lines(block: bytes) -> bytes:
    """Complete lines (``block`` ends with LF), canonicalized, each ending CRLF.

    Each step is skipped when a fast scan shows it would change nothing (most
    mail: base64 has no blanks at all, text rarely two in a row); trailing
    blanks are cut line by line, which is faster than a regular expression
    that would try every blank in the block."""
    if block.count(b"\n") != block.count(b"\r\n"):
        block = _NEWLINE.sub(b"\r\n", block)
    if b" \r\n" in block or b"\t\r\n" in block:
        block = b"\r\n".join([line.rstrip(b" \t") for line in block.split(b"\r\n")])
    if b"\t" in block or b"  " in block:
        block = _WSP_RUN.sub(b" ", block)
    return block


class RelaxedBodyHash:
    """SHA-256 over the relaxed canonical form of a body fed in pieces.

    Only the last, incomplete line is kept between pieces; empty lines are
    counted, not kept, until a non-empty line shows they were not the end."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._tail = b""  # the incomplete last line
        self._empty = 0  # empty lines seen and not yet hashed (trailing, so far)
        self.length = 0  # octets of canonical body hashed

    def update(self, data: bytes) -> None:
        if not data:
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            self._tail += data
            return
        block = _relaxed_lines(self._tail + data[:cut]) if self._tail else _relaxed_lines(data[:cut])
        self._tail = data[cut:]
        # hold back the empty lines at the end of the block: only a later
        # non-empty line shows whether they are part of the body
        j = len(block)
        k = 0
        while j >= 2 and block[j - 2 : j] == b"\r\n" and (j == 2 or (j >= 4 and block[j - 4 : j - 2] == b"\r\n")):
            j -= 2
            k += 1
        if j:
            self._emit(b"\r\n" * self._empty)
            self._emit(block[:j] if j < len(block) else block)
            self._empty = k
        else:
            self._empty += k

    def _emit(self, data: bytes) -> None:
        if data:
            self._hash.update(data)
            self.length += len(data)

    def digest(self) -> bytes:
        """The hash of the whole body (call once, after the last ``update``)."""
        if self._tail:
            # dkimpy strips trailing whitespace only before a CRLF, so a last
            # line without one keeps a (compressed) trailing space
            self._emit(b"\r\n" * self._empty)
            self._emit(_WSP.sub(b" ", self._tail) + b"\r\n")
            self._tail, self._empty = b"", 0
        return self._hash.digest()


def relaxed_body_hash(body: bytes) -> bytes:
    """The relaxed body hash of a whole body (for tests and the benchmark)."""
    h = RelaxedBodyHash()
    h.update(body)
    return h.digest()
