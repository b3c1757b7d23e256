"""The envelope (RFC 5321): who sent a message, to whom, and each recipient's state.

It is kept apart from the content (RFC 5322), which the spool stores once,
exactly as it will be delivered.  The envelope is a small JSON record that the
spool rewrites atomically after each delivery attempt.

ESMTP parameters kept: ``Envelope.params`` holds BODY, SMTPUTF8 and the DSN
parameters RET and ENVID (RFC 3461, xtext-decoded); ``Recipient.params`` holds
NOTIFY and ORCPT (``addr-type;address``, decoded).  Besides its state, each
recipient keeps what a delivery status notification reports about it: the
enhanced status code, the remote MTA and its reply (``diagnostic``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any, Literal

State = Literal["pending", "delivered", "deferred", "failed"]
FINAL_STATES = ("delivered", "failed")

FORMAT_VERSION = 1


@dataclass
class Recipient:
    address: str
    state: State = "pending"
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    params: dict[str, str] = field(default_factory=dict)
    status: str = ""  # enhanced status code of the last outcome (RFC 3463), for DSNs
    remote_mta: str = ""  # the host that gave the last outcome, if remote
    diagnostic: str = ""  # that host's reply, "550 5.1.1 No such user"
    last_attempt: float = 0.0
    notice: str = ""  # a DSN owed to the sender about this recipient: "failed", "delivered", "relayed"
    delay_notified: bool = False  # a "delayed" DSN has been sent for this recipient
    # the address given at RCPT when alias/virtual expansion or sub-addressing
    # changed it ("" when ``address`` is what the client gave)
    original: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def notify(self) -> frozenset[str]:
        """The DSN NOTIFY keywords asked for; empty when none was given (RFC 3461 4.1)."""
        value = self.params.get("NOTIFY", "")
        return frozenset(v.strip().upper() for v in value.split(",") if v.strip())


@dataclass
class Envelope:
    queue_id: str
    sender: str
    recipients: list[Recipient]
    arrival: float
    size: int = 0
    client_address: str = ""
    client_helo: str = ""
    protocol: str = "ESMTP"
    params: dict[str, str] = field(default_factory=dict)
    auth: str = ""  # the authenticated (SMTP AUTH) user who submitted it, "" if none
    held: bool = False  # put on hold (`smtprs queue hold`): not delivered until released

    @property
    def done(self) -> bool:
        """Every recipient is final and every notice owed has been sent."""
        return all(r.final and not r.notice for r in self.recipients)

    def pending(self, now: float) -> list[int]:
        """Indexes of recipients due for an attempt at ``now``."""
        return [i for i, r in enumerate(self.recipients) if not r.final and r.next_attempt <= now]

    def next_due(self) -> float | None:
        times = [r.next_attempt for r in self.recipients if not r.final]
        return min(times) if times else None

    def to_json(self) -> bytes:
        # What dataclasses.asdict gives, built by hand: asdict deep-copies
        # every value on the way (~26 calls and a deepcopy per field), and
        # every accepted message is serialized at least once.  json.dumps
        # copies nothing, so the dicts can be shared as they are.
        data = {name: getattr(self, name) for name in _ENVELOPE_FIELDS}
        data["recipients"] = [{name: getattr(r, name) for name in _RECIPIENT_FIELDS} for r in self.recipients]
        data["v"] = FORMAT_VERSION
        return _ENCODER.encode(data).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Envelope:
        data: dict[str, Any] = json.loads(raw)
        if data.pop("v", None) != FORMAT_VERSION:
            raise ValueError("unknown envelope format version")
        data["recipients"] = [Recipient(**r) for r in data["recipients"]]
        return cls(**data)


_ENVELOPE_FIELDS = tuple(f.name for f in fields(Envelope))
_RECIPIENT_FIELDS = tuple(f.name for f in fields(Recipient))
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
