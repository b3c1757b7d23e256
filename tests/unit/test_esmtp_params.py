"""The ESMTP parameter checks of MAIL and RCPT (smtpd/params.py), as tables.

Each row is the parameters as the core hands them over (keywords upper case,
ENVID/ORCPT/AUTH values already xtext-decoded; None for a keyword without a
value) and what must come back: the values kept, or the refusal with its
code and enhanced code.
"""

from __future__ import annotations

import pytest

from smtprs import _core
from smtprs import reply as R
from smtprs.smtpd import params as esmtp

MAX_SIZE = 10_000_000

# -- SIZE --------------------------------------------------------------------------

SIZE_ROWS = [
    ({}, None),
    ({"SIZE": None}, None),  # a bare SIZE declares nothing
    ({"SIZE": "0"}, 0),
    ({"SIZE": "1234"}, 1234),
    ({"SIZE": str(MAX_SIZE)}, MAX_SIZE),
    ({"SIZE": "0" * 20}, 0),
    ({"SIZE": ""}, (501, "5.5.4")),
    ({"SIZE": "12a"}, (501, "5.5.4")),
    ({"SIZE": "-1"}, (501, "5.5.4")),
    ({"SIZE": "1.5"}, (501, "5.5.4")),
    ({"SIZE": "1" * 21}, (501, "5.5.4")),
    ({"SIZE": str(MAX_SIZE + 1)}, (552, "5.3.4")),
    ({"SIZE": "9" * 20}, (552, "5.3.4")),
]


@pytest.mark.parametrize("params,expected", SIZE_ROWS, ids=[repr(p) for p, _ in SIZE_ROWS])
def test_mail_size(params: dict[str, str | None], expected: object) -> None:
    got = esmtp.mail_size(params, MAX_SIZE)
    if isinstance(expected, tuple):
        assert isinstance(got, R.Reply)
        assert (got.code, got.enhanced) == expected
    else:
        assert got == expected


def test_size_refusals_are_the_shared_replies() -> None:
    """The session logs SIZE_EXCEEDED (and only it): it must be that very reply."""
    assert esmtp.mail_size({"SIZE": "x"}, MAX_SIZE) == R.BAD_SIZE
    assert esmtp.mail_size({"SIZE": str(MAX_SIZE + 1)}, MAX_SIZE) == R.SIZE_EXCEEDED


@pytest.mark.parametrize(
    "size,reserve,wanted",
    [(None, 0, 0), (0, 0, 0), (None, 1000, 1000), (1000, 0, 1500), (1001, 0, 1501), (1000, 500, 2000)],
)
def test_space_wanted(size: int | None, reserve: int, wanted: int) -> None:
    assert esmtp.space_wanted(size, reserve) == wanted


# -- the other MAIL parameters ---------------------------------------------------

OWNERS = {"alice": {"alice@example.test", "sales@example.test"}}


def sender_allowed(user: str, address: str) -> bool:
    return address in OWNERS.get(user, set())


