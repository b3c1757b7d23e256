"""Changes to a received message (smtprs/rewrite.py): header semantics as
Sendmail's milter ones, the new content written beside the old, the envelope
changed, and nothing durable before the commit."""

from __future__ import annotations

import shutil

import pytest

from smtprs import rewrite as W
from smtprs.envelope import Envelope, Recipient
from smtprs.queue.spool import Spool

MESSAGE = (
    b"Received: from c.test by mx.test with ESMTP id QID\r\n"
    b"Subject: one\r\n"
    b"X-Tag: a\r\n"
    b"X-Tag: b\r\n"
    b"X-Folded: first\r\n\tsecond\r\n"
    b"\r\n"
    b"body line\r\n" + b"z" * 3000 + b"\r\n"
)


def _fields(raw: bytes) -> list[bytes]:
    return [f for _, f in W.split_header_block(raw)[0]]


def test_split_header_block_keeps_folds_and_finds_the_body() -> None:
    fields, end = W.split_header_block(MESSAGE)
    assert [n for n, _ in fields] == ["Received", "Subject", "X-Tag", "X-Tag", "X-Folded"]
    assert fields[4][1] == b"X-Folded: first\r\n\tsecond\r\n"
    assert MESSAGE[end:].startswith(b"body line")


def test_split_header_block_stops_at_a_line_that_is_no_field() -> None:
    fields, end = W.split_header_block(b"A: 1\r\nnot a field\r\n")
    assert [n for n, _ in fields] == ["A"] and end == len(b"A: 1\r\n")


def test_header_changes_follow_the_milter_semantics() -> None:
    fields, _ = W.split_header_block(MESSAGE)
    out = W.apply_header_changes(
        fields,
        [
            W.InsertHeader(0, "X-Top", "first"),
            W.AddHeader("X-End", "last\n  folded"),
            W.ChangeHeader(2, "x-tag", "B"),  # the second X-Tag, names compared without case
            W.ChangeHeader(1, "Subject", ""),  # an empty value deletes
            W.ChangeHeader(1, "X-Missing", "added"),  # a missing field is added
            W.ChangeHeader(3, "X-Tag", ""),  # no third X-Tag: nothing happens
        ],
    )
    assert [raw for _, raw in out] == [
        b"X-Top: first\r\n",
        fields[0][1],
        b"X-Tag: a\r\n",
        b"X-Tag: B\r\n",
        fields[4][1],
        b"X-End: last\r\n  folded\r\n",
        b"X-Missing: added\r\n",
    ]


def test_field_bytes_folds_with_crlf_and_white_space() -> None:
    assert W.field_bytes("A", "x\ny") == b"A: x\r\n\ty\r\n"
    assert W.field_bytes("A", " x") == b"A: x\r\n"[:2] + b" x\r\n"
    assert W.crlf_body(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd"


def _env(qid: str, *rcpts: str) -> Envelope:
    return Envelope(queue_id=qid, sender="a@c.test", recipients=[Recipient(r) for r in rcpts], arrival=1.0)


@pytest.mark.parametrize("inline_max", [100_000, 100])  # content in memory, and spilled to a file
async def test_apply_rewrites_content_and_envelope_durably_at_commit(tmp_path, inline_max) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path, inline_max=inline_max)
    spool.open()
    w = spool.create()
    w.write(MESSAGE.replace(b"QID", w.queue_id.encode()))
    env = _env(w.queue_id, "u@x.test", "v@x.test")
    old_qid = w.queue_id
    done = W.apply(
        spool,
        w,
        env,
        [
            W.Edit(headers=[W.AddHeader("X-Spam", "yes")], rcpt_del=["V@x.test"]),
            W.Edit(sender="b@c.test", rcpt_add=["w@x.test"], quarantine="spam"),
        ],
    )
    assert done.writer is not None and not done.discarded
    assert env.queue_id == done.writer.queue_id != old_qid
    assert [r.address for r in env.recipients] == ["u@x.test", "w@x.test"]
    assert env.sender == "b@c.test" and env.held
    assert any("removed" in c for c in done.changes) and any("rewritten" in c for c in done.changes)
    # nothing is durable before the commit: a crash here (a copy of the spool
    # directory opened as at start-up) leaves no message and no stray file
    crashed = tmp_path.parent / (tmp_path.name + "-crash")
    shutil.copytree(tmp_path, crashed)
    at_start = Spool(crashed)
    assert at_start.open() == []
    assert not list(at_start.files_dir.glob("*"))
    await spool.commit(done.writer, env)
    spool.close()
    again = Spool(tmp_path)
    assert again.open() == [env.queue_id]
    with again.content(env.queue_id).open() as fh:
        got = fh.read()
    fields = _fields(got)
    assert fields[0].endswith(f" id {env.queue_id}\r\n".encode())  # our Received names the new id
    assert fields[-1] == b"X-Spam: yes\r\n"
    assert got.endswith(b"\r\n\r\nbody line\r\n" + b"z" * 3000 + b"\r\n")
    assert env.size == len(got)
    loaded = again.load(env.queue_id)
    assert loaded is not None and loaded.held and [r.address for r in loaded.recipients] == ["u@x.test", "w@x.test"]


async def test_apply_replaces_the_body(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path)
    spool.open()
    w = spool.create()
    w.write(MESSAGE)
    env = _env(w.queue_id, "u@x.test")
    done = W.apply(spool, w, env, [W.Edit(body=b"new\nbody\n")])
    assert done.writer is not None
    await spool.commit(done.writer, env)
    with spool.content(env.queue_id).open() as fh:
        assert fh.read().endswith(b"X-Folded: first\r\n\tsecond\r\n\r\nnew\r\nbody\r\n")


async def test_apply_without_content_changes_keeps_the_writer(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path)
    spool.open()
    w = spool.create()
    w.write(MESSAGE)
    env = _env(w.queue_id, "u@x.test")
    done = W.apply(spool, w, env, [W.Edit(rcpt_add=["U@x.test"])])  # already there: no change
    assert done.writer is w and done.changes == [] and len(env.recipients) == 1


async def test_removing_every_recipient_discards(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path, inline_max=10)
    spool.open()
    w = spool.create()
    w.write(MESSAGE)
    env = _env(w.queue_id, "u@x.test")
    done = W.apply(spool, w, env, [W.Edit(headers=[W.AddHeader("X", "1")], rcpt_del=["u@x.test"])])
    assert done.discarded and done.writer is None
    assert not list(spool.files_dir.glob("*"))  # the spilled content was removed
    assert Spool(tmp_path).open() == []


def test_an_empty_edit_is_empty() -> None:
    assert W.Edit().empty() and not W.Edit(rcpt_del=["x@y"]).empty()


async def test_our_received_names_the_new_id_below_authentication_results(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path)
    spool.open()
    w = spool.create()
    w.write(b"Authentication-Results: mx.test; spf=pass\r\n" + MESSAGE.replace(b"QID", w.queue_id.encode()))
    env = _env(w.queue_id, "u@x.test")
    done = W.apply(spool, w, env, [W.Edit(headers=[W.AddHeader("X-A", "1")])])
    assert done.writer is not None
    with done.writer.staged().open() as fh:
        fields = _fields(fh.read())
    assert fields[1].endswith(f" id {env.queue_id}\r\n".encode())
