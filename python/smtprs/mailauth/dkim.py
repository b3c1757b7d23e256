"""DKIM signing of outbound mail (RFC 6376, RFC 8463 for Ed25519).

What is signed: a message received from an authenticated client (SMTP AUTH)
or from ``relay.trusted_networks``, on any listener but an LMTP one, whose
From: address is in a domain that has a key in ``[[dkim.keys]]`` (the key of
the domain itself, else of its nearest parent domain that has one: relaxed
DMARC alignment).  Nothing else is signed: a message from the Internet
claiming one of our domains in From: must not get our signature.

How (see ARCHITECTURE.md, "DKIM signing"): the intake hands every octet it
writes to the spool after our Received field to a ``MessageSigner`` as well.
It keeps the header block (bounded by smtpd.max_header_size, as the core
is) and feeds the body to a streaming relaxed body hash (canon.py), so a
large message is never held in memory; at the end of the data dkimpy builds
and signs the DKIM-Signature field from the header block and the body hash
(in a worker thread), and the intake prepends it to the spooled message
before the commit: it is signed once, before the 250, and every delivery
attempt sends the same bytes.
"""

from __future__ import annotations

import base64
import email.utils
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..config import Config
from ..errors import ConfigError
from . import keys
from .canon import RelaxedBodyHash

import dkim  # type: ignore[import-untyped]  # isort: skip
import dkim.crypto  # type: ignore[import-untyped]  # isort: skip
import nacl.encoding  # isort: skip
import nacl.signing  # isort: skip


@dataclass(frozen=True)
class Key:
    domain: str
    selector: str
    algorithm: str
    pk: Any  # what dkimpy's gen_header signs with: its parsed RSA key, or a PyNaCl SigningKey


def _parsed(k: keys.SigningKey) -> Any:
    if k.algorithm == "rsa-sha256":
        return dkim.crypto.parse_pem_private_key(k.private)
    return nacl.signing.SigningKey(k.private, encoder=nacl.encoding.Base64Encoder)


class _Dkim(dkim.DKIM):  # type: ignore[misc]
    def sign_hashed(self, key: Key, include: Sequence[bytes], body_hash: bytes) -> bytes:
        """dkimpy's ``DKIM.sign`` with relaxed/relaxed, for a body already hashed:
        the same fields in the same order, then dkimpy's own ``gen_header``
        (header canonicalization, hashing, signing, folding)."""
        policy = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
        self.hasher = dkim.HASH_ALGORITHMS[self.signature_algorithm]
        include = tuple(include)
        self.include_headers = include
        fields = [
            (b"v", b"1"),
            (b"a", self.signature_algorithm),
            (b"c", policy.to_c_value()),
            (b"d", key.domain.encode()),
            (b"q", b"dns/txt"),
            (b"s", key.selector.encode()),
            (b"t", str(int(time.time())).encode("ascii")),
            (b"h", b" : ".join(include)),
            (b"bh", base64.b64encode(body_hash)),
            # as dkimpy: b= folds onto a line of its own, so that filling it
            # in does not move the folding of the tags before it
            (b"b", b"0" * 60),
        ]
        value: bytes = self.gen_header(fields, include, policy, b"DKIM-Signature", key.pk)
        self.domain, self.selector, self.signature_fields = key.domain, key.selector, dict(fields)
        return b"DKIM-Signature: " + value


