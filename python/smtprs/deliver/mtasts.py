"""MTA-STS (RFC 8461): a recipient domain's policy for delivery by MX.

Reads the ``[mta_sts]`` configuration, DNS (through deliver/mx.py's
``Resolver``: the ``[dns]`` settings) and the policy over HTTPS; writes the
policy cache under data_dir (one JSON file per domain).  The SMTP agent
(deliver/smtp.py) asks ``MtaSts.lookup(domain)`` once per delivery to a
domain by MX, and gets the policy to apply, or none:

1. TXT ``_mta-sts.DOMAIN``: exactly one record starting ``v=STSv1;`` with a
   valid ``id`` (RFC 8461 3.1), else the domain has no live policy.
2. A policy cached (in memory, else on disk) with that id and not past its
   max_age is used as it is.  Otherwise the policy is fetched from
   ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` (3.3): the
   certificate verified against the CA bundle (relay.tls_ca_file, or the
   system's), no redirect followed, status 200, ``Content-Type: text/plain``,
   at most ``max_policy_size`` octets, all within ``fetch_timeout``.  HTTP is
   h11's, over a ``trio.SSLStream``.
3. When the TXT record is missing or the fetch fails, a cached unexpired
   policy still applies (5.1); without one the domain is delivered to as
   before, and the failure is kept for TLS-RPT (``Lookup.failure``).  A
   failed fetch is not tried again for the same id for ``FETCH_RETRY``
   seconds, so a broken policy server does not slow every delivery.

The policy's use (which MX hosts, which TLS level) is smtp.py's, with
``tls_level`` and ``Policy.matches`` from here.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import h11
import trio

from .. import maillog
from ..config import Config
from .mx import DnsFailure, Resolver

MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2: the largest max_age (about a year)
FETCH_RETRY = 300.0  # seconds before a failed fetch (for one domain and id) is tried again
POLICY_PATH = "/.well-known/mta-sts.txt"
MAX_MX_PATTERNS = 100  # mx lines kept from one policy (more is a broken policy, not a reason to use memory)

Mode = Literal["enforce", "testing", "none"]
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_EXT_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_DOMAIN_FILE = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}\Z")  # a cache file's name: the domain itself


class PolicyError(ValueError):
    """A policy file that does not follow RFC 8461 3.2."""


class FetchError(Exception):
    """The policy could not be had; ``result_type`` is RFC 8460's name for why."""

    def __init__(self, result_type: str, detail: str, *, unreachable: bool = False) -> None:
        super().__init__(detail)
        self.result_type = result_type
        self.detail = detail
        self.unreachable = unreachable  # the address could not be reached: the next one may be


# -- the records ---------------------------------------------------------------


def parse_txt(records: list[str]) -> str | None:
    """The policy id of the ``_mta-sts`` TXT records, or None when there is no valid one.

    RFC 8461 3.1: records not starting with ``v=STSv1;`` are ignored; anything
    but exactly one left, or one without a valid ``id``, means no policy."""
    sts = [r for r in records if r.startswith("v=STSv1;") or r == "v=STSv1"]
    if len(sts) != 1:
        return None
    fields = [f.strip(" \t") for f in sts[0].split(";")]
    if fields[-1] == "":
        fields.pop()  # a trailing ";"
    found: str | None = None
    for f in fields[1:]:
        key, eq, value = f.partition("=")
        if not eq or not _EXT_KEY.match(key):
            return None
        if key == "id":
            if found is not None or not _ID.match(value):
                return None
            found = value
    return found


