"""The command line's errors: one line naming the problem, never a traceback
(issue 20 parts 2 and 8), and ``smtprs --version`` with the build_info metric.

Every case runs the real ``smtprs`` command as a subprocess.  The tests run
as root, for whom ``chmod 000`` does not stop a read, so the unreadable files
are ones that fail for root too: a directory, a path through a regular file
(ENOTDIR), a FIFO (which must not be opened: a read would wait for a writer),
a symlink loop (ELOOP), a file that is not UTF-8, malformed TOML, a missing
file.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .harness import Server, free_port, smtprs_command, to_toml

pytestmark = pytest.mark.e2e


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "SMTPRS_CONFIG"}
    return subprocess.run(
        [*smtprs_command(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env={**base, **(env or {})},
        input=stdin if stdin is not None else "",
    )


def one_line_error(p: subprocess.CompletedProcess[str], code: int) -> str:
    out = p.stdout + p.stderr
    assert p.returncode == code, out
    assert "Traceback" not in out, out
    lines = p.stderr.splitlines()
    assert len(lines) == 1, out
    return lines[0]


def bad_configs(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (the path given as the configuration, what the error must say)."""
    (tmp_path / "regular").write_text("x\n")
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    (tmp_path / "latin1.toml").write_bytes(b'hostname = "caf\xe9.test"\n')
    (tmp_path / "broken.toml").write_text("[smtpd\nmax_recipients = 3\n")
    return {
        "directory": ("/", "is a directory"),
        "enotdir": (str(tmp_path / "regular" / "smtprs.toml"), "Not a directory"),
        "fifo": (str(tmp_path / "fifo"), "not a regular file"),
        "eloop": (str(tmp_path / "loop"), "symbolic links"),
        "not-utf8": (str(tmp_path / "latin1.toml"), "not UTF-8"),
        "bad-toml": (str(tmp_path / "broken.toml"), "not valid TOML"),
        "missing": (str(tmp_path / "nope.toml"), "no such file"),
    }


COMMANDS = [
    ("check-config",),
    ("serve",),
    ("queue", "list"),
    ("queue", "flush"),
    ("status",),
    ("passwd", "list"),
    ("dns-records", "--domain", "example.test"),
]


@pytest.mark.parametrize("command", COMMANDS, ids=["-".join(c[:2]) for c in COMMANDS])
def test_every_command_reports_an_unusable_config_in_one_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    cases = bad_configs(tmp_path)
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:  # (the commands are independent processes)
        runs = {name: pool.submit(run, *command, "-c", path, cwd=tmp_path) for name, (path, _) in cases.items()}
    for name, (path, said) in cases.items():
        line = one_line_error(runs[name].result(), 2)
        assert line.startswith("smtprs: configuration error: "), (name, line)
        assert path in line and said in line, (name, line)


def test_the_environment_variable_names_an_unusable_config_too(tmp_path: Path) -> None:
    p = run("check-config", cwd=tmp_path, env={"SMTPRS_CONFIG": str(tmp_path)})
    line = one_line_error(p, 2)
    assert str(tmp_path) in line and "is a directory" in line


def config_file(tmp_path: Path, data_dir: Path) -> Path:
    cfg = tmp_path / "smtprs.toml"
    cfg.write_text(
        to_toml(
            {
                "data_dir": str(data_dir),
                "hostname": "mx.test",
                "workers": 1,
                "smtpd": {"listeners": [{"address": f"127.0.0.1:{free_port()}"}]},
                "local": {"domains": ["example.test"]},
            }
        )
    )
    return cfg


@pytest.mark.parametrize("command", [("queue", "list"), ("queue", "count", "--json"), ("queue", "qshape")])
def test_a_queue_command_without_a_spool_says_where_it_looked(tmp_path: Path, command: tuple[str, ...]) -> None:
    # the embedded defaults: data_dir is relative, to the working directory
    p = run(*command, cwd=tmp_path)
    line = one_line_error(p, 1)
    assert f"no spool at {tmp_path}/smtprs-data/spool" in line, line
    assert "configuration: the embedded defaults" in line and "SMTPRS_CONFIG" in line, line
    assert "queue is empty" not in p.stdout
    # a configuration file that names a spool not there (yet)
    cfg = config_file(tmp_path, tmp_path / "elsewhere")
    p = run(*command, "-c", str(cfg), cwd=tmp_path)
    line = one_line_error(p, 1)
    assert f"no spool at {tmp_path}/elsewhere/spool" in line and f"configuration: {cfg}" in line, line
    # an existing, empty spool is simply empty
    (tmp_path / "elsewhere" / "spool").mkdir(parents=True)
    p = run(*command, "-c", str(cfg), cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stdout + p.stderr
    if command == ("queue", "list"):
        assert p.stdout == "queue is empty\n"


CONTROL = [
    ("queue", "flush"),
    ("queue", "flush", "ABC"),
    ("queue", "show", "ABC"),
    ("queue", "hold", "ABC"),
    ("queue", "delete", "--all-deferred"),
    ("status",),
]


def test_an_unreachable_control_socket_is_one_line_naming_it(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, tmp_path / "data")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "control.sock").write_text("not a socket\n")  # stale or foreign: refused
    for command in CONTROL:
        p = run(*command, "-c", str(cfg), cwd=tmp_path)
        line = one_line_error(p, 1)
        assert f"{tmp_path}/data/control.sock" in line, (command, line)
        assert f"configuration: {cfg}" in line, (command, line)


