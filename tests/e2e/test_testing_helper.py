"""``smtprs.testing``: a real server in a background thread for synchronous
test code (issue 18 part 4), driven with smtplib, and its pytest fixture."""

from __future__ import annotations

import smtplib
import threading
from pathlib import Path

import pytest

import smtprs
from smtprs.testing import Controller, wait_for

pytestmark = pytest.mark.e2e


class Gate(smtprs.Hooks):
    """Refuses one recipient, records what it saw (from the server's thread)."""

    def __init__(self) -> None:
        self.subjects: list[str] = []
        self.delivered: list[str] = []
        self.thread = ""

    async def on_rcpt(self, session: smtprs.SessionInfo, sender: str, recipient: str) -> smtprs.Reply | None:
        self.thread = threading.current_thread().name
        if recipient.startswith("blocked@"):
            return smtprs.Reply(550, "5.7.1", "Blocked by the test")
        return None

    async def on_data(
        self, session: smtprs.SessionInfo, envelope: smtprs.Envelope, content: smtprs.Content
    ) -> smtprs.Reply | None:
        self.subjects.append(str(content.headers()["Subject"]))
        return None

    async def on_delivered(self, envelope: smtprs.Envelope, recipient: smtprs.Recipient) -> None:
        self.delivered.append(recipient.address)


def test_controller_runs_a_real_server_for_smtplib(tmp_path: Path) -> None:
    hooks = Gate()
    controller = Controller(hooks)
    with controller as server:
        assert server.host == "127.0.0.1" and server.port > 0
        data_dir, port = server.data_dir, server.port
        assert data_dir.is_dir()
        with smtplib.SMTP(server.host, server.port, timeout=15) as client:
            refused = client.sendmail(
                "a@client.test",
                ["bob@example.test", "blocked@example.test"],
                b"Subject: hello there\r\n\r\nhi\r\n",
            )
            assert refused == {"blocked@example.test": (550, b"5.7.1 Blocked by the test")}
        [message] = server.wait_for_mail("bob")
        assert b"Subject: hello there" in message and message.startswith(b"Return-Path: <a@client.test>")
        wait_for(lambda: hooks.delivered == ["bob@example.test"], 10, "on_delivered")
        assert hooks.subjects == ["hello there"]
        assert hooks.thread == "smtprs-testing"  # hooks run in the server's thread
        assert server.mailbox("blocked") == []
    assert not data_dir.exists()  # its own temporary directory, removed by stop()
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP("127.0.0.1", port, timeout=5)  # stopped: nothing listens there any more
    controller.stop()  # stopping twice is harmless


def test_controller_overrides_and_start_errors(tmp_path: Path) -> None:
    with (
        Controller(
            overrides={"local": {"domains": ["other.test"], "users": ["carol"]}}, data_dir=tmp_path / "d"
        ) as server,
        smtplib.SMTP(server.host, server.port, timeout=15) as client,
    ):
        client.ehlo("x")
        client.mail("a@client.test")
        assert client.rcpt("bob@example.test")[0] == 554  # not our domain any more
        assert client.rcpt("nobody@other.test")[0] == 550
        assert client.rcpt("carol@other.test")[0] == 250
    assert (tmp_path / "d").is_dir()  # a given directory is kept
    # a configuration that cannot start: raised by start(), nothing left running
    with pytest.raises(smtprs.ConfigError):
        Controller(overrides={"hooks": "no_such_module_for_testing:make"}).start()
    with Controller(data_dir=tmp_path / "a") as first:
        busy = f"127.0.0.1:{first.port}"
        with pytest.raises(smtprs.ListenError):
            Controller(data_dir=tmp_path / "b", overrides={"smtpd": {"listeners": [{"address": busy}]}}).start()


@pytest.mark.smtprs(hooks=Gate, overrides={"hostname": "fixture.test"})
def test_the_pytest_fixture(smtprs_server: Controller) -> None:
    assert isinstance(smtprs_server.hooks, Gate)
    with smtplib.SMTP(smtprs_server.host, smtprs_server.port, timeout=15) as client:
        code, banner = client.ehlo("x")
        assert code == 250 and banner.startswith(b"fixture.test")
        client.sendmail("a@client.test", ["dan@example.test"], b"Subject: via the fixture\r\n\r\nhi\r\n")
    [message] = smtprs_server.wait_for_mail("dan")
    assert b"via the fixture" in message


def test_the_pytest_fixture_defaults(smtprs_server: Controller, tmp_path: Path) -> None:
    assert smtprs_server.hooks is None
    assert smtprs_server.data_dir == tmp_path / "smtprs"
