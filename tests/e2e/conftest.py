"""Fixtures of the end-to-end suite: real ``smtprs serve`` processes.

``server`` is a running server with the default test configuration (local
domain example.test, any user, hostname mx.test, retries after 0.5 s);
``make_server(overrides, modes=(...))`` starts one with a configuration tree
merged over that default, and extra listeners of the given modes (their ports
in ``server.ports``); ``smtp_sink`` is Postfix's smtp-sink as a downstream
peer.  Every server (and sink) is stopped at teardown (SIGTERM, then SIGKILL) and,
when a test fails, the end of each server's log is shown in the report.

Each test here is bounded in time with SIGALRM (``--e2e-timeout``, or a
``@pytest.mark.timeout(seconds)`` marker) so a hung server cannot hang the run.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import Server


@pytest.fixture(scope="session", autouse=True)
def _smtprs_cmd(request: pytest.FixtureRequest) -> None:
    cmd = request.config.getoption("--smtprs-cmd")
    if cmd:
        os.environ["SMTPRS_CMD"] = cmd


@pytest.fixture
def make_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []
    request.node._smtprs_servers = servers

    def factory(
        overrides: dict[str, Any] | None = None,
        *,
        start: bool = True,
        name: str | None = None,
        modes: tuple[str, ...] = (),
    ) -> Server:
        srv = Server(tmp_path / (name or f"server{len(servers)}"), overrides, modes)
        servers.append(srv)
        if start:
            srv.start()
        return srv

    yield factory
    for srv in servers:
        try:
            srv.stop()
        except Exception:  # teardown of one must not leave the others running
            srv.kill()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


@pytest.fixture
def smtp_sink(tmp_path: Path) -> Iterator[Any]:
    """Postfix's smtp-sink as a downstream peer (peers.SmtpSink), stopped at teardown whatever happens."""
    from .peers import SmtpSink

    sink = SmtpSink(tmp_path / "sink").start()
    try:
        yield sink
    finally:
        sink.stop()


class E2ETimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    marker = item.get_closest_marker("timeout")
    seconds = float(marker.args[0]) if marker else float(item.config.getoption("--e2e-timeout"))

    def expired(signum: int, frame: object) -> None:
        raise E2ETimeout(f"end-to-end test ran longer than {seconds:.0f}s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and call.when in ("setup", "call"):
        for srv in getattr(item, "_smtprs_servers", []):
            report.sections.append((f"smtprs log {srv.base.name}", srv.log_tail(120)))
