"""``smtprs dns-records`` end to end: the real command, on the configuration of
a real ``smtprs serve`` whose keys ``smtprs dkim keygen`` made (an RSA and an
Ed25519 key for one domain) and whose certificate openssl made.  Every printed
record is checked; then dnsmasq serves the printed records and

- dkimpy, looking the keys up with dnspython in that dnsmasq, verifies both
  DKIM-Signature fields of a message the server signed and relayed to
  smtp-sink;
- pyspf (a real SPF evaluator, RFC 7208), when it is installed, evaluates the
  printed SPF record: the MX host's address passes, another fails;
- the MTA-STS id is the one derived from the printed policy, and the TLSA
  digest is openssl's SHA-256 of the certificate's public key.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import smtplib
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest

from .harness import DOMAIN, HOSTNAME, Server, smtprs_command
from .peers import Dnsmasq, SinkDump, SmtpSink, make_cert

pytestmark = pytest.mark.e2e

MX_IP = "127.0.0.44"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*smtprs_command(), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def parse(text: str) -> dict[tuple[str, str], list[list[str] | str]]:
    """(name, type) -> the records: a TXT's character-strings, other rdata as text."""
    out: dict[tuple[str, str], list[list[str] | str]] = {}
    for line in text.splitlines():
        if not line or line.startswith(";"):
            continue
        name, _in, rtype, rdata = line.split(" ", 3)
        assert _in == "IN", line
        value: list[str] | str = re.findall(r'"([^"]*)"', rdata) if rtype == "TXT" else rdata
        out.setdefault((name, rtype), []).append(value)
    return out


def joined(strings: list[str] | str) -> str:
    assert isinstance(strings, list)
    assert all(len(s.encode()) <= 255 for s in strings)
    return "".join(strings)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path / "sink").start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def setup(make_server: Callable[..., Server], sink: SmtpSink, tmp_path: Path) -> dict[str, Any]:
    keydir = tmp_path / "keys"
    keydir.mkdir()
    printed = {}
    for selector, algorithm in (("r1", "rsa-sha256"), ("e1", "ed25519-sha256")):
        p = run(
            "dkim", "keygen", "-d", DOMAIN, "-s", selector, "-a", algorithm, "-o", str(keydir / selector), cwd=keydir
        )
        assert p.returncode == 0, p.stderr
        printed[selector] = p.stdout.strip()
    cert, key = make_cert(tmp_path / "tls", HOSTNAME)
    keys = [
        {"domain": DOMAIN, "selector": "r1", "key_file": str(keydir / "r1"), "algorithm": "rsa-sha256"},
        {"domain": DOMAIN, "selector": "e1", "key_file": str(keydir / "e1"), "algorithm": "ed25519-sha256"},
    ]
    srv = make_server(
        {
            "smtpd": {"tls": {"cert_file": str(cert), "key_file": str(key)}},
            "relay": {"trusted_networks": ["127.0.0.0/8"], "transport": {"elsewhere.test": f"[127.0.0.1]:{sink.port}"}},
            "dkim": {"keys": keys},
        }
    )
    return {"server": srv, "keygen": printed, "cert": cert}


