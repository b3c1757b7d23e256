"""Inbound message authentication end to end: a real ``smtprs serve`` with an
mx listener and ``mailauth.enabled``, its [dns] pointed at a real dnsmasq
serving the SPF, DKIM key and DMARC TXT records of the test domains (and
forwarding ``slow.test`` to a name server that never answers); messages
signed with dkimpy (RSA-2048, Ed25519, an ARC set) sent with smtplib from
loopback addresses that the SPF records list (127.0.0.5) or not (127.0.0.6).
Each test checks the reply codes and the Authentication-Results field of the
delivered copy exactly."""

from __future__ import annotations

import base64
import os
import re
import shutil
import smtplib
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import nacl.encoding
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .harness import DOMAIN, HOSTNAME, Server, maildir_files, smtprs_command
from .peers import Dnsmasq, free_port

pytestmark = pytest.mark.e2e

GOOD_IP = "127.0.0.5"  # listed in the SPF records
OTHER_IP = "127.0.0.6"  # not listed
RCPT = f"inbox@{DOMAIN}"
BUDGET = 2.0  # mailauth.dns_budget of the servers
DNS_TIMEOUT = 5.0
METRICS_PORT = free_port()  # dns.timeout: without the budget, one slow lookup alone would take this long


def _rsa() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()


def _ed25519() -> tuple[bytes, str]:
    sk = nacl.signing.SigningKey.generate()
    seed = sk.encode(encoder=nacl.encoding.Base64Encoder)
    return seed, "v=DKIM1; k=ed25519; p=" + sk.verify_key.encode(encoder=nacl.encoding.Base64Encoder).decode()


def _txt(name: str, value: str) -> str:
    chunks = [value[i : i + 250] for i in range(0, len(value), 250)]
    return f"--txt-record={name}," + ",".join(chunks)


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    rsa_key, rsa_txt = _rsa()
    other_key, _ = _rsa()
    ed_key, ed_txt = _ed25519()
    arc_key, arc_txt = _rsa()
    ours_key, ours_txt = _rsa()  # smtprs's own signer's key (a PKCS#8 PEM file, as keygen writes)
    return {
        "ours": ours_key,
        "ours_txt": ours_txt,
        "rsa": rsa_key,
        "rsa_txt": rsa_txt,
        "wrong": other_key,
        "ed": ed_key,
        "ed_txt": ed_txt,
        "arc": arc_key,
        "arc_txt": arc_txt,
    }


@pytest.fixture(scope="module")
def dnsserver(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Any]) -> Iterator[Dnsmasq]:
    if not (shutil.which("dnsmasq") or os.path.exists("/usr/sbin/dnsmasq")):
        pytest.skip("dnsmasq is not installed (make test installs dnsmasq-base)")
    # a name server that never answers: a UDP socket nobody reads
    black_hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    black_hole.bind(("127.0.0.1", 0))
    hole = black_hole.getsockname()[1]
    records = [
        _txt("good.test", f"v=spf1 ip4:{GOOD_IP} -all"),
        _txt("rsa._domainkey.good.test", keys["rsa_txt"]),
        _txt("ed._domainkey.good.test", keys["ed_txt"]),
        _txt("broken._domainkey.good.test", "v=DKIM1; k=rsa; p=bm90IGEga2V5"),
        _txt("_dmarc.good.test", "v=DMARC1; p=reject"),
        _txt("soft.test", f"v=spf1 ip4:{GOOD_IP} ~all"),
        _txt("quar.test", f"v=spf1 ip4:{GOOD_IP} -all"),
        _txt("_dmarc.quar.test", "v=DMARC1; p=quarantine"),
        _txt("badspf.test", f"v=spf1 ip4:{GOOD_IP} frobnicate:x -all"),
        _txt("baddmarc.test", f"v=spf1 ip4:{GOOD_IP} -all"),
        _txt("_dmarc.baddmarc.test", "v=DMARC1; p"),
        _txt("relay.test", f"v=spf1 ip4:{GOOD_IP} -all"),
        _txt("arc._domainkey.relay.test", keys["arc_txt"]),
        _txt("sign.test", "v=spf1 ip4:127.0.0.1 -all"),
        # a TXT answer of ~10 KB (over TCP: too big for UDP), and an include loop
        _txt("big.test", "v=spf1 " + " ".join(f"ip4:10.{i // 250}.{i % 250}.0/24" for i in range(600)) + " -all"),
        _txt("loop.test", "v=spf1 include:loop2.test -all"),
        _txt("loop2.test", "v=spf1 include:loop.test -all"),
        _txt("smtprs._domainkey.sign.test", keys["ours_txt"]),
        _txt("_dmarc.sign.test", "v=DMARC1; p=reject; adkim=s; aspf=s"),
        f"--server=/slow.test/127.0.0.1#{hole}",
    ]
    server = Dnsmasq(tmp_path_factory.mktemp("dns"), records).start()
    try:
        yield server
    finally:
        server.stop()
        black_hole.close()


