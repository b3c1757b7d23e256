"""MTA-STS (RFC 8461) and TLS-RPT data (RFC 8460) end to end.

Real peers, all on loopback: dnsmasq serves the MX, A and ``_mta-sts`` TXT
records of domains under ``sts.test``; an HTTPS server (http.server with ssl,
in a thread) serves each domain's policy at
``https://mta-sts.DOMAIN:PORT/.well-known/mta-sts.txt`` (``mta_sts.https_port``
points smtprs at it) with a certificate from a test CA; the MX hosts are two
aiosmtpd peers on the same port: one on 127.0.0.1 offering STARTTLS (its
certificate chosen by SNI: one the test CA signed for the MX name, or one for
another name), one on 127.0.0.2 without STARTTLS.  smtprs trusts the test CA
through relay.tls_ca_file, for the policy fetch and the MX sessions alike.
"""

from __future__ import annotations

import datetime
import http.server
import json
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import peers as peers_mod
from .harness import DOMAIN, Server, merge, submit
from .peers import Dnsmasq, ScriptedPeer, free_port, wait_until

pytestmark = pytest.mark.e2e

SENDER = f"sender@{DOMAIN}"


# -- certificates: a test CA and leaves it signs ---------------------------------


@dataclass
class Ca:
    directory: Path
    key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    cert: x509.Certificate | None = None

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "smtprs test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    @property
    def path(self) -> Path:
        return self.directory / "ca.pem"

    def leaf(self, label: str, names: list[str], *, self_signed: bool = False) -> tuple[Path, Path]:
        assert self.cert is not None
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key if self_signed else self.key, hashes.SHA256())
        )
        crt, pem = self.directory / f"{label}.crt", self.directory / f"{label}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pem.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return crt, pem


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    return ctx


