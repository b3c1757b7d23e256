"""Property/fuzz tests of a whole SMTP session (hypothesis).

Random and mutated dialogues are fed to a real ``Session`` over trio memory
streams (in-process, virtual time, a fresh spool per dialogue).  The dialogues
come from a small SMTP grammar -- greetings, MAIL/RCPT with good and hostile
paths and parameters, DATA with dot-stuffed bodies, BDAT with right and wrong
sizes, pipelined batches, STARTTLS/AUTH/garbage, huge lines -- and are then
mutated: bit flips, truncations, bare CR / bare LF / NUL inserted, segments
dropped or repeated, smuggling sequences inside DATA.  The bytes are sent in
chunks cut wherever hypothesis likes, or in lock step with the server.

The session runs as an MX (port 25 rules) or as a submission service (AUTH
offered in plain text, one user), with or without a TLS certificate (so that
STARTTLS is offered and a client that then sends garbage, or pipelines
commands behind STARTTLS, is met).  Whatever the dialogue, these must hold:

- the session never raises (the server does not crash) and ends by itself;
- every reply line is well formed: CRLF-terminated, at most 512 octets, and
  parsed by ``_core.ReplyParser``; the first reply is the 220 greeting;
- every message that got ``250 ... queued as ID`` is in the spool as a fresh
  ``Spool.open()`` reads it back (what survives a crash), with its envelope,
  and its record was written and then fdatasync'd (its content file and the
  directories fsync'd) *before* the 250 was sent; nothing else is in the
  spool: no message without a 250, no stray or leftover file;
- what was queued keeps the rules: no relaying without AUTH (recipients only
  in local domains, safe local parts), at most max_recipients, content within
  max_message_size, and for dialogues that were not mutated, content equal
  to a body the client sent;
- nothing pipelined behind STARTTLS is executed, and a message smuggled
  inside DATA with a bare-CR/bare-LF "end" is never queued.

Run longer with SMTPRS_FUZZ_PROFILE=long (see conftest.py).
"""

from __future__ import annotations

import base64
import faulthandler
import functools
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import trio
import trio.testing
from hypothesis import assume, event, example, given, note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from smtprs import _core, config
from smtprs.config import Listener
from smtprs.daemon import ServerContext, build
from smtprs.queue.spool import Spool
from smtprs.smtpd import auth
from smtprs.smtpd.session import Session
from smtprs.smtpd.tls import make_self_signed

from .conftest import fuzz_settings

LOCAL_DOMAINS = ("example.test", "other.example")
QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9A-Z]+)$")
SMUGGLED_SENDER = "smuggled@evil.test"
USER, PASSWORD = "alice@example.test", "correct horse battery staple"


def _plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


# ----------------------------------------------------------------- grammar

