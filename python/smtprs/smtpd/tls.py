"""TLS for the SMTP server: the server's SSLContext, and a self-signed pair for trying it out.

Reads ``smtpd.tls`` (certificate chain, key, oldest version, TLS 1.2 ciphers)
and builds one ``ssl.SSLContext`` that every STARTTLS and implicit-TLS session
shares; problems are ``ConfigError`` naming the key at fault.  The sessions do
the handshakes themselves (``trio.SSLStream``); this module only says how.
``make_self_signed`` writes a certificate and key (PEM) with the
``cryptography`` package, for ``smtprs tls selfsigned`` and the tests.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any

import trio

from ..config import Config
from ..errors import ConfigError

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


def server_context(cfg: Config) -> ssl.SSLContext | None:
    """The server context, or None when no certificate is configured."""
    tls = cfg.smtpd.tls
    if not tls.cert_file:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # no client certificates asked for
    ctx.minimum_version = _VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    if tls.ciphers:
        try:
            ctx.set_ciphers(tls.ciphers)
        except ssl.SSLError as e:
            raise ConfigError(f"smtpd.tls.ciphers: no usable cipher in {tls.ciphers!r}: {e}") from None
    cert, key = cfg.path(tls.cert_file), cfg.path(tls.key_file)
    for name, path in (("cert_file", cert), ("key_file", key)):
        try:
            with path.open("rb"):
                pass
        except OSError as e:
            raise ConfigError(f"smtpd.tls.{name}: cannot read {path}: {e.strerror or e}") from None
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ConfigError(f"smtpd.tls.cert_file: cannot use {cert} with the key {key}: {e.reason or e}") from None
    return ctx


def describe(stream: trio.SSLStream[Any] | ssl.SSLObject) -> str:
    """``TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits)``, as in logs and Received."""
    version = stream.version() or "TLS"
    cipher = stream.cipher()
    if cipher is None:
        return version
    name, _, bits = cipher
    return f"{version} with cipher {name} ({bits}/{bits} bits)"


def make_self_signed(out_dir: Path, hostname: str, *, days: int = 365, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``cert.pem`` and ``key.pem`` (the key with mode 0600) into ``out_dir``; returns their paths.

    An ECDSA P-256 key and a certificate for ``hostname`` (plus localhost,
    127.0.0.1 and ::1 as alternative names), valid from an hour ago for ``days``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / "cert.pem", out_dir / "key.pem"
    if not overwrite:
        for p in (cert_path, key_path):
            if p.exists():
                raise FileExistsError(f"{p} exists (use --force to replace it)")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        alt_names.append(x509.DNSName("localhost"))
    alt_names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(key_path, key_pem, 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
