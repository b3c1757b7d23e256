"""The milter codec (milter/protocol.py) and the pure parts of the driver
(milter/driver.py): packets both ways, every reply and action, malformed and
oversized packets, the header block split and the header changes, and the
configuration of milters per listener."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtprs import config, rewrite
from smtprs.errors import ConfigError
from smtprs.milter import driver
from smtprs.milter import protocol as P
from smtprs.milter.client import Endpoint


def decode_one(raw: bytes) -> tuple[bytes, bytes]:
    d = P.Decoder()
    d.feed(raw)
    pkt = d.next()
    assert pkt is not None
    assert d.next() is None
    return pkt


RESPONSES: list[P.Response] = [
    P.Verdict("accept"),
    P.Verdict("continue"),
    P.Verdict("reject"),
    P.Verdict("tempfail"),
    P.Verdict("discard"),
    P.Verdict("skip"),
    P.Verdict("progress"),
    P.Verdict("shutdown"),
    P.Verdict("conn_fail"),
    P.OptNeg(6, P.ALL_ACTIONS, P.SMFIP_NOHELO | P.SMFIP_NR_HDR),
    P.OptNeg(6, 0x3, 0, ((P.SMFIC_MAIL, ("i", "{auth_authen}")), (P.SMFIC_BODYEOB, ("i",)))),
    P.ReplyCode(550, "5.7.1", ("Spam message rejected",)),
    P.ReplyCode(451, "4.7.1", ("first line", "second line")),
    P.ReplyCode(554, None, ("no enhanced code",)),
    P.AddHeader("X-Spam", "Yes"),
    P.AddHeader("X-Folded", "one\n\ttwo"),
    P.InsertHeader(0, "DKIM-Signature", "v=1; a=rsa-sha256"),
    P.ChangeHeader(2, "Subject", "new"),
    P.ChangeHeader(1, "X-Gone", ""),
    P.ReplaceBody(b"new body\r\n" * 10),
    P.AddRcpt("carol@example.test"),
    P.AddRcpt("dave@example.test", "NOTIFY=NEVER"),
    P.DelRcpt("bob@example.test"),
    P.ChangeFrom("new@example.test"),
    P.ChangeFrom("new@example.test", "SIZE=100"),
    P.ChangeFrom(""),
    P.Quarantine("looks odd"),
    P.SetSymList(P.SMFIC_RCPT, ("{rcpt_addr}",)),
]


@pytest.mark.parametrize("r", RESPONSES, ids=repr)
def test_every_reply_round_trips(r: P.Response) -> None:
    assert P.decode_response(*decode_one(P.encode_response(r))) == r


def test_commands_decode() -> None:
    cases = [
        (P.optneg(), P.Command(P.SMFIC_OPTNEG, numbers=(6, P.ALL_ACTIONS, P.OUR_STEPS))),
        (
            P.macros(P.SMFIC_CONNECT, {"j": "mx.test", "{client_addr}": "192.0.2.1"}),
            P.Command(P.SMFIC_MACRO, args=["j", "mx.test", "{client_addr}", "192.0.2.1"], stage=P.SMFIC_CONNECT),
        ),
        (
            P.connect("[192.0.2.1]", b"4", 40000, "192.0.2.1"),
            P.Command(P.SMFIC_CONNECT, args=["[192.0.2.1]", "192.0.2.1"], numbers=(40000,), family=b"4"),
        ),
        (P.connect("x", b"U", 0, ""), P.Command(P.SMFIC_CONNECT, args=["x"], family=b"U")),
        (P.helo("client.test"), P.Command(P.SMFIC_HELO, args=["client.test"])),
        (P.mail("a@b.test", ["BODY=8BITMIME"]), P.Command(P.SMFIC_MAIL, args=["<a@b.test>", "BODY=8BITMIME"])),
        (P.mail("", []), P.Command(P.SMFIC_MAIL, args=["<>"])),
        (P.rcpt("c@d.test", []), P.Command(P.SMFIC_RCPT, args=["<c@d.test>"])),
        (P.header(b"Subject", b"hi\n\tthere"), P.Command(P.SMFIC_HEADER, args=["Subject", "hi\n\tthere"])),
        (P.packet(P.SMFIC_EOH), P.Command(P.SMFIC_EOH)),
        (P.body(b"\0binary\r\n"), P.Command(P.SMFIC_BODY, data=b"\0binary\r\n")),
        (P.packet(P.SMFIC_BODYEOB), P.Command(P.SMFIC_BODYEOB)),
        (P.packet(P.SMFIC_QUIT), P.Command(P.SMFIC_QUIT)),
    ]
    for raw, want in cases:
        assert P.decode_command(*decode_one(raw)) == want


def test_a_nul_in_a_value_cannot_split_it() -> None:
    cmd = P.decode_command(*decode_one(P.helo("evil\0name")))
    assert cmd.args == ["evilname"]


def test_decoder_takes_bytes_in_any_pieces() -> None:
    stream = P.encode_response(P.AddHeader("X-A", "1")) + P.encode_response(P.Verdict("accept"))
    d = P.Decoder()
    got = []
    for i in range(len(stream)):
        d.feed(stream[i : i + 1])
        while (pkt := d.next()) is not None:
            got.append(P.decode_response(*pkt))
    assert got == [P.AddHeader("X-A", "1"), P.Verdict("accept")]


@given(st.binary(max_size=200))
def test_decoder_never_raises_anything_but_protocol_error(data: bytes) -> None:
    d = P.Decoder(max_packet=64)
    d.feed(data)
    try:
        while (pkt := d.next()) is not None:
            P.decode_response(*pkt)
    except P.ProtocolError:
        pass


@pytest.mark.parametrize(
    "raw, why",
    [
        (struct.pack("!I", 0), "length 0"),
        (struct.pack("!I", P.MAX_PACKET + 1) + b"b", "octets"),
        (struct.pack("!I", 0xFFFFFFFF), "octets"),
    ],
)
def test_bad_lengths(raw: bytes, why: str) -> None:
    d = P.Decoder()
    d.feed(raw)
    with pytest.raises(P.ProtocolError, match=why):
        d.next()


@pytest.mark.parametrize(
    "code, data",
    [
        (b"Z", b""),  # unknown reply
        (P.SMFIR_ADDHEADER, b"X-A\0no-nul"),
        (P.SMFIR_ADDHEADER, b"\0value\0"),  # no name
        (P.SMFIR_ADDHEADER, b"only-one\0"),
        (P.SMFIR_CHGHEADER, b"\0\0"),  # index too short
        (P.SMFIR_INSHEADER, struct.pack("!I", 1) + b"X\0"),
        (P.SMFIR_ADDRCPT, b"\0"),  # no address
        (P.SMFIR_DELRCPT, b"<a@b>"),  # no NUL
        (P.SMFIR_REPLYCODE, b"250 2.0.0 ok\0"),  # not 4xx/5xx
        (P.SMFIR_REPLYCODE, b"5x0 bad\0"),
        (P.SMFIR_REPLYCODE, b"\0"),
        (P.SMFIR_REPLYCODE, b"550-5.7.1 a\r\n451 4.7.1 b\0"),  # two codes
        (P.SMFIC_OPTNEG, b"\0\0\0\6"),
        (P.SMFIC_OPTNEG, struct.pack("!IIII", 6, 0, 0, 9) + b"i\0"),  # unknown macro stage
        (P.SMFIR_SETSYMLIST, struct.pack("!I", 7) + b"i\0"),
    ],
)
def test_malformed_replies(code: bytes, data: bytes) -> None:
    with pytest.raises(P.ProtocolError):
        P.decode_response(code, data)


def test_malformed_commands() -> None:
    for code, data in [(b"z", b""), (P.SMFIC_OPTNEG, b"\0"), (P.SMFIC_CONNECT, b"host"), (P.SMFIC_HELO, b"x")]:
        with pytest.raises(P.ProtocolError):
            P.decode_command(code, data)


def test_replycode_text() -> None:
    r = P.parse_replycode("550-5.7.1 first\r\n550 5.7.1 second")
    assert r == P.ReplyCode(550, "5.7.1", ("first", "second"))
    assert P.parse_replycode("451 try later") == P.ReplyCode(451, None, ("try later",))
    assert P.parse_replycode("554") == P.ReplyCode(554, None, ("Error",))
    # a control character cannot reach the client's reply
    assert P.parse_replycode("550 5.7.1 a\x07b").lines == ("a b",)
    # an enhanced code of the wrong class is text
    assert P.parse_replycode("550 4.7.1 x") == P.ReplyCode(550, None, ("4.7.1 x",))


# -- the header block and its changes -------------------------------------------------
HEAD = (
    b"Received: from client ([127.0.0.1])\r\n\tby mx.test (smtprs) with ESMTP id QID1;\r\n\tdate\r\n"
    b"Subject: one\r\n"
    b"X-Tag: a\r\n"
    b"X-Tag: b\r\n"
    b"\r\n"
)


def test_split_header_block() -> None:
    fields, body = rewrite.split_header_block(HEAD + b"body\r\n")
    assert [n for n, _ in fields] == ["Received", "Subject", "X-Tag", "X-Tag"]
    assert b"".join(raw for _, raw in fields) == HEAD[:-2]
    assert body == len(HEAD)
    # no empty line: a line that is not a field starts the body
    fields, body = rewrite.split_header_block(b"Subject: x\r\nnot a field\r\nmore\r\n")
    assert [n for n, _ in fields] == ["Subject"] and body == len(b"Subject: x\r\n")
    # only a header block, without a final CRLF
    fields, body = rewrite.split_header_block(b"Subject: x")
    assert fields == [("Subject", b"Subject: x")] and body == len(b"Subject: x")
    assert rewrite.split_header_block(b"\r\nbody") == ([], 2)


def test_milter_value() -> None:
    fields, _ = rewrite.split_header_block(HEAD)
    assert driver._milter_value(fields[0][1], False) == (
        b"from client ([127.0.0.1])\n\tby mx.test (smtprs) with ESMTP id QID1;\n\tdate"
    )
    assert driver._milter_value(fields[1][1], False) == b"one"
    assert driver._milter_value(fields[1][1], True) == b" one"


def test_header_changes() -> None:
    fields, _ = rewrite.split_header_block(HEAD)
    out = rewrite.apply_header_changes(
        fields,
        [
            P.InsertHeader(0, "X-Top", "first"),
            P.AddHeader("X-End", "last\n  folded"),
            P.ChangeHeader(2, "x-tag", "B"),
            P.ChangeHeader(1, "Subject", ""),  # deleted
            P.ChangeHeader(3, "X-Tag", ""),  # no third one: nothing
            P.ChangeHeader(1, "X-New", "added"),  # no such field: added
            P.InsertHeader(99, "X-Far", "at the end"),
        ],
    )
    block = b"".join(raw for _, raw in out)
    assert block == (
        b"X-Top: first\r\n"
        + fields[0][1]
        + b"X-Tag: a\r\n"
        + b"X-Tag: B\r\n"
        + b"X-End: last\r\n  folded\r\n"
        + b"X-New: added\r\n"
        + b"X-Far: at the end\r\n"
    )


def test_field_bytes_never_makes_a_bare_line() -> None:
    assert rewrite.field_bytes("X-A", "one\ntwo") == b"X-A: one\r\n\ttwo\r\n"
    assert rewrite.field_bytes("X-A", " lead") == b"X-A: lead\r\n"
    assert rewrite.crlf_body(b"a\nb\r\nc\rd") == b"a\r\nb\r\nc\r\nd"


# -- configuration ----------------------------------------------------------------------
def cfg_with(**tree: object) -> config.Config:
    return config.load(overrides=tree)


def test_no_milter_means_no_settings() -> None:
    assert driver.settings_by_listener(cfg_with()) == {}


def test_settings_per_listener() -> None:
    cfg = cfg_with(
        milter={"milters": ["inet:127.0.0.1:11332", "unix:/run/opendkim.sock"], "default_action": "accept"},
        smtpd={
            "listeners": [
                {"address": "127.0.0.1:2525"},
                {"address": "127.0.0.1:2526", "milters": ["none"]},
                {"address": "127.0.0.1:2527", "milters": ["inet:8891@localhost"]},
                {"address": "127.0.0.1:2528", "mode": "lmtp"},
            ]
        },
    )
    s = driver.settings_by_listener(cfg)
    assert set(s) == {"127.0.0.1:2525", "127.0.0.1:2527"}
    assert [e.spec for e in s["127.0.0.1:2525"].endpoints] == ["inet:127.0.0.1:11332", "unix:/run/opendkim.sock"]
    assert s["127.0.0.1:2525"].endpoints[1].path == "/run/opendkim.sock"
    ep = s["127.0.0.1:2527"].endpoints[0]
    assert (ep.host, ep.port) == ("localhost", 8891)
    assert s["127.0.0.1:2525"].default_action == "accept"
    assert s["127.0.0.1:2525"].macros[P.SMFIC_MAIL] == driver.DEFAULT_MACROS["mail"]


def test_macros_override() -> None:
    cfg = cfg_with(milter={"milters": ["inet:127.0.0.1:1"], "macros": {"connect": ["j"]}})
    (s,) = driver.settings_by_listener(cfg).values()
    assert s.macros[P.SMFIC_CONNECT] == ("j",)
    with pytest.raises(ConfigError, match="milter.macros.bogus"):
        driver.settings_by_listener(cfg_with(milter={"milters": ["inet:127.0.0.1:1"], "macros": {"bogus": []}}))


@pytest.mark.parametrize("spec", ["127.0.0.1:11332", "inet:", "inet:host", "inet:host:0", "tcp:h:1", "unix:"])
def test_bad_milter_addresses(spec: str) -> None:
    with pytest.raises(ConfigError, match="milter"):
        Endpoint.parse(spec)


def test_bad_default_action() -> None:
    with pytest.raises(ConfigError, match="milter.default_action"):
        cfg_with(milter={"default_action": "quarantine"})


def test_milters_with_the_null_spool_are_a_config_error() -> None:
    # the null spool keeps no content to send a milter: refused at start, not a 451 to every message
    with pytest.raises(ConfigError, match='queue.backend = "null"'):
        driver.settings_by_listener(cfg_with(milter={"milters": ["inet:127.0.0.1:1"]}, queue={"backend": "null"}))
    # without milters the null spool is fine
    assert driver.settings_by_listener(cfg_with(queue={"backend": "null"})) == {}
