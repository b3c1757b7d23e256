"""The metrics endpoint: a tiny HTTP/1.0 server for Prometheus to scrape.

Listens on ``metrics.address`` (loopback by default) when
``metrics.enabled``; only worker 0 listens.  ``GET /metrics`` answers the
Prometheus text format (metrics.py) of this process's figures, added to
those the other workers return through their control sockets (STATS), so
one scrape sees the whole server.  Anything else gets 404 (or 405 for
another method); each request is read with a 5-second deadline and at most
8 KiB, one request per connection, then the connection is closed.  Reads the
control sockets of the other workers; writes nothing.
"""

from __future__ import annotations

import json

import trio

from . import maillog
from .config import Config, parse_host_port
from .errors import ListenError
from .metrics import Metrics, merge, render
from .queue import control

REQUEST_MAX = 8192
TIMEOUT = 5.0
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def gather(cfg: Config, metrics: Metrics | None, others: bool) -> dict:  # type: ignore[type-arg]
    """This process's snapshot and, with ``others``, every other worker's (asked
    through its control socket; a worker that does not answer is left out)."""
    snaps = [metrics.snapshot()] if metrics is not None else []
    if others or metrics is None:
        own = cfg.control_socket_for(0) if metrics is not None else None
        for path in cfg.control_sockets():
            if path == own:
                continue
            try:
                answer = await control.request(path, "STATS")
            except control.ControlError:
                continue
            if answer.startswith("OK "):
                snaps.append(json.loads(answer[3:]))
    return merge(snaps)


async def serve(
    cfg: Config,
    metrics: Metrics,
    others: bool,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    host, port = parse_host_port(cfg.metrics.address, "metrics.address")
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as e:
        raise ListenError(f"cannot listen on {cfg.metrics.address} (metrics.address): {e.strerror or e}") from e
    name = listeners[0].socket.getsockname()
    maillog.listening(f"{name[0]}:{name[1]}", "metrics")
    task_status.started((name[0], name[1]))

    async def handle(stream: trio.SocketStream) -> None:
        try:
            data = b""
            with trio.move_on_after(TIMEOUT):
                while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < REQUEST_MAX:
                    chunk = await stream.receive_some(REQUEST_MAX)
                    if not chunk:
                        break
                    data += chunk
            parts = data.split(b"\n", 1)[0].decode("latin-1").split()
            if len(parts) < 2:
                status, body = "400 Bad Request", "bad request\n"
            elif parts[0] not in ("GET", "HEAD"):
                status, body = "405 Method Not Allowed", "only GET\n"
            elif parts[1].split("?")[0] != "/metrics":
                status, body = "404 Not Found", "try /metrics\n"
            else:
                status, body = "200 OK", render(await gather(cfg, metrics, others))
            payload = body.encode()
            head = f"HTTP/1.0 {status}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            with trio.move_on_after(TIMEOUT):
                await stream.send_all(head.encode() + (payload if parts[:1] != ["HEAD"] else b""))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)
