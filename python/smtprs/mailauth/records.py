"""The DNS records to publish for one of our domains (``smtprs dns-records``).

From the configuration and a few options, in zone-file syntax, each record
with a comment saying what it is for:

- MX: the mail hosts (``--mx``, else this server's hostname), which SPF's
  ``mx`` and the MTA-STS policy name;
- SPF (RFC 7208) TXT for the domain: ``v=spf1 mx`` (and ``a:HOSTNAME`` when
  this server, which sends the mail, is not one of the MX hosts), ``ip4:`` /
  ``ip6:`` of the ``--ip`` addresses (the configuration has no outbound source
  address: smtprs sends from whatever address the kernel picks), ``-all``; never
  ``+all`` or ``?all``;
- DKIM (RFC 6376) TXT of every ``[[dkim.keys]]`` entry of the domain, the
  public key derived from its key file and printed exactly as ``smtprs dkim
  keygen`` prints it (``keys.txt_record``);
- DMARC (RFC 7489) TXT at ``_dmarc``: ``p=none`` with the aggregate-report
  address (``--rua``, default postmaster@DOMAIN), the safe start: reports
  first, then quarantine/reject once they show the mail passing;
- MTA-STS (RFC 8461) TXT at ``_mta-sts`` (``v=STSv1; id=...``, the id derived
  from the policy text, so it changes exactly when the policy does) and the
  policy file to serve at ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``
  (mode ``--mta-sts-mode``, default testing), printed as comments;
- TLS-RPT (RFC 8460) TXT at ``_smtp._tls``;
- DANE (RFC 7672) TLSA ``3 1 1`` at ``_25._tcp.HOSTNAME`` when smtpd has a
  certificate: the SHA-256 of its public key (SPKI), which survives a renewal
  that keeps the key.

Domain names are A-labels (``keys.a_label``).  Nothing here looks anything up
in DNS: what is printed follows from the configuration and the options only, so
the same configuration always gives the same output (docs/deployment.md shows
one, checked by tests/unit/test_records.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..config import Config
from . import keys

MTA_STS_MODES = ("testing", "enforce", "none")
# max_age of the policy: a day while testing (a mistake is soon forgotten by
# senders), a week once enforced (RFC 8461 3.2 advises weeks)
MTA_STS_MAX_AGE = {"testing": 86400, "enforce": 604800, "none": 86400}


class RecordsError(ValueError):
    """Why the records cannot be made (the message says so, for the command line)."""


@dataclass(frozen=True)
class Record:
    name: str  # owner name, absolute (final dot)
    rtype: str
    rdata: str  # as in a zone file (TXT: quoted character-strings)
    comment: list[str]  # lines of the comment before it


@dataclass
class Records:
    domain: str  # A-label
    records: list[Record] = field(default_factory=list)
    mta_sts_policy: str = ""  # the policy file's text (CRLF line ends, RFC 8461 3.2)
    notes: list[str] = field(default_factory=list)  # warnings, printed as comments at the top


def txt(value: str) -> str:
    """TXT rdata: the value cut into quoted strings of at most 255 octets."""
    return " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in keys.txt_strings(value))


def _name(value: str, what: str) -> str:
    try:
        name = keys.a_label(value)
    except keys.DkimKeyError as e:
        raise RecordsError(f"{what}: {e}") from None
    labels = name.split(".")
    if not name or any(not label or len(label) > 63 for label in labels) or len(name) > 253:
        raise RecordsError(f"{what}: not a domain name: {value!r}")
    if any(c.isspace() or c in '";()\\@' for c in name):
        raise RecordsError(f"{what}: not a domain name: {value!r}")
    return name


def _mailto(value: str, what: str) -> str:
    address = value[7:] if value.lower().startswith("mailto:") else value
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or any(c.isspace() or c in ',;!"' for c in address):
        raise RecordsError(f"{what}: not a mail address: {value!r}")
    return f"mailto:{local}@{_name(domain, what)}"


def ours(cfg: Config, domain: str) -> bool:
    """Whether ``domain`` is one of ours: a local domain, a DKIM signing domain,
    or the domain of this server's hostname (or the hostname itself)."""
    mine = {_safe(d) for d in cfg.local.domains} | {_safe(k.domain) for k in cfg.dkim.keys}
    host = _safe(cfg.host_name)
    return domain in mine or host == domain or host.endswith("." + domain)


