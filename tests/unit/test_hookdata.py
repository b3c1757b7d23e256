"""Hooks that change mail (issue 18 part 3): the ``smtprs.Message`` API and
the ``rewrite.Edit`` it builds, then ``on_message`` and ``on_data`` at the end
of the data, before the commit (smtpd/hookdata.py), driven through a real
Session on a memory stream with a real spool on a temporary directory."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pytest
import trio

import smtprs
from smtprs import rewrite as W
from smtprs.content import Content
from smtprs.daemon import ServerContext

from .conftest import start_session

# -- the Message API -> one rewrite.Edit --------------------------------------------


def _message(tmp_path: Path) -> smtprs.Message:
    raw = b"Received: from x by mx.test id Q1\r\nSubject: hi\r\n\r\nbody\r\n"
    f = tmp_path / "m"
    f.write_bytes(raw)
    env = smtprs.Envelope("Q1", "a@b.test", [smtprs.Recipient("c@d.test")], 0.0)
    return smtprs.Message(env, Content(f, 0, len(raw)))


def test_message_methods_collect_one_edit_in_order(tmp_path: Path) -> None:
    m = _message(tmp_path)
    assert m.changes.empty() and m.queue_id == "Q1"
    assert m.headers()["Subject"] == "hi" and m.content.headers()["Subject"] == "hi"
    m.add_header("X-Filter", "seen")
    m.insert_header(0, "X-Top", "first")
    m.change_header("Subject", "[tag] hi")
    m.change_header("X-Tag", "two", index=2)
    m.delete_header("X-Old")
    m.replace_body(b"new body\n")
    m.add_recipient("archive@d.test")
    m.remove_recipient("c@d.test")
    m.change_sender("")
    m.quarantine("looks odd")
    assert m.changes == W.Edit(
        headers=[
            W.AddHeader("X-Filter", "seen"),
            W.InsertHeader(0, "X-Top", "first"),
            W.ChangeHeader(1, "Subject", "[tag] hi"),
            W.ChangeHeader(2, "X-Tag", "two"),
            W.ChangeHeader(1, "X-Old", ""),
        ],
        body=b"new body\n",
        sender="",
        rcpt_add=["archive@d.test"],
        rcpt_del=["c@d.test"],
        quarantine="looks odd",
    )


def test_message_envelope_is_a_copy(tmp_path: Path) -> None:
    m = _message(tmp_path)
    m.envelope.recipients.clear()
    m.envelope.sender = "other@b.test"
    assert m.changes.empty()  # changing the copy asks for nothing


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.add_header("Bad Name", "x"),
        lambda m: m.add_header("", "x"),
        lambda m: m.add_header("X-Colon:", "x"),
        lambda m: m.add_header("X-Ok", "a\rb"),  # a CR alone would end the line
        lambda m: m.add_header("X-Ok", "a\0b"),
        lambda m: m.add_header("X-Ok", 3),
        lambda m: m.insert_header(-1, "X-Ok", "x"),
        lambda m: m.change_header("X-Ok", "x", index=0),
        lambda m: m.delete_header("X-Ok", index=0),
        lambda m: m.replace_body("a str"),
    ],
)
def test_message_refuses_bad_arguments_at_once(tmp_path: Path, call: Any) -> None:
    m = _message(tmp_path)
    with pytest.raises(ValueError):
        call(m)
    assert m.changes.empty()


@pytest.mark.parametrize("address", ["no-at-sign@", "a b@c.test", "<x@y.test>", ""])
def test_message_refuses_bad_recipient_addresses(tmp_path: Path, address: str) -> None:
    m = _message(tmp_path)
    with pytest.raises(ValueError):  # smtprs.AddressError is a ValueError
        m.add_recipient(address)


def test_a_folded_value_is_allowed(tmp_path: Path) -> None:
    m = _message(tmp_path)
    m.add_header("X-Long", "one\r\n two")
    assert m.changes.headers == [W.AddHeader("X-Long", "one\r\n two")]


# -- on_message and on_data in a session ----------------------------------------------


class Changer(smtprs.Hooks):
    """What the Subject asks for is what the hook does."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    async def on_message(self, session: smtprs.SessionInfo, message: smtprs.Message) -> smtprs.Reply | None:
        subject = str(message.headers()["Subject"])
        self.seen.append((subject, [r.address for r in message.envelope.recipients]))
        if subject == "tag":
            message.add_header("X-Filtered", "yes")
            message.change_header("Subject", "[tagged] tag")
            message.insert_header(0, "X-First", "top")
        elif subject == "body":
            message.replace_body(b"replaced\nbody\n")
        elif subject == "rcpts":
            message.add_recipient("carol@example.test")
            message.add_recipient("team@example.test")  # an alias: expanded
            message.add_recipient("nobody@example.test")  # an unknown user: left out
            message.remove_recipient("bob@example.test")
            message.change_sender("bounces@example.test")
        elif subject == "none":
            for r in message.envelope.recipients:
                message.remove_recipient(r.address)
        elif subject == "boom":
            message.add_header("X-Never", "written")
            raise RuntimeError("message hook exploded")
        elif subject == "junk":
            return "not a reply"  # type: ignore[return-value]
        elif subject == "refuse":
            message.add_header("X-Never", "written")
            return smtprs.Reply(550, "5.7.1", "Refused by the filter")
        elif subject == "hold":
            message.quarantine("suspicious")
        elif subject == "huge":
            message.replace_body(b"x" * 5000)
        return None

    async def on_data(
        self, session: smtprs.SessionInfo, envelope: smtprs.Envelope, content: smtprs.Content
    ) -> smtprs.Reply | None:
        h = content.headers()
        self.seen.append(("data", (envelope.queue_id, h["Subject"], h["X-Filtered"])))
        if h["Subject"] == "data-no":
            return smtprs.Reply(554, "5.7.1", "No thanks")
        return None


