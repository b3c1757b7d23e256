"""Inbound message authentication on ``mx`` listeners: SPF (RFC 7208), DKIM
verification (RFC 6376, RFC 8463), ARC verification (RFC 8617) and DMARC
(RFC 7489), recorded in one Authentication-Results field (RFC 8601).

Off by default (``mailauth.enabled``); see docs/mailauth.md for the defaults
and why.  The libraries: pyspf (module ``spf``) for SPF, dkimpy for DKIM and
ARC, authres for the result encoding, authheaders' DMARC record parser and
publicsuffix2 (with authheaders' copy of the Public Suffix List, loaded once)
for the organizational domain.  The DMARC evaluation itself (policy
discovery, alignment, pct) is the few lines of RFC 7489 6.6 below: authheaders'
``authenticate_message`` verifies only the first DKIM signature, cannot route
pyspf's lookups through our resolver, and re-reads the suffix list on every
call, so it is not used whole.

How a message is checked: the intake feeds every octet it stores after our
Received field to a ``MessageCheck`` (``feed``), which keeps them up to
``mailauth.dkim_max_size`` (beyond that the content is dropped and DKIM/ARC
are not verified: ``dkim=neutral``).  At the end of the data, ``run`` does
all of it in one worker-thread job (pyspf and dkimpy are synchronous) and
returns a ``Verdict``: the field to prepend, the results for the log and the
metrics, and the policy's answer.

DNS: every lookup -- pyspf's too, through its ``DNSLookup`` hook -- goes
through one synchronous dnspython resolver built from ``[dns]`` (name
servers, port, per-lookup timeout) and a per-message ``Lookups`` budget: at
most ``mailauth.max_lookups`` queries and ``mailauth.dns_budget`` seconds in
all, each query's lifetime cut to what is left.  A lookup past either bound
fails as a timeout, so the result is temperror and the session answers
within the budget.  A TXT answer larger than ``MAX_TXT`` octets is a
malformed record (permerror).
"""

from __future__ import annotations

import base64
import binascii
import importlib.resources
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dkim  # type: ignore[import-untyped]
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import publicsuffix2  # type: ignore[import-untyped]
import spf  # type: ignore[import-untyped]
import trio
from authheaders import dmarc_lookup  # type: ignore[import-untyped]

from ..config import Config, Dns
from ..resolver import configured
from . import results as ar
from .canon import relaxed_body_hash
from .dkim import from_domain

MAX_THREADS = 32  # messages checked at once per worker process
MAX_TXT = 8192  # octets in one name's TXT records (a DKIM RSA-4096 key is ~800)
_quiet = logging.getLogger("smtprs.mailauth.libraries")  # dkimpy logs every failure at ERROR: not ours to print
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


class DnsTemp(Exception):
    """A lookup that timed out, failed (SERVFAIL) or was past the budget."""


class BadRecord(Exception):
    """An answer we do not use: too large."""


# -- DNS ---------------------------------------------------------------------------
def make_resolver(cfg: Dns) -> dns.resolver.Resolver:
    """A synchronous resolver from ``[dns]`` (deliver/mx.py builds its async one the same way)."""
    r = configured(dns.resolver.Resolver, cfg)
    r.cache = dns.resolver.LRUCache(4096)  # thread-safe; answers kept for their TTL
    return r


