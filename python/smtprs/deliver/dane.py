"""DANE for outbound SMTP (RFC 7672): which MX hosts must be authenticated by
TLSA records, and whether a server's certificate matches them.

Reads the ``[dane]`` configuration and asks DNS through deliver/mx.py's
``Resolver`` (which sets DO and reads the AD bit a validating resolver
gives).  Writes nothing; the SMTP agent (deliver/smtp.py) asks it twice per
connection: ``policy_for`` before connecting (what TLS this host needs) and
``check`` after the TLS handshake (does the certificate match).

The rules, as RFC 7672 gives them:

- DANE applies to a host only when its MX RRset and its address records were
  DNSSEC-validated (``Host.secure``, §2.2); then ``_PORT._tcp.HOST`` TLSA is
  asked.  An insecure TLSA answer, no TLSA record, or an insecure host mean
  no DANE for that host: TLS as ``relay.tls`` says (``mode = "mandatory"``
  defers instead).
- A TLSA lookup that fails (SERVFAIL: bogus signatures, or an unreachable
  server; a timeout) defers the host (§2.2.1): a downgrade could hide there.
- Usable records (§3.1): DANE-EE(3) and DANE-TA(2), selector 0 (the whole
  certificate) or 1 (its SubjectPublicKeyInfo), matching type 0 (exact), 1
  (SHA-256) or 2 (SHA-512) with a digest of the right length.  PKIX-TA(0)
  and PKIX-EE(1) are unusable for SMTP (§3.1.3), as are unknown values and
  malformed digests.  A TLSA RRset with no usable record still requires TLS,
  without authentication (§2.2: "encrypt", as Postfix does).
- DANE-EE: the leaf certificate (or its key) matches; neither its names nor
  its dates are checked (§3.1.1).
- DANE-TA: a certificate of the chain the server sent (not the leaf) matches
  and the leaf chains to it, valid now, for the MX host name or the
  destination domain (§3.1.2, §3.2.2), checked with ``cryptography``'s
  verifier.  Python's ssl gives the peer's chain only through
  ``get_unverified_chain`` (public from 3.13, private before); without it
  (``chain is None``) only DANE-EE records can match.

The matching runs on the event loop, once per connection (~20 µs for
DANE-EE, ~0.2 ms for DANE-TA's chain verification, P-256).

Every DANE failure is a temporary one (4.7.5, or 4.7.4 when STARTTLS is
missing), never a reason to send in clear; the RFC 8460 result type of each
is kept for the TLS-RPT counter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import verification

from .mx import DnsFailure, Host, Resolver

DANE_TA, DANE_EE = 2, 3
DIGEST_LENGTH = {0: None, 1: 32, 2: 64}  # matching type -> octets (0: the data itself)
MAX_TLSA = 64  # records considered per RRset (a DNS answer is bounded anyway; this bounds the matching work)
MAX_CHAIN = 10  # certificates of a peer's chain considered

# RFC 8460 result types used here (policy_type "tlsa")
STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
TLSA_INVALID = "tlsa-invalid"
DNSSEC_INVALID = "dnssec-invalid"
DANE_REQUIRED = "dane-required"
VALIDATION_FAILURE = "validation-failure"


@dataclass(frozen=True)
class Tlsa:
    """One TLSA record: certificate usage, selector, matching type, data."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @classmethod
    def from_rdata(cls, rd: Any) -> Tlsa:
        return cls(int(rd.usage), int(rd.selector), int(rd.mtype), bytes(rd.cert))

    @property
    def usable(self) -> bool:
        if self.usage not in (DANE_TA, DANE_EE) or self.selector not in (0, 1) or self.mtype not in DIGEST_LENGTH:
            return False
        length = DIGEST_LENGTH[self.mtype]
        return len(self.data) == length if length is not None else len(self.data) > 0

    def text(self) -> str:
        """``3 1 1 2a4f...`` with the data shortened, for logs."""
        data = self.data.hex()
        return f"{self.usage} {self.selector} {self.mtype} {data[:16]}{'...' if len(data) > 16 else ''}"


class DaneFailure(Exception):
    """This host cannot be used under DANE now: defer it (try the next MX)."""

    def __init__(self, enhanced: str, failure: str, detail: str) -> None:
        super().__init__(detail)
        self.enhanced = enhanced
        self.failure = failure  # the RFC 8460 result type
        self.detail = detail


@dataclass(frozen=True)
class HostPolicy:
    """DANE governs this host: TLS is required; ``records`` are the usable TLSA
    records (empty: TLS without authentication, RFC 7672 2.2)."""

    tlsa_name: str
    records: tuple[Tlsa, ...]
    names: tuple[str, ...] = field(default=())  # reference identifiers for DANE-TA

    @property
    def authenticated(self) -> bool:
        return bool(self.records)


def usable(records: Iterable[Tlsa]) -> tuple[Tlsa, ...]:
    out: list[Tlsa] = []
    for i, r in enumerate(records):
        if i >= MAX_TLSA:
            break
        if r.usable:
            out.append(r)
    return tuple(out)


