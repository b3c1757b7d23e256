"""DANE for outbound SMTP end to end: a real ``smtprs serve`` relaying by MX,
a real validating resolver (unbound over zones signed here, tests/e2e/dnssec.py),
real downstream servers with STARTTLS (aiosmtpd, test certificates).

The signed zone ``dane.example.`` (its key is unbound's trust anchor) holds
one destination per case; each MX host listens on its own loopback port,
which the transport map gives (``domain:port``: MX lookup, that port), so
the TLSA names are ``_PORT._tcp.HOST``.  ``insecure.example.`` is unsigned
(no trust anchor): its answers carry no AD bit.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtprs.config import Dns
from smtprs.deliver import dane
from smtprs.deliver.mx import DnsFailure, Resolver
from smtprs.queue.spool import read_queue

from .dnssec import SignedZone, Unbound, UnsignedZone
from .harness import DOMAIN, Server, submit
from .peers import ScriptedPeer, free_port, make_cert

SENDER = f"sender@{DOMAIN}"
DER = serialization.Encoding.DER


def spki_sha256(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    spki = cert.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def ca_signed_cert(directory: Path, name: str) -> tuple[Path, Path, str]:
    """A leaf for ``name`` issued by a fresh CA: (chain file leaf+CA, key file, TLSA 2 1 1 data of the CA)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    delta = datetime.timedelta
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "DANE test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - delta(hours=1))
        .not_valid_after(now + delta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - delta(hours=1))
        .not_valid_after(now + delta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    chain, key_path = directory / f"{name}.chain.pem", directory / f"{name}.key"
    chain.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ca_spki = ca.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return chain, key_path, hashlib.sha256(ca_spki).hexdigest()


class World:
    """The peers of one test: downstream servers, the zones, unbound."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.peers: list[Any] = []
        cert = make_cert(base / "certs", "mx-ok.dane.example")
        self.spki = spki_sha256(cert[0])
        wrong = "00" * 32
        self.ok = self._peer(tls_cert=cert)
        self.bad = self._peer(tls_cert=cert)
        self.plain = self._peer()  # no STARTTLS
        self.bogus = self._peer(tls_cert=cert)
        self.insecure = self._peer(tls_cert=cert)
        self.nosecure_tlsa = self._peer(tls_cert=cert)
        self.many = self._peer(tls_cert=cert)
        self.pkix = self._peer(tls_cert=cert)
        self.bogusmx = self._peer(tls_cert=cert)
        chain, key, ca_digest = ca_signed_cert(base / "certs", "mx-ta.dane.example")
        self.ta = self._peer(tls_cert=(chain, key))
        self.ports = {
            "ok": self.ok.port,
            "bad": self.bad.port,
            "plain": self.plain.port,
            "bogus": self.bogus.port,
            "notlsa": self.nosecure_tlsa.port,
            "ta": self.ta.port,
            "many": self.many.port,
            "pkix": self.pkix.port,
            "bogusmx": self.bogusmx.port,
        }
        records: list[tuple[str, str, str]] = []
        for case in self.ports:
            records += [(case, "MX", f"10 mx-{case}"), (f"mx-{case}", "A", "127.0.0.1")]
        records += [
            (f"_{self.ok.port}._tcp.mx-ok", "TLSA", f"3 1 1 {self.spki}"),
            (f"_{self.bad.port}._tcp.mx-bad", "TLSA", f"3 1 1 {wrong}"),
            (f"_{self.plain.port}._tcp.mx-plain", "TLSA", f"3 1 1 {self.spki}"),
            (f"_{self.bogus.port}._tcp.mx-bogus", "TLSA", f"3 1 1 {self.spki}"),
            (f"_{self.ta.port}._tcp.mx-ta", "TLSA", f"2 1 1 {ca_digest}"),
            # pkix: only PKIX-EE (usage 1), unusable for SMTP: TLS required, not authenticated
            (f"_{self.pkix.port}._tcp.mx-pkix", "TLSA", f"1 1 1 {self.spki}"),
            # notlsa: a secure host without TLSA records (authenticated denial): no DANE
        ]
        # many: 40 records that match nothing, and the right one: an answer too big for UDP (TCP)
        records += [(f"_{self.many.port}._tcp.mx-many", "TLSA", f"3 1 1 {i:064x}") for i in range(1, 41)]
        records += [(f"_{self.many.port}._tcp.mx-many", "TLSA", f"3 1 1 {self.spki}")]
        self.signed = SignedZone("dane.example.", records, base / "zones")
        # bogus: the TLSA record changed after signing, its RRSIG kept: the validator's SERVFAIL
        self.signed.tamper(f"_{self.bogus.port}._tcp.mx-bogus", "TLSA", f"3 1 1 {wrong}")
        # bogusmx: the MX record itself changed after signing
        self.signed.tamper("bogusmx", "MX", "10 mx-ok.dane.example.")
        self.unsigned = UnsignedZone(
            "insecure.example.",
            [
                ("@", "MX", "10 mx"),
                ("mx", "A", "127.0.0.1"),
                # a mismatching TLSA record that must not count: the zone is not signed
                (f"_{self.insecure.port}._tcp.mx", "TLSA", f"3 1 1 {wrong}"),
            ],
        )
        self.unbound = Unbound(base / "unbound", [self.signed, self.unsigned]).start()

    def _peer(self, **kwargs: Any) -> ScriptedPeer:
        p = ScriptedPeer(**kwargs).start()
        self.peers.append(p)
        return p

    def stop(self) -> None:
        for p in self.peers:
            p.stop()
        self.unbound.stop()

    def overrides(self, mode: str = "opportunistic", metrics_port: int = 0) -> dict[str, Any]:
        transport = {f"{case}.dane.example": f"{case}.dane.example:{port}" for case, port in self.ports.items()}
        transport["insecure.example"] = f"insecure.example:{self.insecure.port}"
        cfg: dict[str, Any] = {
            "dns": self.unbound.config(),
            "dane": {"mode": mode},
            "relay": {
                "trusted_networks": ["127.0.0.0/8"],
                "transport": transport,
                "connect_timeout": 2.0,
                "command_timeout": 10.0,
                "idle_timeout": 0,
            },
            "queue": {"retry_min": 30.0, "retry_max": 60.0},
        }
        if metrics_port:
            cfg["metrics"] = {"enabled": True, "address": f"127.0.0.1:{metrics_port}"}
        return cfg


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "world")
    yield w
    w.stop()


def send(server: Server, rcpt: str, subject: str) -> str:
    msg = (
        f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{time.monotonic_ns()}@client.test>\r\n\r\nbody\r\n"
    ).encode()
    return submit(server.port, SENDER, rcpt, msg)


def queued_errors(server: Server) -> dict[str, tuple[str, str, str]]:
    """address -> (state, enhanced status, last_error) of what is still queued."""
    return {
        r.address: (r.state, r.status, r.last_error) for env, _ in read_queue(server.spool_dir) for r in env.recipients
    }


def tls_rpt(metrics_port: int) -> dict[tuple[str, str], float]:
    """(result, failure) -> count of smtprs_tls_rpt_sessions_total{policy_type="tlsa"}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("smtprs_tls_rpt_sessions_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels["policy_type"] != "tlsa":
                continue  # MTA-STS's counts (no-policy-found for these domains): not DANE's
            out[(labels["result"], labels.get("failure", ""))] = float(line.rsplit(" ", 1)[1])
    return out


def test_the_resolver_validates(world: World) -> None:
    """The peer itself: signed answers carry AD, the tampered RRset is SERVFAIL, the unsigned zone no AD."""
    u = world.unbound
    assert u.secure("ok.dane.example", "MX") == ("NOERROR", True)
    assert u.secure(f"_{world.ok.port}._tcp.mx-ok.dane.example", "TLSA") == ("NOERROR", True)
    assert u.secure(f"_{world.bogus.port}._tcp.mx-bogus.dane.example", "TLSA") == ("SERVFAIL", False)
    assert u.secure("mx-notlsa.dane.example", "AAAA") == ("NOERROR", True)  # secure no-data (NSEC)
    assert u.secure("insecure.example", "MX") == ("NOERROR", False)
    big = u.query(f"_{world.many.port}._tcp.mx-many.dane.example", "TLSA")
    assert len(big.answer[0]) == 41 and len(big.to_wire()) > 1232  # came over TCP
    assert "validation failure" in u.log()


def test_resolver_secure_flags_and_tlsa(world: World) -> None:
    """smtprs's own Resolver (deliver/mx.py) over unbound: Host.secure, tlsa(), and dane.policy_for."""

    async def main() -> None:
        dns_cfg = Dns(**world.unbound.config())
        r = Resolver(dns_cfg, dnssec=True)
        (ok,) = await r.hosts("ok.dane.example", True)
        assert ok.secure and ok.name == "mx-ok.dane.example"
        (ins,) = await r.hosts("insecure.example", True)
        assert not ins.secure
        records, secure = await r.tlsa(f"_{world.ok.port}._tcp.mx-ok.dane.example")
        assert secure and len(records) == 1
        records, secure = await r.tlsa(f"_{world.insecure.port}._tcp.mx.insecure.example")
        assert len(records) == 1 and not secure  # there, but not validated
        with pytest.raises(DnsFailure) as e:
            await r.tlsa(f"_{world.bogus.port}._tcp.mx-bogus.dane.example")
        assert not e.value.permanent
        assert await r.tlsa("_25._tcp.mx-notlsa.dane.example") == ([], False)  # NXDOMAIN: none
        policy = await dane.policy_for(r, "opportunistic", ok, world.ok.port, "ok.dane.example")
        assert policy is not None and policy.authenticated
        assert policy.names == ("mx-ok.dane.example", "ok.dane.example")
        assert await dane.policy_for(r, "opportunistic", ins, world.insecure.port, "insecure.example") is None
        with pytest.raises(dane.DaneFailure) as f:
            await dane.policy_for(r, "mandatory", ins, world.insecure.port, "insecure.example")
        assert f.value.failure == dane.DANE_REQUIRED
        # without dnssec, nothing is secure, so DANE never applies
        plain = Resolver(dns_cfg)
        (ok2,) = await plain.hosts("ok.dane.example", True)
        assert not ok2.secure

    trio.run(main)


def test_dane_opportunistic_end_to_end(world: World, make_server: Callable[..., Server]) -> None:
    metrics_port = free_port()
    server = make_server(world.overrides("opportunistic", metrics_port))
    q_ok = send(server, "a@ok.dane.example", "TLSA 3 1 1 matches")
    q_ta = send(server, "b@ta.dane.example", "TLSA 2 1 1 matches the issuing CA")
    q_bad = send(server, "c@bad.dane.example", "TLSA mismatch")
    q_plain = send(server, "d@plain.dane.example", "no STARTTLS")
    q_bogus = send(server, "e@bogus.dane.example", "bogus TLSA")
    q_ins = send(server, "f@insecure.example", "insecure zone")
    q_none = send(server, "g@notlsa.dane.example", "secure host, no TLSA")
    q_many = send(server, "h@many.dane.example", "41 TLSA records")
    q_pkix = send(server, "i@pkix.dane.example", "only PKIX-EE")
    q_bogusmx = send(server, "j@bogusmx.dane.example", "bogus MX")

    server.wait_log(rf"{q_ok}: to=<a@ok.dane.example>, .*status=sent")
    server.wait_log(rf"{q_ta}: to=<b@ta.dane.example>, .*status=sent")
    server.wait_log(rf"{q_ins}: to=<f@insecure.example>, .*status=sent")
    server.wait_log(rf"{q_none}: to=<g@notlsa.dane.example>, .*status=sent")
    server.wait_log(rf"{q_many}: to=<h@many.dane.example>, .*status=sent")
    server.wait_log(rf"{q_pkix}: to=<i@pkix.dane.example>, .*status=sent")
    bad = server.wait_log(rf"{q_bad}: to=<c@bad.dane.example>, .*status=deferred")
    plain = server.wait_log(rf"{q_plain}: to=<d@plain.dane.example>, .*status=deferred")
    bogus = server.wait_log(rf"{q_bogus}: to=<e@bogus.dane.example>, .*status=deferred")
    bogusmx = server.wait_log(rf"{q_bogusmx}: to=<j@bogusmx.dane.example>, .*status=deferred")
    log = server.log()

    ok_relay = f"mx-ok.dane.example[127.0.0.1]:{world.ok.port}"
    assert f"DANE verified TLS connection to {ok_relay}: TLSA 3 1 1" in log
    assert f"DANE verified TLS connection to mx-ta.dane.example[127.0.0.1]:{world.ta.port}: TLSA 2 1 1" in log
    (got,) = world.ok.received
    assert got.tls and got.rcpts == ["a@ok.dane.example"]
    assert world.ta.received[0].tls
    # the insecure zone's mismatching TLSA record was not even considered: opportunistic TLS as relay.tls = may
    assert world.insecure.received[0].tls
    assert "Untrusted TLS connection established to mx.insecure.example" in log
    assert world.nosecure_tlsa.received[0].tls
    assert f"DANE verified TLS connection to mx-many.dane.example[127.0.0.1]:{world.many.port}" in log
    assert world.many.received[0].tls
    assert f"TLS connection to mx-pkix.dane.example[127.0.0.1]:{world.pkix.port} encrypted but not authenticated" in log
    assert world.pkix.received[0].tls

    assert "DANE verification" in bad and "no TLSA record matches" in bad
    assert "TLS is required (DANE TLSA records" in plain
    assert "TLSA lookup error" in bogus and "SERVFAIL" in bogus
    assert "type=MX" in bogusmx and "SERVFAIL" in bogusmx  # a bogus MX RRset: the lookup fails, 4.4.3
    assert world.bad.received == [] and world.plain.received == [] and world.bogus.received == []
    assert world.bogus.connections == 0  # the TLSA failure defers before connecting
    assert world.plain.connections == 1  # it was reached, and nothing was sent in clear

    queued = queued_errors(server)
    state, status, error = queued["c@bad.dane.example"]
    assert (state, status) == ("deferred", "4.7.5") and "no TLSA record matches" in error
    state, status, error = queued["d@plain.dane.example"]
    assert (state, status) == ("deferred", "4.7.4") and "TLS is required" in error
    state, status, error = queued["e@bogus.dane.example"]
    assert (state, status) == ("deferred", "4.7.5") and "TLSA lookup error" in error
    state, status, error = queued["j@bogusmx.dane.example"]
    assert (state, status) == ("deferred", "4.4.3")
    assert set(queued) == {
        "c@bad.dane.example",
        "d@plain.dane.example",
        "e@bogus.dane.example",
        "j@bogusmx.dane.example",
    }
    assert len(world.ok.received) == 1  # the tampered MX pointed at mx-ok: not followed

    for failure in ("tlsa-invalid", "starttls-not-supported", "dnssec-invalid"):
        assert f"TLS policy failure (policy_type=tlsa result={failure})" in log
    counts = tls_rpt(metrics_port)
    assert counts[("success", "")] == 4  # ok, ta, many, pkix; the insecure and no-TLSA hosts are not DANE sessions
    assert counts[("failure", "tlsa-invalid")] == 1
    assert counts[("failure", "starttls-not-supported")] == 1
    assert counts[("failure", "dnssec-invalid")] == 1


def test_dane_mandatory(world: World, make_server: Callable[..., Server]) -> None:
    """dane-only: a destination without validated TLSA records is deferred; one with them is delivered."""
    server = make_server(world.overrides("mandatory"))
    q_ok = send(server, "a@ok.dane.example", "DANE host")
    q_ins = send(server, "b@insecure.example", "insecure zone")
    q_none = send(server, "c@notlsa.dane.example", "no TLSA")
    q_pkix = send(server, "d@pkix.dane.example", "no usable TLSA")
    server.wait_log(rf"{q_ok}: to=<a@ok.dane.example>, .*status=sent")
    pkix = server.wait_log(rf"{q_pkix}: to=<d@pkix.dane.example>, .*status=deferred")
    assert "no TLSA record at" in pkix and "is usable" in pkix
    ins = server.wait_log(rf"{q_ins}: to=<b@insecure.example>, .*status=deferred")
    none = server.wait_log(rf"{q_none}: to=<c@notlsa.dane.example>, .*status=deferred")
    assert "DANE is required" in ins and "not DNSSEC-validated" in ins
    assert "DANE is required" in none and "no TLSA records" in none
    assert world.insecure.connections == 0 and world.nosecure_tlsa.connections == 0 and world.pkix.connections == 0


def test_dane_off_ignores_tlsa_then_a_reload_turns_it_on(world: World, make_server: Callable[..., Server]) -> None:
    """The default: the mismatching TLSA record is not looked up; opportunistic TLS delivers.
    After SIGHUP with dane.mode = opportunistic, the same destination is deferred."""
    server = make_server(world.overrides("off"))
    q = send(server, "a@bad.dane.example", "dane off")
    server.wait_log(rf"{q}: to=<a@bad.dane.example>, .*status=sent")
    assert world.bad.received[0].tls
    assert "DANE" not in server.log()
    server.overrides = world.overrides("opportunistic")
    server.write_config()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    server.wait_log("reloaded the configuration")
    q2 = send(server, "b@bad.dane.example", "dane on after reload")
    line = server.wait_log(rf"{q2}: to=<b@bad.dane.example>, .*status=deferred")
    assert "no TLSA record matches" in line
    assert len(world.bad.received) == 1