def _ctx(ctx_factory: Any, tmp_path: Path, hooks: smtprs.Hooks, **sections: Any) -> ServerContext:
    aliases = tmp_path / "aliases"
    aliases.write_text("team: dave, erin\n")
    ctx: ServerContext = ctx_factory(
        local={"domains": ["example.test"], "users": ["bob", "carol", "dave", "erin"], "aliases": str(aliases)},
        **sections,
    )
    ctx.session = dataclasses.replace(ctx.session, hooks=hooks)
    return ctx


async def _send(c: Any, subject: str, rcpts: tuple[str, ...] = ("bob@example.test",)) -> Any:
    assert (await c.cmd("MAIL FROM:<a@remote.test>")).code == 250
    for rcpt in rcpts:
        assert (await c.cmd(f"RCPT TO:<{rcpt}>")).code == 250
    assert (await c.cmd("DATA")).code == 354
    return await c.cmd(f"Subject: {subject}\r\nFrom: <a@remote.test>\r\n\r\nthe body\r\n.".encode())


def _qid(r: Any) -> str:
    assert (r.code, r.enhanced) == (250, "2.0.0"), r
    return str(r.text.rsplit(" ", 1)[1])


def _content(ctx: ServerContext, qid: str) -> bytes:
    with ctx.spool.content(qid).open() as fh:
        return fh.read()


def _files(ctx: ServerContext) -> list[str]:
    files = Path(ctx.cfg.data_dir) / "spool" / "shard-0" / "files"
    return sorted(p.name for p in files.iterdir()) if files.exists() else []


