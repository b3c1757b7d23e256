"""The pure parts of inbound authentication (mailauth/inbound.py, mailauth/results.py):
the Authentication-Results field and its authserv-id, the removal of forged
fields, the organizational domain and alignment, the DMARC evaluation and the
policy over results given by a table of TXT records, DKIM verification with a
table of keys, the content cap, and the DNS budget against a real UDP socket
that never answers."""

from __future__ import annotations

import base64
import dataclasses
import socket
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprs.config import Config, Dns
from smtprs.mailauth import inbound
from smtprs.mailauth import results as ar
from smtprs.mailauth.inbound import Checker, DnsTemp, Lookups, Result, check_dkim, check_dmarc


class TableLookups:
    """TXT records from a table (name -> list of records, or an exception to raise)."""

    def __init__(self, table: dict[str, object]) -> None:
        self.table = table
        self.asked: list[str] = []
        self.per_lookup = 1.0

    def txt(self, name: str) -> list[bytes]:
        self.asked.append(name)
        v = self.table.get(name, [])
        if isinstance(v, Exception):
            raise v
        assert isinstance(v, list)
        return [x.encode() if isinstance(x, str) else x for x in v]


# -- the field ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value,expected",
    [
        (b" mx.test; dkim=pass", "mx.test"),
        (b"MX.Test.; spf=pass", "mx.test"),
        (b" (a (nested) comment) mx.test 1; none", "mx.test"),
        (b'\r\n\t"mx.test"; none', "mx.test"),
        (b"mx.test(comment); none", "mx.test"),
        (b"", ""),
        (b"   ;;;", ""),
        (b"(unclosed comment mx.test; none", ""),
    ],
)
def test_authserv_id(value: bytes, expected: str) -> None:
    assert ar.authserv_id(value) == expected


def test_strip_ours_removes_folded_fields_of_our_id_and_the_marker_only() -> None:
    header = (
        b"Received: from a\r\n\tby b\r\n"
        b"authentication-results: MX.TEST;\r\n dkim=pass\r\n\theader.d=x\r\n"
        b"Authentication-Results: other.test; spf=pass\r\n"
        b"Authentication-Results: mx.test.other; spf=pass\r\n"
        b"X-Smtprs-Quarantine: yes\r\n"
        b"Subject: Authentication-Results: mx.test; in a subject\r\n"
    )
    out, n = ar.strip_ours(header, "mx.test")
    assert n == 2
    assert out == (
        b"Received: from a\r\n\tby b\r\n"
        b"Authentication-Results: other.test; spf=pass\r\n"
        b"Authentication-Results: mx.test.other; spf=pass\r\n"
        b"Subject: Authentication-Results: mx.test; in a subject\r\n"
    )
    plain = b"Subject: x\r\nFrom: a@b\r\n"
    assert ar.strip_ours(plain, "mx.test") == (plain, 0)


def test_field_is_folded_one_result_a_line_and_comments_are_safe() -> None:
    f = ar.field(
        "mx.test",
        [ar.spf_result("fail", "bad (nested) \\ reason\x01", "a.test", ""), ar.dkim_result("none", "", "", "", "")],
    )
    assert (
        f
        == b"Authentication-Results: mx.test;\r\n\tspf=fail (bad ?nested? ? reason?) smtp.mailfrom=a.test;\r\n\tdkim=none\r\n"
    )
    assert ar.field("mx.test", []) == b"Authentication-Results: mx.test;\r\n\tnone\r\n"
    assert len(ar.comment("x" * 1000)) == 200