def by_sni(default: ssl.SSLContext, others: dict[str, ssl.SSLContext]) -> ssl.SSLContext:
    """``default``, switched to ``others[name]`` when the client asks for that name (SNI)."""

    def pick(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name in others:
            sock.context = others[name]

    default.sni_callback = pick  # type: ignore[assignment]
    return default


# -- the HTTPS policy server ------------------------------------------------------


@dataclass
class Answer:
    body: bytes
    status: int = 200
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the reply


class PolicyServer:
    """Serves ``answers[host]`` for GET /.well-known/mta-sts.txt; counts requests by Host."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.answers: dict[str, Answer] = {}
        self.requests: dict[str, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                host = (self.headers.get("Host") or "").split(":")[0]
                outer.requests[host] = outer.requests.get(host, 0) + 1
                answer = outer.answers.get(host)
                if answer is None or self.path != "/.well-known/mta-sts.txt":
                    answer = Answer(b"not found\n", 404)
                time.sleep(answer.delay)
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for k, v in answer.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self) -> PolicyServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def policy(mode: str, *mx: str, max_age: int = 86400) -> Answer:
    lines = ["version: STSv1", f"mode: {mode}", *[f"mx: {m}" for m in mx], f"max_age: {max_age}"]
    return Answer(("\r\n".join(lines) + "\r\n").encode())


# -- an SMTP peer on any loopback address -------------------------------------------


class PeerAt(ScriptedPeer):
    """A ScriptedPeer listening on ``ip`` (ScriptedPeer itself listens on 127.0.0.1)."""

    def __init__(self, ip: str, port: int, ctx: ssl.SSLContext | None = None) -> None:
        super().__init__(port=port, hostname=f"peer-{ip}.test")
        if ctx is not None:
            self._kwargs["tls_context"] = ctx
        self.ip = ip

    def start(self) -> PeerAt:
        from aiosmtpd.controller import Controller

        self.controller = Controller(
            peers_mod._Handler(self), hostname=self.ip, port=self.port, ready_timeout=10, **self._kwargs
        )
        self.controller.start()
        peers_mod._LIVE.add(self)
        return self


# -- the world every test shares -------------------------------------------------


# (domain, MX host and its address, the policy served, the TXT id)
TLS_IP, PLAIN_IP = "127.0.0.1", "127.0.0.2"
DOMAINS: dict[str, tuple[str, str, Answer | None, str]] = {
    "good.sts.test": ("mx.good.sts.test", TLS_IP, policy("enforce", "*.good.sts.test"), "1"),
    "notls.sts.test": ("mx.notls.sts.test", PLAIN_IP, policy("enforce", "mx.notls.sts.test"), "1"),
    "nomatch.sts.test": ("mx.nomatch.sts.test", TLS_IP, policy("enforce", "mx.elsewhere.sts.test"), "1"),
    "testing.sts.test": ("mx.testing.sts.test", TLS_IP, policy("testing", "mx.testing.sts.test"), "1"),
    "cache.sts.test": ("mx.cache.sts.test", PLAIN_IP, policy("enforce", "mx.cache.sts.test"), "1"),
    "none.sts.test": ("mx.none.sts.test", TLS_IP, None, ""),  # no TXT record: no policy
    # discovery failures: each delivered as without a policy (to the peer without TLS)
    "missing.sts.test": ("mx.missing.sts.test", PLAIN_IP, None, "1"),  # TXT, but the server answers 404
    "garbage.sts.test": ("mx.garbage.sts.test", PLAIN_IP, Answer(b"<html>hello</html>\n"), "1"),
    "big.sts.test": (
        "mx.big.sts.test",
        PLAIN_IP,
        Answer(policy("enforce", "mx.big.sts.test").body + b"x: " + b"y" * 70000 + b"\r\n"),
        "1",
    ),
    "html.sts.test": (
        "mx.html.sts.test",
        PLAIN_IP,
        Answer(policy("enforce", "mx.html.sts.test").body, content_type="text/html"),
        "1",
    ),
    "redirect.sts.test": (
        "mx.redirect.sts.test",
        PLAIN_IP,
        Answer(b"", 301, headers={"Location": "https://mta-sts.good.sts.test/.well-known/mta-sts.txt"}),
        "1",
    ),
    "webpki.sts.test": ("mx.webpki.sts.test", PLAIN_IP, policy("enforce", "mx.webpki.sts.test"), "1"),
    "hugehead.sts.test": (
        "mx.hugehead.sts.test",
        PLAIN_IP,
        Answer(policy("enforce", "mx.hugehead.sts.test").body, headers={"X-Junk": "j" * 100000}),
        "1",
    ),
    "slow.sts.test": (
        "mx.slow.sts.test",
        PLAIN_IP,
        Answer(policy("enforce", "mx.slow.sts.test").body, delay=6.0),
        "1",
    ),
    # a policy that lives one second
    "short.sts.test": ("mx.short.sts.test", PLAIN_IP, policy("enforce", "mx.short.sts.test", max_age=1), "1"),
    # the TXT lookup times out (dnsmasq forwards it to an upstream that never answers); MX and A work
    "servfail.sts.test": ("mx.servfail.sts.test", PLAIN_IP, policy("enforce", "mx.servfail.sts.test"), ""),
}
EXTRA_RECORDS = ["--server=/_mta-sts.servfail.sts.test/127.0.0.1#9"]


def records(domains: dict[str, tuple[str, str, Answer | None, str]]) -> list[str]:
    out = []
    for domain, (mx, ip, _, sts_id) in domains.items():
        out += [f"--mx-host={domain},{mx},10", f"--host-record={mx},{ip}", f"--host-record=mta-sts.{domain},127.0.0.1"]
        if sts_id:
            out.append(f"--txt-record=_mta-sts.{domain},v=STSv1; id={sts_id}")
    return out


@dataclass
class World:
    ca: Ca
    dns: Dnsmasq
    https: PolicyServer
    tls_peer: PeerAt
    plain_peer: PeerAt
    port: int

    def overrides(self, dns: Dnsmasq | None = None, **extra: Any) -> dict[str, Any]:
        base = {
            "dns": (dns or self.dns).config(),
            "relay": {
                "smtp_port": self.port,
                "trusted_networks": ["127.0.0.0/8"],
                "tls_ca_file": str(self.ca.path),
                "connect_timeout": 2.0,
                "command_timeout": 10.0,
                "idle_timeout": 0,
            },
            "mta_sts": {"https_port": self.https.port, "fetch_timeout": 3.0},
            "queue": {"retry_min": 0.3, "retry_max": 1.0},
            "metrics": {"enabled": True, "address": f"127.0.0.1:{free_port()}"},
        }
        return merge(base, extra)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("mtasts")
    ca = Ca(base / "certs")
    # the policy host's certificate names every mta-sts.DOMAIN but one, which gets a self-signed one
    https_ctx = by_sni(
        server_context(ca.leaf("mta-sts", [f"mta-sts.{d}" for d in DOMAINS] + ["mta-sts.rot.sts.test"])),
        {
            "mta-sts.webpki.sts.test": server_context(
                ca.leaf("untrusted", ["mta-sts.webpki.sts.test"], self_signed=True)
            )
        },
    )
    https = PolicyServer(https_ctx).start()
    for domain, (_, _, answer, _) in DOMAINS.items():
        if answer is not None:
            https.answers[f"mta-sts.{domain}"] = answer
    mx_names = [mx for mx, ip, _, _ in DOMAINS.values() if ip == TLS_IP and mx != "mx.testing.sts.test"]
    mx_ctx = by_sni(
        server_context(ca.leaf("mx", [*mx_names, "mx.rot.sts.test"])),
        {"mx.testing.sts.test": server_context(ca.leaf("wrong-name", ["somebody-else.sts.test"]))},
    )
    port = free_port()
    tls_peer = PeerAt(TLS_IP, port, mx_ctx).start()
    plain_peer = PeerAt(PLAIN_IP, port).start()
    dns = Dnsmasq(base / "dns", records(DOMAINS) + EXTRA_RECORDS).start()
    yield World(ca, dns, https, tls_peer, plain_peer, port)
    for p in (tls_peer, plain_peer, dns):
        p.stop()
    https.stop()


@pytest.fixture(autouse=True)
def _clean_peers(world: World) -> None:
    for p in (world.tls_peer, world.plain_peer):
        with p.lock:
            p.received.clear()


# -- helpers ---------------------------------------------------------------------


def send(server: Server, rcpt: str, subject: str = "hello") -> str:
    msg = (
        f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\nDate: Mon, 07 Dec 2026 08:00:00 +0000\r\n"
        f"Message-ID: <{time.monotonic_ns()}@client.test>\r\n\r\nbody\r\n"
    ).encode()
    return submit(server.port, SENDER, rcpt, msg)


def metrics(server: Server) -> str:
    address = server.config()["metrics"]["address"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as r:
        return str(r.read().decode())


def tls_rpt(text: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("smtprs_tls_rpt_sessions_total{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def queue_list(server: Server) -> list[dict[str, Any]]:
    p = subprocess.run(
        [sys.executable, "-m", "smtprs", "queue", "list", "--json", "--config", str(server.config_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 0, p.stderr
    entries: list[dict[str, Any]] = json.loads(p.stdout)
    return entries


def received_by(peer: PeerAt, rcpt: str) -> list[peers_mod.Received]:
    return [r for r in list(peer.received) if rcpt in r.rcpts]


# -- the tests -------------------------------------------------------------------


def test_enforce_with_a_valid_certificate_delivers_over_verified_tls(
    world: World, make_server: Callable[..., Server]
) -> None:
    server = make_server(world.overrides())
    qid = send(server, "a@good.sts.test")
    server.wait_log(rf"{qid}: to=<a@good.sts.test>, .*status=sent")
    (got,) = wait_until(lambda: received_by(world.tls_peer, "a@good.sts.test"), 10, "the message at the peer")
    assert got.tls
    log = server.log()
    assert "mta-sts: policy of good.sts.test fetched: id=1 mode=enforce max_age=86400 mx=*.good.sts.test" in log
    assert "Verified TLS connection established to mx.good.sts.test[127.0.0.1]" in log
    m = metrics(server)
    assert tls_rpt(m, policy_type="sts", result="success") == 1
    assert tls_rpt(m, result="failure") == 0
    # a domain without a policy: counted as no-policy-found (the peer offers TLS: success)
    qid = send(server, "b@none.sts.test")
    server.wait_log(rf"{qid}: to=<b@none.sts.test>, .*status=sent")
    assert tls_rpt(metrics(server), policy_type="no-policy-found", result="success") == 1


def test_enforce_peer_without_starttls_defers_and_never_sends_in_clear(
    world: World, make_server: Callable[..., Server]
) -> None:
    server = make_server(world.overrides())
    qid = send(server, "a@notls.sts.test")
    line = server.wait_log(rf"{qid}: to=<a@notls.sts.test>, .*status=deferred")
    assert "TLS is required, but was not offered by host mx.notls.sts.test" in line
    assert "MTA-STS policy of notls.sts.test: enforce" in line
    server.wait_log(
        r"tls-rpt: policy-type=sts policy-domain=notls.sts.test mx-host=mx.notls.sts.test result-type=starttls-not-supported"
    )
    (entry,) = queue_list(server)
    (r,) = entry["recipients"]
    assert r["state"] == "deferred" and "MTA-STS policy of notls.sts.test: enforce" in r["last_error"]
    # further retries (retry_min 0.3 s) defer again; nothing ever reaches the peer in clear
    wait_until(lambda: server.log().count(f"{qid}: to=<a@notls.sts.test>") >= 2, 20, "a second deferral")
    assert received_by(world.plain_peer, "a@notls.sts.test") == []
    m = metrics(server)
    assert tls_rpt(m, policy_type="sts", result="failure", failure="starttls-not-supported") >= 2
    assert tls_rpt(m, result="success") == 0


def test_enforce_mx_not_in_the_policy_defers(world: World, make_server: Callable[..., Server]) -> None:
    server = make_server(world.overrides())
    sessions = world.tls_peer.connections
    qid = send(server, "a@nomatch.sts.test")
    line = server.wait_log(rf"{qid}: to=<a@nomatch.sts.test>, .*status=deferred")
    assert "4.7.5" in line and "no MX host of nomatch.sts.test (mx.nomatch.sts.test) is listed" in line
    assert "result-type=validation-failure" in server.log()
    assert received_by(world.tls_peer, "a@nomatch.sts.test") == []
    assert world.tls_peer.connections == sessions  # never even connected


def test_testing_mode_with_a_bad_certificate_delivers_and_records_the_failure(
    world: World, make_server: Callable[..., Server]
) -> None:
    server = make_server(world.overrides())
    qid = send(server, "a@testing.sts.test")
    server.wait_log(rf"{qid}: to=<a@testing.sts.test>, .*status=sent")
    (got,) = wait_until(lambda: received_by(world.tls_peer, "a@testing.sts.test"), 10, "the message at the peer")
    assert got.tls  # delivered as before: opportunistic TLS, the certificate unchecked
    log = server.log()
    assert (
        "tls-rpt: policy-type=sts policy-domain=testing.sts.test mx-host=mx.testing.sts.test "
        "result-type=certificate-host-mismatch" in log
    )
    assert "Untrusted TLS connection established to mx.testing.sts.test" in log
    m = metrics(server)
    assert tls_rpt(m, policy_type="sts", result="failure", failure="certificate-host-mismatch") == 1


@pytest.mark.parametrize(
    ("domain", "result_type", "why"),
    [
        ("missing.sts.test", "sts-policy-fetch-error", "HTTP status 404"),
        ("garbage.sts.test", "sts-policy-invalid", "not a key: value line"),
        ("big.sts.test", "sts-policy-invalid", "over 65536"),
        ("html.sts.test", "sts-policy-invalid", "Content-Type text/html, not text/plain"),
        ("redirect.sts.test", "sts-policy-fetch-error", "HTTP status 301 (redirects are not followed"),
        ("webpki.sts.test", "sts-webpki-invalid", "certificate verify failed"),
        ("hugehead.sts.test", "sts-policy-fetch-error", "bad HTTP response"),
        ("slow.sts.test", "sts-policy-fetch-error", "timed out after 3s"),
    ],
)
def test_a_policy_that_cannot_be_had_means_delivery_as_before(
    world: World, make_server: Callable[..., Server], domain: str, result_type: str, why: str
) -> None:
    server = make_server(world.overrides())
    qid = send(server, f"a@{domain}")
    server.wait_log(rf"{qid}: to=<a@{domain}>, .*status=sent")
    (got,) = wait_until(lambda: received_by(world.plain_peer, f"a@{domain}"), 10, "the message at the peer")
    assert not got.tls
    line = server.wait_log(rf"mta-sts: policy of {re.escape(domain)} \(id=1\) not had")
    assert f"{result_type}: " in line and why in line and "no cached policy: delivering as without one" in line
    assert tls_rpt(metrics(server), policy_type="sts", result="failure", failure=result_type) == 1
    assert not (server.data_dir / "mta-sts" / f"{domain}.json").exists()


def test_the_cached_policy_survives_a_restart(world: World, make_server: Callable[..., Server]) -> None:
    server = make_server(world.overrides())
    qid = send(server, "a@cache.sts.test")
    server.wait_log(rf"{qid}: to=<a@cache.sts.test>, .*status=deferred")
    assert world.https.requests.get("mta-sts.cache.sts.test") == 1
    cached = server.data_dir / "mta-sts" / "cache.sts.test.json"
    assert json.loads(cached.read_text())["mx"] == ["mx.cache.sts.test"]
    server.stop()
    before = server.log().count("MTA-STS policy of cache.sts.test: enforce")
    # the policy server now has nothing: only the cache can still enforce
    saved = world.https.answers.pop("mta-sts.cache.sts.test")
    try:
        server.start()
        wait_until(
            lambda: server.log().count("MTA-STS policy of cache.sts.test: enforce") > before,
            20,
            "a deferral after the restart",
        )
        assert received_by(world.plain_peer, "a@cache.sts.test") == []
        assert world.https.requests.get("mta-sts.cache.sts.test") == 1  # the TXT id is the cached one's: no fetch
    finally:
        world.https.answers["mta-sts.cache.sts.test"] = saved


def test_a_new_policy_id_is_fetched(
    world: World, make_server: Callable[..., Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rot = {"rot.sts.test": ("mx.rot.sts.test", TLS_IP, None, "1")}
    dns = Dnsmasq(tmp_path / "dns1", records(rot)).start()
    world.https.answers["mta-sts.rot.sts.test"] = policy("enforce", "mx.old.sts.test")
    try:
        server = make_server(world.overrides(dns))
        qid = send(server, "a@rot.sts.test")
        server.wait_log(rf"{qid}: to=<a@rot.sts.test>, .*status=deferred.*is listed in its MTA-STS policy")
        # the domain publishes a new policy (id 2) that lists its MX: the next try fetches it and delivers
        world.https.answers["mta-sts.rot.sts.test"] = policy("enforce", "mx.rot.sts.test")
        port = dns.port
        dns.stop()
        monkeypatch.setattr(peers_mod, "free_port", lambda udp_too=False: port)  # the same port: smtprs asks it
        dns = Dnsmasq(tmp_path / "dns2", records({"rot.sts.test": ("mx.rot.sts.test", TLS_IP, None, "2")})).start()
        server.wait_log(rf"{qid}: to=<a@rot.sts.test>, .*status=sent")
        assert "mta-sts: policy of rot.sts.test fetched: id=2 mode=enforce" in server.log()
        assert world.https.requests.get("mta-sts.rot.sts.test") == 2
        (got,) = received_by(world.tls_peer, "a@rot.sts.test")
        assert got.tls
        assert json.loads((server.data_dir / "mta-sts" / "rot.sts.test.json").read_text())["id"] == "2"
        # id 3 announced, but its policy cannot be fetched: the cached id 2 (unexpired) still applies (RFC 8461 5.1)
        world.https.answers.pop("mta-sts.rot.sts.test")
        dns.stop()
        dns = Dnsmasq(tmp_path / "dns3", records({"rot.sts.test": ("mx.rot.sts.test", TLS_IP, None, "3")})).start()
        verified = server.log().count("Verified TLS connection established to mx.rot.sts.test")
        qid = send(server, "b@rot.sts.test")
        server.wait_log(rf"{qid}: to=<b@rot.sts.test>, .*status=sent")
        log = server.log()
        assert "policy of rot.sts.test (id=3) not had: sts-policy-fetch-error" in log
        assert "using the cached policy id=2" in log
        assert log.count("Verified TLS connection established to mx.rot.sts.test") == verified + 1
    finally:
        dns.stop()
        world.https.answers.pop("mta-sts.rot.sts.test", None)


def test_disabled_means_no_lookup(world: World, make_server: Callable[..., Server]) -> None:
    server = make_server(world.overrides(mta_sts={"enabled": False}))
    queries = world.dns.queries("_mta-sts.notls.sts.test")
    qid = send(server, "a@notls.sts.test")
    server.wait_log(rf"{qid}: to=<a@notls.sts.test>, .*status=sent")  # the enforce policy is not looked at
    time.sleep(0.2)  # dnsmasq's log line of a query would be written by now
    assert world.dns.queries("_mta-sts.notls.sts.test") == queries
    assert "mta-sts" not in server.log()
    assert tls_rpt(metrics(server)) == 0


def test_max_age_is_honoured(world: World, make_server: Callable[..., Server]) -> None:
    server = make_server(world.overrides())
    qid = send(server, "a@short.sts.test")
    server.wait_log(rf"{qid}: to=<a@short.sts.test>, .*status=deferred.*MTA-STS policy of short.sts.test: enforce")
    saved = world.https.answers.pop("mta-sts.short.sts.test")  # the domain drops its policy (the TXT stays)
    try:
        # past max_age (1 s) the cached policy no longer applies; the refetch fails: delivered as before
        server.wait_log(rf"{qid}: to=<a@short.sts.test>, .*status=sent")
        assert "policy of short.sts.test (id=1) not had: sts-policy-fetch-error" in server.log()
        (got,) = received_by(world.plain_peer, "a@short.sts.test")
        assert not got.tls
    finally:
        world.https.answers["mta-sts.short.sts.test"] = saved


def test_a_failing_txt_lookup_means_no_policy(world: World, make_server: Callable[..., Server]) -> None:
    server = make_server(world.overrides())
    qid = send(server, "a@servfail.sts.test")
    server.wait_log(rf"{qid}: to=<a@servfail.sts.test>, .*status=sent")
    assert received_by(world.plain_peer, "a@servfail.sts.test")
    assert world.dns.queries("_mta-sts.servfail.sts.test") >= 1  # asked, and the timeout gave "no policy"
    assert world.https.requests.get("mta-sts.servfail.sts.test") is None
    assert (
        tls_rpt(metrics(server), policy_type="no-policy-found", result="failure", failure="starttls-not-supported") == 1
    )