def test_passwd_without_a_terminal_asks_for_password_stdin(tmp_path: Path) -> None:
    users = tmp_path / "users"
    p = run("passwd", "add", "alice@example.test", "-f", str(users), cwd=tmp_path, stdin="secret\n")
    line = one_line_error(p, 1)
    assert "not a terminal" in line and "--password-stdin" in line, line
    assert not users.exists()
    p = run("passwd", "add", "alice@example.test", "-f", str(users), "--password-stdin", cwd=tmp_path, stdin="s3cret\n")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "\nalice@example.test:$scrypt$" in users.read_text()
    p = run("passwd", "add", "bob@example.test", "-f", str(users), "--password-stdin", cwd=tmp_path, stdin="")
    assert "empty password" in one_line_error(p, 1)
    p = run("passwd", "list", "-f", str(tmp_path), cwd=tmp_path)  # a directory as the users file
    assert str(tmp_path) in one_line_error(p, 1)


def test_version(tmp_path: Path) -> None:
    import ssl

    import smtprs

    for args in (("--version",), ("-V",), ("version",)):
        p = run(*args, cwd=tmp_path)
        assert p.returncode == 0 and p.stderr == "", p.stdout + p.stderr
        lines = p.stdout.splitlines()
        assert lines[0] == f"smtprs {smtprs.__version__}", lines
        assert lines[1].startswith(f"core {smtprs._core.__version__} "), lines
        assert f"Python {sys.version.split()[0]}" in lines
        assert ssl.OPENSSL_VERSION in lines
        assert re.fullmatch(r"trio \S+, dnspython \S+", lines[4]), lines


def test_build_info_metric_is_one_across_workers(tmp_path: Path) -> None:
    import ssl

    import smtprs

    port = free_port()
    srv = Server(tmp_path / "srv", {"workers": 2, "metrics": {"enabled": True, "address": f"127.0.0.1:{port}"}})
    srv.start()
    try:
        srv.wait_log(lambda line: "mode=metrics" in line)
        deadline = time.monotonic() + 15
        while srv.log().count(f"listening on 127.0.0.1:{srv.port}") < 2:  # both workers (their control sockets)
            assert time.monotonic() < deadline, srv.log_tail()
            time.sleep(0.05)
        time.sleep(0.3)  # (a worker announces its listener just before its control socket)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        srv.stop()
    (line,) = [x for x in text.splitlines() if x.startswith("smtprs_build_info{")]
    assert line.endswith("} 1"), line  # the largest, not the sum of the two workers
    assert f'version="{smtprs.__version__}"' in line and f'core="{smtprs._core.__version__}"' in line
    assert f'openssl="{ssl.OPENSSL_VERSION}"' in line and f'python="{sys.version.split()[0]}"' in line
    assert "# TYPE smtprs_build_info gauge" in text


def test_serve_with_an_unusable_log_file_or_data_dir(tmp_path: Path) -> None:
    cfg = config_file(tmp_path, tmp_path / "data")
    text = cfg.read_text()
    cfg.write_text(f'{text}\n[log]\nfile = "{tmp_path}"\n')  # a directory as the log file
    line = one_line_error(run("serve", "-c", str(cfg), cwd=tmp_path), 2)
    assert line.startswith("smtprs: configuration error: log.file:") and str(tmp_path) in line, line
    (tmp_path / "plain").write_text("")
    cfg.write_text(text.replace(str(tmp_path / "data"), str(tmp_path / "plain")))  # data_dir is a file
    p = run("serve", "-c", str(cfg), cwd=tmp_path)
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr, p.stdout + p.stderr
    assert "Not a directory" in p.stderr and str(tmp_path / "plain") in p.stderr, p.stderr
