"""Addressing: the aliases file, the virtual map, sub-addressing, case, and the
router's expansion (nested aliases, loops, depth bound, catch-all)."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtprs import _core
from smtprs.errors import ConfigError
from smtprs.hops import LmtpMailbox, LocalMailbox, MboxMailbox, RemoteHop, Unroutable
from smtprs.route.aliases import load_aliases, load_virtual
from smtprs.route.router import MAX_ALIAS_DEPTH, Expansion, Router

from .conftest import make_config


def router(tmp_path: Path, aliases: str | None = None, virtual: str | None = None, **local: object) -> Router:
    if aliases is not None:
        (tmp_path / "aliases").write_text(aliases)
        local["aliases"] = str(tmp_path / "aliases")
    if virtual is not None:
        (tmp_path / "virtual").write_text(virtual)
        local["virtual_map"] = str(tmp_path / "virtual")
    return Router(make_config(tmp_path, local=local))


def expand(r: Router, address: str) -> tuple[str, ...] | Unroutable:
    result = r.expand(_core.parse_path(f"<{address}>", smtputf8=True, allow_null=False))
    return result.addresses if isinstance(result, Expansion) else result


# -- the aliases file format -------------------------------------------------------


def test_aliases_file_format(tmp_path):
    f = tmp_path / "aliases"
    f.write_text(
        "# a comment\n"
        "\n"
        "postmaster: root\n"
        "Staff:   alice, bob@example.org,\n"
        "         carol\n"
        "\t# a comment inside a continuation is dropped\n"
        '\t"dave"\n'
        "  # indented comment\n"
        "root : \\root, <admin@elsewhere.test>\n"
    )
    t = load_aliases(f)
    assert t.get("postmaster").targets == ("root",)
    assert t.get("staff").targets == ("alice", "bob@example.org", "carol", "dave")
    assert t.get("staff").origin.endswith(":4")
    assert t.get("root").targets == ("\\root", "admin@elsewhere.test")
    assert "Staff" not in t


@pytest.mark.parametrize(
    "text, line, what",
    [
        ("a: b\nbad line\n", 2, "expected 'name: address"),
        ("  b\n", 1, "continuation line"),
        ("a: |/usr/bin/procmail\n", 1, "not supported"),
        ("a: /var/mail/a\n", 1, "not supported"),
        ("a: :include:/etc/list\n", 1, "not supported"),
        ("a:\n", 1, "no target"),
        ("a: b\nA: c\n", 2, "already defined"),
        ('a: "b\n', 1, "unbalanced quote"),
        ("a@x: b\n", 1, "not a local part"),
        ("a: b@@c\n", 1, "not an address"),
    ],
)
def test_aliases_file_errors_name_file_and_line(tmp_path, text, line, what):
    f = tmp_path / "aliases"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_aliases(f)
    assert f"{f}:{line}:" in str(e.value) and what in str(e.value)


def test_missing_aliases_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        Router(make_config(tmp_path, local={"aliases": "nope"}))


def test_virtual_map_format_and_errors(tmp_path):
    f = tmp_path / "virtual"
    f.write_text("# map\nInfo@Example.NET  alice\n@example.net\tcatch, bob@remote.test\n")
    t = load_virtual(f)
    assert t.get("info@example.net").targets == ("alice",)
    assert t.get("@example.net").targets == ("catch", "bob@remote.test")
    f.write_text("example.net alice\n")
    with pytest.raises(ConfigError, match=":1:"):
        load_virtual(f)


# -- expansion ---------------------------------------------------------------------


def test_plain_local_user_and_case_folding(tmp_path):
    r = router(tmp_path)
    assert expand(r, "Alice@EXAMPLE.test") == ("alice@example.test",)


def test_case_sensitive_when_asked(tmp_path):
    r = router(tmp_path, users=["Alice"], case_sensitive=True)
    assert expand(r, "Alice@example.test") == ("Alice@example.test",)
    assert isinstance(expand(r, "alice@example.test"), Unroutable)


def test_alias_expansion_local_and_remote_targets(tmp_path):
    r = router(tmp_path, "staff: alice, Bob\nlist: staff, carol@example.test\n", users=["alice", "bob", "carol"])
    assert expand(r, "staff@example.test") == ("alice@example.test", "bob@example.test")
    assert expand(r, "LIST@example.test") == ("alice@example.test", "bob@example.test", "carol@example.test")
    # a remote target is the administrator's choice: accepted without relay permission, routed over SMTP
    r2 = router(tmp_path, "fwd: someone@remote.test\n")
    assert expand(r2, "fwd@example.test") == ("someone@remote.test",)
    hop = r2.route("someone@remote.test")
    assert isinstance(hop, RemoteHop) and (hop.domain, hop.host, hop.mx) == ("remote.test", "remote.test", True)
    # a remote RCPT needs the session's relay permission
    got = expand(r2, "someone@remote.test")
    assert isinstance(got, Unroutable) and got.reply.code == 554
    path = _core.parse_path("<someone@remote.test>")
    assert r2.expand(path, relay_allowed=True) == Expansion(("someone@remote.test",))


def test_nested_aliases_and_diamonds_deliver_once(tmp_path):
    r = router(tmp_path, "a: b, c\nb: d\nc: d, e\nd: alice\ne: alice, bob\n")
    assert expand(r, "a@example.test") == ("alice@example.test", "bob@example.test")


def test_self_reference_means_the_mailbox(tmp_path):
    r = router(tmp_path, "alice: alice, bob\nroot: \\root, alice\n", users=["alice", "bob", "root"])
    assert expand(r, "alice@example.test") == ("alice@example.test", "bob@example.test")
    assert expand(r, "root@example.test") == ("root@example.test", "alice@example.test", "bob@example.test")


def test_alias_loop_is_a_clear_error(tmp_path):
    r = router(tmp_path, "a: b\nb: c\nc: a\nself: self@example.test, x\nx: self\n")
    got = expand(r, "a@example.test")
    assert isinstance(got, Unroutable)
    assert (got.reply.code, got.reply.enhanced) == (550, "5.4.6")
    assert "Alias loop: a@example.test -> b@example.test -> c@example.test -> a@example.test" in str(got.reply)
    got = expand(r, "x@example.test")
    assert isinstance(got, Unroutable) and "loop" in str(got.reply)
    # check-config and the start-up log name them
    problems = r.alias_problems()
    assert len(problems) == 5 and all("loop" in p for p in problems)


def test_alias_depth_is_bounded(tmp_path):
    chain = "".join(f"a{i}: a{i + 1}\n" for i in range(MAX_ALIAS_DEPTH + 5))
    r = router(tmp_path, chain + f"a{MAX_ALIAS_DEPTH + 5}: alice\n")
    got = expand(r, "a0@example.test")
    assert isinstance(got, Unroutable) and got.reply.enhanced == "5.4.6" and "deep" in str(got.reply)
    assert expand(r, f"a{10}@example.test") == ("alice@example.test",)


def test_unknown_alias_target_is_refused_naming_it(tmp_path):
    r = router(tmp_path, "staff: alice, nobody\n", users=["alice"])
    got = expand(r, "staff@example.test")
    assert isinstance(got, Unroutable)
    assert (got.reply.code, got.reply.enhanced) == (550, "5.1.1")
    assert "alias target <nobody@example.test>" in str(got.reply)


def test_sub_addressing(tmp_path):
    r = router(tmp_path, "list: alice\n", users=["alice"])
    assert expand(r, "alice+news@example.test") == ("alice+news@example.test",)
    assert r.route("alice+news@example.test") == LocalMailbox(
        "alice", "example.test", Path(r.cfg.maildir_path("alice", "example.test"))
    )
    assert expand(r, "list+tag@example.test") == ("alice@example.test",)  # alias found by its base name
    assert isinstance(expand(r, "bob+x@example.test"), Unroutable)


def test_sub_address_alias_by_full_name_first(tmp_path):
    r = router(tmp_path, "alice+spam: junk\n", users=["alice", "junk"])
    assert expand(r, "alice+spam@example.test") == ("junk@example.test",)
    assert expand(r, "alice+ham@example.test") == ("alice+ham@example.test",)


def test_recipient_delimiter_configurable(tmp_path):
    r = router(tmp_path, users=["alice"], recipient_delimiter="-")
    assert expand(r, "alice-x@example.test") == ("alice-x@example.test",)
    assert isinstance(expand(r, "alice+x@example.test"), Unroutable)
    r = router(tmp_path, users=["alice+x"], recipient_delimiter="")
    assert expand(r, "alice+x@example.test") == ("alice+x@example.test",)


def test_virtual_domain_map_and_catch_all(tmp_path):
    virtual = "info@virt.test alice\nsales@virt.test alice, bob@example.test\n@virt.test catch\n"
    r = router(tmp_path, virtual=virtual, users=["alice", "bob", "catch"], virtual_domains=["virt.test", "strict.test"])
    assert expand(r, "INFO@virt.test") == ("alice@example.test",)
    assert expand(r, "sales@virt.test") == ("alice@example.test", "bob@example.test")
    assert expand(r, "whoever@virt.test") == ("catch@example.test",)
    got = expand(r, "whoever@strict.test")  # a virtual domain without a catch-all
    assert isinstance(got, Unroutable) and got.reply.code == 550 and got.reply.enhanced == "5.1.1"
    assert isinstance(expand(r, "x@other.test"), Unroutable)


def test_catch_all_of_a_local_domain_takes_unknown_users_only(tmp_path):
    r = router(tmp_path, "staff: bob\n", "@example.test alice\n", users=["alice", "bob"])
    assert expand(r, "bob@example.test") == ("bob@example.test",)
    assert expand(r, "staff@example.test") == ("bob@example.test",)
    assert expand(r, "nobody@example.test") == ("alice@example.test",)


def test_virtual_entry_for_a_local_address_comes_first(tmp_path):
    r = router(tmp_path, "alice: bob\n", "alice@example.test carol\n")
    assert expand(r, "alice@example.test") == ("carol@example.test",)


def test_virtual_loop_through_aliases_detected(tmp_path):
    r = router(tmp_path, "a: info@virt.test\n", "info@virt.test a@example.test\n", virtual_domains=["virt.test"])
    got = expand(r, "a@example.test")
    assert isinstance(got, Unroutable) and "loop" in str(got.reply)


def test_unsafe_names_refused_even_through_aliases(tmp_path):
    r = router(tmp_path, 'x: "a%b"\n')
    for bad in ("a%b@example.test", "a!b@example.test", '".dot"@example.test', "x@example.test"):
        got = expand(r, bad)
        assert isinstance(got, Unroutable) and got.reply.code == 550, bad


def test_route_by_delivery_kind(tmp_path):
    assert isinstance(router(tmp_path).route("alice@example.test"), LocalMailbox)
    mb = router(tmp_path, delivery="mbox").route("alice+x@example.test")
    assert mb == MboxMailbox("alice", "example.test", Path(tmp_path) / "mbox" / "alice")
    lm = router(tmp_path, delivery="lmtp", lmtp="unix:/run/lmtp").route("Alice+x@Example.test")
    assert lm == LmtpMailbox("alice", "example.test", "alice@example.test", "unix:/run/lmtp")


def test_postmaster_always_accepted(tmp_path):
    r = router(tmp_path, users=["alice"])
    assert expand(r, "Postmaster") == ("postmaster@example.test",)
    assert expand(r, "postmaster@example.test") == ("postmaster@example.test",)


# -- the session stores the expanded recipients --------------------------------------


async def test_session_stores_expanded_recipients_with_their_original(ctx_factory, tmp_path):
    import trio

    from .conftest import start_session

    (tmp_path / "aliases").write_text("staff: alice, bob\nloop1: loop2\nloop2: loop1\n")
    ctx = ctx_factory(local={"aliases": "aliases"})
    async with trio.open_nursery() as n:
        c = await start_session(n, ctx)
        await c.cmd("EHLO x")
        await c.cmd("MAIL FROM:<a@remote.test>")
        assert (await c.cmd("RCPT TO:<Staff@example.test>")).code == 250
        assert (await c.cmd("RCPT TO:<alice+tag@example.test>")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250  # already reached through staff
        r = await c.cmd("RCPT TO:<loop1@example.test>")
        assert (r.code, r.enhanced) == (550, "5.4.6") and "Alias loop" in r.text
        await c.cmd("DATA")
        r = await c.cmd(b"Subject: x\r\n\r\ny\r\n.")
        qid = r.text.rsplit(" ", 1)[1]
        n.cancel_scope.cancel()
    env = ctx.spool.load(qid)
    assert env is not None
    assert [(r.address, r.original) for r in env.recipients] == [
        ("alice@example.test", "Staff@example.test"),
        ("bob@example.test", "Staff@example.test"),
        ("alice+tag@example.test", ""),
    ]
