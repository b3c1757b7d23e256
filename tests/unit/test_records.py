"""``smtprs dns-records`` (mailauth/records.py): the record builder, its
errors, and that docs/deployment.md's example is what the command prints for
the example configuration (so the doc cannot go stale).

Independent checks: the DKIM record lets dkimpy verify a message smtprs's
signer signed with that key; the TLSA digest is what openssl computes from
the certificate."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dkim
import pytest
import trio

from smtprs import cli
from smtprs.mailauth import keys, records
from smtprs.mailauth.dkim import Signer

from .conftest import make_config

ROOT = Path(__file__).parents[2]
DATA = ROOT / "tests" / "data" / "dns-records"  # fixed example keys and certificate (the doc's)


def zone(text: str) -> dict[tuple[str, str], list[str]]:
    """The records of printed output: (name, type) -> rdata list; comments dropped."""
    out: dict[tuple[str, str], list[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith(";"):
            continue
        name, _in, rtype, rdata = line.split(" ", 3)
        assert _in == "IN", line
        out.setdefault((name, rtype), []).append(rdata)
    return out


def strings(rdata: str) -> str:
    """A TXT record's value: its quoted strings joined (as DKIM/SPF verifiers join them)."""
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', rdata))


def example_config(tmp_path: Path, **more):  # type: ignore[no-untyped-def]
    for f in DATA.iterdir():
        shutil.copy(f, tmp_path / f.name)
    sections = {
        "local": {"domains": ["example.test"]},
        "smtpd": {"tls": {"cert_file": "tls-cert.pem", "key_file": "tls-key.pem"}},
        "dkim": {
            "keys": [
                {"domain": "example.test", "selector": "rsa2026", "key_file": "rsa2026.pem"},
                {
                    "domain": "example.test",
                    "selector": "ed2026",
                    "key_file": "ed2026.key",
                    "algorithm": "ed25519-sha256",
                },
                {"domain": "other.test", "selector": "x", "key_file": "ed2026.key", "algorithm": "ed25519-sha256"},
            ]
        },
    }
    sections.update(more)
    return make_config(tmp_path, **sections)


def test_every_record_for_a_full_configuration(tmp_path: Path) -> None:
    cfg = example_config(tmp_path)
    built = records.build(cfg, "Example.Test.", mx=["mx.test", "mx2.test"], rua="dmarc@example.test")
    z = zone(records.render(built))
    assert z[("example.test.", "MX")] == ["10 mx.test.", "20 mx2.test."]
    # SPF: the hostname (mx.test) is an MX host, so mx covers it
    (spf,) = [strings(r) for r in z[("example.test.", "TXT")]]
    assert spf == "v=spf1 mx -all"
    # DKIM: both keys of the domain (not other.test's), exactly as keygen prints them
    rsa = keys.load_key(tmp_path / "rsa2026.pem", "rsa-sha256")
    ed = keys.load_key(tmp_path / "ed2026.key", "ed25519-sha256")
    text = records.render(built)
    assert keys.txt_record("example.test", "rsa2026", rsa) in text.splitlines()
    assert keys.txt_record("example.test", "ed2026", ed) in text.splitlines()
    assert strings(z[("rsa2026._domainkey.example.test.", "TXT")][0]) == f"v=DKIM1; k=rsa; p={rsa.public}"
    assert strings(z[("ed2026._domainkey.example.test.", "TXT")][0]) == f"v=DKIM1; k=ed25519; p={ed.public}"
    assert not any("other.test" in name for name, _ in z)
    assert [strings(r) for r in z[("_dmarc.example.test.", "TXT")]] == [
        "v=DMARC1; p=none; rua=mailto:dmarc@example.test"
    ]
    assert "move to p=quarantine, then p=reject" in text
    # MTA-STS: the id is derived from the policy text
    policy = "version: STSv1\r\nmode: testing\r\nmx: mx.test\r\nmx: mx2.test\r\nmax_age: 86400\r\n"
    assert built.mta_sts_policy == policy
    (sts,) = [strings(r) for r in z[("_mta-sts.example.test.", "TXT")]]
    assert re.fullmatch(r"v=STSv1; id=[0-9a-f]{20}", sts) and sts.endswith(records.mta_sts_id(policy))
    assert ";     mx: mx2.test" in text and "https://mta-sts.example.test/.well-known/mta-sts.txt" in text
    assert [strings(r) for r in z[("_smtp._tls.example.test.", "TXT")]] == ["v=TLSRPTv1; rua=mailto:dmarc@example.test"]
    # TLSA for this server's name, its key's SPKI digest as openssl computes it
    (tlsa,) = z[("_25._tcp.mx.test.", "TLSA")]
    assert tlsa == f"3 1 1 {openssl_spki_sha256(tmp_path / 'tls-cert.pem')}"
    assert not built.notes


