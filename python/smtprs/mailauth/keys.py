"""DKIM private keys: reading and checking a key file, making a new one, and
the DNS TXT record (RFC 6376 3.6.1) that publishes its public half.

Key files are PEM: an RSA key as PKCS#1 (``BEGIN RSA PRIVATE KEY``, what
OpenDKIM's opendkim-genkey writes) or PKCS#8, an Ed25519 key as PKCS#8
(``BEGIN PRIVATE KEY``, RFC 8463 keys as OpenSSL writes them); an Ed25519
key may also be the bare base64 32-octet seed that dkimpy and rspamd use.
``cryptography`` parses, generates and signs with them (OpenSSL: an RSA-2048
signature takes ~0.25 ms here against ~6 ms in dkimpy's pure-Python RSA, and
it releases the GIL); dkimpy builds the field around the signature.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path

import idna
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
MIN_RSA_BITS = 1024  # RFC 8301 3.2: verifiers MUST NOT consider smaller keys valid


class DkimKeyError(ValueError):
    """A key file that cannot be used (the message says why)."""


@dataclass(frozen=True)
class SigningKey:
    algorithm: str
    private: bytes  # what dkimpy takes: PKCS#1 PEM (RSA) or the base64 seed (Ed25519)
    public: str  # the base64 p= value of the TXT record
    bits: int  # RSA modulus size; 256 for Ed25519
    crypto: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey  # what signs (cryptography, OpenSSL)


def load_key(path: Path, algorithm: str) -> SigningKey:
    """Read and check ``path`` for ``algorithm``; raises DkimKeyError with a reason."""
    if algorithm not in ALGORITHMS:
        raise DkimKeyError(f"unknown algorithm {algorithm!r} (expected one of {', '.join(ALGORITHMS)})")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DkimKeyError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
    key: object
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        seed = _bare_seed(data)
        if seed is None:
            raise DkimKeyError(f"{str(path)!r} is not a PEM private key without a passphrase ({e})") from None
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    return signing_key(key, algorithm, str(path))


def _bare_seed(data: bytes) -> bytes | None:
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        return None
    return seed if len(seed) == 32 else None


def signing_key(key: object, algorithm: str, where: str = "the key") -> SigningKey:
    if isinstance(key, rsa.RSAPrivateKey):
        if algorithm != "rsa-sha256":
            raise DkimKeyError(f"{where} is an RSA key, but the algorithm is {algorithm}")
        if key.key_size < MIN_RSA_BITS:
            raise DkimKeyError(f"{where}: an RSA key of {key.key_size} bits is too short (at least {MIN_RSA_BITS})")
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return SigningKey(algorithm, private, base64.b64encode(public).decode(), key.key_size, key)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        if algorithm != "ed25519-sha256":
            raise DkimKeyError(f"{where} is an Ed25519 key, but the algorithm is {algorithm}")
        seed = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return SigningKey(algorithm, base64.b64encode(seed), base64.b64encode(raw).decode(), 256, key)
    raise DkimKeyError(f"{where} is neither an RSA nor an Ed25519 key")


def generate(algorithm: str, bits: int = 2048) -> tuple[bytes, SigningKey]:
    """A new key: its PEM file content and the loaded key."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa-sha256":
        if bits < MIN_RSA_BITS:
            raise DkimKeyError(f"an RSA key needs at least {MIN_RSA_BITS} bits (2048 advised)")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        fmt = serialization.PrivateFormat.TraditionalOpenSSL
    elif algorithm == "ed25519-sha256":
        key = ed25519.Ed25519PrivateKey.generate()
        fmt = serialization.PrivateFormat.PKCS8
    else:
        raise DkimKeyError(f"unknown algorithm {algorithm!r} (expected one of {', '.join(ALGORITHMS)})")
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return pem, signing_key(key, algorithm)


def write_private(path: Path, pem: bytes) -> None:
    """Write a new key file, mode 0600 from its creation (never readable by others,
    whatever the umask); an existing file is not replaced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is masked by the umask: only ever narrower, but be exact
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def a_label(domain: str) -> str:
    """A domain name as DKIM names it: lower case, no final dot, and every
    U-label (Unicode) as its A-label (``xn--...``): d= and the key's DNS name
    are A-labels (RFC 6376 3.5 with RFC 8616 4).  ``idna`` (IDNA 2008 with the
    UTS #46 mapping, so ``Bücher.Example`` is ``xn--bcher-kva.example``) does
    the conversion; an ASCII name is only lower-cased.  Raises DkimKeyError for a
    name that is not a valid IDN."""
    name = domain.strip().rstrip(".")
    if name.isascii():
        return name.lower()
    try:
        return idna.encode(name, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as e:
        raise DkimKeyError(f"{domain!r} is not a valid internationalized domain name ({e})") from None


def txt_value(key: SigningKey) -> str:
    """The TXT record's value: ``v=DKIM1; k=rsa; p=...`` (RFC 6376 3.6.1, RFC 8463)."""
    k = "rsa" if key.algorithm == "rsa-sha256" else "ed25519"
    return f"v=DKIM1; k={k}; p={key.public}"


def txt_strings(value: str, size: int = 255) -> list[str]:
    """The value cut into character-strings of at most ``size`` octets (RFC 1035
    3.3.14: a TXT record is a sequence of strings of up to 255 octets each, which
    a DKIM verifier joins without separators, RFC 6376 3.6.2.2)."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def txt_record(domain: str, selector: str, key: SigningKey) -> str:
    """The zone-file line to publish: ``S._domainkey.D. IN TXT "..." "..."`` (one line)."""
    name = f"{selector}._domainkey.{a_label(domain)}."
    strings = txt_strings(txt_value(key))
    return f"{name} IN TXT " + " ".join(f'"{s}"' for s in strings)
