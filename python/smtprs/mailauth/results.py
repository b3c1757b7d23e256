"""The Authentication-Results header field (RFC 8601): ours, built, and the
forged ones, found and removed.  Pure functions over bytes.

Our field is built from authres's result classes (they encode each
``method=result (comment) ptype.property=value``), one result per folded line
so that a long field stays readable and within RFC 5322's line length.

Forgery (RFC 8601 5): an incoming Authentication-Results field that claims
our authserv-id was not written by us (we add ours after this removal), so it
is removed before the message is stored; fields of other authserv-ids are
kept as they are.  The same goes for our quarantine marker field.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import authres  # type: ignore[import-untyped]

FIELD = b"Authentication-Results"
QUARANTINE_FIELD = b"X-Smtprs-Quarantine"

_COMMENT_UNSAFE = re.compile(r"[^\x20-\x7e]|[()\\]")
_MAX_COMMENT = 200


def comment(text: str) -> str:
    """``text`` made safe inside an RFC 5322 comment: printable ASCII, no
    parentheses or backslashes, bounded in length."""
    text = _COMMENT_UNSAFE.sub("?", text)
    return text if len(text) <= _MAX_COMMENT else text[: _MAX_COMMENT - 3] + "..."


def field(authserv_id: str, results: Sequence[object]) -> bytes:
    """Our ``Authentication-Results:`` field, CRLF-terminated, folded one result a line.
    ``results`` are authres result objects; none gives ``; none`` (RFC 8601 2.2)."""
    parts = [str(r) for r in results] or ["none"]
    value = authserv_id + "".join(";\r\n\t" + p for p in parts)
    return FIELD + b": " + value.encode("ascii", "replace") + b"\r\n"


def authserv_id(value: bytes) -> str:
    """The authserv-id of an Authentication-Results field's value (RFC 8601 2.2:
    ``[CFWS] authserv-id [CFWS [version]] ;``), lower case; "" if there is none.
    Comments (which may nest) and folding are skipped."""
    text = value.decode("utf-8", "replace")
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            while i < n:
                if text[i] == "\\":
                    i += 1
                elif text[i] == "(":
                    depth += 1
                elif text[i] == ")":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            i += 1
        else:
            break
    if i < n and text[i] == '"':  # a quoted-string authserv-id (a value, RFC 2045)
        j = text.find('"', i + 1)
        return text[i + 1 : j].lower() if j > 0 else ""
    j = i
    while j < n and text[j] not in " \t\r\n;(":
        j += 1
    return text[i:j].lower().rstrip(".")


def _fields(header: bytes) -> Iterable[tuple[int, int, bytes, bytes]]:
    """(start, end, name, value) of each field of a header block (folded lines belong to their field)."""
    starts = [m.start() for m in re.finditer(rb"^[^ \t\r\n]", header, re.M)]
    for k, start in enumerate(starts):
        end = starts[k + 1] if k + 1 < len(starts) else len(header)
        line = header[start:end]
        name, colon, value = line.partition(b":")
        if colon:
            yield start, end, name.strip().lower(), value


def strip_ours(header: bytes, our_id: str) -> tuple[bytes, int]:
    """The header block without the Authentication-Results fields claiming
    ``our_id`` (RFC 8601 5) and without our quarantine marker; and how many
    fields were removed."""
    our = our_id.lower().rstrip(".")
    ar, q = FIELD.lower(), QUARANTINE_FIELD.lower()
    if ar not in header.lower() and q not in header.lower():
        return header, 0
    out = bytearray()
    kept = 0
    removed = 0
    for start, end, name, value in _fields(header):
        if name == q or (name == ar and authserv_id(value) == our):
            out += header[kept:start]
            kept = end
            removed += 1
    out += header[kept:]
    return bytes(out), removed


# -- the result objects ---------------------------------------------------------
def spf_result(result: str, reason: str, mailfrom: str, helo: str) -> object:
    if mailfrom:
        return authres.SPFAuthenticationResult(
            result=result, result_comment=comment(reason) or None, smtp_mailfrom=mailfrom
        )
    return authres.SPFAuthenticationResult(result=result, result_comment=comment(reason) or None, smtp_helo=helo)


def dkim_result(result: str, reason: str, d: str, s: str, a: str) -> object:
    return authres.DKIMAuthenticationResult(
        result=result,
        result_comment=comment(reason) or None,
        header_d=d or None,
        header_s=s or None,
        header_a=a or None,
    )


def arc_result(result: str, reason: str) -> object:
    import authres.arc  # type: ignore[import-untyped]

    return authres.arc.ARCAuthenticationResult(result=result, result_comment=comment(reason) or None)


def dmarc_result(result: str, reason: str, header_from: str, policy: str) -> object:
    import authres.dmarc  # type: ignore[import-untyped]

    return authres.dmarc.DMARCAuthenticationResult(
        result=result, result_comment=comment(reason) or None, header_from=header_from or None, policy=policy or None
    )