@dataclass(frozen=True)
class Policy:
    """One domain's policy, as fetched (``fetched_at``: seconds since the epoch)."""

    domain: str
    id: str
    mode: Mode
    mx: tuple[str, ...]
    max_age: int
    fetched_at: float

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.max_age

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def matches(self, host: str) -> bool:
        """Is ``host`` (an MX host name) one this policy allows?"""
        return any(mx_matches(p, host) for p in self.mx)

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "id": self.id,
            "mode": self.mode,
            "mx": list(self.mx),
            "max_age": self.max_age,
            "fetched_at": self.fetched_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Policy:
        """A cached policy; raises PolicyError when the data is not one."""
        try:
            mode = data["mode"]
            if mode not in ("enforce", "testing", "none"):
                raise PolicyError(f"bad mode {mode!r}")
            mx = tuple(str(p) for p in data["mx"])
            max_age = int(data["max_age"])
            fetched_at = float(data["fetched_at"])
            if not 0 <= max_age <= MAX_AGE_LIMIT:
                raise PolicyError("bad max_age")
            return cls(str(data["domain"]), str(data["id"]), mode, mx, max_age, fetched_at)
        except (KeyError, TypeError, ValueError) as e:
            raise PolicyError(f"not a cached policy: {e}") from None


def parse_policy(text: bytes, domain: str, policy_id: str, now: float) -> Policy:
    """The policy file (RFC 8461 3.2) of ``domain``; raises PolicyError.

    Lines end in CRLF or LF; each is ``key: value``.  ``version`` must be
    ``STSv1``; ``mode`` enforce, testing or none; ``max_age`` an integer (a value
    over RFC 8461's limit of 31557600 is taken as that limit); ``mx`` lines
    (at least one unless the mode is none) are host names or ``*.`` wildcards.
    Of a key given twice (but mx), the first counts; unknown keys are ignored."""
    try:
        body = text.decode("ascii")
    except UnicodeDecodeError:
        raise PolicyError("the policy is not ASCII text") from None
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in body.replace("\r\n", "\n").split("\n"):
        line = line.strip(" \t")
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise PolicyError(f"not a key: value line: {line[:80]!r}")
        key, value = key.strip(" \t"), value.strip(" \t")
        if key == "mx":
            if len(mx) < MAX_MX_PATTERNS:
                mx.append(_mx_pattern(value))
        else:
            fields.setdefault(key, value)
    if fields.get("version") != "STSv1":
        raise PolicyError(f"version is {fields.get('version')!r}, not 'STSv1'")
    mode = fields.get("mode")
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"mode is {mode!r}, not enforce, testing or none")
    age = fields.get("max_age", "")
    if not age.isdigit() or not age.isascii() or len(age) > 10:
        raise PolicyError(f"max_age is {age!r}, not a number of seconds")
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} with no mx line")
    return Policy(domain, policy_id, cast(Mode, mode), tuple(mx), min(int(age), MAX_AGE_LIMIT), now)


def _mx_pattern(value: str) -> str:
    pattern = value.lower().rstrip(".")
    name = pattern[2:] if pattern.startswith("*.") else pattern
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise PolicyError(f"bad mx pattern {value[:80]!r}")
    return pattern


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: a host name equals the pattern, or the pattern is
    ``*.rest`` and the host is exactly one more (leftmost) label before ``rest``;
    compared case-insensitively, trailing dots ignored."""
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".rest"
        head = host[: -len(suffix)]
        return host.endswith(suffix) and bool(head) and "." not in head
    return host == pattern


def tls_level(hop_level: str, policy: Policy | None) -> str:
    """The TLS level for an MX host of a domain with ``policy``: ``verify`` under
    enforce and testing (testing falls back to ``hop_level`` when verification
    fails: smtp.py), else the hop's own (relay.tls / relay.tls_policy)."""
    if policy is not None and policy.mode in ("enforce", "testing"):
        return "verify"
    return hop_level


# -- fetching ------------------------------------------------------------------


