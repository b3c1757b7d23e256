"""DKIM signing of rewritten content (mailauth/dkim.py ``Signer.sign_content``,
used by the intake when a milter or a hook rewrote the message): the
signature over the staged file read back in chunks is the one the streamed
signer makes over the same bytes, it verifies with dkimpy, and a file that
cannot be read gives "unsigned" with a reason, not an exception."""

from __future__ import annotations

from pathlib import Path

import dkim
import trio

from smtprs import config
from smtprs.content import Content
from smtprs.mailauth import keys
from smtprs.mailauth.dkim import CONTENT_CHUNK, Signer

DOMAIN = "example.test"


def _signer(tmp_path: Path) -> tuple[Signer, bytes]:
    pem, key = keys.generate("ed25519-sha256")
    path = tmp_path / "k.pem"
    keys.write_private(path, pem)
    cfg = config.load(
        overrides={
            "dkim": {
                "keys": [{"domain": DOMAIN, "selector": "s1", "key_file": str(path), "algorithm": "ed25519-sha256"}]
            }
        }
    )
    return Signer(cfg), keys.txt_value(key).encode()


def _message() -> bytes:
    body = b"".join(b"line %06d with  trailing space \r\n" % i for i in range(30000))  # > CONTENT_CHUNK
    assert len(body) > 2 * CONTENT_CHUNK
    return (
        b"Received: from c.test by mx.test (smtprs) with ESMTP id QID\r\n"
        b"From: Alice <alice@example.test>\r\nTo: bob@else.test\r\nSubject: rewritten\r\n"
        b"X-Milter: added\r\n\r\n" + body
    )


def test_sign_content_verifies_and_matches_the_streamed_signer(tmp_path: Path) -> None:
    signer, record = _signer(tmp_path)
    msg = _message()
    f = tmp_path / "m.msg"
    f.write_bytes(b"junk before" + msg + b"junk after")
    content = Content(f, len(b"junk before"), len(msg))

    async def both() -> tuple[tuple[bytes | None, str], tuple[bytes | None, str]]:
        from_file = await signer.sign_content(content)
        streamed = signer.start()
        for i in range(0, len(msg), 1000):
            streamed.feed(msg[i : i + 1000])
        return from_file, await streamed.signature()

    (field, detail), (field2, _) = trio.run(both)
    assert field is not None, detail
    assert f"d={DOMAIN} s=s1" in detail
    signed = field + msg
    assert dkim.verify(
        signed, dnsfunc=lambda name, timeout=5: record if name == b"s1._domainkey.example.test." else None
    )
    assert field2 is not None
    # the same body hash and header list as the streamed signer over the same bytes
    bh = [p for p in field.split(b";") if p.strip().startswith(b"bh=")]
    assert bh == [p for p in field2.split(b";") if p.strip().startswith(b"bh=")]
    assert not dkim.verify(signed.replace(b"line 012345", b"line 012346"), dnsfunc=lambda name, timeout=5: record)


def test_sign_content_of_a_missing_file_says_why(tmp_path: Path) -> None:
    signer, _ = _signer(tmp_path)
    field, detail = trio.run(signer.sign_content, Content(tmp_path / "gone.msg", 0, 10))
    assert field is None and detail.startswith("content not read:")