class Lookups:
    """One message's DNS: bounded in count and in total time."""

    def __init__(self, resolver: dns.resolver.Resolver, budget: float, max_lookups: int, per_lookup: float) -> None:
        self._r = resolver
        self.deadline = time.monotonic() + budget
        self.left = max_lookups
        self.per_lookup = per_lookup
        self.count = 0

    def query(self, name: str, rdtype: str) -> list[Any]:
        """The records of ``name`` (empty if none: NXDOMAIN or no data); raises DnsTemp."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise DnsTemp("DNS time budget spent")
        if self.left <= 0:
            raise DnsTemp("DNS lookup budget spent")
        self.left -= 1
        self.count += 1
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return []
        try:
            answer = self._r.resolve(qname, rdtype, search=False, lifetime=min(self.per_lookup, remaining))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return []
        except dns.exception.Timeout:
            raise DnsTemp(f"DNS timeout for {name} {rdtype}") from None
        except dns.exception.DNSException as e:
            raise DnsTemp(f"DNS error for {name} {rdtype}: {type(e).__name__}") from None
        return list(answer)

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record of ``name``, its strings joined; raises DnsTemp, BadRecord."""
        records = [b"".join(rr.strings) for rr in self.query(name, "TXT")]
        if sum(len(r) for r in records) > MAX_TXT:
            raise BadRecord(f"TXT answer for {name} larger than {MAX_TXT} octets")
        return records


# pyspf asks DNS through its module-level DNSLookup; ours runs the lookups of
# the message being checked on this thread, through its Lookups.  On any other
# thread (no check of ours under way: a program that embeds smtprs and uses
# pyspf itself) pyspf's own lookup answers, as it would without smtprs.
_current = threading.local()
_pyspf_lookup = spf.DNSLookup


def _spf_lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> list[tuple[tuple[str, str], Any]]:
    lookups: Lookups | None = getattr(_current, "lookups", None)
    if lookups is None:
        return _pyspf_lookup(name, qtype, strict, timeout)  # type: ignore[no-any-return]
    try:
        if qtype in ("TXT", "SPF"):
            records = lookups.txt(name)
            return [((name, qtype), [r]) for r in records]
        rrs = lookups.query(name, qtype)
    except DnsTemp as e:
        raise spf.TempError(str(e)) from None
    except BadRecord as e:
        raise spf.PermError(str(e)) from None
    out: list[tuple[tuple[str, str], Any]] = []
    for rr in rrs:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rr.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rr.preference, rr.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), rr.target.to_text(True)))
    return out


spf.DNSLookup = _spf_lookup


# -- the organizational domain (RFC 7489 3.2) --------------------------------------
_psl: Any = None
_psl_lock = threading.Lock()


def org_domain(domain: str) -> str:
    """The organizational domain: the public suffix (Public Suffix List; an
    unlisted TLD is its own suffix, the list's ``*`` rule) and one label more."""
    global _psl
    if _psl is None:
        with _psl_lock:
            if _psl is None:
                ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
                with importlib.resources.as_file(ref) as path, open(path, encoding="utf-8") as fh:
                    _psl = publicsuffix2.PublicSuffixList(fh)
    d = domain.lower().rstrip(".")
    suffix = _psl.get_tld(d, strict=False) or d.rpartition(".")[2]
    if d == suffix or not d.endswith("." + suffix):
        return d
    head = d[: -len(suffix) - 1]
    return head.rpartition(".")[2] + "." + suffix


def aligned(a: str, b: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 3.1): strict, equal; relaxed, the same organizational domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if mode == "s":
        return a == b
    return org_domain(a) == org_domain(b)


# -- the results -------------------------------------------------------------------
@dataclass
class Result:
    method: str  # spf, dkim, arc, dmarc
    result: str  # RFC 8601 2.7 result value
    reason: str = ""
    props: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        d = self.props.get("d") or self.props.get("from") or self.props.get("domain") or ""
        return f"{self.label}={self.result}" + (f" ({d})" if d else "")

    @property
    def label(self) -> str:
        """The method as the log and the metrics name it: ``spf_helo`` for the
        HELO identity of a non-null sender, else the method."""
        return "spf_helo" if self.props.get("identity") == "helo" else self.method


@dataclass
class Verdict:
    """What the checks found, and what the policy does with it."""

    results: list[Result]
    field: bytes  # the Authentication-Results field to prepend
    reply: tuple[int, str, str] | None = None  # a refusal: code, enhanced status, text
    quarantine: bytes = b""  # the quarantine marker field, when the policy asks for it
    lookups: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return " ".join(r.summary() for r in self.results)


