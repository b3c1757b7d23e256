"""``smtprs route test`` run as a real command (a subprocess) against real
addressing tables and a real dnsmasq on loopback: aliases, a virtual map with
a catch-all, sub-addressing, a relay.transport entry, a smart host, MX hosts
with preferences and addresses, the implicit MX, NXDOMAIN, an unknown user.
And the answer it gives at RCPT is the one a running server gives."""

from __future__ import annotations

import smtplib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import DOMAIN, Server, smtprs_command, to_toml
from .peers import Dnsmasq

pytestmark = pytest.mark.e2e

RECORDS = [
    "--mx-host=remote.test,mx1.remote.test,10",
    "--mx-host=remote.test,mx2.remote.test,20",
    "--host-record=mx1.remote.test,127.0.0.11",
    "--host-record=mx2.remote.test,127.0.0.12,fd00::12",
    "--host-record=nomx.test,127.0.0.13",  # no MX: the implicit MX
    "--host-record=smart.test,127.0.0.14",
    "--mx-host=partner.test,mx.partner.test,5",  # no address for its MX host
    "--server=/broken.test/127.0.0.1#1",  # an upstream that never answers: SERVFAIL
]


@pytest.fixture(scope="module")
def dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    server = Dnsmasq(tmp_path_factory.mktemp("dns"), RECORDS).start()
    try:
        yield server
    finally:
        server.stop()


def tables(base: Path) -> dict[str, Any]:
    (base / "aliases").write_text("postmaster: root\nroot: alice\nteam: alice, bob+lists, carol@remote.test\n")
    (base / "virtual").write_text("info@virt.test team\n@virt.test alice\n")
    return {
        "domains": [DOMAIN],
        "virtual_domains": ["virt.test"],
        "users": ["alice", "bob", "root"],
        "aliases": str(base / "aliases"),
        "virtual_map": str(base / "virtual"),
    }


def write_config(base: Path, dns: Dnsmasq, **relay: Any) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    cfg = {
        "data_dir": str(base / "data"),
        "hostname": "mx.test",
        "local": tables(base),
        "dns": dns.config(),
        "relay": {"transport": {".sub.test": "smtp:[10.0.0.5]:2525"}, **relay},
    }
    path = base / "smtprs.toml"
    path.write_text(to_toml(cfg))
    return path


def route_test(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*smtprs_command(), "route", "test", "-c", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config.parent,
    )


def block(out: str, address: str) -> str:
    """The lines about one address."""
    return out.split(f"\naddress: {address}\n", 1)[1].split("\naddress: ", 1)[0]


def test_aliases_virtual_catch_all_and_sub_addressing(tmp_path: Path, dns: Dnsmasq) -> None:
    config = write_config(tmp_path, dns)
    p = route_test(config, "info@virt.test", "nobody@virt.test", "Alice+Tag@Example.Test")
    assert p.returncode == 0, p.stdout + p.stderr
    info = block(p.stdout, "info@virt.test")
    assert f"      virtual map {tmp_path}/virtual:1: info@virt.test -> team\n" in info
    assert f"          aliases {tmp_path}/aliases:3: team -> alice, bob+lists, carol@remote.test\n" in info
    assert "  recipients: 3\n" in info
    assert f"    bob+lists@example.test: local maildir {tmp_path}/data/mail/bob (via local.delivery = maildir" in info
    # the alias's remote target, with the MX answer from dnsmasq, in preference order
    assert "    carol@remote.test: smtp to MX of remote.test, port 25 (via DNS: the MX records of the domain" in info
    assert "      MX 10 mx1.remote.test: 127.0.0.11\n      MX 20 mx2.remote.test: 127.0.0.12, fd00::12\n" in info
    assert "  RCPT from 192.0.2.1: 250 2.1.5 Ok" in info
    catch_all = block(p.stdout, "nobody@virt.test")
    assert f"      virtual map catch-all {tmp_path}/virtual:2: @virt.test -> alice\n" in catch_all
    assert f"    alice@example.test: local maildir {tmp_path}/data/mail/alice" in catch_all
    sub = block(p.stdout, "Alice+Tag@Example.Test")
    assert 'sub-address "+tag" removed (local.recipient_delimiter)' in sub
    assert f"    alice+tag@example.test: local maildir {tmp_path}/data/mail/alice" in sub
    assert "  result: deliverable" in sub


def test_unknown_local_user_exits_1(tmp_path: Path, dns: Dnsmasq) -> None:
    p = route_test(write_config(tmp_path, dns), "alice@example.test", "zed@example.test")
    assert p.returncode == 1, p.stdout + p.stderr
    zed = block(p.stdout, "zed@example.test")
    assert "  refused: 550 5.1.1 User unknown in local recipient table\n" in zed
    assert "  RCPT from 192.0.2.1: 550 5.1.1 User unknown in local recipient table\n" in zed
    assert "  result: NOT deliverable" in zed
    assert "  result: deliverable" in block(p.stdout, "alice@example.test")