async def test_on_message_changes_headers_body_and_recipients_before_the_commit(
    ctx_factory: Any, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="smtprs")
    hooks = Changer()
    ctx = _ctx(ctx_factory, tmp_path, hooks)
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO client.test")
        tagged = _qid(await _send(c, "tag"))
        body = _qid(await _send(c, "body"))
        rcpts = _qid(await _send(c, "rcpts"))
        plain = _qid(await _send(c, "plain"))
        n.cancel_scope.cancel()
    # headers: the milter semantics; our Received field names the new queue id
    raw = _content(ctx, tagged)
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"X-First: top" and lines[1].startswith(b"Received: ")
    assert f"id {tagged}".encode() in head
    assert b"Subject: [tagged] tag" in lines and lines[-1] == b"X-Filtered: yes"
    assert b"Subject: tag\r\n" not in raw and rest == b"the body\r\n"
    assert ctx.spool.load(tagged).size == len(raw)
    # on_data saw the changed message, with its new queue id
    assert ("data", (tagged, "[tagged] tag", "yes")) in hooks.seen
    # the body: replaced, CRLF line ends
    assert _content(ctx, body).endswith(b"\r\n\r\nreplaced\r\nbody\r\n")
    # recipients and sender: the envelope as committed (content unchanged: same queue id)
    env = ctx.spool.load(rcpts)
    assert env.sender == "bounces@example.test"
    assert [r.address for r in env.recipients] == ["carol@example.test", "dave@example.test", "erin@example.test"]
    assert b"Subject: rcpts" in _content(ctx, rcpts)
    assert b"Subject: plain" in _content(ctx, plain)
    # the old writers left nothing behind: 4 messages, each in the file its staging
    # made (files/QID.msg), none for the queue ids the rewritten ones were received as
    assert ctx.spool.count == 4 and _files(ctx) == sorted(f"{q}.msg" for q in (tagged, body, rcpts, plain))
    text = caplog.text
    assert f"{tagged}: hook on_message: content rewritten (received as " in text
    assert f"{rcpts}: hook on_message: added recipient <nobody@example.test> left out: 550 5.1.1" in text
    assert "recipient <bob@example.test> removed" in text and "recipient <dave@example.test> added" in text
    assert "sender <a@remote.test> -> <bounces@example.test>" in text


async def test_removing_every_recipient_discards_with_250_and_a_log_line(
    ctx_factory: Any, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="smtprs")
    ctx = _ctx(ctx_factory, tmp_path, Changer())
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO client.test")
        qid = _qid(await _send(c, "none", ("bob@example.test", "carol@example.test")))
        n.cancel_scope.cancel()
    assert ctx.spool.count == 0 and qid not in ctx.spool and _files(ctx) == []
    assert f"{qid}: hook on_message: discarded, every recipient removed (session C" in caplog.text


@pytest.mark.parametrize(
    "subject, code, enhanced, logged",
    [
        ("boom", 451, "4.3.0", "hook on_message failed (session C"),
        ("junk", 451, "4.3.0", ": hook on_message answered 'not a reply', not a smtprs.Reply or None (session C"),
        ("refuse", 550, "5.7.1", "reject: DATA from [192.0.2.7]:40000: 550 5.7.1 Refused by the filter"),
        ("data-no", 554, "5.7.1", "reject: DATA from [192.0.2.7]:40000: 554 5.7.1 No thanks"),
        ("huge", 451, "4.3.0", "its new body of 5000 octets is over smtpd.max_message_size (4000)"),
    ],
)
async def test_a_failing_or_refusing_hook_leaves_nothing_and_the_session_goes_on(
    ctx_factory: Any, tmp_path: Path, caplog: Any, subject: str, code: int, enhanced: str, logged: str
) -> None:
    caplog.set_level(logging.INFO, logger="smtprs")
    ctx = _ctx(ctx_factory, tmp_path, Changer(), smtpd={"max_message_size": 4000})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO client.test")
        r = await _send(c, subject)
        assert (r.code, r.enhanced) == (code, enhanced)
        assert ctx.spool.count == 0 and _files(ctx) == []  # nothing half-written, nothing committed
        qid = _qid(await _send(c, "plain"))  # the same session: the next message is accepted
        n.cancel_scope.cancel()
    assert ctx.spool.count == 1 and b"X-Never" not in _content(ctx, qid)
    assert logged in caplog.text
    if subject == "boom":
        assert "RuntimeError('message hook exploded')" in caplog.text