async def policy_for(resolver: Resolver, mode: str, host: Host, port: int, domain: str) -> HostPolicy | None:
    """What DANE asks of ``host`` (reached on ``port`` for ``domain``), or None
    when DANE does not govern it; raises ``DaneFailure`` to defer it."""
    if mode == "off":
        return None
    if not host.secure:
        if mode == "mandatory":
            raise DaneFailure(
                "4.7.5",
                DANE_REQUIRED,
                f"DANE is required (dane.mode = mandatory), but the MX or address records of {host.name} are not DNSSEC-validated",
            )
        return None
    tlsa_name = f"_{port}._tcp.{host.name}"
    try:
        rdatas, secure = await resolver.tlsa(tlsa_name)
    except DnsFailure as e:
        raise DaneFailure("4.7.5", DNSSEC_INVALID, f"TLSA lookup error for {tlsa_name}: {e.text}") from None
    if not rdatas or not secure:
        if mode == "mandatory":
            what = "no TLSA records" if not rdatas else "TLSA records that are not DNSSEC-validated"
            raise DaneFailure(
                "4.7.5", DANE_REQUIRED, f"DANE is required (dane.mode = mandatory), but {tlsa_name} has {what}"
            )
        return None
    records: list[Tlsa] = []
    for rd in rdatas[:MAX_TLSA]:
        try:
            records.append(Tlsa.from_rdata(rd))
        except (AttributeError, TypeError, ValueError):
            continue
    use = usable(records)
    if not use and mode == "mandatory":
        raise DaneFailure(
            "4.7.5",
            TLSA_INVALID,
            f"DANE is required (dane.mode = mandatory), but no TLSA record at {tlsa_name} is usable",
        )
    names = tuple(dict.fromkeys(n.lower().rstrip(".") for n in (host.name, domain) if n))
    return HostPolicy(tlsa_name, use, names)


# -- matching ------------------------------------------------------------------


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _digest(data: bytes, mtype: int) -> bytes:
    if mtype == 1:
        return hashlib.sha256(data).digest()
    if mtype == 2:
        return hashlib.sha512(data).digest()
    return data


def matches(cert: x509.Certificate, record: Tlsa) -> bool:
    """Does ``cert`` (its DER form or its SPKI, as the selector says) match ``record``?"""
    if not record.usable:
        return False
    try:
        selected = _selected(cert, record.selector)
    except (ValueError, TypeError):  # a key type cryptography cannot serialise
        return False
    return _digest(selected, record.mtype) == record.data


def _load(der: bytes) -> x509.Certificate | None:
    try:
        return x509.load_der_x509_certificate(der)
    except (ValueError, TypeError):
        return None


@dataclass(frozen=True)
class Verdict:
    """The result of ``check``: the record that matched, or why none did."""

    matched: Tlsa | None
    failure: str = ""  # RFC 8460 result type when nothing matched
    detail: str = ""


def check(policy: HostPolicy, leaf_der: bytes | None, chain_der: Sequence[bytes] | None) -> Verdict:
    """Match the server's certificate against the policy's usable records."""
    if leaf_der is None:
        return Verdict(None, VALIDATION_FAILURE, "the server sent no certificate")
    leaf = _load(leaf_der)
    if leaf is None:
        return Verdict(None, VALIDATION_FAILURE, "the server's certificate cannot be parsed")
    for r in policy.records:
        if r.usage == DANE_EE and matches(leaf, r):
            return Verdict(r)
    ta_records = [r for r in policy.records if r.usage == DANE_TA]
    if ta_records and chain_der is not None:
        chain = [c for c in (_load(d) for d in list(chain_der)[:MAX_CHAIN]) if c is not None]
        # the chain as sent starts with the leaf; a trust anchor is one of the others
        issuers = [c for c in chain if c != leaf]
        for r in ta_records:
            for ta in issuers:
                if matches(ta, r) and _chains_to(leaf, ta, [c for c in issuers if c != ta], policy.names):
                    return Verdict(r)
    why = "no TLSA record matches the server's certificate"
    if ta_records and chain_der is None:
        why += " (DANE-TA records cannot be checked: the peer's certificate chain is not available)"
    return Verdict(
        None, TLSA_INVALID, f"{why}; TLSA at {policy.tlsa_name}: {', '.join(r.text() for r in policy.records)}"
    )


def _chains_to(
    leaf: x509.Certificate, ta: x509.Certificate, intermediates: list[x509.Certificate], names: Sequence[str]
) -> bool:
    """Does ``leaf`` chain to ``ta`` (signatures, validity now), for one of ``names``?"""
    for name in names:
        try:
            verifier = (
                verification.PolicyBuilder().store(verification.Store([ta])).build_server_verifier(x509.DNSName(name))
            )
            verifier.verify(leaf, intermediates)
            return True
        except (verification.VerificationError, ValueError, TypeError):
            continue
    return False


def peer_chain(stream: Any) -> list[bytes] | None:
    """The certificates the peer sent (DER, leaf first), or None when Python cannot say.

    ``stream`` is a ``trio.SSLStream`` (its ``SSLObject`` is ``_ssl_object``)
    or an ``ssl.SSLObject``/``SSLSocket``.

    ``SSLObject.get_unverified_chain`` is public from Python 3.13; before, it
    is on the private ``_sslobj`` only (checked on 3.11), returning
    ``_ssl.Certificate`` objects.  Anything unexpected gives None (only DANE-EE can then match).
    """
    try:
        ssl_object = getattr(stream, "_ssl_object", stream)
        get = getattr(ssl_object, "get_unverified_chain", None)
        if get is None:
            get = ssl_object._sslobj.get_unverified_chain
        certs = get()
        if certs is None:
            return None
        out: list[bytes] = []
        for c in certs:
            if isinstance(c, bytes):
                out.append(c)
            else:
                import _ssl

                out.append(c.public_bytes(_ssl.ENCODING_DER))
        return out
    except Exception:
        return None
