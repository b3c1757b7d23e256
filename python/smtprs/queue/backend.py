"""The spool backend interface: what sessions, the scheduler and the notifier
need of the store of accepted mail, whatever keeps it.

Two backends today: ``spool.Spool`` (segment files on the local disk, the
default) and ``null.NullSpool`` (keeps nothing: the benchmark sink, as
OpenSMTPD's queue_null).  The interface is drawn so that a shared database
(issue 15: PostgreSQL) fits it too:

- receiving: ``create`` a writer, stream content into it, then ``commit`` it
  with its envelope -- one awaitable that returns only once the message is
  durable (the 250 waits on it) and that a backend may batch across sessions
  (group commit); ``abort`` forgets an unfinished one;
- delivering: ``ids``/``load`` what is queued, ``content`` to read it (a
  ``Content`` range: a file another process may open), ``save`` an envelope
  after an attempt, ``remove`` a finished message; ``save_many`` and
  ``remove_many`` do the same for a batch of messages at once (the scheduler's
  batched delivery: one hand-off to a worker thread where the backend can),
  reporting each message's error instead of raising;
- bookkeeping: ``count``, ``oldest_arrival``, ``free_space``, the commit
  counters, ``open``/``close``.

What a shared backend adds (leases of due work per node) comes with it; the
scheduler asks the backend for due work only through ``ids``/``load`` today.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..content import Content
from ..envelope import Envelope


class Writer(Protocol):
    """A message being received: content goes in as it arrives."""

    queue_id: str
    size: int
    failed: OSError | None  # a write error, remembered and reported at commit

    def write(self, data: bytes) -> None: ...

    def prepend(self, data: bytes) -> None:
        """Put ``data`` before everything written so far (a DKIM-Signature field,
        added once the whole content has been seen); before ``commit`` only."""
        ...

    def staged(self) -> Content:
        """The content so far as a file another reader can open (the LMTP
        listener delivers without queueing).  Raises OSError."""
        ...


class SpoolBackend(Protocol):
    commit_batches: int
    committed_messages: int

    def open(self) -> list[str]:
        """Read what an earlier run left; returns the queue ids found."""
        ...

    def close(self) -> None: ...

    def free_space(self) -> int | None: ...

    def create(self) -> Writer: ...

    def abort(self, writer: Writer) -> None: ...

    async def commit(self, writer: Writer, envelope: Envelope) -> None:
        """Durable before it returns; raises SpoolError (and forgets the message)."""
        ...

    def __contains__(self, qid: str) -> bool: ...

    @property
    def count(self) -> int: ...

    def ids(self) -> list[str]: ...

    def oldest_arrival(self) -> float | None: ...

    def content(self, qid: str) -> Content: ...

    def load(self, qid: str) -> Envelope | None: ...

    async def save(self, envelope: Envelope) -> None: ...

    async def remove(self, qid: str) -> None: ...

    async def save_many(self, envelopes: Sequence[Envelope]) -> list[Exception | None]:
        """``save`` for several envelopes at once; returns, in order, each one's
        error (None: saved).  One message's failure does not stop the others."""
        ...

    async def remove_many(self, qids: Sequence[str]) -> list[Exception | None]:
        """``remove`` for several messages at once; returns, in order, each one's
        error (None: removed).  One message's failure does not stop the others."""
        ...