# (params, path is non-ASCII, authenticated user, expected: (smtputf8, kept) or (code, enhanced[, text part]))
MAIL_ROWS: list[tuple[str, dict[str, str | None], bool, str | None, object]] = [
    ("none", {}, False, None, (False, {})),
    ("size is not kept", {"SIZE": "100"}, False, None, (False, {})),
    ("body 7bit", {"BODY": "7BIT"}, False, None, (False, {"BODY": "7BIT"})),
    ("body 8bitmime, any case", {"BODY": "8bitMIME"}, False, None, (False, {"BODY": "8BITMIME"})),
    ("bare body declares nothing", {"BODY": None}, False, None, (False, {})),
    ("body binarymime", {"BODY": "BINARYMIME"}, False, None, (501, "5.5.4", "BODY")),
    ("body empty", {"BODY": ""}, False, None, (501, "5.5.4", "BODY")),
    ("smtputf8", {"SMTPUTF8": None}, False, None, (True, {"SMTPUTF8": None})),
    ("smtputf8 with utf-8 path", {"SMTPUTF8": None}, True, None, (True, {"SMTPUTF8": None})),
    ("smtputf8 with a value", {"SMTPUTF8": "yes"}, False, None, (501, "5.5.4", "SMTPUTF8 takes no value")),
    ("smtputf8 with an empty value", {"SMTPUTF8": ""}, False, None, (501, "5.5.4", "SMTPUTF8 takes no value")),
    ("utf-8 path without smtputf8", {}, True, None, (553, "5.6.7", "SMTPUTF8")),
    ("ret full", {"RET": "FULL"}, False, None, (False, {"RET": "FULL"})),
    ("ret hdrs, any case", {"RET": "hdrs"}, False, None, (False, {"RET": "HDRS"})),
    ("ret bad", {"RET": "BODY"}, False, None, (501, "5.5.4", "RET")),
    ("ret without a value", {"RET": None}, False, None, (501, "5.5.4", "RET")),
    ("ret empty", {"RET": ""}, False, None, (501, "5.5.4", "RET")),
    ("envid", {"ENVID": "QQ314159"}, False, None, (False, {"ENVID": "QQ314159"})),
    ("envid of 100", {"ENVID": "x" * 100}, False, None, (False, {"ENVID": "x" * 100})),
    ("envid of 101", {"ENVID": "x" * 101}, False, None, (501, "5.5.4", "ENVID")),
    ("envid empty", {"ENVID": ""}, False, None, (501, "5.5.4", "ENVID")),
    ("envid without a value", {"ENVID": None}, False, None, (501, "5.5.4", "ENVID")),
    ("envid control character", {"ENVID": "a\x01b"}, False, None, (501, "5.5.4", "ENVID")),
    ("envid non-ascii", {"ENVID": "caf\u00e9"}, False, None, (501, "5.5.4", "ENVID")),
    ("auth <> is forgotten", {"AUTH": "<>"}, False, "alice", (False, {})),
    ("auth from an unauthenticated client is forgotten", {"AUTH": "alice@example.test"}, False, None, (False, {})),
    (
        "auth the user may claim",
        {"AUTH": "sales@example.test"},
        False,
        "alice",
        (False, {"AUTH": "sales@example.test"}),
    ),
    ("auth the user may not claim", {"AUTH": "bob@example.test"}, False, "alice", (False, {})),
    (
        "auth the user's own mailbox",
        {"AUTH": "alice@example.test"},
        False,
        "alice",
        (False, {"AUTH": "alice@example.test"}),
    ),
    ("auth <> from an unauthenticated client", {"AUTH": "<>"}, False, None, (False, {})),
    ("auth a mailbox unauthenticated, another user's", {"AUTH": "sales@example.test"}, False, None, (False, {})),
    ("auth empty", {"AUTH": ""}, False, "alice", (501, "5.5.4", "AUTH")),
    ("auth without a value, unauthenticated", {"AUTH": None}, False, None, (501, "5.5.4", "AUTH")),
    ("auth without a value", {"AUTH": None}, False, "alice", (501, "5.5.4", "AUTH")),
    ("auth not a mailbox", {"AUTH": "not a mailbox"}, False, "alice", (501, "5.5.4", "AUTH")),
    ("unknown keyword", {"FOO": "1"}, False, None, (555, "5.5.4", "Unsupported option: FOO")),
    ("first unknown keyword is named", {"BODY": "7BIT", "XA": None, "XB": "1"}, False, None, (555, "5.5.4", ": XA")),
    ("a long keyword is cut short", {"X" * 200: None}, False, None, (555, "5.5.4", "X" * 64)),
    (
        "everything, kept in order",
        {
            "AUTH": "alice@example.test",
            "ENVID": "id1",
            "RET": "full",
            "SMTPUTF8": None,
            "BODY": "8bitmime",
            "SIZE": "5",
        },
        True,
        "alice",
        (True, {"BODY": "8BITMIME", "SMTPUTF8": None, "RET": "FULL", "ENVID": "id1", "AUTH": "alice@example.test"}),
    ),
    # with several problems, the first in the order of the checks is answered
    ("body before smtputf8", {"SMTPUTF8": "x", "BODY": "x"}, False, None, (501, "5.5.4", "BODY")),
    ("smtputf8 value before the path", {"SMTPUTF8": "x"}, True, None, (501, "5.5.4", "SMTPUTF8")),
    ("path before auth", {"AUTH": None}, True, None, (553, "5.6.7")),
    ("auth before ret", {"RET": "x", "AUTH": None}, False, None, (501, "5.5.4", "AUTH")),
    ("ret before envid", {"ENVID": "", "RET": "x"}, False, None, (501, "5.5.4", "RET")),
    ("envid before an unknown keyword", {"FOO": None, "ENVID": ""}, False, None, (501, "5.5.4", "ENVID")),
]