async def fetch(
    domain: str, resolver: Resolver, ctx: ssl.SSLContext, *, port: int, timeout: float, max_size: int
) -> bytes:
    """The body of ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt``; raises FetchError."""
    host = f"mta-sts.{domain}"
    try:
        with trio.fail_after(timeout):
            try:
                addresses = await resolver.addresses(host)
            except DnsFailure as e:
                raise FetchError("sts-policy-fetch-error", f"{host}: {e.text}") from None
            last: FetchError | None = None
            for ip in addresses[:2]:
                try:
                    return await _get(host, ip, port, ctx, max_size)
                except FetchError as e:
                    if not e.unreachable:
                        raise  # only a refused or unreachable address moves on to the next
                    last = e
            assert last is not None
            raise last
    except trio.TooSlowError:
        raise FetchError("sts-policy-fetch-error", f"{host}: timed out after {timeout:g}s") from None


async def _get(host: str, ip: str, port: int, ctx: ssl.SSLContext, max_size: int) -> bytes:
    where = f"https://{host}:{port}{POLICY_PATH} ({ip})" if port != 443 else f"https://{host}{POLICY_PATH} ({ip})"
    try:
        tcp = await trio.open_tcp_stream(ip, port)
    except OSError as e:
        raise FetchError("sts-policy-fetch-error", f"{where}: connect: {e.strerror or e}", unreachable=True) from None
    stream = trio.SSLStream(tcp, ctx, server_hostname=host, https_compatible=True)
    try:
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError) as e:
            cause = e.__cause__ or e
            kind = "sts-webpki-invalid" if isinstance(cause, ssl.SSLCertVerificationError) else "sts-policy-fetch-error"
            raise FetchError(kind, f"{where}: TLS: {cause}") from None
        try:
            return await _exchange(stream, host, where, max_size)
        except (trio.BrokenResourceError, OSError, ssl.SSLError) as e:
            raise FetchError("sts-policy-fetch-error", f"{where}: {e.__cause__ or e}") from None
        except h11.ProtocolError as e:
            raise FetchError("sts-policy-fetch-error", f"{where}: bad HTTP response: {e}") from None
    finally:
        await trio.aclose_forcefully(stream)


async def _exchange(stream: trio.SSLStream[trio.SocketStream], host: str, where: str, max_size: int) -> bytes:
    # the response head: h11 refuses one still incomplete past 16 KiB (checked per read, so at most 32 KiB)
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=16384)
    request = h11.Request(
        method="GET",
        target=POLICY_PATH,
        headers=[("Host", host), ("User-Agent", "smtprs"), ("Accept", "text/plain"), ("Connection", "close")],
    )
    await stream.send_all(conn.send(request) + (conn.send(h11.EndOfMessage()) or b""))
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(16384)))
            continue
        if isinstance(event, h11.Response):
            if event.status_code != 200:
                why = " (redirects are not followed: RFC 8461 3.3)" if 300 <= event.status_code < 400 else ""
                raise FetchError("sts-policy-fetch-error", f"{where}: HTTP status {event.status_code}{why}")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "text/plain":
                raise FetchError("sts-policy-invalid", f"{where}: Content-Type {media or 'missing'}, not text/plain")
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > max_size:
                raise FetchError("sts-policy-invalid", f"{where}: policy of {length} octets, over {max_size}")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > max_size:
                raise FetchError("sts-policy-invalid", f"{where}: policy over {max_size} octets")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise FetchError("sts-policy-fetch-error", f"{where}: connection closed before the end of the response")
        # InformationalResponse (1xx): wait for the real one


# -- the cache -----------------------------------------------------------------


