"""DKIM signing of outbound mail (RFC 6376, RFC 8463 for Ed25519).

What is signed: a message received from an authenticated client (SMTP AUTH)
or from ``relay.trusted_networks``, on any listener but an LMTP one, whose
From: address is in a domain that has a key in ``[[dkim.keys]]`` (the key of
the domain itself, else of its nearest parent domain that has one: relaxed
DMARC alignment).  Nothing else is signed: a message from the Internet
claiming one of our domains in From: must not get our signature.

A domain with several keys (say one rsa-sha256 and one ed25519-sha256, as
RFC 8463 advises while verifiers that know only RSA remain) gets one
DKIM-Signature field per key, in the order of ``[[dkim.keys]]``; each is a
signature of its own over the same header block and body hash.  Domains are
compared, and signed (d=), as A-labels: a From: domain or a configured domain
in Unicode (``bücher.example``) is ``xn--bcher-kva.example`` (RFC 8616).

How (see ARCHITECTURE.md, "DKIM signing"): the intake hands every octet it
writes to the spool after our Received field to a ``MessageSigner`` as well.
It keeps the header block (bounded by smtpd.max_header_size, as the core
is) and feeds the body to a streaming relaxed body hash (canon.py), so a
large message is never held in memory; at the end of the data dkimpy's
functions build the DKIM-Signature field from the header block and the body
hash, ``cryptography`` signs it, and the intake prepends it to the spooled
message before the commit: it is signed once, before the 250, and every
delivery attempt sends the same bytes.

When the content was rewritten before the commit (a milter's header or body
change, see smtprs/rewrite.py), the streamed signer saw the old bytes and is
dropped: ``Signer.sign_content`` reads the new spool writer's staged content
back in chunks (in a worker thread: file reads and the body hash of a large
message) through a fresh ``MessageSigner``, so the signature is over the
final content.  Our trace fields (Received, Authentication-Results) are then
part of the header block it keeps, which changes nothing signed unless
``dkim.sign_headers`` names them.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

import dkim  # type: ignore[import-untyped]
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from .. import _threads
from ..config import Config
from ..content import Content
from ..errors import ConfigError
from . import keys
from .canon import RelaxedBodyHash

CONTENT_CHUNK = 256 * 1024  # sign_content's reads


@dataclass(frozen=True)
class Key:
    domain: str
    selector: str
    algorithm: str
    crypto: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    def sign(self, digest: bytes) -> bytes:
        """The signature of a SHA-256 digest: RSASSA-PKCS1-v1_5 (RFC 6376 3.3.1),
        or Ed25519 over the digest (RFC 8463 3)."""
        if isinstance(self.crypto, rsa.RSAPrivateKey):
            return self.crypto.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self.crypto.sign(digest)


_SIG = b"DKIM-Signature"
# A header block of thousands of To: fields would make a DKIM-Signature field
# as long (h= names each) and take ~8 µs per field to sign: such a message is
# sent unsigned, with the reason logged, rather than signed with a 100 KB field.
MAX_SIGNED_FIELDS = 500
_RELAXED = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


def signature_field(key: Key, headers: list[tuple[bytes, bytes]], include: Sequence[bytes], body_hash: bytes) -> bytes:
    """The DKIM-Signature field (CRLF-terminated) for ``headers`` (dkimpy's
    parse of the header block) and a body already hashed: dkimpy's ``DKIM.sign``
    and ``gen_header`` step by step -- the same tags in the same order (no i=, no
    l=), its folding, its header selection and relaxed canonicalization and
    hashing -- with the signature itself from ``Key.sign``."""
    fields = [
        (b"v", b"1"),
        (b"a", key.algorithm.encode()),
        (b"c", _RELAXED.to_c_value()),
        (b"d", key.domain.encode()),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode()),
        (b"t", str(int(time.time())).encode("ascii")),
        (b"h", b" : ".join(include)),
        (b"bh", base64.b64encode(body_hash)),
        # as dkimpy: b= folds onto a line of its own, so that filling it in
        # does not move the folding of the tags before it
        (b"b", b"0" * 60),
    ]
    value = dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=len(_SIG), linesep=b"\r\n")
    value = dkim.RE_BTAG.sub(b"\\1", value)
    h = hashlib.sha256()
    dkim.hash_headers(
        h, _RELAXED, _RELAXED.canonicalize_headers(headers), tuple(include), (_SIG, b" " + value), dict(fields)
    )
    fields[-1] = (b"b", base64.b64encode(key.sign(h.digest())))
    value = b"; ".join(b"=".join(x) for x in fields) + b"\r\n"
    folded: bytes = dkim.fold(value, namelen=len(_SIG), linesep=b"\r\n")
    return _SIG + b": " + folded


def from_domain(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The domain of the From: field (RFC 5322 3.6.2), lower case, a Unicode
    domain (a UTF-8 header, RFC 6532) as its A-label; None if there is no From:,
    more than one, its addresses are not all in one domain, or that domain is
    not a valid IDN."""
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
    if not domain:
        return None
    try:
        return keys.a_label(domain)
    except keys.DkimKeyError:
        return None


