"""The delivery contract: a request in, one outcome per recipient out.

Agents know nothing of routing or of the queue: the scheduler hands them a
``DeliveryRequest`` (queue id, content, sender, recipients with their next
hop) and records the ``Outcome`` of each recipient.  ``deferred`` means "try
again later" (4xx, network or disk trouble); ``failed`` is permanent (5xx).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..queue.spool import Content
from ..route.router import NextHop

Status = Literal["delivered", "deferred", "failed"]


@dataclass(frozen=True)
class Target:
    index: int  # the recipient's position in the envelope
    address: str
    hop: NextHop


@dataclass(frozen=True)
class DeliveryRequest:
    queue_id: str
    sender: str
    content: Content  # content.open() reads it (a file, or a range of a spool segment)
    arrival: float
    targets: tuple[Target, ...]
    params: dict[str, str] = field(default_factory=dict)  # the envelope's MAIL parameters (BODY, SMTPUTF8)


@dataclass(frozen=True)
class Outcome:
    index: int
    status: Status
    detail: str  # for the log and the envelope: "delivered to maildir", "452 4.2.2 ..."
    relay: str = ""


class DeliveryAgent(Protocol):
    name: str

    async def deliver(self, request: DeliveryRequest) -> list[Outcome]: ...
