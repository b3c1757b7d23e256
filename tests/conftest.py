"""Suite-wide pytest configuration for smtprs.

Registers the command-line options of the end-to-end suite (they must live in
the root conftest) and the markers the suite uses beyond pyproject's list.
"""

from __future__ import annotations

import pytest

# smtprs.testing's pytest plugin: the smtprs_server fixture and the smtprs marker,
# as docs/library.md tells library users to enable it
pytest_plugins = ["smtprs.testing"]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("smtprs")
    group.addoption(
        "--e2e-timeout",
        type=float,
        default=120.0,
        help="seconds after which one end-to-end test is stopped and failed (default 120)",
    )
    group.addoption(
        "--smtprs-cmd",
        default=None,
        help="command that runs smtprs for the end-to-end tests (default: the smtprs script beside this Python)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: an end-to-end test that moves tens of megabytes or hundreds of messages")
    config.addinivalue_line("markers", "timeout(seconds): a larger time bound for one end-to-end test")
