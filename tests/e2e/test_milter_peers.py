"""Milters end to end with real milters: a real ``smtprs serve`` whose
``[milter]`` names rspamd (in milter mode, its rspamd_proxy worker scanning
by itself) or OpenDKIM (a signing milter on the submission listener), each
started here on a loopback port with its own configuration, data and log
directories; nothing of the system's rspamd or OpenDKIM is used.

- rspamd: GTUBE is refused at the end of the data with rspamd's 5xx; a clean
  message is delivered with the headers rspamd's milter_headers module adds
  (X-Spamd-Result, X-Rspamd-Server, X-Rspamd-Queue-Id naming our queue id,
  which rspamd read from the ``i`` macro); rspamd stopped: the default action
  (451 4.7.1), and the message is not accepted.
- OpenDKIM: a submitted message relayed to smtp-sink carries OpenDKIM's
  DKIM-Signature (inserted at the top by the milter, written into a new spool
  file before the 250), and dkimpy verifies it with the key opendkim-genkey
  made; with smtprs's own DKIM signing on the same listener, both signatures
  verify (ours is made over the content OpenDKIM changed).

Each peer is skipped, naming its Debian package, when it is not installed
(scripts/install-deps.sh installs them)."""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest

from .harness import DOMAIN, Server, check, make_message, merge, smtprs_command, stuff
from .peers import Dnsmasq, SinkDump, SmtpSink, free_port

pytestmark = pytest.mark.e2e

START_TIMEOUT = 120.0  # rspamd compiles its regular expressions at start (~20 s here on a busy machine)
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def _exe(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), ""
    )
    if not path:
        pytest.skip(f"{name} is not installed (Debian package {package}; scripts/install-deps.sh installs it)")
    return path


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class Daemon:
    """A peer process in the foreground, its output in ``out``; ``start`` waits on its port."""

    def __init__(self, base: Path, argv: list[str], port: int, log: Path) -> None:
        self.base, self.argv, self.port, self.log_path = base, argv, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        out = open(self.base / "out", "wb")  # noqa: SIM115 - kept open for the process
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(self.port):
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited ({self.proc.returncode}): {self.output()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(
                    f"{self.argv[0]} did not listen on {self.port} in {START_TIMEOUT}s: {self.output()}"
                )
            time.sleep(0.2)
        return self

    def output(self) -> str:
        text = (self.base / "out").read_text(errors="replace")
        if self.log_path.exists():
            text += self.log_path.read_text(errors="replace")
        return text

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        os.killpg(p.pid, signal.SIGTERM)  # the process group it leads: rspamd's workers too
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=15)


# -- rspamd ----------------------------------------------------------------------------
RSPAMD_CONF = """\
# A test's own rspamd: the stock modules and options (CONFDIR is /etc/rspamd),
# local.d from this directory, one worker: the proxy in milter mode, scanning
# by itself (no normal or controller worker, no redis).
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "info";
}}
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{port}";
    milter = yes;
    timeout = 120s;
    count = 1;
    upstream "local" {{
        default = yes;
        self_scan = yes;
    }}
}}
"""
RSPAMD_LOCAL = {
    # DNS only from the test's dnsmasq (NXDOMAIN or REFUSED, at once): no lookup leaves the machine
    "options.inc": 'dns {{ nameserver = ["127.0.0.1:{dns}"]; timeout = 1s; retransmits = 1; }}\n',
    # the headers rspamd adds through the milter; skip_local is on by default,
    # and the test's clients are on loopback
    "milter_headers.conf": (
        'use = ["x-spamd-result", "x-rspamd-server", "x-rspamd-queue-id", "x-spam-status"];\n'
        "skip_local = false;\nskip_authenticated = false;\n"
    ),
}


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    exe = _exe("rspamd", "rspamd")
    base = tmp_path_factory.mktemp("rspamd")
    dns = Dnsmasq(base / "dns", []).start()
    for d in ("db", "run", "log", "local.d"):
        (base / d).mkdir()
    port = free_port()
    (base / "rspamd.conf").write_text(RSPAMD_CONF.format(port=port))
    for name, text in RSPAMD_LOCAL.items():
        (base / "local.d" / name).write_text(text.format(dns=dns.port))
    argv = [exe, "-f", "-u", "root", "-g", "root", "-c", str(base / "rspamd.conf")]
    for var in ("DBDIR=db", "RUNDIR=run", "LOGDIR=log"):
        name, _, sub = var.partition("=")
        argv += ["--var", f"{name}={base / sub}"]
    argv += ["--var", f"LOCAL_CONFDIR={base}"]
    daemon = Daemon(base, argv, port, base / "log" / "rspamd.log").start()
    try:
        yield daemon
    finally:
        daemon.stop()
        dns.stop()