@pytest.mark.parametrize(
    "params,path_utf8,auth_user,expected", [r[1:] for r in MAIL_ROWS], ids=[r[0] for r in MAIL_ROWS]
)
def test_mail_params(params: dict[str, str | None], path_utf8: bool, auth_user: str | None, expected: tuple) -> None:
    got = esmtp.mail_params(params, path_utf8=path_utf8, auth_user=auth_user, sender_allowed=sender_allowed)
    if isinstance(expected[1], str):  # (code, enhanced code[, text]): refused
        assert isinstance(got, R.Reply), got
        assert (got.code, got.enhanced) == expected[:2]
        if len(expected) > 2:
            assert expected[2] in got.first_line
    else:
        assert isinstance(got, esmtp.MailParams), got
        assert (got.smtputf8, got.kept) == expected
        assert list(got.kept) == list(expected[1])  # the order the envelope keeps them in


def test_mail_params_do_not_change_their_input() -> None:
    params: dict[str, str | None] = {"BODY": "7bit", "FOO": "1"}
    esmtp.mail_params(params, path_utf8=False, auth_user=None, sender_allowed=sender_allowed)
    assert params == {"BODY": "7bit", "FOO": "1"}


# -- RCPT --------------------------------------------------------------------------

# (params, path is non-ASCII, MAIL had SMTPUTF8, recipients so far, expected: the DSN values kept or (code, enhanced[, text part]))
RCPT_ROWS: list[tuple[str, dict[str, str | None], bool, bool, int, object]] = [
    ("none", {}, False, False, 0, {}),
    ("notify never", {"NOTIFY": "NEVER"}, False, False, 0, {"NOTIFY": "NEVER"}),
    (
        "notify list, any case, spaces",
        {"NOTIFY": "success, Failure,DELAY"},
        False,
        False,
        0,
        {"NOTIFY": "SUCCESS,FAILURE,DELAY"},
    ),
    ("notify never with another", {"NOTIFY": "NEVER,SUCCESS"}, False, False, 0, (501, "5.5.4", "NOTIFY")),
    ("notify never after others", {"NOTIFY": "FAILURE,DELAY,NEVER"}, False, False, 0, (501, "5.5.4", "NOTIFY")),
    ("notify never twice", {"NOTIFY": "NEVER,NEVER"}, False, False, 0, (501, "5.5.4", "NOTIFY")),
    ("notify failure", {"NOTIFY": "failure"}, False, False, 0, {"NOTIFY": "FAILURE"}),
    ("notify repeated", {"NOTIFY": "DELAY,DELAY"}, False, False, 0, (501, "5.5.4", "NOTIFY")),
    ("notify unknown", {"NOTIFY": "SOMETIMES"}, False, False, 0, (501, "5.5.4", "NOTIFY")),
    ("notify empty", {"NOTIFY": ""}, False, False, 0, (501, "5.5.4", "NOTIFY")),
    ("notify without a value", {"NOTIFY": None}, False, False, 0, (501, "5.5.4", "NOTIFY")),
    ("notify trailing comma", {"NOTIFY": "SUCCESS,"}, False, False, 0, (501, "5.5.4", "NOTIFY")),
    ("orcpt", {"ORCPT": "rfc822;bob@example.test"}, False, False, 0, {"ORCPT": "rfc822;bob@example.test"}),
    (
        "orcpt type case and spaces",
        {"ORCPT": " RFC822 ;Bob@Example.test"},
        False,
        False,
        0,
        {"ORCPT": "rfc822;Bob@Example.test"},
    ),
    (
        "orcpt utf-8 type",
        {"ORCPT": "utf-8;b\u00f6b@example.test"},
        False,
        False,
        0,
        {"ORCPT": "utf-8;b\u00f6b@example.test"},
    ),
    ("orcpt value of 500", {"ORCPT": "rfc822;" + "a" * 500}, False, False, 0, {"ORCPT": "rfc822;" + "a" * 500}),
    ("orcpt value of 501", {"ORCPT": "rfc822;" + "a" * 501}, False, False, 0, (501, "5.5.4", "ORCPT")),
    ("orcpt without a type", {"ORCPT": "bob@example.test"}, False, False, 0, (501, "5.5.4", "ORCPT")),
    ("orcpt empty type", {"ORCPT": ";bob@example.test"}, False, False, 0, (501, "5.5.4", "ORCPT")),
    ("orcpt empty value", {"ORCPT": "rfc822;"}, False, False, 0, (501, "5.5.4", "ORCPT")),
    ("orcpt bad type", {"ORCPT": "rfc 822;bob@example.test"}, False, False, 0, (501, "5.5.4", "ORCPT")),
    ("orcpt without a value", {"ORCPT": None}, False, False, 0, (501, "5.5.4", "ORCPT")),
    ("orcpt x- type", {"ORCPT": "X-Local;bob"}, False, False, 0, {"ORCPT": "x-local;bob"}),
    ("orcpt only the first ; splits", {"ORCPT": "rfc822;a;b@c.test"}, False, False, 0, {"ORCPT": "rfc822;a;b@c.test"}),
    # RFC 3461 4.2 wants an rfc822 ORCPT in printable US-ASCII; the code does not look
    (
        "orcpt rfc822 non-ascii is kept",
        {"ORCPT": "rfc822;b\u00f6b@example.test"},
        False,
        False,
        0,
        {"ORCPT": "rfc822;b\u00f6b@example.test"},
    ),
    (
        "notify and orcpt",
        {"ORCPT": "rfc822;bob@example.test", "NOTIFY": "FAILURE"},
        False,
        False,
        0,
        {"NOTIFY": "FAILURE", "ORCPT": "rfc822;bob@example.test"},
    ),
    ("unknown keyword", {"NOTIFY": "NEVER", "XFOO": "1"}, False, False, 0, (555, "5.5.4", "Unsupported option: XFOO")),
    ("mail parameter on rcpt", {"SIZE": "1"}, False, False, 0, (555, "5.5.4", "SIZE")),
    ("utf-8 path with smtputf8", {}, True, True, 0, {}),
    ("utf-8 path without smtputf8", {}, True, False, 0, (553, "5.6.7")),
    ("one below the limit", {}, False, False, 99, {}),
    ("at the limit", {}, False, False, 100, (452, "4.5.3")),
    ("beyond the limit", {"NOTIFY": "NEVER"}, False, False, 250, (452, "4.5.3")),
    ("a bad parameter before the limit", {"NOTIFY": "x"}, False, False, 100, (501, "5.5.4", "NOTIFY")),
    # with several problems, the first in the order of the checks is answered
    ("notify before orcpt", {"ORCPT": "x", "NOTIFY": "x"}, False, False, 0, (501, "5.5.4", "NOTIFY")),
    ("orcpt before an unknown keyword", {"XFOO": None, "ORCPT": "x"}, False, False, 0, (501, "5.5.4", "ORCPT")),
    ("an unknown keyword before the path", {"XFOO": None}, True, False, 0, (555, "5.5.4")),
    ("the path before the limit", {}, True, False, 100, (553, "5.6.7")),
]


