"""Submission over memory streams and in virtual time: STARTTLS, implicit TLS,
AUTH PLAIN/LOGIN, the growing failure delay, relay and sender policy, and the
RFC 6409 Date/Message-ID fix-ups."""

from __future__ import annotations

import base64
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from smtprs import config
from smtprs.config import Listener
from smtprs.daemon import ServerContext
from smtprs.errors import ConfigError
from smtprs.smtpd import auth
from smtprs.smtpd.session import Session
from smtprs.smtpd.tls import make_self_signed

from .conftest import Client, make_config, spooled

USER = "alice@example.test"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_self_signed(tmp_path_factory.mktemp("tls"), "mx.test")


@pytest.fixture
def client_tls(tls_pair: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tls_pair[0]))
    return ctx


@pytest.fixture
def sub_ctx(ctx_factory: Any, tls_pair: tuple[Path, Path], tmp_path: Path):  # type: ignore[no-untyped-def]
    """A server context with TLS and one user (cheap scrypt parameters: these are not hash tests)."""

    def factory(users: dict[str, str] | None = None, **sections: Any) -> ServerContext:
        users_file = tmp_path / "users"
        entries = {u: auth.hash_password(p, ln=4) for u, p in (users or {USER: PASSWORD}).items()}
        auth.write_users(users_file, entries)
        smtpd = sections.pop("smtpd", {})
        smtpd.setdefault("tls", {"cert_file": str(tls_pair[0]), "key_file": str(tls_pair[1])})
        smtpd["auth"] = {"users_file": str(users_file), **smtpd.get("auth", {})}
        return ctx_factory(smtpd=smtpd, **sections)  # type: ignore[no-any-return]

    return factory


@pytest.fixture
def hashing_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only after 0.2 s of real idleness: AUTH hashes
    passwords in a real thread, and a clock that jumped at once would run the
    session's 300 s timeout out while the hash is being computed."""
    return trio.testing.MockClock(autojump_threshold=0.2)


async def open_session(
    nursery: trio.Nursery,
    ctx: ServerContext,
    mode: str = "submission",
    client_tls: ssl.SSLContext | None = None,
    peer_ip: str = "192.0.2.7",
) -> Client:
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def serve() -> None:
        await Session(ctx.session, server_stream, peer_ip, 40000, Listener("127.0.0.1:587", mode)).run()  # type: ignore[arg-type]
        await server_stream.aclose()

    nursery.start_soon(serve)
    client = Client(client_stream)
    if mode == "submissions":
        assert client_tls is not None
        await starttls(client, client_tls)
    greeting = await client.reply()
    assert greeting.code == 220
    return client


async def starttls(client: Client, client_tls: ssl.SSLContext) -> None:
    stream = trio.SSLStream(client.stream, client_tls, server_hostname="mx.test")
    await stream.do_handshake()
    client.stream = stream


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plain(user: str = USER, password: str = PASSWORD, authzid: str = "") -> str:
    return b64(f"{authzid}\0{user}\0{password}")


async def secure(c: Client, client_tls: ssl.SSLContext) -> None:
    await c.cmd("EHLO client.test")
    r = await c.cmd("STARTTLS")
    assert (r.code, r.enhanced) == (220, "2.0.0")
    await starttls(c, client_tls)
    r = await c.cmd("EHLO client.test")
    assert r.code == 250


async def login(c: Client, client_tls: ssl.SSLContext) -> None:
    await secure(c, client_tls)
    r = await c.cmd(f"AUTH PLAIN {plain()}")
    assert (r.code, r.enhanced) == (235, "2.7.0"), r.text


def queued_id(r: Any) -> str:
    assert r.code == 250, r.text
    return str(r.text.rsplit(" ", 1)[1])


# -- STARTTLS ---------------------------------------------------------------