def rspamd_config(d: Daemon, **more: Any) -> dict[str, Any]:
    return merge({"milter": {"milters": [f"inet:127.0.0.1:{d.port}"], "content_timeout": 60.0}}, more)


def test_rspamd_refuses_gtube(make_server: Callable[..., Server], rspamd: Daemon) -> None:
    srv = make_server(rspamd_config(rspamd))
    with srv.connect() as c:
        c.ehlo()
        c.expect("MAIL FROM:<sender@client.test>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        r = c.cmd(stuff(make_message("gtube", f"This is spam.\n{GTUBE}\n")) + b".")
        assert r.code // 100 == 5, str(r)
        assert "gtube" in r.text.lower() or "spam" in r.text.lower(), str(r)
        # the session goes on
        check(c.send_message("sender@client.test", [f"alice@{DOMAIN}"], stuff(make_message("ham", "hello\n"))), 250)
    (path,) = srv.wait_mail("alice", 1, settle=0.5)
    assert b"Subject: ham" in path.read_bytes()
    assert "milter-reject: DATA" in srv.log()
    assert srv.spool_snapshot() == {}


def test_rspamd_adds_its_headers_to_a_clean_message(make_server: Callable[..., Server], rspamd: Daemon) -> None:
    srv = make_server(rspamd_config(rspamd))
    with srv.connect() as c:
        c.ehlo()
        r = c.send_message("sender@client.test", [f"alice@{DOMAIN}"], stuff(make_message("clean", "Hello Alice.\n")))
        check(r, 250, "2.0.0")
    (path,) = srv.wait_mail("alice", 1)
    got = path.read_bytes()
    head = got.split(b"\n\n", 1)[0]
    assert b"\nX-Spamd-Result: default: False [" in head, head.decode(errors="replace")
    assert b"\nX-Rspamd-Server: " in head
    # rspamd read our queue id from the i macro (its X-Rspamd-Queue-Id); the one
    # the client was given is that of the rewritten spool file
    assert b"\nX-Rspamd-Queue-Id: " in head
    assert got.endswith(b"\n\nHello Alice.\n")
    assert f"id {r.qid}".encode() in head  # our Received field names the queue id given to the client
    srv.wait_log(f"{r.qid}: milter: content rewritten")


def test_rspamd_down_gets_the_default_action(make_server: Callable[..., Server], rspamd: Daemon) -> None:
    # (the last rspamd test of the module: it stops the module's rspamd)
    srv = make_server(rspamd_config(rspamd, milter={"connect_timeout": 2.0}))
    with srv.connect() as c:
        check(c.send_message("s@client.test", [f"alice@{DOMAIN}"], stuff(make_message("up", "x\n")), ehlo=True), 250)
    srv.wait_mail("alice", 1)
    rspamd.stop()
    with srv.connect() as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 451, "4.7.1")
    assert "cannot connect" in srv.log() and "milter.default_action=tempfail" in srv.log()
    assert len(srv.mail("alice")) == 1
    assert srv.alive()


# -- OpenDKIM -----------------------------------------------------------------------------
USER = f"alice@{DOMAIN}"
PASSWORD = "milter peers password 3"
SELECTOR = "od1"