# -- organizational domain and alignment ------------------------------------------------------
@pytest.mark.parametrize(
    "domain,org",
    [
        ("mail.example.com", "example.com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("example.test", "example.test"),
        ("a.b.example.test", "example.test"),
        ("com", "com"),
        ("Foo.GitHub.io.", "foo.github.io"),
    ],
)
def test_org_domain(domain: str, org: str) -> None:
    assert inbound.org_domain(domain) == org


def test_alignment() -> None:
    assert inbound.aligned("mail.example.com", "example.com", "r")
    assert not inbound.aligned("mail.example.com", "example.com", "s")
    assert inbound.aligned("Example.com.", "example.com", "s")
    assert not inbound.aligned("example.net", "example.com", "r")
    assert not inbound.aligned("a.example.co.uk", "b.other.co.uk", "r")


# -- DMARC -----------------------------------------------------------------------------------------
SPF_NONE = Result("spf", "none", "", {"domain": "elsewhere.test"})


def dkim_pass(d: str) -> Result:
    return Result("dkim", "pass", "", {"d": d})


def dmarc(
    table: dict[str, object],
    header_from: str | None,
    spf: Result = SPF_NONE,
    dkims: list[Result] | None = None,
    **kw: object,
) -> Result:
    return check_dmarc(TableLookups(table), header_from, spf, dkims or [], False, **kw)  # type: ignore[arg-type]


def test_dmarc_policy_discovery_and_alignment() -> None:
    table: dict[str, object] = {"_dmarc.example.test": ["v=DMARC1; p=reject; sp=quarantine; adkim=s"]}
    r = dmarc(table, "example.test")
    assert (r.result, r.props["policy"], r.reason) == ("fail", "reject", "p=reject")
    r = dmarc(table, "sub.example.test")  # the org domain's record, its sp=
    assert (r.result, r.props["policy"]) == ("fail", "quarantine")
    assert dmarc(table, "example.test", dkims=[dkim_pass("example.test")]).result == "pass"
    assert dmarc(table, "example.test", dkims=[dkim_pass("sub.example.test")]).result == "fail"  # adkim=s
    spf = Result("spf", "pass", "", {"domain": "bounce.example.test"})
    assert dmarc(table, "example.test", spf=spf).result == "pass"  # aspf=r
    assert dmarc({}, "example.test").result == "none"


def test_dmarc_bad_records() -> None:
    assert dmarc({"_dmarc.a.test": ["v=DMARC1; p"]}, "a.test").result == "permerror"
    assert dmarc({"_dmarc.a.test": ["v=DMARC1; p=bogus"]}, "a.test").result == "permerror"
    r = dmarc({"_dmarc.a.test": ["v=DMARC1; p=bogus; rua=mailto:x@a.test"]}, "a.test")
    assert (r.result, r.props["policy"]) == ("fail", "none")  # RFC 7489 6.6.3: as p=none
    two = {"_dmarc.a.test": ["v=DMARC1; p=reject", "v=DMARC1; p=none"]}
    assert dmarc(two, "a.test").result == "none"  # more than one record: none
    assert dmarc({"_dmarc.a.test": ["v=spf1 -all"]}, "a.test").result == "none"
    assert dmarc({"_dmarc.a.test": inbound.BadRecord("big")}, "a.test").result == "permerror"
    assert dmarc({"_dmarc.a.test": DnsTemp("timeout")}, "a.test").result == "temperror"
    assert dmarc({}, None).result == "permerror"


def test_dmarc_pct_lowers_the_policy_for_the_unsampled() -> None:
    table: dict[str, object] = {"_dmarc.a.test": ["v=DMARC1; p=reject; pct=10"]}
    assert dmarc(table, "a.test", rng=lambda: 0.05).props["policy"] == "reject"
    assert dmarc(table, "a.test", rng=lambda: 0.5).props["policy"] == "quarantine"


def test_dmarc_without_dkim_verification_is_permerror_not_fail() -> None:
    table: dict[str, object] = {"_dmarc.a.test": ["v=DMARC1; p=reject"]}
    r = check_dmarc(TableLookups(table), "a.test", SPF_NONE, [], True)  # type: ignore[arg-type]
    assert r.result == "permerror"


# -- the policy --------------------------------------------------------------------------------------
def checker(**mailauth: object) -> Checker:
    cfg = Config()
    m = cfg.mailauth
    for k, v in mailauth.items():
        if k in ("spf", "dmarc"):
            m = dataclasses.replace(m, **{k: dataclasses.replace(getattr(m, k), **v)})  # type: ignore[arg-type]
        else:
            m = dataclasses.replace(m, **{k: v})
    cfg = dataclasses.replace(cfg, mailauth=m, dns=Dns(nameservers=["127.0.0.1"]))
    return Checker(cfg, "mx.test")


def verdict(c: Checker, spf: str, dmarc_result: str, policy: str) -> inbound.Verdict:
    v = inbound.Verdict([], b"")
    c._policy(
        v,
        Result("spf", spf, "", {"domain": "a.test"}),
        Result("dmarc", dmarc_result, "", {"from": "a.test", "policy": policy}),
    )
    return v


def test_policy_matrix() -> None:
    accept = checker()
    assert verdict(accept, "fail", "fail", "reject").reply is None
    assert verdict(accept, "fail", "fail", "reject").quarantine == b""
    rej = checker(dmarc={"reject_policy": "reject"}, spf={"fail_policy": "reject", "temperror_policy": "defer"})
    assert verdict(rej, "none", "fail", "reject").reply == (
        550,
        "5.7.1",
        "Message rejected: DMARC policy of a.test (p=reject) not met",
    )
    v = verdict(rej, "none", "fail", "quarantine")
    assert v.reply is None and v.quarantine.startswith(b"X-Smtprs-Quarantine: dmarc=fail header.from=a.test")
    assert verdict(rej, "none", "fail", "none").reply is None
    assert verdict(rej, "fail", "pass", "none").reply == (
        550,
        "5.7.23",
        "Message rejected: SPF check failed for a.test",
    )
    for harmless in ("softfail", "neutral", "none", "permerror"):
        assert verdict(rej, harmless, "pass", "none").reply is None
    assert verdict(rej, "temperror", "none", "").reply == (
        451,
        "4.7.24",
        "SPF check of a.test could not be completed; try again later",
    )
    q = checker(dmarc={"reject_policy": "quarantine-header"})
    v = verdict(q, "none", "fail", "reject")
    assert (
        v.reply is None
        and v.quarantine == b"X-Smtprs-Quarantine: dmarc=fail header.from=a.test policy.dmarc=reject\r\n"
    )
    assert checker(authserv_id="Auth.Example.").authserv_id == "auth.example"
    assert accept.authserv_id == "mx.test"


def test_content_cap() -> None:
    c = checker(dkim_max_size=10)
    m = c.start("127.0.0.1", "a@a.test", "h.test")
    m.feed(b"12345")
    m.feed(b"12345")
    assert m._data == bytearray(b"1234512345")
    m.feed(b"1")
    assert m._data is None and m._header is None  # the header's end was not seen
    m.feed(b"more")
    assert m._data is None
    m = c.start("127.0.0.1", "a@a.test", "h.test")
    m.feed(b"A: b\r\n\r\nbody")
    m.feed(b"more body")
    assert m._data is None and m._header == b"A: b\r\n"


# -- DKIM with a table of keys ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


MSG = b"From: a@a.test\r\nSubject: hi\r\n\r\nbody\r\n"


def signed(pem: bytes, selector: bytes = b"s") -> bytes:
    return dkim.sign(MSG, selector, b"a.test", pem, include_headers=[b"from", b"subject"]) + MSG  # type: ignore[no-any-return]


def test_dkim_results(rsa_key: tuple[bytes, str]) -> None:
    pem, txt = rsa_key
    table: dict[str, object] = {"s._domainkey.a.test": [txt], "t._domainkey.a.test": DnsTemp("DNS timeout")}
    [r] = check_dkim(TableLookups(table), signed(pem), 5)  # type: ignore[arg-type]
    assert (r.result, r.props) == ("pass", {"d": "a.test", "s": "s", "a": "rsa-sha256"})
    [r] = check_dkim(TableLookups(table), signed(pem).replace(b"body", b"bodz"), 5)  # type: ignore[arg-type]
    assert (r.result, r.reason) == ("fail", "body hash mismatch")
    [r] = check_dkim(TableLookups(table), signed(pem, b"t"), 5)  # type: ignore[arg-type]
    assert (r.result, r.reason) == ("temperror", "DNS timeout")
    [r] = check_dkim(TableLookups(table), signed(pem, b"u"), 5)  # type: ignore[arg-type]
    assert (r.result, r.reason) == ("permerror", "no key for signature")
    [r] = check_dkim(TableLookups({}), b"DKIM-Signature: ;;;==garbage\r\n" + MSG, 5)  # type: ignore[arg-type]
    assert r.result == "permerror"


def test_dkim_signature_count_is_bounded(rsa_key: tuple[bytes, str]) -> None:
    pem, txt = rsa_key
    lookups = TableLookups({"s._domainkey.a.test": [txt]})
    one = signed(pem)
    many = one.split(b"\r\nFrom:")[0] + b"\r\n"
    results = check_dkim(lookups, many * 50 + MSG, 3)  # type: ignore[arg-type]
    assert [r.result for r in results] == ["pass", "pass", "pass", "neutral"]
    assert results[-1].reason == "47 more signatures not verified"
    assert len(lookups.asked) == 3


# -- the DNS budget, against a name server that never answers ---------------------------------------------
@pytest.fixture
def black_hole() -> object:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


def test_lookups_are_bounded_in_time_and_count(black_hole: int) -> None:
    resolver = inbound.make_resolver(Dns(nameservers=["127.0.0.1"], port=black_hole, timeout=30.0))
    lookups = Lookups(resolver, budget=0.5, max_lookups=5, per_lookup=30.0)
    started = time.monotonic()
    with pytest.raises(DnsTemp, match="timeout"):
        lookups.txt("a.test")
    with pytest.raises(DnsTemp, match="time budget spent"):
        lookups.txt("b.test")
    assert time.monotonic() - started < 10  # a bound (30 s per lookup without the budget), not a speed
    counted = Lookups(resolver, budget=5.0, max_lookups=1, per_lookup=0.2)
    with pytest.raises(DnsTemp):
        counted.txt("a.test")
    with pytest.raises(DnsTemp, match="lookup budget spent"):
        counted.txt("b.test")
    assert counted.count == 1


@pytest.mark.parametrize(
    ("helo", "domain"),
    [
        ("mail.example.test", "mail.example.test"),
        ("Mail.Example.Test.", "mail.example.test"),
        ("[192.0.2.1]", ""),
        ("[IPv6:::1]", ""),
        ("localhost", ""),
        ("192.0.2.1", ""),
        ("a..test", ""),
        ("", ""),
        ("x" * 64 + ".test", ""),
    ],
)
def test_helo_domain_is_a_name_spf_can_check(helo: str, domain: str) -> None:
    assert inbound.helo_domain(helo) == domain


def test_spf_through_the_budget(black_hole: int) -> None:
    resolver = inbound.make_resolver(Dns(nameservers=["127.0.0.1"], port=black_hole, timeout=0.3))
    lookups = Lookups(resolver, budget=1.0, max_lookups=5, per_lookup=0.3)
    inbound._current.lookups = lookups
    try:
        r = inbound.check_spf(lookups, "127.0.0.5", "a@a.test", "h.test")
    finally:
        inbound._current.lookups = None
    assert (r.result, r.props["mailfrom"]) == ("temperror", "a.test")
    assert inbound.check_spf(lookups, "127.0.0.5", "", "").result == "none"


@pytest.mark.parametrize(
    "message",
    [
        b"A: b\r\n\r\nbody\r\nmore\r\n",
        b"A: b\r\n folded\r\nC: d\r\n\r\n\r\nbody",
        b"\r\nbody only\r\n",
        b"A: b\r\n",
        b"A: b",
        b"",
        b"A: b\nC: d\n\nbare LF body\n",
        b"A: b\r\n\r\nmixed\nline ends\r\n",
    ],
)
def test_parse_is_dkimpys(message: bytes) -> None:
    assert inbound.parse(message) == tuple(dkim.rfc822_parse(message))


@pytest.mark.parametrize(
    "canon,length",
    [((b"relaxed", b"relaxed"), False), ((b"relaxed", b"simple"), False), ((b"simple", b"relaxed"), True)],
)
def test_dkim_agrees_with_dkimpy_for_every_body_canonicalization(
    rsa_key: tuple[bytes, str], canon: tuple[bytes, bytes], length: bool
) -> None:
    pem, txt = rsa_key
    msg = b"From: a@a.test\r\nSubject: hi\r\n\r\nbody  with\tblanks \r\n\r\n\r\n"
    sig = dkim.sign(msg, b"s", b"a.test", pem, include_headers=[b"from", b"subject"], canonicalize=canon, length=length)
    lookups = TableLookups({"s._domainkey.a.test": [txt]})
    for m in (sig + msg, sig + msg.replace(b"with", b"w1th"), sig + msg + b"appended\r\n"):
        [r] = check_dkim(lookups, m, 5)  # type: ignore[arg-type]
        ours = r.result == "pass"
        theirs = dkim.verify(m, dnsfunc=lambda name, timeout=5: txt.encode())
        assert ours == theirs, (canon, length, m, r)


FIELD_LINES = st.sampled_from(
    [
        b"Authentication-Results: mx.test; dkim=pass\r\n",
        b"authentication-results:(c)MX.TEST;none\r\n",
        b"Authentication-Results: other.test; spf=fail\r\n",
        b" folded continuation\r\n",
        b"\tmx.test;\r\n",
        b"Subject: mx.test\r\n",
        b"X-Smtprs-Quarantine: x\r\n",
        b"garbage without colon\r\n",
        b"Authentication-Results:\r\n",
        b"\r\n",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(FIELD_LINES | st.binary(max_size=40), max_size=30))
def test_strip_ours_on_any_header(lines: list[bytes]) -> None:
    header = b"".join(lines)
    out, n = ar.strip_ours(header, "mx.test")
    assert n >= 0 and len(out) <= len(header)
    assert ar.strip_ours(out, "mx.test")[1] == 0  # nothing of ours is left
    if n == 0:
        assert out == header


def test_pyspf_outside_our_checks_keeps_its_own_dns(monkeypatch):
    """smtprs routes pyspf's lookups through its resolver only on a thread that
    runs one of its checks; anywhere else (a program embedding smtprs that uses
    pyspf itself) pyspf's own lookup answers."""
    import spf

    from smtprs.mailauth import inbound

    seen = []
    monkeypatch.setattr(inbound, "_pyspf_lookup", lambda *a: seen.append(a) or [])
    assert spf.DNSLookup is inbound._spf_lookup
    assert spf.DNSLookup("example.test", "A") == []
    assert seen == [("example.test", "A", True, None)]


@pytest.mark.parametrize("check_helo", [True, False])
def test_helo_result_follows_spf_check_helo(black_hole: int, check_helo: bool) -> None:
    """mailauth.spf.check_helo: a second SPF result for the HELO name of a
    non-null sender (here a DNS that never answers: temperror within the
    budget), or none at all."""
    cfg = Config()
    m = dataclasses.replace(
        cfg.mailauth, dns_budget=0.6, spf=dataclasses.replace(cfg.mailauth.spf, check_helo=check_helo)
    )
    dns_cfg = Dns(nameservers=["127.0.0.1"], port=black_hole, timeout=0.2)
    c = Checker(dataclasses.replace(cfg, mailauth=m, dns=dns_cfg), "mx.test")
    v = c.evaluate(None, "127.0.0.5", "a@a.test", "mail.h.test", b"From: <a@a.test>\r\n\r\n")
    helo = [r for r in v.results if r.label == "spf_helo"]
    if check_helo:
        assert [(r.result, r.props["helo"]) for r in helo] == [("temperror", "mail.h.test")]
        assert b"smtp.helo=mail.h.test" in v.field
    else:
        assert helo == [] and b"smtp.helo" not in v.field
    assert v.reply is None  # never a refusal of its own
