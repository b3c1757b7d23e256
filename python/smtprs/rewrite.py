"""Changes to a received message before it is accepted: what milters
(milter/driver.py) and the library's hooks (hooks.py) may ask for, and how
they are applied.

An ``Edit`` is one party's changes: header fields added, inserted, changed or
deleted, a new body, a new sender, recipients added and removed, quarantine.
``apply(spool, writer, envelope, edits)`` applies a list of them in order, in
one pass, before the commit that earns the 250:

- the envelope (sender, recipients, the hold flag) is changed in place;
- when the content changes, a new spool writer is written from the old one
  (the changed header block, then the new body or the old body copied in
  chunks: never the whole message in memory), and the old writer is aborted.
  The caller commits the new one, so the commit stays the only durable step
  and a crash leaves either nothing (no 250 was given) or the whole new
  message, never half of it;
- when no recipient is left, the writer is aborted and the message is
  discarded (``Applied.discarded``), as Postfix does when a milter deletes
  every recipient.

Header semantics are Sendmail's milter ones (smfi_addheader, smfi_insheader,
smfi_chgheader): add at the end; insert at an index, 0 being the top; change
the index-th field of a name (from 1), an empty value deleting it and a
missing one being added.  Our own Received field names the new queue id when
the content was rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .content import Content
from .envelope import Envelope, Recipient
from .queue.backend import SpoolBackend, Writer

HEADER_BLOCK_MAX = 8 * 1024 * 1024  # the most of a spooled message read as its header block
COPY_CHUNK = 256 * 1024


@dataclass(frozen=True)
class AddHeader:
    name: str
    value: str


@dataclass(frozen=True)
class InsertHeader:
    index: int
    name: str
    value: str


@dataclass(frozen=True)
class ChangeHeader:
    index: int  # the index-th field of that name, from 1
    name: str
    value: str  # empty: delete the field


HeaderChange = AddHeader | InsertHeader | ChangeHeader


@dataclass
class Edit:
    """One party's changes to a message (a milter's, or a hook's)."""

    headers: list[HeaderChange] = field(default_factory=list)
    body: bytes | None = None  # the new body (any line ends; stored with CRLF)
    sender: str | None = None
    rcpt_add: list[str] = field(default_factory=list)
    rcpt_del: list[str] = field(default_factory=list)
    quarantine: str | None = None  # the reason: the message goes to the hold queue

    def empty(self) -> bool:
        return not (
            self.headers
            or self.body is not None
            or self.sender is not None
            or self.rcpt_add
            or self.rcpt_del
            or self.quarantine is not None
        )


@dataclass
class Applied:
    writer: Writer | None  # the writer to commit (None: discarded)
    changes: list[str]  # what changed, for the log
    discarded: bool = False


# the router's answer for an added recipient: its final recipients, or why not
Route = Callable[[str], tuple[str, ...] | str]


def route_added(edit: Edit, route: Route) -> list[tuple[str, str]]:
    """Replace ``edit.rcpt_add`` by the final recipients ``route`` gives for
    each (aliases and virtual entries expanded, as at RCPT); returns the
    (address, why) of each one it refuses, left out."""
    routed: list[str] = []
    refused: list[tuple[str, str]] = []
    for address in edit.rcpt_add:
        got = route(address)
        if isinstance(got, str):
            refused.append((address, got))
        else:
            routed += got
    edit.rcpt_add = routed
    return refused


def apply(spool: SpoolBackend, writer: Writer, env: Envelope, edits: list[Edit]) -> Applied:
    """Apply ``edits`` in order: the envelope in place, the content by a new
    writer when headers or the body changed.  Raises OSError when the new
    content cannot be written (the new writer aborted, the old one kept, the
    envelope possibly changed: the caller refuses the message)."""
    what: list[str] = []
    headers: list[HeaderChange] = []
    body: bytes | None = None
    for ed in edits:
        headers += ed.headers
        if ed.body is not None:
            body = ed.body
        if ed.sender is not None:
            what.append(f"sender <{env.sender}> -> <{ed.sender}>")
            env.sender = ed.sender
        for address in ed.rcpt_del:
            low = address.lower()
            before = len(env.recipients)
            env.recipients = [
                r for r in env.recipients if r.address.lower() != low and (r.original or "").lower() != low
            ]
            if len(env.recipients) < before:
                what.append(f"recipient <{address}> removed")
        for address in ed.rcpt_add:
            if all(r.address.lower() != address.lower() for r in env.recipients):
                env.recipients.append(Recipient(address))
                what.append(f"recipient <{address}> added")
        if ed.quarantine is not None:
            env.held = True
            what.append(f"quarantined ({ed.quarantine})")
    if not env.recipients:
        spool.abort(writer)
        return Applied(writer=None, changes=what, discarded=True)
    if headers or body is not None:
        new = rewrite(spool, writer, headers, body)
        what.append(
            f"content rewritten (received as {writer.queue_id}; {len(headers)} header change(s)"
            f"{', new body' if body is not None else ''})"
        )
        spool.abort(writer)
        env.queue_id = new.queue_id
        env.size = new.size
        writer = new
    return Applied(writer=writer, changes=what)


