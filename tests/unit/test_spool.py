"""The spool: durable commit, group commit, start-up clean-up, unreadable files."""

from __future__ import annotations

import os

import trio

from smtprs.envelope import Envelope, Recipient
from smtprs.queue.spool import Spool


def _env(qid: str) -> Envelope:
    return Envelope(queue_id=qid, sender="a@b.test", recipients=[Recipient("u@example.test")], arrival=1.0)


async def test_commit_makes_both_files_and_abort_leaves_nothing(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    w = spool.create()
    w.write(b"hello\r\n")
    await spool.commit(w, _env(w.queue_id))
    assert spool.content_path(w.queue_id).read_bytes() == b"hello\r\n"
    assert spool.load(w.queue_id).recipients[0].address == "u@example.test"
    w2 = spool.create()
    w2.write(b"x")
    spool.abort(w2)
    assert sorted(p.name for p in spool.queue_dir.iterdir()) == sorted([f"{w.queue_id}.msg", f"{w.queue_id}.env"])


async def test_concurrent_commits_share_batches(tmp_path):
    spool = Spool(tmp_path)
    spool.open()

    async def one() -> None:
        w = spool.create()
        w.write(b"x" * 100)
        await spool.commit(w, _env(w.queue_id))

    async with trio.open_nursery() as n:
        for _ in range(50):
            n.start_soon(one)
    assert spool.committed_messages == 50
    assert spool.commit_batches < 50  # commits waiting behind a batch go together
    assert len(spool.open()) == 50


def test_open_removes_content_without_envelope_and_moves_junk_aside(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    (spool.queue_dir / "ORPHAN.msg").write_bytes(b"never acknowledged")
    (spool.queue_dir / "HALF.tmp").write_bytes(b"{")
    (spool.queue_dir / "README").write_text("foreign file")
    (spool.queue_dir / "BAD.msg").write_bytes(b"x")
    (spool.queue_dir / "BAD.env").write_bytes(b"not json")
    ids = spool.open()
    assert ids == ["BAD"]
    assert spool.load("BAD") is None  # unreadable: moved aside, not a crash
    names = set(os.listdir(spool.queue_dir))
    assert names == set()
    aside = os.listdir(spool.corrupt_dir)
    assert any(n.startswith("README") for n in aside)
    assert any(n.startswith("BAD.env") for n in aside)
