"""DKIM signing (mailauth/): the streaming relaxed body hash against dkimpy's,
the signer fed in pieces as the intake feeds it, key files and their TXT
records, the spool's prepend, the configuration checks, and sessions that are
and are not signed.  Every signature is checked with dkimpy's own verifier."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import dkim
import pytest
import trio
import trio.testing
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st

from smtprs import cli, config
from smtprs.envelope import Envelope, Recipient
from smtprs.errors import ConfigError
from smtprs.mailauth import keys
from smtprs.mailauth.canon import RelaxedBodyHash, relaxed_body_hash
from smtprs.mailauth.dkim import Signer
from smtprs.queue.spool import Spool

from .conftest import make_config, spooled, start_session


def dkimpy_body_hash(body: bytes) -> bytes:
    """dkimpy's relaxed body hash of ``body`` (after its own message split)."""
    _, parsed = dkim.rfc822_parse(b"X: y\r\n\r\n" + body)
    return hashlib.sha256(Relaxed.canonicalize_body(parsed)).digest()


BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"  \t \r\n",
    b"hello\r\n",
    b"hello",
    b"hello  \t",
    b"a  b\t\tc  \r\n\r\n\r\nd \r\n \r\n\r\n",
    b"line\r\n\r\n",
    b"x\r\r\n",
    b"bare\nlf\n\n",
    b"mixed\r\n\n \n\r\nend",
    b"\r\n\r\nlate\r\n",
    b"trailing cr\r",
]


@pytest.mark.parametrize("body", BODIES)
def test_body_hash_matches_dkimpy(body: bytes) -> None:
    assert relaxed_body_hash(body) == dkimpy_body_hash(body)


@pytest.mark.parametrize("body", BODIES)
def test_body_hash_is_the_same_in_any_pieces(body: bytes) -> None:
    for size in (1, 2, 3, 7):
        h = RelaxedBodyHash()
        for i in range(0, len(body), size):
            h.update(body[i : i + size])
        assert h.digest() == dkimpy_body_hash(body), size


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b"b", b" ", b"\t", b"\r\n", b"\n", b"\r", b"  ", b"\r\n\r\n"]), max_size=40),
    st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=10),
)
def test_body_hash_random(parts: list[bytes], cuts: list[int]) -> None:
    body = b"".join(parts)
    h = RelaxedBodyHash()
    i = 0
    for n in cuts * (len(body) + 1):
        if i >= len(body):
            break
        h.update(body[i : i + n])
        i += n
    assert h.digest() == dkimpy_body_hash(body)


def test_body_hash_of_a_large_body() -> None:
    body = b"".join(b"line %d with  some\t\twhitespace   \r\n" % i for i in range(20000)) + b"\r\n\r\n"
    h = RelaxedBodyHash()
    for i in range(0, len(body), 65536):
        h.update(body[i : i + 65536])
    assert h.digest() == dkimpy_body_hash(body)


# -- keys ----------------------------------------------------------------------
def _keygen(tmp_path: Path, algorithm: str, selector: str = "s1", capsys: pytest.CaptureFixture[str] | None = None):  # type: ignore[no-untyped-def]
    path = tmp_path / f"{selector}.pem"
    assert (
        cli.main(
            [
                "dkim",
                "keygen",
                "--domain",
                "example.test",
                "--selector",
                selector,
                "--algorithm",
                algorithm,
                "--out",
                str(path),
            ]
        )
        == 0
    )
    return path


