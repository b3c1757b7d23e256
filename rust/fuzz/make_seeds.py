#!/usr/bin/env python3
"""Write the small seed corpus of the fuzz targets into rust/fuzz/seeds/.

The seeds are committed (a few KiB); this script is how they were made and how
to remake them after a change of a target's input layout.  The growing corpus
that libFuzzer writes goes to rust/fuzz/corpus/ (ignored by git).

Each target's input layout is described at the top of its file in
fuzz_targets/; the helpers below build inputs in those layouts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"


def cuts(*lengths: int) -> bytes:
    """The `[n] [lengths]` prefix: pieces of length+1 octets, cycling."""
    assert len(lengths) < 8
    return bytes([len(lengths), *lengths])


COMMANDS = [
    b"EHLO client.example",
    b"HELO x",
    b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME",
    b"MAIL FROM:<>",
    b"MAIL FROM:<@a.example,@b.example:user@c.example>",
    b"MAIL FROM:<\"quoted user\"@example.test> ENVID=a+2Bb",
    "MAIL FROM:<jos\u00e9@ex\u00e4mple.test> SMTPUTF8".encode(),
    b"MAIL FROM:<a@b> " + b"X!" * 240,
    b"MAIL FROM:<a@b> " + b"K" * 480,
    b"MAIL FROM:<a@b> SIZE=1 SIZE=2",
    b"RCPT TO:<bob@example.test> NOTIFY=NEVER ORCPT=rfc822;bob@example.test",
    b"RCPT TO:<Postmaster>",
    b"RCPT TO:<user%other@example.test>",
    b"RCPT TO:<\"user@remote\"@example.test>",
    b"RCPT TO:<u@[IPv6:::1]>",
    b"RCPT TO:<u@[192.0.2.1]>",
    b"DATA",
    b"BDAT 10",
    b"BDAT 0 LAST",
    b"BDAT 99999999999999999999",
    b"AUTH PLAIN dXNlcgB1c2VyAHBhc3M=",
    b"AUTH LOGIN",
    b"STARTTLS",
    b"VRFY bob",
    b"NOOP",
    b"RSET",
    b"QUIT",
    b"mail from:<a@b>\rRCPT TO:<c@d>",
    b"NOOP\x00",
]

ADDRESSES = [
    b"<a@b.example>",
    b"<>",
    b"<Postmaster>",
    b"<@a,@b:u@c.example>",
    b"<\"a b\\\"c\"@example.test>",
    b"<u@[IPv6:2001:db8::1]>",
    b"<u@[192.0.2.1]>",
    b"<u@[tag:content]>",
    "<\u00fc\u00f1\u00ee@\u00e9x.test>".encode(),
    b"a.b+c@sub.example.test",
    b"<" + b"l" * 64 + b"@" + b"d" * 63 + b"." + b"e" * 63 + b">",
]

MESSAGES = [
    b"Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\n",
    b".\r\n",
    b"Received: a\r\nReceived: b\r\nDate: x\r\nMessage-ID: <m@x>\r\n\r\nbody\r\n.\r\nQUIT\r\n",
    b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x>\r\n\r\n.\r\n",
    b"Subject: x\r\n\r\nhi\r.\rMAIL FROM:<evil@x>\r\n.\r\n",
    b"Subject: x\r\n\r\nhi\r\n.\nRCPT TO:<evil@x>\r\n.\r\n",
    b"Subject: x\r\n\r\nhi\n.\r\nDATA\r\n.\r\n",
    b"a" * 1200 + b"\r\n.\r\n",
    "Subject: \u00e9\r\n\r\n8bit\r\n.\r\n".encode(),
]

REPLIES = [
    b"220 mx.example ESMTP\r\n",
    b"250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250 CHUNKING\r\n",
    b"250 2.0.0 Ok: queued as 0BCDF\r\n",
    b"354 End data with <CR><LF>.<CR><LF>\r\n",
    b"550-5.1.1 first\r\n550 5.1.1 second\r\n",
    b"421 4.7.0 bye\n",
    b"250\r\n",
    b"250-a\r\n251 b\r\n",
    b"xyz\r\n",
]

DIALOGUES = [
    b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
    b"EHLO c\r\nMAIL FROM:<a@b> BODY=8BITMIME\r\nRCPT TO:<bob@example.test>\r\nBDAT 5\r\nab\r\ncBDAT 3 LAST\r\nxyzQUIT\r\n",
    b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<b@c>\r\nDATA\r\nhi\n.\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@c>\r\nDATA\r\nx\r\n.\r\n",
    b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@x>\r\n",
    b"AUTH LOGIN\r\ndXNlcg==\r\nAUTH PLAIN " + b"A" * 600 + b"\r\nNOOP\r\n",
    b"BDAT 10\r\nabcRSET\r\nBDAT 0 LAST\r\n",
    b"BDAT x\r\nNOOP\r\n",
    b"N" * 600 + b"\r\nNOOP\nQUIT\r\n",
    "MAIL FROM:<\u00e9@x> SMTPUTF8\r\nRCPT TO:<\u00fc@x>\r\nRSET\r\nRCPT TO:<\u00fc@x>\r\n".encode(),
]


# Inputs that once crashed a target (a core bug or a harness mistake), kept
# under readable names: libFuzzer runs every seed at start-up.
REGRESSIONS = {
    "command": {
        # 501 quoting the parameter whole: a reply line over 512 octets (core bug)
        "long-param-echo": b"\x00MAIL FROM:<a@b> " + b"X!" * 240,
    },
    "data": {
        # bare LF noted while scanning, header size when the run was handed
        # on: which refusal won depended on the cuts (now: the first in octet
        # order, rust/src/data.rs)
        "error-kind-depends-on-cuts": bytes([0, 0, 0, 2]) + cuts(0) + b"abcdef\nx\r\n.\r\n",
        # an open line checked against max_text_line at each chunk end
        "open-line-checked-early": bytes([0, 1, 1, 2]) + cuts(0) + b"\x00\x00\x00\r",
    },
    "reply": {
        # 1201 lines: format_reply makes it, the parser's bound refuses it
        "over-1000-lines": bytes([1, 255]) + cuts() + b"\x32\x00\x05" + b"\x00" * 1200,
    },
    "server": {
        # nothing but EOF: the driver must not feed an empty read
        "empty-stream": bytes([0, 0, 0, 0]) + cuts(),
        # max_message_size 8, a BDAT message never finished: octet by octet 8
        # octets came out before the limit, in one read none did (now 8 do,
        # however cut); regress-server-bdat-chunk-events and
        # regress-server-cut-dependent-events are the fuzzer's finds of the
        # same bug, kept as found
        "abandoned-bdat-depends-on-cuts": bytes([4, 0, 0, 1]) + cuts(0) + b"BDAT 10\r\nabcdefghijQUIT\r\n",
    },
}


def write(target: str, inputs: list[bytes]) -> None:
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    for data in inputs:
        (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def main() -> None:
    # Crash inputs the fuzzers found are kept as they were found
    # (seeds/TARGET/regress-*, not made here); everything else is remade.
    for f in SEEDS.glob("*/*"):
        if not f.name.startswith("regress-"):
            f.unlink()
    write("command", [bytes([f]) + c for c in COMMANDS for f in (0, 3)])
    write("address", [bytes([f]) + a for a in ADDRESSES for f in (2, 5)])
    write(
        "data",
        [bytes([0, 0, 0, 0]) + cuts() + m for m in MESSAGES]
        + [bytes([0, 80, 64, 20]) + cuts(0, 6, 2) + m for m in MESSAGES]
        + [bytes([1, 0, 0, 0]) + cuts(2, 0) + b"a\r\n.b\nc\r.\r\n\r\nend" + m for m in MESSAGES[:3]],
    )
    write(
        "reply",
        [bytes([0, 255]) + cuts(0, 5) + r for r in REPLIES]
        + [bytes([1, 255]) + cuts(3) + b"\x32\x00\x05" + b"first line\x00second\x002.0.0 third"],
    )
    write(
        "server",
        [bytes([0x10, 0, 0, 0]) + cuts() + d for d in DIALOGUES]
        + [bytes([0x1F, 20, 40, 8]) + cuts(0, 9, 2) + d for d in DIALOGUES]
        + [bytes([0x30, 0, 0, 0]) + cuts(4) + DIALOGUES[3], bytes([0x84, 0, 0, 64]) + cuts(7) + DIALOGUES[0]],
    )
    for target, inputs in REGRESSIONS.items():
        for name, data in inputs.items():
            (SEEDS / target / f"regress-{name}").write_bytes(data)


if __name__ == "__main__":
    main()
