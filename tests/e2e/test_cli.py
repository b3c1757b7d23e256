"""The command line: check-config and serve's handling of bad configurations."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from .harness import smtprs_command, to_toml

pytestmark = pytest.mark.e2e


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*smtprs_command(), *args], capture_output=True, text=True, timeout=30, cwd=cwd)


def good_config(tmp_path: Path) -> dict:
    return {
        "data_dir": str(tmp_path / "data"),
        "hostname": "mx.test",
        "smtpd": {"max_recipients": 10, "listeners": [{"address": "127.0.0.1:2599"}]},
        "local": {"domains": ["example.test"], "users": ["alice"], "maildir": "mail/{user}"},
        "queue": {"retry_min": 1.0, "retry_max": 10.0},
    }


def test_check_config_ok(tmp_path: Path) -> None:
    cfg = tmp_path / "smtprs.toml"
    cfg.write_text(to_toml(good_config(tmp_path)))
    p = run("check-config", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "config ok" in p.stdout


def test_check_config_embedded_default(tmp_path: Path) -> None:
    p = run("check-config", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "config ok" in p.stdout


BAD = [
    ('smtpd.max_recipients = "ten"', "smtpd.max_recipients", "ten"),
    ("smtpd.max_message_size = -1", "smtpd.max_message_size", None),
    ("smtpd.no_such_key = 1", "smtpd.no_such_key", None),
    ("hostnme = 'typo'", "hostnme", None),
    ('smtpd.command_timeout = "soon"', "smtpd.command_timeout", None),
    ("local.domains = []", "local.domains", None),
    ('local.maildir = "mail/fixed"', "local.maildir", None),
    ("queue.retry_min = 100.0\nqueue.retry_max = 10.0", "queue.retry_max", None),
    ('smtpd.listeners = [{address = "nohost"}]', "smtpd.listeners[0].address", None),
    ('smtpd.listeners = [{address = "127.0.0.1:99999"}]', "smtpd.listeners[0].address", None),
    ('log.level = "loud"', "log.level", None),
    ("unsafe_no_fsync = 1", "unsafe_no_fsync", None),
]


@pytest.mark.parametrize("line,key,value", BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)])
def test_check_config_errors_name_the_key(tmp_path: Path, line: str, key: str, value: str | None) -> None:
    # the bad setting is written as dotted keys at the top level, which TOML allows
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n{line}\n')
    p = run("check-config", "--config", str(cfg), cwd=tmp_path)
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert key in out, out
    if value is not None:
        assert value in out, out
    assert "config ok" not in out
    assert "Traceback" not in out, out


def test_check_config_bad_toml_and_missing_file(tmp_path: Path) -> None:
    cfg = tmp_path / "broken.toml"
    cfg.write_text("[smtpd\nmax_recipients = 3\n")
    p = run("check-config", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "broken.toml" in p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    p = run("check-config", "--config", str(tmp_path / "nope.toml"), cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "nope.toml" in p.stdout + p.stderr


def test_serve_refuses_bad_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\nsmtpd.max_recipients = "ten"\n')
    t0 = time.monotonic()
    p = run("serve", "--config", str(cfg), cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "smtpd.max_recipients" in p.stdout + p.stderr
    assert time.monotonic() - t0 < 20
    assert "Traceback" not in p.stdout + p.stderr


def test_serve_reports_a_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = good_config(tmp_path)
        cfg["smtpd"]["listeners"] = [{"address": f"127.0.0.1:{port}"}]
        path = tmp_path / "smtprs.toml"
        path.write_text(to_toml(cfg))
        p = run("serve", "--config", str(path), cwd=tmp_path)
    assert p.returncode != 0
    assert str(port) in p.stdout + p.stderr
