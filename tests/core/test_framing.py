"""Command framing through the binding: reads cut anywhere, pipelining,
over-long lines, bare CR/LF, read_line, discard_buffer and ConnectionClosed."""

from __future__ import annotations

import pytest

from smtprs import _core

from .conftest import run, run_all_ways


def test_limits_are_exported() -> None:
    assert _core.MAX_COMMAND_LINE == 512
    assert _core.MAX_TEXT_LINE == 1000
    assert isinstance(_core.__version__, str)


def test_command_cut_across_two_reads(conn: _core.ServerConnection) -> None:
    conn.receive_data(b"MAIL FROM:<a@exa")
    assert conn.next_event() is None
    assert conn.buffered == 16
    conn.receive_data(b"mple.org> SIZE=100\r")
    assert conn.next_event() is None
    conn.receive_data(b"\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.Command)
    assert ev.verb == "MAIL"
    assert ev.arg == "FROM:<a@example.org> SIZE=100"
    assert ev.path is not None and ev.path.address() == "a@example.org"
    assert ev.params == {"SIZE": "100"}
    assert conn.next_event() is None
    assert conn.buffered == 0


def test_ten_pipelined_commands_in_one_read(conn: _core.ServerConnection) -> None:
    lines = [
        b"EHLO client.example",
        b"MAIL FROM:<a@b.example>",
        *(b"RCPT TO:<r%d@c.example>" % i for i in range(6)),
        b"NOOP",
        b"QUIT",
    ]
    conn.receive_data(b"".join(line + b"\r\n" for line in lines))
    verbs = []
    while (ev := conn.next_event()) is not None:
        assert isinstance(ev, _core.Command)
        verbs.append(ev.verb)
    assert verbs == ["EHLO", "MAIL", *["RCPT"] * 6, "NOOP", "QUIT"]


def test_pipelined_commands_every_cutting() -> None:
    data = b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRSET\r\nQUIT\r\n"
    assert run_all_ways(data) == [
        ("command", ("EHLO", "x")),
        ("command", ("MAIL", "FROM:<a@b>")),
        ("command", ("RCPT", "TO:<c@d>")),
        ("command", ("RSET", "")),
        ("command", ("QUIT", "")),
        ("closed", False),
    ]


def test_line_too_long_is_one_error_and_memory_stays_bounded() -> None:
    data = b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n"
    assert run_all_ways(data) == [
        ("error", (500, "5.5.2", None, False)),
        ("command", ("NOOP", "")),
        ("closed", False),
    ]
    conn = _core.ServerConnection()
    for _ in range(100):
        conn.receive_data(b"y" * 10_000)
        assert conn.next_event() is None
        assert conn.buffered <= 512
    conn.receive_data(b"\r\nQUIT\r\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.CommandError) and ev.text == "Line too long"
    assert isinstance(conn.next_event(), _core.Command)


def test_line_limit_is_exact() -> None:
    ok = b"NOOP " + b"a" * (512 - 7) + b"\r\n"
    assert len(ok) == 512
    assert run([ok]) == [("command", ("NOOP", "a" * 505)), ("closed", False)]
    assert run([b"NOOP " + b"a" * 506 + b"\r\n"])[0][0] == "error"
    assert run([ok], max_command_line=100)[0][0] == "error"


def test_auth_line_may_be_longer() -> None:
    # RFC 4954 4: an AUTH command with an initial response may reach 12288 octets.
    line = b"AUTH PLAIN " + b"A" * 4000 + b"\r\n"
    assert run([line])[0] == ("command", ("AUTH", "PLAIN " + "A" * 4000))


@pytest.mark.parametrize(
    "data, verb",
    [
        (b"NOOP\nQUIT\r\n", None),
        (b"NOOP\rQUIT\r\n", None),
        (b"MAIL FROM:<a@b>\nRCPT TO:<c@d>\r\n", "MAIL"),
        (b"MAIL FROM:<a@b>\rRCPT TO:<c@d>\r\n", "MAIL"),
        (b"\n\r\n", None),
        (b"\r\r\n", None),
    ],
)
def test_bare_cr_or_lf_never_splits_a_command_line(data: bytes, verb: str | None) -> None:
    assert run_all_ways(data) == [("error", (500, "5.5.2", verb, False)), ("closed", False)]


def test_nul_and_invalid_utf8() -> None:
    for data, verb in ((b"NOOP \x00\r\n", "NOOP"), (b"NOOP \xff\xfe\r\n", "NOOP"), (b"\xc3\r\n", None)):
        assert run([data]) == [("error", (500, "5.5.2", verb, False)), ("closed", False)]


def test_read_line_for_auth_continuations(conn: _core.ServerConnection) -> None:
    conn.receive_data(b"AUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\nNOOP\r\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.Command) and ev.verb == "AUTH" and ev.arg == "LOGIN"
    for want in (b"dXNlcg==", b"cGFzcw=="):
        conn.read_line()
        ev = conn.next_event()
        assert isinstance(ev, _core.RawLine)
        assert ev.line == want
    ev = conn.next_event()
    assert isinstance(ev, _core.Command) and ev.verb == "NOOP"


def test_read_line_split_and_too_long(conn: _core.ServerConnection) -> None:
    conn.read_line()
    conn.receive_data(b"*")
    assert conn.next_event() is None
    conn.receive_data(b"\r\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.RawLine) and ev.line == b"*"
    conn.read_line()
    conn.receive_data(b"A" * 20000 + b"\r\nNOOP\r\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.CommandError) and (ev.code, ev.enhanced) == (500, "5.5.6")
    ev = conn.next_event()
    assert isinstance(ev, _core.Command) and ev.verb == "NOOP"


def test_discard_buffer_after_starttls(conn: _core.ServerConnection) -> None:
    conn.receive_data(b"STARTTLS\r\nMAIL FROM:<injected@evil>\r\nRCPT TO:<x@y>\r\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.Command) and ev.verb == "STARTTLS"
    assert conn.buffered == 42
    assert conn.discard_buffer() == 42
    assert conn.buffered == 0
    assert conn.next_event() is None
    assert conn.discard_buffer() == 0


def test_connection_closed() -> None:
    assert run([b"QUIT\r\n"]) == [("command", ("QUIT", "")), ("closed", False)]
    assert run([b"NOOP\r\nQUI"]) == [("command", ("NOOP", "")), ("closed", True)]
    assert run([b"DATA\r\nSubject: x\r\n"]) == [("command", ("DATA", "")), ("closed", True)]
    assert run([b"BDAT 10\r\nabc"]) == [("command", ("BDAT", "10")), ("closed", True)]
    assert run([]) == [("closed", False)]


def test_connection_closed_after_buffered_events(conn: _core.ServerConnection) -> None:
    conn.receive_data(b"NOOP\r\nQUIT\r\n")
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), _core.Command)
    assert isinstance(conn.next_event(), _core.Command)
    ev = conn.next_event()
    assert isinstance(ev, _core.ConnectionClosed) and ev.mid_data is False
    # It stays closed.
    assert isinstance(conn.next_event(), _core.ConnectionClosed)


def test_misuse_raises(conn: _core.ServerConnection) -> None:
    conn.start_data()
    assert conn.in_data
    try:
        conn.start_data()
    except RuntimeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("start_data twice")
    conn.receive_data(b"")
    try:
        conn.receive_data(b"x")
    except RuntimeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("data after close")


def test_bytes_like_input(conn: _core.ServerConnection) -> None:
    conn.receive_data(bytearray(b"NO"))
    conn.receive_data(memoryview(b"OP\r\n"))
    ev = conn.next_event()
    assert isinstance(ev, _core.Command) and ev.verb == "NOOP"
