"""The POP3 server over memory streams: states, commands, the snapshot while
mail arrives, deletions only at QUIT, locking, USER/PASS and AUTH PLAIN,
STLS and implicit TLS."""

from __future__ import annotations

import base64
import datetime
import os
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing

from smtprs.retrieve.maildrop import Maildrop, crlf_size, unique_name
from smtprs.retrieve.pop3 import Pop3Context, Pop3Session


class FakeVerifier:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = users

    async def verify(self, username: str, password: str):  # type: ignore[no-untyped-def]
        return "ok" if self.users.get(username.lower()) == password else "bad"


class FixedDelay:
    def __init__(self) -> None:
        self.calls = 0

    def record(self, ip: str, now: float) -> float:
        self.calls += 1
        return 2.0


class Pop3Client:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    async def cmd(self, text: str) -> bytes:
        await self.stream.send_all(text.encode() + b"\r\n")
        return await self.line()

    async def multi(self, text: str) -> tuple[bytes, list[bytes]]:
        first = await self.cmd(text)
        assert first.startswith(b"+OK"), first
        lines = []
        while (line := await self.line()) != b".":
            lines.append(line)
        return first, lines

    async def closed(self) -> bool:
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return True


def put(maildir: Path, name: str, content: bytes, sub: str = "new") -> Path:
    for d in ("tmp", "new", "cur"):
        (maildir / d).mkdir(parents=True, exist_ok=True)
    p = maildir / sub / name
    p.write_bytes(content)
    return p


def unstuff(lines: list[bytes]) -> bytes:
    return b"".join((line[1:] if line.startswith(b"..") else line) + b"\r\n" for line in lines)


M1 = b"Subject: one\n\nFirst body\n.starts with a dot\n..two dots\n"
M2 = b"Subject: two\nX-Long: header\n\nl1\nl2\nl3\nl4\n"


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    root = tmp_path / "mail" / "alice"
    put(root, "1700000001.Q1R0.mx.test", M1)
    put(root, "1700000002.Q2R0.mx.test", M2)
    return root


def context(tmp_path: Path, **kw) -> Pop3Context:  # type: ignore[no-untyped-def]
    kw.setdefault("allow_plaintext", True)
    return Pop3Context(
        "mx.test", FakeVerifier({"alice": "secret", "bob": "pw"}), lambda user: tmp_path / "mail" / user.lower(), **kw
    )


async def start(
    nursery: trio.Nursery, ctx: Pop3Context, *, implicit_tls: bool = False, client_tls: ssl.SSLContext | None = None
) -> Pop3Client:
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def serve() -> None:
        await Pop3Session(ctx, server_stream, "192.0.2.8", 40002, implicit_tls=implicit_tls).run()
        await server_stream.aclose()

    nursery.start_soon(serve)
    stream: trio.abc.Stream = client_stream
    if client_tls is not None:
        stream = trio.SSLStream(client_stream, client_tls, server_hostname="mx.test")
    c = Pop3Client(stream)
    greeting = await c.line()
    assert greeting.startswith(b"+OK"), greeting
    return c


async def login(c: Pop3Client, user: str = "alice", password: str = "secret") -> bytes:
    assert (await c.cmd(f"USER {user}")).startswith(b"+OK")
    return await c.cmd(f"PASS {password}")


async def test_transaction_commands(tmp_path, maildir):
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path))
        r = await c.cmd("STAT")
        assert r.startswith(b"-ERR")  # not in AUTHORIZATION
        assert (await login(c)).startswith(b"+OK Logged in, 2 messages")
        size1, size2 = len(M1.replace(b"\n", b"\r\n")), len(M2.replace(b"\n", b"\r\n"))
        assert await c.cmd("STAT") == f"+OK 2 {size1 + size2}".encode()
        _, listing = await c.multi("LIST")
        assert listing == [f"1 {size1}".encode(), f"2 {size2}".encode()]
        assert await c.cmd("LIST 2") == f"+OK 2 {size2}".encode()
        assert (await c.cmd("LIST 3")).startswith(b"-ERR")
        _, uidls = await c.multi("UIDL")
        assert uidls == [b"1 1700000001.Q1R0.mx.test", b"2 1700000002.Q2R0.mx.test"]
        first, body = await c.multi("RETR 1")
        assert first == f"+OK {size1} octets".encode()
        assert body[2:] == [b"First body", b"..starts with a dot", b"...two dots"]  # dot-stuffed on the wire
        assert unstuff(body) == M1.replace(b"\n", b"\r\n")
        _, top = await c.multi("TOP 2 2")
        assert top == [b"Subject: two", b"X-Long: header", b"", b"l1", b"l2"]
        _, top0 = await c.multi("TOP 2 0")
        assert top0 == [b"Subject: two", b"X-Long: header", b""]
        _, caps = await c.multi("CAPA")
        assert b"TOP" in caps and b"UIDL" in caps and b"USER" not in caps  # USER only before login
        assert await c.cmd("NOOP") == b"+OK"
        assert (await c.cmd("USER bob")).startswith(b"-ERR")
        assert (await c.cmd("QUIT")).startswith(b"+OK")
        assert await c.closed()
    # new/ was moved to cur/ with the sizes in the names; nothing deleted
    assert sorted(p.name for p in (maildir / "cur").iterdir()) == [
        f"1700000001.Q1R0.mx.test,S={len(M1)},W={size1}:2,",
        f"1700000002.Q2R0.mx.test,S={len(M2)},W={size2}:2,",
    ]