async def test_quarantine_puts_the_message_on_hold(ctx_factory: Any, tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="smtprs")
    ctx = _ctx(ctx_factory, tmp_path, Changer())
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO client.test")
        qid = _qid(await _send(c, "hold"))
        n.cancel_scope.cancel()
    assert ctx.spool.load(qid).held
    assert f"{qid}: hook on_message: quarantined (suspicious)" in caplog.text


async def test_a_large_message_body_is_copied_into_the_new_writer(ctx_factory: Any, tmp_path: Path) -> None:
    """Over the spool's inline size the message is a file of its own: the header
    change writes a new one, the old file goes."""
    ctx = _ctx(ctx_factory, tmp_path, Changer())
    big = b"".join(b"line %06d of the body\r\n" % i for i in range(40000))  # ~1 MB
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO client.test")
        assert (await c.cmd("MAIL FROM:<a@remote.test>")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        qid = _qid(await c.cmd(b"Subject: tag\r\n\r\n" + big + b"."))
        n.cancel_scope.cancel()
    raw = _content(ctx, qid)
    assert raw.endswith(b"\r\n\r\n" + big) and b"X-Filtered: yes\r\n" in raw
    assert _files(ctx) == [f"{qid}.msg"]  # only the new message's file


async def test_without_hooks_on_message_nothing_is_staged(ctx_factory: Any) -> None:
    """A hooks object that overrides neither on_message nor on_data: the
    message is committed as it came (no staging, same queue id)."""

    class OnlyRcpt(smtprs.Hooks):
        async def on_rcpt(self, session: smtprs.SessionInfo, sender: str, recipient: str) -> smtprs.Reply | None:
            return None

    ctx = ctx_factory()
    ctx.session = dataclasses.replace(ctx.session, hooks=OnlyRcpt())
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO client.test")
        qid = _qid(await _send(c, "plain", ("x@example.test",)))
        n.cancel_scope.cancel()
    assert qid in ctx.spool and _files(ctx) == []


async def test_a_session_cancelled_while_the_hook_runs_leaves_nothing(ctx_factory: Any, tmp_path: Path) -> None:
    """The server stopping while on_message waits: the session is cancelled,
    the staged spool file goes, nothing was committed (the client got no 250)."""
    started = trio.Event()

    class Slow(smtprs.Hooks):
        async def on_message(self, session: smtprs.SessionInfo, message: smtprs.Message) -> smtprs.Reply | None:
            message.add_header("X-Never", "written")
            started.set()
            await trio.sleep_forever()
            return None

    ctx = _ctx(ctx_factory, tmp_path, Slow())
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO client.test")
        assert (await c.cmd("MAIL FROM:<a@remote.test>")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        await c.send(b"Subject: slow\r\n\r\nbody\r\n.\r\n")
        await started.wait()
        assert len(_files(ctx)) == 1  # staged for the hook
        n.cancel_scope.cancel()
    assert ctx.spool.count == 0 and _files(ctx) == []


async def test_the_null_spool_cannot_show_a_message_to_the_hooks(ctx_factory: Any, tmp_path: Path, caplog: Any) -> None:
    """queue.backend = "null" keeps no content: a hooks object that reads the
    message gets a defined answer, the spool's write error, logged."""
    caplog.set_level(logging.INFO, logger="smtprs")
    ctx = _ctx(ctx_factory, tmp_path, Changer(), queue={"backend": "null"})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO client.test")
        r = await _send(c, "tag")
        assert (r.code, r.enhanced) == (451, "4.3.0")
        n.cancel_scope.cancel()
    assert "cannot show the message to the hooks: the null spool backend keeps no content" in caplog.text
