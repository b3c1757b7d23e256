"""The spool: durable commit in batches, segments, moving deferred mail out,
start-up recovery (torn tails, orphans, foreign files), read-only listing."""

from __future__ import annotations

import os

import trio

from smtprs.envelope import Envelope, Recipient
from smtprs.queue import records
from smtprs.queue import spool as spool_mod
from smtprs.queue.spool import Spool, read_queue


def _env(qid: str, n: int = 1) -> Envelope:
    return Envelope(
        queue_id=qid, sender="a@b.test", recipients=[Recipient(f"u{i}@example.test") for i in range(n)], arrival=1.0
    )


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


async def test_a_failed_batch_is_cut_off_and_never_comes_back(tmp_path, monkeypatch):
    """The batch's records were written whole, but its fdatasync failed (ENOSPC, EIO): nobody got a
    250, so none of it may come back after a restart."""
    import errno

    spool = Spool(tmp_path)
    spool.open()
    good = await _put(spool, b"before the disk filled\r\n")
    real_sync = os.fdatasync
    failures = []

    def sync_fails_once(fd):
        if not failures:
            failures.append(fd)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_sync(fd)

    monkeypatch.setattr(spool_mod.os, "fdatasync", sync_fails_once)
    writers = [spool.create() for _ in range(3)]
    for w in writers:
        w.write(b"x" * 100 + b"\r\n")
    errors = []

    async def commit(w):
        try:
            await spool.commit(w, _env(w.queue_id))
        except spool_mod.SpoolError as e:
            errors.append(e)

    async with trio.open_nursery() as n:
        for w in writers:
            n.start_soon(commit, w)
    assert failures and errors and all(e.storage_full for e in errors)
    refused = len(errors)
    after = await _put(spool, b"after the disk had room again\r\n")
    spool.close()
    again = Spool(tmp_path)
    found = again.open()
    assert good in found and after in found
    assert len(found) == 2 + (3 - refused), (found, refused)  # only those that were acknowledged
    assert _read(again, after) == b"after the disk had room again\r\n"
    assert os.listdir(again.corrupt_dir) == []


async def test_damaged_and_foreign_segments_never_stop_the_start(tmp_path, caplog):
    spool = Spool(tmp_path)
    spool.open()
    first = await _put(spool, b"first\r\n")
    second = await _put(spool, b"second\r\n")
    spool.close()
    (seg,) = list(spool.seg_dir.iterdir())
    data = bytearray(seg.read_bytes())
    # damage the first record's content (a bad checksum, with a good record after it)
    data[records.HEAD.size + records.MHEAD.size + 5] ^= 0xFF
    seg.write_bytes(bytes(data))
    (spool.seg_dir / "000000000077.seg").write_bytes(b"this is not a segment at all\n" * 10)  # foreign, segment-named
    (spool.seg_dir / "000000000078.seg").mkdir()  # cannot be read as a file
    again = Spool(tmp_path)
    assert again.open() == []  # the damaged record and everything after it are not used ...
    aside = sorted(os.listdir(again.corrupt_dir))
    # ... but kept for a human: a copy of each damaged segment, the directory moved aside
    assert any(n.startswith(seg.name) for n in aside), aside
    assert any(n.startswith("000000000077.seg") for n in aside), aside
    assert any(n.startswith("000000000078.seg") for n in aside), aside
    assert "unreadable record" in caplog.text
    assert first and second
    # and it works: new mail goes to a new segment
    qid = await _put(again, b"third\r\n")
    again.close()
    assert Spool(tmp_path).open() == [qid]


async def test_zeros_after_the_last_record_are_a_torn_tail_not_damage(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    qid = await _put(spool, b"kept\r\n")
    spool.close()
    (seg,) = list(spool.seg_dir.iterdir())
    with seg.open("ab") as fh:
        fh.write(b"\0" * 4096)  # a file extended by the crash, never written
    again = Spool(tmp_path)
    assert again.open() == [qid]
    assert os.listdir(again.corrupt_dir) == []


async def test_a_file_where_a_spool_directory_belongs_is_moved_aside(tmp_path):
    (tmp_path / "seg").write_text("someone's notes\n")
    spool = Spool(tmp_path)
    assert spool.open() == []
    assert spool.seg_dir.is_dir()
    assert any(n.startswith("seg.") for n in os.listdir(spool.corrupt_dir))
    assert await _put(spool, b"x\r\n")


async def test_remove_that_cannot_be_written_keeps_the_message(tmp_path, monkeypatch):
    import errno

    spool = Spool(tmp_path)
    spool.open()
    qid = await _put(spool, b"still here\r\n")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_mod.os, "write", full)
    try:
        await spool.remove(qid)
    except spool_mod.SpoolError:
        pass
    else:
        raise AssertionError("remove() did not report the failure")
    assert qid in spool and spool.load(qid) is not None  # still queued: the scheduler tries again
    monkeypatch.undo()
    await spool.remove(qid)
    spool.close()
    assert Spool(tmp_path).open() == []


async def test_restart_after_a_crash_between_done_record_and_unlink(tmp_path):
    """Found by the SIGKILL test: a big message (content in files/) was delivered, its D record
    written, and the process died before the content file was unlinked. The next start must
    clean it up, not fail on it (every start would fail the same way: a crash loop)."""
    spool = Spool(tmp_path, inline_max=100)
    spool.open()
    w = spool.create()
    w.write(b"x" * 1000)  # spilled to files/ID.msg
    await spool.commit(w, _env(w.queue_id))
    entry = spool._index.pop(w.queue_id)
    assert await spool._finish_many([(w.queue_id, entry)]) == [None]  # remove() up to the D record, then "SIGKILL"
    assert (spool.files_dir / f"{w.queue_id}.msg").exists()
    spool.close()
    again = Spool(tmp_path)
    assert again.open() == []
    assert not (again.files_dir / f"{w.queue_id}.msg").exists()


