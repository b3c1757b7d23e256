"""format_reply and ReplyParser through the binding."""

from __future__ import annotations

import pytest

from smtprs import _core
from smtprs.errors import ParseError


@pytest.mark.parametrize(
    "code, enhanced, text, wire",
    [
        (250, None, "Ok", b"250 Ok\r\n"),
        (250, "2.0.0", "Ok", b"250 2.0.0 Ok\r\n"),
        (
            250,
            None,
            ["mx.example", "PIPELINING", "SIZE 1000"],
            b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
        ),
        (550, "5.1.1", ["no such", "user"], b"550-5.1.1 no such\r\n550 5.1.1 user\r\n"),
        (250, None, [], b"250\r\n"),
        (250, "2.1.5", [], b"250 2.1.5\r\n"),
        (250, None, "", b"250\r\n"),
        (354, None, "End data with <CR><LF>.<CR><LF>", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
        (221, "2.0.0", "Bye", b"221 2.0.0 Bye\r\n"),
        (452, "4.3.1", "full", b"452 4.3.1 full\r\n"),
    ],
)
def test_format_reply(code: int, enhanced: str | None, text: str | list[str], wire: bytes) -> None:
    assert _core.format_reply(code, enhanced, text) == wire


@pytest.mark.parametrize(
    "code, enhanced, text",
    [
        (199, None, "x"),
        (600, None, "x"),
        (-1, None, "x"),
        (10**9, None, "x"),
        (250, "2.0", "x"),
        (250, "2.0.0.0", "x"),
        (250, "x.0.0", "x"),
        (250, "3.0.0", "x"),
        (250, "5.0.0", "x"),
        (250, "2.1000.0", "x"),
        (250, None, "a\r\nb"),
        (250, None, "a\nb"),
        (250, None, ["ok", "b\r"]),
        (250, None, "x" * 507),
        (250, "2.0.0", "x" * 501),
    ],
)
def test_format_reply_rejects(code: int, enhanced: str | None, text: str | list[str]) -> None:
    with pytest.raises(ValueError):
        _core.format_reply(code, enhanced, text)


def test_format_reply_longest_line() -> None:
    assert len(_core.format_reply(250, None, "x" * 506)) == 512
    assert len(_core.format_reply(250, "2.0.0", "x" * 500)) == 512


WIRE = (
    b"220 mx.example ESMTP ready\r\n"
    b"250-mx.example greets you\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10485760\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
    b"250 2.1.0 Sender ok\r\n"
    b"550-5.1.1 The user does not exist.\r\n"
    b"550-5.1.1 Please check the address\r\n"
    b"550 5.1.1 and try again.\r\n"
    b"354 go ahead\r\n"
    b"221 2.0.0\r\n"
)


def replies(pieces: list[bytes]) -> list[tuple[int, str | None, list[str], str]]:
    p = _core.ReplyParser()
    out = []
    for piece in pieces:
        p.receive_data(piece)
        while (r := p.next_reply()) is not None:
            out.append((r.code, r.enhanced, r.lines, r.text))
    return out


def test_reply_parser_whole_and_bytewise() -> None:
    want = [
        (220, None, ["mx.example ESMTP ready"], "mx.example ESMTP ready"),
        (
            250,
            None,
            ["mx.example greets you", "PIPELINING", "SIZE 10485760", "ENHANCEDSTATUSCODES"],
            "mx.example greets you\nPIPELINING\nSIZE 10485760\nENHANCEDSTATUSCODES",
        ),
        (250, "2.1.0", ["Sender ok"], "Sender ok"),
        (
            550,
            "5.1.1",
            ["The user does not exist.", "Please check the address", "and try again."],
            "The user does not exist.\nPlease check the address\nand try again.",
        ),
        (354, None, ["go ahead"], "go ahead"),
        (221, "2.0.0", [""], ""),
    ]
    assert replies([WIRE]) == want
    assert replies([WIRE[i : i + 1] for i in range(len(WIRE))]) == want
    assert replies([WIRE[:100], WIRE[100:101], WIRE[101:]]) == want


def test_reply_parser_enhanced_class_must_match() -> None:
    assert replies([b"250 5.0.0 odd\r\n"]) == [(250, None, ["5.0.0 odd"], "5.0.0 odd")]
    assert replies([b"250 2.0 short\r\n"])[0][1] is None


@pytest.mark.parametrize(
    "wire",
    [
        b"hello\r\n",
        b"25 x\r\n",
        b"2500 x\r\n",
        b"250x\r\n",
        b"650 x\r\n",
        b"250-a\r\n251 b\r\n",
        b"250-a\r\n550 b\r\n",
        b"2" * 5000,
    ],
)
def test_reply_parser_garbage(wire: bytes) -> None:
    p = _core.ReplyParser()
    p.receive_data(wire)
    with pytest.raises(ParseError):
        p.next_reply()


def test_reply_parser_max_line() -> None:
    p = _core.ReplyParser(max_line=20)
    p.receive_data(b"250 " + b"x" * 30 + b"\r\n")
    with pytest.raises(ParseError):
        p.next_reply()
