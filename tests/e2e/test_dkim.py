"""DKIM signing end to end: a real ``smtprs serve`` whose keys were made by
``smtprs dkim keygen``; messages submitted with smtplib by an authenticated
user (a submission listener) and from a trusted network are relayed to
Postfix's smtp-sink, and the copies it received are verified by independent
verifiers: dkimpy with the printed TXT record, dkimpy through dnspython
against dnsmasq serving that record, and OpenDKIM's opendkim-testmsg (in a
network namespace of its own whose resolver is a dnsmasq on port 53)."""

from __future__ import annotations

import os
import shutil
import smtplib
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest

from .harness import DOMAIN, Server, merge, smtprs_command
from .peers import Dnsmasq, SinkDump, SmtpSink

pytestmark = pytest.mark.e2e

USER = f"alice@{DOMAIN}"
PASSWORD = "dkim test password 7"
KEYS = {"rsa-sha256": "rsa1", "ed25519-sha256": "ed1"}  # algorithm -> selector


def run(*args: str, cwd: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*smtprs_command(), *args], capture_output=True, text=True, timeout=60, cwd=cwd, input=input)


def record_strings(line: str) -> list[str]:
    """The character-strings of a printed ``NAME IN TXT "..." "..."`` line."""
    _, rest = line.split(" IN TXT ", 1)
    return [s for i, s in enumerate(rest.split('"')) if i % 2 == 1]


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One key per algorithm, made by ``smtprs dkim keygen`` (a users file too)."""
    base = tmp_path_factory.mktemp("dkim")
    out: dict[str, Any] = {"base": base, "records": {}, "files": {}}
    for algorithm, selector in KEYS.items():
        path = base / f"{selector}.pem"
        p = run(
            "dkim",
            "keygen",
            "--domain",
            DOMAIN,
            "--selector",
            selector,
            "--algorithm",
            algorithm,
            "--out",
            str(path),
            cwd=base,
        )
        assert p.returncode == 0, p.stderr
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        line = p.stdout.strip()
        assert line.startswith(f"{selector}._domainkey.{DOMAIN}. IN TXT ")
        strings = record_strings(line)
        assert all(len(s.encode()) <= 255 for s in strings)
        out["records"][f"{selector}._domainkey.{DOMAIN}."] = strings
        out["files"][algorithm] = path
    p = run("passwd", "add", USER, "--stdin", "--file", "users", cwd=base, input=PASSWORD + "\n")
    assert p.returncode == 0, p.stderr
    out["users"] = base / "users"
    return out


def txt_dnsfunc(keyset: dict[str, Any]) -> Callable[..., bytes | None]:
    records = {name.encode(): "".join(strings).encode() for name, strings in keyset["records"].items()}
    return lambda name, timeout=5: records.get(name)


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path / "sink").start()
    try:
        yield s
    finally:
        s.stop()


def server_config(keyset: dict[str, Any], algorithm: str, sink: SmtpSink, **more: Any) -> dict[str, Any]:
    cfg = {
        "smtpd": {"auth": {"users_file": str(keyset["users"]), "allow_plaintext": True, "failure_delay": 0.1}},
        "relay": {"transport": {"elsewhere.test": f"[127.0.0.1]:{sink.port}"}},
        "dkim": {
            "keys": [
                {
                    "domain": DOMAIN,
                    "selector": KEYS[algorithm],
                    "key_file": str(keyset["files"][algorithm]),
                    "algorithm": algorithm,
                }
            ]
        },
    }
    return merge(cfg, more)


def message(size: int, subject: str) -> bytes:
    head = (
        f"From: Alice <{USER}>\r\nTo: Friend <friend@elsewhere.test>\r\nSubject: {subject}\r\n"
        "Date: Mon, 07 Dec 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
    ).encode()
    lines = []
    n = 0
    i = 0
    while n < size:
        line = b"line %06d: the quick brown fox  jumps over\tthe lazy dog   \r\n" % i
        lines.append(line)
        n += len(line)
        i += 1
    return head + b"\r\n" + b"".join(lines)


def delivered(srv: Server, sink: SmtpSink, n: int) -> list[bytes]:
    """What smtp-sink received, CRLF line ends again (its dumps have LF); once
    ``srv`` has logged n deliveries (a dump is complete once its 250 was sent)."""
    srv.wait_log(lambda line: "status=sent" in line and srv.log().count("status=sent") >= n)
    return [SinkDump.read(p).message.replace(b"\n", b"\r\n") for p in sink.wait_dumps(n)]


def submit(srv: Server, msgs: list[bytes]) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=30) as s:
        s.login(USER, PASSWORD)
        for m in msgs:
            s.sendmail(USER, ["friend@elsewhere.test"], m)


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_submitted_mail_is_signed_and_verifies(
    make_server: Callable[..., Server], keyset: dict[str, Any], sink: SmtpSink, tmp_path: Path, algorithm: str
) -> None:
    srv = make_server(server_config(keyset, algorithm, sink), modes=("submission",))
    small, large = message(1024, "small"), message(300 * 1024, "large")
    submit(srv, [small, large])
    got = sorted(delivered(srv, sink, 2), key=len)
    for copy, original in zip(got, (small, large)):
        assert copy.startswith(b"DKIM-Signature: ")
        assert copy.endswith(original)
        assert dkim.verify(copy, dnsfunc=txt_dnsfunc(keyset)), copy[:600]
        d = dkim.DKIM(copy)
        assert d.verify(dnsfunc=txt_dnsfunc(keyset))
        assert d.signature_fields[b"a"] == algorithm.encode() and d.signature_fields[b"c"] == b"relaxed/relaxed"
        assert [h.lower() for h in d.include_headers].count(b"from") == 2
    srv.wait_log(rf"DKIM-Signature field added \(d={DOMAIN} s={KEYS[algorithm]} a={algorithm}\)")
    verify_with_dnsmasq(tmp_path, keyset, got)
    verify_with_opendkim(tmp_path, keyset, got)
    # and it does check: a changed body fails
    verify_with_opendkim(tmp_path, keyset, [got[0].replace(b"lazy dog", b"lazy cat", 1)], good=False)


def test_trusted_network_is_signed_mx_without_auth_is_not(
    make_server: Callable[..., Server], keyset: dict[str, Any], sink: SmtpSink
) -> None:
    algorithm = "ed25519-sha256"
    plain = make_server(server_config(keyset, algorithm, sink), name="untrusted")
    trusted = make_server(
        server_config(keyset, algorithm, sink, relay={"trusted_networks": ["127.0.0.0/8"]}), name="trusted"
    )
    # mail to a local user on the mx listener, no AUTH, not trusted: not signed
    with smtplib.SMTP("127.0.0.1", plain.port, timeout=30) as s:
        s.sendmail(USER, [f"bob@{DOMAIN}"], message(1024, "inbound"))
    (path,) = plain.wait_mail("bob", 1)
    assert b"DKIM-Signature" not in path.read_bytes()
    # the same from a trusted network, relayed out: signed
    with smtplib.SMTP("127.0.0.1", trusted.port, timeout=30) as s:
        s.sendmail(USER, ["friend@elsewhere.test"], message(1024, "trusted"))
    (copy,) = delivered(trusted, sink, 1)
    assert dkim.verify(copy, dnsfunc=txt_dnsfunc(keyset))
    # a From: domain without a key is accepted, unsigned
    with smtplib.SMTP("127.0.0.1", trusted.port, timeout=30) as s:
        s.sendmail(USER, ["friend@elsewhere.test"], message(512, "other").replace(USER.encode(), b"alice@other.test"))
    copies = delivered(trusted, sink, 2)
    assert sum(b"DKIM-Signature" in c for c in copies) == 1
    trusted.wait_log("not DKIM-signed: no key for other.test")


def test_mail_sendmail_left_in_the_pickup_directory_is_signed(
    make_server: Callable[..., Server], keyset: dict[str, Any], sink: SmtpSink
) -> None:
    """Mail a cron job or a web application hands to ``sendmail`` while the
    server is down waits in the pickup directory; taken in at start, it is
    signed as SMTP mail from a trusted network is, and verifies."""
    algorithm = "rsa-sha256"
    srv = make_server(server_config(keyset, algorithm, sink), start=False)
    env = dict(os.environ, SMTPRS_CONFIG=str(srv.config_path))
    original = message(2048, "from cron")
    for m in (original, original.replace(USER.encode(), b"alice@other.test")):
        p = subprocess.run(
            [sys.executable, "-m", "smtprs.sendmail", "-i", "-f", USER, "friend@elsewhere.test"],
            input=m.replace(b"\r\n", b"\n"),
            capture_output=True,
            env=env,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
    assert len(list((srv.data_dir / "pickup").iterdir())) == 2  # (no server: both went into the pickup directory)
    srv.start()
    copies = delivered(srv, sink, 2)
    signed = [c for c in copies if c.startswith(b"DKIM-Signature: ")]
    assert len(signed) == 1 and b"\r\nSubject: from cron\r\n" in signed[0], copies
    assert signed[0].endswith(original.partition(b"\r\n\r\n")[2])  # (sendmail adds a Message-ID: field)
    assert dkim.verify(signed[0], dnsfunc=txt_dnsfunc(keyset))
    assert not dkim.verify(signed[0].replace(b"lazy dog", b"lazy cat", 1), dnsfunc=txt_dnsfunc(keyset))
    srv.wait_log(rf"DKIM-Signature field added \(d={DOMAIN} s={KEYS[algorithm]} a={algorithm}\)")
    srv.wait_log("not DKIM-signed: no key for other.test")


def test_bad_key_file_stops_the_server_with_a_config_error(keyset: dict[str, Any], tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN RSA PRIVATE KEY-----\nnot base64\n-----END RSA PRIVATE KEY-----\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "s1"\nkey_file = "{bad}"\n')
    p = run("check-config", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2 and "configuration error: dkim.keys[0].key_file:" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    cfg.write_text(
        f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "s1"\nkey_file = "{keyset["files"]["rsa-sha256"]}"\nalgorithm = "rsa-sha1"\n'
    )
    p = run("check-config", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2 and "dkim.keys[0].algorithm: expected one of" in p.stderr, p.stderr


# -- independent verifiers over real DNS ------------------------------------------
def _txt_options(keyset: dict[str, Any]) -> list[str]:
    # dnsmasq's --txt-record takes the strings of one record, comma-separated
    return [f"--txt-record={name.rstrip('.')}," + ",".join(strings) for name, strings in keyset["records"].items()]


def verify_with_dnsmasq(tmp_path: Path, keyset: dict[str, Any], copies: list[bytes]) -> None:
    """dkimpy's verifier, its key looked up with dnspython in dnsmasq."""
    if not (shutil.which("dnsmasq") or os.path.exists("/usr/sbin/dnsmasq")):
        pytest.skip("dnsmasq is not installed (make test installs dnsmasq-base)")
    server = Dnsmasq(tmp_path / "dns", _txt_options(keyset)).start()
    try:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = server.port

        def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
            answer = resolver.resolve(name.decode(), "TXT", lifetime=timeout)
            return b"".join(b"".join(r.strings) for r in answer)

        for copy in copies:
            assert dkim.verify(copy, dnsfunc=dnsfunc)
        assert sum(server.queries(n.rstrip(".")) for n in keyset["records"]) >= len(copies)
    finally:
        server.stop()