@pytest.mark.parametrize(
    "params,path_utf8,smtputf8,recipients,expected", [r[1:] for r in RCPT_ROWS], ids=[r[0] for r in RCPT_ROWS]
)
def test_rcpt_params(
    params: dict[str, str | None], path_utf8: bool, smtputf8: bool, recipients: int, expected: object
) -> None:
    got = esmtp.rcpt_params(params, path_utf8=path_utf8, smtputf8=smtputf8, recipients=recipients, max_recipients=100)
    if isinstance(expected, tuple):
        assert isinstance(got, R.Reply), got
        assert (got.code, got.enhanced) == expected[:2]
        if len(expected) > 2:
            assert expected[2] in got.first_line
    else:
        assert got == expected


# -- through the core's parser -------------------------------------------------------
# Keyword case, repeated keywords and xtext are the core's: a command line is
# parsed by _core.ServerConnection, and a Command's params go to the checks.

# (command line, authenticated user, expected: the values kept or (code, enhanced[, text part]))
LINE_ROWS: list[tuple[str, bytes, str | None, object]] = [
    ("size lower case", b"MAIL FROM:<a@b.test> size=100", None, {}),
    (
        "keywords in any case",
        b"MAIL FROM:<a@b.test> Body=8bitmime smtputf8 Ret=Hdrs envid=x auth=<>",
        None,
        {"BODY": "8BITMIME", "SMTPUTF8": None, "RET": "HDRS", "ENVID": "x"},
    ),
    ("size over the limit, lower case", b"MAIL FROM:<a@b.test> size=10000001", None, (552, "5.3.4")),
    ("size malformed, mixed case", b"MAIL FROM:<a@b.test> Size=ten", None, (501, "5.5.4", "SIZE")),
    ("smtputf8 with a value, lower case", b"MAIL FROM:<a@b.test> smtputf8=1", None, (501, "5.5.4", "SMTPUTF8")),
    ("unknown keyword named upper case", b"MAIL FROM:<a@b.test> x-foo=bar", None, (555, "5.5.4", "X-FOO")),
    ("size repeated", b"MAIL FROM:<a@b.test> SIZE=1 size=2", None, (555, "5.5.4", "SIZE given twice")),
    ("body repeated", b"MAIL FROM:<a@b.test> BODY=7BIT BODY=7BIT", None, (555, "5.5.4", "BODY")),
    ("envid xtext decoded", b"MAIL FROM:<a@b.test> ENVID=a+2Bb+3Dc", None, {"ENVID": "a+b=c"}),
    ("envid hex xtext", b"MAIL FROM:<a@b.test> ENVID=+41+42", None, {"ENVID": "AB"}),
    ("envid xtext space", b"MAIL FROM:<a@b.test> ENVID=a+20b", None, {"ENVID": "a b"}),
    ("envid bad xtext", b"MAIL FROM:<a@b.test> ENVID=a+zz", None, (501, "5.5.4", "ENVID")),
    ("envid truncated xtext", b"MAIL FROM:<a@b.test> ENVID=a+4", None, (501, "5.5.4", "ENVID")),
    ("envid xtext of a control character", b"MAIL FROM:<a@b.test> ENVID=a+01", None, (501, "5.5.4", "ENVID")),
    ("auth xtext decoded", b"MAIL FROM:<a@b.test> AUTH=alice+40example.test", "alice", {"AUTH": "alice@example.test"}),
    ("notify lower case", b"RCPT TO:<c@d.test> notify=success,delay", None, {"NOTIFY": "SUCCESS,DELAY"}),
    ("notify repeated keyword", b"RCPT TO:<c@d.test> NOTIFY=NEVER notify=NEVER", None, (555, "5.5.4", "NOTIFY")),
    ("orcpt xtext decoded", b"RCPT TO:<c@d.test> orcpt=rfc822;x+2By@d.test", None, {"ORCPT": "rfc822;x+y@d.test"}),
    ("mail keyword on rcpt", b"RCPT TO:<c@d.test> body=7bit", None, (555, "5.5.4", "BODY")),
]


