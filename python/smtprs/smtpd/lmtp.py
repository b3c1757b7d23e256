"""LMTP server mode (RFC 2033): deliver at once, answer once per recipient.

The session (``smtpd/session.py``, listener mode ``lmtp``) speaks the protocol
-- LHLO instead of HELO/EHLO, and after the data one reply per accepted RCPT,
in order -- and hands the received message here.  Nothing is queued: the
content the session handed to a spool writer (never committed, so it is not
a queued message; staged in a file of its own, removed at start-up if we
crash) is delivered
now by the local delivery agents (Maildir, mbox, or an LMTP server further
on), and each RCPT's reply is given only after its mailboxes have the
message durably.  The spool file is removed afterwards.

One RCPT can expand to several mailboxes (aliases): its reply is 250 when
every one of them has the message, the failure when one failed (5xx), else
the deferral (4xx).  A 4xx after another of its mailboxes got the message
makes the client retry that RCPT, so that mailbox gets a second copy: the
price of aliases behind an LMTP listener.  Alias targets must be local
mailboxes: LMTP is final delivery, nothing here would queue a copy for a
remote host.
"""

from __future__ import annotations

import errno
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .. import maillog
from .. import reply as R
from ..deliver.base import DeliveryRequest, Outcome, Target
from ..hops import Unroutable
from ..queue.backend import Writer

if TYPE_CHECKING:
    from .context import SessionContext

_CODED = re.compile(r"([245]\d\d) ([245]\.\d{1,3}\.\d{1,3}) (.*)", re.S)


@dataclass(frozen=True)
class Slot:
    """One accepted RCPT: the address as given and the mailboxes it expanded to."""

    address: str
    targets: tuple[str, ...]


def check_targets(ctx: SessionContext, address: str, targets: tuple[str, ...]) -> R.Reply | None:
    """At RCPT: every expanded recipient must be a local mailbox (None if so)."""
    for t in targets:
        hop = ctx.router.route(t)
        if isinstance(hop, Unroutable):
            return hop.reply
        if hop.kind not in ("maildir", "mbox", "lmtp", "discard"):
            return R.Reply(550, "5.1.1", f"<{address}> expands to <{t}>, which is not a local mailbox")
    return None


def _reply_of(outcome: Outcome, address: str) -> R.Reply:
    if outcome.status == "delivered":
        return R.Reply(250, "2.0.0", f"<{address}> Ok: delivered")
    m = _CODED.match(outcome.detail)
    if m and int(m.group(1)) // 100 == (5 if outcome.status == "failed" else 4):
        return R.Reply(int(m.group(1)), m.group(2), f"<{address}> {m.group(3)}"[:400])
    if outcome.status == "failed":
        return R.Reply(550, "5.0.0", f"<{address}> {outcome.detail}"[:400])
    return R.Reply(451, "4.3.0", f"<{address}> {outcome.detail}"[:400])


async def deliver_now(
    ctx: SessionContext, writer: Writer, sender: str, slots: list[Slot], params: dict[str, str], session: str, peer: str
) -> list[R.Reply]:
    """Deliver the received message to every slot's mailboxes; one reply per slot."""
    arrival = time.time()
    try:
        try:
            content = await trio.to_thread.run_sync(writer.staged)
        except OSError as e:
            maillog.spool_problem(f"{writer.queue_id}: {e}")
            return [R.SPOOL_FULL if e.errno in (errno.ENOSPC, errno.EDQUOT) else R.SPOOL_FAILED for _ in slots]
        addresses = list(dict.fromkeys(t for s in slots for t in s.targets))
        original: dict[str, str] = {}
        for s in slots:
            for t in s.targets:
                original.setdefault(t, s.address)
        maillog.lmtp_received(writer.queue_id, sender, writer.size, len(addresses), peer)
        outcomes: dict[str, Outcome] = {}
        groups: dict[str, list[Target]] = {}
        for i, address in enumerate(addresses):
            hop = ctx.router.route(address)
            if isinstance(hop, Unroutable):
                outcomes[address] = Outcome(i, "deferred" if hop.reply.code < 500 else "failed", str(hop.reply), "none")
                continue
            groups.setdefault(hop.kind, []).append(Target(i, address, hop))
        for kind, targets in groups.items():
            request = DeliveryRequest(writer.queue_id, sender, content, arrival, tuple(targets), content.length, params)
            try:
                got = await ctx.agents[kind].deliver(request)
            except Exception as e:  # an agent bug must not leave the client without its replies
                got = [Outcome(t.index, "deferred", f"451 4.3.0 delivery agent error: {e!r}", kind) for t in targets]
            for o in got:
                outcomes[addresses[o.index]] = o
        delay = time.time() - arrival
        for address in addresses:
            o = outcomes[address]
            orig = original[address] if original[address] != address else ""
            if o.status == "delivered":
                maillog.delivered(writer.queue_id, address, o.relay, delay, o.detail, orig=orig)
            elif o.status == "failed":
                maillog.failed(writer.queue_id, address, o.relay, delay, o.detail, orig=orig)
            else:
                maillog.deferred(writer.queue_id, address, o.relay, delay, o.detail, None, orig=orig)
        replies = []
        for s in slots:
            mine = [outcomes[t] for t in s.targets]
            worst = next((o for o in mine if o.status == "failed"), None) or next(
                (o for o in mine if o.status == "deferred"), None
            )
            replies.append(_reply_of(worst or mine[0], s.address))
        return replies
    finally:
        ctx.spool.abort(writer)
