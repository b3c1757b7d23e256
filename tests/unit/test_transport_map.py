"""The transport map (relay.transport with smtp:, lmtp:, local, error:, discard)
and the per-address mailboxes of [local.mailboxes], through the router."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprs import _core, config
from smtprs.errors import ConfigError
from smtprs.hops import Discard, LmtpMailbox, LocalMailbox, MboxMailbox, RemoteHop, Unroutable
from smtprs.route.router import Router

from .conftest import make_config


def check(r: Router, path: str, relay_allowed: bool = False) -> str | None:
    reply = r.check_recipient(_core.parse_path(path, allow_null=False, smtputf8=True), relay_allowed=relay_allowed)
    return None if reply is None else f"{reply.code} {reply.enhanced} {reply.first_line}"


TRANSPORT = {
    "lmtp.test": "lmtp:[127.0.0.1]:2424",
    ".sub.test": "lmtp:unix:/run/dovecot/lmtp",
    "moved.test": "error:5.1.2 This domain has moved to new.test",
    "later.test": "error:4.3.2 Try again later",
    "trap.test": "discard:spam trap",
    "other.test": "local",
    "relay.test": "smtp:[10.0.0.5]:2525",
    "legacy.test": "[10.0.0.6]:26",
    "bob@example.test": "lmtp:127.0.0.1:2525",
    "gone@example.test": "error:5.1.1 Gone, try carol",
    "vip@relay.test": "smtp:",
}


def router(tmp_path: Path, **local: object) -> Router:
    return Router(make_config(tmp_path, relay={"transport": TRANSPORT}, local=local))


def test_each_transport_kind_routes(tmp_path: Path) -> None:
    r = router(tmp_path)
    assert r.route("x@lmtp.test") == LmtpMailbox("x", "lmtp.test", "x@lmtp.test", "127.0.0.1:2424")
    assert r.route("x+tag@a.sub.test") == LmtpMailbox(
        "x+tag", "a.sub.test", "x+tag@a.sub.test", "unix:/run/dovecot/lmtp"
    )
    assert r.route("x@sub.test") == RemoteHop(
        "sub.test", "sub.test", 25, True, "may"
    )  # .sub.test covers subdomains only
    moved = r.route("x@moved.test")
    assert isinstance(moved, Unroutable) and (moved.reply.code, moved.reply.enhanced) == (550, "5.1.2")
    later = r.route("x@later.test")
    assert isinstance(later, Unroutable) and (later.reply.code, later.reply.enhanced) == (450, "4.3.2")
    assert r.route("x@trap.test") == Discard("spam trap")
    other = r.route("dave@other.test")
    assert isinstance(other, LocalMailbox) and other.maildir == r.cfg.maildir_path("dave", "other.test")
    assert r.route("x@relay.test") == RemoteHop("relay.test", "10.0.0.5", 2525, False, "may")
    assert r.route("x@legacy.test") == RemoteHop("legacy.test", "10.0.0.6", 26, False, "may")
    # address keys come before domain keys, and win over local delivery
    assert r.route("vip@relay.test") == RemoteHop("relay.test", "relay.test", 25, True, "may")
    assert r.route("Bob+x@example.test") == LmtpMailbox("bob+x", "example.test", "Bob+x@example.test", "127.0.0.1:2525")
    assert isinstance(r.route("alice@example.test"), LocalMailbox)


def test_rcpt_answers_follow_the_transport(tmp_path: Path) -> None:
    r = router(tmp_path, users=["alice"])
    # final destinations are taken without relay permission; smtp ones are relaying
    assert check(r, "<x@lmtp.test>") is None
    assert check(r, "<x@trap.test>") is None
    assert check(r, "<alice@other.test>") is None  # local: local.users applies
    assert check(r, "<dave@other.test>").startswith("550 5.1.1")  # type: ignore[union-attr]
    assert check(r, "<x@moved.test>") == "550 5.1.2 This domain has moved to new.test"
    assert check(r, "<x@later.test>") == "450 4.3.2 Try again later"
    assert check(r, "<x@relay.test>") == "554 5.7.1 Relay access denied"
    assert check(r, "<x@relay.test>", True) is None
    # an address with a transport of its own exists even when local.users does not name it
    assert check(r, "<bob@example.test>") is None
    assert check(r, "<gone@example.test>") == "550 5.1.1 Gone, try carol"
    assert check(r, "<nobody@example.test>").startswith("550 5.1.1")  # type: ignore[union-attr]


def test_per_address_mailboxes_utf8_and_modes(tmp_path: Path) -> None:
    r = router(
        tmp_path,
        users=["alice"],
        mailboxes={
            "alice@example.test": {"maildir": "/srv/mail/alice"},
            "carol@example.test": {"mbox": "spool/carol.mbox"},
            "jösé@example.test": {"maildir": "mail/jose"},
            "eve@other.test": {"mbox": "/var/mail/eve"},
        },
        mailbox_mode="0750",
    )
    assert r.route("alice+news@example.test") == LocalMailbox(
        "alice", "example.test", Path("/srv/mail/alice"), 0o750, None
    )
    assert r.route("carol@example.test") == MboxMailbox(
        "carol", "example.test", tmp_path / "spool/carol.mbox", 0o750, None
    )
    assert r.route("JÖSÉ@example.test") == LocalMailbox("jösé", "example.test", tmp_path / "mail/jose", 0o750, None)
    assert r.route("eve@other.test") == MboxMailbox("eve", "other.test", Path("/var/mail/eve"), 0o750, None)
    # listed addresses exist although local.users names only alice; UTF-8 ones too
    assert check(r, "<carol@example.test>") is None
    assert check(r, "<jösé@example.test>") is None
    assert check(r, "<jöe@example.test>").startswith("550 5.1.1")  # type: ignore[union-attr]
    assert r.maildir_of("jösé") == tmp_path / "mail/jose"
    with pytest.raises(ValueError):
        r.maildir_of("carol")  # an mbox: POP3 serves Maildirs only


@pytest.mark.parametrize(
    "section,value,message",
    [
        ({"relay": {"transport": {"x.test": "foo:bar"}}}, None, "relay.transport.x.test: unknown transport 'foo'"),
        ({"relay": {"transport": {"x.test": "lmtp:"}}}, None, "relay.transport.x.test: lmtp needs a server"),
        ({"relay": {"transport": {"x.test": "error:450 5.1.1 no"}}}, None, "disagree"),
        ({"relay": {"transport": {"@x.test": "local"}}}, None, "relay.transport.@x.test: expected an address"),
        (
            {"local": {"domains": ["example.test"], "mailboxes": {"a@example.test": {"maildir": "m", "mbox": "b"}}}},
            None,
            "exactly one of maildir and mbox",
        ),
        (
            {"local": {"domains": ["example.test"], "mailboxes": {"a@far.test": {"maildir": "m"}}}},
            None,
            "local.mailboxes.a@far.test: 'far.test' is neither",
        ),
        (
            {"local": {"domains": ["example.test"], "mailbox_owner": "no-such-user-here"}},
            None,
            "local.mailbox_owner: no such user",
        ),
        (
            {"local": {"domains": ["example.test"], "mailbox_mode": "0644"}},
            None,
            "local.mailbox_mode: expected a mode from 0700",
        ),
        (
            {"local": {"domains": ["example.test"], "mailbox_mode": "rwx"}},
            None,
            "local.mailbox_mode: expected an octal mode",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, section: dict, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        config.load(None, overrides={"data_dir": str(tmp_path), **section})


def test_legacy_values_keep_their_meaning() -> None:
    assert config.parse_transport("mx.example.org:2525", "k", 25) == config.Transport(
        "smtp", "mx.example.org", 2525, True
    )
    assert config.parse_transport("mx.example.org", "k", 25) == config.Transport("smtp", "mx.example.org", 25, True)
    assert config.parse_transport("[::1]:26", "k", 25) == config.Transport("smtp", "::1", 26, False)
    assert config.parse_transport("lmtp:[::1]:24", "k", 25).server == "[::1]:24"
    assert config.parse_transport("lmtp:inet:mail.test", "k", 25).server == "mail.test:24"


def test_lmtp_transport_gives_the_stored_address_on_quoted(tmp_path: Path) -> None:
    r = router(tmp_path)
    path = _core.parse_path('<"a b"@lmtp.test>', allow_null=False, smtputf8=True)
    assert check(r, '<"a b"@lmtp.test>') is None
    hop = r.route(path.address())
    assert isinstance(hop, LmtpMailbox) and hop.rcpt == '"a b"@lmtp.test'


async def test_error_entries_added_after_queueing_defer_or_bounce_queued_mail(ctx_factory) -> None:
    """Mail queued before an error: entry was added: 4.x.x defers it, 5.x.x bounces it."""
    import trio

    from smtprs.envelope import Envelope, Recipient

    ctx = ctx_factory(relay={"transport": {"later.test": "error:4.3.2 Not yet", "moved.test": "error:5.1.2 Moved"}})
    async with trio.open_nursery() as n:
        await n.start(ctx.scheduler.run)
        w = ctx.spool.create()
        w.write(b"Subject: x\r\n\r\nbody\r\n")
        env = Envelope(
            queue_id=w.queue_id,
            sender="",
            recipients=[Recipient("a@later.test"), Recipient("b@moved.test")],
            arrival=1e12,
        )
        await ctx.spool.commit(w, env)
        ctx.scheduler.submit(env)
        with trio.fail_after(10):
            while True:
                got = ctx.spool.load(env.queue_id)
                if got is not None and all(rc.attempts for rc in got.recipients):
                    break
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    a, b = got.recipients
    assert (a.state, a.status, b.state, b.status) == ("deferred", "4.3.2", "failed", "5.1.2")
    assert ctx.spool.count == 1  # still queued for a@later.test
