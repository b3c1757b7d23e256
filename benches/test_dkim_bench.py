"""DKIM signing and verification (smtprs.mailauth): messages/s for 1 KiB and
100 KiB messages, RSA-2048 and Ed25519.

Run with ``python -m pytest benches/test_dkim_bench.py --benchmark-only``.

* ``test_sign``: what the intake does per signed message, minus the spool:
  feed the content in 64 KiB pieces (header block kept, body hashed as it
  streams), then build and sign the DKIM-Signature field with dkimpy;
  ``extra_info`` gives messages/s and the body hash's share.
* ``test_sign_async``: 50 1 KiB messages signed as the server signs them
  (``MessageSigner.signature``, on the event loop's thread), in one trio run.
* ``test_verify``: the inbound check's DKIM verification of one message
  signed by ``test_sign``'s path (``mailauth.inbound.check_dkim``: dkimpy over
  the whole message, its key from a local table, no network); messages/s.
* ``test_body_hash``: the streaming relaxed body hash alone, MB/s, over 1 MiB
  of plain text (single spaces: the fast scans find nothing to change) and of
  the worst kind (every line with a tab, double blanks and trailing blanks).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

from smtprs import config
from smtprs.mailauth import keys
from smtprs.mailauth.canon import RelaxedBodyHash
from smtprs.mailauth.dkim import Signer
from smtprs.mailauth.inbound import check_dkim

HEADER = (
    b"From: Alice <alice@bench.test>\r\nTo: Bob <bob@elsewhere.test>\r\nSubject: DKIM benchmark\r\n"
    b"Date: Mon, 07 Dec 2026 09:00:00 +0000\r\nMessage-ID: <bench.1@bench.test>\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
)
LINE = b"The quick brown fox jumps over the lazy dog; some  text\twith whitespace to canonicalize.  \r\n"
TEXT_LINE = b"The quick brown fox jumps over the lazy dog, and then some more plain text here.\r\n"
SIZES = {"1KiB": 1024, "100KiB": 100 * 1024}
PIECE = 64 * 1024


def message(size: int) -> bytes:
    """A message of ``size`` octets: plain text (the worst kind of body is test_body_hash's)."""
    body = TEXT_LINE * (max(0, size - len(HEADER)) // len(TEXT_LINE) + 1)
    return (HEADER + body)[:size] + b"\r\n"


@pytest.fixture(scope="module", params=["rsa-sha256", "ed25519-sha256"], ids=["rsa2048", "ed25519"])
def signer(request: Any, tmp_path_factory: pytest.TempPathFactory) -> Signer:
    return make_signer(request.param, tmp_path_factory)[0]


def make_signer(algorithm: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Signer, str]:
    """A signer for bench.test (selector s) and its key's TXT record."""
    d = tmp_path_factory.mktemp("dkimkeys")
    pem, key = keys.generate(algorithm, 2048)
    keys.write_private(d / "k.pem", pem)
    cfg = config.load(
        None,
        overrides={
            "data_dir": str(d),
            "dkim": {"keys": [{"domain": "bench.test", "selector": "s", "key_file": "k.pem", "algorithm": algorithm}]},
        },
    )
    s = Signer.for_config(cfg)
    assert s is not None
    return s, keys.txt_value(key)


def sign_once(signer: Signer, msg: bytes) -> bytes:
    ms = signer.start()
    for i in range(0, len(msg), PIECE):
        ms.feed(msg[i : i + PIECE])
    assert ms._body is not None
    field, detail = signer.sign(bytes(ms._header), ms._body.digest())
    assert field is not None, detail
    return field


def rate(benchmark: Any, messages: int = 1) -> None:
    if benchmark.stats is None:
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["us_per_message"] = round(median / messages * 1e6, 1)
    benchmark.extra_info["messages/s"] = round(messages / median, 1)


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_sign(benchmark: Any, signer: Signer, size: str) -> None:
    msg = message(SIZES[size])
    benchmark.pedantic(sign_once, args=(signer, msg), rounds=200 if size == "1KiB" else 100, warmup_rounds=5)
    rate(benchmark)


def test_sign_async(benchmark: Any, signer: Signer) -> None:
    msg = message(1024)
    n = 50

    async def run() -> None:
        for _ in range(n):
            ms = signer.start()
            ms.feed(msg)
            field, _ = await ms.signature()
            assert field is not None

    benchmark.pedantic(trio.run, args=(run,), rounds=10, warmup_rounds=1)
    rate(benchmark, n)


class TableLookups:
    """The key from a table: verification without the network."""

    per_lookup = 5.0

    def __init__(self, records: dict[str, bytes]) -> None:
        self.records = records

    def txt(self, name: str) -> list[bytes]:
        r = self.records.get(name)
        return [r] if r is not None else []


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"], ids=["rsa2048", "ed25519"])
@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_verify(benchmark: Any, tmp_path_factory: pytest.TempPathFactory, algorithm: str, size: str) -> None:
    signer, txt = make_signer(algorithm, tmp_path_factory)
    msg = message(SIZES[size])
    signed = sign_once(signer, msg) + msg
    lookups = TableLookups({"s._domainkey.bench.test": txt.encode()})

    def verify() -> None:
        [r] = check_dkim(lookups, signed, 5)  # type: ignore[arg-type]
        assert r.result == "pass", r

    benchmark.pedantic(verify, rounds=200 if size == "1KiB" else 100, warmup_rounds=5)
    rate(benchmark)


@pytest.mark.parametrize("kind", ["plain", "worst"])
def test_body_hash(benchmark: Any, kind: str) -> None:
    body = ((TEXT_LINE if kind == "plain" else LINE) * 13000)[: 1024 * 1024]

    def run() -> bytes:
        h = RelaxedBodyHash()
        for i in range(0, len(body), PIECE):
            h.update(body[i : i + PIECE])
        return h.digest()

    benchmark.pedantic(run, rounds=30, warmup_rounds=2)
    if benchmark.stats is not None:
        benchmark.extra_info["MB/s"] = round(len(body) / benchmark.stats.stats.median / 1e6, 1)
