"""A real validating resolver for tests: unbound over DNSSEC-signed zones built here.

``SignedZone`` builds a zone with dnspython and signs it with ldnsutils
(ldns-keygen, ldns-signzone: ECDSA P-256, algorithm 13, one key with the SEP
flag, NSEC for authenticated denial).  ``tamper`` changes an RRset after signing, keeping its old RRSIG, so that a
validator finds it bogus.  ``UnsignedZone`` is a zone without signatures.

``Unbound`` runs Debian's unbound on a free loopback port with its own
configuration, pid file and log (no chroot, no privilege drop, no remote
control; never the system's unbound service).  Each zone is an ``auth-zone``
with ``for-upstream: yes`` / ``for-downstream: no``: unbound's iterator
takes the zone's data as if from an authoritative server, and its validator
checks the signed ones against the ``trust-anchor`` lines made from their
keys, so an answer carries the AD bit only when it validated.  Zones without
a trust anchor are insecure (no AD); a tampered RRset gives SERVFAIL.

Every wait is bounded and the process stops at teardown (and at exit).
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

from .peers import _LIVE, free_port, wait_until


class UnsignedZone:
    """A zone from ``(owner, type, rdata text)`` records; SOA and NS are added."""

    ttl = 60

    def __init__(self, origin: str, records: list[tuple[str, str, str]]) -> None:
        self.origin = dns.name.from_text(origin)
        self.zone = dns.zone.Zone(self.origin, relativize=False)
        base = [
            ("@", "SOA", f"ns.{self.origin} hostmaster.{self.origin} 1 3600 600 86400 60"),
            ("@", "NS", f"ns.{self.origin}"),
            ("ns", "A", "127.0.0.1"),
        ]
        with self.zone.writer() as txn:
            for owner, rdtype, text in base + records:
                name = dns.name.from_text(owner, self.origin) if owner != "@" else self.origin
                rd = dns.rdata.from_text(dns.rdataclass.IN, rdtype, text, origin=self.origin)
                txn.add(name, self.ttl, rd)

    @property
    def name(self) -> str:
        return self.origin.to_text()

    def text(self) -> str:
        return str(self.zone.to_text(relativize=False))

    def trust_anchor(self) -> str | None:
        return None


class SignedZone(UnsignedZone):
    """The same, signed with ldnsutils (ldns-keygen, ldns-signzone: NSEC, ECDSA
    P-256); its DNSKEY is the trust anchor given to unbound.  (dnspython's own
    ``sign_zone`` needs a newer ``cryptography`` than the project runs on.)"""

    def __init__(self, origin: str, records: list[tuple[str, str, str]], directory: Path) -> None:
        super().__init__(origin, records)
        directory.mkdir(parents=True, exist_ok=True)
        unsigned = directory / f"{self.name}unsigned"
        unsigned.write_text(super().text())
        keygen = shutil.which("ldns-keygen") or "/usr/bin/ldns-keygen"
        signzone = shutil.which("ldns-signzone") or "/usr/bin/ldns-signzone"
        made = subprocess.run(
            [keygen, "-a", "ECDSAP256SHA256", "-k", self.name],
            cwd=directory,
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        )
        keybase = directory / made.stdout.strip()
        self.dnskey = Path(f"{keybase}.key").read_text().split(";")[0].strip()
        now = datetime.datetime.now(datetime.UTC)
        inception = (now - datetime.timedelta(hours=1)).strftime("%Y%m%d%H%M%S")
        expiration = (now + datetime.timedelta(days=2)).strftime("%Y%m%d%H%M%S")
        signed = directory / f"{self.name}signed"
        subprocess.run(
            [signzone, "-i", inception, "-e", expiration, "-f", str(signed), str(unsigned), str(keybase)],
            cwd=directory,
            check=True,
            capture_output=True,
            timeout=30,
        )
        self._signed = signed.read_text()

    def text(self) -> str:
        return self._signed

    def trust_anchor(self) -> str:
        return " ".join(self.dnskey.split())

    def tamper(self, owner: str, rdtype: str, new_rdata: str) -> None:
        """Replace the rdata of ``owner``/``rdtype`` by ``new_rdata``, keeping its RRSIG (now wrong)."""
        fqdn = dns.name.from_text(owner, self.origin).to_text()
        out, hit = [], False
        for line in self._signed.splitlines():
            f = line.split()
            if len(f) >= 4 and f[0].lower() == fqdn.lower() and f[2] == "IN" and f[3] == rdtype:
                line = "\t".join(f[:4]) + "\t" + new_rdata
                hit = True
            out.append(line)
        assert hit, f"{fqdn} {rdtype} not in the zone"
        self._signed = "\n".join(out) + "\n"


class Unbound:
    """unbound validating the given zones (see the module's doc)."""

    def __init__(self, base: Path, zones: list[UnsignedZone]) -> None:
        self.base = base
        self.base.mkdir(parents=True, exist_ok=True)
        self.zones = zones
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "unbound.log"
        self.conf_path = base / "unbound.conf"

    def _write(self) -> None:
        lines = [
            "server:",
            "  interface: 127.0.0.1",
            f"  port: {self.port}",
            "  do-ip6: no",
            "  do-daemonize: no",
            '  chroot: ""',
            '  username: ""',
            f'  directory: "{self.base}"',
            f'  pidfile: "{self.base / "unbound.pid"}"',
            f'  logfile: "{self.log_path}"',
            "  use-syslog: no",
            "  verbosity: 1",
            "  val-log-level: 2",
            "  log-servfail: yes",
            "  access-control: 127.0.0.0/8 allow",
            '  module-config: "validator iterator"',
            "  qname-minimisation: no",
            "  num-threads: 1",
            "  cache-max-ttl: 1",
            "  cache-max-negative-ttl: 1",
            "  val-bogus-ttl: 1",
            "  harden-referral-path: no",
            # no names outside the test zones: nothing is asked of the internet
            '  local-zone: "example." nodefault',
        ]
        for z in self.zones:
            ta = z.trust_anchor()
            if ta:
                lines.append(f'  trust-anchor: "{ta}"')
        for z in self.zones:
            path = self.base / f"{z.name}zone"
            path.write_text(z.text())
            lines += [
                "auth-zone:",
                f'  name: "{z.name}"',
                f'  zonefile: "{path}"',
                "  for-upstream: yes",
                "  for-downstream: no",
                "  fallback-enabled: no",
            ]
        lines += ["remote-control:", "  control-enable: no"]
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self) -> Unbound:
        exe = shutil.which("unbound") or "/usr/sbin/unbound"
        check = shutil.which("unbound-checkconf") or "/usr/sbin/unbound-checkconf"
        for _ in range(3):
            self.port = free_port(udp_too=True)
            self._write()
            subprocess.run([check, str(self.conf_path)], check=True, capture_output=True, timeout=30)
            self.proc = subprocess.Popen(
                [exe, "-d", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            _LIVE.add(self)
            try:
                wait_until(self._ready, 15, "unbound to answer")
                return self
            except AssertionError:
                self.stop()
                if self.log_path.exists() and "bind" not in self.log_path.read_text():
                    raise
        raise RuntimeError(f"unbound did not start: {self.log()}")

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"unbound exited: {self.log()}")
        try:
            self.query(f"ns.{self.zones[0].name}", "A", timeout=0.5)
            return True
        except Exception:
            return False

    def query(self, name: str, rdtype: str, timeout: float = 5.0) -> dns.message.Message:
        """One query with DO set (as smtprs asks), over UDP then TCP when truncated."""
        q = dns.message.make_query(name, rdtype, want_dnssec=True, payload=1232)
        q.flags |= dns.flags.AD
        r = dns.query.udp(q, "127.0.0.1", port=self.port, timeout=timeout)
        if r.flags & dns.flags.TC:
            r = dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=timeout)
        return r

    def secure(self, name: str, rdtype: str) -> tuple[str, bool]:
        """(rcode text, AD bit) of one answer."""
        r = self.query(name, rdtype)
        return dns.rcode.to_text(r.rcode()), bool(r.flags & dns.flags.AD)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()

    def config(self) -> dict[str, Any]:
        """The smtprs ``[dns]`` table that points at this resolver."""
        return {"nameservers": ["127.0.0.1"], "port": self.port, "timeout": 5.0}


def wait_secure(u: Unbound, name: str, rdtype: str, timeout: float = 10.0) -> tuple[str, bool]:
    """The first answer (after unbound has loaded its zones), bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return u.secure(name, rdtype)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