OPENDKIM_SCRIPT = """set -e
ip link set lo up
printf 'nameserver 127.0.0.1\\noptions attempts:1 timeout:2\\n' > "$DIR/resolv.conf"
mount --bind "$DIR/resolv.conf" /etc/resolv.conf
"$DNSMASQ" --port=53 --listen-address=127.0.0.1 --bind-interfaces --no-resolv --no-hosts --conf-file=/dev/null \\
    --pid-file="$DIR/dnsmasq.pid" --user=root --local=/test/ "$@"
trap 'kill $(cat "$DIR/dnsmasq.pid")' EXIT
for f in "$DIR"/msg.*; do
    opendkim-testmsg < "$f" || { echo "opendkim-testmsg failed on $f" >&2; exit 1; }
done
"""


def verify_with_opendkim(tmp_path: Path, keyset: dict[str, Any], copies: list[bytes], good: bool = True) -> None:
    """OpenDKIM's verifier (opendkim-testmsg exits 0 only for a good signature).
    It asks the system resolver, so it runs in namespaces of its own (unshare:
    a network with only loopback, /etc/resolv.conf bound over) with dnsmasq on
    127.0.0.1:53 there."""
    testmsg = shutil.which("opendkim-testmsg") or (
        "/usr/sbin/opendkim-testmsg" if os.path.exists("/usr/sbin/opendkim-testmsg") else None
    )
    if testmsg is None:
        pytest.skip("opendkim-testmsg is not installed (Debian's opendkim-tools; make test installs it)")
    dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
    work = tmp_path / ("opendkim" if good else "opendkim-bad")
    work.mkdir()
    for i, copy in enumerate(copies):
        (work / f"msg.{i}").write_bytes(copy)
    (work / "run.sh").write_text(OPENDKIM_SCRIPT)
    env = {
        **os.environ,
        "DIR": str(work),
        "DNSMASQ": dnsmasq,
        "PATH": f"{os.path.dirname(testmsg)}:/usr/sbin:/sbin:{os.environ.get('PATH', '')}",
    }
    if not (shutil.which("ip") or os.path.exists("/usr/sbin/ip") or os.path.exists("/sbin/ip")):
        pytest.skip("ip (iproute2) is not installed: needed to bring up loopback for opendkim-testmsg's resolver")
    probe = subprocess.run(["unshare", "-mn", "true"], capture_output=True, timeout=10)
    if probe.returncode != 0:
        pytest.skip(
            f"cannot make namespaces for opendkim-testmsg's resolver (unshare -mn: {probe.stderr.decode().strip()})"
        )
    p = subprocess.run(
        ["unshare", "-mn", "bash", str(work / "run.sh"), *_txt_options(keyset)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    if good:
        assert p.returncode == 0, f"opendkim-testmsg: {p.stdout}\n{p.stderr}"
    else:
        assert p.returncode != 0 and "opendkim-testmsg failed" in p.stderr, f"a bad copy passed: {p.stdout}\n{p.stderr}"


# -- dual signatures and IDNA (issue 14 part 1's leftovers) -------------------------
def only_field(copy: bytes, keep: int) -> bytes:
    """``copy`` with only its ``keep``-th DKIM-Signature field (the others are not
    signed by it: DKIM-Signature is never in h=), for a verifier that checks one."""
    head, sep, body = copy.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    sigs = [i for i, f in enumerate(fields) if f.lower().startswith(b"dkim-signature:")]
    drop = {i for n, i in enumerate(sigs) if n != keep}
    return b"\r\n".join(f for i, f in enumerate(fields) if i not in drop) + sep + body


def test_rsa_and_ed25519_keys_of_one_domain_give_two_signatures(
    make_server: Callable[..., Server], keyset: dict[str, Any], sink: SmtpSink, tmp_path: Path
) -> None:
    cfg = server_config(keyset, "rsa-sha256", sink)
    cfg["dkim"]["keys"].append(
        {
            "domain": DOMAIN,
            "selector": KEYS["ed25519-sha256"],
            "key_file": str(keyset["files"]["ed25519-sha256"]),
            "algorithm": "ed25519-sha256",
        }
    )
    srv = make_server(cfg, modes=("submission",))
    # in memory, and spilled to its own file (the fields are prepended by a copy)
    original, large = message(2048, "dual"), message(300 * 1024, "dual large")
    submit(srv, [original, large])
    copy, copy_large = sorted(delivered(srv, sink, 2), key=len)
    for got, sent in ((copy, original), (copy_large, large)):
        assert got.endswith(sent) and got.count(b"DKIM-Signature: ") == 2
        algorithms = []
        for idx in (0, 1):
            d = dkim.DKIM(got)
            assert d.verify(idx=idx, dnsfunc=txt_dnsfunc(keyset)), idx
            algorithms.append(d.signature_fields[b"a"])
        assert algorithms == [b"rsa-sha256", b"ed25519-sha256"]  # in the order of [[dkim.keys]]
    srv.wait_log(rf"DKIM-Signature field added \(d={DOMAIN} s=rsa1 a=rsa-sha256, d={DOMAIN} s=ed1 a=ed25519-sha256\)")
    singles = [only_field(copy, 0), only_field(copy, 1)]
    assert all(s.count(b"DKIM-Signature: ") == 1 for s in singles)
    verify_with_dnsmasq(tmp_path, keyset, singles)
    verify_with_opendkim(tmp_path, keyset, singles)
    verify_with_opendkim(tmp_path, keyset, [s.replace(b"lazy dog", b"lazy cat", 1) for s in singles[1:]], good=False)


IDN = "bücher.example"
IDN_A = "xn--bcher-kva.example"


def test_unicode_from_domain_is_signed_with_its_a_label(
    make_server: Callable[..., Server], keyset: dict[str, Any], tmp_path: Path
) -> None:
    """A key configured for the Unicode domain; a message whose From: is in
    that domain (UTF-8 header, SMTPUTF8) from a trusted network is signed
    with d= the A-label, and verifies with the key published under the A-label."""
    key = {"domain": IDN, "selector": "ed1", "key_file": str(keyset["files"]["ed25519-sha256"])}
    key["algorithm"] = "ed25519-sha256"
    srv = make_server({"relay": {"trusted_networks": ["127.0.0.0/8"]}, "dkim": {"keys": [key]}})
    msg = message(1024, "idn").replace(f"From: Alice <{USER}>".encode(), f"From: Jörg <jörg@{IDN}>".encode())
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as s:
        s.ehlo()
        assert s.has_extn("smtputf8")
        s.sendmail(f"jörg@{IDN}", [f"bob@{DOMAIN}"], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"])
    (path,) = srv.wait_mail("bob", 1)
    got = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    start = got.index(b"DKIM-Signature: ")
    signed = got[start:]
    assert f"d={IDN_A};".encode() in signed[:600]
    ed_strings = keyset["records"][f"ed1._domainkey.{DOMAIN}."]
    idn_keyset = {"records": {f"ed1._domainkey.{IDN_A}.": ed_strings}}
    d = dkim.DKIM(signed)
    assert d.verify(dnsfunc=txt_dnsfunc(idn_keyset))
    assert d.signature_fields[b"d"] == IDN_A.encode()
    srv.wait_log(rf"DKIM-Signature field added \(d={IDN_A} s=ed1 a=ed25519-sha256\)")
    verify_with_opendkim(tmp_path, idn_keyset, [signed])
