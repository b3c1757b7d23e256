"""The mail log's own line path (maillog._line, PlainFormatter, LineHandler)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtprs import maillog

PLAIN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} smtprs\[(\d+)\]: (.*)$")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger("smtprs")
    handlers, level, propagate = list(root.handlers), root.level, root.propagate
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    root.propagate = propagate


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_plain_lines_have_postfix_form_and_this_pid(tmp_path: Path, restore_logging: None) -> None:
    log = tmp_path / "mail.log"
    maillog.setup("info", str(log))
    maillog.connect("C000001", "[192.0.2.1]:40000")
    maillog.queued("ABCD", "a@example.org", 1234, 2, "[192.0.2.1]:40000")
    got = lines(log)
    assert len(got) == 2
    m = PLAIN.match(got[0])
    assert m is not None, got[0]
    assert int(m.group(1)) == os.getpid()
    assert m.group(2) == "C000001: connect from [192.0.2.1]:40000"
    assert (
        PLAIN.match(got[1]).group(2)
        == "ABCD: from=<a@example.org>, size=1234, nrcpt=2, client=[192.0.2.1]:40000 (queue active)"
    )  # type: ignore[union-attr]


def test_json_event_is_the_maillog_function(tmp_path: Path, restore_logging: None) -> None:
    log = tmp_path / "mail.json"
    maillog.setup("info", str(log), "json")
    maillog.removed("ABCD")
    maillog.spool_problem("disk on fire")
    maillog.supervisor("worker 1 died", problem=True)
    objs = [json.loads(line) for line in lines(log)]
    assert [(o["event"], o["level"], o["message"]) for o in objs] == [
        ("removed", "info", "ABCD: removed"),
        ("spool_problem", "warning", "spool: disk on fire"),
        ("supervisor", "warning", "supervisor: worker 1 died"),
    ]
    assert all(o["pid"] == os.getpid() for o in objs)


def test_level_filters_lines(tmp_path: Path, restore_logging: None) -> None:
    log = tmp_path / "mail.log"
    maillog.setup("warning", str(log))
    maillog.connect("C1", "[192.0.2.1]:1")  # info: not written
    maillog.warning("something odd")
    got = lines(log)
    assert len(got) == 1 and got[0].endswith(f"smtprs[{os.getpid()}]: something odd")


def test_a_reopened_file_appends_and_the_old_descriptor_is_closed(tmp_path: Path, restore_logging: None) -> None:
    log = tmp_path / "mail.log"
    maillog.setup("info", str(log))
    first = logging.getLogger("smtprs").handlers[0]
    assert isinstance(first, maillog.LineHandler)
    fd = first.fd
    maillog.removed("ONE")
    maillog.use_handler(maillog.make_handler(str(log)), "info")  # what a reload does
    maillog.removed("TWO")
    assert [PLAIN.match(x).group(2) for x in lines(log)] == ["ONE: removed", "TWO: removed"]  # type: ignore[union-attr]
    assert first.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)


def test_an_unopenable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        maillog.make_handler(str(tmp_path / "no" / "such" / "dir" / "mail.log"))


def test_tracebacks_still_formatted(tmp_path: Path, restore_logging: None) -> None:
    log = tmp_path / "mail.log"
    maillog.setup("debug", str(log))
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("smtprs").debug("session traceback", exc_info=True)
    text = log.read_text()
    assert "session traceback" in text and "ValueError: boom" in text and "Traceback" in text


def test_a_forked_child_logs_its_own_pid(tmp_path: Path, restore_logging: None) -> None:
    log = tmp_path / "mail.log"
    maillog.setup("info", str(log))
    pid = os.fork()
    if pid == 0:  # the child: one line, then leave without running pytest's teardown
        try:
            maillog.removed("CHILD")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    maillog.removed("PARENT")
    got = {PLAIN.match(x).group(2): int(PLAIN.match(x).group(1)) for x in lines(log)}  # type: ignore[union-attr]
    assert got == {"CHILD: removed": pid, "PARENT: removed": os.getpid()}


def test_records_carry_what_a_standard_formatter_reads(restore_logging: None) -> None:
    """An embedding program's own handler may format any LogRecord field."""
    import io
    import threading

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s %(process)d %(processName)s %(thread)d %(threadName)s %(module)s %(funcName)s: %(message)s"
        )
    )
    maillog.use_handler(handler, "info")
    maillog.removed("ABCD")
    line = out.getvalue().strip()
    expected = f"INFO smtprs.mail {os.getpid()} MainProcess {threading.get_ident()} {threading.current_thread().name} maillog removed: ABCD: removed"
    assert line.endswith(expected), line