def test_mx_implicit_mx_nxdomain_and_no_address(tmp_path: Path, dns: Dnsmasq) -> None:
    p = route_test(write_config(tmp_path, dns), "--client", "127.0.0.1", "a@remote.test", "b@nomx.test", "c@gone.test")
    assert p.returncode == 1, p.stdout + p.stderr  # gone.test has no route
    assert "RCPT checked as from client 127.0.0.1, not in relay.trusted_networks, not authenticated" in p.stdout
    remote = block(p.stdout, "a@remote.test")
    assert "      MX 10 mx1.remote.test: 127.0.0.11\n" in remote
    assert "  RCPT from 127.0.0.1: 554 5.7.1 Relay access denied" in remote  # the open-relay check
    assert "  result: deliverable" in remote
    nomx = block(p.stdout, "b@nomx.test")
    assert "      no MX record: implicit MX nomx.test (RFC 5321 5.1)\n      MX 0 nomx.test: 127.0.0.13\n" in nomx
    assert "  result: deliverable" in nomx
    gone = block(p.stdout, "c@gone.test")
    assert (
        "      DNS: 550 5.1.2 Host or domain name not found: gone.test (type=MX: NXDOMAIN) (mail would be bounced)"
        in gone
    )
    assert "  result: NOT deliverable" in gone
    p = route_test(write_config(tmp_path, dns), "d@partner.test")
    assert p.returncode == 1
    assert "      MX 5 mx.partner.test: no address\n" in p.stdout
    assert "      DNS: 550 " in p.stdout
    # a name server failure: a temporary error, the mail would wait in the queue
    p = route_test(write_config(tmp_path, dns), "e@broken.test")
    assert p.returncode == 1, p.stdout + p.stderr
    assert "      DNS: 451 4.4.3 " in p.stdout and "(mail would be deferred)" in p.stdout
    # --no-dns: no lookup, and nothing to refuse it for
    p = route_test(write_config(tmp_path, dns), "--no-dns", "c@gone.test")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "      DNS: not looked up (--no-dns)" in p.stdout
    assert dns.queries("gone.test") >= 1  # (asked by the run before, through [dns])


def test_transport_entry_and_smart_host(tmp_path: Path, dns: Dnsmasq) -> None:
    p = route_test(write_config(tmp_path, dns), "x@a.sub.test")
    assert p.returncode == 0, p.stdout + p.stderr
    assert (
        '    x@a.sub.test: smtp to host 10.0.0.5 (no MX lookup), port 2525 (via relay.transport ".sub.test" = '
        '"smtp:[10.0.0.5]:2525")\n      tls: relay.tls = may\n      10.0.0.5: an IP address, no lookup\n'
    ) in p.stdout
    smart = write_config(tmp_path / "smart", dns, relayhost="[smart.test]:2525", trusted_networks=["127.0.0.0/8"])
    p = route_test(smart, "--client", "127.0.0.5", "y@remote.test", "x@a.sub.test")
    assert p.returncode == 0, p.stdout + p.stderr
    y = block(p.stdout, "y@remote.test")
    assert (
        '    y@remote.test: smtp to host smart.test (no MX lookup), port 2525 (via relay.relayhost = "[smart.test]:2525")'
        in y
    )
    assert "      smart.test: 127.0.0.14\n" in y
    assert "  RCPT from 127.0.0.5: 250 2.1.5 Ok" in y  # a trusted client may relay
    assert "via relay.transport" in block(p.stdout, "x@a.sub.test")  # the transport map comes before the relayhost


def test_json_output(tmp_path: Path, dns: Dnsmasq) -> None:
    import json

    p = route_test(write_config(tmp_path, dns), "--json", "team@example.test")
    assert p.returncode == 0, p.stdout + p.stderr
    (team,) = json.loads(p.stdout)
    carol = [r for r in team["recipients"] if r["address"] == "carol@remote.test"][0]
    assert carol["dns"]["mx"][0] == {"preference": 10, "host": "mx1.remote.test", "addresses": ["127.0.0.11"]}


ADDRESSES = [
    "alice@example.test",
    "Alice+Tag@example.test",
    "zed@example.test",
    "info@virt.test",
    "anyone@virt.test",
    "a@remote.test",
    "postmaster@example.test",
]


def test_rcpt_answers_are_the_servers(make_server: Callable[..., Server], tmp_path: Path, dns: Dnsmasq) -> None:
    """The RCPT line of route test is what a running server answers the same client."""
    srv = make_server({"local": tables(tmp_path), "dns": dns.config()})
    p = route_test(srv.config_path, "--no-dns", "--client", "127.0.0.1", *ADDRESSES)
    assert p.returncode == 1, p.stdout + p.stderr  # zed is unknown
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=10) as s:
        s.ehlo("client.test")
        s.mail("sender@client.test")
        for address in ADDRESSES:
            code, text = s.rcpt(address)
            line = [x for x in block(p.stdout, address).splitlines() if x.startswith("  RCPT from 127.0.0.1: ")][0]
            assert line.split(": ", 1)[1].startswith(f"{code} "), (address, code, text, line)
            assert text.decode() in line