class PolicyStore:
    """Policies on disk: ``DIR/DOMAIN.json``, written whole (temporary file,
    fsync, rename), so workers sharing data_dir never read half a file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, domain: str) -> Path | None:
        return self.directory / f"{domain}.json" if _DOMAIN_FILE.match(domain) and ".." not in domain else None

    def load(self, domain: str) -> Policy | None:
        path = self._path(domain)
        if path is None:
            return None
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            maillog.warning(f"mta-sts: cannot read the cached policy {path}: {e}")
            return None
        try:
            policy = Policy.from_json(json.loads(raw))
        except (PolicyError, ValueError) as e:
            maillog.warning(f"mta-sts: ignoring the cached policy {path}: {e}")
            return None
        return policy if policy.domain == domain else None

    def save(self, policy: Policy) -> None:
        path = self._path(policy.domain)
        if path is None:
            return
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                f.write(json.dumps(policy.to_json()).encode())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            maillog.warning(f"mta-sts: cannot write the cached policy {path}: {e}")


# -- the lookup ----------------------------------------------------------------


@dataclass(frozen=True)
class Lookup:
    """What applies to one delivery: the policy (None: deliver as before) and,
    when discovery failed, RFC 8460's result type for that and a detail."""

    domain: str
    policy: Policy | None
    failure: str = ""
    detail: str = ""

    @property
    def enforced(self) -> bool:
        return self.policy is not None and self.policy.mode == "enforce"

    def allows(self, host: str) -> bool:
        """May MX host ``host`` be used (any, without a policy)?"""
        return self.policy is None or self.policy.matches(host)

    @property
    def policy_type(self) -> str:
        """RFC 8460's policy-type for the report of this delivery's sessions."""
        if (self.policy is not None and self.policy.mode != "none") or self.failure:
            return "sts"
        return "no-policy-found"


class MtaSts:
    """The policies of the domains we deliver to (one per worker process)."""

    def __init__(self, cfg: Config, resolver: Resolver, *, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg.mta_sts
        self.resolver = resolver
        self.store = PolicyStore(cfg.path(cfg.mta_sts.cache_dir))
        self.clock = clock
        ca = cfg.tls_ca_path
        self.ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        self._memory: dict[str, Policy] = {}
        self._failed: dict[tuple[str, str], tuple[float, str, str]] = {}  # (domain, id) -> (retry at, type, detail)
        self._locks: dict[str, trio.Lock] = {}
        self.fetches = 0  # for tests

    async def lookup(self, domain: str) -> Lookup:
        domain = domain.lower().rstrip(".")
        lock = self._locks.setdefault(domain, trio.Lock())
        try:
            async with lock:  # one discovery per domain at a time: the others wait for its answer
                return await self._lookup(domain)
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(domain, None)

    async def _lookup(self, domain: str) -> Lookup:
        now = self.clock()
        cached = self._memory.get(domain)
        if cached is None:
            cached = await trio.to_thread.run_sync(self.store.load, domain)
            if cached is not None:
                self._memory[domain] = cached
        if cached is not None and cached.expired(now):
            self._memory.pop(domain, None)
            cached = None
        try:
            records = await self.resolver.txt(f"_mta-sts.{domain}")
        except DnsFailure:
            return Lookup(domain, cached)  # RFC 8461 5.1: the cached policy, if any
        policy_id = parse_txt(records)
        if policy_id is None or (cached is not None and cached.id == policy_id):
            return Lookup(domain, cached)
        failed = self._failed.get((domain, policy_id))
        if failed is not None and now < failed[0]:
            return Lookup(domain, cached, failed[1], failed[2])
        self.fetches += 1
        try:
            text = await fetch(
                domain,
                self.resolver,
                self.ctx,
                port=self.cfg.https_port,
                timeout=self.cfg.fetch_timeout,
                max_size=self.cfg.max_policy_size,
            )
            policy = parse_policy(text, domain, policy_id, now)
        except (FetchError, PolicyError) as e:
            kind, detail = (e.result_type, e.detail) if isinstance(e, FetchError) else ("sts-policy-invalid", str(e))
            if len(self._failed) > 10000:
                self._failed.clear()
            self._failed[(domain, policy_id)] = (now + FETCH_RETRY, kind, detail)
            maillog.mta_sts_fetch_failed(domain, policy_id, kind, detail, cached.id if cached else "")
            return Lookup(domain, cached, kind, detail)
        self._failed.pop((domain, policy_id), None)
        self._memory[domain] = policy
        await trio.to_thread.run_sync(self.store.save, policy)
        maillog.mta_sts_policy(domain, policy.id, policy.mode, policy.max_age, " ".join(policy.mx))
        return Lookup(domain, policy)