@pytest.fixture(scope="module")
def opendkim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    exe = _exe("opendkim", "opendkim")
    genkey = _exe("opendkim-genkey", "opendkim-tools")
    base = tmp_path_factory.mktemp("opendkim")
    p = subprocess.run(
        [genkey, "-D", str(base), "-d", DOMAIN, "-s", SELECTOR], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    txt = (base / f"{SELECTOR}.txt").read_text()
    record = "".join(txt.split('"')[1::2])  # the strings of `od1._domainkey IN TXT ( "..." "..." )`
    assert "p=" in record
    port = free_port()
    conf = base / "opendkim.conf"
    conf.write_text(
        "\n".join(
            [
                "Syslog no",
                "LogWhy yes",
                "Mode s",
                f"Domain {DOMAIN}",
                f"Selector {SELECTOR}",
                f"KeyFile {base / f'{SELECTOR}.private'}",
                "Canonicalization relaxed/simple",
                f"Socket inet:{port}@127.0.0.1",
                f"PidFile {base / 'opendkim.pid'}",
                "RequireSafeKeys no",  # (the test's key is root's file in a temporary directory)
                "MTA ORIGINATING",  # sign what the submission listener passes ({daemon_name}), as with Postfix
                "",
            ]
        )
    )
    daemon = Daemon(base, [exe, "-f", "-v", "-x", str(conf)], port, base / "none").start()
    p = subprocess.run(
        [*smtprs_command(), "passwd", "add", USER, "--stdin", "--file", "users"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=base,
        input=PASSWORD + "\n",
    )
    assert p.returncode == 0, p.stderr
    try:
        yield {"daemon": daemon, "record": record.encode(), "users": base / "users", "base": base}
    finally:
        daemon.stop()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    s = SmtpSink(tmp_path / "sink").start()
    try:
        yield s
    finally:
        s.stop()


def submission_config(od: dict[str, Any], sink: SmtpSink, **more: Any) -> dict[str, Any]:
    cfg = {
        "smtpd": {"auth": {"users_file": str(od["users"]), "allow_plaintext": True, "failure_delay": 0.1}},
        "relay": {"transport": {"elsewhere.test": f"[127.0.0.1]:{sink.port}"}},
        "milter": {"milters": [f"inet:127.0.0.1:{od['daemon'].port}"]},
    }
    return merge(cfg, more)


def signed_message(subject: str) -> bytes:
    return (
        f"From: Alice <{USER}>\r\nTo: Friend <friend@elsewhere.test>\r\nSubject: {subject}\r\n"
        "Date: Mon, 07 Dec 2026 09:00:00 +0000\r\nMessage-ID: <m1@example.test>\r\n\r\n"
        "Hello,\r\n\r\nthis is signed by OpenDKIM.  \r\n\r\n\r\n"
    ).encode()


def relayed(srv: Server, sink: SmtpSink, n: int) -> list[bytes]:
    srv.wait_log(lambda line: "status=sent" in line and srv.log().count("status=sent") >= n)
    return [SinkDump.read(p).message.replace(b"\n", b"\r\n") for p in sink.wait_dumps(n)]


def test_opendkim_signs_submitted_mail(
    make_server: Callable[..., Server], opendkim: dict[str, Any], sink: SmtpSink
) -> None:
    srv = make_server(submission_config(opendkim, sink), modes=("submission",))
    msg = signed_message("signed by opendkim")
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=60) as s:
        s.login(USER, PASSWORD)
        s.sendmail(USER, ["friend@elsewhere.test"], msg)
    (copy,) = relayed(srv, sink, 1)
    assert copy.startswith(b"DKIM-Signature: "), copy[:400]  # OpenDKIM inserts it at the top
    assert copy.endswith(msg.split(b"\r\n\r\n", 1)[1])
    records = {f"{SELECTOR}._domainkey.{DOMAIN}.".encode(): opendkim["record"]}
    d = dkim.DKIM(copy)
    assert d.verify(dnsfunc=lambda name, timeout=5: records.get(name)), copy[:800]
    assert d.signature_fields[b"d"] == DOMAIN.encode() and d.signature_fields[b"s"] == SELECTOR.encode()
    # and the check can fail: a changed body does not verify
    assert not dkim.verify(
        copy.replace(b"signed by OpenDKIM", b"signed by someone"), dnsfunc=lambda n, timeout=5: records.get(n)
    )


def test_opendkim_and_our_own_signature_both_verify(
    make_server: Callable[..., Server], opendkim: dict[str, Any], sink: SmtpSink, tmp_path: Path
) -> None:
    key = tmp_path / "ours.pem"
    p = subprocess.run(
        [
            *smtprs_command(),
            "dkim",
            "keygen",
            "--domain",
            DOMAIN,
            "--selector",
            "ours",
            "--algorithm",
            "ed25519-sha256",
            "--out",
            str(key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    ours = "".join(p.stdout.split(" IN TXT ", 1)[1].split('"')[1::2]).encode()
    cfg = submission_config(
        opendkim,
        sink,
        dkim={"keys": [{"domain": DOMAIN, "selector": "ours", "key_file": str(key), "algorithm": "ed25519-sha256"}]},
    )
    srv = make_server(cfg, modes=("submission",))
    with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=60) as s:
        s.login(USER, PASSWORD)
        s.sendmail(USER, ["friend@elsewhere.test"], signed_message("two signatures"))
    (copy,) = relayed(srv, sink, 1)
    records = {
        f"{SELECTOR}._domainkey.{DOMAIN}.".encode(): opendkim["record"],
        f"ours._domainkey.{DOMAIN}.".encode(): ours,
    }
    d = dkim.DKIM(copy)
    sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    assert len(sigs) == 2, copy[:1500]
    for i in range(2):
        assert d.verify(idx=i, dnsfunc=lambda name, timeout=5: records.get(name)), (i, copy[:1500])
    assert b" s=ours;" in sigs[0] and f" s={SELECTOR};".encode() in sigs[1]  # ours prepended above OpenDKIM's
    srv.wait_log("DKIM-Signature field added")


# -- spamass-milter with spamd ---------------------------------------------------------------
@pytest.fixture(scope="module")
def spamass(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    spamd_exe = _exe("spamd", "spamd")
    milter_exe = _exe("spamass-milter", "spamass-milter")
    _exe("spamc", "spamc")
    base = tmp_path_factory.mktemp("spamass")
    (base / "spamd").mkdir()
    (base / "milter").mkdir()
    spamd_port, milter_port = free_port(), free_port()
    spamd = Daemon(
        base / "spamd",
        # -L: local tests only (no DNS blocklists), -x: no per-user configuration
        [spamd_exe, f"--listen=127.0.0.1:{spamd_port}", "--allowed-ips=127.0.0.1", "-u", "nobody", "-L", "-x"]
        + ["--max-children=1", "--min-spare=1", "--max-spare=1", f"--pidfile={base / 'spamd.pid'}"]
        + ["-s", str(base / "spamd" / "spamd.log")],
        spamd_port,
        base / "spamd" / "spamd.log",
    ).start()
    # in the foreground (no -f); -r 15: refuse a score of 15 or more; the rest is spamc's
    milter = Daemon(
        base / "milter",
        [milter_exe, "-p", f"inet:{milter_port}@127.0.0.1", "-r", "15", "--", "-d", "127.0.0.1", "-p", str(spamd_port)],
        milter_port,
        base / "none",
    )
    try:
        yield milter.start()
    finally:
        milter.stop()
        spamd.stop()


def test_spamass_milter_refuses_gtube_and_marks_clean_mail(make_server: Callable[..., Server], spamass: Daemon) -> None:
    srv = make_server({"milter": {"milters": [f"inet:127.0.0.1:{spamass.port}"], "content_timeout": 60.0}})
    with srv.connect() as c:
        c.ehlo()
        c.expect("MAIL FROM:<sender@client.test>", 250)
        c.expect(f"RCPT TO:<alice@{DOMAIN}>", 250)
        c.expect("DATA", 354)
        r = c.cmd(stuff(make_message("gtube", f"This is spam.\n{GTUBE}\n")) + b".")
        assert r.code // 100 == 5, str(r)
        r = c.send_message("sender@client.test", [f"alice@{DOMAIN}"], stuff(make_message("ham", "Hello Alice.\n")))
        check(r, 250, "2.0.0")
    (path,) = srv.wait_mail("alice", 1, settle=0.5)
    head = path.read_bytes().split(b"\n\n", 1)[0]
    assert b"\nX-Spam-Checker-Version: SpamAssassin" in head, head.decode(errors="replace")
    assert b"\nX-Spam-Status: No" in head
    assert "milter-reject: DATA" in srv.log()
