"""The hooks of issue 18 parts 3-4 without sockets: the do-nothing ``Hooks()``,
``Permit``, loading "package.module:factory", ``Content.headers()``, and the
session's hook calls over memory streams (permit, exceptions, on_auth,
on_disconnect), plus the scheduler's on_deferred."""

from __future__ import annotations

import base64
import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import smtprs
from smtprs import hooks as hooks_mod
from smtprs.content import Content, parse_headers, read_header_block
from smtprs.errors import ConfigError
from smtprs.smtpd.auth import hash_password, write_users

from .conftest import start_session

# -- Hooks(), Permit ---------------------------------------------------------------


async def test_a_hooks_object_that_overrides_nothing_is_constructible_and_does_nothing() -> None:
    h = smtprs.Hooks()
    info = smtprs.SessionInfo("C1", "192.0.2.1", 25, "mx")
    env = smtprs.Envelope("Q1", "a@b.test", [smtprs.Recipient("c@d.test")], 0.0)
    assert await h.on_connect(info) is None
    assert await h.on_helo(info, "x") is None
    assert await h.on_auth(info, "PLAIN", "u", "p") is None
    assert await h.on_mail(info, "") is None
    assert await h.on_rcpt(info, "", "c@d.test") is None
    assert await h.on_data(info, env, Content(Path("/dev/null"), 0, 0)) is None
    assert await h.on_disconnect(info) is None
    for name in ("on_delivered", "on_bounced", "on_deferred"):
        assert await getattr(h, name)(env, env.recipients[0]) is None
    assert not any(hooks_mod.overrides(h, name) for name in hooks_mod.HOOK_NAMES)


def test_overrides_names_what_a_subclass_defines() -> None:
    class Rcpt(smtprs.Hooks):
        async def on_rcpt(self, session: smtprs.SessionInfo, sender: str, recipient: str) -> smtprs.Reply | None:
            return None

    assert hooks_mod.overrides(Rcpt(), "on_rcpt")
    assert not hooks_mod.overrides(Rcpt(), "on_mail")
    assert not hooks_mod.overrides(None, "on_rcpt")


def test_permit_is_a_2xx_reply() -> None:
    assert isinstance(smtprs.PERMIT, smtprs.Reply) and isinstance(smtprs.PERMIT, smtprs.Permit)
    assert (smtprs.PERMIT.code, smtprs.PERMIT.enhanced) == (250, "2.1.5")
    assert not smtprs.PERMIT.is_error
    assert smtprs.Permit(text="Ok, listed in the directory").encode() == b"250 2.1.5 Ok, listed in the directory\r\n"
    with pytest.raises(ValueError):
        smtprs.Permit(550, "5.7.1", "no")
    assert smtprs.Reply(250, "2.1.5", "Ok") != smtprs.PERMIT  # a plain 2xx is not a permit


# -- hooks.load ----------------------------------------------------------------------

MODULE = """
import smtprs

class MyHooks(smtprs.Hooks):
    pass

def make():
    return MyHooks()

def not_hooks():
    return object()

def broken():
    raise RuntimeError("cannot reach the database")

class Holder:
    make = staticmethod(make)

value = 42
"""