SENDERS = [
    "<a@remote.test>",
    "<>",
    '<"quoted user"@remote.test>',
    "<@a.test,@b.test:u@remote.test>",
    "<a@[192.0.2.1]>",
    "<jos\u00e9@remote.test>",
    "<a@b@c.test>",
    "<bad",
    "a@remote.test",
    "<" + "l" * 65 + "@x.test>",
    "<a@" + "d" * 64 + ".test>",
]
RECIPIENTS = [
    "<bob@example.test>",
    "<alice@example.test>",
    "<Bob@EXAMPLE.TEST>",
    "<carol@other.example>",
    "<postmaster>",
    "<Postmaster@example.test>",
    "<x@elsewhere.test>",
    "<user%other@example.test>",
    "<user%other.test@example.test>",
    "<user!host@example.test>",
    '<"user@remote.test"@example.test>',
    "<@relay.test:bob@example.test>",
    "<@a.test,@b.test:x@remote.test>",
    "<bob@[127.0.0.1]>",
    "<bob@[IPv6:::1]>",
    "<\u00fcser@example.test>",
    "<.hidden@example.test>",
    "<a..b@example.test>",
    "<../../etc/passwd@example.test>",
    '<"../x"@example.test>',
    "<bob@example.test.>",
    "<>",
    "<bob>",
]
MAIL_PARAMS = [
    "SIZE=100",
    "SIZE=999999999999",
    "SIZE=",
    "SIZE=abc",
    "BODY=8BITMIME",
    "BODY=7BIT",
    "BODY=BINARYMIME",
    "SMTPUTF8",
    "SMTPUTF8=yes",
    "ENVID=a+2Bb",
    "ENVID=a+zz",
    "RET=HDRS",
    "AUTH=<>",
    "X-FOO=bar",
    "=x",
    "SIZE=1 SIZE=2",
]
RCPT_PARAMS = ["NOTIFY=NEVER", "ORCPT=rfc822;bob@example.test", "X=1"]
HEADER_LINES = [
    b"Subject: hello",
    b"From: a@remote.test",
    b"Received: from x by y",
    b"Date: Thu, 1 Jan 2026 00:00:00 +0000",
    b"Message-ID: <m@remote.test>",
    b"X-8bit: caf\xc3\xa9",
]
BODY_LINES = [b"", b".", b"..", b".leading dot", b"...", b"x" * 998, b"x" * 1200, b"\xff\xfe binary-ish", b"tab\there"]
# Every way of ending DATA other than CRLF.CRLF that some MTA once accepted.
SMUGGLE_ENDS = [
    b"\n.\n",
    b"\r.\r",
    b"\r\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\x00\r\n",
]
MISC_COMMANDS = [
    b"NOOP",
    b"RSET",
    b"HELP",
    b"VRFY bob",
    b"EXPN list",
    b"HELP me",
    b"NOOP extra args",
    b"DATA",
    b"DATA junk",
    b"QUIT now",
    b"STARTTLS",
    b"STARTTLS\r\nMAIL FROM:<injected@evil.test>",
    b"AUTH PLAIN dXNlcgB1c2VyAHBhc3M=",
    b"AUTH PLAIN " + _plain(USER, PASSWORD),
    b"AUTH PLAIN " + _plain(USER, PASSWORD) + b"x",
    b"AUTH PLAIN " + _plain("mallory@example.test", PASSWORD),
    b"AUTH PLAIN\r\n" + _plain(USER, PASSWORD),
    b"AUTH PLAIN\r\n*",
    b"AUTH LOGIN\r\n" + base64.b64encode(USER.encode()) + b"\r\n" + base64.b64encode(PASSWORD.encode()),
    b"AUTH LOGIN\r\n" + base64.b64encode(USER.encode()) + b"\r\n!!notbase64",
    b"AUTH LOGIN",
    b"AUTH CRAM-MD5",
    b"AUTH PLAIN " + b"A" * 12300,
    b"EHLO again.test",
    b"HELO",
    b"LHLO x",
    b"BDAT",
    b"BDAT x",
    b"BDAT 99999999999999999999",
    b"BDAT 5 LAST extra",
    b"FOO bar",
    b"",
    b" ",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"\xff\xfe",
]

_line_text = st.binary(max_size=60).map(lambda b: b"x" + b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.sampled_from(HEADER_LINES), max_size=5))
    lines = draw(st.lists(st.one_of(st.sampled_from(BODY_LINES), _line_text), max_size=8))
    parts = [*headers, *([b""] if draw(st.booleans()) else []), *lines]
    body = b"\r\n".join(parts)
    if draw(st.booleans()):
        body += b"\r\n"
    return body


@dataclass
class Dialogue:
    """Byte segments as a client would write them, and what we know of them."""

    segments: list[bytes] = field(default_factory=list)
    bodies: set[bytes] = field(default_factory=set)  # contents a queued message may have
    pure: bool = True  # no mutation, wrong size or smuggling: contents are checkable

    def add(self, data: bytes) -> None:
        self.segments.append(data)


def _mostly(draw: st.DrawFn, good: list[Any], hostile: list[Any]) -> Any:
    """Seven times in ten a well-behaved choice, else a hostile one, so that
    most transactions get far enough to queue a message."""
    return draw(st.sampled_from(good if draw(st.integers(0, 9)) < 7 else hostile))