def openssl_spki_sha256(cert: Path) -> str:
    pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"], capture_output=True, check=True)
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub.stdout, capture_output=True)
    digest = subprocess.run(["openssl", "dgst", "-sha256", "-r"], input=der.stdout, capture_output=True, check=True)
    return digest.stdout.decode().split()[0]


def test_spf_names_the_hostname_and_addresses_never_plus_all(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)  # hostname mx.test
    for mx, ips, want in (
        ([], [], "v=spf1 mx -all"),  # the hostname is the MX
        (["mail.example.test"], [], "v=spf1 mx a:mx.test -all"),  # this server sends but is not an MX
        ([], ["192.0.2.7", "2001:DB8:0::1"], "v=spf1 mx ip4:192.0.2.7 ip6:2001:db8::1 -all"),
    ):
        z = zone(records.render(records.build(cfg, "example.test", mx=mx, ips=ips)))
        (spf,) = [strings(r) for r in z[("example.test.", "TXT")]]
        assert spf == want
        assert "+all" not in spf and "?all" not in spf
    with pytest.raises(records.RecordsError, match="--ip: not an IP address: '192.0.2.300'"):
        records.build(cfg, "example.test", ips=["192.0.2.300"])


def test_defaults_report_to_postmaster_and_say_there_is_no_dkim_key(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    built = records.build(cfg, "example.test")
    z = zone(records.render(built))
    assert strings(z[("_dmarc.example.test.", "TXT")][0]) == "v=DMARC1; p=none; rua=mailto:postmaster@example.test"
    assert strings(z[("_smtp._tls.example.test.", "TXT")][0]) == "v=TLSRPTv1; rua=mailto:postmaster@example.test"
    assert not any(t == "TLSA" for _, t in z)  # no certificate configured
    assert not any("_domainkey" in n for n, _ in z)
    assert built.notes == [
        "no [[dkim.keys]] entry for example.test: its mail is not DKIM-signed (smtprs dkim keygen makes a key)"
    ]
    assert records.render(built).splitlines()[1].startswith("; NOTE: no [[dkim.keys]] entry")
    # mailto: given or not; --tlsrpt-rua apart from --rua
    z = zone(records.render(records.build(cfg, "example.test", rua="mailto:d@example.test", tlsrpt_rua="t@x.test")))
    assert strings(z[("_dmarc.example.test.", "TXT")][0]).endswith("rua=mailto:d@example.test")
    assert strings(z[("_smtp._tls.example.test.", "TXT")][0]) == "v=TLSRPTv1; rua=mailto:t@x.test"


def test_mta_sts_id_is_stable_and_follows_the_policy(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)

    def sts(**kw) -> tuple[str, str]:  # type: ignore[no-untyped-def]
        built = records.build(cfg, "example.test", **kw)
        return strings(zone(records.render(built))[("_mta-sts.example.test.", "TXT")][0]), built.mta_sts_policy

    a, pa = sts()
    assert sts() == (a, pa)  # the same configuration: the same id
    b, pb = sts(mta_sts_mode="enforce")
    c, pc = sts(mx=["mx.test", "*.mx.example.test"])
    assert len({a, b, c}) == 3
    assert "mode: enforce\r\n" in pb and "max_age: 604800\r\n" in pb
    assert "mx: *.mx.example.test\r\n" in pc
    with pytest.raises(records.RecordsError, match="--mta-sts-mode"):
        records.build(cfg, "example.test", mta_sts_mode="strict")


@pytest.mark.parametrize(
    ("domain", "kw", "message"),
    [
        ("example.org", {}, "example.org is not one of this configuration's domains"),
        ("exa mple.test", {}, "--domain: not a domain name"),
        ("bü_cher.test", {}, "--domain: .*not a valid internationalized domain name"),
        ("example.test", {"rua": "nobody"}, "--rua: not a mail address: 'nobody'"),
        ("example.test", {"tlsrpt_rua": "a@b.test,c@d.test"}, "--tlsrpt-rua: not a mail address"),
        ("example.test", {"mx": ["bad host"]}, "--mx: not a domain name"),
    ],
)
def test_bad_input_is_a_records_error(tmp_path: Path, domain: str, kw, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(records.RecordsError, match=message):
        records.build(make_config(tmp_path), domain, **kw)


def test_a_subdomain_of_the_hostname_domain_and_unicode_domains(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, hostname="mail.bücher.test", local={"domains": ["bücher.test"]})
    z = zone(records.render(records.build(cfg, "BÜCHER.test")))
    assert ("xn--bcher-kva.test.", "MX") in z and z[("xn--bcher-kva.test.", "MX")] == ["10 mail.xn--bcher-kva.test."]
    assert ("_dmarc.xn--bcher-kva.test.", "TXT") in z
    cfg = make_config(tmp_path, hostname="mx1.corp.test")
    records.build(cfg, "corp.test")  # the hostname's domain is ours


def test_missing_key_or_certificate_is_a_records_error(tmp_path: Path) -> None:
    cfg = example_config(tmp_path)
    (tmp_path / "tls-cert.pem").write_text("not a certificate\n")
    with pytest.raises(records.RecordsError, match="smtpd.tls.cert_file: .* is not a PEM certificate"):
        records.build(cfg, "example.test")
    (tmp_path / "tls-cert.pem").unlink()
    with pytest.raises(records.RecordsError, match="smtpd.tls.cert_file: cannot read"):
        records.build(cfg, "example.test")
    (tmp_path / "rsa2026.pem").unlink()  # gone after the configuration was loaded
    with pytest.raises(records.RecordsError, match=r"dkim.keys\[0\].key_file: cannot read"):
        records.build(cfg, "example.test")


def test_cli_exit_codes_and_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(f'hostname = "mx.test"\ndata_dir = "{tmp_path}"\n[local]\ndomains = ["example.test"]\n')
    assert cli.main(["dns-records", "-d", "example.test", "-c", str(conf), "--mx", "mx.test"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("; DNS records to publish for example.test (smtprs dns-records)\n")
    assert cli.main(["dns-records", "-d", "nope.test", "-c", str(conf)]) == 2
    assert "smtprs dns-records: nope.test is not one of" in capsys.readouterr().err
    conf.write_text(
        conf.read_text() + '[[dkim.keys]]\ndomain = "example.test"\nselector = "s"\nkey_file = "gone.pem"\n'
    )
    assert cli.main(["dns-records", "-d", "example.test", "-c", str(conf)]) == 2
    assert "configuration error: dkim.keys[0].key_file: cannot read" in capsys.readouterr().err


@pytest.mark.parametrize("selector", ["rsa2026", "ed2026"])
def test_printed_dkim_record_verifies_a_message_smtprs_signed(tmp_path: Path, selector: str) -> None:
    """The TXT record as printed, fed to dkimpy's verifier, checks the signature
    smtprs's signer made with that key (both fields of a dual signature)."""
    cfg = example_config(tmp_path)
    z = zone(records.render(records.build(cfg, "example.test")))
    published = {name.encode(): strings(r[0]).encode() for (name, t), r in z.items() if "_domainkey" in name}
    signer = Signer(cfg)
    message = b"From: Alice <alice@example.test>\r\nTo: bob@elsewhere.test\r\nSubject: records\r\n\r\nHello.\r\n"
    ms = signer.start()
    ms.feed(message)
    field, detail = trio.run(ms.signature)
    assert field is not None and detail.count("d=example.test") == 2
    signed = field + message
    idx = 0 if selector == "rsa2026" else 1
    d = dkim.DKIM(signed)
    assert d.verify(idx=idx, dnsfunc=lambda name, timeout=5: published.get(name))
    assert d.signature_fields[b"s"] == selector.encode()
    # and the record of the other key does not verify it
    swap = {b"rsa2026._domainkey.example.test.": b"ed2026._domainkey.example.test."}
    swap.update({v: k for k, v in swap.items()})
    try:
        ok = dkim.DKIM(signed).verify(idx=idx, dnsfunc=lambda name, timeout=5: published.get(swap.get(name, name)))
    except Exception:  # dkimpy (or PyNaCl under it) raises for a signature of the wrong kind
        ok = False
    assert not ok


# -- docs/deployment.md's example ---------------------------------------------------
DOC = ROOT / "docs" / "deployment.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.M | re.S)


def doc_blocks() -> dict[str, str]:
    found = {m.group(1).strip(): m.group(2) for m in FENCE.finditer(DOC.read_text())}
    return {k: v for k, v in found.items() if k.endswith("dns-records")}


def test_the_deployment_doc_shows_what_the_command_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The doc's example configuration (data_dir pointed at a copy of
    tests/data/dns-records/, the example keys and certificate), its command,
    and its output, which must be exactly what the command prints."""
    blocks = doc_blocks()
    assert set(blocks) == {"toml dns-records", "sh dns-records", "text dns-records"}, set(blocks)
    data = tmp_path / "data"
    data.mkdir()
    for f in DATA.iterdir():
        shutil.copy(f, data / f.name)
    conf_text, n = re.subn(r'^data_dir = ".*"$', f'data_dir = "{data}"', blocks["toml dns-records"], flags=re.M)
    assert n == 1
    conf = tmp_path / "smtprs.toml"
    conf.write_text(conf_text)
    (command,) = [line for line in blocks["sh dns-records"].splitlines() if line.startswith("smtprs dns-records")]
    argv = command.split()[1:]
    i = argv.index("-c")
    argv[i + 1] = str(conf)
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == blocks["text dns-records"], "docs/deployment.md's dns-records example is stale"
