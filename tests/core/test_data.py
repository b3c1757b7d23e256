"""Message content through the binding: DATA un-stuffing and its end across
any cuts, SMTP smuggling, the limits, the header scan, and BDAT by length."""

from __future__ import annotations

import pytest

from smtprs import _core

from .conftest import cuts, run, run_all_ways

MESSAGE = (
    b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"received: from c\r\n"
    b"\tby d; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <1@a>\r\n"
    b"Subject: dots\r\n"
    b"\r\n"
    b".leading dot\r\n"
    b"..two dots\r\n"
    b"Received: in the body does not count\r\n"
    b".\r\n"
)


def data_events(content: bytes, **kwargs: object) -> list[tuple[str, object]]:
    return run_all_ways(b"DATA\r\n" + content, **kwargs)


@pytest.mark.parametrize(
    "wire, content",
    [
        (b".\r\n", b""),
        (b"a\r\n.\r\n", b"a\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...x\r\n.\r\n", b"..x\r\n"),
        (b".a\r\n.b\r\n.\r\n", b"a\r\nb\r\n"),
        (b"a.\r\n.\r\n", b"a.\r\n"),
        (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
        (b"x" * 998 + b"\r\n.\r\n", b"x" * 998 + b"\r\n"),
    ],
)
def test_unstuffing(wire: bytes, content: bytes) -> None:
    events = data_events(wire + b"QUIT\r\n")
    assert events == [
        ("command", ("DATA", "")),
        ("content", content),
        ("end", (len(content), None, 0, "")),
        ("command", ("QUIT", "")),
        ("closed", False),
    ]


def test_data_end_figures() -> None:
    conn = _core.ServerConnection()
    conn.start_data()
    assert conn.in_data
    conn.receive_data(MESSAGE + b"NOOP\r\n")
    chunk = conn.next_event()
    assert isinstance(chunk, _core.DataChunk)
    end = conn.next_event()
    assert isinstance(end, _core.DataEnd)
    assert not conn.in_data
    content = MESSAGE[:-3].replace(b"\r\n..", b"\r\n.").replace(b"\r\n.leading", b"\r\nleading")
    assert chunk.data == content
    assert end.size == len(content)
    assert end.received_count == 2
    assert end.has_date and end.has_message_id
    assert end.header_size == MESSAGE.index(b"\r\n\r\n") + 4
    assert not end.eight_bit
    assert (end.error, end.code, end.enhanced, end.text) == (None, 0, "", "")
    ev = conn.next_event()
    assert isinstance(ev, _core.Command) and ev.verb == "NOOP"


def test_header_scan_edge_cases() -> None:
    def end_of(content: bytes) -> _core.DataEnd:
        conn = _core.ServerConnection()
        conn.start_data()
        conn.receive_data(content)
        while not isinstance(ev := conn.next_event(), _core.DataEnd):
            assert ev is not None
        return ev

    # No blank line: the whole message is the header block.
    e = end_of(b"Subject: x\r\nno blank line\r\n.\r\n")
    assert e.header_size == e.size == 27
    assert (e.received_count, e.has_date, e.has_message_id) == (0, False, False)
    # Starts with the blank line: an empty header block.
    e = end_of(b"\r\nDate: body\r\n.\r\n")
    assert (e.header_size, e.has_date) == (2, False)
    e = end_of("Subject: é\r\n\r\n.\r\n".encode())
    assert e.eight_bit


def test_chunks_follow_reads() -> None:
    conn = _core.ServerConnection()
    conn.start_data()
    body = b"line\r\n" * 20000
    pieces = [body[i : i + 50000] for i in range(0, len(body), 50000)]
    got = bytearray()
    for p in pieces:
        conn.receive_data(p)
        ev = conn.next_event()
        assert isinstance(ev, _core.DataChunk)
        got += ev.data
        assert conn.next_event() is None  # one DataChunk per read
    conn.receive_data(b".\r\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.DataEnd) and ev.size == len(body)
    assert bytes(got) == body


def test_big_read_is_decoded_in_one_chunk() -> None:
    # Over 64 KiB: decoded with the GIL released.
    body = (b"." + b"x" * 77 + b"\r\n") * 20000
    conn = _core.ServerConnection()
    conn.start_data()
    conn.receive_data(b"\r\n" + body + b".\r\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.DataChunk)
    assert ev.data == b"\r\n" + body.replace(b"\r\n.", b"\r\n")[1:]
    assert isinstance(conn.next_event(), _core.DataEnd)


SMUGGLING = [b"\n.\n", b"\r.\r", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\r", b"\n.\r"]


@pytest.mark.parametrize("smuggle", SMUGGLING)
def test_smuggled_end_never_ends_data(smuggle: bytes) -> None:
    data = b"DATA\r\nSubject: hi\r\n\r\nbody" + smuggle + b"MAIL FROM:<x@y>\r\nRCPT TO:<victim@z>\r\nDATA\r\n"
    events = run_all_ways(data)
    assert events == [("command", ("DATA", "")), ("closed", True)]
    # The real end comes later: one rejected message, no smuggled command.
    events = run_all_ways(data + b"evil\r\n.\r\nQUIT\r\n")
    assert events == [
        ("command", ("DATA", "")),
        ("end", (events[1][1][0], "bare_newline", 554, "5.5.2")),  # type: ignore[index]
        ("command", ("QUIT", "")),
        ("closed", False),
    ]


@pytest.mark.parametrize("smuggle", SMUGGLING)
def test_no_content_after_a_bare_newline(smuggle: bytes) -> None:
    conn = _core.ServerConnection()
    conn.start_data()
    conn.receive_data(b"Subject: hi\r\n\r\nbody" + smuggle + b"MAIL FROM:<x@y>\r\n")
    conn.receive_data(b"more\r\n.\r\n")
    seen = bytearray()
    while not isinstance(ev := conn.next_event(), _core.DataEnd):
        assert isinstance(ev, _core.DataChunk)
        seen += ev.data
    assert b"MAIL" not in seen
    assert ev.error == "bare_newline"
    assert ev.text == "Message rejected: bare CR or LF in message text"


def test_size_limit() -> None:
    events = data_events(b"0123456789\r\n" * 10 + b".\r\nQUIT\r\n", max_message_size=100)
    assert events[1] == ("end", (120, "size", 552, "5.3.4"))
    assert events[2] == ("command", ("QUIT", ""))
    events = data_events(b"0123456789\r\n" * 10 + b".\r\n", max_message_size=120)
    assert events[2] == ("end", (120, None, 0, ""))


def test_size_limit_text_and_no_chunks_after() -> None:
    conn = _core.ServerConnection(max_message_size=1000)
    conn.start_data()
    conn.receive_data(b"x" * 900 + b"\r\n")
    assert isinstance(conn.next_event(), _core.DataChunk)
    conn.receive_data(b"y" * 500 + b"\r\n")
    # The content before the first octet over the limit, then nothing.
    ev = conn.next_event()
    assert isinstance(ev, _core.DataChunk) and ev.data == b"y" * 98
    assert conn.next_event() is None
    conn.receive_data(b"z\r\n")
    assert conn.next_event() is None
    conn.receive_data(b".\r\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.DataEnd)
    assert ev.text == "Message size exceeds fixed maximum message size"
    assert ev.size == 1407


def test_max_message_size_setter() -> None:
    conn = _core.ServerConnection()
    assert conn.max_message_size == 10485760
    conn.max_message_size = 10
    assert conn.max_message_size == 10
    conn.start_data()
    conn.receive_data(b"01234567890\r\n.\r\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.DataChunk) and ev.data == b"0123456789"
    ev = conn.next_event()
    assert isinstance(ev, _core.DataEnd) and ev.error == "size"


def test_line_length_limit() -> None:
    events = data_events(b"x" * 999 + b"\r\n.\r\n")
    assert events[1] == ("end", (1001, "line_length", 554, "5.6.0"))
    # A stuffed dot does not count towards the line.
    events = data_events(b"." + b"x" * 998 + b"\r\n.\r\n")
    assert events[2] == ("end", (1000, None, 0, ""))
    events = data_events(b"x" * 50 + b"\r\n.\r\n", max_text_line=50)
    assert events[1][1][1] == "line_length"  # type: ignore[index]


def test_header_size_limit() -> None:
    events = data_events(b"Subject: " + b"x" * 100 + b"\r\n\r\nbody\r\n.\r\n", max_header_size=50)
    assert events[1][1][1:] == ("header_size", 552, "5.3.4")  # type: ignore[index]


def test_first_error_wins() -> None:
    events = data_events(b"a\nb" + b"x" * 2000 + b"\r\n.\r\n", max_message_size=100)
    assert events[1][1][1] == "bare_newline"  # type: ignore[index]


def content_and_ends(reads: list[bytes], **kwargs: object) -> tuple[bytes, list[tuple[object, ...]]]:
    """All content handed out (refused messages' too) and the end events."""
    conn = _core.ServerConnection(**kwargs)  # type: ignore[arg-type]
    content = bytearray()
    ends: list[tuple[object, ...]] = []
    for r in [*reads, b""]:
        conn.receive_data(r)
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, _core.ConnectionClosed):
                break
            if isinstance(ev, _core.DataChunk):
                content += ev.data
            elif isinstance(ev, _core.Command) and ev.verb == "DATA":
                conn.start_data()
            elif isinstance(ev, _core.DataEnd):
                ends.append((ev.size, ev.error))
            elif isinstance(ev, _core.BdatChunkEnd):
                ends.append((ev.chunk_size, ev.total_size))
    return bytes(content), ends


@pytest.mark.parametrize(
    "data, limits, content, error",
    [
        # A line over the limit before a bare LF in it: line_length, and the
        # other way round: bare_newline (before, it depended on the reads).
        (b"DATA\r\nabcdefgh\nx\r\n.\r\n", {"max_text_line": 4}, b"abcd", "line_length"),
        (b"DATA\r\nab\ncdefgh\r\n.\r\n", {"max_text_line": 4}, b"ab", "bare_newline"),
        (b"DATA\r\nSubject: abcdef\nx\r\n\r\n.\r\n", {"max_header_size": 10}, b"Subject: a", "header_size"),
        (b"DATA\r\nab\r\n\r\ncdefgh\r\n.\r\n", {"max_message_size": 6}, b"ab\r\n\r\n", "size"),
        # BDAT: the chunk's octets before the limit, however the chunk arrives
        # (fuzz finds regress-server-bdat-chunk-events, ...-cut-dependent-events).
        (b"BDAT 6\r\nabcdefBDAT 0 LAST\r\n", {"max_message_size": 4}, b"abcd", "size"),
        (b"BDAT 2\r\nabBDAT 5 LAST\r\ncdefg", {"max_header_size": 4}, b"abcd", "header_size"),
    ],
)
def test_refusal_and_content_before_it_do_not_depend_on_reads(
    data: bytes, limits: dict[str, int], content: bytes, error: str
) -> None:
    """The first problem in octet order is the refusal; the content before
    it is handed out, nothing after it, whatever the reads."""
    results = {str(reads): content_and_ends(reads, **limits) for reads in cuts(data)}
    results.update({f"cut {i}": content_and_ends([data[:i], data[i:]], **limits) for i in range(1, len(data))})
    whole = content_and_ends([data], **limits)
    for how, got in results.items():
        assert got == whole, how
    assert whole[0] == content
    assert whole[1][-1][1] == error  # type: ignore[index]


def test_bdat_by_length() -> None:
    data = b"BDAT 8\r\nab\r\n.\r\nxBDAT 0\r\nBDAT 4 LAST\r\nQUITNOOP\r\n"
    assert run_all_ways(data) == [
        ("command", ("BDAT", "8")),
        ("chunk-end", (8, 8)),
        ("command", ("BDAT", "0")),
        ("chunk-end", (0, 8)),
        ("command", ("BDAT", "4 LAST")),
        ("content", b"ab\r\n.\r\nxQUIT"),
        ("end", (12, None, 0, "")),
        ("command", ("NOOP", "")),
        ("closed", False),
    ]


def test_bdat_chunk_split_across_reads() -> None:
    conn = _core.ServerConnection()
    conn.receive_data(b"BDAT 10 LAST\r\nhello")
    ev = conn.next_event()
    assert isinstance(ev, _core.Command) and ev.bdat_size == 10 and ev.bdat_last
    assert conn.in_data
    ev = conn.next_event()
    assert isinstance(ev, _core.DataChunk) and ev.data == b"hello"
    assert conn.next_event() is None
    conn.receive_data(b"\n\r\n.\rQUIT\r\n")
    ev = conn.next_event()
    assert isinstance(ev, _core.DataChunk) and ev.data == b"\n\r\n.\r"  # verbatim, no checks
    ev = conn.next_event()
    assert isinstance(ev, _core.DataEnd) and ev.size == 10 and ev.error is None
    assert not conn.in_data
    ev = conn.next_event()
    assert isinstance(ev, _core.Command) and ev.verb == "QUIT"


def test_bdat_0_last() -> None:
    assert run_all_ways(b"BDAT 0 LAST\r\nQUIT\r\n") == [
        ("command", ("BDAT", "0 LAST")),
        ("content", b""),
        ("end", (0, None, 0, "")),
        ("command", ("QUIT", "")),
        ("closed", False),
    ]


def test_bdat_header_scan_and_size_limit() -> None:
    msg = b"Received: x\r\nDate: y\r\n\r\nbody"
    conn = _core.ServerConnection()
    conn.receive_data(b"BDAT %d\r\n%sBDAT %d LAST\r\n%s" % (10, msg[:10], len(msg) - 10, msg[10:]))
    ends = [ev for ev in iter(conn.next_event, None) if isinstance(ev, (_core.DataEnd, _core.BdatChunkEnd))]
    end = ends[-1]
    assert isinstance(end, _core.DataEnd)
    assert (end.received_count, end.has_date, end.header_size, end.size) == (1, True, 24, len(msg))
    events = run([b"BDAT 5\r\n12345BDAT 5 LAST\r\n67890NOOP\r\n"], max_message_size=8)
    assert ("end", (10, "size", 552, "5.3.4")) in events
    assert events[-2] == ("command", ("NOOP", ""))


def test_reset_transaction_restarts_bdat_total() -> None:
    conn = _core.ServerConnection()
    conn.receive_data(b"BDAT 3\r\nabcRSET\r\nBDAT 2\r\nde")
    ends = [ev for ev in iter(conn.next_event, None) if isinstance(ev, _core.BdatChunkEnd)]
    assert [(e.chunk_size, e.total_size) for e in ends] == [(3, 3), (2, 2)]
    conn.reset_transaction()
    conn.receive_data(b"BDAT 1 LAST\r\nf")
    end = [ev for ev in iter(conn.next_event, None) if isinstance(ev, _core.DataEnd)][0]
    assert end.size == 1
