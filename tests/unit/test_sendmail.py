"""sendmail(1) compatibility, the pure parts: the option parser (as cron, PHP
and mutt call it), the message preparation (line ends, the single-dot line,
-t, Bcc, the added From/Date/Message-ID), the mailq format, and the pickup
files (format, durable write, import into a real spool)."""

from __future__ import annotations

import email.parser
import email.policy
import os

import pytest

from smtprs import sendmail as sm
from smtprs.envelope import Envelope, Recipient
from smtprs.queue import pickup
from smtprs.queue.spool import Spool, read_queue

# -- options ------------------------------------------------------------------


def test_cron_command_line() -> None:
    # what cron (Debian's cronie/vixie) runs: sendmail -FCronDaemon -i -B8BITMIME -oem user
    o = sm.parse_args(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "user"])
    assert o.fullname == "CronDaemon"
    assert o.ignore_dots and not o.extract
    assert o.recipients == ["user"]
    assert o.mode == "m"


def test_php_and_mutt_command_lines() -> None:
    o = sm.parse_args(["-t", "-i"])
    assert o.extract and o.ignore_dots and o.recipients == []
    o = sm.parse_args(["-oi", "--", "a@x.test", "-notanoption@x.test"])
    assert o.ignore_dots and o.recipients == ["a@x.test", "-notanoption@x.test"]
    o = sm.parse_args(["-ti", "-f", "bounce@x.test"])
    assert o.extract and o.ignore_dots and o.sender == "bounce@x.test"


@pytest.mark.parametrize(
    "argv,attr,value",
    [
        (["-fme@x.test"], "sender", "me@x.test"),
        (["-r", "me@x.test"], "sender", "me@x.test"),
        (["-F", "Full Name"], "fullname", "Full Name"),
        (["-C", "/etc/x.toml"], "config", "/etc/x.toml"),
        (["-N", "failure,delay"], "notify", "failure,delay"),
        (["-R", "hdrs"], "ret", "hdrs"),
        (["-V", "envid1"], "envid", "envid1"),
        (["-v"], "verbose", True),
        (["-bp"], "mode", "p"),
        (["-bs"], "mode", "s"),
        (["-bm"], "mode", "m"),
        (["-bi"], "mode", "i"),
        (["-I"], "mode", "i"),
        (["-q"], "mode", "q"),
        (["-q1h"], "mode", "q"),
        (["-o", "i"], "ignore_dots", True),
    ],
)
def test_options(argv: list[str], attr: str, value: object) -> None:
    assert getattr(sm.parse_args([*argv, "u@x.test"]), attr) == value


@pytest.mark.parametrize(
    "argv",
    [
        ["-odb", "-odi", "-oem", "-oee", "-om", "-B", "7BIT", "-L", "label", "-X", "/tmp/log", "-h", "5"],
        ["-n", "-m", "-U", "-G", "-Am", "-O", "Opt=1", "-p", "smtp:host", "-e", "m"],
    ],
)
def test_legacy_options_are_accepted_silently(argv: list[str]) -> None:
    o = sm.parse_args([*argv, "u@x.test"])
    assert o.recipients == ["u@x.test"] and o.mode == "m" and not o.ignore_dots


@pytest.mark.parametrize("argv", [["-Z"], ["-f"], ["-bd"], ["-bv", "u"], ["-bt"], ["-bz"]])
def test_bad_options(argv: list[str]) -> None:
    with pytest.raises(sm.UsageError):
        sm.parse_args(argv)


def test_program_name_picks_the_mode() -> None:
    assert sm.parse_args([], "/usr/bin/mailq").mode == "p"
    assert sm.parse_args([], "newaliases").mode == "i"
    assert sm.parse_args([], "sendmail").mode == "m"


def test_run_reports_a_usage_error_with_ex_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert sm.run(["-Z"], "sendmail") == sm.EX_USAGE
    assert "unknown option -Z" in capsys.readouterr().err


# -- the message ----------------------------------------------------------------


def _prep(data: bytes, argv: list[str], **kw: str) -> sm.Prepared:
    args = {"domain": "example.test", "hostname": "mx.test", "login": "alice", "gecos": "Alice A.", **kw}
    return sm.prepare(data, sm.parse_args(argv), **args)


