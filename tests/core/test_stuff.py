"""DotStuffer, dot_stuff, dot_unstuff, LfConverter and xtext through the binding."""

from __future__ import annotations

import random

import pytest

from smtprs import _core
from smtprs.errors import ParseError


@pytest.mark.parametrize(
    "content, wire",
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),
        (b"a\r.b\r", b"a\r\n..b\r\n.\r\n"),
        (b"a\r\r\nb", b"a\r\n\r\nb\r\n.\r\n"),
        (b"x.y\r\n..\r\n", b"x.y\r\n...\r\n.\r\n"),
    ],
)
def test_dot_stuff(content: bytes, wire: bytes) -> None:
    assert _core.dot_stuff(content) == wire
    for step in range(1, len(content) + 1):
        s = _core.DotStuffer()
        out = b"".join(s.feed(content[i : i + step]) for i in range(0, len(content), step))
        assert out + s.finish() == wire


def normalise(data: bytes) -> bytes:
    out = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if out and not out.endswith(b"\r\n"):
        out += b"\r\n"
    return out


def test_round_trip_random_bodies() -> None:
    rng = random.Random(5321)
    pieces = [b".", b"..", b"\r\n", b"\n", b"\r", b"a", b"text ", b"\x00\xff", b"x" * 1200]
    for _ in range(300):
        content = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        wire = _core.dot_stuff(content)
        assert _core.dot_unstuff(wire) == normalise(content)
        # Through a connection, cut at random points.
        conn = _core.ServerConnection(max_text_line=10**6)
        conn.start_data()
        got = bytearray()
        i = 0
        while i < len(wire):
            j = min(len(wire), i + rng.randint(1, 50))
            conn.receive_data(wire[i:j])
            i = j
            while (ev := conn.next_event()) is not None:
                if isinstance(ev, _core.DataChunk):
                    got += ev.data
                else:
                    assert isinstance(ev, _core.DataEnd) and ev.error is None
        assert bytes(got) == normalise(content)


@pytest.mark.parametrize("bad", [b"a\r\n", b"a\n.\r\n", b".\r\nextra", b"a\r.\r\n"])
def test_dot_unstuff_rejects(bad: bytes) -> None:
    with pytest.raises(ParseError):
        _core.dot_unstuff(bad)


def test_dot_unstuff_large() -> None:
    content = (b".dot line\r\nplain line\r\n") * 50000
    assert _core.dot_unstuff(_core.dot_stuff(content)) == content


@pytest.mark.parametrize(
    "data, want",
    [
        (b"", b""),
        (b"a\r\nb\r\n", b"a\nb\n"),
        (b"a\rb\r", b"a\rb\r"),
        (b"a\r\r\n", b"a\r\n"),
        (b"\n\r\n\r", b"\n\n\r"),
    ],
)
def test_lf_converter(data: bytes, want: bytes) -> None:
    for step in range(1, len(data) + 2):
        c = _core.LfConverter()
        out = b"".join(c.feed(data[i : i + step]) for i in range(0, len(data), step))
        assert out + c.finish() == want


def test_lf_converter_cr_at_chunk_end() -> None:
    c = _core.LfConverter()
    assert c.feed(b"line\r") == b"line"
    assert c.feed(b"\nnext\r") == b"\nnext"
    assert c.feed(b"x") == b"\rx"
    assert c.finish() == b""


@pytest.mark.parametrize(
    "text, encoded",
    [
        ("", ""),
        ("plain", "plain"),
        ("a+b", "a+2Bb"),
        ("a=b", "a+3Db"),
        ("a b", "a+20b"),
        ("é", "+C3+A9"),
        ("rfc822;user@example.com", "rfc822;user@example.com"),
    ],
)
def test_xtext(text: str, encoded: str) -> None:
    assert _core.xtext_encode(text) == encoded
    assert _core.xtext_decode(encoded) == text


@pytest.mark.parametrize("bad", ["a+", "a+2", "+GG", "a=b", "a b", "+FF"])
def test_xtext_decode_rejects(bad: str) -> None:
    with pytest.raises(ParseError) as info:
        _core.xtext_decode(bad)
    assert (info.value.code, info.value.enhanced) == (501, "5.5.4")