def _param_text(draw: st.DrawFn, choices: list[str]) -> str:
    params = draw(st.lists(st.sampled_from(choices), max_size=2)) if draw(st.integers(0, 9)) < 3 else []
    if draw(st.integers(0, 15)) == 0:  # a long parameter, echoed in error replies
        n = draw(st.integers(380, 500))
        params.append(draw(st.sampled_from(["K" * n, "X!" * (n // 2), "K=" + "v" * (n - 2)])))
    return "".join(" " + p for p in params)


@st.composite
def transactions(draw: st.DrawFn, d: Dialogue, clean: bool = False) -> None:
    sender = _mostly(draw, SENDERS[:2], SENDERS)
    d.add(f"MAIL FROM:{sender}{_param_text(draw, MAIL_PARAMS)}\r\n".encode())
    for _ in range(draw(st.integers(0, 4))):
        rcpt = _mostly(draw, RECIPIENTS[:4], RECIPIENTS)
        params = _param_text(draw, RCPT_PARAMS) if draw(st.integers(0, 5)) == 0 else ""
        d.add(f"RCPT TO:{rcpt}{params}\r\n".encode())
    how = draw(
        st.sampled_from(["DATA", "DATA", "BDAT", "none"] if clean else ["DATA", "DATA", "BDAT", "smuggle", "none"])
    )
    if how == "DATA":
        body = draw(bodies())
        if draw(st.integers(0, 19)) == 0:  # over the spool's inline limit: a content file of its own
            body += b"Subject: big\r\n\r\n" + (b"y" * 900 + b"\r\n") * draw(st.integers(290, 320))
        d.add(b"DATA\r\n")
        d.add(_core.dot_stuff(body))
        d.bodies.add(_core.dot_unstuff(_core.dot_stuff(body)))
    elif how == "BDAT":
        chunks = draw(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
        for i, chunk in enumerate(chunks):
            size = len(chunk)
            if not clean and draw(st.integers(0, 9)) == 0:
                size = max(0, size + draw(st.integers(-5, 5)))
                d.pure = d.pure and size == len(chunk)
            last = " LAST" if i == len(chunks) - 1 else ""
            d.add(f"BDAT {size}{last}\r\n".encode() + chunk)
        d.bodies.add(b"".join(chunks))
    elif how == "smuggle":
        d.pure = False
        d.add(b"DATA\r\n")
        d.add(b"Subject: smuggle\r\n\r\nhello" + draw(st.sampled_from(SMUGGLE_ENDS)))
        d.add(f"MAIL FROM:<{SMUGGLED_SENDER}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nsmuggled\r\n".encode())
        if draw(st.booleans()):
            d.add(b".\r\n")


@st.composite
def dialogues(draw: st.DrawFn, clean: bool = False) -> Dialogue:
    """A client's dialogue; ``clean``: no huge lines, wrong BDAT sizes or
    smuggling, so that what is queued must be exactly what was sent."""
    d = Dialogue()
    d.add(draw(st.sampled_from([b"EHLO client.test\r\n"] * 4 + [b"HELO client.test\r\n", b""])))
    kinds = ["txn", "txn", "txn", "misc", "auth"] + ([] if clean else ["huge"])
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(kinds))
        if kind == "auth":
            d.add(b"AUTH PLAIN " + _plain(USER, PASSWORD) + b"\r\n")
        elif kind == "txn":
            draw(transactions(d, clean))
        elif kind == "misc":
            # A lone DATA may open a message while a transaction is pending,
            # and then the commands after it are content: not for clean runs.
            command = draw(st.sampled_from([c for c in MISC_COMMANDS if c != b"DATA"] if clean else MISC_COMMANDS))
            d.pure = d.pure and command != b"DATA"
            d.add(command + b"\r\n")
        else:
            n = draw(st.sampled_from([511, 512, 513, 1000, 5000, 20000, 100_000]))
            d.add(
                draw(st.sampled_from([b"NOOP ", b"AUTH PLAIN ", b"", b"MAIL FROM:<"]))
                + b"x" * n
                + draw(st.sampled_from([b"\r\n", b""]))
            )
            d.pure = False
    if draw(st.booleans()):
        d.add(b"QUIT\r\n")
    return d


MUTATIONS = ["flip", "truncate", "insert", "drop", "repeat", "split_crlf"]
INSERTS = [b"\r", b"\n", b"\x00", b"\r\n", b"\r\n.\r\n", b"\n.\n", b"\xff", b"\r\n\r\n"]


@st.composite
def mutated(draw: st.DrawFn) -> Dialogue:
    d = draw(dialogues())
    for _ in range(draw(st.integers(0, 3))):
        if not d.segments:
            break
        d.pure = False
        i = draw(st.integers(0, len(d.segments) - 1))
        seg = d.segments[i]
        kind = draw(st.sampled_from(MUTATIONS))
        at = draw(st.integers(0, len(seg)))
        if kind == "flip" and seg:
            pos = min(at, len(seg) - 1)
            seg = seg[:pos] + bytes([seg[pos] ^ (1 << draw(st.integers(0, 7)))]) + seg[pos + 1 :]
        elif kind == "truncate":
            seg = seg[:at]
        elif kind == "insert":
            seg = seg[:at] + draw(st.sampled_from(INSERTS)) + seg[at:]
        elif kind == "drop":
            seg = b""
        elif kind == "repeat":
            seg = seg + seg
        elif kind == "split_crlf":
            seg = seg.replace(b"\r\n", draw(st.sampled_from([b"\n", b"\r", b"\r\r\n", b"\n\r"])), 1)
        d.segments[i] = seg
    return d


# ------------------------------------------------------------------ running


@dataclass
class Outcome:
    received: bytes
    log: list[tuple[str, str, bytes]]  # ("send"|"write"|"fsync"|"fdatasync", path, data), in order
    spool: Spool
    submission: bool


class LoggingStream(trio.abc.HalfCloseableStream):
    """The server's end of the connection, logging what the server sends."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, log: list[tuple[str, str, bytes]]) -> None:
        self.inner = inner
        self.log = log

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.log.append(("send", "", bytes(data)))
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextmanager
def disk_log(log: list[tuple[str, str, bytes]]) -> Iterator[None]:
    """Record every fsync/fdatasync (with the file's path) and every write to
    a spool segment; the spool does these in a worker thread."""
    real_fsync, real_fdatasync, real_write = os.fsync, os.fdatasync, os.write

    def path_of(fd: Any) -> str:
        fd = fd if isinstance(fd, int) else fd.fileno()
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return "?"

    def fsync(fd: Any) -> None:
        log.append(("fsync", path_of(fd), b""))
        real_fsync(fd)

    def fdatasync(fd: Any) -> None:
        log.append(("fdatasync", path_of(fd), b""))
        real_fdatasync(fd)

    def write(fd: int, data: Any) -> int:
        n = real_write(fd, data)
        path = path_of(fd)
        if path.endswith(".seg"):
            log.append(("write", path, bytes(data[:n])))
        return n

    with (
        mock.patch.object(os, "fsync", fsync),
        mock.patch.object(os, "fdatasync", fdatasync),
        mock.patch.object(os, "write", write),
    ):
        yield


@functools.cache
def _assets() -> tuple[Path, Path, Path]:
    """A users file (one user, cheap scrypt) and a self-signed certificate, made once."""
    d = Path(tempfile.mkdtemp(prefix="smtprs-fuzz-assets-"))
    users = d / "users"
    auth.write_users(users, {USER: auth.hash_password(PASSWORD, ln=4)})
    cert, key = make_self_signed(d, "mx.test")
    return users, cert, key


def make_context(data_dir: Path, limits: dict[str, Any], tls: bool) -> ServerContext:
    users, cert, key = _assets()
    smtpd: dict[str, Any] = {**limits, "auth": {"users_file": str(users), "allow_plaintext": True}}
    if tls:
        smtpd["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    cfg = config.load(
        None,
        overrides={
            "data_dir": str(data_dir),
            "hostname": "mx.test",
            "local": {"domains": list(LOCAL_DOMAINS)},
            "smtpd": smtpd,
        },
    )
    ctx = build(cfg)
    ctx.spool.open()
    return ctx


def run_dialogue(
    data_dir: Path,
    segments: list[bytes],
    cuts: list[int] | None,
    end: str,
    limits: dict[str, Any],
    mode: str = "mx",
    tls: bool = False,
) -> Outcome:
    """Feed the dialogue to a Session; return what it sent and did.

    ``cuts`` None: lock step (each segment sent once the server waits for
    more); else the whole stream cut into pieces of these sizes, cycling.
    ``end``: "eof" (the client closes) or "idle" (it goes quiet: timeout).
    """
    log: list[tuple[str, str, bytes]] = []
    ctx = make_context(data_dir.resolve(), limits, tls)
    received = bytearray()
    clock = trio.testing.MockClock()

    async def main() -> None:
        client, server = trio.testing.memory_stream_pair()

        async def serve() -> None:
            try:
                session = Session(
                    ctx.session, LoggingStream(server, log), "192.0.2.7", 40000, Listener("127.0.0.1:25", mode)
                )  # type: ignore[arg-type]
                await session.run()
            finally:
                await server.aclose()

        async def read() -> None:
            while data := await client.receive_some(65536):
                received.extend(data)

        async def write() -> None:
            try:
                if cuts is None:
                    for seg in segments:
                        if seg:
                            await client.send_all(seg)
                        await trio.testing.wait_all_tasks_blocked()
                else:
                    stream = b"".join(segments)
                    i = k = 0
                    while i < len(stream):
                        n = cuts[k % len(cuts)] if cuts else len(stream)
                        await client.send_all(stream[i : i + n])
                        i, k = i + n, k + 1
                        if k % 3 == 0:
                            await trio.sleep(0)
                if end == "eof":
                    await client.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the server hung up (QUIT, 421): fine
            # From now on virtual time runs whenever every task waits, so an
            # "idle" client meets the server's timeouts (and AUTH failure
            # delays pass) at once.
            clock.autojump_threshold = 0

        async with trio.open_nursery() as n:
            n.start_soon(serve)
            n.start_soon(read)
            await write()
        await client.aclose()

    # A real hang (a bug) kills the run with every thread's traceback rather
    # than eating CI's time: no example takes anywhere near a minute.
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        with disk_log(log):
            trio.run(main, clock=clock)
    finally:
        faulthandler.cancel_dump_traceback_later()
        ctx.spool.close()
    return Outcome(bytes(received), log, ctx.spool, mode != "mx")


def _note(text: str) -> None:
    if currently_in_test_context():
        note(text)


def check_outcome(out: Outcome, d: Dialogue | None, limits: dict[str, Any], smuggling: bool = False) -> list[str]:
    """Assert the invariants; return the queue ids.  ``smuggling``: the
    dialogue's DATA was accepted, so its smuggled transaction must not be."""
    # Replies: CRLF lines of at most 512 octets that ReplyParser reads back.
    raw = out.received
    assert raw, "no greeting"
    assert raw.endswith(b"\r\n"), f"partial reply line at the end: {raw[-80:]!r}"
    lines = raw[:-2].split(b"\r\n")
    for line in lines:
        assert b"\r" not in line and b"\n" not in line, f"bare CR/LF in a reply: {line!r}"
        assert len(line) + 2 <= 512, f"reply line of {len(line) + 2} octets"
    parser = _core.ReplyParser(max_line=512)
    parser.receive_data(raw)
    replies = []
    while (r := parser.next_reply()) is not None:
        replies.append(r)
    assert lines[-1][3:4] in (b" ", b""), f"the last reply is unfinished: {lines[-1]!r}"
    assert replies[0].code == 220, replies[0]
    for r in replies:
        assert 200 <= r.code <= 599
        if r.enhanced is not None:
            assert r.enhanced[0] == str(r.code)[0]
    _note(f"replies: {[f'{r.code} {r.text[:40]}' for r in replies]}")

    # What got a 250 queued-as, in the order the server sent them.
    queued: list[str] = []
    for line in lines:
        m = QUEUED.match(line)
        if m:
            queued.append(m.group(1).decode())
    assert len(set(queued)) == len(queued), "a queue id was given twice"

    # STARTTLS accepted ("220 2.0.0 Ready to start TLS"): the handshake
    # with our garbage fails, and nothing after it is ever answered.
    tls_ready = [i for i, r in enumerate(replies) if r.code == 220 and r.enhanced == "2.0.0"]
    if tls_ready:
        assert tls_ready[0] == len(replies) - 1, "commands answered after STARTTLS without TLS"
    authenticated = any(r.code == 235 for r in replies)

    # Nothing stray on disk: content files only of queued messages (a spilled
    # message that was refused or cut off is gone), nothing moved aside.
    spool = out.spool
    assert list(spool.corrupt_dir.iterdir()) == []
    stray = {p.name for p in spool.files_dir.iterdir()} - {f"{q}.{ext}" for q in queued for ext in ("msg", "env")}
    assert not stray, f"stray spool files {stray}"

    # The spool as a restart reads it back holds exactly the queued messages.
    reread = Spool(spool.root, fsync=False)
    try:
        ids = reread.open()
        assert sorted(ids) == sorted(queued), f"spool holds {ids} but 250 was sent for {queued}"
        envelopes = {qid: reread.load(qid) for qid in queued}
        contents = {}
        for qid in queued:
            with reread.content(qid).open() as fh:
                contents[qid] = fh.read()
    finally:
        reread.close()

    # Durability: before the 250 went out, the message's record was written
    # to a segment and that segment fdatasync'd afterwards; a content file of
    # its own (a big message) was fsync'd, and so were the directories.
    for qid in queued:
        sent = next(
            i for i, (kind, _, data) in enumerate(out.log) if kind == "send" and f"queued as {qid}\r\n".encode() in data
        )
        marker = f'"queue_id":"{qid}"'.encode()
        written = [i for i, (kind, _, data) in enumerate(out.log[:sent]) if kind == "write" and marker in data]
        assert written, f"{qid}: no record written before its 250"
        seg = out.log[written[0]][1]
        synced = [
            i for i, (kind, path, _) in enumerate(out.log[:sent]) if kind in ("fsync", "fdatasync") and path == seg
        ]
        assert any(i > written[0] for i in synced), f"{qid}: segment not synced between its record and the 250"
        assert ("fsync", str(spool.seg_dir), b"") in out.log[:sent], f"{qid}: segment directory never fsync'd"
        own_file = str(spool.files_dir / f"{qid}.msg")
        if os.path.exists(own_file):
            assert ("fsync", own_file, b"") in out.log[:sent], f"{qid}: content file not fsync'd before 250"
            assert ("fsync", str(spool.files_dir), b"") in out.log[:sent], f"{qid}: files/ not fsync'd before 250"

    if currently_in_test_context():
        event(f"queued: {min(len(queued), 2)}{'+' if len(queued) > 2 else ''}")
        event(f"ended by: {replies[-1].code}")
        if authenticated:
            event("authenticated")

    # What was queued is sane and keeps the rules.
    max_rcpt = limits.get("max_recipients", 100)
    max_size = limits.get("max_message_size", 10 * 1024 * 1024)
    for qid in queued:
        env = envelopes[qid]
        assert env is not None and env.queue_id == qid
        # (In random dialogues the "smuggled" commands may be real ones: when
        # the DATA before them was refused, they are the client's commands.)
        assert not smuggling or env.sender != SMUGGLED_SENDER, "a smuggled message was queued"
        # Behind a STARTTLS that was refused (no TLS offered: 502) the MAIL is
        # an ordinary pipelined command; only an accepted one may hide it.
        assert not tls_ready or env.sender != "injected@evil.test", "a command pipelined behind STARTTLS was executed"
        assert 1 <= len(env.recipients) <= max_rcpt
        if not authenticated:
            for rcpt in env.recipients:
                local, _, domain = rcpt.address.rpartition("@")
                if rcpt.address.lower() == "postmaster":
                    continue
                assert domain.lower() in LOCAL_DOMAINS, f"relayed to {rcpt.address} without AUTH"
                assert re.fullmatch(r"[a-z0-9=+_-][a-z0-9._=+-]*", local.lower()) and ".." not in local, rcpt.address
        content = contents[qid]
        assert env.size == len(content)
        assert content.startswith(b"Received: from "), content[:80]
        body = content.split(b"\r\n", 3)[3]
        assert len(body) <= max_size + 200, f"{len(body)} > max_message_size {max_size}"  # + fix-up headers
        if d is not None and d.pure and not out.submission:
            assert body in d.bodies, f"queued content {body[:200]!r} is none of the bodies sent"
    return queued


# -------------------------------------------------------------------- tests

LIMITS = st.sampled_from(
    [
        {},
        {"max_errors": 1000},
        {"max_errors": 1000},
        {"max_errors": 3},
        {"max_errors": 1000, "max_recipients": 2, "max_message_size": 700},
        {"max_command_line": 2048, "max_errors": 50},
        {"max_header_size": 64, "max_received_headers": 1},
    ]
)
CUTS = st.one_of(st.none(), st.lists(st.integers(1, 600), max_size=6))


@fuzz_settings(0.6)
@given(
    d=mutated(),
    cuts=CUTS,
    end=st.sampled_from(["eof", "eof", "idle"]),
    limits=LIMITS,
    mode=st.sampled_from(["mx", "mx", "submission"]),
    tls=st.booleans(),
)
@example(
    d=Dialogue([b"EHLO c\r\n", b"MAIL FROM:<a@b> " + b"X!" * 240 + b"\r\n", b"QUIT\r\n"], pure=False),
    cuts=[],
    end="eof",
    limits={},
    mode="mx",
    tls=False,
)
@example(
    d=Dialogue([b"EHLO c\r\n", b"MAIL FROM:<a@b> " + b"K" * 482 + b"\r\n", b"QUIT\r\n"], pure=False),
    cuts=[],
    end="eof",
    limits={},
    mode="mx",
    tls=False,
)
def test_session_survives_random_dialogues(
    d: Dialogue, cuts: list[int] | None, end: str, limits: dict[str, Any], mode: str, tls: bool
) -> None:
    note(f"segments: {d.segments!r}")
    with tempfile.TemporaryDirectory(prefix="smtprs-fuzz-") as tmp:
        out = run_dialogue(Path(tmp), d.segments, cuts, end, limits, mode, tls)
        check_outcome(out, d, limits)


@fuzz_settings(0.25)
@given(
    before=bodies(),
    crlf=st.booleans(),
    smuggle=st.sampled_from(SMUGGLE_ENDS),
    end=st.sampled_from([b"", b".\r\n", b"\r\n.\r\n", b"\r\n\r\n.\r\n"]),
    cuts=CUTS,
)
def test_smuggled_message_is_never_queued(
    before: bytes, crlf: bool, smuggle: bytes, end: bytes, cuts: list[int] | None
) -> None:
    """A DATA accepted with 354 whose body holds a false end (bare CR or LF,
    or a NUL, around the dot) and then a whole second transaction.  The second
    transaction is never queued and never answered as commands; with a bare
    CR/LF the first message is refused (554 5.5.2) when its real end comes."""
    stuffed = _core.dot_stuff(before)[:-3]  # the body, dot-stuffed, without its end
    if not crlf:
        stuffed = stuffed.removesuffix(b"\r\n")
    segments = [
        b"EHLO client.test\r\n",
        b"MAIL FROM:<a@remote.test>\r\n",
        b"RCPT TO:<bob@example.test>\r\n",
        b"DATA\r\n",
        stuffed
        + smuggle
        + f"MAIL FROM:<{SMUGGLED_SENDER}>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nsmuggled\r\n".encode(),
        end,
        b"QUIT\r\n",
    ]
    with tempfile.TemporaryDirectory(prefix="smtprs-fuzz-") as tmp:
        out = run_dialogue(Path(tmp), segments, cuts, "eof", {})
        queued = check_outcome(out, None, {}, smuggling=True)
    codes = [int(line[:3]) for line in out.received.split(b"\r\n") if line[:1].isdigit() and line[3:4] == b" "]
    assert codes.count(354) == 1, codes
    assert len(queued) <= 1
    if b"\r" in smuggle.replace(b"\r\n", b"") or b"\n" in smuggle.replace(b"\r\n", b""):
        assert queued == [], "a message with a bare CR/LF was queued"
        if end:
            assert 554 in codes, codes


@fuzz_settings(0.15)
@given(d=dialogues(clean=True), cuts=CUTS)
def test_clean_dialogues_queue_what_was_sent(d: Dialogue, cuts: list[int] | None) -> None:
    """Unmutated dialogues (lock step or pipelined): everything queued is a
    body the client sent, byte for byte."""
    assume(d.pure)
    with tempfile.TemporaryDirectory(prefix="smtprs-fuzz-") as tmp:
        out = run_dialogue(Path(tmp), d.segments, cuts, "eof", {})
        check_outcome(out, d, {})
