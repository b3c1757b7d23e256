"""The null spool backend (``queue.backend = "null"``): every message is
answered 250 and nothing is kept.

It exists to measure the SMTP engine alone, against Postfix's ``smtp-sink``
(as OpenSMTPD's queue_null).  The session runs exactly the path it runs for
real mail -- the content is streamed into a writer, the commit is awaited --
and the backend throws the bytes away; the composition root wires a hand-off
that gives nothing to the scheduler.  So the benchmark measures the product's
own code, and the product has no benchmark branch in it.  It breaks the
handoff promise (RFC 5321 §2.1): a warning is logged while it is on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..content import Content
from ..envelope import Envelope
from .records import new_queue_id


class NullWriter:
    """Counts the octets it is given, keeps none."""

    failed: OSError | None = None

    def __init__(self) -> None:
        self.queue_id = new_queue_id()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def prepend(self, data: bytes) -> None:
        self.size += len(data)

    def staged(self) -> Content:
        raise OSError("the null spool backend keeps no content")


class NullSpool:
    """A spool that is always empty."""

    commit_batches = 0
    committed_messages = 0
    count = 0

    def open(self) -> list[str]:
        return []

    def close(self) -> None:
        pass

    def free_space(self) -> int | None:
        return None

    def create(self) -> NullWriter:
        return NullWriter()

    def abort(self, writer: object) -> None:
        pass

    async def commit(self, writer: object, envelope: Envelope) -> None:
        pass

    def __contains__(self, qid: str) -> bool:
        return False

    def ids(self) -> list[str]:
        return []

    def oldest_arrival(self) -> float | None:
        return None

    def content(self, qid: str) -> Content:
        return Content(Path(os.devnull), 0, 0)

    def load(self, qid: str) -> Envelope | None:
        return None

    async def save(self, envelope: Envelope) -> None:
        pass

    async def remove(self, qid: str) -> None:
        pass

    async def save_many(self, envelopes: Sequence[Envelope]) -> list[Exception | None]:
        return [None] * len(envelopes)

    async def remove_many(self, qids: Sequence[str]) -> list[Exception | None]:
        return [None] * len(qids)
