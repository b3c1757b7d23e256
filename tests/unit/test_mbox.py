"""The mbox agent: mboxrd quoting, reading back with Python's mailbox module,
locking (fcntl and dotlock), truncation after a failed write, idempotence."""

from __future__ import annotations

import errno
import mailbox
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smtprs.content import Content
from smtprs.deliver import mbox as mbox_mod
from smtprs.deliver.base import DeliveryRequest, Target
from smtprs.deliver.mbox import MboxAgent, MboxrdQuoter
from smtprs.hops import MboxMailbox

BODY_WITH_FROMS = (
    b"Subject: froms\r\n\r\n"
    b"From the start of a line\r\n"
    b">From already quoted once\r\n"
    b">>From twice\r\n"
    b"From\r\n"
    b" From not at the start\r\n"
    b"Fromage is cheese\r\n"
    b"last line From here\r\n"
)


def unquote_mboxrd(data: bytes) -> bytes:
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


def quote_all(data: bytes, sizes: list[int]) -> bytes:
    q = MboxrdQuoter()
    out, pos = [], 0
    for n in sizes:
        out.append(q.feed(data[pos : pos + n]))
        pos += n
    out.append(q.feed(data[pos:]))
    out.append(q.finish())
    return b"".join(out)


def test_quoting_is_mboxrd():
    text = b"From a\n>From b\n>>From c\nFrom\nFromage\n x From\n>From"
    assert quote_all(text, []) == b">From a\n>>From b\n>>>From c\nFrom\nFromage\n x From\n>From"
    assert quote_all(b"From x", []) == b">From x"
    assert unquote_mboxrd(quote_all(text, [])) == text


def test_quoting_is_the_same_whatever_the_chunking():
    rng = random.Random(7)
    text = BODY_WITH_FROMS.replace(b"\r\n", b"\n") * 20 + b">>>>" * 300 + b"From x\n" + b"y" * 70000 + b"\nFrom z\n"
    want = quote_all(text, [])
    for _ in range(200):
        sizes = [rng.randint(0, 9) for _ in range(rng.randint(0, 60))]
        assert quote_all(text, sizes) == want
    assert quote_all(text, [1] * len(text)) == want


def request(
    tmp_path: Path,
    content: bytes,
    qid: str = "Q1",
    sender: str = "s@remote.test",
    arrival: float = 1732867200.0,
    users=("alice",),
) -> DeliveryRequest:
    path = tmp_path / f"{qid}.msg"
    path.write_bytes(content)
    targets = tuple(
        Target(i, f"{u}@example.test", MboxMailbox(u, "example.test", tmp_path / "mbox" / u))
        for i, u in enumerate(users)
    )
    return DeliveryRequest(qid, sender, Content(path, 0, len(content)), arrival, targets)


async def test_delivered_mbox_reads_back_with_python_mailbox(tmp_path):
    agent = MboxAgent()
    m1 = BODY_WITH_FROMS
    m2 = b"Subject: second\r\n\r\nno trailing newline"
    out = await agent.deliver(request(tmp_path, m1, "Q1"))
    assert [o.status for o in out] == ["delivered"]
    out = await agent.deliver(request(tmp_path, m2, "Q2", sender=""))
    assert [o.status for o in out] == ["delivered"]
    box = mailbox.mbox(tmp_path / "mbox" / "alice", create=False)
    msgs = list(box)
    assert len(msgs) == 2
    assert msgs[0].get_from().startswith("s@remote.test ")
    assert msgs[1].get_from().startswith("MAILER-DAEMON ")
    assert msgs[0]["Return-Path"] == "<s@remote.test>" and msgs[0]["Delivered-To"] == "alice@example.test"
    assert msgs[1]["Return-Path"] == "<>"
    raw0 = box.get_bytes(0)
    assert raw0 == b"Return-Path: <s@remote.test>\nDelivered-To: alice@example.test\n" + quote_all(
        m1.replace(b"\r\n", b"\n"), []
    )
    assert unquote_mboxrd(raw0).endswith(m1.replace(b"\r\n", b"\n"))
    assert box.get_bytes(1).endswith(b"\n\nno trailing newline\n")
    box.close()
    data = (tmp_path / "mbox" / "alice").read_bytes()
    assert data.count(b"\nFrom ") + data.startswith(b"From ") == 2  # only the two separators
    assert not (tmp_path / "mbox" / "alice.lock").exists()