async def test_first_load_after_commit_is_the_committed_envelope_then_the_disk(tmp_path):
    """The scheduler's first attempt gets the envelope it was handed (no read-back);
    after that, and after any save, load() reads what is on disk."""
    spool = Spool(tmp_path)
    spool.open()
    w = spool.create()
    w.write(b"hi\r\n")
    env = _env(w.queue_id)
    await spool.commit(w, env)
    assert spool.load(env.queue_id) is env
    second = spool.load(env.queue_id)
    assert second is not env and second.to_json() == env.to_json()
    # a save in between drops the hand-off: the saved state is what load() sees
    w2 = spool.create()
    w2.write(b"ho\r\n")
    env2 = _env(w2.queue_id, 2)
    await spool.commit(w2, env2)
    changed = _env(w2.queue_id, 2)
    changed.held = True
    await spool.save(changed)
    loaded = spool.load(w2.queue_id)
    assert loaded is not env2 and loaded.held
    await spool.remove(w2.queue_id)
    assert spool.load(w2.queue_id) is None
    spool.close()


async def test_save_many_and_remove_many_in_one_go(tmp_path, monkeypatch):
    """A batch's saves: one worker-thread hand-off and one group commit of the D
    records; its removes: one group commit; each message's error on its own."""
    spool = Spool(tmp_path, inline_max=1000)
    spool.open()
    small = [await _put(spool, b"m%d\r\n" % i) for i in range(3)]
    big = await _put(spool, b"x" * 5000)  # content in files/, envelope in the segment
    envs = [spool.load(q) for q in [*small, big]]
    for env in envs:
        env.recipients[0].state = "deferred"
    batches = spool.commit_batches
    errors = await spool.save_many([*envs, _env("NOSUCHQID")])
    assert errors[:4] == [None] * 4 and isinstance(errors[4], KeyError)
    assert spool.commit_batches == batches + 1  # the four D records together
    assert all((tmp_path / "files" / f"{q}.env").exists() for q in [*small, big])
    assert _read(spool, small[0]) == b"m0\r\n" and _read(spool, big) == b"x" * 5000
    again = Spool(tmp_path)
    assert sorted(again.open()) == sorted([*small, big])
    assert again.load(small[1]).recipients[0].state == "deferred"
    before = spool.commit_batches
    assert await spool.remove_many([*small, big, "NOSUCHQID"]) == [None] * 5
    assert spool.commit_batches == before  # everything lives in files/ now: no segment record
    assert spool.count == 0 and Spool(tmp_path).open() == []


async def test_remove_many_of_fresh_messages_is_one_group_commit(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    qids = [await _put(spool, b"m%d\r\n" % i) for i in range(4)]
    before = spool.commit_batches
    assert await spool.remove_many(qids) == [None] * 4
    assert spool.commit_batches == before + 1
    assert spool.count == 0 and Spool(tmp_path).open() == []


# -- issue 20 part 9a: a removed big message is simply gone at the next start


async def test_a_delivered_big_message_is_not_reported_missing_at_start(tmp_path, caplog):
    spool = Spool(tmp_path, inline_max=1000)  # (the default is 256 KiB: the same path)
    spool.open()
    big = await _put(spool, b"x" * 5000)  # content in files/ID.msg, its M record in the segment
    small = await _put(spool, b"small\r\n")
    assert (spool.files_dir / f"{big}.msg").exists()
    await spool.remove(big)  # delivered: a D record, then the file goes
    assert not (spool.files_dir / f"{big}.msg").exists()
    spool.close()
    caplog.clear()
    again = Spool(tmp_path, inline_max=1000)
    assert again.open() == [small]
    assert "missing" not in caplog.text, caplog.text
    assert "spool:" not in caplog.text, caplog.text
    assert os.listdir(again.corrupt_dir) == []
    assert [env.queue_id for env, _ in read_queue(tmp_path)] == [small]
    assert "missing" not in caplog.text, caplog.text


async def test_a_removal_recorded_in_a_later_segment_is_honoured_too(tmp_path, caplog, monkeypatch):
    spool = Spool(tmp_path, inline_max=1000)
    spool.open()
    big = await _put(spool, b"y" * 5000)
    other = await _put(spool, b"other\r\n")  # keeps segment 1 alive
    monkeypatch.setattr(spool_mod, "SEGMENT_MAX", 1)  # from now on every batch starts a new segment
    between = await _put(spool, b"between\r\n")
    await spool.remove(big)  # its D record lands in a newer segment than its M record
    spool.close()
    assert len(os.listdir(spool.seg_dir)) == 3  # segment 1 is kept: other still lives in it
    caplog.clear()
    again = Spool(tmp_path, inline_max=1000)
    assert again.open() == sorted([other, between])
    assert "missing" not in caplog.text, caplog.text


async def test_a_content_file_deleted_behind_our_back_is_still_reported(tmp_path, caplog):
    spool = Spool(tmp_path, inline_max=1000)
    spool.open()
    big = await _put(spool, b"z" * 5000)
    kept = await _put(spool, b"kept\r\n")
    spool.close()
    (spool.files_dir / f"{big}.msg").unlink()  # real damage: queued, never removed, content gone
    caplog.clear()
    again = Spool(tmp_path, inline_max=1000)
    assert again.open() == [kept]
    assert f"content of {big} is missing; moved aside" in caplog.text, caplog.text
    (kept_env,) = [n for n in os.listdir(again.corrupt_dir) if n.startswith(f"{big}.env.")]
    assert Envelope.from_json((again.corrupt_dir / kept_env).read_bytes()).queue_id == big
