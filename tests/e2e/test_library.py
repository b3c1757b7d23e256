"""The library API with real peers: the example program that embeds the server
with hooks (examples/embed.py), hooks that refuse at each stage, and
``smtprs.send`` relaying to Postfix's smtp-sink, by a given host and by MX."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import smtprs

from .peers import Dnsmasq, SinkDump, SmtpSink, free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).parents[2]


def test_example_embeds_the_server_and_refuses_a_recipient(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "embed.py"), str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("alice@example.test: delivered (") and "250 2.0.0 Ok: queued as" in lines[0]
    assert (
        lines[1].startswith("blocked@example.test: failed (")
        and "550 5.7.1 This recipient does not take mail from you" in lines[1]
    )
    assert "delivered to alice@example.test" in lines
    assert len(list((tmp_path / "data" / "mail" / "alice" / "new").iterdir())) == 1
    assert not (tmp_path / "data" / "mail" / "blocked").exists()


class Refuser(smtprs.Hooks):
    def __init__(self) -> None:
        self.bounced: list[str] = []
        self.seen: list[str] = []

    async def on_connect(self, session: smtprs.SessionInfo) -> smtprs.Reply | None:
        self.seen.append(f"connect {session.mode}")
        return None

    async def on_helo(self, session: smtprs.SessionInfo, name: str) -> smtprs.Reply | None:
        return smtprs.Reply(550, "5.7.1", "Not you") if name == "evil.test" else None

    async def on_mail(self, session: smtprs.SessionInfo, sender: str) -> smtprs.Reply | None:
        return smtprs.Reply(451, "4.7.1", "Greylisted, come back later") if sender.startswith("grey@") else None

    async def on_data(
        self, session: smtprs.SessionInfo, envelope: smtprs.Envelope, content: smtprs.Content
    ) -> smtprs.Reply | None:
        with content.open() as fh:
            if b"SPAM" in fh.read():
                return smtprs.Reply(554, "5.7.1", "Looks like spam")
        return None

    async def on_bounced(self, envelope: smtprs.Envelope, recipient: smtprs.Recipient) -> None:
        self.bounced.append(recipient.address)


async def _embedded(tmp_path: Path, sink_port: int) -> None:
    cfg = smtprs.load_config(
        overrides={
            "data_dir": str(tmp_path / "data"),
            "hostname": "mx.test",
            "smtpd": {"listeners": [{"address": "127.0.0.1:0"}]},
            "local": {"domains": ["example.test"]},
            "relay": {
                "trusted_networks": ["127.0.0.0/8"],
                "transport": {"sink.test": f"[127.0.0.1]:{sink_port}"},
                "tls": "none",
            },
        }
    )
    hooks = Refuser()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(smtprs.serve, cfg, hooks)
        port = server.port()

        def client() -> list[Any]:
            import smtplib

            out: list[Any] = []
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                out.append(s.ehlo("evil.test")[0])
                out.append(s.ehlo("good.test")[0])
                out.append(s.mail("grey@example.test")[0])
                out.append(s.mail("me@example.test")[0])
                out.append(s.rcpt("bob@example.test")[0])
                out.append(s.data(b"Subject: buy\r\n\r\nSPAM SPAM\r\n")[0])
                s.rset()
                s.mail("me@example.test")
                s.rcpt("nobody@sink.test")  # smtp-sink -f RCPT: refused for good, so bounced
                out.append(s.data(b"Subject: hi\r\n\r\nhello\r\n")[0])
            return out

        codes = await trio.to_thread.run_sync(client)
        assert codes == [550, 250, 451, 250, 250, 554, 250]
        with trio.fail_after(10):
            while not hooks.bounced:
                await trio.sleep(0.05)
        assert hooks.bounced == ["nobody@sink.test"]
        assert hooks.seen == ["connect mx"]
        assert not (tmp_path / "data" / "mail" / "bob").exists()  # the refused message was not delivered
        nursery.cancel_scope.cancel()


def test_hooks_refuse_at_each_stage(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path / "sink", ["-f", "RCPT"]).start()
    try:
        trio.run(_embedded, tmp_path, sink.port)
    finally:
        sink.stop()


def test_send_relays_to_smtp_sink_by_host_and_by_mx(tmp_path: Path) -> None:
    sink = SmtpSink(tmp_path / "sink").start()
    dns = Dnsmasq(
        tmp_path / "dns", ["--mx-host=sink.test,mx.sink.test,10", "--host-record=mx.sink.test,127.0.0.1"]
    ).start()
    try:
        message = b"From: <me@example.test>\nTo: <you@sink.test>\nSubject: from the library\n\n.leading dot\nbody\n"
        results = trio.run(
            lambda: smtprs.send(
                "me@example.test", ["you@sink.test", "other@sink.test"], message, host="127.0.0.1", port=sink.port
            )
        )
        assert [r.status for r in results] == ["delivered", "delivered"], results
        assert results[0].relay.endswith(f":{sink.port}")
        cfg = smtprs.load_config(
            overrides={"data_dir": str(tmp_path / "d"), "dns": dns.config(), "relay": {"smtp_port": sink.port}}
        )
        results = trio.run(lambda: smtprs.send("", ["mx@sink.test"], message, config=cfg))
        assert [r.status for r in results] == ["delivered"], results
        assert "mx.sink.test" in results[0].relay
        dumps = sink.wait_dumps(2)
        by_sender = {d.mail_args.split()[0]: d for d in map(SinkDump.read, dumps)}
        assert set(by_sender) == {"<me@example.test>", "<>"}
        first = by_sender["<me@example.test>"]
        assert sorted(a.split()[0] for a in first.rcpt_args) == ["<other@sink.test>", "<you@sink.test>"]
        assert by_sender["<>"].rcpt_args[0].split()[0] == "<mx@sink.test>"
        assert (
            b"Subject: from the library\n\n.leading dot\nbody\n" in first.message
        )  # dot-stuffed on the way, unstuffed by the sink
        # a recipient domain without any host: failed or deferred, never an exception
        results = trio.run(
            lambda: smtprs.send("me@example.test", ["x@nowhere.invalid"], message, host="127.0.0.1", port=free_port())
        )
        assert results[0].status == "deferred" and "refused" in results[0].detail.lower()
    finally:
        sink.stop()
        dns.stop()