def rewrite(spool: SpoolBackend, old: Writer, headers: list[HeaderChange], body: bytes | None) -> Writer:
    """A new spool writer with the changed content: the header block with the
    changes, then the new body or the old one copied in chunks.  Our Received
    field (the topmost) names the new queue id.  Raises OSError (the new writer
    aborted)."""
    content = old.staged()
    fields, body_start = read_header_block(content)
    new = spool.create()
    try:
        mark = f" id {old.queue_id}".encode()
        # our Received field: the topmost one (Authentication-Results, a
        # quarantine marker or a DKIM-Signature may sit above it)
        top = next((i for i, (name, _) in enumerate(fields) if name.lower() == "received"), None)
        if top is not None and mark in fields[top][1]:
            name, raw = fields[top]
            fields[top] = (name, raw.replace(mark, f" id {new.queue_id}".encode(), 1))
        for _, raw in apply_header_changes(fields, headers):
            new.write(raw)
        new.write(b"\r\n")
        if body is not None:
            new.write(crlf_body(body))
        else:
            for chunk in body_chunks(content, body_start, COPY_CHUNK):
                new.write(chunk)
        if new.failed is not None:
            raise new.failed
    except BaseException:
        spool.abort(new)
        raise
    return new


def body_chunks(content: Content, body_start: int, size: int) -> Iterator[bytes]:
    """The body of a spooled message (from ``body_start``, a file offset) in chunks."""
    rest = Content(content.path, body_start, max(0, content.offset + content.length - body_start))
    with rest.open() as fh:
        while chunk := fh.read(size):
            yield chunk


def read_header_block(content: Content) -> tuple[list[tuple[str, bytes]], int]:
    """The header fields of a spooled message (name, raw field with its CRLFs)
    and the file offset where its body starts.  Raises OSError."""
    with content.open() as fh:
        head = bytearray()
        while len(head) < HEADER_BLOCK_MAX:
            chunk = fh.read(65536)
            if not chunk:
                break
            head += chunk
            if b"\r\n\r\n" in head or head.startswith(b"\r\n"):
                break
    fields, end = split_header_block(bytes(head))
    return fields, content.offset + end


def split_header_block(head: bytes) -> tuple[list[tuple[str, bytes]], int]:
    """Split the start of a message into header fields; returns them and the
    offset of the body (after the empty line; or where a line that is not a
    header field begins; or the end)."""
    fields: list[tuple[str, bytes]] = []
    pos = 0
    n = len(head)
    while pos < n:
        if head.startswith(b"\r\n", pos):
            return fields, pos + 2
        end = head.find(b"\r\n", pos)
        line_end = n if end < 0 else end + 2
        while line_end < n and head[line_end : line_end + 1] in (b" ", b"\t"):  # continuation lines
            nxt = head.find(b"\r\n", line_end)
            line_end = n if nxt < 0 else nxt + 2
        raw = head[pos:line_end]
        colon = raw.find(b":")
        name = raw[:colon] if colon > 0 else b""
        if not name or any(c <= 32 or c >= 127 for c in name):
            return fields, pos  # not a header field: the body starts here
        fields.append((name.decode("ascii"), raw))
        pos = line_end
    return fields, pos


def field_bytes(name: str, value: str) -> bytes:
    """A header field from a name and a value: LF or CRLF folds become CRLF, a
    continuation line gets a tab if it does not start with white space."""
    lines = value.replace("\r\n", "\n").split("\n")
    out = [lines[0]] + [line if line[:1] in (" ", "\t") else "\t" + line for line in lines[1:]]
    sep = ":" if value[:1] in (" ", "\t") else ": "
    return (name + sep + "\r\n".join(out) + "\r\n").encode("utf-8", "surrogateescape")


def apply_header_changes(fields: list[tuple[str, bytes]], changes: list[HeaderChange]) -> list[tuple[str, bytes]]:
    """The header fields after ``changes``, in order (see the module's text)."""
    out = list(fields)
    for ch in changes:
        if isinstance(ch, AddHeader):
            out.append((ch.name, field_bytes(ch.name, ch.value)))
        elif isinstance(ch, InsertHeader):
            out.insert(min(max(ch.index, 0), len(out)), (ch.name, field_bytes(ch.name, ch.value)))
        else:
            low = ch.name.lower()
            seen = 0
            for i, (name, _) in enumerate(out):
                if name.lower() == low:
                    seen += 1
                    if seen == max(ch.index, 1):
                        if ch.value:
                            out[i] = (name, field_bytes(name, ch.value))
                        else:
                            del out[i]
                        break
            else:
                if ch.value:
                    out.append((ch.name, field_bytes(ch.name, ch.value)))
    return out


def crlf_body(body: bytes) -> bytes:
    """A replaced body with CRLF line ends (bare LF and bare CR become CRLF)."""
    return body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