def _safe(name: str) -> str:
    try:
        return keys.a_label(name)
    except keys.DkimKeyError:
        return name.lower().rstrip(".")


def spki_sha256(cert_pem: bytes) -> str:
    """TLSA 3 1 1's data: SHA-256 of the first certificate's SubjectPublicKeyInfo, hex."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def mta_sts_policy(mode: str, mx: Sequence[str]) -> str:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {MTA_STS_MAX_AGE[mode]}"]
    return "".join(line + "\r\n" for line in lines)


def mta_sts_id(policy: str) -> str:
    """The policy's id (RFC 8461 3.1: 1 to 32 letters and digits): the first 20
    hex digits of its SHA-256, so it is stable and changes with the policy."""
    return hashlib.sha256(policy.encode()).hexdigest()[:20]


def build(
    cfg: Config,
    domain: str,
    *,
    mx: Sequence[str] = (),
    ips: Sequence[str] = (),
    rua: str = "",
    tlsrpt_rua: str = "",
    mta_sts_mode: str = "testing",
) -> Records:
    """The records for ``domain``; raises RecordsError with a reason."""
    d = _name(domain, "--domain")
    if not ours(cfg, d):
        raise RecordsError(
            f"{domain} is not one of this configuration's domains "
            "(not in local.domains, no [[dkim.keys]] entry, not the hostname's domain)"
        )
    if mta_sts_mode not in MTA_STS_MODES:
        raise RecordsError(f"--mta-sts-mode: expected one of {', '.join(MTA_STS_MODES)}, not {mta_sts_mode!r}")
    host = _name(cfg.host_name, "hostname")
    mx_hosts = [_name(m, "--mx") if not m.startswith("*.") else "*." + _name(m[2:], "--mx") for m in mx] or [host]
    out = Records(d)

    # MX
    for i, m in enumerate(h for h in mx_hosts if not h.startswith("*.")):
        comment = ["MX: where mail for the domain goes (skip if already published)"] if i == 0 else []
        out.records.append(Record(f"{d}.", "MX", f"{10 * (i + 1)} {m}.", comment))

    # SPF
    terms = ["v=spf1", "mx"]
    if host not in mx_hosts:
        terms.append(f"a:{host}")
    for ip in ips:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise RecordsError(f"--ip: not an IP address: {ip!r}") from None
        terms.append(f"ip{addr.version}:{addr.compressed}")
    terms.append("-all")
    out.records.append(
        Record(
            f"{d}.",
            "TXT",
            txt(" ".join(terms)),
            [
                "SPF (RFC 7208): the hosts that send mail from this domain: its MX hosts"
                + (f", this server ({host})" if host not in mx_hosts else "")
                + (", the --ip addresses" if ips else "")
                + "; all others fail (-all).",
                "Add every other host that sends mail as this domain (a web shop, a newsletter service) before publishing.",
            ],
        )
    )

    # DKIM
    found = 0
    for i, k in enumerate(cfg.dkim.keys):
        if _safe(k.domain) != d:
            continue
        try:
            key = keys.load_key(cfg.path(k.key_file), k.algorithm)
        except keys.DkimKeyError as e:
            raise RecordsError(f"dkim.keys[{i}].key_file: {e}") from None
        line = keys.txt_record(d, k.selector, key)
        name, _, rdata = line.partition(" IN TXT ")
        size = f"{key.bits} bits" if k.algorithm == "rsa-sha256" else "RFC 8463"
        out.records.append(
            Record(
                name,
                "TXT",
                rdata,
                [
                    f"DKIM (RFC 6376): key dkim.keys[{i}], selector {k.selector}, {k.algorithm} ({size}), from {k.key_file}"
                ],
            )
        )
        found += 1
    if not found:
        out.notes.append(
            f"no [[dkim.keys]] entry for {d}: its mail is not DKIM-signed (smtprs dkim keygen makes a key)"
        )

    # DMARC
    report = _mailto(rua, "--rua") if rua else f"mailto:postmaster@{d}"
    out.records.append(
        Record(
            f"_dmarc.{d}.",
            "TXT",
            txt(f"v=DMARC1; p=none; rua={report}"),
            [
                "DMARC (RFC 7489): p=none asks receivers for aggregate reports only and changes no delivery.",
                "Once the reports show all your mail passing SPF or DKIM aligned, move to p=quarantine, then p=reject.",
            ],
        )
    )

    # MTA-STS
    policy = mta_sts_policy(mta_sts_mode, mx_hosts)
    out.mta_sts_policy = policy
    out.records.append(
        Record(
            f"_mta-sts.{d}.",
            "TXT",
            txt(f"v=STSv1; id={mta_sts_id(policy)}"),
            [
                f"MTA-STS (RFC 8461): a policy in mode {mta_sts_mode}; the id is derived from the policy text below,",
                "so it changes exactly when the policy does. Serve the policy over HTTPS (a certificate valid for",
                f"mta-sts.{d}, which needs an A/AAAA record) at https://mta-sts.{d}/.well-known/mta-sts.txt:",
                *(f"    {line}" for line in policy.splitlines()),
                *(
                    ["Move to mode enforce once the TLS-RPT reports show every sender's TLS to the MX hosts working."]
                    if mta_sts_mode == "testing"
                    else []
                ),
            ],
        )
    )

    # TLS-RPT
    tls_report = _mailto(tlsrpt_rua, "--tlsrpt-rua") if tlsrpt_rua else report
    out.records.append(
        Record(
            f"_smtp._tls.{d}.",
            "TXT",
            txt(f"v=TLSRPTv1; rua={tls_report}"),
            ["TLS-RPT (RFC 8460): where senders report TLS failures delivering to this domain (MTA-STS, DANE)."],
        )
    )

    # DANE
    tls = cfg.smtpd.tls
    if tls.cert_file:
        path = cfg.path(tls.cert_file)
        try:
            digest = spki_sha256(path.read_bytes())
        except OSError as e:
            raise RecordsError(f"smtpd.tls.cert_file: cannot read {str(path)!r}: {e.strerror or e}") from None
        except ValueError as e:
            raise RecordsError(f"smtpd.tls.cert_file: {str(path)!r} is not a PEM certificate ({e})") from None
        out.records.append(
            Record(
                f"_25._tcp.{host}.",
                "TLSA",
                f"3 1 1 {digest}",
                [
                    f"DANE (RFC 7672): this server's ({host}) public key, from {tls.cert_file} (DANE-EE, SPKI, SHA-256).",
                    "Only in a DNSSEC-signed zone. It stays valid across renewals that keep the key; before a new key,",
                    "publish its record beside this one and wait for the old one's TTL.",
                ],
            )
        )
        if host not in mx_hosts:
            out.notes.append(f"the TLSA record is for {host}, which is not one of the MX hosts ({', '.join(mx_hosts)})")
    return out


def render(records: Records) -> str:
    """Zone-file text: a comment before each record, the notes at the top."""
    lines = [f"; DNS records to publish for {records.domain} (smtprs dns-records)"]
    lines += [f"; NOTE: {n}" for n in records.notes]
    for r in records.records:
        if r.comment:
            lines.append("")
            lines += [f"; {c}" for c in r.comment]
        lines.append(f"{r.name} IN {r.rtype} {r.rdata}")
    return "\n".join(lines) + "\n"
