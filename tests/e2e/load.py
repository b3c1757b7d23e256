"""A load generator that remembers what happened to every message it sent.

``Load`` runs client threads against a server that may disappear at any
moment (SIGKILL) and come back (on ``port()``, asked again at each connect).
Each message carries a unique token in its Subject and body and is recorded
as a ``Sent`` whose ``outcome`` is

- ``accepted``: the server answered 250 (with the queue id): it must be
  delivered, once per recipient;
- ``refused``: a 4xx/5xx reply to the data: it must never be delivered;
- ``unknown``: the connection broke after the data was sent and before the
  reply was read: the server may or may not have committed it, so it is
  delivered to all of its recipients or to none, and at most once.

Messages not yet sent when a connection broke are not recorded.  Messages
vary: one to three recipients, DATA or BDAT, lines starting with a dot, and
now and then one big enough (300 kB) to be spooled in its own file.

With ``remote_domain`` set, some recipients are in that domain (relayed to a
downstream peer, e.g. smtp-sink): ``match_relayed`` checks what the peer got.
Remote delivery is at least once (as in every MTA: a crash between the peer's
250 and our bookkeeping sends it again), so there duplicates are counted,
not failed.

``match_delivered`` reads the Maildirs back and checks those rules, and that
every delivered file is a message as sent, byte for byte.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .harness import DOMAIN, ConnectionClosed, SMTPClient, check_delivered, make_message, stuff

TOKEN_RE = re.compile(rb"^Subject: load (\S+)$", re.M)


class GoingAway(Exception):
    """The server said 421 (shutting down, too busy): connect again."""


@dataclass
class Sent:
    token: str
    sender: str
    rcpts: list[str]
    message: bytes
    outcome: str = "unknown"
    qid: str | None = None
    reply: str = ""


@dataclass
class Load:
    port: Callable[[], int]
    clients: int = 6
    users: int = 8
    seed: int = 7
    big_every: int = 60  # about one message in this many is big
    max_per_session: int = 8
    remote_domain: str = ""  # recipients here too (relayed), when set
    sent: list[Sent] = field(default_factory=list)
    connect_failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    # -- running ---------------------------------------------------------
    def start(self) -> Load:
        for k in range(self.clients):
            t = threading.Thread(target=self._client, args=(k,), name=f"load-{k}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"load threads did not stop: {alive}"
        assert not self.errors, f"load client errors: {self.errors[:5]}"

    @property
    def accepted(self) -> int:
        with self._lock:
            return sum(1 for s in self.sent if s.outcome == "accepted")

    def wait_accepted(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.accepted < n:
            assert time.monotonic() < deadline, f"only {self.accepted} of {n} messages accepted within {timeout}s"
            assert not self.errors, f"load client errors: {self.errors[:5]}"
            time.sleep(0.02)

    def _message(self, rng: random.Random, k: int, n: int) -> Sent:
        token = f"c{k}n{n}"
        nrcpt = rng.choice((1, 1, 1, 2, 3))
        rcpts = [f"user{u}@{DOMAIN}" for u in rng.sample(range(self.users), nrcpt)]
        if self.remote_domain and rng.random() < 0.3:
            rcpts[-1] = f"far{rng.randrange(self.users)}@{self.remote_domain}"
        lines = [f"message {token}".encode()]
        if rng.randrange(self.big_every) == 0:
            lines += [b"%06d " % i + b"b" * 90 for i in range(3300)]  # ~300 kB
        else:
            for _ in range(rng.randint(1, 30)):
                lines.append(bytes(rng.choice(b"abcdefghij .,-") for _ in range(rng.randint(0, 200))))
        if rng.random() < 0.2:
            lines.append(b".a line that starts with a dot")
        body = b"\r\n".join(lines) + b"\r\n"
        return Sent(token, f"client{k}@client.test", rcpts, make_message(f"load {token}", body))

    def _client(self, k: int) -> None:
        rng = random.Random(self.seed * 1000 + k)
        n = 0
        while not self._stop.is_set():
            try:
                c = SMTPClient(self.port(), timeout=10)
            except OSError:
                with self._lock:
                    self.connect_failures += 1
                time.sleep(rng.uniform(0.02, 0.1))
                continue
            try:
                with c:
                    r = c.reply()
                    if r.code != 220:
                        time.sleep(0.05)
                        continue
                    r = c.cmd(f"EHLO client{k}.test")
                    if r.code != 250:
                        raise GoingAway(str(r))
                    for _ in range(rng.randint(1, self.max_per_session)):
                        if self._stop.is_set():
                            break
                        n += 1
                        self._send_one(c, rng, self._message(rng, k, n))
                    c.cmd("QUIT")
            except (OSError, ConnectionClosed, TimeoutError, GoingAway):
                pass  # the server went away: connect again
            except AssertionError as e:  # a reply that makes no sense
                self.errors.append(f"client {k}: {e}")
                return

    def _send_one(self, c: SMTPClient, rng: random.Random, m: Sent) -> None:
        def expect(line: str, code: int) -> None:
            r = c.cmd(line)
            if r.code == 421:
                raise GoingAway(str(r))
            assert r.code == code, f"{line}: {r}"

        expect(f"MAIL FROM:<{m.sender}>", 250)
        for rcpt in m.rcpts:
            expect(f"RCPT TO:<{rcpt}>", 250)
        bdat = rng.random() < 0.15
        if not bdat:
            expect("DATA", 354)
        with self._lock:
            self.sent.append(m)  # from here on the server may have it
        if bdat:
            c.send(f"BDAT {len(m.message)} LAST\r\n".encode() + m.message)
        else:
            c.send(stuff(m.message) + b".\r\n")
        r = c.reply()
        with self._lock:
            m.reply = str(r)
            if r.code == 250:
                m.outcome = "accepted"
                m.qid = r.qid
            else:
                m.outcome = "refused"


def match_delivered(sent: list[Sent], mail: dict[str, list[Path]]) -> dict[str, int]:
    """Check the Maildirs against what was sent (see the module docstring); return counts."""
    by_token = {s.token: s for s in sent}
    assert len(by_token) == len(sent), "tokens are not unique"
    seen: dict[tuple[str, str], Path] = {}
    for user, files in mail.items():
        for f in files:
            if user.startswith("far"):
                raise AssertionError(f"{f}: a remote recipient was delivered locally")
            content = f.read_bytes()
            m = TOKEN_RE.search(content)
            assert m, f"{f}: a delivered file that no client sent"
            token = m.group(1).decode()
            s = by_token.get(token)
            assert s is not None, f"{f}: token {token} was never sent"
            rcpt = f"{user}@{DOMAIN}"
            assert rcpt in s.rcpts, f"{f}: {token} was for {s.rcpts}, delivered to {user}"
            assert (token, rcpt) not in seen, (
                f"{token} delivered twice to {user}: {seen[(token, rcpt)].name} and {f.name}"
            )
            seen[(token, rcpt)] = f
            assert s.outcome != "refused", f"{token} was refused ({s.reply}) but delivered: {f}"
            check_delivered(f, s.message, sender=s.sender, rcpt=rcpt, qid=s.qid)
    counts = {"accepted": 0, "unknown": 0, "unknown_delivered": 0, "refused": 0, "deliveries": len(seen)}
    for s in sent:
        counts[s.outcome] += 1
        local = [r for r in s.rcpts if r.endswith(f"@{DOMAIN}")]
        got = [r for r in local if (s.token, r) in seen]
        if s.outcome == "accepted":
            assert got == local, f"{s.token} ({s.qid}) got 250 but was delivered only to {got} of {local}"
        elif s.outcome == "unknown":
            assert got in ([], local), f"{s.token} (no reply seen) was delivered to {got} of {local}: half a message"
            counts["unknown_delivered"] += bool(got)
    return counts


def delivered_tokens(mail: dict[str, list[Path]]) -> set[str]:
    """The tokens of every message found in the Maildirs."""
    out = set()
    for files in mail.values():
        for f in files:
            m = TOKEN_RE.search(f.read_bytes())
            if m:
                out.add(m.group(1).decode())
    return out


def match_relayed(sent: list[Sent], dumps: list[Path], remote_domain: str, local_tokens: set[str]) -> dict[str, int]:
    """Check what a downstream smtp-sink received (its dump files) against what was sent:
    every accepted message for a remote recipient arrived, whole, for each of its remote
    recipients; nothing refused arrived; only remote recipients were relayed; a message
    whose reply was lost and that also had local recipients was relayed if and only if it
    was delivered locally (``local_tokens``): all of it or none of it.
    Returns counts, duplicates among them (allowed: remote delivery is at least once)."""
    from .peers import SinkDump

    by_token = {s.token: s for s in sent}
    got: dict[tuple[str, str], int] = {}
    for path in dumps:
        dump = SinkDump.read(path)
        m = TOKEN_RE.search(dump.message)
        assert m, f"{path}: the peer got a message no client sent"
        s = by_token[m.group(1).decode()]
        assert s.outcome != "refused", f"{s.token} was refused ({s.reply}) but relayed"
        expected = s.message.replace(b"\r\n", b"\n")
        assert dump.message.endswith(expected), f"{path}: relayed content differs from what {s.token} was"
        assert dump.mail_args.startswith(f"<{s.sender}>"), dump.mail_args
        for arg in dump.rcpt_args:
            rcpt = arg.split(">", 1)[0].lstrip("<")
            assert rcpt.endswith(f"@{remote_domain}") and rcpt in s.rcpts, (
                f"{s.token}: relayed to {rcpt}, recipients {s.rcpts}"
            )
            got[(s.token, rcpt)] = got.get((s.token, rcpt), 0) + 1
    missing = [
        (s.token, r)
        for s in sent
        if s.outcome == "accepted"
        for r in s.rcpts
        if r.endswith(f"@{remote_domain}") and (s.token, r) not in got
    ]
    assert not missing, f"accepted but never relayed: {missing[:10]}"
    relayed_tokens = {token for token, _ in got}
    for s in sent:
        if (
            s.outcome == "unknown"
            and any(r.endswith(f"@{DOMAIN}") for r in s.rcpts)
            and any(r.endswith(f"@{remote_domain}") for r in s.rcpts)
        ):
            assert (s.token in relayed_tokens) == (s.token in local_tokens), (
                f"{s.token} (no reply seen): relayed {s.token in relayed_tokens}, delivered locally {s.token in local_tokens}: half a message"
            )
    return {"relayed": len(got), "duplicates": sum(n - 1 for n in got.values())}


def expected_deliveries(sent: list[Sent]) -> int:
    """Local deliveries that must exist (accepted messages, one per local recipient)."""
    return sum(1 for s in sent if s.outcome == "accepted" for r in s.rcpts if r.endswith(f"@{DOMAIN}"))


def expected_relayed(sent: list[Sent], remote_domain: str) -> int:
    return sum(1 for s in sent if s.outcome == "accepted" for r in s.rcpts if r.endswith(f"@{remote_domain}"))


def count_mail(mail: dict[str, list[Path]]) -> int:
    return sum(len(files) for files in mail.values())


def wait_quiet(
    srv_mail: Callable[[], dict[str, list[Path]]], at_least: int, timeout: float, settle: float = 1.5
) -> dict[str, list[Path]]:
    """Wait until the Maildirs hold at least ``at_least`` files and stop changing for ``settle`` s."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while True:
        mail = srv_mail()
        n = count_mail(mail)
        if n != last:
            last, since = n, time.monotonic()
        if n >= at_least and time.monotonic() - since >= settle:
            return mail
        assert time.monotonic() < deadline, f"{n} deliveries of at least {at_least} after {timeout}s"
        time.sleep(0.1)
