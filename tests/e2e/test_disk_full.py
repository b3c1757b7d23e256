"""A full disk, for real: 452 4.3.1, nothing corrupted, and recovery when space returns.

The spool (or the mailboxes) live on a small tmpfs mounted for the test
(``mount -t tmpfs -o size=...``), filled up with a ballast file until the
kernel answers ENOSPC, then emptied again.  Mounting needs root (or
CAP_SYS_ADMIN); without it these tests are skipped, saying so.  (RLIMIT_FSIZE
is no substitute: it gives EFBIG and SIGXFSZ, not ENOSPC.)
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smtprs.queue.spool import read_queue

from .harness import DOMAIN, check, check_delivered, make_message, stuff

pytestmark = pytest.mark.e2e

SENDER = "sender@client.test"


def _mount(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True, text=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up (needs root or CAP_SYS_ADMIN): {r.stderr.strip()}")


@pytest.fixture
def small_fs() -> Iterator[Callable[[Path, str], Path]]:
    mounted: list[Path] = []

    def make(path: Path, size: str = "4m") -> Path:
        _mount(path, size)
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(fs: Path) -> Path:
    """Write ballast files until the file system is full (ENOSPC); return the first."""
    for name, chunk in (("ballast", 65536), ("ballast2", 512)):  # then the last partial page
        fd = os.open(fs / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        finally:
            os.close(fd)
    st = os.statvfs(fs)
    assert st.f_bavail == 0, f"{fs} is not full: {st.f_bavail} blocks free"
    return fs / "ballast"


def empty(fs: Path) -> None:
    for name in ("ballast", "ballast2"):
        (fs / name).unlink(missing_ok=True)


def test_spool_disk_full_452_then_recovery(make_server, small_fs) -> None:
    srv = make_server({"queue": {"retry_min": 0.3, "retry_max": 1.0}}, start=False)
    spool_fs = small_fs(srv.data_dir / "spool", "4m")
    srv.start()
    before = make_message("before", "accepted while there is room\r\n")
    with srv.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(before))
        check(r, 250, "2.0.0")
        qid_before = r.qid
    srv.wait_mail("alice", 1)
    # carol's Maildir is broken: her message waits in the spool while the disk fills
    blocker = srv.block_maildir("carol")
    waiting, qid_waiting = srv.send_deferred(
        "carol", "waiting", "queued before the disk filled, delivered after\r\n", SENDER
    )

    fill(spool_fs)
    refused = []
    with srv.connect() as c:
        c.ehlo()
        # a declared size that cannot fit is refused at MAIL
        c.expect(f"MAIL FROM:<{SENDER}> SIZE=100000", 452, "4.3.1")
        # inline in a segment (10 kB: more than the slack in the segment's last page), in its own
        # file (300 kB), and BDAT: 452 4.3.1 at the end of the data
        for i, body in enumerate([(b"s" * 98 + b"\r\n") * 100, (b"x" * 98 + b"\r\n") * 3000]):
            msg = make_message(f"refused {i}", body)
            refused.append(msg)
            r = c.send_message(SENDER, [f"bob@{DOMAIN}"], stuff(msg))
            check(r, 452, "4.3.1", f"message {i} on a full disk")
        msg = make_message("refused bdat", (b"d" * 98 + b"\r\n") * 100)
        refused.append(msg)
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        c.expect(f"RCPT TO:<bob@{DOMAIN}>", 250)
        c.send(f"BDAT {len(msg)} LAST\r\n".encode() + msg)
        check(c.reply(), 452, "4.3.1", "BDAT on a full disk")
        # the session goes on
        c.expect("NOOP", 250)
    assert srv.alive()
    # carol's mailbox is fixed while the disk is still full: delivery may succeed, but the
    # spool cannot record it yet; it must not be lost or delivered twice
    blocker.unlink()
    time.sleep(1.5)
    assert srv.alive()
    assert len(srv.mail("carol")) <= 1

    empty(spool_fs)
    after = make_message("after", "the disk has room again\r\n")
    with srv.connect() as c:
        c.ehlo()
        r = c.send_message(SENDER, [f"bob@{DOMAIN}"], stuff(after))
        check(r, 250, "2.0.0", "after space returned")
        qid_after = r.qid
    (fb,) = srv.wait_mail("bob", 1, settle=1.0)
    check_delivered(fb, after, sender=SENDER, rcpt=f"bob@{DOMAIN}", qid=qid_after)
    (fc,) = srv.wait_mail("carol", 1, timeout=15, settle=1.5)
    check_delivered(fc, waiting, sender=SENDER, rcpt=f"carol@{DOMAIN}", qid=qid_waiting)
    log = srv.log()
    assert "insufficient system storage" in log or "No space left" in log, srv.log_tail()
    # a restart finds a clean spool: nothing queued, nothing damaged, nothing delivered again
    deadline = time.monotonic() + 10
    while read_queue(srv.spool_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_queue(srv.spool_dir) == []
    srv.restart()
    time.sleep(1.5)
    assert list((srv.shard_dir / "corrupt").iterdir()) == []
    assert "unreadable" not in srv.log()
    assert len(srv.mail("alice")) == 1 and len(srv.mail("bob")) == 1 and len(srv.mail("carol")) == 1
    assert qid_before in srv.mail("alice")[0].read_text()
    for f in srv.mail("bob"):
        assert not any(f.read_bytes().endswith(m.replace(b"\r\n", b"\n")) for m in refused), (
            "a refused message was delivered"
        )


def test_mailbox_disk_full_defers_then_delivers_once(make_server, small_fs, tmp_path) -> None:
    mail_fs = small_fs(tmp_path / "mailfs", "2m")
    srv = make_server({"queue": {"retry_min": 0.3, "retry_max": 1.0}, "local": {"maildir": f"{mail_fs}/{{user}}"}})
    first = make_message("first", "makes the Maildir\r\n")
    with srv.connect() as c:
        c.ehlo()
        check(c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(first)), 250, "2.0.0")
    wait = time.monotonic() + 10
    while not list((mail_fs / "alice" / "new").glob("*")):
        assert time.monotonic() < wait, srv.log_tail()
        time.sleep(0.05)
    fill(mail_fs)
    msgs = [make_message(f"while full {i}", f"accepted, then waits for room {i}\r\n") for i in range(3)]
    qids = []
    with srv.connect() as c:
        c.ehlo()
        for m in msgs:
            r = c.send_message(SENDER, [f"alice@{DOMAIN}"], stuff(m))
            check(r, 250, "2.0.0", "the spool has room; only the mailbox is full")
            qids.append(r.qid)
    for qid in qids:
        line = srv.wait_log(rf"{qid}: to=<alice@{DOMAIN}>.*status=deferred")
        assert "4.2.2" in line and "mailbox full" in line, line
    assert len(list((mail_fs / "alice" / "new").iterdir())) == 1
    empty(mail_fs)
    deadline = time.monotonic() + 15
    while len(list((mail_fs / "alice" / "new").iterdir())) < 4:
        assert time.monotonic() < deadline, srv.log_tail()
        time.sleep(0.1)
    time.sleep(1.0)
    files = sorted((mail_fs / "alice" / "new").iterdir())
    assert len(files) == 4, files
    for qid, m in zip(qids, msgs):
        (f,) = [f for f in files if f"Q{qid}R0" in f.name]
        check_delivered(f, m, sender=SENDER, rcpt=f"alice@{DOMAIN}", qid=qid)
    assert list((mail_fs / "alice" / "tmp").iterdir()) == [], "a half-written copy was left in tmp/"
