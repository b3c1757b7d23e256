"""The MX resolver against a real DNS server (dnsmasq on a loopback port)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.peers import Dnsmasq
from smtprs.config import Dns
from smtprs.deliver.mx import DnsFailure, Host, Resolver

RECORDS = [
    "--mx-host=multi.test,a.multi.test,10",
    "--mx-host=multi.test,b.multi.test,10",
    "--mx-host=multi.test,c.multi.test,10",
    "--mx-host=multi.test,backup.multi.test,20",
    "--host-record=a.multi.test,127.0.0.11",
    "--host-record=b.multi.test,127.0.0.12",
    "--host-record=c.multi.test,127.0.0.13",
    "--host-record=backup.multi.test,127.0.0.20,::20",
    "--host-record=amx.test,127.0.0.30",
    "--mx-host=nullmx.test,.,0",
    "--mx-host=noaddr.test,nothing.noaddr.test,10",
    "--mx-host=partial.test,gone.partial.test,10",
    "--mx-host=partial.test,there.partial.test,20",
    "--host-record=there.partial.test,127.0.0.40",
    "--server=/servfail.test/127.0.0.1#9",
]


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    d = Dnsmasq(tmp_path_factory.mktemp("dns"), RECORDS, ttl=600).start()
    yield d
    d.stop()


def resolver(d: Dnsmasq, **kw: object) -> Resolver:
    return Resolver(Dns(nameservers=["127.0.0.1"], port=d.port, timeout=1.5), **kw)  # type: ignore[arg-type]


async def test_preference_order_and_equal_preferences_shuffled(dns_server: Dnsmasq) -> None:
    r = resolver(dns_server, rng=random.Random(7))
    orders = set()
    for _ in range(20):
        hosts = await r.mx_hosts("multi.test")
        assert [p for p, _ in hosts] == [10, 10, 10, 20]
        assert {n for _, n in hosts[:3]} == {"a.multi.test", "b.multi.test", "c.multi.test"}
        assert hosts[3] == (20, "backup.multi.test")
        orders.add(tuple(n for _, n in hosts[:3]))
    assert len(orders) > 1


async def test_hosts_carry_addresses_in_order(dns_server: Dnsmasq) -> None:
    hosts = await resolver(dns_server).hosts("multi.test", True)
    assert [h.ip for h in hosts][-2:] == ["127.0.0.20", "::20"]  # IPv4 first by default
    assert {h.ip for h in hosts[:3]} == {"127.0.0.11", "127.0.0.12", "127.0.0.13"}
    v6 = await resolver(dns_server, prefer="ipv6").addresses("backup.multi.test")
    assert v6 == ["::20", "127.0.0.20"]


async def test_implicit_mx(dns_server: Dnsmasq) -> None:
    r = resolver(dns_server)
    assert await r.mx_hosts("amx.test") == [(0, "amx.test")]
    assert await r.hosts("amx.test", True) == [Host("amx.test", "127.0.0.30", 0)]


async def test_no_mx_lookup_for_a_literal_host(dns_server: Dnsmasq) -> None:
    r = resolver(dns_server)
    assert await r.hosts("127.0.0.5", False) == [Host("127.0.0.5", "127.0.0.5", 0)]
    assert await r.hosts("amx.test", False) == [Host("amx.test", "127.0.0.30", 0)]


@pytest.mark.parametrize(
    "domain, permanent, enhanced",
    [
        ("nullmx.test", True, "5.1.10"),
        ("nowhere.test", True, "5.1.2"),
        ("noaddr.test", True, "5.4.4"),
        ("servfail.test", False, "4.4.3"),
    ],
)
async def test_failures(dns_server: Dnsmasq, domain: str, permanent: bool, enhanced: str) -> None:
    with pytest.raises(DnsFailure) as e:
        await resolver(dns_server).hosts(domain, True)
    assert (e.value.permanent, e.value.enhanced) == (permanent, enhanced)


async def test_an_mx_without_address_is_skipped(dns_server: Dnsmasq) -> None:
    hosts = await resolver(dns_server).hosts("partial.test", True)
    assert hosts == [Host("there.partial.test", "127.0.0.40", 20)]


async def test_timeout_is_temporary(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes queries, never answers
        silent.bind(("127.0.0.1", 0))
        r = Resolver(Dns(nameservers=["127.0.0.1"], port=silent.getsockname()[1], timeout=0.5))
        with pytest.raises(DnsFailure) as e:
            await r.mx_hosts("anything.test")
    assert not e.value.permanent and e.value.enhanced == "4.4.3"


async def test_answers_are_cached_for_their_ttl(tmp_path: Path) -> None:
    d = Dnsmasq(
        tmp_path / "dns", ["--mx-host=cached.test,mx.cached.test,5", "--host-record=mx.cached.test,127.0.0.50"], ttl=600
    ).start()
    try:
        r = resolver(d)
        first = await r.hosts("cached.test", True)
        assert d.queries("cached.test") == 1
    finally:
        d.stop()
    assert await r.hosts("cached.test", True) == first  # the server is gone: from the cache
    d0 = Dnsmasq(
        tmp_path / "dns0", ["--mx-host=zero.test,mx.zero.test,5", "--host-record=mx.zero.test,127.0.0.51"]
    ).start()
    try:
        r = resolver(d0)
        await r.hosts("zero.test", True)
        await r.hosts("zero.test", True)
        assert d0.queries("zero.test") == 2  # TTL 0: never cached
    finally:
        d0.stop()
