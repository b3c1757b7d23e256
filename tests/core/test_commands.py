"""Command parsing through the binding: verbs, MAIL/RCPT paths and ESMTP
parameters, BDAT, and every CommandError code."""

from __future__ import annotations

import pytest

from smtprs import _core


def parse(line: bytes, **kwargs: bool) -> _core.Command | _core.CommandError:
    conn = _core.ServerConnection(**kwargs)
    conn.receive_data(line + b"\r\n")
    ev = conn.next_event()
    assert isinstance(ev, (_core.Command, _core.CommandError))
    return ev


def command(line: bytes, **kwargs: bool) -> _core.Command:
    ev = parse(line, **kwargs)
    assert isinstance(ev, _core.Command), f"{line!r}: {ev.code} {ev.enhanced} {ev.text}"
    return ev


@pytest.mark.parametrize(
    "line, verb, arg",
    [
        (b"helo client", "HELO", "client"),
        (b"EHLO [192.0.2.1]", "EHLO", "[192.0.2.1]"),
        (b"LHLO lmtp.example", "LHLO", "lmtp.example"),
        (b"DATA", "DATA", ""),
        (b"rset", "RSET", ""),
        (b"NOOP", "NOOP", ""),
        (b"NOOP anything at all", "NOOP", "anything at all"),
        (b"VRFY postmaster", "VRFY", "postmaster"),
        (b"EXPN list", "EXPN", "list"),
        (b"HELP", "HELP", ""),
        (b"HELP MAIL", "HELP", "MAIL"),
        (b"QUIT", "QUIT", ""),
        (b"StartTLS", "STARTTLS", ""),
        (b"AUTH PLAIN AGEAYg==", "AUTH", "PLAIN AGEAYg=="),
        (b"AUTH LOGIN", "AUTH", "LOGIN"),
    ],
)
def test_verbs(line: bytes, verb: str, arg: str) -> None:
    c = command(line)
    assert (c.verb, c.arg, c.path, c.params, c.bdat_size, c.bdat_last) == (verb, arg, None, {}, None, False)


def test_mail() -> None:
    c = command(b"MAIL FROM:<sender@example.org> SIZE=1000 BODY=8BITMIME")
    assert c.path is not None
    assert (c.path.local_part, c.path.domain) == ("sender", "example.org")
    assert c.params == {"SIZE": "1000", "BODY": "8BITMIME"}
    assert command(b"mail from:<>").path == _core.parse_path("<>")
    # Optional spaces after the colon, as Postfix allows.
    assert command(b"MAIL FROM: <a@b>").path == _core.parse_path("<a@b>")
    c = command(b"MAIL FROM:<a@b> ret=HDRS envid=QQ+2Bx smtputf8")
    assert c.params == {"RET": "HDRS", "ENVID": "QQ+x", "SMTPUTF8": None}
    c = command(b"MAIL FROM:<a@b> AUTH=user+40example.org")
    assert c.params == {"AUTH": "user@example.org"}


