"""MTA-STS's pure parts (deliver/mtasts.py): the TXT record, the policy file,
RFC 8461 4.1's MX patterns, the cache file; and the fetch against a real HTTPS
server on loopback for the HTTP rules (no redirect, Content-Type, size)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smtprs.deliver.mtasts import (
    MAX_AGE_LIMIT,
    Lookup,
    Policy,
    PolicyError,
    PolicyStore,
    mx_matches,
    parse_policy,
    parse_txt,
    tls_level,
)

GOOD = b"version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.mail.example.com\r\nmax_age: 86400\r\n"


# -- TXT -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
        (["v=STSv1;id=abc"], "abc"),
        (["v=STSv1; id=abc; ext=1"], "abc"),
        (["v=spf1 -all", "v=STSv1; id=abc"], "abc"),  # other records are ignored
        ([], None),
        (["v=STSv1; id=a", "v=STSv1; id=b"], None),  # two: no policy (RFC 8461 3.1)
        (["v=STSv1;"], None),  # no id
        (["v=STSv1; id="], None),
        (["v=STSv1; id=" + "a" * 33], None),  # 32 at most
        (["v=STSv1; id=ab-c"], None),  # alphanumerics only
        (["v=STSv1; id=a; id=b"], None),
        (["v=STSv2; id=a"], None),
        (["V=STSv1; id=a"], None),  # case-sensitive
        (["v=STSv1; garbage"], None),
    ],
)
def test_txt_record(records: list[str], expected: str | None) -> None:
    assert parse_txt(records) == expected


# -- the policy file -----------------------------------------------------------


def test_policy_parses() -> None:
    p = parse_policy(GOOD, "example.com", "id1", 1000.0)
    assert (p.mode, p.mx, p.max_age, p.id, p.domain) == (
        "enforce",
        ("mx1.example.com", "*.mail.example.com"),
        86400,
        "id1",
        "example.com",
    )
    assert p.expires_at == 1000.0 + 86400 and not p.expired(1000.0 + 86399) and p.expired(1000.0 + 86400)


def test_policy_lf_lines_spaces_unknown_keys_and_order() -> None:
    text = b"max_age:600\nmx:   MX.Example.COM.  \nfoo: bar\nmode: testing\nversion: STSv1\n"
    p = parse_policy(text, "example.com", "x", 0.0)
    assert (p.mode, p.mx, p.max_age) == ("testing", ("mx.example.com",), 600)


def test_policy_first_of_a_repeated_key_counts_and_max_age_is_capped() -> None:
    text = b"version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 99999999999\n"
    with pytest.raises(PolicyError):
        parse_policy(text, "d", "x", 0.0)  # 11 digits: not a max_age
    text = b"version: STSv1\nmode: testing\nmode: enforce\nmx: a.example\nmax_age: 9999999999\n"
    p = parse_policy(text, "d", "x", 0.0)
    assert p.mode == "testing" and p.max_age == MAX_AGE_LIMIT


def test_policy_mode_none_needs_no_mx() -> None:
    p = parse_policy(b"version: STSv1\nmode: none\nmax_age: 60\n", "d", "x", 0.0)
    assert p.mode == "none" and p.mx == ()


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"<html>not a policy</html>",
        b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 60\n",
        b"mode: enforce\nmx: a.example\nmax_age: 60\n",  # no version
        b"version: STSv1\nmode: strict\nmx: a.example\nmax_age: 60\n",
        b"version: STSv1\nmx: a.example\nmax_age: 60\n",  # no mode
        b"version: STSv1\nmode: enforce\nmax_age: 60\n",  # enforce without mx
        b"version: STSv1\nmode: enforce\nmx: a.example\n",  # no max_age
        b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
        b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1e5\n",
        b"version: STSv1\nmode: enforce\nmx: a..example\nmax_age: 60\n",
        b"version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 60\n",
        b"version: STSv1\nmode: enforce\nmx: a.exa mple\nmax_age: 60\n",
        b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 60\n\xff\n",  # not ASCII
        b"version: STSv1\nmode enforce\nmx: a.example\nmax_age: 60\n",  # a line without a colon
    ],
)
def test_bad_policies_are_refused(text: bytes) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text, "d", "x", 0.0)


def test_a_huge_policy_keeps_at_most_100_mx_patterns() -> None:
    text = b"version: STSv1\nmode: enforce\nmax_age: 60\n" + b"".join(b"mx: m%d.example\n" % i for i in range(5000))
    assert len(parse_policy(text, "d", "x", 0.0).mx) == 100


# -- MX patterns (RFC 8461 4.1) ------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "expected"),
    [
        ("mx1.example.com", "mx1.example.com", True),
        ("mx1.example.com", "MX1.Example.Com.", True),
        ("mx1.example.com.", "mx1.example.com", True),
        ("mx1.example.com", "mx2.example.com", False),
        ("mx1.example.com", "a.mx1.example.com", False),
        ("*.example.com", "mail.example.com", True),  # the RFC's own example
        ("*.example.com", "MAIL.EXAMPLE.COM", True),
        ("*.example.com", "example.com", False),  # the wildcard is one label, not none
        ("*.example.com", "foo.bar.example.com", False),  # nor two
        ("*.example.com", ".example.com", False),
        ("*.example.com", "mailexample.com", False),
        ("*.example.com", "mail.example.org", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, expected: bool) -> None:
    assert mx_matches(pattern, host) is expected


def test_policy_matches_and_tls_level() -> None:
    p = parse_policy(GOOD, "example.com", "id1", 0.0)
    assert p.matches("mx1.example.com") and p.matches("a.mail.example.com") and not p.matches("mx2.example.com")
    assert tls_level("may", p) == "verify" and tls_level("none", p) == "verify"
    testing = Policy("d", "x", "testing", ("a",), 60, 0.0)
    none = Policy("d", "x", "none", (), 60, 0.0)
    assert tls_level("may", testing) == "verify" and tls_level("may", none) == "may" and tls_level("may", None) == "may"
    assert Lookup("d", p).enforced and not Lookup("d", testing).enforced
    assert Lookup("d", None).policy_type == "no-policy-found" and Lookup("d", none).policy_type == "no-policy-found"
    assert (
        Lookup("d", None, "sts-policy-fetch-error").policy_type == "sts" and Lookup("d", testing).policy_type == "sts"
    )
    assert Lookup("d", None).allows("anything") and not Lookup("d", p).allows("mx2.example.com")


# -- the cache file ------------------------------------------------------------


def test_store_round_trip_and_bad_files(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "c")
    p = parse_policy(GOOD, "example.com", "id1", 1234.5)
    assert store.load("example.com") is None
    store.save(p)
    assert store.load("example.com") == p
    assert [f.name for f in (tmp_path / "c").iterdir()] == ["example.com.json"]  # no temporary file left
    (tmp_path / "c" / "example.com.json").write_text("{not json")
    assert store.load("example.com") is None
    (tmp_path / "c" / "example.com.json").write_text(json.dumps({**p.to_json(), "mode": "strict"}))
    assert store.load("example.com") is None
    (tmp_path / "c" / "example.com.json").write_text(json.dumps({**p.to_json(), "domain": "other.com"}))
    assert store.load("example.com") is None
    # names that are no domain are never paths
    store.save(Policy("../evil", "x", "enforce", ("a",), 60, 0.0))
    assert store.load("../evil") is None and not (tmp_path / "evil.json").exists()
