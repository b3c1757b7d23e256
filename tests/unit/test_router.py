"""The router: local, relay permission, transport map, relayhost, DNS, TLS levels."""

from __future__ import annotations

from pathlib import Path

from smtprs import _core
from smtprs.hops import LocalMailbox, RemoteHop, Unroutable
from smtprs.route.router import Router

from .conftest import make_config


def router(tmp_path: Path, **relay: object) -> Router:
    return Router(make_config(tmp_path, relay=relay))


def check(r: Router, path: str, relay_allowed: bool) -> str | None:
    reply = r.check_recipient(_core.parse_path(path, allow_null=False, smtputf8=True), relay_allowed=relay_allowed)
    return None if reply is None else f"{reply.code} {reply.enhanced}"


def test_relay_only_when_allowed(tmp_path):
    r = router(tmp_path)
    assert check(r, "<bob@example.test>", False) is None
    assert check(r, "<x@remote.test>", False) == "554 5.7.1"
    assert check(r, "<x@remote.test>", True) is None
    assert check(r, "<x@[192.0.2.1]>", False) == "554 5.7.1"
    assert check(r, "<@example.test:x@remote.test>", False) == "554 5.7.1"  # the source route is not ours to follow
    # routing tricks in a local part of ours never become a relay, allowed or not
    for trick in ("<x%remote.test@example.test>", '<"x@remote.test"@example.test>', "<remote.test!x@example.test>"):
        assert check(r, trick, True) == "550 5.1.1"


def test_dns_route_by_default(tmp_path):
    hop = router(tmp_path, smtp_port=2525).route("x@Remote.TEST")
    assert hop == RemoteHop("remote.test", "remote.test", 2525, True, "may")
    assert hop.destination == "remote.test:2525"
    assert isinstance(router(tmp_path).route("bob@example.test"), LocalMailbox)


def test_transport_map_then_relayhost(tmp_path):
    r = router(
        tmp_path,
        transport={"special.test": "[10.0.0.5]:2526", ".sub.test": "mx.sub.test"},
        relayhost="[smart.test]:587",
        auth_username="u",
        auth_password="p",
        tls_policy={"special.test": "verify", "smart.test": "none"},
    )
    special = r.route("a@special.test")
    assert special == RemoteHop("special.test", "10.0.0.5", 2526, False, "verify")
    assert special.destination == "[10.0.0.5]:2526"
    assert r.route("a@deep.sub.test") == RemoteHop("deep.sub.test", "mx.sub.test", 25, True, "may")
    assert r.route("a@sub.test") == RemoteHop(
        "sub.test", "smart.test", 587, False, "none", auth=True
    )  # ".sub.test" covers subdomains only
    smart = r.route("a@anything.test")
    assert smart.auth and smart.destination == "[smart.test]:587"
    assert r.route("a@other.test").destination == smart.destination  # one next hop: one transaction, one connection


def test_address_literals(tmp_path):
    r = router(tmp_path)
    assert r.route("x@[192.0.2.1]") == RemoteHop("[192.0.2.1]", "192.0.2.1", 25, False, "may")
    assert r.route("x@[IPv6:2001:db8::1]").host == "2001:db8::1"
    assert isinstance(r.route("x@[IPv6:nonsense]"), Unroutable)


def test_route_answers_are_remembered_and_bounded(tmp_path, monkeypatch):
    from smtprs.route import router as router_mod

    monkeypatch.setattr(router_mod, "ROUTE_CACHE_MAX", 3)
    r = router(tmp_path)
    first = r.route("bob@example.test")
    assert r.route("bob@example.test") is first  # not worked out again
    assert isinstance(r.route("nobody@example.test"), (LocalMailbox, Unroutable))
    assert r.route("x@remote.test") == RemoteHop("remote.test", "remote.test", 25, True, "may")
    assert len(r._routes) == 3
    r.route("y@remote.test")  # a fourth: the memory starts over instead of growing
    assert len(r._routes) == 1
    assert r.route("bob@example.test") == first