class Signer:
    """The configured keys and header lists: one per configuration."""

    def __init__(self, cfg: Config) -> None:
        d = cfg.dkim
        self.max_header = cfg.smtpd.max_header_size
        self._keys: dict[str, list[Key]] = {}  # A-label domain -> its keys, in configuration order
        for i, k in enumerate(d.keys):
            try:
                domain = keys.a_label(k.domain)
            except keys.DkimKeyError as e:
                raise ConfigError(f"dkim.keys[{i}].domain: {e}") from None
            try:
                loaded = keys.load_key(cfg.path(k.key_file), k.algorithm)
            except keys.DkimKeyError as e:
                raise ConfigError(f"dkim.keys[{i}].key_file: {e}") from None
            self._keys.setdefault(domain, []).append(Key(domain, k.selector, k.algorithm, loaded.crypto))
        self.sign_headers = frozenset(h.lower() for h in d.sign_headers)
        self.oversign = [h.lower().encode() for h in d.oversign_headers]
        self.signed = 0

    @classmethod
    def for_config(cls, cfg: Config) -> Signer | None:
        return cls(cfg) if cfg.dkim.keys else None

    def keys_for(self, domain: str) -> list[Key]:
        """The keys of ``domain`` (Unicode or A-label), else of its nearest
        parent domain that has any; empty if none has."""
        try:
            name = keys.a_label(domain)
        except keys.DkimKeyError:
            return []
        labels = name.split(".")
        for i in range(len(labels)):
            found = self._keys.get(".".join(labels[i:]))
            if found:
                return found
        return []

    def key_for(self, domain: str) -> Key | None:
        """The first key of ``domain`` (see ``keys_for``), or None."""
        found = self.keys_for(domain)
        return found[0] if found else None

    def start(self) -> MessageSigner:
        return MessageSigner(self)

    async def sign_content(self, content: Content) -> tuple[bytes | None, str]:
        """The DKIM-Signature field(s) of a spooled message (the final content,
        after a rewrite), read in chunks of 256 KiB in a worker thread; None and
        why when it cannot be signed (or read: an OSError is said, not raised)."""

        def feed() -> MessageSigner | str:
            ms = MessageSigner(self)
            try:
                with content.open() as fh:
                    while chunk := fh.read(CONTENT_CHUNK):
                        ms.feed(chunk)
            except OSError as e:
                return f"content not read: {e.strerror or e}"
            return ms

        got = await _threads.run_sync(feed)
        if isinstance(got, str):
            return None, got
        return await got.signature()

    def prepare(self, header: bytes) -> tuple[list[Key], list[tuple[bytes, bytes]], list[bytes]] | str:
        """The keys, dkimpy's parse of the header block and the h= list for a
        message; or why it is not signed."""
        try:
            parsed: list[tuple[bytes, bytes]] = dkim.rfc822_parse(header + b"\r\n")[0]
        except dkim.MessageFormatError as e:
            return f"header not parsed: {e}"
        domain = from_domain(parsed)
        if domain is None:
            return "no single From: domain"
        found = self.keys_for(domain)
        if not found:
            return f"no key for {domain}"
        include = [n.lower() for n, _ in parsed if n.lower().decode("ascii", "replace") in self.sign_headers]
        if len(include) > MAX_SIGNED_FIELDS:
            return f"{len(include)} header fields to sign (at most {MAX_SIGNED_FIELDS})"
        return found, parsed, include + self.oversign

    def sign(self, header: bytes, body_hash: bytes) -> tuple[bytes | None, str]:
        """The DKIM-Signature field(s) (each CRLF-terminated; one per key of the
        domain) for a message, with what was done (``d=... s=... a=...``, joined
        by ``, ``), or None and why it is not signed."""
        prepared = self.prepare(header)
        if isinstance(prepared, str):
            return None, prepared
        return _fields(*prepared, body_hash)

    async def sign_async(self, header: bytes, body_hash: bytes) -> tuple[bytes | None, str]:
        """``sign`` as the intake calls it: on the event loop's thread.

        Measured (benches/cpu_per_message.py --mode durable, 1 KiB, RSA-2048,
        one worker on two CPUs): 768 msgs/s signing here, 679 through
        ``_threads.run_sync`` and 594 through ``trio.to_thread.run_sync``.  The
        body was hashed while it streamed, so what is left does not grow with
        the message (~0.35 ms for RSA-2048, of which OpenSSL's private-key
        operation is ~0.25 ms; ~0.1 ms for Ed25519), and a thread hop costs more
        than it frees when there is a worker process per CPU (the default)."""
        prepared = self.prepare(header)
        if isinstance(prepared, str):
            return None, prepared
        result = _fields(*prepared, body_hash)
        if result[0] is not None:
            self.signed += 1
        return result


def _fields(
    found: list[Key], parsed: list[tuple[bytes, bytes]], include: list[bytes], body_hash: bytes
) -> tuple[bytes | None, str]:
    """One field per key; a key that fails to sign is left out (and said), the
    others still sign; None only when none did."""
    fields: list[bytes] = []
    done: list[str] = []
    failed: list[str] = []
    for key in found:
        try:
            fields.append(signature_field(key, parsed, include, body_hash))
        except (dkim.DKIMException, ValueError) as e:
            failed.append(f"s={key.selector}: {e}")
            continue
        done.append(f"d={key.domain} s={key.selector} a={key.algorithm}")
    if not fields:
        return None, "not signed: " + ", ".join(failed)
    done += [f"not signed with {f}" for f in failed]
    return b"".join(fields), ", ".join(done)


class MessageSigner:
    """One message's content on its way to the spool: the header block kept,
    the body hashed.  ``feed`` every octet after our Received field, then
    ``signature``."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self.signer = signer  # (the intake signs rewritten content with it: Signer.sign_content)
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
        return await self._signer.sign_async(bytes(self._header), body.digest())