@pytest.fixture
def hook_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"hookmod_{abs(hash(str(tmp_path)))}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / f"{name}_bad.py").write_text("import no_such_module_here\n")
    (tmp_path / f"{name}_syntax.py").write_text("def (:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    for suffix in ("", "_bad", "_syntax"):
        sys.modules.pop(name + suffix, None)


def test_load_makes_hooks_from_a_factory_or_a_class(hook_module: str) -> None:
    assert type(hooks_mod.load(f"{hook_module}:make")).__name__ == "MyHooks"
    assert type(hooks_mod.load(f"{hook_module}:MyHooks")).__name__ == "MyHooks"
    assert type(hooks_mod.load(f" {hook_module}:Holder.make ")).__name__ == "MyHooks"
    a, b = hooks_mod.load(f"{hook_module}:make"), hooks_mod.load(f"{hook_module}:make")
    assert a is not b  # each worker (each call) makes its own


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_colon_here", 'expected "package.module:factory"'),
        (":make", 'expected "package.module:factory"'),
        ("{m}:", 'expected "package.module:factory"'),
        ("no_such_module_xyz:make", "cannot import no_such_module_xyz: ModuleNotFoundError"),
        ("{m}_bad:make", "cannot import {m}_bad: ModuleNotFoundError"),
        ("{m}_syntax:make", "cannot import {m}_syntax: SyntaxError"),
        ("{m}:missing", "{m} has no missing"),
        ("{m}:value", "is not callable"),
        ("{m}:not_hooks", "returned a object, not a smtprs.Hooks"),
        ("{m}:broken", "broken() failed: RuntimeError: cannot reach the database"),
    ],
)
def test_load_failures_are_config_errors_naming_the_key(hook_module: str, spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        hooks_mod.load(spec.format(m=hook_module))
    assert str(e.value).startswith("hooks: ")
    assert message.format(m=hook_module) in str(e.value)


def test_the_hooks_key_is_a_string_defaulting_to_empty() -> None:
    assert smtprs.load_config().hooks == ""
    assert smtprs.load_config(overrides={"hooks": "a.b:c"}).hooks == "a.b:c"
    with pytest.raises(ConfigError):
        smtprs.load_config(overrides={"hooks": 3})


# -- Content.headers ---------------------------------------------------------------


def _content(tmp_path: Path, data: bytes, prefix: bytes = b"") -> Content:
    p = tmp_path / "msg"
    p.write_bytes(prefix + data + b"trailing segment bytes of another message")
    return Content(p, len(prefix), len(data))


def test_headers_parses_the_header_block_only(tmp_path: Path) -> None:
    msg = (
        b"Received: from a\r\n\tby b; Mon, 7 Dec 2026 10:00:00 +0000\r\n"
        b"Received: from c by d\r\n"
        b"Subject: =?utf-8?q?caf=C3=A9?= and\r\n more\r\n"
        b"From: Alice <alice@example.test>\r\n"
        b"\r\n"
        b"Subject: not a header, the body\r\n" + b"x" * 100_000 + b"\r\n"
    )
    h = _content(tmp_path, msg, prefix=b"previous message in the segment\r\n\r\n").headers()
    assert h["Subject"] == "café and more"
    assert len(h.get_all("Received")) == 2
    assert h["From"].addresses[0].addr_spec == "alice@example.test"
    assert [k for k, _ in h.items()] == ["Received", "Received", "Subject", "From"]
    assert h.get_payload() == ""  # no body read
    assert read_header_block(_content(tmp_path, msg)).endswith(b"From: Alice <alice@example.test>\r\n")


def test_headers_bad_input_gives_a_defined_result(tmp_path: Path) -> None:
    # no header at all, a message without a body, LF line ends, a line that is no field
    assert read_header_block(_content(tmp_path, b"\r\nbody only\r\n")) == b""
    assert parse_headers(b"").items() == []
    assert _content(tmp_path, b"Subject: only headers\r\n").headers()["Subject"] == "only headers"
    assert _content(tmp_path, b"Subject: lf\n\nbody\nSubject: no\n").headers().get_all("Subject") == ["lf"]
    h = _content(tmp_path, b"Subject: ok\r\nthis line is not a field\r\nX: y\r\n\r\nbody").headers()
    assert h["Subject"] == "ok"
    h = _content(tmp_path, b"From: <<<@@@>>>\r\nDate: not a date\r\n\r\n").headers()
    assert str(h["From"]) is not None and h["Date"].datetime is None  # kept, with defects, no exception
    # a header block longer than the limit: cut at its last whole line
    big = b"".join(b"X-Filler-%06d: %s\r\n" % (i, b"y" * 50) for i in range(2000)) + b"\r\nbody"
    block = read_header_block(_content(tmp_path, big), limit=10_000)
    assert len(block) <= 10_000 and block.endswith(b"\r\n")
    assert len(_content(tmp_path, big).headers(limit=10_000).items()) == len(block.split(b"\r\n")) - 1
    # the end of the header block split across two reads
    msg = b"A: " + b"a" * (16 * 1024 - 5) + b"\r\n\r\nB: body\r\n"
    assert _content(tmp_path, msg).headers().keys() == ["A"]


# -- the session's hook calls ------------------------------------------------------


class Recorder(smtprs.Hooks):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    async def on_rcpt(self, session: smtprs.SessionInfo, sender: str, recipient: str) -> smtprs.Reply | None:
        self.events.append(("rcpt", recipient, session.refused))
        local = recipient.partition("@")[0]
        if local == "boom":
            raise RuntimeError("rcpt hook exploded")
        if local == "junk":
            return "not a reply"  # type: ignore[return-value]
        if local == "no":
            return smtprs.Reply(550, "5.7.1", "Refused by the hook")
        if local.startswith("permit") and session.refused is not None:
            return smtprs.Permit(text="Ok, permitted")
        return None

    async def on_data(
        self, session: smtprs.SessionInfo, envelope: smtprs.Envelope, content: smtprs.Content
    ) -> smtprs.Reply | None:
        h = content.headers()
        self.events.append(("data", envelope.queue_id, h["Subject"]))
        if h["Subject"] == "boom":
            raise RuntimeError("data hook exploded")
        return None

    async def on_auth(self, session: smtprs.SessionInfo, mechanism: str, username: str, password: str) -> bool | None:
        self.events.append(("auth", mechanism, username))
        if username == "ext":
            return password == "secret"
        if username == "broken":
            raise RuntimeError("directory down")
        if username == "odd":
            return "yes"  # type: ignore[return-value]
        return None

    async def on_disconnect(self, session: smtprs.SessionInfo) -> None:
        self.events.append(("disconnect", session.id))


def _hooked(ctx_factory: Any, hooks: smtprs.Hooks, **sections: Any) -> Any:
    ctx = ctx_factory(**sections)
    ctx.session = dataclasses.replace(ctx.session, hooks=hooks)
    return ctx


async def test_rcpt_permit_lifts_relay_denied_and_exceptions_answer_451(ctx_factory: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="smtprs")
    hooks = Recorder()
    ctx = _hooked(
        ctx_factory,
        hooks,
        local={"domains": ["example.test"], "users": ["bob"]},
        relay={"transport": {"elsewhere.test": "smtp:[127.0.0.1]:2525"}},
    )
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        assert (await c.cmd("EHLO client.test")).code == 250
        assert (await c.cmd("MAIL FROM:<a@remote.test>")).code == 250
        r = await c.cmd("RCPT TO:<x@elsewhere.test>")
        assert (r.code, r.enhanced) == (554, "5.7.1")  # relay denied; the hook said nothing
        r = await c.cmd("RCPT TO:<permit@elsewhere.test>")
        assert (r.code, r.enhanced, r.lines) == (250, "2.1.5", ["Ok, permitted"])
        r = await c.cmd("RCPT TO:<permit-unknown@example.test>")
        assert (r.code, r.enhanced) == (550, "5.1.1")  # no route even so: the refusal stands
        r = await c.cmd("RCPT TO:<no@example.test>")
        assert (r.code, r.enhanced) == (550, "5.7.1")  # the hook's own refusal replaces the server's
        r = await c.cmd("RCPT TO:<no@elsewhere.test>")
        assert (r.code, r.enhanced, r.lines) == (550, "5.7.1", ["Refused by the hook"])
        r = await c.cmd("RCPT TO:<boom@example.test>")
        assert (r.code, r.enhanced) == (451, "4.3.0")
        r = await c.cmd("RCPT TO:<junk@example.test>")
        assert (r.code, r.enhanced) == (451, "4.3.0")
        r = await c.cmd("RCPT TO:<bob@example.test>")
        assert (r.code, r.enhanced) == (250, "2.1.5")  # still serving
        assert (await c.cmd("DATA")).code == 354
        r = await c.cmd(b"Subject: boom\r\n\r\nbody\r\n.")
        assert (r.code, r.enhanced) == (451, "4.3.0")
        assert (await c.cmd("MAIL FROM:<a@remote.test>")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        r = await c.cmd(b"Subject: fine\r\n\r\nbody\r\n.")
        assert (r.code, r.enhanced) == (250, "2.0.0")
        qid = r.text.rsplit(" ", 1)[1]
        assert (await c.cmd("QUIT")).code == 221
        assert await c.closed()
    assert ("rcpt", "bob@example.test", None) in hooks.events
    refused = {e[1]: e[2] for e in hooks.events if e[0] == "rcpt"}
    assert refused["x@elsewhere.test"].code == 554 and refused["permit-unknown@example.test"].code == 550
    data = [e for e in hooks.events if e[0] == "data"]
    assert [e[2] for e in data] == ["boom", "fine"]
    assert ctx.spool.count == 1 and ctx.spool.load(qid) is not None  # the failed one was removed
    env = ctx.spool.load(qid)
    assert [r.address for r in env.recipients] == ["bob@example.test"]
    text = caplog.text
    assert "permitted by a hook over 554 5.7.1" in text
    assert "a hook permitted it, but it has no route; refused with 550 5.1.1" in text
    assert "hook on_rcpt failed: RuntimeError('rcpt hook exploded')" in text
    assert "answered 'not a reply', not a smtprs.Reply or None" in text
    boom_qid = data[0][1]
    assert f"{boom_qid}: hook on_data failed (session C" in text  # logged with the queue id
    assert hooks.events[-1][0] == "disconnect"


async def test_permitted_recipient_is_queued_for_its_relay_route(ctx_factory: Any) -> None:
    ctx = _hooked(ctx_factory, Recorder(), relay={"transport": {"elsewhere.test": "smtp:[127.0.0.1]:2525"}})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<a@remote.test>")
        assert (await c.cmd("RCPT TO:<permit@elsewhere.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        r = await c.cmd(b"Subject: relay\r\n\r\nbody\r\n.")
        assert r.code == 250
        qid = r.text.rsplit(" ", 1)[1]
        n.cancel_scope.cancel()
    env = ctx.spool.load(qid)
    assert [r.address for r in env.recipients] == ["permit@elsewhere.test"]
    assert ctx.router.route("permit@elsewhere.test").kind == "smtp"


async def test_a_hooks_object_leaves_the_engine_fast_path_on(ctx_factory: Any) -> None:
    """Only overridden hooks are called: a loaded hooks object that does not
    look at EHLO or MAIL leaves both to the engine (issue 13's fast path)."""
    from smtprs.smtpd.session import Session

    for hooks in (smtprs.Hooks(), Recorder()):
        ctx = _hooked(ctx_factory, hooks)
        s = Session(ctx.session, trio.testing.MemoryReceiveStream(), "127.0.0.1", 1)
        s.conn.receive_data(b"EHLO x\r\nMAIL FROM:<a@b.test>\r\n")
        assert s.conn.next_event() is None and s.conn.mail_pending


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def test_on_auth_accepts_refuses_fails_and_falls_back_to_the_users_file(
    ctx_factory: Any, tmp_path: Path, caplog: Any
) -> None:
    from smtprs.config import Listener
    from smtprs.smtpd.session import Session

    caplog.set_level(logging.INFO, logger="smtprs")
    users = tmp_path / "users"
    write_users(users, {"carol": hash_password("carol's", ln=4)})
    hooks = Recorder()
    ctx = _hooked(
        ctx_factory,
        hooks,
        smtpd={"auth": {"users_file": str(users), "allow_plaintext": True, "failure_delay": 0.0}},
    )

    async def login(user: str, password: str) -> tuple[int, str | None]:
        client_stream, server_stream = trio.testing.memory_stream_pair()
        from .conftest import Client

        async def serve() -> None:
            await Session(ctx.session, server_stream, "192.0.2.7", 1, Listener(mode="submission")).run()
            await server_stream.aclose()

        async with trio.open_nursery() as n:
            n.start_soon(serve)
            c = Client(client_stream)
            await c.reply()
            await c.cmd("EHLO client.test")
            r = await c.cmd(f"AUTH PLAIN {_plain(user, password)}")
            await c.cmd("QUIT")
            await c.closed()
        return r.code, r.enhanced

    assert await login("ext", "secret") == (235, "2.7.0")
    assert await login("ext", "wrong") == (535, "5.7.8")
    assert await login("broken", "x") == (451, "4.3.0")
    assert await login("odd", "x") == (451, "4.3.0")
    assert await login("carol", "carol's") == (235, "2.7.0")  # the hook said None: the users file
    assert await login("carol", "nope") == (535, "5.7.8")
    assert [e[2] for e in hooks.events if e[0] == "auth"] == ["ext", "ext", "broken", "odd", "carol", "carol"]
    assert "secret" not in caplog.text and "carol's" not in caplog.text  # no password in the log
    assert "hook on_auth failed: RuntimeError('directory down')" in caplog.text
    assert sum(1 for e in hooks.events if e[0] == "disconnect") == 6


async def test_on_disconnect_is_called_however_the_session_ends(ctx_factory: Any, autojump_clock: Any) -> None:
    class Slow(Recorder):
        async def on_disconnect(self, session: smtprs.SessionInfo) -> None:
            self.events.append(("disconnect", session.id))
            if session.helo_name == "slow.test":
                await trio.sleep(3600)  # bounded by DISCONNECT_HOOK_TIMEOUT
            if session.helo_name == "bad.test":
                raise RuntimeError("disconnect hook exploded")

    hooks = Slow()
    ctx = _hooked(ctx_factory, hooks, smtpd={"command_timeout": 60})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)  # the client goes away without QUIT
        await c.cmd("EHLO slow.test")
        await c.stream.aclose()
        c = await start_session(n, ctx)
        await c.cmd("EHLO bad.test")
        assert (await c.cmd("QUIT")).code == 221
        c = await start_session(n, ctx)  # the idle timeout ends it
        r = await c.reply()
        assert r.code == 421
    assert [e[0] for e in hooks.events] == ["disconnect"] * 3


# -- the scheduler: on_deferred ----------------------------------------------------------


async def test_scheduler_calls_on_deferred_after_the_outcome_is_stored(ctx_factory: Any) -> None:
    from smtprs.deliver.base import Outcome

    seen: list[tuple[str, str, str]] = []

    class Deferrals(smtprs.Hooks):
        async def on_deferred(self, envelope: smtprs.Envelope, recipient: smtprs.Recipient) -> None:
            seen.append((envelope.queue_id, recipient.address, recipient.state))
            raise RuntimeError("ignored: logged, the outcome stands")

    ctx = ctx_factory()
    sched = ctx.scheduler
    sched.hooks = Deferrals()
    env = smtprs.Envelope("QTEST1", "a@b.test", [smtprs.Recipient("x@y.test"), smtprs.Recipient("z@y.test")], 0.0)
    await sched._tell_hooks(env, [Outcome(0, "deferred", "451 try later", "smtp")])
    env.recipients[0].state = "deferred"
    await sched._tell_hooks(env, [Outcome(0, "deferred", "451 try later", "smtp")])
    assert seen == [("QTEST1", "x@y.test", "deferred")]
