"""The ``discard`` transport: mail for the address is taken and thrown away.

As Postfix's discard(8): each recipient counts as delivered (it is logged
``status=sent (discarded: REASON)``), so the sender gets no bounce, and a
success notice only when it asked for one (NOTIFY=SUCCESS), as for any
delivery.  Nothing is written anywhere.
"""

from __future__ import annotations

from ..hops import Discard
from .base import DeliveryRequest, Outcome


class DiscardAgent:
    name = "discard"

    async def deliver(self, request: DeliveryRequest) -> list[Outcome]:
        outcomes = []
        for t in request.targets:
            assert isinstance(t.hop, Discard)
            why = f": {t.hop.reason}" if t.hop.reason else ""
            outcomes.append(Outcome(t.index, "delivered", f"discarded{why}", "none"))
        return outcomes