# -- SPF (RFC 7208) ----------------------------------------------------------------
def check_spf(lookups: Lookups, ip: str, sender: str, helo: str) -> Result:
    """SPF for MAIL FROM, or for the HELO identity when MAIL FROM is null (RFC 7208 2.4)."""
    mailfrom = sender.rpartition("@")[2].lower() if sender else ""
    props = {"mailfrom": mailfrom} if mailfrom else {"helo": helo}
    if not sender and not helo:
        return Result("spf", "none", "no identity", props)
    try:
        q = spf.query(i=ip, s=sender, h=helo, timeout=lookups.per_lookup, querytime=0)
        result, _code, explanation = q.check()
    except Exception as e:  # pyspf on input it did not expect: a defined result
        return Result("spf", "permerror", f"{type(e).__name__}: {e}", props)
    result = {"error": "temperror", "unknown": "permerror", "ambiguous": "permerror"}.get(result, result)
    if result not in ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"):
        result = "permerror"
    reason = str(explanation) if result not in ("pass", "none") else ""
    props["domain"] = mailfrom or helo
    return Result("spf", result, reason, props)


def helo_domain(helo: str) -> str:
    """The HELO name if SPF can check it (RFC 7208 2.3: a fully qualified
    domain name; not an address literal, not a bare label), else ""."""
    name = helo.rstrip(".").lower()
    if not name or name.startswith("[") or "." not in name or len(name) > 253:
        return ""
    labels = name.split(".")
    if labels[-1].isdigit() or not all(0 < len(x) <= 63 for x in labels):
        return ""  # an IPv4 address given as a name, or an empty label
    return name


def check_spf_helo(lookups: Lookups, ip: str, helo: str) -> Result | None:
    """SPF for the HELO identity of a non-null sender (RFC 7208 2.3, which
    recommends it): a second result, recorded as ``smtp.helo``; DMARC and
    the policy read the MAIL FROM result only.  None when the HELO name is
    not a domain SPF can check."""
    name = helo_domain(helo)
    if not name:
        return None
    r = check_spf(lookups, ip, "", name)
    r.props["identity"] = "helo"
    return r


