"""A real smtprs server for ordinary synchronous test code (as aiosmtpd's Controller).

``Controller`` runs one server worker (``smtprs.serve``: listeners, spool,
queue, local delivery) in a background thread with its own Trio loop, so a
test can speak to it with ``smtplib`` and look at what was delivered::

    with smtprs.testing.Controller(hooks=MyHooks()) as server:
        with smtplib.SMTP(server.host, server.port) as client:
            client.sendmail("a@example.test", ["bob@example.test"], b"Subject: hi\\r\\n\\r\\nhello\\r\\n")
        [message] = server.wait_for_mail("bob")

Defaults: a listener on 127.0.0.1 with a free port (``port``), the local
domain ``example.test`` (any user; mailboxes in ``data_dir/mail/USER``),
hostname ``mx.test``, a temporary data directory removed by ``stop()``
unless one is given.  ``overrides`` is a configuration tree merged over
those defaults (the same keys as the TOML file; a table merges key by key,
anything else replaces); ``config`` gives a whole ``Config`` instead.

``start()`` returns once every listener is bound and raises what stopped the
server from starting (a ``ConfigError``, ``ListenError`` ...); ``stop()``
cancels the server and waits for its thread.  Hooks run in the server's
thread: a test reading what they gathered should use thread-safe values
(appending to a list and reading it is enough in CPython) or ``wait_for``.

The pytest plugin: with ``pytest_plugins = ["smtprs.testing"]`` in the root
conftest.py, the ``smtprs_server`` fixture is a started ``Controller`` on the
test's ``tmp_path``, stopped after the test; ``@pytest.mark.smtprs(hooks=...,
overrides={...})`` configures it (``hooks`` an instance, or a class or
factory called once per test).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from . import api
from .config import Config, load
from .config.load import merge_tables
from .hooks import Hooks

DEFAULT_DOMAIN = "example.test"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class Controller:
    """One smtprs server in a background thread: ``start()``, ``stop()``, or ``with``."""

    def __init__(
        self,
        hooks: Hooks | None = None,
        *,
        overrides: dict[str, Any] | None = None,
        data_dir: str | Path | None = None,
        host: str = "127.0.0.1",
        config: Config | None = None,
    ) -> None:
        self.hooks = hooks
        self.host = host
        self._own_dir = data_dir is None and config is None
        self._overrides = overrides or {}
        self._given_config = config
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self.config: Config | None = None
        self.server: api.RunningServer | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- the configuration ---------------------------------------------------
    def _make_config(self) -> Config:
        if self._given_config is not None:
            return self._given_config
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="smtprs-test-"))
        base: dict[str, Any] = {
            "data_dir": str(self._data_dir),
            "hostname": "mx.test",
            "smtpd": {"listeners": [{"address": f"{self.host}:0"}]},
            "local": {"domains": [DEFAULT_DOMAIN]},
        }
        return load(None, overrides=merge_tables(base, self._overrides))

    # -- life cycle ----------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> Controller:
        """Start the server; return once it listens.  Raises what stopped it."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self.config = self._make_config()
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="smtprs-testing", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise TimeoutError(f"smtprs did not start within {timeout}s")
        if self._error is not None:
            error, self._error = self._error, None
            self._thread.join(STOP_TIMEOUT)
            self._thread = None
            self._cleanup()
            raise error
        return self

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as e:  # reported by start() (or lost if it happens after stop())
            if not self._ready.is_set():
                self._error = _unwrap(e)
        finally:
            self._ready.set()

    async def _main(self) -> None:
        assert self.config is not None
        async with trio.open_nursery() as nursery:
            self._token = trio.lowlevel.current_trio_token()
            self._scope = nursery.cancel_scope
            self.server = await nursery.start(api.serve, self.config, self.hooks)
            self._ready.set()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the server (cancelled: mail already answered 250 stays spooled) and wait for it."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        token, scope = self._token, self._scope
        if token is not None and scope is not None:
            try:
                trio.from_thread.run_sync(scope.cancel, trio_token=token)
            except trio.RunFinishedError:
                pass
        thread.join(timeout)
        self._token = self._scope = None
        self.server = None
        if thread.is_alive():
            raise TimeoutError(f"smtprs did not stop within {timeout}s")
        self._cleanup()

    def _cleanup(self) -> None:
        if self._own_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> Controller:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what a test reads -----------------------------------------------------
    def port_of(self, mode: str = "mx") -> int:
        """The port of the first listener of ``mode``."""
        if self.server is None:
            raise RuntimeError("not running")
        return self.server.port(mode)

    @property
    def port(self) -> int:
        """The port of the mx listener."""
        return self.port_of("mx")

    @property
    def data_dir(self) -> Path:
        assert self.config is not None, "not started"
        return self.config.data_path

    def mailbox(self, user: str, domain: str = DEFAULT_DOMAIN) -> list[bytes]:
        """The messages delivered to ``user``'s Maildir (new/ and cur/), oldest first."""
        assert self.config is not None, "not started"
        root = self.config.maildir_path(user, domain)
        files = [p for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))]

    def wait_for_mail(
        self, user: str, count: int = 1, timeout: float = 10.0, domain: str = DEFAULT_DOMAIN
    ) -> list[bytes]:
        """Wait until ``user`` has at least ``count`` messages (at most ``timeout`` seconds); return them."""
        wait_for(lambda: len(self.mailbox(user, domain)) >= count, timeout, f"{count} message(s) for {user}")
        return self.mailbox(user, domain)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "the condition") -> None:
    """Poll ``predicate`` until it is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _unwrap(e: BaseException) -> BaseException:
    """The one error inside Trio's exception groups, when there is one."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


# --------------------------------------------------------------------------
# The pytest plugin (pytest_plugins = ["smtprs.testing"])

try:
    import pytest
except ImportError:  # pragma: no cover - Controller works without pytest
    pass
else:

    def pytest_configure(config: pytest.Config) -> None:
        config.addinivalue_line(
            "markers", "smtprs(hooks=None, overrides=None): how the smtprs_server fixture configures its server"
        )

    @pytest.fixture
    def smtprs_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Controller]:
        """A running ``Controller`` on ``tmp_path / "smtprs"``, stopped after the test."""
        marker = request.node.get_closest_marker("smtprs")
        kwargs: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
        hooks = kwargs.pop("hooks", None)
        if hooks is not None and not isinstance(hooks, Hooks):
            hooks = hooks()  # a class or factory: one hooks object per test
        controller = Controller(hooks, data_dir=tmp_path / "smtprs", **kwargs)
        with controller:
            yield controller