def test_dns_records_prints_every_record_and_they_work(setup: dict[str, Any], sink: SmtpSink, tmp_path: Path) -> None:
    srv: Server = setup["server"]
    p = run(
        "dns-records", "--domain", DOMAIN, "-c", str(srv.config_path), "--mx", HOSTNAME,
        "--rua", f"dmarc@{DOMAIN}", "--tlsrpt-rua", f"tls@{DOMAIN}", "--mta-sts-mode", "enforce",
        cwd=tmp_path,
    )  # fmt: skip
    assert p.returncode == 0 and not p.stderr, p.stderr
    text = p.stdout
    z = parse(text)
    d = f"{DOMAIN}."
    assert z[(d, "MX")] == [f"10 {HOSTNAME}."]
    assert [joined(v) for v in z[(d, "TXT")]] == ["v=spf1 mx -all"]
    # the DKIM records: the lines dkim keygen printed, word for word
    lines = text.splitlines()
    for line in setup["keygen"].values():
        assert line in lines
    assert joined(z[(f"r1._domainkey.{d}", "TXT")][0]).startswith("v=DKIM1; k=rsa; p=MIIB")
    assert joined(z[(f"e1._domainkey.{d}", "TXT")][0]).startswith("v=DKIM1; k=ed25519; p=")
    assert [joined(v) for v in z[(f"_dmarc.{d}", "TXT")]] == [f"v=DMARC1; p=none; rua=mailto:dmarc@{DOMAIN}"]
    assert [joined(v) for v in z[(f"_smtp._tls.{d}", "TXT")]] == [f"v=TLSRPTv1; rua=mailto:tls@{DOMAIN}"]
    # MTA-STS: the policy printed as comments, the id from its text
    policy_lines = [ln[6:] for ln in lines if ln.startswith(";     ")]
    assert policy_lines == ["version: STSv1", "mode: enforce", f"mx: {HOSTNAME}", "max_age: 604800"]
    policy = "".join(ln + "\r\n" for ln in policy_lines)
    assert [joined(v) for v in z[(f"_mta-sts.{d}", "TXT")]] == [
        f"v=STSv1; id={hashlib.sha256(policy.encode()).hexdigest()[:20]}"
    ]
    # TLSA: openssl's digest of the certificate's public key
    pub = subprocess.run(["openssl", "x509", "-in", str(setup["cert"]), "-noout", "-pubkey"], capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub.stdout, capture_output=True)
    assert z[(f"_25._tcp.{HOSTNAME}.", "TLSA")] == [f"3 1 1 {hashlib.sha256(der.stdout).hexdigest()}"]

    # the server signs with both keys; dkimpy verifies them against the printed records served by dnsmasq
    if not (shutil.which("dnsmasq") or os.path.exists("/usr/sbin/dnsmasq")):
        pytest.skip("dnsmasq is not installed (make test installs dnsmasq-base)")
    txt = [
        f"--txt-record={name.rstrip('.')}," + ",".join(v)  # type: ignore[arg-type]
        for (name, rtype), values in z.items()
        if rtype == "TXT"
        for v in values
    ]
    server = Dnsmasq(tmp_path / "dns", [*txt, f"--mx-host={DOMAIN},{HOSTNAME},10", f"--host-record={HOSTNAME},{MX_IP}"])
    server.start()
    try:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = server.port
        resolver.lifetime = 5

        def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
            return b"".join(b"".join(r.strings) for r in answer)

        msg = (
            f"From: Alice <alice@{DOMAIN}>\r\nTo: friend@elsewhere.test\r\nSubject: records\r\n"
            "Date: Mon, 07 Dec 2026 09:00:00 +0000\r\n\r\nSigned twice, verified from the printed records.\r\n"
        ).encode()
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as s:
            s.sendmail(f"alice@{DOMAIN}", ["friend@elsewhere.test"], msg)
        srv.wait_log("status=sent")
        (dump,) = sink.wait_dumps(1)
        copy = SinkDump.read(dump).message.replace(b"\n", b"\r\n")
        assert copy.count(b"DKIM-Signature: ") == 2
        for idx, selector in ((0, b"r1"), (1, b"e1")):
            v = dkim.DKIM(copy)
            assert v.verify(idx=idx, dnsfunc=dnsfunc), idx
            assert v.signature_fields[b"s"] == selector
        assert server.queries(f"r1._domainkey.{DOMAIN}") >= 1 and server.queries(f"e1._domainkey.{DOMAIN}") >= 1

        if importlib.util.find_spec("spf") is None:
            pytest.skip("pyspf is not installed: the printed SPF record was not evaluated")
        check_spf(resolver)
    finally:
        server.stop()


def check_spf(resolver: dns.resolver.Resolver) -> None:
    """pyspf's evaluation of the printed record (it asks dnspython's default resolver: dnsmasq's, for now)."""
    import spf  # type: ignore[import-untyped]

    saved = dns.resolver.default_resolver
    dns.resolver.default_resolver = resolver
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # pyspf calls dns.resolver.query
            good = spf.check2(i=MX_IP, s=f"alice@{DOMAIN}", h=HOSTNAME, timeout=10, querytime=10)
            bad = spf.check2(i="127.0.0.99", s=f"alice@{DOMAIN}", h="elsewhere.test", timeout=10, querytime=10)
    finally:
        dns.resolver.default_resolver = saved
    assert good[0] == "pass", good
    assert bad[0] == "fail", bad


def test_dns_records_errors_are_messages_not_tracebacks(setup: dict[str, Any], tmp_path: Path) -> None:
    srv: Server = setup["server"]
    p = run("dns-records", "--domain", "not-ours.test", "-c", str(srv.config_path), cwd=tmp_path)
    assert p.returncode == 2 and "smtprs dns-records: not-ours.test is not one of" in p.stderr, p.stderr
    p = run("dns-records", "--domain", DOMAIN, "-c", str(srv.config_path), "--rua", "x", cwd=tmp_path)
    assert p.returncode == 2 and "--rua: not a mail address" in p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text(srv.config_path.read_text().replace(str(setup["cert"]), str(tmp_path / "missing.crt")))
    p = run("dns-records", "--domain", DOMAIN, "-c", str(bad), cwd=tmp_path)
    assert p.returncode == 2 and "smtpd.tls.cert_file: cannot read" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
