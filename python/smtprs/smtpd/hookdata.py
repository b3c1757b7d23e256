"""The library's hooks at the end of the data (hooks.py): ``on_message``,
which may change the message, then ``on_data``, which may refuse it -- both
before the commit that earns the 250, after the milters.

``run_message_hooks`` is called by ``Intake.end`` (smtpd/intake.py) with the
spool writer and the envelope about to be committed, only when the session
has hooks.  It returns the writer to commit (the same one, or a new one when
the content changed), or the reply to send instead -- the writer then
aborted, so nothing of the message is left in the spool:

- ``on_message(session, message)`` gets a ``hooks.Message`` over the staged
  content (``Writer.staged``) and a copy of the envelope.  The changes it
  asked for (one ``rewrite.Edit``) are applied by ``rewrite.apply``, the
  machinery the milters use: the envelope in place, the content by a new
  spool writer written from the old one (which is aborted), so the commit
  stays the only durable step.  Recipients it adds are routed as at RCPT
  (``Router.expand``, relaying allowed: the hook is the administrator's
  code); one the router refuses is left out, logged.  Every change is
  logged with the queue id (``QID: hook on_message: ...``).  A hook that
  removes every recipient has the message discarded: answered 250 as
  Postfix does for a milter's discard, logged, kept nowhere.  A new body
  longer than ``smtpd.max_message_size`` is refused as a hook failure.
- ``on_data(session, envelope, content)`` then sees the message as it will
  be committed; a reply refuses it.

A hook that raises, or answers something else than a Reply or None, is
logged (with the queue id) and answered 451 4.3.0 (``Session.ask_hook``); a
spool that cannot show or rewrite the content is answered as a spool write
error (451 4.3.0).  A cancelled session (the server stopping) aborts the
writer too.  The rewrite runs in the Trio thread, as the rest of the spool
writer's work does (the spool's in-memory accounting is not thread-safe);
it copies the body in chunks of ``rewrite.COPY_CHUNK``.
"""

from __future__ import annotations

import functools
from typing import Protocol

from .. import _core, maillog, rewrite
from .. import reply as R
from ..envelope import Envelope
from ..errors import AddressError
from ..hooks import HOOK_FAILED, Message, overrides
from ..hops import Unroutable
from ..queue.backend import Writer
from .context import SessionView


class HookDataSession(SessionView, Protocol):
    """What the end-of-data hooks use of the session: its context, hooks and ask_hook."""


async def run_message_hooks(s: HookDataSession, writer: Writer, env: Envelope) -> Writer | R.Reply:
    """on_message, then on_data (see the module's text): the writer to commit
    with ``env`` (changed in place), or the reply to send, the writer aborted."""
    on_message, on_data = overrides(s.hooks, "on_message"), overrides(s.hooks, "on_data")
    if not (on_message or on_data):
        return writer
    spool = s.ctx.spool
    current = writer
    try:
        content = current.staged()
        if on_message:
            message = Message(env, content)
            refusal = await s.ask_hook("on_message", message)
            if refusal is not None:
                spool.abort(current)
                return refusal
            if not message.changes.empty():
                done = _apply(s, current, env, message.changes)
                if isinstance(done, R.Reply):
                    return done
                if done is not current:
                    current = done
                    if on_data:
                        content = current.staged()
        if on_data and (refusal := await s.ask_hook("on_data", env, content)) is not None:
            spool.abort(current)
            return refusal
        return current
    except OSError as e:
        maillog.spool_problem(f"{current.queue_id}: cannot show the message to the hooks: {e}")
        spool.abort(current)
        return R.SPOOL_FAILED
    except BaseException:
        spool.abort(current)  # (cancelled: the session is going, and the message with it)
        raise


def _apply(s: HookDataSession, writer: Writer, env: Envelope, edit: rewrite.Edit) -> Writer | R.Reply:
    """Apply on_message's changes with rewrite.apply; log them with the queue id."""
    qid = writer.queue_id
    spool = s.ctx.spool
    limit = s.ctx.cfg.smtpd.max_message_size
    if edit.body is not None and limit and len(edit.body) > limit:
        maillog.error(
            f"{qid}: hook on_message failed (session {s.id}): its new body of {len(edit.body)} octets"
            f" is over smtpd.max_message_size ({limit})"
        )
        spool.abort(writer)
        return HOOK_FAILED
    notes: list[str] = []
    for address, why in rewrite.route_added(edit, functools.partial(route_added, s)):
        notes.append(f"added recipient <{address}> left out: {why}")
    try:
        done = rewrite.apply(spool, writer, env, [edit])
    except OSError as e:
        maillog.spool_problem(f"{qid}: hook on_message: cannot rewrite the message: {e.strerror or e}")
        spool.abort(writer)
        return R.SPOOL_FAILED
    notes += done.changes
    if done.discarded or done.writer is None:
        maillog.queue_action(
            qid, f"hook on_message: discarded, every recipient removed (session {s.id}); {'; '.join(notes)}"
        )
        return R.Reply(250, "2.0.0", f"Ok: queued as {qid}")
    if notes:
        maillog.queue_action(env.queue_id, f"hook on_message: {'; '.join(notes)} (session {s.id})")
    return done.writer


def route_added(s: SessionView, address: str) -> tuple[str, ...] | str:
    """The final recipients of a recipient a hook or a milter added, through
    the router as at RCPT (aliases and virtual entries expanded; relaying
    allowed: the filter is the administrator's choice, and Postfix's cleanup
    does not check relay permission for added recipients either), or why
    the router refuses it."""
    try:
        path = _core.parse_path(f"<{address}>", smtputf8=True, allow_null=False)
    except AddressError as e:
        return f"bad address: {e}"
    expansion = s.ctx.router.expand(path, relay_allowed=True)
    if isinstance(expansion, Unroutable):
        return str(expansion.reply)
    return expansion.addresses
