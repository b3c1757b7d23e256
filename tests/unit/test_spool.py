"""The spool: durable commit in batches, segments, moving deferred mail out,
start-up recovery (torn tails, orphans, foreign files), read-only listing."""

from __future__ import annotations

import os

import trio

from smtprs.envelope import Envelope, Recipient
from smtprs.queue import spool as spool_mod
from smtprs.queue.spool import Spool, read_queue


def _env(qid: str, n: int = 1) -> Envelope:
    return Envelope(queue_id=qid, sender="a@b.test", recipients=[Recipient(f"u{i}@example.test") for i in range(n)], arrival=1.0)


async def _put(spool: Spool, body: bytes) -> str:
    w = spool.create()
    w.write(body)
    await spool.commit(w, _env(w.queue_id))
    return w.queue_id


def _read(spool: Spool, qid: str) -> bytes:
    with spool.content(qid).open() as fh:
        return fh.read()


async def test_commit_then_reopen_finds_message(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    qid = await _put(spool, b"hello\r\n")
    assert _read(spool, qid) == b"hello\r\n"
    assert spool.load(qid).recipients[0].address == "u0@example.test"
    spool.close()
    again = Spool(tmp_path)
    assert again.open() == [qid]
    assert _read(again, qid) == b"hello\r\n"


async def test_abort_leaves_nothing(tmp_path):
    spool = Spool(tmp_path, inline_max=10)
    spool.open()
    w = spool.create()
    w.write(b"x" * 100)  # spilled to its own file
    assert w.path is not None and w.path.exists()
    spool.abort(w)
    assert not w.path.exists()
    assert Spool(tmp_path).open() == []


async def test_big_message_streams_to_its_own_file(tmp_path):
    spool = Spool(tmp_path, inline_max=1000)
    spool.open()
    body = b"0123456789" * 500
    w = spool.create()
    for i in range(0, len(body), 700):
        w.write(body[i : i + 700])
    await spool.commit(w, _env(w.queue_id))
    assert (spool.files_dir / f"{w.queue_id}.msg").read_bytes() == body
    again = Spool(tmp_path)
    assert again.open() == [w.queue_id]
    assert _read(again, w.queue_id) == body
    await again.remove(w.queue_id)
    assert not (spool.files_dir / f"{w.queue_id}.msg").exists()
    assert Spool(tmp_path).open() == []


async def test_memory_budget_spills_to_files(tmp_path):
    spool = Spool(tmp_path, inline_max=1000, memory_budget=1500)
    spool.open()
    a, b = spool.create(), spool.create()
    a.write(b"a" * 900)
    b.write(b"b" * 900)  # over the budget: b goes to a file
    assert a.path is None and b.path is not None
    await spool.commit(a, _env(a.queue_id))
    await spool.commit(b, _env(b.queue_id))
    assert spool._reserved == 0


async def test_concurrent_commits_share_fdatasyncs(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    ids: list[str] = []

    async def one(i: int) -> None:
        ids.append(await _put(spool, b"message %d\r\n" % i))

    async with trio.open_nursery() as n:
        for i in range(50):
            n.start_soon(one, i)
    assert spool.committed_messages == 50
    assert spool.commit_batches < 50
    assert len(list(spool.seg_dir.iterdir())) == 1
    spool.close()
    assert sorted(Spool(tmp_path).open()) == sorted(ids)


async def test_remove_is_durable_and_segments_go_when_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_mod, "SEGMENT_MAX", 200)  # a new segment every batch or so
    spool = Spool(tmp_path)
    spool.open()
    ids = [await _put(spool, b"x" * 150) for _ in range(5)]
    assert len(list(spool.seg_dir.iterdir())) >= 3
    for qid in ids[:4]:
        await spool.remove(qid)
    spool.close()
    again = Spool(tmp_path)
    assert again.open() == [ids[4]]
    for qid in ids[4:]:
        await again.remove(qid)
    await _put(again, b"y")  # a new active segment; everything older is finished
    assert len(list(spool.seg_dir.iterdir())) == 1


async def test_save_moves_deferred_mail_out_of_the_segment(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    qid = await _put(spool, b"body\r\n")
    env = spool.load(qid)
    env.recipients[0].state = "deferred"
    env.recipients[0].attempts = 1
    await spool.save(env)
    assert (spool.files_dir / f"{qid}.msg").read_bytes() == b"body\r\n"
    env.recipients[0].attempts = 2
    await spool.save(env)  # rewritten in place now
    spool.close()
    again = Spool(tmp_path)
    assert again.open() == [qid]
    assert again.load(qid).recipients[0].attempts == 2
    assert _read(again, qid) == b"body\r\n"
    await again.remove(qid)
    assert Spool(tmp_path).open() == []


async def test_torn_tail_is_ignored_and_never_appended_to(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    good = await _put(spool, b"good\r\n")
    await _put(spool, b"torn\r\n")
    spool.close()
    seg = next(spool.seg_dir.iterdir())
    size = seg.stat().st_size
    with open(seg, "r+b") as fh:  # a crash in the middle of the second record
        fh.truncate(size - 5)
    again = Spool(tmp_path)
    assert again.open() == [good]
    third = await _put(again, b"third\r\n")
    assert len(list(again.seg_dir.iterdir())) == 2  # a new segment, not after the torn tail
    again.close()
    assert sorted(Spool(tmp_path).open()) == sorted([good, third])


async def test_start_up_cleans_orphans_and_moves_junk_aside(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    (spool.files_dir / "ORPHAN.msg").write_bytes(b"never acknowledged")
    (spool.files_dir / "HALF.tmp").write_bytes(b"{")
    (spool.files_dir / "README").write_text("foreign file")
    (spool.files_dir / "LONELY.env").write_bytes(b"{}")
    (spool.files_dir / "BAD.msg").write_bytes(b"x")
    (spool.files_dir / "BAD.env").write_bytes(b"not json")
    (spool.seg_dir / "junk").write_bytes(b"??")
    ids = Spool(tmp_path).open()
    assert ids == ["BAD"]
    s2 = Spool(tmp_path)
    s2.open()
    assert s2.load("BAD") is None  # unreadable: moved aside, not a crash
    assert sorted(os.listdir(spool.files_dir)) == []
    aside = os.listdir(spool.corrupt_dir)
    for name in ("README", "LONELY.env", "BAD.env", "junk"):
        assert any(n.startswith(name) for n in aside), aside


async def test_read_queue_lists_without_touching(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    a = await _put(spool, b"aaaa")
    b = await _put(spool, b"bb")
    env = spool.load(b)
    env.recipients[0].state = "deferred"
    await spool.save(env)
    before = sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file())
    listed = {e.queue_id: (size, e.recipients[0].state) for e, size in read_queue(tmp_path)}
    assert listed == {a: (4, "pending"), b: (2, "deferred")}
    assert sorted((p.name, p.stat().st_size) for p in tmp_path.rglob("*") if p.is_file()) == before