def from_domain(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The domain of the From: field (RFC 5322 3.6.2), lower case; None if there
    is no From:, more than one, or its addresses are not all in one domain."""
    values = [v for n, v in headers if n.strip().lower() == b"from"]
    if len(values) != 1:
        return None
    text = values[0].decode("utf-8", "replace").replace("\r\n", "")
    domains = {
        a.rpartition("@")[2].strip().lower().rstrip(".") for _, a in email.utils.getaddresses([text]) if "@" in a
    }
    if len(domains) != 1:
        return None
    (domain,) = domains
    return domain or None


class Signer:
    """The configured keys and header lists: one per configuration."""

    def __init__(self, cfg: Config) -> None:
        d = cfg.dkim
        self.max_header = cfg.smtpd.max_header_size
        self._keys: dict[str, Key] = {}
        for i, k in enumerate(d.keys):
            try:
                loaded = keys.load_key(cfg.path(k.key_file), k.algorithm)
            except keys.DkimKeyError as e:
                raise ConfigError(f"dkim.keys[{i}].key_file: {e}") from None
            self._keys.setdefault(
                k.domain.lower().rstrip("."),
                Key(k.domain.lower().rstrip("."), k.selector, k.algorithm, _parsed(loaded)),
            )
        self.sign_headers = frozenset(h.lower() for h in d.sign_headers)
        self.oversign = [h.lower().encode() for h in d.oversign_headers]
        # signing is CPU work: at most one signature per CPU at a time
        self.limiter = trio.CapacityLimiter(os.cpu_count() or 1)
        self.signed = 0

    @classmethod
    def for_config(cls, cfg: Config) -> Signer | None:
        return cls(cfg) if cfg.dkim.keys else None

    def key_for(self, domain: str) -> Key | None:
        """The key of ``domain``, else of its nearest parent domain that has one."""
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            k = self._keys.get(".".join(labels[i:]))
            if k is not None:
                return k
        return None

    def start(self) -> MessageSigner:
        return MessageSigner(self)

    def sign(self, header: bytes, body_hash: bytes) -> tuple[bytes | None, str]:
        """The DKIM-Signature field (CRLF-terminated) for a message, with what was
        done: ``d=... s=... a=...``, or why it is not signed (the field is None).
        Runs in a worker thread."""
        try:
            parsed = dkim.rfc822_parse(header + b"\r\n")[0]
        except dkim.MessageFormatError as e:
            return None, f"header not parsed: {e}"
        domain = from_domain(parsed)
        if domain is None:
            return None, "no single From: domain"
        key = self.key_for(domain)
        if key is None:
            return None, f"no key for {domain}"
        include = [n.lower() for n, _ in parsed if n.lower().decode("ascii", "replace") in self.sign_headers]
        include += self.oversign
        try:
            d = _Dkim(signature_algorithm=key.algorithm.encode(), linesep=b"\r\n")
            d.headers = parsed
            field: bytes = d.sign_hashed(key, include, body_hash)
        except dkim.DKIMException as e:
            return None, f"dkimpy: {e}"
        return field, f"d={key.domain} s={key.selector} a={key.algorithm}"


class MessageSigner:
    """One message's content on its way to the spool: the header block kept,
    the body hashed.  ``feed`` every octet after our Received field, then
    ``signature``."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self._header = bytearray()
        self._scanned = 0
        self._body: RelaxedBodyHash | None = None  # set once the header block's end was seen
        self.problem = ""  # why the message cannot be signed, once known

    def feed(self, data: bytes) -> None:
        body = self._body
        if body is not None:
            body.update(data)
            return
        if self.problem:
            return
        h = self._header
        h += data
        end = self._header_end()
        if end is None:
            if len(h) > self._signer.max_header + 4:
                self.problem = "header block too large"
                self._header = bytearray()
            return
        header_len, body_start = end
        self._body = RelaxedBodyHash()
        self._body.update(bytes(h[body_start:]))
        del h[header_len:]

    def _header_end(self) -> tuple[int, int] | None:
        """(length of the header block, start of the body) once the empty line is seen."""
        h = self._header
        if h.startswith(b"\n"):
            return 0, 1
        if h.startswith(b"\r\n"):
            return 0, 2
        i = h.find(b"\n", max(0, self._scanned - 2))
        while i >= 0:
            if h.startswith(b"\n", i + 1):
                return i + 1, i + 2
            if h.startswith(b"\r\n", i + 1):
                return i + 1, i + 3
            if i + 2 >= len(h):
                break  # cannot tell yet
            i = h.find(b"\n", i + 1)
        self._scanned = len(h)
        return None

    async def signature(self) -> tuple[bytes | None, str]:
        """At the end of the data: the DKIM-Signature field, or None and why not."""
        if self.problem:
            return None, self.problem
        body = self._body
        if body is None:  # the message is all header (or nothing)
            body = RelaxedBodyHash()
        body_hash = body.digest()
        header = bytes(self._header)
        signer = self._signer
        result = await trio.to_thread.run_sync(signer.sign, header, body_hash, limiter=signer.limiter)
        if result[0] is not None:
            signer.signed += 1
        return result
