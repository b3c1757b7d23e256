"""The docs' webhook recipe (docs/library.md, "A webhook on delivery") run by
a real ``smtprs serve``: its hook class is taken from the docs as written,
loaded with ``hooks = "module:factory"``, and posts to an ``http.server`` on
loopback for each delivered recipient; with the endpoint gone, the delivery
stands and the failure is logged."""

from __future__ import annotations

import http.server
import json
import os
import re
import smtplib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .harness import DOMAIN, free_port

pytestmark = pytest.mark.e2e

DOCS = Path(__file__).parents[2] / "docs" / "library.md"


def recipe() -> str:
    """The recipe's code up to its demonstration: imports, logger, DeliveryWebhook."""
    text = DOCS.read_text()
    section = text[text.index("### A webhook on delivery") :]
    code = re.search(r"```python runnable\n(.*?)```", section, re.S)
    assert code, "the webhook recipe's code block"
    head = code.group(1).split("\nreceived = []")[0]
    assert "class DeliveryWebhook(smtprs.Hooks)" in head and "trio.to_thread.run_sync" in head
    return head


class Endpoint(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"path": self.path, "type": self.headers["Content-Type"], **json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[tuple[http.server.ThreadingHTTPServer, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Handler", (Endpoint,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def load_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    pydir = tmp_path / "py"
    pydir.mkdir()
    module = (
        recipe()
        + "\n\ndef make():\n    import os\n\n    return DeliveryWebhook(os.environ['E2E_WEBHOOK_URL'], timeout=3.0)\n"
    )
    (pydir / "e2e_webhook.py").write_text(module)
    path = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{pydir}{os.pathsep}{path}" if path else str(pydir))
    monkeypatch.setenv("E2E_WEBHOOK_URL", url)


def test_the_webhook_recipe_posts_each_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_server: Any, endpoint: Any
) -> None:
    server, received = endpoint
    load_recipe(tmp_path, monkeypatch, f"http://127.0.0.1:{server.server_address[1]}/delivered")
    srv = make_server({"hooks": "e2e_webhook:make", "local": {"users": ["bob", "carol"]}})
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=15) as c:
        c.sendmail("me@client.test", [f"bob@{DOMAIN}", f"carol@{DOMAIN}"], b"Subject: hi\r\n\r\nhello\r\n")
    line = srv.wait_log(r"\w+: to=<carol@example\.test>.*status=sent")
    m = re.search(r"(\w+): to=<carol@", line)
    assert m, line
    qid = m.group(1)
    deadline = time.monotonic() + 15
    while len(received) < 2:
        assert time.monotonic() < deadline, (received, srv.log_tail())
        time.sleep(0.05)
    time.sleep(0.3)
    assert sorted(r["recipient"] for r in received) == [f"bob@{DOMAIN}", f"carol@{DOMAIN}"]
    assert all(
        r["path"] == "/delivered" and r["type"] == "application/json" and r["sender"] == "me@client.test"
        for r in received
    )
    assert {r["queue_id"] for r in received} == {qid}


def test_a_dead_endpoint_leaves_the_delivery_standing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_server: Any
) -> None:
    load_recipe(tmp_path, monkeypatch, f"http://127.0.0.1:{free_port()}/delivered")  # nothing listens
    srv = make_server({"hooks": "e2e_webhook:make", "local": {"users": ["bob"]}})
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=15) as c:
        c.sendmail("me@client.test", [f"bob@{DOMAIN}"], b"Subject: hi\r\n\r\nhello\r\n")
    assert len(srv.wait_mail("bob", 1)) == 1
    srv.wait_log(r"\w+: webhook for <bob@example\.test> failed: ")
    assert srv.alive()