async def test_deletions_only_at_quit(tmp_path, maildir):
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path))
        await login(c)
        assert (await c.cmd("DELE 1")).startswith(b"+OK")
        assert (await c.cmd("RETR 1")).startswith(b"-ERR")
        assert (await c.cmd("DELE 1")).startswith(b"-ERR")
        assert (await c.cmd("STAT")).startswith(b"+OK 1 ")
        assert (await c.cmd("RSET")).startswith(b"+OK 2 messages")
        await c.cmd("DELE 2")
        assert len(list((maildir / "cur").iterdir())) == 2  # still there before QUIT
        assert await c.cmd("QUIT") == b"+OK Bye (1 messages deleted)"
    assert [unique_name(p.name) for p in (maildir / "cur").iterdir()] == ["1700000001.Q1R0.mx.test"]


async def test_dropped_connection_deletes_nothing(tmp_path, maildir):
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path))
        await login(c)
        await c.cmd("DELE 1")
        await c.cmd("DELE 2")
        await c.stream.aclose()
    assert len(list((maildir / "cur").iterdir())) == 2
    # and the lock is free again
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path))
        assert (await login(c)).startswith(b"+OK")
        n.cancel_scope.cancel()


async def test_snapshot_while_mail_arrives_and_other_clients_act(tmp_path, maildir):
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path))
        await login(c)
        put(maildir, "1700000003.Q3R0.mx.test", b"Subject: three\n\nlate\n")  # delivered during the session
        assert (await c.cmd("STAT")).startswith(b"+OK 2 ")
        # another client changes message 1's flags (a rename) and removes message 2
        (one,) = [p for p in (maildir / "cur").iterdir() if p.name.startswith("1700000001")]
        one.rename(one.with_name(one.name.split(":")[0] + ":2,S"))
        (two,) = [p for p in (maildir / "cur").iterdir() if p.name.startswith("1700000002")]
        two.unlink()
        _, body = await c.multi("RETR 1")
        assert unstuff(body) == M1.replace(b"\n", b"\r\n")
        assert (await c.cmd("RETR 2")).startswith(b"-ERR [SYS/TEMP]")
        await c.cmd("DELE 1")
        await c.cmd("DELE 2")
        assert await c.cmd("QUIT") == b"+OK Bye (2 messages deleted)"
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path))
        assert (await login(c)).startswith(b"+OK Logged in, 1 messages")
        _, uidls = await c.multi("UIDL")
        assert uidls == [b"1 1700000003.Q3R0.mx.test"]
        n.cancel_scope.cancel()


async def test_one_session_per_maildrop(tmp_path, maildir):
    async with trio.open_nursery() as n:
        c1 = await start(n, context(tmp_path))
        await login(c1)
        c2 = await start(n, context(tmp_path))
        assert (await login(c2)).startswith(b"-ERR [IN-USE]")
        await c1.cmd("QUIT")
        assert (await c2.cmd("USER alice")).startswith(b"+OK")
        assert (await c2.cmd("PASS secret")).startswith(b"+OK")
        n.cancel_scope.cancel()


async def test_bad_password_waits_and_says_auth(tmp_path, maildir, autojump_clock):
    delays = FixedDelay()
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path, delays=delays))
        t0 = trio.current_time()
        r = await login(c, password="wrong")
        assert r.startswith(b"-ERR [AUTH]") and delays.calls == 1
        assert trio.current_time() - t0 >= 2.0
        assert (await c.cmd("PASS secret")).startswith(b"-ERR")  # USER again first
        assert (await login(c)).startswith(b"+OK")
        n.cancel_scope.cancel()