def txt_from_record(line: str) -> bytes:
    """The TXT value of a zone line as a verifier sees it: the strings joined."""
    name, rest = line.split(" IN TXT ", 1)
    strings = [s for i, s in enumerate(rest.split('"')) if i % 2 == 1]
    assert all(len(s.encode()) <= 255 for s in strings)
    return "".join(strings).encode()


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_keygen_writes_0600_and_a_record_that_verifies(tmp_path, capsys, algorithm) -> None:  # type: ignore[no-untyped-def]
    old = os.umask(0)  # the mode must not depend on the umask
    try:
        path = _keygen(tmp_path, algorithm)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    line = capsys.readouterr().out.strip()
    assert line.startswith("s1._domainkey.example.test. IN TXT ")
    record = txt_from_record(line)
    assert record.startswith(b"v=DKIM1; k=" + (b"rsa" if algorithm == "rsa-sha256" else b"ed25519"))
    signer = _signer(tmp_path, [("example.test", "s1", path, algorithm)])
    message = _sign_message(signer, MESSAGE)
    assert dkim.verify(
        message, dnsfunc=lambda name, timeout=5: record if name == b"s1._domainkey.example.test." else None
    )
    # and the key loads the same way the configuration loads it
    assert keys.load_key(path, algorithm).public.encode() in record


def test_keygen_never_replaces_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "k.pem"
    path.write_text("keep")
    assert cli.main(["dkim", "keygen", "-d", "example.test", "-s", "s", "--out", str(path)]) == 1
    assert path.read_text() == "keep"


def test_txt_strings_are_cut_at_255() -> None:
    value = "v=DKIM1; k=rsa; p=" + "A" * 700
    strings = keys.txt_strings(value)
    assert [len(s) for s in strings] == [255, 255, 208] and "".join(strings) == value


def test_bare_base64_ed25519_seed_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pem, key = keys.generate("ed25519-sha256")
    bare = tmp_path / "seed.key"
    bare.write_bytes(key.private + b"\n")
    assert keys.load_key(bare, "ed25519-sha256").public == key.public


# -- signing as the intake does it --------------------------------------------
MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@elsewhere.test\r\n"
    b"Subject: hello   there\r\n"
    b"Date: Mon, 7 Dec 2026 09:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"Received: from somewhere\r\n"
    b"\r\n"
    b"Body line one  \r\n"
    b"\r\n"
    b"two\t\tspaces\r\n\r\n\r\n"
)


def _signer(tmp_path: Path, entries, **dkim_section) -> Signer:  # type: ignore[no-untyped-def]
    cfg = make_config(
        tmp_path,
        dkim={
            "keys": [{"domain": d, "selector": s, "key_file": str(p), "algorithm": a} for d, s, p, a in entries],
            **dkim_section,
        },
    )
    signer = Signer.for_config(cfg)
    assert signer is not None
    return signer


def _sign_message(signer: Signer, message: bytes, piece: int = 5) -> bytes:
    ms = signer.start()
    for i in range(0, len(message), piece):
        ms.feed(message[i : i + piece])

    async def sign() -> tuple[bytes | None, str]:
        return await ms.signature()

    field, detail = trio.run(sign)
    assert field is not None, detail
    return field + message


def _dns(tmp_path: Path, *selectors: tuple[str, Path, str]):  # type: ignore[no-untyped-def]
    records = {}
    for sel, path, algorithm in selectors:
        key = keys.load_key(path, algorithm)
        records[f"{sel}._domainkey.example.test.".encode()] = keys.txt_value(key).encode()
    return lambda name, timeout=5: records.get(name)