async def test_submission_wants_tls_then_auth(sub_ctx, client_tls):
    ctx = sub_ctx()
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        r = await c.cmd("EHLO client.test")
        assert "STARTTLS" in r.lines and not any(line.startswith("AUTH") for line in r.lines)
        r = await c.cmd(f"AUTH PLAIN {plain()}")
        assert (r.code, r.enhanced) == (538, "5.7.11")
        r = await c.cmd(f"MAIL FROM:<{USER}>")
        assert (r.code, r.enhanced) == (530, "5.7.0")
        r = await c.cmd("STARTTLS")
        assert (r.code, r.enhanced) == (220, "2.0.0")
        await starttls(c, client_tls)
        # the session started over: no EHLO remembered
        r = await c.cmd(f"MAIL FROM:<{USER}>")
        assert (r.code, r.enhanced) == (503, "5.5.1")
        r = await c.cmd("EHLO client.test")
        assert "AUTH PLAIN LOGIN" in r.lines and "STARTTLS" not in r.lines
        r = await c.cmd("STARTTLS")
        assert (r.code, r.enhanced) == (503, "5.5.1")
        r = await c.cmd(f"MAIL FROM:<{USER}>")
        assert (r.code, r.enhanced) == (530, "5.7.0")
        r = await c.cmd(f"AUTH PLAIN {plain()}")
        assert (r.code, r.enhanced) == (235, "2.7.0")
        r = await c.cmd(f"AUTH PLAIN {plain()}")
        assert (r.code, r.enhanced) == (503, "5.5.1")
        r = await c.cmd(f"MAIL FROM:<{USER}>")
        assert (r.code, r.enhanced) == (250, "2.1.0")
        r = await c.cmd(f"AUTH PLAIN {plain()}")  # never inside a transaction
        assert (r.code, r.enhanced) == (503, "5.5.1")
        n.cancel_scope.cancel()


async def test_bytes_after_starttls_are_discarded_not_executed(sub_ctx, client_tls, caplog):
    ctx = sub_ctx()
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await c.cmd("EHLO client.test")
        await c.send(b"STARTTLS\r\nRSET\r\nMAIL FROM:<evil@example.test>\r\n")
        r = await c.reply()
        assert (r.code, r.enhanced) == (220, "2.0.0")
        assert c.parser.next_reply() is None  # nothing else came in the clear
        await starttls(c, client_tls)
        r = await c.cmd("NOOP")  # the first reply under TLS answers our NOOP, not the RSET
        assert (r.code, r.text) == (250, "Ok")
        r = await c.cmd("RCPT TO:<bob@example.test>")
        assert (r.code, r.enhanced) == (503, "5.5.1")  # the injected MAIL never ran
        n.cancel_scope.cancel()
    assert "sent 37 octets after STARTTLS" in caplog.text


async def test_mx_offers_starttls_only_with_a_certificate(ctx_factory, sub_ctx, client_tls):
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx_factory(), mode="mx")
        r = await c.cmd("EHLO client.test")
        assert "STARTTLS" not in r.lines
        r = await c.cmd("STARTTLS")
        assert (r.code, r.enhanced) == (502, "5.5.1")
        ctx = sub_ctx()
        c = await open_session(n, ctx, mode="mx")
        r = await c.cmd("EHLO client.test")
        assert "STARTTLS" in r.lines and not any(line.startswith("AUTH") for line in r.lines)
        assert (await c.cmd("STARTTLS")).code == 220
        await starttls(c, client_tls)
        await c.cmd("EHLO client.test")
        r = await c.cmd(f"AUTH PLAIN {plain()}")
        assert (r.code, r.enhanced) == (503, "5.5.1")  # no AUTH on an MX listener
        # opportunistic TLS inbound: mail for us is taken, relaying is not
        assert (await c.cmd("MAIL FROM:<x@remote.test>")).code == 250
        r = await c.cmd("RCPT TO:<x@elsewhere.test>")
        assert (r.code, r.enhanced) == (554, "5.7.1")
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        qid = queued_id(await c.cmd(b"Subject: t\r\n\r\nhi\r\n."))
        n.cancel_scope.cancel()
    content = spooled(ctx, qid)
    assert b" with ESMTPS id " in content and b"(using TLSv1." in content
    assert content.endswith(b"\r\nSubject: t\r\n\r\nhi\r\n")  # no fix-ups on an MX listener


