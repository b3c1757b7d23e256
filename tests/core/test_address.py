"""parse_path / parse_mailbox through the binding, on the RFC 5321 4.1.2 and
RFC 6531 grammar: valid and invalid tables."""

from __future__ import annotations

import pytest

from smtprs import _core
from smtprs.errors import AddressError, ParseError

VALID = [
    # text, local_part, domain, route, quoted
    ("<user@example.com>", "user", "example.com", [], False),
    ("<first.last+tag@mail.example.org>", "first.last+tag", "mail.example.org", [], False),
    ("<!#$%&'*+-/=?^_`{|}~@x.example>", "!#$%&'*+-/=?^_`{|}~", "x.example", [], False),
    ("<a@b>", "a", "b", [], False),
    ("<1@2.3>", "1", "2.3", [], False),
    ("<u@a-b.c-d.example>", "u", "a-b.c-d.example", [], False),
    ('<"a b"@example.com>', "a b", "example.com", [], True),
    ('<"a\\"b"@example.com>', 'a"b', "example.com", [], True),
    ('<"a\\\\b"@example.com>', "a\\b", "example.com", [], True),
    ('<"a\\ b"@example.com>', "a b", "example.com", [], True),
    ('<"@"@example.com>', "@", "example.com", [], True),
    ('<"a..b"@example.com>', "a..b", "example.com", [], True),
    ('<""@example.com>', "", "example.com", [], True),
    ("<u@[192.0.2.1]>", "u", "[192.0.2.1]", [], False),
    ("<u@[255.255.255.255]>", "u", "[255.255.255.255]", [], False),
    ("<u@[IPv6:2001:db8::1]>", "u", "[IPv6:2001:db8::1]", [], False),
    ("<u@[IPv6:::1]>", "u", "[IPv6:::1]", [], False),
    ("<u@[IPv6:::ffff:192.0.2.1]>", "u", "[IPv6:::ffff:192.0.2.1]", [], False),
    ("<u@[x-tag:any;thing]>", "u", "[x-tag:any;thing]", [], False),
    ("<@a.example:u@b.example>", "u", "b.example", ["a.example"], False),
    ("<@a,@b,@c:u@d>", "u", "d", ["a", "b", "c"], False),
    ("<@[192.0.2.1]:u@d>", "u", "d", ["[192.0.2.1]"], False),
    ("<" + "l" * 64 + "@x>", "l" * 64, "x", [], False),
]


@pytest.mark.parametrize("text, local, domain, route, quoted", VALID)
def test_valid_paths(text: str, local: str, domain: str, route: list[str], quoted: bool) -> None:
    p = _core.parse_path(text)
    assert (p.local_part, p.domain, p.route, p.quoted) == (local, domain, route, quoted)
    assert not p.is_null and not p.is_utf8
    # What address() writes parses to the same path.
    assert _core.parse_path(f"<{p.address()}>") == p


INVALID = [
    "",
    "user@example.com",
    "<user@example.com",
    "user@example.com>",
    "<<user@example.com>>",
    "<user>",
    "<@example.com>",
    "<user@>",
    "<user@example.com.>",
    "<user@.example.com>",
    "<user@example..com>",
    "<.user@example.com>",
    "<user.@example.com>",
    "<us..er@example.com>",
    "<us er@example.com>",
    "<us,er@example.com>",
    "<us(er)@example.com>",
    "<user@exa mple.com>",
    "<user@-example.com>",
    "<user@example-.com>",
    "<user@exa_mple.com>",
    '<"unterminated@example.com>',
    '<"a"b@example.com>',
    '<a"b"@example.com>',
    '<"\x01"@example.com>',
    '<"a\\\x7f"@example.com>',
    "<user@[192.0.2.256]>",
    "<user@[192.0.2]>",
    "<user@[192.0.2.1.5]>",
    "<user@[1234.0.2.1]>",
    "<user@192.0.2.1]>",
    "<user@[192.0.2.1>",
    "<user@[]>",
    "<user@[IPv6:2001:db8::g]>",
    "<user@[IPv6:2001:db8:::1]>",
    "<user@[IPv6:192.0.2.1]>",
    "<user@[tag:]>",
    "<user@[ta g:x]>",
    "<user@[tag-:x]>",
    "<user@[tag:a]b]>",
    "<@a:@b:u@c>",
    "<@a,b:u@c>",
    "<@:u@c>",
    "<@a u@c>",
    "<user@example.com> x",
    "<" + "l" * 65 + "@x>",
    "<u@" + "d" * 64 + ".example>",
    "<u@" + ".".join(["d" * 63] * 4) + ">",
    "<user\x00@example.com>",
]