@pytest.fixture(scope="module")
def keyfiles(tmp_path_factory):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for sel, algorithm in (("rsa", "rsa-sha256"), ("ed", "ed25519-sha256")):
        pem, _ = keys.generate(algorithm)
        keys.write_private(d / f"{sel}.pem", pem)
        out[algorithm] = (sel, d / f"{sel}.pem", algorithm)
    return out


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_streamed_signature_verifies(tmp_path, keyfiles, algorithm, piece) -> None:  # type: ignore[no-untyped-def]
    sel, path, _ = keyfiles[algorithm]
    signer = _signer(tmp_path, [("example.test", sel, path, algorithm)])
    signed = _sign_message(signer, MESSAGE, piece)
    assert dkim.verify(signed, dnsfunc=_dns(tmp_path, keyfiles[algorithm]))
    field = signed.split(b"\r\n\r\n")[0]
    assert b"c=relaxed/relaxed" in field and f"a={algorithm}".encode() in field
    h = dkim.DKIM(signed)
    assert h.verify(dnsfunc=_dns(tmp_path, keyfiles[algorithm]))
    signed_names = [x.lower() for x in h.include_headers]
    assert signed_names.count(b"from") == 2  # oversigned
    assert b"received" not in signed_names
    # a changed body or an added From breaks it
    assert not dkim.verify(signed.replace(b"two", b"too"), dnsfunc=_dns(tmp_path, keyfiles[algorithm]))
    assert not dkim.verify(b"From: mallory@evil.test\r\n" + signed, dnsfunc=_dns(tmp_path, keyfiles[algorithm]))


def test_subdomain_uses_the_parent_key_and_others_are_not_signed(tmp_path, keyfiles) -> None:  # type: ignore[no-untyped-def]
    sel, path, algorithm = keyfiles["ed25519-sha256"]
    signer = _signer(tmp_path, [("example.test", sel, path, algorithm)])
    sub = MESSAGE.replace(b"alice@example.test", b"alice@news.example.test")
    assert dkim.verify(_sign_message(signer, sub), dnsfunc=_dns(tmp_path, keyfiles[algorithm]))
    for message, why in (
        (MESSAGE.replace(b"alice@example.test", b"alice@example.test.evil"), "no key for example.test.evil"),
        (MESSAGE.replace(b"From: Alice <alice@example.test>\r\n", b""), "no single From: domain"),
        (b"From: a@example.test\r\nFrom: b@example.test\r\n\r\nx\r\n", "no single From: domain"),
    ):
        ms = signer.start()
        ms.feed(message)
        assert trio.run(ms.signature) == (None, why)


def test_huge_header_count_is_not_signed(tmp_path, keyfiles) -> None:  # type: ignore[no-untyped-def]
    sel, path, algorithm = keyfiles["ed25519-sha256"]
    signer = _signer(tmp_path, [("example.test", sel, path, algorithm)])
    ms = signer.start()
    ms.feed(b"From: alice@example.test\r\n" + b"To: x@example.test\r\n" * 5000 + b"\r\nbody\r\n")
    field, why = trio.run(ms.signature)
    assert field is None and why == "5001 header fields to sign (at most 500)"


def test_header_only_message_is_signed(tmp_path, keyfiles) -> None:  # type: ignore[no-untyped-def]
    sel, path, algorithm = keyfiles["rsa-sha256"]
    signer = _signer(tmp_path, [("example.test", sel, path, algorithm)])
    signed = _sign_message(signer, b"From: alice@example.test\r\nSubject: x\r\n")
    assert dkim.verify(signed, dnsfunc=_dns(tmp_path, keyfiles[algorithm]))


# -- configuration ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"key_file": "missing.pem"}, r"dkim.keys\[0\].key_file: cannot read .*missing.pem"),
        ({"algorithm": "rsa-sha1"}, r"dkim.keys\[0\].algorithm: expected one of"),
        ({"algorithm": "ed25519-sha256"}, r"is an RSA key, but the algorithm is ed25519-sha256"),
        ({"selector": "bad selector"}, r"dkim.keys\[0\].selector: not a selector"),
        ({"domain": ""}, r"dkim.keys\[0\].domain: not a domain name"),
        ({"key_file": "garbage.pem"}, r"is not a PEM private key"),
    ],
)
def test_bad_key_configuration_is_a_config_error(tmp_path, keyfiles, entry, message) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "garbage.pem").write_text("not a key\n")
    _, path, _ = keyfiles["rsa-sha256"]
    key = {"domain": "example.test", "selector": "s1", "key_file": str(path), "algorithm": "rsa-sha256", **entry}
    with pytest.raises(ConfigError, match=message):
        make_config(tmp_path, dkim={"keys": [key]})


