"""The delivery contract: a request in, one outcome per recipient out.

Agents know nothing of routing or of the queue: the scheduler hands them a
``DeliveryRequest`` (queue id, content, sender, recipients with their next
hop) and records the ``Outcome`` of each recipient.  ``deferred`` means "try
again later" (4xx, network or disk trouble); ``failed`` is permanent (5xx).

An outcome carries what a delivery status notification (RFC 3464) reports:
the enhanced status code, the remote MTA and its reply; ``dsn_relayed`` says
the next hop took the DSN duty over (it offered DSN and got our NOTIFY), so no
success notice is due from us.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..content import Content
from ..hops import NextHop

Status = Literal["delivered", "deferred", "failed"]


@dataclass(frozen=True)
class Target:
    index: int  # the recipient's position in the envelope
    address: str
    hop: NextHop
    params: dict[str, str] = field(default_factory=dict)  # the recipient's NOTIFY, ORCPT


@dataclass(frozen=True)
class DeliveryRequest:
    queue_id: str
    sender: str
    content: Content  # content.open() reads it (a file, or a range of a spool segment)
    arrival: float
    targets: tuple[Target, ...]
    size: int = 0
    params: dict[str, str] = field(default_factory=dict)  # the envelope's BODY, SMTPUTF8, RET, ENVID


@dataclass(frozen=True)
class Outcome:
    index: int
    status: Status
    detail: str  # for the log and the envelope: "delivered to maildir", "452 4.2.2 ..."
    relay: str = ""  # "local", or "host[ip]:port"
    enhanced: str = ""  # RFC 3463 status, "5.1.1"; derived from detail when empty
    remote_mta: str = ""  # the remote host's name, when a remote host answered
    diagnostic: str = ""  # that host's reply, "550 5.1.1 No such user"
    dsn_relayed: bool = False

    @property
    def status_code(self) -> str:
        """The enhanced status code to report: given, else read from the detail, else by class."""
        if self.enhanced:
            return self.enhanced
        parts = self.detail.split(" ", 2)
        if len(parts) >= 2 and parts[0].isdigit() and parts[1][:2] in ("2.", "4.", "5."):
            return parts[1]
        return {"delivered": "2.0.0", "deferred": "4.0.0", "failed": "5.0.0"}[self.status]


class DeliveryAgent(Protocol):
    name: str

    async def deliver(self, request: DeliveryRequest) -> list[Outcome]: ...