@pytest.mark.parametrize("text", INVALID)
def test_invalid_paths(text: str) -> None:
    with pytest.raises(AddressError) as info:
        _core.parse_path(text)
    assert (info.value.code, info.value.enhanced) == (553, "5.1.3")
    assert isinstance(info.value, ParseError) and isinstance(info.value, ValueError)


def test_path_length_limit() -> None:
    labels = ["d" * 63] * 3 + ["d" * 60]
    ok = "<u@" + ".".join(labels) + ">"
    assert len(ok) == 256
    _core.parse_path(ok)
    with pytest.raises(AddressError):
        _core.parse_path("<u@" + ".".join(labels[:3] + ["d" * 61]) + ">")


def test_null_path() -> None:
    p = _core.parse_path("<>")
    assert p.is_null
    assert (p.local_part, p.domain, p.route, p.address(), str(p)) == ("", "", [], "", "<>")
    with pytest.raises(AddressError):
        _core.parse_path("<>", allow_null=False)


def test_postmaster_only_as_a_forward_path() -> None:
    p = _core.parse_path("<Postmaster>", allow_null=False)
    assert (p.local_part, p.domain, p.address()) == ("Postmaster", "", "Postmaster")
    with pytest.raises(AddressError):
        _core.parse_path("<Postmaster>")


UTF8 = [
    "<δοκιμή@παράδειγμα.δοκιμή>",
    "<用户@例子.广告>",
    "<user@bücher.example>",
    "<jöran@example.com>",
    '<"j ö"@example.com>',
]


@pytest.mark.parametrize("text", UTF8)
def test_utf8_only_with_smtputf8(text: str) -> None:
    with pytest.raises(AddressError) as info:
        _core.parse_path(text)
    assert "SMTPUTF8" in str(info.value)
    p = _core.parse_path(text, smtputf8=True)
    assert p.is_utf8
    assert _core.parse_path(f"<{p.address()}>", smtputf8=True) == p


def test_address_requotes_when_needed() -> None:
    assert _core.parse_path('<"a b"@x>').address() == '"a b"@x'
    assert _core.parse_path('<"plain"@x>').address() == "plain@x"
    assert _core.parse_path('<"a\\"b"@x>').address() == '"a\\"b"@x'
    assert _core.parse_path('<".a"@x>').address() == '".a"@x'
    assert str(_core.parse_path("<@r:u@x>")) == "<u@x>"


def test_path_is_hashable_and_compares_mailboxes() -> None:
    a = _core.parse_path('<"user"@Example.COM>')
    b = _core.parse_path("<@relay:user@example.com>")
    c = _core.parse_path("<User@example.com>")
    assert a == b and hash(a) == hash(b)
    assert a != c
    assert len({a, b, c}) == 2
    assert a != "user@example.com"
    with pytest.raises(AttributeError):
        a.local_part = "x"  # type: ignore[misc]
    assert "user@example.com" in repr(b)


def test_parse_mailbox() -> None:
    p = _core.parse_mailbox("user@example.com")
    assert (p.local_part, p.domain) == ("user", "example.com")
    assert _core.parse_mailbox('"a b"@[192.0.2.1]').quoted
    for bad in ("<user@example.com>", "user", "@example.com", "@a:u@b", "", "u@"):
        with pytest.raises(AddressError):
            _core.parse_mailbox(bad)
    with pytest.raises(AddressError):
        _core.parse_mailbox("ü@example.com")
    assert _core.parse_mailbox("ü@example.com", smtputf8=True).is_utf8