def _server(base: Path, dnsserver: Dnsmasq, mailauth: dict[str, Any], **more: Any) -> Server:
    dns = {**dnsserver.config(), "timeout": DNS_TIMEOUT}
    overrides = {
        **more,
        "local": {"users": ["inbox"]},
        "dns": dns,
        "mailauth": {"enabled": True, "dns_budget": BUDGET, **mailauth},
    }
    return Server(base, overrides).start()


@pytest.fixture(scope="module")
def accepting(tmp_path_factory: pytest.TempPathFactory, dnsserver: Dnsmasq) -> Iterator[Server]:
    srv = _server(tmp_path_factory.mktemp("accept"), dnsserver, {})
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def rejecting(tmp_path_factory: pytest.TempPathFactory, dnsserver: Dnsmasq) -> Iterator[Server]:
    srv = _server(
        tmp_path_factory.mktemp("reject"),
        dnsserver,
        {
            "dmarc": {"reject_policy": "reject"},
            "spf": {"fail_policy": "reject", "temperror_policy": "defer"},
        },
        metrics={"enabled": True, "address": f"127.0.0.1:{METRICS_PORT}"},
    )
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def quarantining(tmp_path_factory: pytest.TempPathFactory, dnsserver: Dnsmasq) -> Iterator[Server]:
    srv = _server(
        tmp_path_factory.mktemp("quarantine"),
        dnsserver,
        {"dmarc": {"reject_policy": "quarantine-header"}, "dkim_max_size": 20000},
    )
    try:
        yield srv
    finally:
        srv.stop()


# -- helpers ----------------------------------------------------------------------
def message(from_: str, body: str = "Hello.\r\n", extra: str = "") -> tuple[bytes, str]:
    token = uuid.uuid4().hex
    text = (
        f"From: Sender <{from_}>\r\nTo: <{RCPT}>\r\nSubject: test {token}\r\n"
        f"Message-ID: <{token}@test>\r\nDate: Mon, 7 Dec 2026 12:00:00 +0000\r\n{extra}\r\n{body}"
    )
    return text.encode(), token


def sign(msg: bytes, selector: str, key: bytes, domain: str = "good.test", algorithm: bytes = b"rsa-sha256") -> bytes:
    sig: bytes = dkim.sign(
        msg,
        selector.encode(),
        domain.encode(),
        key,
        include_headers=[b"from", b"to", b"subject", b"message-id"],
        canonicalize=(b"relaxed", b"relaxed"),
        signature_algorithm=algorithm,
    )
    return sig + msg


def send(srv: Server, msg: bytes, sender: str, source: str = GOOD_IP, helo: str = "client.test") -> tuple[int, str]:
    """MAIL/RCPT/DATA with smtplib; the reply to the data."""
    with smtplib.SMTP("127.0.0.1", srv.port, local_hostname=helo, timeout=30, source_address=(source, 0)) as c:
        c.ehlo(helo)
        code, text = c.mail(sender)
        assert code == 250, (code, text)
        code, text = c.rcpt(RCPT)
        assert code == 250, (code, text)
        code, text = c.data(msg)
        return code, text.decode()


