"""Acceptance-latency probe (started by benches/load/driver.py).

One SMTP session at a time, one message per connection, as smtp-source sends
them: connect, 220, HELO, MAIL, RCPT, DATA, the message, QUIT.  For each
message it records the time from the moment the whole message, ending with
``CRLF.CRLF``, has been handed to the kernel to the moment the 250 reply
arrives: the acceptance latency the client sees (for a durable server, the
time to make the message durable).

It runs alongside smtp-source (which supplies the rest of the load) for
``--seconds`` and prints one JSON object on stdout:
``{"done": [[t_end, latency_s], ...], "errors": [...], "cpu_s": ...}`` where
``t_end`` is ``time.monotonic()`` (CLOCK_MONOTONIC, comparable across the
processes of one machine) when the 250 arrived.
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import sys
import time


def make_payload(size: int) -> bytes:
    """``size`` octets in 80-octet lines (78 characters + CRLF), as smtp-source -l."""
    lines = []
    left = size
    i = 1
    while left > 0:
        body = (str(i % 10) + "X" * 77)[: max(0, left - 2)]
        lines.append(body.encode() + b"\r\n")
        left -= len(body) + 2
        i += 1
    return b"".join(lines)


def make_message(payload: bytes, sender: str, rcpt: str, n: int) -> bytes:
    """A message shaped like smtp-source's: 4 header fields, the payload, the end mark."""
    head = (
        f"From: <{sender}>\r\nTo: <{rcpt}>\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000 (UTC)', time.gmtime())}\r\n"
        f"Message-Id: <probe.{n}@bench>\r\n\r\n"
    ).encode()
    return head + payload + b".\r\n"


class Reader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def reply(self) -> tuple[int, bytes]:
        """Read one (possibly multi-line) reply."""
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("connection closed")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), line


def one(host: str, port: int, message: bytes, sender: str, rcpt: str, helo: str) -> tuple[float, float]:
    sock = socket.create_connection((host, port))
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r = Reader(sock)

        def expect(cmd: bytes | None, code: int) -> None:
            if cmd is not None:
                sock.sendall(cmd)
            got, line = r.reply()
            if got != code:
                raise RuntimeError(f"{cmd!r}: {line.decode(errors='replace')}")

        expect(None, 220)
        expect(b"HELO " + helo.encode() + b"\r\n", 250)
        expect(f"MAIL FROM:<{sender}>\r\n".encode(), 250)
        expect(f"RCPT TO:<{rcpt}>\r\n".encode(), 250)
        expect(b"DATA\r\n", 354)
        sock.sendall(message)
        t0 = time.monotonic()
        code, line = r.reply()
        t1 = time.monotonic()
        if code != 250:
            raise RuntimeError(f"end of data: {line.decode(errors='replace')}")
        try:
            sock.sendall(b"QUIT\r\n")
            r.reply()
        except OSError:
            pass
        return t1, t1 - t0
    finally:
        sock.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--size", type=int, default=1024, help="payload octets (as smtp-source -l)")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--from", dest="sender", default="probe@source.test")
    p.add_argument("--to", dest="rcpt", default="box@bench.test")
    p.add_argument("--helo", default="probe.test")
    args = p.parse_args()

    done: list[tuple[float, float]] = []
    errors: list[str] = []
    deadline = time.monotonic() + args.seconds
    n = 0
    payload = make_payload(args.size)
    while time.monotonic() < deadline:
        n += 1
        msg = make_message(payload, args.sender, args.rcpt, n)
        try:
            done.append(one(args.host, args.port, msg, args.sender, args.rcpt, args.helo))
        except (OSError, RuntimeError, ValueError) as e:
            errors.append(str(e))
            if len(errors) > 100:
                break
            time.sleep(0.01)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    json.dump(
        {
            "done": [[round(t, 6), round(lat, 7)] for t, lat in done],
            "errors": errors[:20],
            "error_count": len(errors),
            "cpu_s": ru.ru_utime + ru.ru_stime,
            "message_octets": len(make_message(payload, args.sender, args.rcpt, 0)) - 3,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