def _header(content: bytes) -> email.message.Message:
    return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(content)


def test_single_dot_ends_the_message_without_i() -> None:
    assert sm.read_lines(b"a\n.\nb\n", ignore_dots=False) == [b"a"]
    assert sm.read_lines(b"a\n.\nb\n", ignore_dots=True) == [b"a", b".", b"b"]
    assert sm.read_lines(b"a\n..\n. \nb", ignore_dots=False) == [b"a", b"..", b". ", b"b"]


def test_line_ends_become_crlf() -> None:
    p = _prep(b"Subject: s\nTo: b@example.test\r\n\nx\r\ny\n", ["-t"])
    assert b"\r\n\r\nx\r\ny\r\n" in p.content
    assert b"\n" not in p.content.replace(b"\r\n", b"")


def test_mbox_from_line_is_dropped() -> None:
    assert sm.read_lines(b"From alice Mon Dec  7 10:00:00 2026\nSubject: s\n", True) == [b"Subject: s"]


def test_t_takes_to_cc_bcc_removes_bcc_and_adds_arguments() -> None:
    data = b"To: Bob <bob@example.test>, carol@example.test\nCc: dave@x.test\nBcc: eve@y.test,\n  frank@y.test\nSubject: s\n\nbody\n"
    p = _prep(data, ["-t", "-i", "zed@z.test", "bob@example.test"])
    assert p.recipients == [
        "bob@example.test",
        "carol@example.test",
        "dave@x.test",
        "eve@y.test",
        "frank@y.test",
        "zed@z.test",
    ]
    assert b"Bcc" not in p.content and b"frank" not in p.content and b"eve@" not in p.content
    assert _header(p.content)["Cc"] == "dave@x.test"


def test_resent_recipients_win_with_t() -> None:
    data = b"To: old@example.test\nResent-To: new@example.test\nResent-Bcc: hidden@example.test\n\nb\n"
    p = _prep(data, ["-t"])
    assert p.recipients == ["new@example.test", "hidden@example.test"]
    assert b"hidden" not in p.content and b"Resent-To: new@example.test" in p.content


def test_no_recipients() -> None:
    with pytest.raises(sm.Failure) as e:
        _prep(b"Subject: none\n\nb\n", ["-t"])
    assert e.value.code == sm.EX_DATAERR == 65
    with pytest.raises(sm.Failure) as e:
        _prep(b"Subject: none\n\nb\n", [])
    assert e.value.code == sm.EX_USAGE