def _check_line(line: bytes, auth_user: str | None) -> object:
    conn = _core.ServerConnection(max_message_size=MAX_SIZE)
    conn.receive_data(line + b"\r\n")
    cmd = conn.next_event()
    if isinstance(cmd, _core.CommandError):
        return cmd
    assert isinstance(cmd, _core.Command), cmd
    assert cmd.path is not None
    if cmd.verb == "RCPT":
        return esmtp.rcpt_params(
            cmd.params, path_utf8=cmd.path.is_utf8, smtputf8=False, recipients=0, max_recipients=100
        )
    size = esmtp.mail_size(cmd.params, MAX_SIZE)
    if isinstance(size, R.Reply):
        return size
    got = esmtp.mail_params(cmd.params, path_utf8=cmd.path.is_utf8, auth_user=auth_user, sender_allowed=sender_allowed)
    return got if isinstance(got, R.Reply) else got.kept


@pytest.mark.parametrize("line,auth_user,expected", [r[1:] for r in LINE_ROWS], ids=[r[0] for r in LINE_ROWS])
def test_parsed_line(line: bytes, auth_user: str | None, expected: object) -> None:
    got = _check_line(line, auth_user)
    if isinstance(expected, tuple):
        assert isinstance(got, (R.Reply, _core.CommandError)), got
        assert (got.code, got.enhanced) == expected[:2]
        if len(expected) > 2:
            text = got.first_line if isinstance(got, R.Reply) else got.text
            assert expected[2] in text
    else:
        assert got == expected


# -- the helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,ok",
    [
        ("a", True),
        ("x" * 100, True),
        ("with space~", True),
        ("", False),
        ("x" * 101, False),
        ("tab\t", False),
        ("\x7f", False),
    ],
)
def test_valid_envid(value: str, ok: bool) -> None:
    assert esmtp.valid_envid(value) is ok


def test_unsupported_reply_fits_a_reply_line() -> None:
    r = esmtp.unsupported("K" * 500)
    assert (r.code, r.enhanced) == (555, "5.5.4")
    assert len(r.encode()) <= 512
