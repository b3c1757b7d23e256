"""Routing tables through a real ``smtprs serve``: the transport map sending one
domain and one address over LMTP to a real Dovecot (read back over IMAP), an
unreachable LMTP server deferring until it comes up, error: and discard
entries, per-address Maildir and mbox mailboxes (the mbox read by Python's
mailbox module, the Maildir, owned by another user, read by Dovecot), and
``smtprs queue count``."""

from __future__ import annotations

import json
import mailbox
import os
import subprocess
from pathlib import Path

import pytest

from .dovecot import make_dovecot  # noqa: F401  (fixture)
from .harness import DOMAIN, Server, check, make_message, smtprs_command, stuff, to_toml, wait_maildir
from .test_mailboxes import SENDER, imap_messages

pytestmark = pytest.mark.e2e


def count(srv: Server) -> dict[str, int]:
    p = subprocess.run(
        [*smtprs_command(), "queue", "count", "--json", "--config", str(srv.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_lmtp_transport_per_domain_and_address_to_dovecot(make_server, make_dovecot) -> None:
    dv = make_dovecot({"alice": "pw-alice", "bob": "pw-bob"}).start()
    lmtp = f"lmtp:[127.0.0.1]:{dv.ports['lmtp']}"
    srv = make_server({"relay": {"transport": {"dove.test": lmtp, f"bob@{DOMAIN}": f"lmtp:unix:{dv.lmtp_socket}"}}})
    msg = make_message("by transport", "routed over lmtp\r\n")
    with srv.connect() as c:
        c.ehlo()
        # dove.test is a final destination of ours: taken without relay permission
        r = c.send_message(SENDER, ["alice@dove.test", f"bob@{DOMAIN}", f"carol@{DOMAIN}"], stuff(msg))
        check(r, 250, "2.0.0")
    srv.wait_log(rf"{r.qid}: to=<alice@dove\.test>, relay=127\.0\.0\.1:{dv.ports['lmtp']}, .*status=sent")
    srv.wait_log(rf"{r.qid}: to=<bob@{DOMAIN}>, relay=unix:.*status=sent")
    srv.wait_log(rf"{r.qid}: to=<carol@{DOMAIN}>, relay=local, .*status=sent")  # the rest of the domain: our Maildir
    srv.wait_log(rf"{r.qid}: removed")
    for user, pw in (("alice", "pw-alice"), ("bob", "pw-bob")):
        (got,) = imap_messages(dv, user, pw)
        assert got.endswith(msg)
    assert wait_maildir(srv.data_dir / "mail" / "carol", 1)
    assert count(srv) == {"messages": 0, "recipients": 0, "deferred": 0, "held": 0, "octets": 0}


def test_unreachable_lmtp_transport_defers_then_delivers(make_server, make_dovecot) -> None:
    dv = make_dovecot({"alice": "pw-alice"})
    srv = make_server(
        {
            "relay": {"transport": {"dove.test": f"lmtp:[127.0.0.1]:{dv.ports['lmtp']}"}},
            "queue": {"retry_min": 0.5, "retry_max": 1.0},
        }
    )
    with srv.connect() as c:
        r = c.send_message(SENDER, ["alice@dove.test"], stuff(make_message("later", "wait\r\n")), ehlo=True)
        check(r, 250)
    line = srv.wait_log(rf"{r.qid}: to=<alice@dove\.test>, .*status=deferred")
    assert "4.4.1" in line and "cannot connect" in line, line
    got = count(srv)
    assert (got["messages"], got["recipients"], got["deferred"]) == (1, 1, 1), got
    dv.start()
    srv.wait_log(rf"{r.qid}: to=<alice@dove\.test>, .*status=sent")
    srv.wait_log(rf"{r.qid}: removed")
    assert len(imap_messages(dv, "alice", "pw-alice")) == 1
    assert count(srv)["messages"] == 0


def test_error_and_discard_entries(make_server) -> None:
    srv = make_server(
        {
            "relay": {
                "transport": {
                    "moved.test": "error:5.1.2 Moved to new.test",
                    f"gone@{DOMAIN}": "error:4.2.1 Try later",
                    "trap.test": "discard:trap",
                }
            }
        }
    )
    with srv.connect() as c:
        c.ehlo()
        c.expect(f"MAIL FROM:<{SENDER}>", 250)
        check(c.cmd("RCPT TO:<x@moved.test>"), 550, "5.1.2")
        check(c.cmd(f"RCPT TO:<gone@{DOMAIN}>"), 450, "4.2.1")
        c.expect("RSET", 250)
        r = c.send_message(SENDER, ["x@trap.test"], stuff(make_message("trap", "into the void\r\n")))
        check(r, 250)
    line = srv.wait_log(rf"{r.qid}: to=<x@trap\.test>, .*status=sent")
    assert "discarded: trap" in line, line
    srv.wait_log(rf"{r.qid}: removed")


def test_per_address_mailboxes_maildir_owned_for_dovecot_and_mbox(make_server, make_dovecot) -> None:
    dv = make_dovecot({"alice": "pw-alice"}, protocols=("imap",))
    owner = "nobody:nogroup" if os.getuid() == 0 else ""
    srv = make_server(
        {
            "local": {
                "mailboxes": {
                    f"alice@{DOMAIN}": {"maildir": str(dv.mail_root / "alice")},
                    f"carol@{DOMAIN}": {"mbox": "boxes/carol.mbox"},
                },
                "mailbox_owner": owner,
                "mailbox_mode": "0750",
            }
        }
    )
    sent = make_message("own mailbox", "hello alice and carol\r\n")
    with srv.connect() as c:
        check(c.send_message(SENDER, [f"alice+x@{DOMAIN}", f"carol@{DOMAIN}"], stuff(sent), ehlo=True), 250)
    (path,) = wait_maildir(dv.mail_root / "alice", 1)
    st = path.stat()
    assert st.st_mode & 0o777 == 0o640 and (path.parent.parent.stat().st_mode & 0o777) == 0o750
    if owner:
        assert (st.st_uid, path.parent.parent.stat().st_uid) == (dv.uid, dv.uid)
    # no chown by the test (no give_mail): Dovecot, as its mail user, reads what smtprs wrote
    dv.start()
    (got,) = imap_messages(dv, "alice", "pw-alice")
    assert got.endswith(sent)
    srv.wait_log(rf"to=<carol@{DOMAIN}>, .*status=sent")
    box = mailbox.mbox(srv.data_dir / "boxes" / "carol.mbox", create=False)
    try:
        (key,) = box.keys()
        assert box[key]["Subject"] == "own mailbox"
    finally:
        box.close()
    assert (srv.data_dir / "boxes" / "carol.mbox").stat().st_mode & 0o777 == 0o640


def test_unknown_transport_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "smtprs.toml"
    cfg.write_text(
        to_toml({"data_dir": str(tmp_path / "d"), "relay": {"transport": {"example.net": "lmpt:[127.0.0.1]:24"}}})
    )
    for cmd in ("check-config", "serve"):
        p = subprocess.run(
            [*smtprs_command(), cmd, "--config", str(cfg)], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert p.returncode == 2, (cmd, p.stdout, p.stderr)
        assert "relay.transport.example.net: unknown transport 'lmpt'" in p.stderr, p.stderr


def test_smtp_and_local_transports_and_a_utf8_mailbox(make_server, smtp_sink) -> None:
    srv = make_server(
        {
            "relay": {
                "trusted_networks": ["127.0.0.0/8"],
                "transport": {"far.test": f"smtp:[127.0.0.1]:{smtp_sink.port}", "other.test": "local"},
            },
            "local": {"mailboxes": {f"jösé@{DOMAIN}": {"maildir": "boxes/jose"}}},
        }
    )
    with srv.connect() as c:
        c.ehlo()
        r = c.send_message(
            SENDER, ["x@far.test", "dave@other.test"], stuff(make_message("two ways", "smtp and local\r\n"))
        )
        check(r, 250)
        # a UTF-8 local part, deliverable because it has a mailbox of its own (RFC 6531 SMTPUTF8)
        c.expect(f"MAIL FROM:<{SENDER}> SMTPUTF8", 250)
        c.expect(f"RCPT TO:<jösé@{DOMAIN}>", 250)
        check(c.cmd(f"RCPT TO:<jöe@{DOMAIN}>"), 550, "5.1.1")  # no mailbox of its own: no path is built from it
        c.expect("DATA", 354)
        c.send(stuff(make_message("utf8", "hola\r\n")) + b".\r\n")
        check(c.reply(), 250)
    srv.wait_log(rf"{r.qid}: to=<x@far\.test>, relay=[^,]*\[127\.0\.0\.1\]:{smtp_sink.port}, .*status=sent")
    assert smtp_sink.wait_dumps(1)
    assert wait_maildir(srv.data_dir / "mail" / "dave", 1)  # other.test is routed to our mailboxes
    (got,) = wait_maildir(srv.data_dir / "boxes" / "jose", 1)
    assert "Delivered-To: jösé@".encode() in got.read_bytes()