def test_missing_from_date_message_id_are_added() -> None:
    p = _prep(b"Subject: s\n\nbody\n", ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"])
    h = _header(p.content)
    assert p.recipients == ["root@example.test"]
    assert p.sender == "alice@example.test"
    assert h["From"] == "CronDaemon <alice@example.test>"
    assert h["Date"] and h["Message-ID"].endswith("@mx.test>")
    assert p.content.endswith(b"\r\n\r\nbody\r\n")


def test_present_fields_are_kept_and_not_doubled() -> None:
    data = b"From: Me <me@example.test>\nDate: Fri, 29 Nov 2024 08:00:00 +0000\nMessage-ID: <x@y>\nReturn-Path: <forged@x>\nContent-Length: 3\n\nb\n"
    p = _prep(data, ["-f", "bounces@example.test", "u"])
    h = _header(p.content)
    assert h.get_all("From") == ["Me <me@example.test>"]
    assert h.get_all("Date") == ["Fri, 29 Nov 2024 08:00:00 +0000"]
    assert h.get_all("Message-ID") == ["<x@y>"]
    assert "Return-Path" not in h and "Content-Length" not in h
    assert p.sender == "bounces@example.test"


def test_from_uses_gecos_then_name_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NAME", raising=False)
    assert _header(_prep(b"\nb\n", ["u"]).content)["From"] == '"Alice A." <alice@example.test>'
    monkeypatch.setenv("NAME", "Ally")
    assert _header(_prep(b"\nb\n", ["u"]).content)["From"] == "Ally <alice@example.test>"


def test_null_sender_and_bare_names() -> None:
    assert _prep(b"\nb\n", ["-f", "<>", "u"]).sender == ""
    assert _prep(b"\nb\n", ["-f", "bob", "u"]).sender == "bob@example.test"
    assert _prep(b"\nb\n", ["a, b@x.test"]).recipients == ["a@example.test", "b@x.test"]


def test_body_without_header_gets_its_blank_line() -> None:
    p = _prep(b"just a body line\nand another\n", ["u"])
    head, _, body = p.content.partition(b"\r\n\r\n")
    assert body == b"just a body line\r\nand another\r\n"
    assert b"From: " in head and b"just" not in head


def test_eight_bit_is_noticed() -> None:
    assert _prep("Subject: s\n\nGrüße\n".encode(), ["u"]).eight_bit
    assert not _prep(b"Subject: s\n\nhello\n", ["u"]).eight_bit


def test_xtext() -> None:
    assert sm.xtext("a+b=c d") == "a+2Bb+3Dc+20d"


def test_listener_address(tmp_path) -> None:
    from smtprs import config

    def cfg(listeners: list[dict[str, str]]) -> config.Config:
        return config.load(None, overrides={"data_dir": str(tmp_path), "smtpd": {"listeners": listeners}})

    assert sm.listener_address(cfg([{"address": "0.0.0.0:25"}])) == ("127.0.0.1", 25)
    assert sm.listener_address(cfg([{"address": "[::]:2525"}])) == ("::1", 2525)
    assert sm.listener_address(cfg([{"address": "127.0.0.1:1", "mode": "lmtp"}, {"address": "10.0.0.1:25"}])) == (
        "10.0.0.1",
        25,
    )
    assert sm.listener_address(cfg([{"address": "127.0.0.1:1", "mode": "lmtp"}])) is None


# -- mailq ----------------------------------------------------------------------


def test_mailq_empty() -> None:
    assert sm.mailq_text([]) == "Mail queue is empty\n"


def test_mailq_format() -> None:
    env = Envelope(
        "25YK6JH576ZQ1YZ",
        "alice@example.test",
        [
            Recipient("bob@far.test", state="deferred", last_error="connect to 127.0.0.1:9: Connection refused"),
            Recipient("done@example.test", state="delivered"),
            Recipient("new@far.test"),
        ],
        arrival=1_800_000_000.0,
    )
    held = Envelope("25YK6JH576ZQ1Z0", "", [Recipient("x@y.test")], arrival=1_800_000_100.0, held=True)
    text = sm.mailq_text([(held, 1000), (env, 2048)])
    lines = text.splitlines()
    assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    assert lines[1].startswith("25YK6JH576ZQ1YZ ") and lines[1].endswith("  alice@example.test")
    assert "    2048 " in lines[1]
    assert lines[2] == "(connect to 127.0.0.1:9: Connection refused)"
    assert lines[3] == " " * 41 + "bob@far.test"
    assert lines[4] == " " * 41 + "new@far.test"
    assert "done@example.test" not in text
    assert lines[6].startswith("25YK6JH576ZQ1Z0!") and lines[6].endswith("MAILER-DAEMON")
    assert lines[-1] == "-- 3 Kbytes in 2 Requests."


# -- pickup files ---------------------------------------------------------------


def _entry(**kw: object) -> pickup.Entry:
    args: dict[str, object] = {
        "sender": "alice@example.test",
        "recipients": ["bob@example.test"],
        "content": b"Subject: s\r\n\r\nbody\r\n",
        **kw,
    }
    return pickup.Entry(**args)  # type: ignore[arg-type]


def test_pickup_round_trip() -> None:
    e = _entry(params={"BODY": "8BITMIME"}, user="alice", uid=1000, time=5.0)
    assert pickup.decode(pickup.encode(e), 1000) == e


@pytest.mark.parametrize(
    "raw,why",
    [
        (b"", "not a pickup file"),
        (b"hello\n", "not a pickup file"),
        (pickup.MAGIC + b"{not json\n", "not JSON"),
        (pickup.MAGIC + b"[1]\n", "not a JSON object"),
        (pickup.MAGIC + b'{"sender": "a"}\n', "lacks"),
        (pickup.MAGIC + b'{"sender": "a", "recipients": []}\n', "no recipients"),
        (pickup.MAGIC + b'{"sender": "a", "recipients": [1]}\n', "lacks"),
        (pickup.MAGIC + b'{"sender": "a", "recipients": ["b"], "params": {"x": 1}}\n', "params"),
        (pickup.MAGIC + b'{"sender": "a", "recipients": ["b"]}', "no envelope line"),
        (pickup.MAGIC + b'{"sender": "a", "recipients": ["b"]}\n' + b"x" * 11, "over smtpd.max_message_size"),
    ],
)
def test_pickup_bad_files(raw: bytes, why: str) -> None:
    with pytest.raises(pickup.PickupError, match=why):
        pickup.decode(raw, 10)


def test_pickup_write_leaves_one_final_file(tmp_path) -> None:
    d = tmp_path / "pickup"
    path = pickup.write(d, _entry())
    assert os.listdir(d) == [path.name] and not path.name.startswith(".")
    assert path.stat().st_mode & 0o777 == 0o600
    assert pickup.pending(d) == [path]


def test_pickup_pending_skips_temporary_files_and_removes_stale_ones(tmp_path) -> None:
    d = tmp_path / "pickup"
    d.mkdir()
    (d / ".tmp.fresh").write_bytes(b"x")
    stale = d / ".tmp.stale"
    stale.write_bytes(b"x")
    os.utime(stale, (0, 0))
    (d / "corrupt").mkdir()
    assert pickup.pending(d) == []
    assert sorted(os.listdir(d)) == [".tmp.fresh", "corrupt"]


async def test_pickup_import_commits_then_unlinks(tmp_path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.open()
    d = tmp_path / "pickup"
    path = pickup.write(d, _entry(recipients=["bob@example.test", "carol@example.test"]), fsync=False)
    submitted: list[Envelope] = []
    qid = await pickup.import_one(path, spool, submitted.append, "mx.test", 10_000)
    assert qid is not None and not path.exists()
    assert [e.queue_id for e in submitted] == [qid]
    env = spool.load(qid)
    assert env is not None and env.protocol == "local"
    assert [r.address for r in env.recipients] == ["bob@example.test", "carol@example.test"]
    with spool.content(qid).open() as fh:
        content = fh.read()
    assert content.startswith(b"Received: by mx.test (smtprs, from userid ")
    assert f"with local id {qid}".encode() in content
    assert content.endswith(b"\r\nSubject: s\r\n\r\nbody\r\n")
    spool.close()
    assert [e.queue_id for e, _ in read_queue(tmp_path / "spool")] == [qid]


async def test_pickup_import_sets_damaged_files_aside(tmp_path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.open()
    d = tmp_path / "pickup"
    d.mkdir()
    bad = d / "123.1.abc"
    bad.write_bytes(b"garbage\n")
    submitted: list[Envelope] = []
    assert await pickup.import_one(bad, spool, submitted.append, "mx.test", 10_000) is None
    assert not bad.exists() and (d / "corrupt" / "123.1.abc").read_bytes() == b"garbage\n"
    assert submitted == [] and spool.count == 0
    spool.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
async def test_pickup_file_of_root_goes_to_the_directory_owner_and_trace_names_the_real_owner(tmp_path) -> None:
    d = tmp_path / "pickup"
    d.mkdir()
    os.chown(d, 65534, 65534)  # the server's user
    path = pickup.write(d, _entry(uid=0, user="root"), fsync=False)
    assert path.stat().st_uid == 65534  # readable by the server
    other = pickup.write(d, _entry(uid=0, user="root"), fsync=False)
    os.chown(other, 12345, 12345)  # written by someone else claiming to be root
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.open()
    got = []
    for p in (path, other):
        qid = await pickup.import_one(p, spool, lambda env: None, "mx.test", 10_000)
        assert qid is not None
        with spool.content(qid).open() as fh:
            got.append(fh.read().split(b"\r\n")[0] + b"\r\n")
    spool.close()
    # root's file, given to the directory's owner: root's claim is taken; the other one's is not
    assert got[0] == b"Received: by mx.test (smtprs, from userid 0 (root))\r\n"
    assert got[1] == b"Received: by mx.test (smtprs, from userid 12345)\r\n"