async def test_retry_after_crash_does_not_duplicate(tmp_path):
    agent = MboxAgent()
    req = request(tmp_path, b"Subject: once\r\n\r\nbody\r\n")
    await agent.deliver(req)
    size = (tmp_path / "mbox" / "alice").stat().st_size
    out = await agent.deliver(req)  # the scheduler retries: bookkeeping was lost
    assert out[0].status == "delivered" and "already in mbox" in out[0].detail
    assert (tmp_path / "mbox" / "alice").stat().st_size == size
    # documented limit: once another message was appended, the retry appends again
    await agent.deliver(request(tmp_path, b"Subject: other\r\n\r\nx\r\n", "Q9"))
    await agent.deliver(req)
    assert len(mailbox.mbox(tmp_path / "mbox" / "alice")) == 3


async def test_failed_write_leaves_the_mbox_as_it_was(tmp_path, monkeypatch):
    agent = MboxAgent()
    await agent.deliver(request(tmp_path, b"Subject: first\r\n\r\nbody\r\n", "Q1"))
    path = tmp_path / "mbox" / "alice"
    before = path.read_bytes()
    real_write = os.write
    calls = [0]

    def failing_write(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(mbox_mod.os, "write", failing_write)
    big = b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n"
    out = await agent.deliver(request(tmp_path, big, "Q2"))
    monkeypatch.setattr(mbox_mod.os, "write", real_write)
    assert out[0].status == "deferred" and out[0].detail.startswith("452 4.2.2")
    assert path.read_bytes() == before
    assert not (tmp_path / "mbox" / "alice.lock").exists()


_HOLD_FCNTL = """
import fcntl, sys, time
f = open(sys.argv[1], "ab")
fcntl.lockf(f, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


async def test_fcntl_lock_held_by_another_process_defers_then_waits(tmp_path):
    path = tmp_path / "mbox" / "alice"
    path.parent.mkdir()
    path.write_bytes(b"")
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_FCNTL, str(path), "30"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        t0 = time.monotonic()
        out = await MboxAgent(lock_timeout=0.3).deliver(request(tmp_path, b"Subject: x\r\n\r\ny\r\n"))
        assert out[0].status == "deferred" and "locked" in out[0].detail
        assert 0.3 <= time.monotonic() - t0 < 5
        assert path.read_bytes() == b""
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the lock is free
    out = await MboxAgent(lock_timeout=0.3).deliver(request(tmp_path, b"Subject: x\r\n\r\ny\r\n"))
    assert out[0].status == "delivered"


async def test_dotlock_is_honoured_and_a_stale_one_removed(tmp_path):
    path = tmp_path / "mbox" / "alice"
    path.parent.mkdir()
    lock = tmp_path / "mbox" / "alice.lock"
    lock.write_text("12345\n")
    out = await MboxAgent(lock_timeout=0.2).deliver(request(tmp_path, b"Subject: x\r\n\r\ny\r\n"))
    assert out[0].status == "deferred"
    old = time.time() - mbox_mod.STALE_DOTLOCK - 10
    os.utime(lock, (old, old))
    out = await MboxAgent(lock_timeout=2).deliver(request(tmp_path, b"Subject: x\r\n\r\ny\r\n"))
    assert out[0].status == "delivered"
    assert not lock.exists()


async def test_several_recipients_each_get_their_file(tmp_path):
    out = await MboxAgent().deliver(request(tmp_path, b"Subject: x\r\n\r\ny\r\n", users=("alice", "bob")))
    assert [o.status for o in out] == ["delivered", "delivered"]
    for u in ("alice", "bob"):
        (m,) = list(mailbox.mbox(tmp_path / "mbox" / u))
        assert m["Delivered-To"] == f"{u}@example.test"
        assert oct((tmp_path / "mbox" / u).stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize("sender, expect", [("a@b.test", b"From a@b.test "), ("", b"From MAILER-DAEMON ")])
def test_from_line(sender, expect):
    line = mbox_mod.from_line(sender, 1732867200.0)
    assert line.startswith(expect) and line.endswith(b"2024\n")
