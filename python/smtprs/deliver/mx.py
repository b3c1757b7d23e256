"""MX resolution: a destination domain -> the hosts to try, in order.

Reads the ``[dns]`` configuration (name servers, port, timeout) and asks DNS
through dnspython's async resolver, which runs under Trio as it is.  Writes
nothing; answers are cached by dnspython's cache for their TTL.

The rules (RFC 5321 5.1, RFC 7505):

- MX records in preference order; records of equal preference shuffled, so
  load spreads as the domain's owner meant it to.
- No MX record (the name exists, no data): the domain itself is the one host
  (the implicit MX) and its A/AAAA records are used.
- A null MX (one record ``0 .``): the domain takes no mail, a permanent
  failure 5.1.10.
- NXDOMAIN: permanent, 5.1.2.  SERVFAIL, REFUSED or a timeout: temporary,
  4.4.3.  MX hosts without any address: permanent 5.4.4, unless a lookup
  failed temporarily (then 4.4.3).

Lookup failures are raised as ``DnsFailure`` carrying the status to report.

With ``dnssec`` (on when ``dane.mode`` is not off) every query sets DO and AD
and each answer's AD bit is kept: a ``Host`` is ``secure`` when its MX answer
(or the denial of one, for the implicit MX) and its address answers were all
DNSSEC-validated by the resolver (RFC 7672 2.2).  dnspython does not validate;
the AD bit means something only from a validating resolver on a trusted path
(a local one: see docs/tls-policy.md).  ``tlsa`` asks for DANE's TLSA records.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver
import trio

from ..config import Dns
from ..resolver import configured

MAX_MX_HOSTS = 10  # MX hosts considered per domain (the rest are never reached in practice)
MAX_TXT_RECORDS = 20  # TXT records read per name (a policy record is one of them; more is a broken zone)


class DnsFailure(Exception):
    """A lookup that gives no host to try; ``permanent`` says whether to bounce."""

    def __init__(self, permanent: bool, enhanced: str, text: str) -> None:
        super().__init__(text)
        self.permanent = permanent
        self.enhanced = enhanced
        self.text = text

    @property
    def code(self) -> int:
        return 550 if self.permanent else 451


@dataclass(frozen=True)
class Host:
    """One address to connect to: the host's name (for logs and certificate
    checks), its MX preference, and one IP address."""

    name: str
    ip: str
    preference: int = 0
    secure: bool = False  # MX and address records DNSSEC-validated (only asked with dnssec)


class Resolver:
    def __init__(
        self, cfg: Dns, *, prefer: str = "ipv4", rng: random.Random | None = None, dnssec: bool = False
    ) -> None:
        r = configured(dns.asyncresolver.Resolver, cfg)
        r.cache = dns.resolver.Cache()
        self._r = r
        self.dnssec = False
        self.set_dnssec(dnssec)
        self.prefer = prefer
        self._rng = rng or random.Random()

    def set_dnssec(self, on: bool) -> None:
        """Ask for DNSSEC (DO, AD) or not.  The cache is emptied on a change: an
        answer fetched without DO carries no AD bit, and would make a secure
        host look insecure for its TTL."""
        if on == self.dnssec:
            return
        self.dnssec = on
        if isinstance(self._r.cache, dns.resolver.Cache):
            self._r.cache.flush()
        if on:
            # DO: send the DNSSEC records; AD in the query: tell us whether they validated (RFC 6840 5.7)
            self._r.use_edns(0, dns.flags.DO, 1232)
            self._r.flags = dns.flags.RD | dns.flags.AD
        else:
            self._r.use_edns(False)
            self._r.flags = None

    # -- the public side -------------------------------------------------
    async def mx_hosts(self, domain: str) -> list[tuple[int, str]]:
        """(preference, host name) in the order to try them; raises DnsFailure."""
        return (await self._mx(domain))[0]

    async def _mx(self, domain: str) -> tuple[list[tuple[int, str]], bool]:
        """``mx_hosts`` and whether the answer was DNSSEC-validated."""
        try:
            answer = await self._query(domain, "MX")
        except _NoData as e:
            return [(0, domain)], e.secure  # implicit MX (RFC 5321 5.1)
        records = [(int(rr.preference), rr.exchange) for rr in answer]
        if any(ex == dns.name.root for _, ex in records):
            if len(records) == 1:
                raise DnsFailure(True, "5.1.10", f"Domain {domain} does not accept mail (null MX, RFC 7505)")
            records = [(p, ex) for p, ex in records if ex != dns.name.root]  # a broken zone: ignore the null one
        by_pref: dict[int, list[str]] = {}
        for pref, ex in records:
            by_pref.setdefault(pref, []).append(ex.to_text(omit_final_dot=True).lower())
        out: list[tuple[int, str]] = []
        for pref in sorted(by_pref):
            names = sorted(set(by_pref[pref]))
            self._rng.shuffle(names)
            out += [(pref, n) for n in names]
        return out[:MAX_MX_HOSTS], _secure(answer)

    async def addresses(self, name: str) -> list[str]:
        """The IP addresses of ``name`` (preferred family first); raises DnsFailure."""
        return (await self._addresses(name))[0]

    async def _addresses(self, name: str) -> tuple[list[str], bool]:
        """``addresses`` and whether both answers (or denials) were DNSSEC-validated."""
        try:
            return [str(ipaddress.ip_address(name))], False
        except ValueError:
            pass
        results: dict[str, list[str] | Exception] = {}
        secure: dict[str, bool] = {}

        async def one(rdtype: str) -> None:
            try:
                answer = await self._query(name, rdtype)
                results[rdtype] = [rr.address for rr in answer]
                secure[rdtype] = _secure(answer)
            except _NoData as e:
                results[rdtype] = e
                secure[rdtype] = e.secure
            except DnsFailure as e:
                results[rdtype] = e

        async with trio.open_nursery() as n:
            n.start_soon(one, "A")
            n.start_soon(one, "AAAA")
        order = ["A", "AAAA"] if self.prefer == "ipv4" else ["AAAA", "A"]
        addrs = [a for t in order if isinstance(results[t], list) for a in results[t]]  # type: ignore[union-attr]
        if addrs:
            # every answer that counted (records, or a denial) validated; a family whose lookup
            # failed gives no address and no say, so failing one cannot turn DANE off
            return addrs, bool(secure) and all(secure.values())
        errors = [e for e in results.values() if isinstance(e, DnsFailure)]
        temporary = [e for e in errors if not e.permanent]
        if temporary:
            raise temporary[0]
        if errors:
            raise errors[0]
        raise DnsFailure(True, "5.4.4", f"Host {name} has no address record (A or AAAA)")

    async def hosts(self, host: str, mx: bool) -> list[Host]:
        """Every address to try for a destination, in order; raises DnsFailure.

        With ``mx``, ``host`` is a domain whose MX hosts are used; otherwise
        ``host`` itself (a name or an IP address).
        """
        names, mx_secure = await self._mx(host) if mx else ([(0, host)], False)
        found: dict[str, list[str] | DnsFailure] = {}
        secure: dict[str, bool] = {}

        async def lookup(name: str) -> None:
            try:
                found[name], secure[name] = await self._addresses(name)
            except DnsFailure as e:
                found[name] = e

        async with trio.open_nursery() as n:
            for _, name in names:
                n.start_soon(lookup, name)
        out: list[Host] = []
        seen: set[str] = set()
        for pref, name in names:
            result = found[name]
            if isinstance(result, list):
                for ip in result:
                    if ip not in seen:
                        seen.add(ip)
                        out.append(Host(name, ip, pref, mx_secure and secure.get(name, False)))
        if out:
            return out
        failures = [r for r in found.values() if isinstance(r, DnsFailure)]
        temporary = [f for f in failures if not f.permanent]
        if temporary:
            raise temporary[0]
        if len(names) == 1 and names[0][1] == host and failures:
            # no MX and the domain itself has no address
            raise DnsFailure(True, failures[0].enhanced, failures[0].text)
        raise DnsFailure(True, "5.4.4", f"No address found for any mail exchanger of {host}")

    async def txt(self, name: str) -> list[str]:
        """The TXT records of ``name``, each its strings joined (RFC 7208 3.3's rule, used by
        MTA-STS too), at most ``MAX_TXT_RECORDS``; [] for NXDOMAIN or no data.  A temporary
        failure raises DnsFailure."""
        try:
            answer = await self._query(name, "TXT")
        except _NoData:
            return []
        except DnsFailure as e:
            if e.permanent:
                return []
            raise
        return [b"".join(rr.strings).decode("utf-8", "replace") for rr in list(answer)[:MAX_TXT_RECORDS]]

    async def tlsa(self, name: str) -> tuple[list[object], bool]:
        """The TLSA records at ``name`` (``_25._tcp.mx.example``) and whether the
        answer was DNSSEC-validated; none for NXDOMAIN or no data.  A failed
        lookup (SERVFAIL, as a validating resolver answers bogus data; a
        timeout) raises DnsFailure."""
        try:
            answer = await self._query(name, "TLSA")
        except _NoData as e:
            return [], e.secure
        except DnsFailure as e:
            if e.permanent:  # NXDOMAIN, or a name that cannot be one: no TLSA
                return [], False
            raise
        return list(answer), _secure(answer)

    # -- one query -----------------------------------------------------------
    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError) as e:
            raise DnsFailure(True, "5.1.2", f"Bad domain name {name!r}: {e}") from None
        try:
            return await self._r.resolve(qname, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise DnsFailure(
                True, "5.1.2", f"Host or domain name not found: {name} (type={rdtype}: NXDOMAIN)"
            ) from None
        except dns.resolver.NoAnswer as e:
            raise _NoData(_denial_secure(e)) from None
        except dns.resolver.YXDOMAIN:
            raise DnsFailure(True, "5.1.2", f"Name too long: {name}") from None
        except dns.resolver.NoNameservers as e:
            raise DnsFailure(False, "4.4.3", f"Name service error for {name} type={rdtype}: {_short(e)}") from None
        except dns.exception.Timeout:
            raise DnsFailure(False, "4.4.3", f"Name service timeout for {name} type={rdtype}") from None
        except dns.exception.DNSException as e:
            raise DnsFailure(False, "4.4.3", f"Name service error for {name} type={rdtype}: {_short(e)}") from None


class _NoData(Exception):
    """The name exists but has no record of the asked type; ``secure``: the denial validated."""

    def __init__(self, secure: bool = False) -> None:
        super().__init__()
        self.secure = secure


def _secure(answer: dns.resolver.Answer) -> bool:
    """The AD bit of the response an answer came in (a validating resolver's word)."""
    response = answer.response
    return response is not None and bool(response.flags & dns.flags.AD)


def _denial_secure(e: dns.resolver.NoAnswer) -> bool:
    kwargs: dict[str, object] = getattr(e, "kwargs", None) or {}
    response = kwargs.get("response")
    return isinstance(response, dns.message.Message) and bool(response.flags & dns.flags.AD)


def _short(e: Exception) -> str:
    text = str(e)
    return text if len(text) < 200 else text[:197] + "..."