def test_rcpt() -> None:
    c = command(b"RCPT TO:<r@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r+2Bx@example.com")
    assert c.path is not None and c.path.address() == "r@example.com"
    assert c.params == {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;r+x@example.com"}
    c = command(b'RCPT TO:<"odd > name"@example.com>')
    assert c.path is not None and c.path.local_part == "odd > name" and c.path.quoted
    c = command(b"RCPT TO:<@relay.example,@r2.example:u@example.com>")
    assert c.path is not None and c.path.route == ["relay.example", "r2.example"]


@pytest.mark.parametrize("line", [b"RCPT TO:<Postmaster>", b"RCPT TO:<postmaster>", b"rcpt to:<POSTMASTER>"])
def test_rcpt_postmaster_without_domain(line: bytes) -> None:
    c = command(line)
    assert c.path is not None
    assert c.path.local_part.lower() == "postmaster"
    assert c.path.domain == ""
    assert not c.path.is_null


def test_utf8_mail_needs_smtputf8_param_and_offer() -> None:
    line = "MAIL FROM:<δοκιμή@παράδειγμα.δοκιμή> SMTPUTF8".encode()
    c = command(line)
    assert c.path is not None and c.path.is_utf8
    assert isinstance(parse(line, smtputf8=False), _core.CommandError)
    err = parse("MAIL FROM:<δοκιμή@example.org>".encode())
    assert isinstance(err, _core.CommandError)
    assert (err.code, err.enhanced) == (553, "5.1.7")
    assert "SMTPUTF8" in err.text


def test_utf8_rcpt_follows_the_transaction() -> None:
    conn = _core.ServerConnection()
    rcpt = "RCPT TO:<ü@example.org>\r\n".encode()
    conn.receive_data(rcpt + b"MAIL FROM:<a@b> SMTPUTF8\r\n" + rcpt + b"RSET\r\n" + rcpt)
    kinds = []
    while (ev := conn.next_event()) is not None:
        assert isinstance(ev, (_core.Command, _core.CommandError))
        kinds.append((ev.verb, isinstance(ev, _core.Command)))
    assert kinds == [("RCPT", False), ("MAIL", True), ("RCPT", True), ("RSET", True), ("RCPT", False)]
    conn.receive_data(b"MAIL FROM:<a@b> SMTPUTF8\r\n" + rcpt)
    assert isinstance(conn.next_event(), _core.Command)
    conn.reset_transaction()
    ev = conn.next_event()
    assert isinstance(ev, _core.CommandError) and (ev.code, ev.enhanced) == (553, "5.1.3")


ERRORS = [
    # unknown verb
    (b"XYZZY", 500, "5.5.2", None),
    (b"MAILFROM:<a@b>", 500, "5.5.2", None),
    (b"", 500, "5.5.2", None),
    # bare CR / LF, NUL, invalid UTF-8
    (b"NOOP\rx", 500, "5.5.2", None),
    (b"NOOP\nx", 500, "5.5.2", None),
    (b"NOOP \x00", 500, "5.5.2", "NOOP"),
    (b"NOOP \xff", 500, "5.5.2", "NOOP"),
    # arguments missing or not allowed
    (b"HELO", 501, "5.5.4", "HELO"),
    (b"EHLO", 501, "5.5.4", "EHLO"),
    (b"EHLO  ", 501, "5.5.4", "EHLO"),
    (b"LHLO", 501, "5.5.4", "LHLO"),
    (b"DATA now", 501, "5.5.4", "DATA"),
    (b"RSET x", 501, "5.5.4", "RSET"),
    (b"QUIT please", 501, "5.5.4", "QUIT"),
    (b"STARTTLS x", 501, "5.5.4", "STARTTLS"),
    (b"VRFY", 501, "5.5.4", "VRFY"),
    (b"EXPN", 501, "5.5.4", "EXPN"),
    (b"AUTH", 501, "5.5.4", "AUTH"),
    # MAIL / RCPT syntax
    (b"MAIL", 501, "5.5.4", "MAIL"),
    (b"MAIL <a@b>", 501, "5.5.4", "MAIL"),
    (b"MAIL TO:<a@b>", 501, "5.5.4", "MAIL"),
    (b"MAIL FROM:<a@b>SIZE=1", 501, "5.5.4", "MAIL"),
    (b"RCPT", 501, "5.5.4", "RCPT"),
    (b"RCPT FROM:<a@b>", 501, "5.5.4", "RCPT"),
    # bad paths
    (b"MAIL FROM:a@b", 553, "5.1.7", "MAIL"),
    (b"MAIL FROM:<a@b", 553, "5.1.7", "MAIL"),
    (b"MAIL FROM:<a@b.>", 553, "5.1.7", "MAIL"),
    (b"MAIL FROM:<a..b@c>", 553, "5.1.7", "MAIL"),
    (b"MAIL FROM:<postmaster>", 553, "5.1.7", "MAIL"),
    (b"RCPT TO:<>", 553, "5.1.3", "RCPT"),
    (b"RCPT TO:b@c", 553, "5.1.3", "RCPT"),
    (b"RCPT TO:<a@[300.1.1.1]>", 553, "5.1.3", "RCPT"),
    (b"RCPT TO:<a b@c>", 553, "5.1.3", "RCPT"),
    # parameters
    (b"MAIL FROM:<a@b> SIZE=1 size=2", 555, "5.5.4", "MAIL"),
    (b"RCPT TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER", 555, "5.5.4", "RCPT"),
    (b"MAIL FROM:<a@b> SIZE=", 501, "5.5.4", "MAIL"),
    (b"MAIL FROM:<a@b> =1", 501, "5.5.4", "MAIL"),
    (b"MAIL FROM:<a@b> ENVID=a+ZZ", 501, "5.5.4", "MAIL"),
    (b"RCPT TO:<a@b> ORCPT=rfc822;a=b", 501, "5.5.4", "RCPT"),
]


@pytest.mark.parametrize("line, code, enhanced, verb", ERRORS)
def test_command_errors(line: bytes, code: int, enhanced: str, verb: str | None) -> None:
    ev = parse(line)
    assert isinstance(ev, _core.CommandError), line
    assert (ev.code, ev.enhanced, ev.verb, ev.fatal) == (code, enhanced, verb, False)
    assert ev.text
    if line.startswith(b"MAIL") and code == 501 and b"FROM:" not in line:
        assert "Syntax: MAIL FROM:<address>" in ev.text


def test_unknown_verb_text() -> None:
    ev = parse(b"XYZZY")
    assert isinstance(ev, _core.CommandError) and ev.text == "Command unrecognized"


@pytest.mark.parametrize(
    "line, size, last",
    [
        (b"BDAT 0", 0, False),
        (b"BDAT 100", 100, False),
        (b"bdat 5 last", 5, True),
        (b"BDAT 0 LAST", 0, True),
        (b"BDAT 18446744073709551615", 2**64 - 1, False),
    ],
)
def test_bdat(line: bytes, size: int, last: bool) -> None:
    c = command(line)
    assert (c.verb, c.bdat_size, c.bdat_last) == ("BDAT", size, last)


@pytest.mark.parametrize(
    "line",
    [
        b"BDAT",
        b"BDAT x",
        b"BDAT -1",
        b"BDAT 1.5",
        b"BDAT 10 LASTLY",
        b"BDAT 10 LAST more",
        b"BDAT " + b"9" * 21,
        b"BDAT 99999999999999999999",
    ],
)
def test_bdat_syntax_is_fatal(line: bytes) -> None:
    ev = parse(line)
    assert isinstance(ev, _core.CommandError)
    assert (ev.code, ev.enhanced, ev.verb, ev.fatal) == (501, "5.5.4", "BDAT", True)