async def test_auth_plain(tmp_path, maildir):
    creds = base64.b64encode(b"\0alice\0secret").decode()
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path))
        assert (await c.cmd(f"AUTH PLAIN {creds}")).startswith(b"+OK Logged in")
        n.cancel_scope.cancel()
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path))
        assert await c.cmd("AUTH PLAIN") == b"+ "
        assert (await c.cmd(creds)).startswith(b"+OK")
        n.cancel_scope.cancel()
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path))
        assert await c.cmd("AUTH PLAIN") == b"+ "
        assert (await c.cmd("*")).startswith(b"-ERR")
        assert (await c.cmd("AUTH PLAIN !!!")).startswith(b"-ERR")
        bob_as_alice = base64.b64encode(b"alice\0bob\0pw").decode()
        assert (await c.cmd(f"AUTH PLAIN {bob_as_alice}")).startswith(b"-ERR [AUTH]")
        assert (await c.cmd("AUTH CRAM-MD5")).startswith(b"-ERR")
        n.cancel_scope.cancel()


async def test_long_lines_and_unknown_commands(tmp_path, maildir):
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path))
        assert (await c.cmd("X" * 5000)).startswith(b"-ERR Line too long")
        assert (await c.cmd("FROB")).startswith(b"-ERR Unknown")
        assert (await c.cmd("NOOP")).startswith(b"-ERR")  # NOOP is a TRANSACTION command
        assert (await c.cmd("QUIT")) == b"+OK Bye"
        assert await c.closed()


# -- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mx.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mx.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    client = ssl.create_default_context(cafile=str(d / "cert.pem"))
    return server, client


async def test_stls_then_login(tmp_path, maildir, tls_pair):
    server_tls, client_tls = tls_pair
    async with trio.open_nursery() as n:
        c = await start(n, context(tmp_path, tls=server_tls, allow_plaintext=False))
        _, caps = await c.multi("CAPA")
        assert b"STLS" in caps and b"USER" not in caps and b"SASL PLAIN" not in caps
        assert (await c.cmd("USER alice")).startswith(b"-ERR [AUTH]")
        await c.stream.send_all(b"STLS\r\nUSER injected\r\n")  # the line after STLS must not survive the handshake
        assert (await c.line()) == b"+OK Begin TLS negotiation"
        c.stream = trio.SSLStream(c.stream, client_tls, server_hostname="mx.test")
        c.buf = b""
        _, caps = await c.multi("CAPA")
        assert b"STLS" not in caps and b"USER" in caps and b"SASL PLAIN" in caps
        assert (await c.cmd("PASS secret")).startswith(b"-ERR")  # the injected USER was dropped
        assert (await login(c)).startswith(b"+OK")
        _, body = await c.multi("RETR 2")
        assert unstuff(body) == M2.replace(b"\n", b"\r\n")
        assert (await c.cmd("QUIT")).startswith(b"+OK")
        n.cancel_scope.cancel()


async def test_implicit_tls(tmp_path, maildir, tls_pair):
    server_tls, client_tls = tls_pair
    async with trio.open_nursery() as n:
        c = await start(
            n, context(tmp_path, tls=server_tls, allow_plaintext=False), implicit_tls=True, client_tls=client_tls
        )
        _, caps = await c.multi("CAPA")
        assert b"STLS" not in caps and b"USER" in caps
        assert (await login(c)).startswith(b"+OK")
        n.cancel_scope.cancel()


# -- the maildrop on its own --------------------------------------------------------


def test_crlf_size_counts_line_ends_once(tmp_path):
    p = tmp_path / "m"
    p.write_bytes(b"a\nb\r\nc")
    assert crlf_size(p) == len(b"a\r\nb\r\nc")


def test_uidl_falls_back_to_a_hash_for_odd_names(tmp_path):
    root = tmp_path / "md"
    put(root, "x" * 100, b"Subject: long name\n\nx\n")
    drop = Maildrop(root)
    drop.open()
    try:
        (m,) = drop.messages
        assert len(m.uidl) == 40 and all(ch in "0123456789abcdef" for ch in m.uidl)
    finally:
        drop.close()
    assert not os.path.exists(root / "new" / ("x" * 100))