async def test_failed_handshake_ends_the_session(sub_ctx, caplog):
    caplog.set_level(logging.INFO, logger="smtprs")
    ctx = sub_ctx()
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await c.cmd("EHLO client.test")
        assert (await c.cmd("STARTTLS")).code == 220
        await c.send(b"this is not a TLS ClientHello\r\n")
        assert await c.closed()
    assert "TLS handshake with [192.0.2.7]:40000 failed" in caplog.text


async def test_handshake_timeout(sub_ctx, autojump_clock):
    ctx = sub_ctx()
    client_stream, server_stream = trio.testing.memory_stream_pair()

    async def serve() -> None:
        await Session(ctx.session, server_stream, "192.0.2.7", 1, Listener("x:465", "submissions")).run()  # type: ignore[arg-type]
        await server_stream.aclose()

    async with trio.open_nursery() as n:
        n.start_soon(serve)
        before = trio.current_time()
        assert await Client(client_stream).closed()  # no greeting: nothing is said before TLS
        assert 29 <= trio.current_time() - before <= 31


# -- implicit TLS -------------------------------------------------------------


async def test_submissions_is_tls_from_the_first_byte(sub_ctx, client_tls):
    ctx = sub_ctx(smtpd={"auth": {"received_user": True}})
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx, mode="submissions", client_tls=client_tls)
        r = await c.cmd("EHLO client.test")
        assert "AUTH PLAIN LOGIN" in r.lines and "STARTTLS" not in r.lines
        assert (await c.cmd(f"AUTH PLAIN {plain()}")).code == 235
        assert (await c.cmd(f"MAIL FROM:<{USER}>")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        qid = queued_id(
            await c.cmd(b"Date: Fri, 29 Nov 2024 08:00:00 +0000\r\nMessage-ID: <a@b>\r\nSubject: t\r\n\r\nhi\r\n.")
        )
        n.cancel_scope.cancel()
    content = spooled(ctx, qid)
    head, _, rest = content.partition(b"\r\nDate: Fri")
    assert b"with ESMTPSA id " + qid.encode() in head
    assert b"(using TLSv1." in head
    assert b"(Authenticated sender: alice@example.test)" in head
    assert rest == b", 29 Nov 2024 08:00:00 +0000\r\nMessage-ID: <a@b>\r\nSubject: t\r\n\r\nhi\r\n"
    env = ctx.spool.load(qid)
    assert (env.auth, env.protocol) == (USER, "ESMTPSA")


# -- AUTH -----------------------------------------------------------------------


async def test_auth_login_and_plain_exchanges(sub_ctx, client_tls):
    ctx = sub_ctx()
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await secure(c, client_tls)
        r = await c.cmd("AUTH LOGIN")
        assert (r.code, r.text) == (334, b64("Username:"))
        r = await c.cmd(b64(USER))
        assert (r.code, r.text) == (334, b64("Password:"))
        r = await c.cmd("*")
        assert (r.code, r.enhanced) == (501, "5.0.0")
        r = await c.cmd("AUTH PLAIN")
        assert r.code == 334 and r.text == ""
        r = await c.cmd("*")
        assert (r.code, r.enhanced) == (501, "5.0.0")
        r = await c.cmd("AUTH PLAIN not-base64!")
        assert (r.code, r.enhanced) == (501, "5.5.2")
        r = await c.cmd(f"AUTH PLAIN {b64('no separators')}")
        assert (r.code, r.enhanced) == (501, "5.5.2")
        r = await c.cmd("AUTH CRAM-MD5")
        assert (r.code, r.enhanced) == (504, "5.5.4")
        assert (await c.cmd("AUTH LOGIN")).code == 334
        r = await c.cmd("x" * 13000)  # over RFC 4954's 12288 octets: the exchange ends
        assert (r.code, r.enhanced) == (500, "5.5.6")
        assert (await c.cmd("NOOP")).code == 250  # and the line after it is a command again
        r = await c.cmd(f"AUTH LOGIN {b64(USER)}")  # initial response: straight to the password
        assert (r.code, r.text) == (334, b64("Password:"))
        r = await c.cmd(b64(PASSWORD))
        assert (r.code, r.enhanced) == (235, "2.7.0")
        n.cancel_scope.cancel()


async def test_auth_plain_continuation_and_case_of_user_name(sub_ctx, client_tls):
    ctx = sub_ctx()
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await secure(c, client_tls)
        assert (await c.cmd("AUTH PLAIN")).code == 334
        r = await c.cmd(plain(user="Alice@Example.TEST"))
        assert (r.code, r.enhanced) == (235, "2.7.0")
        n.cancel_scope.cancel()


async def test_auth_plain_refuses_another_authorization_identity(sub_ctx, client_tls, hashing_clock):
    ctx = sub_ctx()
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await secure(c, client_tls)
        r = await c.cmd(f"AUTH PLAIN {plain(authzid='bob@example.test')}")
        assert (r.code, r.enhanced) == (535, "5.7.8")
        r = await c.cmd(f"AUTH PLAIN {plain(authzid=USER)}")
        assert (r.code, r.enhanced) == (235, "2.7.0")
        n.cancel_scope.cancel()


async def test_failure_delay_grows_per_address_and_is_bounded(sub_ctx, client_tls, hashing_clock):
    ctx = sub_ctx(
        smtpd={"max_errors": 100, "auth": {"failure_delay": 1.0, "max_failure_delay": 5.0, "failure_window": 600.0}}
    )

    async def attempt(c: Client, password: str) -> tuple[int, float]:
        before = trio.current_time()
        r = await c.cmd(f"AUTH PLAIN {plain(password=password)}")
        return r.code, trio.current_time() - before

    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await secure(c, client_tls)
        waits = []
        for _ in range(5):
            code, waited = await attempt(c, "wrong")
            assert code == 535
            waits.append(round(waited, 3))
        assert waits == [1.0, 2.0, 4.0, 5.0, 5.0]
        # another session from the same address carries on where the first left off
        c2 = await open_session(n, ctx)
        await secure(c2, client_tls)
        assert await attempt(c2, "wrong") == (535, 5.0)
        # another address starts from the beginning
        c3 = await open_session(n, ctx, peer_ip="198.51.100.1")
        await secure(c3, client_tls)
        assert await attempt(c3, "wrong") == (535, 1.0)
        # a success is not delayed; the failures are forgotten after the window
        assert (await attempt(c2, PASSWORD))[0] == 235
        await trio.sleep(601)
        c4 = await open_session(n, ctx)
        await secure(c4, client_tls)
        assert await attempt(c4, "wrong") == (535, 1.0)
        n.cancel_scope.cancel()


async def test_unknown_user_is_not_logged_and_password_never_is(sub_ctx, client_tls, hashing_clock, caplog):
    caplog.set_level(logging.DEBUG, logger="smtprs")
    caplog.set_level(logging.DEBUG)
    ctx = sub_ctx()
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await secure(c, client_tls)
        r = await c.cmd(f"AUTH PLAIN {plain(user='typed-my-password-here')}")
        assert r.code == 535
        r = await c.cmd(f"AUTH PLAIN {plain(password='s3cret-wrong')}")
        assert r.code == 535
        assert (await c.cmd(f"AUTH PLAIN {plain()}")).code == 235
        n.cancel_scope.cancel()
    assert "typed-my-password-here" not in caplog.text
    assert f"failed as {USER}" in caplog.text
    for secret in (PASSWORD, "s3cret-wrong", plain(), plain(password="s3cret-wrong")):
        assert secret not in caplog.text


async def test_users_file_is_read_again_when_it_changes(sub_ctx, client_tls, hashing_clock):
    ctx = sub_ctx()
    users_file = ctx.cfg.users_path
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await secure(c, client_tls)
        assert (await c.cmd(f"AUTH PLAIN {plain(user='bob', password='pw')}")).code == 535
        users = auth.read_users(users_file)
        users["bob"] = auth.hash_password("pw", ln=4)
        auth.write_users(users_file, users)
        assert (await c.cmd(f"AUTH PLAIN {plain(user='bob', password='pw')}")).code == 235
        n.cancel_scope.cancel()


async def test_unreadable_users_file_is_a_temporary_failure(sub_ctx, client_tls):
    ctx = sub_ctx()
    ctx.cfg.users_path.write_text("alice:not a hash\n")
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await secure(c, client_tls)
        r = await c.cmd(f"AUTH PLAIN {plain()}")
        assert (r.code, r.enhanced) == (454, "4.7.0")
        n.cancel_scope.cancel()


async def test_plaintext_auth_only_when_allowed(sub_ctx):
    ctx = sub_ctx(smtpd={"auth": {"allow_plaintext": True}})
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        r = await c.cmd("EHLO client.test")
        assert "AUTH PLAIN LOGIN" in r.lines and "STARTTLS" in r.lines
        assert (await c.cmd(f"AUTH PLAIN {plain()}")).code == 235
        assert (await c.cmd(f"MAIL FROM:<{USER}>")).code == 250
        assert (await c.cmd("RCPT TO:<x@elsewhere.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        qid = queued_id(await c.cmd(b"Subject: t\r\n\r\nhi\r\n."))
        n.cancel_scope.cancel()
    assert b" with ESMTPA id " in spooled(ctx, qid)


# -- relay and senders ------------------------------------------------------------


async def test_authenticated_user_relays_and_owns_senders(sub_ctx, client_tls):
    ctx = sub_ctx(
        users={USER: PASSWORD, "carol": "pw"},
        smtpd={"auth": {"senders": {USER: ["*@alice.example.test", "a.smith@example.test"]}}},
    )
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await login(c, client_tls)
        for sender, code in [
            ("bob@example.test", 553),
            ("alice@example.test.evil", 553),
            ("Alice@EXAMPLE.test", 250),
            ("a.smith@example.test", 250),
            ("anything@alice.example.test", 250),
            ("", 250),
        ]:
            r = await c.cmd(f"MAIL FROM:<{sender}>")
            assert r.code == code, (sender, r.text)
            if code == 553:
                assert r.enhanced == "5.7.1"
            else:
                await c.cmd("RSET")
        assert (await c.cmd(f"MAIL FROM:<{USER}>")).code == 250
        assert (await c.cmd("RCPT TO:<friend@elsewhere.test>")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        qid = queued_id(await c.cmd(b"Subject: out\r\n\r\nhi\r\n."))
        # a bare login may use login@ each local domain
        c2 = await open_session(n, ctx)
        await secure(c2, client_tls)
        assert (await c2.cmd(f"AUTH PLAIN {plain('carol', 'pw')}")).code == 235
        assert (await c2.cmd("MAIL FROM:<carol@example.test>")).code == 250
        await c2.cmd("RSET")
        assert (await c2.cmd(f"MAIL FROM:<{USER}>")).code == 553
        n.cancel_scope.cancel()
    env = ctx.spool.load(qid)
    assert [r.address for r in env.recipients] == ["friend@elsewhere.test", "bob@example.test"]
    assert env.auth == USER


async def test_sender_restriction_can_be_turned_off(sub_ctx, client_tls):
    ctx = sub_ctx(smtpd={"auth": {"restrict_senders": False}})
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await login(c, client_tls)
        assert (await c.cmd("MAIL FROM:<someone@else.test>")).code == 250
        n.cancel_scope.cancel()


async def test_mail_auth_parameter(sub_ctx, client_tls):
    ctx = sub_ctx()
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await login(c, client_tls)
        r = await c.cmd(f"MAIL FROM:<{USER}> AUTH=bad+2Cmailbox")
        assert (r.code, r.enhanced) == (501, "5.5.4")
        assert (await c.cmd(f"MAIL FROM:<{USER}> AUTH=<>")).code == 250
        await c.cmd("RSET")
        assert (await c.cmd(f"MAIL FROM:<{USER}> AUTH=someone+40else.test")).code == 250  # not theirs: kept as <>
        await c.cmd("RSET")
        assert (await c.cmd(f"MAIL FROM:<{USER}> AUTH=alice+40example.test")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        qid = queued_id(await c.cmd(b"Subject: t\r\n\r\nhi\r\n."))
        n.cancel_scope.cancel()
    env = ctx.spool.load(qid)
    assert env.params.get("AUTH") == USER


async def test_mx_accepts_auth_parameter_from_unauthenticated_clients(ctx_factory):
    ctx = ctx_factory()
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx, mode="mx")
        await c.cmd("EHLO client.test")
        assert (await c.cmd("MAIL FROM:<a@remote.test> AUTH=a+40remote.test")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        qid = queued_id(await c.cmd(b"Subject: t\r\n\r\nhi\r\n."))
        n.cancel_scope.cancel()
    env = ctx.spool.load(qid)
    assert "AUTH" not in env.params


# -- RFC 6409 fix-ups -----------------------------------------------------------------


async def submit(
    ctx: ServerContext,
    client_tls: ssl.SSLContext,
    message: bytes,
    *,
    bdat: list[bytes] | None = None,
    mode: str = "submission",
) -> bytes:
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx, mode=mode)
        if mode == "submission":
            await login(c, client_tls)
        else:
            await c.cmd("EHLO client.test")
        assert (await c.cmd(f"MAIL FROM:<{USER}>")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        if bdat is None:
            assert (await c.cmd("DATA")).code == 354
            r = await c.cmd(message + b".")
        else:
            for i, chunk in enumerate(bdat):
                last = " LAST" if i == len(bdat) - 1 else ""
                await c.send(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
                r = await c.reply()
        qid = queued_id(r)
        n.cancel_scope.cancel()
    content = spooled(ctx, qid)
    received_end = content.index(b"\r\n", content.index(b"\tfor <")) + 2
    return content[received_end:]


async def test_missing_date_and_message_id_are_added_after_received(sub_ctx, client_tls):
    ctx = sub_ctx()
    out = await submit(ctx, client_tls, b"From: Alice <alice@example.test>\r\nSubject: t\r\n\r\nbody\r\n")
    lines = out.split(b"\r\n")
    assert lines[0].startswith(b"Date: ") and lines[1].startswith(b"Message-ID: <") and lines[1].endswith(b"@mx.test>")
    assert out.endswith(b"\r\nFrom: Alice <alice@example.test>\r\nSubject: t\r\n\r\nbody\r\n")


async def test_present_fields_are_left_alone(sub_ctx, client_tls):
    ctx = sub_ctx()
    msg = b"From: x@y.test\r\nmessage-id: <m@y>\r\nDATE: Fri, 29 Nov 2024 08:00:00 +0000\r\n\r\nDate: in the body\r\n"
    assert await submit(ctx, client_tls, msg) == msg
    msg = b"From: x@y.test\r\nDate: Fri, 29 Nov 2024 08:00:00 +0000\r\n\r\nMessage-ID: <body@y>\r\n"
    out = await submit(ctx, client_tls, msg)
    assert out.startswith(b"Message-ID: <") and out.endswith(msg)


async def test_fixups_across_chunks_without_body_and_without_header(sub_ctx, client_tls):
    ctx = sub_ctx()
    # the blank line cut across BDAT chunks
    out = await submit(
        ctx, client_tls, b"", bdat=[b"Subject: a\r\nDate: Fri, 29 Nov 2024 08:00:00 +0000\r", b"\n\r", b"\nbody\r\n"]
    )
    assert out.startswith(b"Message-ID: <") and out.endswith(
        b"\r\nSubject: a\r\nDate: Fri, 29 Nov 2024 08:00:00 +0000\r\n\r\nbody\r\n"
    )
    # only header fields, no blank line, no body
    out = await submit(ctx, client_tls, b"Subject: only\r\n")
    assert out.split(b"\r\n")[0].startswith(b"Date: ") and out.endswith(b"\r\nSubject: only\r\n")
    # no header at all: the message starts with the blank line
    out = await submit(ctx, client_tls, b"\r\nbody only\r\n")
    assert out.split(b"\r\n")[1].startswith(b"Message-ID: ") and out.endswith(b"\r\n\r\nbody only\r\n")


async def test_held_header_block_is_bounded_by_max_header_size(sub_ctx, client_tls):
    """Submission holds the header block until its end; a block that never ends is refused at
    max_header_size (552 5.3.4) and the held bytes are dropped, whatever keeps coming."""
    ctx = sub_ctx(smtpd={"max_header_size": 4096})
    async with trio.open_nursery() as n:
        c = await open_session(n, ctx)
        await login(c, client_tls)
        assert (await c.cmd(f"MAIL FROM:<{USER}>")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        for i in range(2000):  # 160 kB of header fields, no blank line
            await c.send(f"X-Header-{i:05d}: {'h' * 60}\r\n".encode())
        r = await c.cmd(b".")
        assert (r.code, r.enhanced) == (552, "5.3.4")
        # the session goes on, and a header under the limit is fine
        assert (await c.cmd(f"MAIL FROM:<{USER}>")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        r = await c.cmd(b"Subject: fits\r\n\r\nbody\r\n.")
        assert r.code == 250
        n.cancel_scope.cancel()
    assert ctx.spool.count == 1


async def test_no_fixups_on_mx(sub_ctx, client_tls):
    ctx = sub_ctx()
    msg = b"Subject: from the internet\r\n\r\nbody\r\n"
    assert await submit(ctx, client_tls, msg, mode="mx") == msg


# -- pure parts ---------------------------------------------------------------------


def test_password_hashes():
    encoded = auth.hash_password("pässword", ln=4)
    assert encoded.startswith("$scrypt$ln=4,r=8,p=1$")
    assert "pässword" not in encoded
    assert auth.verify_password("pässword", encoded)
    assert not auth.verify_password("password", encoded)
    assert auth.hash_password("x", ln=4) != auth.hash_password("x", ln=4)  # salted
    assert not auth.verify_password("x", "$scrypt$garbage")


def test_users_file_holds_hashes_only(tmp_path):
    path = tmp_path / "users"
    auth.write_users(path, {"alice@example.test": auth.hash_password(PASSWORD, ln=4)})
    text = path.read_text()
    assert PASSWORD not in text
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert set(auth.read_users(path)) == {"alice@example.test"}
    assert auth.read_users(tmp_path / "missing") == {}
    path.write_text("# comment\n\nbob:$scrypt$ln=4,r=8,p=1$c2FsdA$" + "A" * 43 + "\nnot a line\n")
    with pytest.raises(auth.UsersFileError, match=r"users:4:"):
        auth.read_users(path)


def test_failure_delays_unit():
    d = auth.FailureDelays(0.5, 4.0, 100.0, max_entries=2)
    assert [d.record("192.0.2.1", t) for t in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert d.record("2001:db8::1", 0) == 0.5
    assert d.record("2001:db8::ffff", 0) == 1.0  # the same /64
    assert d.record("::ffff:192.0.2.99", 0) == 0.5  # IPv4-mapped counts as IPv4
    assert d.failures("192.0.2.1", 4) == 0  # forgotten: only the 2 most recent addresses are kept
    assert d.record("198.51.100.1", 0) == 0.5
    assert d.record("198.51.100.1", 200) == 0.5  # after the window


def test_sasl_mechanisms():
    p = auth.Plain()
    assert p.start(None) == auth.Challenge("")
    step = p.start(b64("\0u\0p w"))
    assert isinstance(step, auth.Credentials) and (step.username, step.password) == ("u", "p w")
    assert "p w" not in repr(step)
    assert isinstance(auth.Plain().start("="), auth.Malformed)
    lg = auth.Login()
    assert lg.start("=") == auth.Challenge("Password:")
    step = lg.respond(b64("pw"))
    assert isinstance(step, auth.Credentials) and step.username == ""
    assert auth.mechanism("plain") is not None and auth.mechanism("GSSAPI") is None


@pytest.mark.parametrize(
    "smtpd, key",
    [
        ({"listeners": [{"address": "127.0.0.1:587", "mode": "submission"}]}, "smtpd.listeners[0].mode"),
        (
            {"listeners": [{"address": "127.0.0.1:465", "mode": "submissions"}], "auth": {"allow_plaintext": True}},
            "smtpd.listeners[0].mode",
        ),
        ({"tls": {"cert_file": "c.pem"}}, "smtpd.tls.key_file"),
        ({"tls": {"min_version": "SSLv3"}}, "smtpd.tls.min_version"),
        ({"auth": {"senders": {"alice": ["not an address"]}}}, "smtpd.auth.senders.alice[0]"),
        ({"auth": {"senders": {"alice": "alice@x"}}}, "smtpd.auth.senders.alice"),
        ({"auth": {"failure_delay": 10, "max_failure_delay": 1}}, "smtpd.auth.max_failure_delay"),
    ],
)
def test_config_errors(tmp_path, smtpd, key):
    with pytest.raises(ConfigError) as e:
        make_config(tmp_path, smtpd=smtpd)
    assert str(e.value).startswith(key + ":"), str(e.value)


def test_config_plaintext_submission_and_bad_certificate(tmp_path, tls_pair):
    from smtprs.smtpd import tls

    cfg = make_config(
        tmp_path,
        smtpd={"listeners": [{"address": "127.0.0.1:587", "mode": "submission"}], "auth": {"allow_plaintext": True}},
    )
    assert tls.server_context(cfg) is None
    cfg = make_config(tmp_path, smtpd={"tls": {"cert_file": "nope.pem", "key_file": "nope.key"}})
    with pytest.raises(ConfigError, match=r"^smtpd.tls.cert_file: cannot read"):
        tls.server_context(cfg)
    cfg = make_config(tmp_path, smtpd={"tls": {"cert_file": str(tls_pair[0]), "key_file": str(tls_pair[0])}})
    with pytest.raises(ConfigError, match=r"^smtpd.tls.cert_file: cannot use"):
        tls.server_context(cfg)
    cfg = make_config(
        tmp_path,
        smtpd={"tls": {"cert_file": str(tls_pair[0]), "key_file": str(tls_pair[1]), "ciphers": "NO-SUCH-CIPHER"}},
    )
    with pytest.raises(ConfigError, match=r"^smtpd.tls.ciphers:"):
        tls.server_context(cfg)
    cfg = make_config(
        tmp_path, smtpd={"tls": {"cert_file": str(tls_pair[0]), "key_file": str(tls_pair[1]), "min_version": "TLSv1.3"}}
    )
    assert tls.server_context(cfg).minimum_version == ssl.TLSVersion.TLSv1_3  # type: ignore[union-attr]
    assert config.load(None).smtpd.tls.min_version == "TLSv1.2"
