"""Many concurrent sessions: every message delivered exactly once, to the right mailbox."""

from __future__ import annotations

import hashlib
import random
import smtplib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .harness import DOMAIN, Server, check_delivered, make_message

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

THREADS = 50
PER_THREAD = 5
USERS = 10


def _body(t: int, m: int) -> bytes:
    rng = random.Random(t * 1000 + m)
    lines = [f"thread {t} message {m}".encode()]
    for _ in range(rng.randint(1, 40)):
        lines.append(bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz .,") for _ in range(rng.randint(0, 120))))
    if m % 2:
        lines.append(b".leading dot")
    return b"\r\n".join(lines) + b"\r\n"


def test_many_concurrent_sessions(server: Server) -> None:
    expected: dict[bytes, tuple[str, bytes, str, str]] = {}  # digest -> (user, message, qid, sender)
    lock = threading.Lock()
    barrier = threading.Barrier(THREADS, timeout=30)

    def client(t: int) -> None:
        user = f"user{t % USERS}"
        sender = f"client{t}@client.test"
        barrier.wait()
        with smtplib.SMTP("127.0.0.1", server.port, local_hostname=f"client{t}.test", timeout=60) as s:
            s.ehlo()
            for m in range(PER_THREAD):
                msg = make_message(f"t{t} m{m}", _body(t, m))
                assert s.mail(sender)[0] == 250
                assert s.rcpt(f"{user}@{DOMAIN}")[0] == 250
                code, resp = s.data(msg)
                assert code == 250, resp
                qid = resp.decode().rsplit(" ", 1)[1]
                with lock:
                    expected[hashlib.sha256(msg.replace(b"\r\n", b"\n")).digest()] = (user, msg, qid, sender)

    with ThreadPoolExecutor(THREADS) as pool:
        for f in [pool.submit(client, t) for t in range(THREADS)]:
            f.result(timeout=120)
    total = THREADS * PER_THREAD
    assert len(expected) == total
    assert len({qid for _, _, qid, _ in expected.values()}) == total, "queue ids are not unique"

    per_user = {f"user{u}": sum(1 for user, _, _, _ in expected.values() if user == f"user{u}") for u in range(USERS)}
    for user, n in per_user.items():
        server.wait_mail(user, n, timeout=60)
    time.sleep(1.0)
    seen: set[bytes] = set()
    mail = server.all_mail()
    assert sorted(mail) == sorted(per_user), sorted(mail)
    for user, files in mail.items():
        assert len(files) == per_user[user], f"{user}: {len(files)} files, {per_user[user]} expected"
        for f in files:
            content = f.read_bytes()
            # the message is what follows our three header fields
            matches = [d for d, (_, msg, _, _) in expected.items() if content.endswith(msg.replace(b"\r\n", b"\n"))]
            assert len(matches) == 1, f"{user}/{f.name} matches {len(matches)} sent messages"
            digest = matches[0]
            assert digest not in seen, f"{f.name}: delivered twice"
            seen.add(digest)
            want_user, msg, qid, sender = expected[digest]
            assert want_user == user, f"a message for {want_user} was delivered to {user}"
            check_delivered(f, msg, sender=sender, rcpt=f"{user}@{DOMAIN}", qid=qid)
    assert len(seen) == total