def test_unreadable_key_file_is_a_config_error(tmp_path, keyfiles) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "nope"
    d.mkdir()
    key = {"domain": "example.test", "selector": "s1", "key_file": str(d), "algorithm": "rsa-sha256"}
    with pytest.raises(ConfigError, match=r"dkim.keys\[0\].key_file: cannot read"):
        make_config(tmp_path, dkim={"keys": [key]})


def test_sign_headers_checks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="must include from"):
        make_config(tmp_path, dkim={"sign_headers": ["subject"]})
    with pytest.raises(ConfigError, match="received is not to be signed"):
        make_config(tmp_path, dkim={"sign_headers": ["from", "Received"]})


def test_check_config_reports_a_bad_key_without_a_traceback(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "c.toml"
    f.write_text('[[dkim.keys]]\ndomain = "example.test"\nselector = "s1"\nkey_file = "/nonexistent/k.pem"\n')
    assert cli.main(["check-config", "--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "configuration error: dkim.keys[0].key_file: cannot read" in err and "Traceback" not in err


def test_reference_lists_the_dkim_keys() -> None:
    ref = config.reference_markdown()
    for key in (
        "dkim.keys",
        "dkim.keys[].domain",
        "dkim.keys[].algorithm",
        "dkim.sign_headers",
        "dkim.oversign_headers",
    ):
        assert f"| `{key}` |" in ref


# -- the spool's prepend -----------------------------------------------------------
@pytest.mark.parametrize("size", [100, 5000])  # in memory, and spilled to its own file
async def test_spool_prepend_puts_the_field_first(tmp_path, size) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path, inline_max=1000)
    spool.open()
    body = b"Received: x\r\n\r\n" + b"y" * size
    w = spool.create()
    for i in range(0, len(body), 300):
        w.write(body[i : i + 300])
    w.prepend(b"DKIM-Signature: v=1\r\n")
    await spool.commit(w, Envelope(queue_id=w.queue_id, sender="", recipients=[Recipient("u@x.test")], arrival=1.0))
    expected = b"DKIM-Signature: v=1\r\n" + body
    assert w.size == len(expected)
    with spool.content(w.queue_id).open() as fh:
        assert fh.read() == expected
    spool.close()
    again = Spool(tmp_path)
    assert again.open() == [w.queue_id]
    with again.content(w.queue_id).open() as fh:
        assert fh.read() == expected
    assert not list(again.files_dir.glob("*.tmp"))


@pytest.mark.parametrize("size", [100, 5000])
async def test_staged_content_has_the_prepended_field(tmp_path, size) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path, inline_max=1000)
    spool.open()
    w = spool.create()
    w.write(b"x" * size)
    w.prepend(b"F: 1\r\n")
    content = w.staged()
    with content.open() as fh:
        assert fh.read() == b"F: 1\r\n" + b"x" * size
    spool.abort(w)


# -- sessions ------------------------------------------------------------------------
async def _send(ctx, message: bytes, user: str | None = None) -> str:  # type: ignore[no-untyped-def]
    async with trio.open_nursery() as nursery:
        c = await start_session(nursery, ctx)
        assert (await c.cmd("EHLO client.test")).code == 250
        assert (await c.cmd("MAIL FROM:<alice@example.test>")).code == 250
        assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
        assert (await c.cmd("DATA")).code == 354
        r = await c.cmd(message + b".")
        assert r.code == 250, r
        await c.cmd("QUIT")
    return r.text.rsplit(" ", 1)[1]


async def test_session_from_trusted_network_is_signed_others_not(tmp_path, keyfiles, ctx_factory) -> None:  # type: ignore[no-untyped-def]
    sel, path, algorithm = keyfiles["rsa-sha256"]
    keyconf = {"keys": [{"domain": "example.test", "selector": sel, "key_file": str(path), "algorithm": algorithm}]}
    ctx = ctx_factory(dkim=keyconf, relay={"trusted_networks": ["192.0.2.0/24"]})
    qid = await _send(ctx, MESSAGE)
    stored = spooled(ctx, qid)
    assert stored.startswith(b"DKIM-Signature: ")
    assert b"\r\nReceived: from client.test" in stored
    assert dkim.verify(stored, dnsfunc=_dns(tmp_path, keyfiles[algorithm]))
    assert ctx.spool.load(qid).size == len(stored)
    assert ctx.metrics.counters[("smtprs_dkim_signatures_total", (("result", "signed"),))] == 1
    # the same client outside the trusted networks (an mx listener, no AUTH): not signed
    ctx2 = ctx_factory(dkim=keyconf)
    qid2 = await _send(ctx2, MESSAGE)
    assert b"DKIM-Signature" not in spooled(ctx2, qid2)


async def test_large_message_in_a_session_is_signed(tmp_path, keyfiles, ctx_factory) -> None:  # type: ignore[no-untyped-def]
    sel, path, algorithm = keyfiles["ed25519-sha256"]
    keyconf = {"keys": [{"domain": "example.test", "selector": sel, "key_file": str(path), "algorithm": algorithm}]}
    ctx = ctx_factory(dkim=keyconf, relay={"trusted_networks": ["192.0.2.0/24"]})
    body = b"".join(b"line %06d " % i + base64.b64encode(os.urandom(45)) + b"\r\n" for i in range(6000))
    qid = await _send(ctx, MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body)
    stored = spooled(ctx, qid)
    assert len(stored) > 300_000 and stored.startswith(b"DKIM-Signature: ")
    assert dkim.verify(stored, dnsfunc=_dns(tmp_path, keyfiles[algorithm]))


def test_reload_takes_new_keys(tmp_path, keyfiles, ctx_factory) -> None:  # type: ignore[no-untyped-def]
    from smtprs.daemon import rebuild

    ctx = ctx_factory()
    assert ctx.session.dkim is None
    sel, path, algorithm = keyfiles["ed25519-sha256"]
    keyconf = {"keys": [{"domain": "example.test", "selector": sel, "key_file": str(path), "algorithm": algorithm}]}
    new = rebuild(ctx, make_config(tmp_path, dkim=keyconf))
    assert new.session.dkim is not None and new.session.dkim.key_for("example.test") is not None
    assert rebuild(new, make_config(tmp_path)).session.dkim is None


async def test_submission_header_only_message_gets_fixups_and_is_signed(tmp_path, keyfiles, ctx_factory) -> None:  # type: ignore[no-untyped-def]
    """An authenticated user on a submission listener.  There the header block
    is held for the Date / Message-ID fix-ups; a message that is all header is
    released only at the end of the data, and the signer must see it (and the
    added fields) too."""
    from smtprs.config import Listener
    from smtprs.smtpd import auth
    from smtprs.smtpd.session import Session

    from .conftest import Client

    users = tmp_path / "users"
    auth.write_users(users, {"alice@example.test": auth.hash_password("pw", ln=4)})
    sel, path, algorithm = keyfiles["rsa-sha256"]
    keyconf = {"keys": [{"domain": "example.test", "selector": sel, "key_file": str(path), "algorithm": algorithm}]}
    ctx = ctx_factory(dkim=keyconf, smtpd={"auth": {"users_file": str(users), "allow_plaintext": True}})
    plain = base64.b64encode(b"\0alice@example.test\0pw").decode()
    for message in (
        b"From: alice@example.test\r\nSubject: only a header\r\n",
        MESSAGE.replace(b"Date: Mon, 7 Dec 2026 09:00:00 +0000\r\n", b""),
    ):
        async with trio.open_nursery() as nursery:
            client_stream, server_stream = trio.testing.memory_stream_pair()

            async def serve(stream: trio.testing.MemoryStapledStream) -> None:  # type: ignore[type-arg]
                await Session(ctx.session, stream, "198.51.100.7", 40000, Listener(mode="submission")).run()
                await stream.aclose()

            nursery.start_soon(serve, server_stream)
            c = Client(client_stream)
            assert (await c.reply()).code == 220
            assert (await c.cmd("EHLO client.test")).code == 250
            assert (await c.cmd(f"AUTH PLAIN {plain}")).code == 235
            assert (await c.cmd("MAIL FROM:<alice@example.test>")).code == 250
            assert (await c.cmd("RCPT TO:<bob@example.test>")).code == 250
            assert (await c.cmd("DATA")).code == 354
            r = await c.cmd(message + b".")
            assert r.code == 250, r
            await c.cmd("QUIT")
        stored = spooled(ctx, r.text.rsplit(" ", 1)[1])
        assert stored.startswith(b"DKIM-Signature: ") and b"\r\nDate: " in stored and b"\r\nMessage-ID: " in stored
        d = dkim.DKIM(stored)
        assert d.verify(dnsfunc=_dns(tmp_path, keyfiles[algorithm]))
        assert {b"date", b"message-id"} <= {h.lower() for h in d.include_headers}


# -- dual signatures (RFC 8463: RSA and Ed25519 side by side) ----------------------
def _dual_signer(tmp_path: Path, keyfiles, domain: str = "example.test") -> Signer:  # type: ignore[no-untyped-def]
    return _signer(tmp_path, [(domain, *keyfiles["rsa-sha256"]), (domain, *keyfiles["ed25519-sha256"])])


def test_two_keys_of_a_domain_give_two_signatures_both_verifying(tmp_path, keyfiles) -> None:  # type: ignore[no-untyped-def]
    signer = _dual_signer(tmp_path, keyfiles)
    ms = signer.start()
    ms.feed(MESSAGE)
    field, detail = trio.run(ms.signature)
    assert field is not None
    assert detail == "d=example.test s=rsa a=rsa-sha256, d=example.test s=ed a=ed25519-sha256"
    signed = field + MESSAGE
    assert signed.count(b"DKIM-Signature: ") == 2
    dnsfunc = _dns(tmp_path, keyfiles["rsa-sha256"], keyfiles["ed25519-sha256"])
    for idx, algorithm in ((0, b"rsa-sha256"), (1, b"ed25519-sha256")):  # dkimpy checks the idx-th field
        d = dkim.DKIM(signed)
        assert d.verify(idx=idx, dnsfunc=dnsfunc), idx
        assert d.signature_fields[b"a"] == algorithm
    # each field stands alone: with only one of the keys published, that one still verifies
    only_ed = _dns(tmp_path, keyfiles["ed25519-sha256"])
    assert not dkim.DKIM(signed).verify(idx=0, dnsfunc=only_ed)
    assert dkim.DKIM(signed).verify(idx=1, dnsfunc=only_ed)
    # and both break with the body
    bad = signed.replace(b"two", b"too")
    for i in (0, 1):
        with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
            dkim.DKIM(bad).verify(idx=i, dnsfunc=dnsfunc)


def test_two_keys_with_the_same_selector_is_a_config_error(tmp_path, keyfiles) -> None:  # type: ignore[no-untyped-def]
    _, rsa_path, _ = keyfiles["rsa-sha256"]
    _, ed_path, _ = keyfiles["ed25519-sha256"]
    entries = [
        {"domain": "example.test", "selector": "s1", "key_file": str(rsa_path), "algorithm": "rsa-sha256"},
        {"domain": "Example.Test.", "selector": "s1", "key_file": str(ed_path), "algorithm": "ed25519-sha256"},
    ]
    with pytest.raises(ConfigError, match=r"dkim.keys\[1\]: 'Example.Test.' already has a key with selector 's1'"):
        make_config(tmp_path, dkim={"keys": entries})
    entries[1]["selector"] = "s2"
    make_config(tmp_path, dkim={"keys": entries})  # another selector: fine


# -- IDNA: d= is the A-label (RFC 6376 3.5, RFC 8616) -------------------------------
IDN = "bücher.example"
IDN_A = "xn--bcher-kva.example"


def test_a_label() -> None:
    assert keys.a_label("Bücher.Example.") == IDN_A
    assert keys.a_label(IDN_A.upper()) == IDN_A
    assert keys.a_label("Example.TEST") == "example.test"
    with pytest.raises(keys.DkimKeyError, match="not a valid internationalized domain name"):
        keys.a_label("b\ufffdcher.example")


def _idn_dns(*selectors: tuple[str, Path, str]):  # type: ignore[no-untyped-def]
    records = {
        f"{sel}._domainkey.{IDN_A}.".encode(): keys.txt_value(keys.load_key(path, algorithm)).encode()
        for sel, path, algorithm in selectors
    }
    return lambda name, timeout=5: records.get(name)


@pytest.mark.parametrize("config_domain", [IDN, IDN_A, "BÜCHER.example"])
@pytest.mark.parametrize("from_domain", [IDN, IDN_A, "Bücher.Example"])
def test_unicode_domain_is_signed_as_its_a_label(tmp_path, keyfiles, config_domain, from_domain) -> None:  # type: ignore[no-untyped-def]
    signer = _signer(tmp_path, [(config_domain, *keyfiles["ed25519-sha256"])])
    message = MESSAGE.replace(b"alice@example.test", f"alice@{from_domain}".encode())
    signed = _sign_message(signer, message)
    d = dkim.DKIM(signed)
    assert d.verify(dnsfunc=_idn_dns(keyfiles["ed25519-sha256"]))
    assert d.signature_fields[b"d"] == IDN_A.encode()
    # a subdomain in Unicode finds the parent's key too
    sub = MESSAGE.replace(b"alice@example.test", f"alice@post.{from_domain}".encode())
    d = dkim.DKIM(_sign_message(signer, sub))
    assert d.verify(dnsfunc=_idn_dns(keyfiles["ed25519-sha256"]))
    assert d.signature_fields[b"d"] == IDN_A.encode()


def test_invalid_unicode_from_domain_is_not_signed(tmp_path, keyfiles) -> None:  # type: ignore[no-untyped-def]
    signer = _signer(tmp_path, [(IDN, *keyfiles["ed25519-sha256"])])
    ms = signer.start()
    ms.feed(MESSAGE.replace(b"alice@example.test", "alice@bü_cher.example".encode()))
    assert trio.run(ms.signature) == (None, "no single From: domain")
    ms = signer.start()
    ms.feed(MESSAGE.replace(b"alice@example.test", b"alice@b\xffcher.example"))  # not UTF-8 at all
    assert trio.run(ms.signature) == (None, "no single From: domain")


def test_invalid_unicode_key_domain_is_a_config_error(tmp_path, keyfiles) -> None:  # type: ignore[no-untyped-def]
    _, path, _ = keyfiles["ed25519-sha256"]
    key = {"domain": "bü_cher.example", "selector": "s1", "key_file": str(path), "algorithm": "ed25519-sha256"}
    with pytest.raises(ConfigError, match=r"dkim.keys\[0\].domain: .*not a valid internationalized domain name"):
        make_config(tmp_path, dkim={"keys": [key]})


def test_keygen_prints_the_a_label_record(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "k.pem"
    assert cli.main(["dkim", "keygen", "-d", IDN, "-s", "s1", "-a", "ed25519-sha256", "-o", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"s1._domainkey.{IDN_A}. IN TXT ")
    assert cli.main(["dkim", "keygen", "-d", "bü_cher.example", "-s", "s1", "-o", str(tmp_path / "x.pem")]) == 2
    assert "not a valid internationalized domain name" in capsys.readouterr().err