def delivered(srv: Server, token: str, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        for f in maildir_files(srv.maildir("inbox")):
            data = f.read_bytes()
            if token.encode() in data:
                return data
        assert time.monotonic() < deadline, f"message {token} not delivered"
        time.sleep(0.05)


def header_fields(data: bytes) -> list[tuple[str, str]]:
    """(name, unfolded value) of each header field of a stored copy."""
    head = data.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()
    out: list[tuple[str, str]] = []
    for line in head.split("\n"):
        if line[:1] in (" ", "\t") and out:
            out[-1] = (out[-1][0], out[-1][1] + " " + line.strip())
        else:
            name, _, value = line.partition(":")
            out.append((name, value.strip()))
    return out


def stored_fields(data: bytes) -> list[tuple[str, str]]:
    """The header fields as stored (without the Return-Path and Delivered-To the Maildir delivery adds)."""
    fields = header_fields(data)
    assert [n for n, _ in fields[:2]] == ["Return-Path", "Delivered-To"], fields[:3]
    return fields[2:]


def auth_results(data: bytes) -> str:
    """Our Authentication-Results field's value: exactly one, the first stored field, above our Received."""
    fields = stored_fields(data)
    ours = [v for n, v in fields if n.lower() == "authentication-results" and v.lower().startswith(HOSTNAME + ";")]
    assert len(ours) == 1, fields[:6]
    names = [n for n, _ in fields[:3] if n != "X-Smtprs-Quarantine"]
    assert names[:2] == ["Authentication-Results", "Received"], fields[:3]
    return re.sub(r"\s+", " ", ours[0])


def check(srv: Server, msg: bytes, token: str, sender: str, source: str = GOOD_IP, helo: str = "client.test") -> str:
    code, text = send(srv, msg, sender, source, helo)
    assert code == 250, (code, text)
    return auth_results(delivered(srv, token))


# -- passes --------------------------------------------------------------------------
def test_rsa_signed_from_a_listed_address_passes_everything(accepting: Server, keys: dict[str, Any]) -> None:
    msg, token = message("bob@good.test")
    ar = check(accepting, sign(msg, "rsa", keys["rsa"]), token, "bob@good.test")
    assert ar == (
        f"{HOSTNAME}; spf=pass smtp.mailfrom=good.test; spf=none smtp.helo=client.test; "
        "dkim=pass header.d=good.test header.a=rsa-sha256 header.s=rsa; "
        "dmarc=pass header.from=good.test policy.dmarc=reject"
    )
    log = accepting.wait_log(
        re.escape(
            "authentication: spf=pass (good.test) spf_helo=none (client.test) dkim=pass (good.test) dmarc=pass (good.test)"
        )
    )
    assert "dns_lookups=" in log


def test_ed25519_signature_passes_and_aligns_dmarc_without_spf(accepting: Server, keys: dict[str, Any]) -> None:
    msg, token = message("bob@good.test")
    signed = sign(msg, "ed", keys["ed"], algorithm=b"ed25519-sha256")
    ar = check(accepting, signed, token, "bounce@elsewhere.test", source=OTHER_IP)
    assert ar == (
        f"{HOSTNAME}; spf=none smtp.mailfrom=elsewhere.test; spf=none smtp.helo=client.test; "
        "dkim=pass header.d=good.test header.a=ed25519-sha256 header.s=ed; "
        "dmarc=pass header.from=good.test policy.dmarc=reject"
    )


def test_both_signatures_are_verified(accepting: Server, keys: dict[str, Any]) -> None:
    msg, token = message("bob@good.test")
    signed = sign(sign(msg, "rsa", keys["rsa"]), "nokey", keys["rsa"])
    ar = check(accepting, signed, token, "bob@good.test")
    assert (
        "dkim=permerror (no key for signature) header.d=good.test header.a=rsa-sha256 header.s=nokey; "
        "dkim=pass header.d=good.test header.a=rsa-sha256 header.s=rsa; dmarc=pass" in ar
    ), ar


# -- DKIM failures ---------------------------------------------------------------------
def test_modified_body_fails(accepting: Server, keys: dict[str, Any]) -> None:
    msg, token = message("bob@good.test")
    signed = sign(msg, "rsa", keys["rsa"]).replace(b"Hello.", b"Hellp.")
    ar = check(accepting, signed, token, "bob@good.test", source=OTHER_IP)
    assert ar == (
        f"{HOSTNAME}; spf=fail (SPF fail - not authorized) smtp.mailfrom=good.test; spf=none smtp.helo=client.test; "
        "dkim=fail (body hash mismatch) header.d=good.test header.a=rsa-sha256 header.s=rsa; "
        "dmarc=fail (p=reject) header.from=good.test policy.dmarc=reject"
    )


def test_wrong_key_fails(accepting: Server, keys: dict[str, Any]) -> None:
    msg, token = message("bob@good.test")
    ar = check(accepting, sign(msg, "rsa", keys["wrong"]), token, "bob@good.test")
    assert ar == (
        f"{HOSTNAME}; spf=pass smtp.mailfrom=good.test; spf=none smtp.helo=client.test; "
        "dkim=fail (signature did not verify) header.d=good.test header.a=rsa-sha256 header.s=rsa; "
        "dmarc=pass header.from=good.test policy.dmarc=reject"
    )


def test_missing_and_broken_key_records_are_permerror(accepting: Server, keys: dict[str, Any]) -> None:
    msg, token = message("bob@good.test")
    ar = check(accepting, sign(msg, "nokey", keys["rsa"]), token, "bob@good.test")
    assert "dkim=permerror (no key for signature) header.d=good.test header.a=rsa-sha256 header.s=nokey;" in ar, ar
    msg, token = message("bob@good.test")
    ar = check(accepting, sign(msg, "broken", keys["rsa"]), token, "bob@good.test")
    assert re.search(r"dkim=permerror \(bad key record: [^)]*\) header.d=good.test", ar), ar


def test_malformed_signature_field_is_permerror(accepting: Server) -> None:
    msg, token = message("bob@good.test")
    bad = b"DKIM-Signature: v=1; a=rsa-sha256; d=good.test; s=rsa; b=!!!\r\n" + msg
    ar = check(accepting, bad, token, "bob@good.test")
    assert re.search(r"dkim=permerror \(missing [^)]+\) header.d=good.test header.a=rsa-sha256 header.s=rsa;", ar), ar
    assert "dmarc=pass" in ar  # SPF aligned


# -- DMARC and its policies -----------------------------------------------------------------
FORGED_TEXT = "5.7.1 Message rejected: DMARC policy of good.test (p=reject) not met"


def test_forged_from_is_recorded_when_accepting(accepting: Server) -> None:
    msg, token = message("ceo@good.test")
    ar = check(accepting, msg, token, "spam@elsewhere.test", source=OTHER_IP)
    assert ar == (
        f"{HOSTNAME}; spf=none smtp.mailfrom=elsewhere.test; spf=none smtp.helo=client.test; dkim=none; "
        "dmarc=fail (p=reject) header.from=good.test policy.dmarc=reject"
    )


def test_forged_from_is_refused_when_rejecting(rejecting: Server) -> None:
    msg, _ = message("ceo@good.test")
    code, text = send(rejecting, msg, "spam@elsewhere.test", source=OTHER_IP)
    assert (code, text) == (550, FORGED_TEXT)
    rejecting.wait_log("reject: DATA from")
    assert maildir_files(rejecting.maildir("inbox")) == [] or all(
        b"ceo@good.test" not in f.read_bytes() for f in maildir_files(rejecting.maildir("inbox"))
    )


def test_forged_from_gets_the_quarantine_header(quarantining: Server) -> None:
    msg, token = message("ceo@good.test")
    code, _ = send(quarantining, msg, "spam@elsewhere.test", source=OTHER_IP)
    assert code == 250
    fields = stored_fields(delivered(quarantining, token))
    assert [n for n, _ in fields[:3]] == ["Authentication-Results", "X-Smtprs-Quarantine", "Received"]
    assert fields[1][1] == "dmarc=fail header.from=good.test policy.dmarc=reject"


def test_p_quarantine_is_never_rejected(rejecting: Server) -> None:
    msg, token = message("ceo@quar.test")
    code, _ = send(rejecting, msg, "spam@elsewhere.test", source=OTHER_IP)
    assert code == 250
    data = delivered(rejecting, token)
    fields = header_fields(data)
    assert ("X-Smtprs-Quarantine", "dmarc=fail header.from=quar.test policy.dmarc=quarantine") in fields
    assert "dmarc=fail (p=quarantine) header.from=quar.test policy.dmarc=quarantine" in auth_results(data)


def test_forged_quarantine_and_our_auth_results_are_removed_others_kept(
    accepting: Server, keys: dict[str, Any]
) -> None:
    extra = (
        f"Authentication-Results: {HOSTNAME.upper()}; dkim=pass header.d=good.test\r\n"
        "Authentication-Results: (a comment) mx.test 1;\r\n spf=pass smtp.mailfrom=good.test\r\n"
        "Authentication-Results: other.test; spf=pass smtp.mailfrom=good.test\r\n"
        "X-Smtprs-Quarantine: forged\r\n"
    )
    msg, token = message("bob@good.test", extra=extra)
    code, _ = send(accepting, msg, "bob@good.test")
    assert code == 250
    data = delivered(accepting, token)
    fields = header_fields(data)
    ars = [v for n, v in fields if n.lower() == "authentication-results"]
    assert len(ars) == 2 and ars[1] == "other.test; spf=pass smtp.mailfrom=good.test", ars
    assert auth_results(data).startswith(
        f"{HOSTNAME}; spf=pass smtp.mailfrom=good.test; spf=none smtp.helo=client.test; dkim=none; dmarc=pass"
    )
    assert not any(n.lower() == "x-smtprs-quarantine" for n, _ in fields)


# -- SPF ------------------------------------------------------------------------------------
def test_spf_results_from_loopback_addresses(accepting: Server) -> None:
    msg, token = message("x@soft.test")
    assert check(accepting, msg, token, "x@soft.test", source=OTHER_IP).startswith(
        f"{HOSTNAME}; spf=softfail (domain owner discourages use of this host) smtp.mailfrom=soft.test; spf=none smtp.helo=client.test; "
        "dkim=none; dmarc=none header.from=soft.test"
    )
    msg, token = message("x@soft.test")
    assert "spf=pass smtp.mailfrom=soft.test;" in check(accepting, msg, token, "x@soft.test", source=GOOD_IP)
    msg, token = message("x@good.test")
    assert "spf=fail (SPF fail - not authorized) smtp.mailfrom=good.test;" in check(
        accepting, msg, token, "x@good.test", source=OTHER_IP
    )


def test_null_sender_checks_helo(accepting: Server) -> None:
    msg, token = message("mailer-daemon@good.test")
    ar = check(accepting, msg, token, "", source=GOOD_IP, helo="good.test")
    assert ar == (
        f"{HOSTNAME}; spf=pass smtp.helo=good.test; dkim=none; dmarc=pass header.from=good.test policy.dmarc=reject"
    )


def test_helo_of_a_non_null_sender_is_a_second_result(accepting: Server) -> None:
    """RFC 7208 2.3: the HELO name is checked too, recorded beside MAIL FROM's result."""
    msg, token = message("bob@good.test")
    ar = check(accepting, msg, token, "bob@good.test", source=GOOD_IP, helo="good.test")
    assert ar.startswith(f"{HOSTNAME}; spf=pass smtp.mailfrom=good.test; spf=pass smtp.helo=good.test; dkim=none")
    msg, token = message("x@soft.test")  # a HELO name the client may not use: fail, recorded only
    ar = check(accepting, msg, token, "x@soft.test", source=OTHER_IP, helo="good.test")
    assert ar.startswith(
        f"{HOSTNAME}; spf=softfail (domain owner discourages use of this host) smtp.mailfrom=soft.test; "
        "spf=fail (SPF fail - not authorized) smtp.helo=good.test; dkim=none"
    ), ar
    for literal in ("[127.0.0.6]", "localhost"):  # not a domain name SPF can check: no HELO result
        msg, token = message("x@soft.test")
        ar = check(accepting, msg, token, "x@soft.test", source=OTHER_IP, helo=literal)
        assert "smtp.helo" not in ar, ar


def test_a_failing_helo_never_refuses(rejecting: Server) -> None:
    """spf.fail_policy = "reject" reads MAIL FROM's result only; DMARC too."""
    msg, token = message("x@soft.test")
    code, _ = send(rejecting, msg, "x@soft.test", source=OTHER_IP, helo="good.test")
    assert code == 250
    assert "spf=fail (SPF fail - not authorized) smtp.helo=good.test;" in auth_results(delivered(rejecting, token))


def test_spf_fail_is_refused_when_rejecting_softfail_is_not(rejecting: Server, keys: dict[str, Any]) -> None:
    msg, _ = message("x@quar.test")
    code, text = send(rejecting, msg, "x@quar.test", source=OTHER_IP)
    assert (code, text) == (550, "5.7.23 Message rejected: SPF check failed for quar.test")
    msg, token = message("x@soft.test")
    code, _ = send(rejecting, msg, "x@soft.test", source=OTHER_IP)
    assert code == 250
    assert "spf=softfail" in auth_results(delivered(rejecting, token))


def test_unparseable_records_are_permerror(accepting: Server) -> None:
    msg, token = message("x@badspf.test")
    ar = check(accepting, msg, token, "x@badspf.test")
    assert re.match(
        rf"{HOSTNAME}; spf=permerror \([^)]+\) smtp.mailfrom=badspf.test; spf=none smtp.helo=client.test; dkim=none; dmarc=none",
        ar,
    ), ar
    msg, token = message("x@baddmarc.test")
    ar = check(accepting, msg, token, "x@baddmarc.test")
    assert re.search(
        r"spf=pass smtp.mailfrom=baddmarc.test; spf=none smtp.helo=client.test; dkim=none; dmarc=permerror \(DMARC record: [^)]+\) header.from=baddmarc.test$",
        ar,
    ), ar


def test_too_big_answer_and_include_loop_are_permerror(accepting: Server) -> None:
    msg, token = message("x@big.test")
    ar = check(accepting, msg, token, "x@big.test")
    assert ar.startswith(
        f"{HOSTNAME}; spf=permerror (SPF Permanent Error: TXT answer for big.test larger than 8192 octets) smtp.mailfrom=big.test;"
    ), ar
    msg, token = message("x@loop.test")
    ar = check(accepting, msg, token, "x@loop.test", source=OTHER_IP)
    assert re.match(
        rf"{HOSTNAME}; spf=permerror \([^)]+\) smtp.mailfrom=loop.test; spf=none smtp.helo=client.test; dkim=none; dmarc=none",
        ar,
    ), ar


# -- DNS timeout -----------------------------------------------------------------------------
def test_dns_timeout_is_temperror_within_the_budget(accepting: Server, keys: dict[str, Any]) -> None:
    msg, token = message("x@slow.test")
    signed = sign(msg, "rsa", keys["rsa"], domain="slow.test")
    started = time.monotonic()
    code, _ = send(accepting, signed, "x@slow.test")
    elapsed = time.monotonic() - started
    assert code == 250
    # the bound, not a speed: three lookups of DNS_TIMEOUT each would take 15 s
    assert elapsed < BUDGET + DNS_TIMEOUT, elapsed
    ar = auth_results(delivered(accepting, token))
    assert re.match(
        rf"{HOSTNAME}; spf=temperror \([^)]*\) smtp.mailfrom=slow.test; spf=temperror \([^)]*budget[^)]*\) smtp.helo=client.test; "
        r"dkim=temperror \(DNS [^)]*\) header.d=slow.test header.a=rsa-sha256 header.s=rsa; "
        r"dmarc=temperror \(DNS [^)]*\) header.from=slow.test$",
        ar,
    ), ar


def test_dns_timeout_defers_when_asked(rejecting: Server) -> None:
    msg, _ = message("x@slow.test")
    code, text = send(rejecting, msg, "x@slow.test")
    assert (code, text) == (451, "4.7.24 SPF check of slow.test could not be completed; try again later")


# -- bad input and bounds ----------------------------------------------------------------------
def test_thousands_of_header_fields(accepting: Server, keys: dict[str, Any]) -> None:
    extra = "".join(f"X-Filler-{i}: {i}\r\n" for i in range(5000))
    msg, token = message("bob@good.test", extra=extra)
    ar = check(accepting, sign(msg, "rsa", keys["rsa"]), token, "bob@good.test")
    assert "dkim=pass header.d=good.test" in ar and "dmarc=pass" in ar, ar


def test_too_large_for_dkim_is_neutral_never_rejected(quarantining: Server, keys: dict[str, Any]) -> None:
    msg, token = message("bob@good.test", body="x" * 70 + "\r\n" + ("y" * 998 + "\r\n") * 30)
    code, _ = send(quarantining, sign(msg, "rsa", keys["rsa"]), "spam@elsewhere.test", source=OTHER_IP)
    assert code == 250
    data = delivered(quarantining, token)
    assert auth_results(data) == (
        f"{HOSTNAME}; spf=none smtp.mailfrom=elsewhere.test; spf=none smtp.helo=client.test; "
        "dkim=neutral (message larger than mailauth.dkim_max_size: not verified); "
        "arc=none (not verified: message too large); "
        "dmarc=permerror (DKIM not verified: message larger than mailauth.dkim_max_size) header.from=good.test "
        "policy.dmarc=reject"
    )
    assert not any(n == "X-Smtprs-Quarantine" for n, _ in header_fields(data))


# -- ARC ---------------------------------------------------------------------------------------------
def test_arc_sealed_message_verifies(accepting: Server, keys: dict[str, Any]) -> None:
    extra = "Authentication-Results: relay.test; dkim=pass header.d=good.test\r\n"
    msg, token = message("bob@good.test", extra=extra)
    msg = sign(msg, "rsa", keys["rsa"])
    arc = dkim.arc_sign(msg, b"arc", b"relay.test", keys["arc"], b"relay.test")
    sealed = b"".join(arc) + msg
    ar = check(accepting, sealed, token, "bob@good.test")
    assert ar == (
        f"{HOSTNAME}; spf=pass smtp.mailfrom=good.test; spf=none smtp.helo=client.test; "
        "dkim=pass header.d=good.test header.a=rsa-sha256 header.s=rsa; arc=pass; "
        "dmarc=pass header.from=good.test policy.dmarc=reject"
    )
    broken = sealed.replace(b"Hello.", b"Hellp.")
    msg2 = broken.replace(token.encode(), (token + "b").encode())
    ar = check(accepting, msg2, token + "b", "bob@good.test")
    assert "; arc=fail (" in ar, ar


# -- BDAT, and smtprs's own signer into the checks --------------------------------------------
def test_bdat_message_is_checked(accepting: Server, keys: dict[str, Any]) -> None:
    extra = f"Authentication-Results: {HOSTNAME}; dmarc=pass\r\n"
    msg, token = message("bob@good.test", extra=extra)
    signed = sign(msg, "rsa", keys["rsa"])
    with accepting.connect(source=GOOD_IP) as c:
        c.expect("EHLO client.test", 250)
        c.expect("MAIL FROM:<bob@good.test>", 250)
        c.expect(f"RCPT TO:<{RCPT}>", 250)
        half = len(signed) // 2
        c.send(b"BDAT %d\r\n" % half + signed[:half])
        assert c.reply().code == 250
        c.send(b"BDAT %d LAST\r\n" % (len(signed) - half) + signed[half:])
        r = c.reply()
        assert r.code == 250, r
    data = delivered(accepting, token)
    assert auth_results(data) == (
        f"{HOSTNAME}; spf=pass smtp.mailfrom=good.test; spf=none smtp.helo=client.test; "
        "dkim=pass header.d=good.test header.a=rsa-sha256 header.s=rsa; "
        "dmarc=pass header.from=good.test policy.dmarc=reject"
    )


def test_mail_signed_by_smtprs_passes_smtprs_checks(
    tmp_path: Path, accepting: Server, keys: dict[str, Any], dnsserver: Dnsmasq
) -> None:
    """A submission listener of one smtprs signs (dkim.keys) and relays to the
    mx listener of another, which checks: strict DMARC alignment passes on both.
    The signer has the checks on too, but a submission listener is not checked."""
    key_file = tmp_path / "ours.pem"
    key_file.write_bytes(keys["ours"])
    key_file.chmod(0o600)
    users = tmp_path / "users"
    p = subprocess.run(
        [*smtprs_command(), "passwd", "add", "alice@sign.test", "--stdin", "--file", str(users)],
        input="signer password 1\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    signer = Server(
        tmp_path / "signer",
        {
            "local": {"domains": ["signer.test"]},
            "smtpd": {"auth": {"users_file": str(users), "allow_plaintext": True}},
            "relay": {"transport": {DOMAIN: f"[127.0.0.1]:{accepting.port}"}},
            "dkim": {"keys": [{"domain": "sign.test", "selector": "smtprs", "key_file": str(key_file)}]},
            "dns": dnsserver.config(),
            "mailauth": {"enabled": True, "authserv_id": "signer.test"},
        },
        modes=("submission",),
    ).start()
    try:
        msg, token = message("alice@sign.test")
        with smtplib.SMTP("127.0.0.1", signer.ports["submission"], timeout=30) as c:
            c.login("alice@sign.test", "signer password 1")
            c.sendmail("alice@sign.test", [RCPT], msg)
        data = delivered(accepting, token)
        ar = auth_results(data)
    finally:
        signer.stop()
    assert b"signer.test" not in data and b"authentication: " not in signer.log().encode()
    assert ar == (
        f"{HOSTNAME}; spf=pass smtp.mailfrom=sign.test; spf=none smtp.helo={HOSTNAME}; "
        "dkim=pass header.d=sign.test header.a=rsa-sha256 header.s=smtprs; "
        "dmarc=pass header.from=sign.test policy.dmarc=reject"
    )


def scrape() -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    }


def test_results_and_actions_are_counted(rejecting: Server, keys: dict[str, Any]) -> None:
    before = scrape()
    msg, _ = message("ceo@good.test")
    assert send(rejecting, msg, "spam@elsewhere.test", source=OTHER_IP)[0] == 550
    msg, token = message("bob@good.test")
    assert send(rejecting, sign(msg, "rsa", keys["rsa"]), "bob@good.test")[0] == 250
    delivered(rejecting, token)
    after = scrape()

    def delta(key: str) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert delta('smtprs_mailauth_actions_total{action="rejected"}') == 1
    assert delta('smtprs_mailauth_actions_total{action="accepted"}') == 1
    assert delta('smtprs_mailauth_results_total{method="dmarc",result="fail"}') == 1
    assert delta('smtprs_mailauth_results_total{method="dmarc",result="pass"}') == 1
    assert delta('smtprs_mailauth_results_total{method="dkim",result="pass"}') == 1
    assert delta('smtprs_mailauth_results_total{method="spf",result="none"}') == 1
    assert delta('smtprs_mailauth_results_total{method="spf",result="pass"}') == 1
    assert delta('smtprs_mailauth_results_total{method="spf_helo",result="none"}') == 2  # HELO client.test
