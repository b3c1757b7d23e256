"""DANE's pure parts (deliver/dane.py): which TLSA records are usable, and the
matching of certificates against them (DANE-EE every selector and matching
type, DANE-TA over a chain, malformed records and certificates), and the
TLSA lookup against a server that never answers (a timeout defers)."""

from __future__ import annotations

import datetime
import hashlib
import socket
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from smtprs.config import Dns
from smtprs.deliver import dane
from smtprs.deliver.dane import HostPolicy, Tlsa
from smtprs.deliver.mx import Host, Resolver

DER = serialization.Encoding.DER
NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    cn: str,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    ca: bool = False,
    days: int = 2,
    start: datetime.datetime | None = None,
) -> x509.Certificate:
    start = start or NOW - datetime.timedelta(hours=1)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if issuer is not None:
        b = b.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    signer = issuer[1] if issuer else key
    return b.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def leaf() -> x509.Certificate:
    return _cert("mx.example", ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def ca_chain() -> tuple[x509.Certificate, x509.Certificate]:
    """(leaf for mx.example, its issuing CA)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test CA", ca_key, ca=True)
    leaf = _cert("mx.example", ec.generate_private_key(ec.SECP256R1()), (ca, ca_key))
    return leaf, ca


def _data(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    if selector == 0:
        raw = cert.public_bytes(DER)
    else:
        raw = cert.public_key().public_bytes(DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {0: raw, 1: hashlib.sha256(raw).digest(), 2: hashlib.sha512(raw).digest()}[mtype]


def _policy(*records: Tlsa, names: tuple[str, ...] = ("mx.example", "example")) -> HostPolicy:
    return HostPolicy("_25._tcp.mx.example", dane.usable(records), names)


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_every_selector_and_matching_type(leaf: x509.Certificate, selector: int, mtype: int) -> None:
    good = Tlsa(3, selector, mtype, _data(leaf, selector, mtype))
    assert dane.matches(leaf, good)
    verdict = dane.check(_policy(good), leaf.public_bytes(DER), None)
    assert verdict.matched == good
    other = _cert("mx.example", ec.generate_private_key(ec.SECP256R1()))
    assert not dane.matches(other, good)
    bad = dane.check(_policy(good), other.public_bytes(DER), None)
    assert bad.matched is None and bad.failure == dane.TLSA_INVALID
    assert "_25._tcp.mx.example" in bad.detail and f"3 {selector} {mtype}" in bad.detail


def test_dane_ee_ignores_names_and_dates() -> None:
    """RFC 7672 3.1.1: a DANE-EE match is enough, whatever the certificate's names and validity dates."""
    expired = _cert(
        "some-other-name.invalid",
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        start=NOW - datetime.timedelta(days=30),
        days=1,
    )
    record = Tlsa(3, 1, 1, _data(expired, 1, 1))
    assert dane.check(_policy(record), expired.public_bytes(DER), None).matched == record


def test_one_matching_record_among_several_is_enough(leaf: x509.Certificate) -> None:
    wrong = Tlsa(3, 1, 1, b"\x00" * 32)
    right = Tlsa(3, 0, 2, _data(leaf, 0, 2))
    assert dane.check(_policy(wrong, right), leaf.public_bytes(DER), None).matched == right


@pytest.mark.parametrize(
    "record",
    [
        Tlsa(0, 1, 1, b"\x01" * 32),  # PKIX-TA: unusable for SMTP (RFC 7672 3.1.3)
        Tlsa(1, 1, 1, b"\x01" * 32),  # PKIX-EE: likewise
        Tlsa(4, 1, 1, b"\x01" * 32),  # unknown usage
        Tlsa(255, 1, 1, b"\x01" * 32),  # private use
        Tlsa(3, 2, 1, b"\x01" * 32),  # unknown selector
        Tlsa(3, 1, 3, b"\x01" * 32),  # unknown matching type
        Tlsa(3, 1, 1, b"\x01" * 31),  # SHA-256 digest of the wrong length
        Tlsa(3, 1, 1, b"\x01" * 64),
        Tlsa(3, 1, 2, b"\x01" * 32),  # SHA-512 digest of the wrong length
        Tlsa(3, 0, 0, b""),  # an empty full certificate
    ],
)
def test_unusable_records(record: Tlsa) -> None:
    assert not record.usable
    assert dane.usable([record]) == ()
    assert not dane.matches(_cert("x", ec.generate_private_key(ec.SECP256R1())), record)


def test_pkix_records_never_match_even_with_the_right_digest(leaf: x509.Certificate) -> None:
    for usage in (0, 1):
        record = Tlsa(usage, 1, 1, _data(leaf, 1, 1))
        assert not dane.matches(leaf, record)
        assert dane.usable([record]) == ()


def test_full_certificate_record_that_is_garbage(leaf: x509.Certificate) -> None:
    record = Tlsa(3, 0, 0, b"not a certificate")
    assert record.usable  # well-formed as a record; it just matches nothing
    assert dane.check(_policy(record), leaf.public_bytes(DER), None).matched is None


def test_records_from_dns_rdata(leaf: x509.Certificate) -> None:
    digest = _data(leaf, 1, 1).hex()
    rd = dns.rdata.from_text(dns.rdataclass.IN, "TLSA", f"3 1 1 {digest}")
    t = Tlsa.from_rdata(rd)
    assert t == Tlsa(3, 1, 1, bytes.fromhex(digest))
    assert t.text().startswith("3 1 1 ") and t.text().endswith("...")
    with pytest.raises(dns.exception.SyntaxError):  # dnspython refuses a malformed TLSA record: never reaches matching
        dns.rdata.from_text(dns.rdataclass.IN, "TLSA", "3 1 1 zz")


def test_usable_bounds_the_records_considered(leaf: x509.Certificate) -> None:
    junk = [Tlsa(3, 1, 1, bytes([i % 256]) * 32) for i in range(dane.MAX_TLSA)]
    right = Tlsa(3, 1, 1, _data(leaf, 1, 1))
    assert right not in dane.usable([*junk, right])  # past the bound: not considered
    assert len(dane.usable([*junk, right])) == dane.MAX_TLSA


def test_no_certificate_or_garbage_certificate(leaf: x509.Certificate) -> None:
    record = Tlsa(3, 1, 1, _data(leaf, 1, 1))
    v = dane.check(_policy(record), None, None)
    assert v.matched is None and v.failure == dane.VALIDATION_FAILURE
    v = dane.check(_policy(record), b"\x30\x03garbage", None)
    assert v.matched is None and v.failure == dane.VALIDATION_FAILURE


@pytest.mark.parametrize("selector,mtype", [(0, 0), (0, 1), (1, 1), (1, 2)])
def test_dane_ta_over_the_chain(ca_chain: tuple[x509.Certificate, x509.Certificate], selector: int, mtype: int) -> None:
    leaf, ca = ca_chain
    record = Tlsa(2, selector, mtype, _data(ca, selector, mtype))
    chain = [leaf.public_bytes(DER), ca.public_bytes(DER)]
    assert dane.check(_policy(record), leaf.public_bytes(DER), chain).matched == record


def test_dane_ta_checks_the_name(ca_chain: tuple[x509.Certificate, x509.Certificate]) -> None:
    """RFC 7672 3.2.2: under DANE-TA the leaf must name the MX host or the destination."""
    leaf, ca = ca_chain
    record = Tlsa(2, 1, 1, _data(ca, 1, 1))
    chain = [leaf.public_bytes(DER), ca.public_bytes(DER)]
    v = dane.check(_policy(record, names=("other.example",)), leaf.public_bytes(DER), chain)
    assert v.matched is None and v.failure == dane.TLSA_INVALID


def test_dane_ta_needs_the_anchor_in_the_chain(ca_chain: tuple[x509.Certificate, x509.Certificate]) -> None:
    leaf, ca = ca_chain
    record = Tlsa(2, 1, 1, _data(ca, 1, 1))
    # the server sent only its leaf: the anchor cannot be found
    assert dane.check(_policy(record), leaf.public_bytes(DER), [leaf.public_bytes(DER)]).matched is None
    # the chain is not available at all (an older Python): said so, and no match
    v = dane.check(_policy(record), leaf.public_bytes(DER), None)
    assert v.matched is None and "chain is not available" in v.detail


def test_dane_ta_record_for_the_leaf_itself_does_not_count(
    ca_chain: tuple[x509.Certificate, x509.Certificate],
) -> None:
    leaf, ca = ca_chain
    record = Tlsa(2, 1, 1, _data(leaf, 1, 1))
    chain = [leaf.public_bytes(DER), ca.public_bytes(DER)]
    assert dane.check(_policy(record), leaf.public_bytes(DER), chain).matched is None


def test_dane_ta_signature_must_verify(ca_chain: tuple[x509.Certificate, x509.Certificate]) -> None:
    """A chain whose "CA" matches the record but did not sign the leaf."""
    leaf, _ = ca_chain
    impostor = _cert("Test CA", ec.generate_private_key(ec.SECP256R1()), ca=True)
    record = Tlsa(2, 1, 1, _data(impostor, 1, 1))
    chain = [leaf.public_bytes(DER), impostor.public_bytes(DER)]
    assert dane.check(_policy(record), leaf.public_bytes(DER), chain).matched is None


def test_peer_chain_without_a_chain_api() -> None:
    assert dane.peer_chain(object()) is None


async def test_a_tlsa_timeout_defers_the_host_and_the_query_asks_for_dnssec() -> None:
    """A TLSA lookup that times out defers (dnssec-invalid, 4.7.5); the query carried DO and AD."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes queries, never answers
        silent.bind(("127.0.0.1", 0))
        r = Resolver(Dns(nameservers=["127.0.0.1"], port=silent.getsockname()[1], timeout=0.5), dnssec=True)
        host = Host("mx.example", "127.0.0.1", 10, secure=True)
        with pytest.raises(dane.DaneFailure) as e:
            await dane.policy_for(r, "opportunistic", host, 25, "example")
        assert e.value.failure == dane.DNSSEC_INVALID and e.value.enhanced == "4.7.5"
        assert "_25._tcp.mx.example" in e.value.detail
        silent.setblocking(False)
        query = dns.message.from_wire(silent.recv(4096))
    assert query.question[0].rdtype == dns.rdatatype.TLSA
    assert query.ednsflags & dns.flags.DO and query.flags & dns.flags.AD
    # an insecure host, or DANE off: no lookup at all, no DANE
    assert await dane.policy_for(r, "opportunistic", Host("mx.example", "127.0.0.1"), 25, "example") is None
    assert await dane.policy_for(r, "off", host, 25, "example") is None
    with pytest.raises(dane.DaneFailure) as e:
        await dane.policy_for(r, "mandatory", Host("mx.example", "127.0.0.1"), 25, "example")
    assert e.value.failure == dane.DANE_REQUIRED


def test_dnssec_can_be_turned_off_again() -> None:
    r = Resolver(Dns(nameservers=["127.0.0.1"]), dnssec=True)
    r.set_dnssec(False)
    assert not r.dnssec
    r.set_dnssec(True)
    assert r.dnssec


async def test_a_malformed_tlsa_answer_defers_the_host() -> None:
    """A resolver answer whose TLSA record is cut short (2 octets of RDATA) cannot be parsed:
    the host is deferred (dnssec-invalid, 4.7.5) within the lookup's time limit, never a crash."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.1)
    done = threading.Event()
    answered: list[int] = []

    def answer_badly() -> None:
        deadline = time.monotonic() + 10
        while not done.is_set() and time.monotonic() < deadline:
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            answered.append(1)
            query = dns.message.from_wire(data)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AD | dns.flags.RA
            wire = bytearray(response.to_wire())
            wire[7] = 1  # ANCOUNT = 1 (the OPT record stays in the additional section after it)
            question_end = 12 + len(query.question[0].name.to_wire()) + 4
            rr = b"\xc0\x0c" + (52).to_bytes(2, "big") + b"\x00\x01" + (60).to_bytes(4, "big") + b"\x00\x02\x03\x01"
            sock.sendto(bytes(wire[:question_end]) + rr + bytes(wire[question_end:]), peer)

    with sock:
        r = Resolver(Dns(nameservers=["127.0.0.1"], port=sock.getsockname()[1], timeout=1.0), dnssec=True)
        host = Host("mx.example", "127.0.0.1", 10, secure=True)
        async with trio.open_nursery() as n:
            n.start_soon(trio.to_thread.run_sync, answer_badly)
            with pytest.raises(dane.DaneFailure) as e:
                await dane.policy_for(r, "opportunistic", host, 25, "example")
            done.set()
    assert e.value.failure == dane.DNSSEC_INVALID and e.value.enhanced == "4.7.5"
    # dnspython drops an answer it cannot parse as it would a stray packet, so the lookup runs
    # into its time limit: a temporary failure either way
    assert answered and "_25._tcp.mx.example" in e.value.detail