# -- DKIM (RFC 6376) ---------------------------------------------------------------
class _KeyLookup:
    """dkimpy's dnsfunc for one signature: what the key lookup found, for the result."""

    def __init__(self, lookups: Lookups) -> None:
        self.lookups = lookups
        self.temp = ""
        self.bad = ""
        self.missing = False
        self.record: bytes | None = None

    def __call__(self, name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = self.lookups.txt(name.decode("ascii", "replace").rstrip("."))
        except DnsTemp as e:
            self.temp = str(e)
            raise dkim.DnsTimeoutError(str(e)) from None
        except BadRecord as e:
            self.bad = str(e)
            return None
        if not records:
            self.missing = True
            return None
        self.record = records[0]  # more than one is undefined (RFC 6376 3.6.2.2): the first
        return self.record


def _text(v: Any) -> str:
    return v.decode("ascii", "replace") if isinstance(v, bytes) else str(v or "")


_WSP = re.compile(rb"\s+")


def _verify_one(d: Any, idx: int, dnsfunc: _KeyLookup, relaxed_hash: Callable[[], bytes]) -> bool:
    """dkimpy's ``DKIM.verify(idx)`` step by step, with one change: the body hash
    of a relaxed, SHA-256, whole-body (no l=) signature is checked against our
    relaxed body hash (canon.py: the same octets as dkimpy's, tested against
    it in tests/unit/test_dkim.py, computed once per message and ~20 times
    faster than dkimpy's regular expressions, which held the GIL ~80 ms per
    MiB); the signature then goes to dkimpy without bh= (it skips only the
    body: the header hash covers the field's text, bh= included)."""
    prep = d.verify_headerprep(idx)
    if not prep:
        return False
    sig, include, sigheaders = prep
    c = sig.get(b"c", b"simple/simple").split(b"/")
    if len(c) == 2 and c[1] == b"relaxed" and b"l" not in sig and sig.get(b"a", b"").endswith(b"-sha256"):
        try:
            bh = base64.b64decode(_WSP.sub(b"", sig[b"bh"]), validate=True)
        except (binascii.Error, ValueError) as e:
            raise dkim.MessageFormatError(f"bh= not base64: {e}") from None
        if bh != relaxed_hash():
            raise dkim.ValidationError("body hash mismatch")
        sig = {k: v for k, v in sig.items() if k != b"bh"}
    return bool(d.verify_sig(sig, include, sigheaders[idx], dnsfunc))


Parsed = tuple[list[list[bytes]], bytes]  # dkimpy's (header fields, body)


def parse(message: bytes) -> Parsed:
    """``dkim.rfc822_parse(message)``, with the body sliced rather than split into
    lines and joined again when every line ends in CRLF (what SMTP carries):
    the same result at a fraction of the cost.  Raises dkim.MessageFormatError."""
    if message.count(b"\n") != message.count(b"\r\n"):
        parsed: Parsed = dkim.rfc822_parse(message)
        return parsed
    if message.startswith(b"\r\n"):
        end = 0
    else:
        i = message.find(b"\r\n\r\n")
        end = i + 2 if i >= 0 else len(message)
    headers = dkim.rfc822_parse(message[:end])[0]
    return headers, message[end + 2 :]


def _load(signer: Any, parsed: Parsed) -> Any:
    signer.headers = [list(h) for h in parsed[0]]
    signer.body = parsed[1]
    return signer


def check_dkim(lookups: Lookups, message: bytes | Parsed, max_signatures: int) -> list[Result]:
    """One result per DKIM-Signature field (at most ``max_signatures``, the topmost first)."""
    try:
        parsed = parse(message) if isinstance(message, bytes) else message
    except Exception as e:
        return [Result("dkim", "permerror", f"message not parsed: {e}")]
    d = _load(dkim.DKIM(b"", logger=_quiet, minkey=1024, timeout=lookups.per_lookup), parsed)
    count = sum(1 for n, _ in d.headers if n.lower() == b"dkim-signature")
    hashed: list[bytes] = []

    def relaxed_hash() -> bytes:
        if not hashed:
            hashed.append(relaxed_body_hash(d.body))
        return hashed[0]

    out = []
    for idx in range(min(count, max_signatures)):
        key = _KeyLookup(lookups)
        d.signature_fields = {}
        try:
            ok = _verify_one(d, idx, key, relaxed_hash)
            reason = "" if ok else "signature did not verify"
            result = "pass" if ok else "fail"
        except dkim.ValidationError as e:
            if "body hash mismatch" in str(e):
                result, reason = "fail", "body hash mismatch"
            else:
                result, reason = "permerror", str(e)
        except dkim.DKIMException as e:
            result, reason = "permerror", f"{type(e).__name__}: {e}"
        except Exception as e:  # a malformed field dkimpy did not expect
            result, reason = "permerror", f"{type(e).__name__}: {e}"
        if result == "fail" and reason == "signature did not verify":
            if key.temp:
                result, reason = "temperror", key.temp
            elif key.bad:
                result, reason = "permerror", key.bad
            elif key.missing:
                result, reason = "permerror", "no key for signature"  # RFC 6376 6.1.2
            elif key.record is not None:
                try:
                    dkim.evaluate_pk(b"", key.record)
                except Exception as e:
                    result, reason = "permerror", f"bad key record: {e}"
        f = d.signature_fields or {}
        props = {"d": _text(f.get(b"d")).lower(), "s": _text(f.get(b"s")), "a": _text(f.get(b"a"))}
        out.append(Result("dkim", result, reason, props))
    if count > max_signatures:
        out.append(Result("dkim", "neutral", f"{count - max_signatures} more signatures not verified"))
    return out


# -- ARC (RFC 8617) ----------------------------------------------------------------
def check_arc(lookups: Lookups, parsed: Parsed) -> Result:
    key = _KeyLookup(lookups)
    try:
        a = _load(dkim.ARC(b"", logger=_quiet, minkey=1024, timeout=lookups.per_lookup), parsed)
        cv, _data, why = a.verify(dnsfunc=key)
    except Exception as e:
        return Result("arc", "fail", f"{type(e).__name__}: {e}")
    if cv == dkim.CV_Pass:
        return Result("arc", "pass")
    if cv == dkim.CV_None:
        return Result("arc", "none")
    return Result("arc", "fail", key.temp or _text(why))


# -- DMARC (RFC 7489 6.6) ----------------------------------------------------------
def _dmarc_record(lookups: Lookups, domain: str) -> dict[str, str] | None:
    """The DMARC record of ``domain``, parsed; None if there is none (or more than
    one, 6.6.3); raises DnsTemp, BadRecord, dmarc_lookup.DMARCException."""
    records = [r for r in lookups.txt("_dmarc." + domain) if r[:8] == b"v=DMARC1" and r[8:9] in (b"", b";", b" ")]
    if len(records) != 1:
        return None
    tags: dict[str, str] = dmarc_lookup.answer_to_dict(records[0].decode("ascii", "replace"))
    return tags


def check_dmarc(
    lookups: Lookups,
    header_from: str | None,
    spf: Result,
    dkims: list[Result],
    dkim_unverified: bool,
    rng: Callable[[], float] = random.random,
) -> Result:
    """The DMARC result for the From: domain; props: from, policy (the policy
    to apply, after pct), p (as published)."""
    if header_from is None:
        return Result("dmarc", "permerror", "no single From: domain")
    props = {"from": header_from}
    org = org_domain(header_from)
    try:
        record = _dmarc_record(lookups, header_from)
        policy_tag = "p"
        if record is None and org != header_from:
            record = _dmarc_record(lookups, org)
            policy_tag = "sp"
    except DnsTemp as e:
        return Result("dmarc", "temperror", str(e), props)
    except (BadRecord, dmarc_lookup.DMARCException) as e:
        return Result("dmarc", "permerror", f"DMARC record: {e}", props)
    if record is None:
        return Result("dmarc", "none", "", props)
    p = record.get("p", "")
    if p not in ("none", "quarantine", "reject"):
        if "rua" in record:
            p = "none"  # RFC 7489 6.6.3 step 6
        else:
            return Result("dmarc", "permerror", f"DMARC record: invalid p={p!r}", props)
    policy = p
    if policy_tag == "sp" and record.get("sp") in ("none", "quarantine", "reject"):
        policy = record["sp"]
    adkim = record.get("adkim", "r") if record.get("adkim") in ("r", "s") else "r"
    aspf = record.get("aspf", "r") if record.get("aspf") in ("r", "s") else "r"
    try:
        pct = max(0, min(100, int(record.get("pct", "100"))))
    except ValueError:
        pct = 100
    props["p"] = policy
    if any(r.result == "pass" and aligned(r.props.get("d", ""), header_from, adkim) for r in dkims):
        return Result("dmarc", "pass", "", {**props, "policy": "none"})
    if spf.result == "pass" and aligned(spf.props.get("domain", ""), header_from, aspf):
        return Result("dmarc", "pass", "", {**props, "policy": "none"})
    if dkim_unverified:
        return Result("dmarc", "permerror", "DKIM not verified: message larger than mailauth.dkim_max_size", props)
    if pct < 100 and rng() * 100 >= pct:  # RFC 7489 6.6.4: the next policy down
        policy = {"reject": "quarantine", "quarantine": "none"}.get(policy, policy)
    return Result("dmarc", "fail", f"p={p}" + (f" pct={pct}" if pct < 100 else ""), {**props, "policy": policy})


# -- the checker -------------------------------------------------------------------
class Checker:
    """The inbound checks of one configuration."""

    def __init__(self, cfg: Config, hostname: str, resolver: dns.resolver.Resolver | None = None) -> None:
        m = cfg.mailauth
        self.cfg = m
        self.authserv_id = (m.authserv_id or hostname).lower().rstrip(".")
        self.resolver = resolver or make_resolver(cfg.dns)
        self.per_lookup = cfg.dns.timeout
        self._limiter: trio.CapacityLimiter | None = None

    @classmethod
    def for_config(cls, cfg: Config, hostname: str) -> Checker | None:
        return cls(cfg, hostname) if cfg.mailauth.enabled else None

    def start(self, ip: str, sender: str, helo: str) -> MessageCheck:
        return MessageCheck(self, ip, sender, helo)

    def evaluate(self, message: bytes | None, ip: str, sender: str, helo: str, header: bytes | None = None) -> Verdict:
        """Every check of one message (synchronous: a worker thread's job).
        ``message`` None: larger than dkim_max_size, DKIM and ARC not verified;
        ``header`` is then its header block, if it was seen (for DMARC's From:)."""
        m = self.cfg
        started = time.monotonic()
        lookups = Lookups(self.resolver, m.dns_budget, m.max_lookups, min(self.per_lookup, m.dns_budget))
        _current.lookups = lookups  # pyspf's lookups on this thread go through ours (_spf_lookup)
        try:
            return self._evaluate(lookups, started, message, ip, sender, helo, header)
        finally:
            _current.lookups = None

    def _evaluate(
        self,
        lookups: Lookups,
        started: float,
        message: bytes | None,
        ip: str,
        sender: str,
        helo: str,
        header: bytes | None,
    ) -> Verdict:
        m = self.cfg
        spf_r = check_spf(lookups, ip, sender, helo)
        header_from: str | None = None
        has_arc = False
        if message is not None:
            try:
                parsed = parse(message)
            except Exception as e:  # a header line dkimpy cannot parse
                parsed = ([], b"")
                problem = f"header not parsed: {e}"
            else:
                problem = ""
            headers = parsed[0]
            header_from = from_domain([(n, v) for n, v in headers])
            has_arc = any(n.lower() == b"arc-seal" for n, _ in headers)
            has_dkim = any(n.lower() == b"dkim-signature" for n, _ in headers)
            dkims = check_dkim(lookups, parsed, m.max_signatures) if has_dkim else []
            if problem:
                dkims = [Result("dkim", "permerror", problem)]
            elif not dkims:
                dkims = [Result("dkim", "none")]
            arc_r = check_arc(lookups, parsed) if has_arc else Result("arc", "none")
        else:
            try:
                header_from = from_domain([(n, v) for n, v in parse(header)[0]]) if header is not None else None
            except Exception:
                header_from = None
            dkims = [Result("dkim", "neutral", "message larger than mailauth.dkim_max_size: not verified")]
            arc_r = Result("arc", "none", "not verified: message too large")
        dmarc_r = check_dmarc(lookups, header_from, spf_r, dkims, message is None)
        if message is None and header is None:
            dmarc_r = Result("dmarc", "none", "header block larger than mailauth.dkim_max_size: not read")
        helo_r = None
        if sender and m.spf.check_helo:  # last: what the DNS budget has left (a null sender's SPF is its HELO)
            helo_r = check_spf_helo(lookups, ip, helo)
        spfs = [spf_r] if helo_r is None else [spf_r, helo_r]
        results = [*spfs, *dkims, *([arc_r] if has_arc or message is None else []), dmarc_r]
        verdict = Verdict(results, self.field(results), lookups=lookups.count)
        self._policy(verdict, spf_r, dmarc_r)
        verdict.seconds = time.monotonic() - started
        return verdict

    async def run(self, check: MessageCheck) -> Verdict:
        """``check.evaluate()`` in a worker thread: at most MAX_THREADS messages
        of this worker at once (their threads mostly wait for DNS), the rest
        wait for a slot.  Trio's ``to_thread`` rather than ``_threads.run_sync``:
        the latter has no limiter, as its callers run one batch at a time.  An
        exception in the libraries gives temperror results, never a lost message."""
        if self._limiter is None:
            self._limiter = trio.CapacityLimiter(MAX_THREADS)
        try:
            return await trio.to_thread.run_sync(check.evaluate, limiter=self._limiter)
        except Exception as e:  # pragma: no cover - each check catches its own
            why = f"internal error: {type(e).__name__}"
            results = [Result(m, "temperror", why) for m in ("spf", "dkim", "dmarc")]
            return Verdict(results, self.field(results))

    def field(self, results: list[Result]) -> bytes:
        objs: list[object] = []
        for r in results:
            if r.method == "spf":
                objs.append(ar.spf_result(r.result, r.reason, r.props.get("mailfrom", ""), r.props.get("helo", "")))
            elif r.method == "dkim":
                objs.append(
                    ar.dkim_result(r.result, r.reason, r.props.get("d", ""), r.props.get("s", ""), r.props.get("a", ""))
                )
            elif r.method == "arc":
                objs.append(ar.arc_result(r.result, r.reason))
            else:
                objs.append(ar.dmarc_result(r.result, r.reason, r.props.get("from", ""), r.props.get("p", "")))
        return ar.field(self.authserv_id, objs)

    def _policy(self, v: Verdict, spf_r: Result, dmarc_r: Result) -> None:
        """The configured answers (docs/mailauth.md, "Policy")."""
        m = self.cfg
        domain = dmarc_r.props.get("from", "")
        if dmarc_r.result == "fail":
            policy = dmarc_r.props.get("policy", "none")
            if policy == "reject" and m.dmarc.reject_policy == "reject":
                v.reply = (550, "5.7.1", f"Message rejected: DMARC policy of {domain} (p=reject) not met")
                return
            if (policy == "reject" and m.dmarc.reject_policy == "quarantine-header") or (
                policy == "quarantine" and m.dmarc.reject_policy != "accept"
            ):
                v.quarantine = (
                    ar.QUARANTINE_FIELD + f": dmarc=fail header.from={domain} policy.dmarc={policy}\r\n".encode()
                )
        sdomain = spf_r.props.get("domain", "")
        if spf_r.result == "fail" and m.spf.fail_policy == "reject":
            v.reply = (550, "5.7.23", f"Message rejected: SPF check failed for {sdomain}")  # RFC 7372
        elif spf_r.result == "temperror" and m.spf.temperror_policy == "defer":
            v.reply = (451, "4.7.24", f"SPF check of {sdomain} could not be completed; try again later")


class MessageCheck:
    """One message on its way to the spool: its content kept (up to the cap) for the checks."""

    def __init__(self, checker: Checker, ip: str, sender: str, helo: str) -> None:
        self.checker = checker
        self.ip, self.sender, self.helo = ip, sender, helo
        self._data: bytearray | None = bytearray()
        self._header: bytes | None = None  # the header block, kept when the rest was dropped
        self._cap = checker.cfg.dkim_max_size

    def feed(self, data: bytes) -> None:
        buf = self._data
        if buf is None:
            return
        buf += data
        if len(buf) > self._cap:
            # beyond the cap: DKIM and ARC not verified (dkim=neutral), the
            # content freed at once; the header block is kept for DMARC's From:
            i = 0 if buf.startswith(b"\r\n") else buf.find(b"\r\n\r\n") + 2
            self._header = bytes(buf[:i]) if i >= 2 else None
            self._data = None

    def evaluate(self) -> Verdict:
        data, self._data = self._data, None
        message = None if data is None else bytes(data)
        del data
        return self.checker.evaluate(message, self.ip, self.sender, self.helo, self._header)
