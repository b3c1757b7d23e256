"""One mail transaction (MAIL ... DATA/BDAT): what it has gathered, and which
commands the session's state allows.

``Transaction`` is the state the session (envelope side: MAIL, RCPT) and the
intake (content side: smtpd/intake.py) share; ``check_sequence`` is the
RFC 5321 4.1.4 order of commands as one table, answered with 503 before any
handler runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import _core
from .. import reply as R
from ..queue.backend import Writer
from . import lmtp


@dataclass
class Transaction:
    """What one MAIL ... DATA/BDAT transaction has gathered."""

    sender: _core.Path
    params: dict[str, str | None]
    smtputf8: bool = False
    recipients: list[str] = field(default_factory=list)
    rcpt_params: dict[str, dict[str, str]] = field(default_factory=dict)  # address -> NOTIFY/ORCPT
    targets: dict[str, str] = field(default_factory=dict)  # expanded recipient -> the RCPT address it came from
    lmtp_slots: list[lmtp.Slot] = field(
        default_factory=list
    )  # LMTP: every accepted RCPT, one reply each after the data
    rcpt_attempts: int = 0
    writer: Writer | None = None
    mode: str | None = None  # "DATA" or "BDAT" once content started
    bdat_error: R.Reply | None = None  # the reply every further BDAT of this transaction gets
    hold: bytearray | None = None  # submission: the header block, held until its end is seen


# The sequence table: for each verb, what must have happened before it.
# (needs greeting, needs MAIL, needs RCPT, refused inside a transaction)
_SEQUENCE: dict[str, tuple[bool, bool, bool, bool]] = {
    "STARTTLS": (True, False, False, True),
    "AUTH": (True, False, False, True),
    "MAIL": (True, False, False, True),
    "RCPT": (False, True, False, False),
    "DATA": (False, True, True, False),
    "BDAT": (False, True, True, False),
}


def check_sequence(verb: str, greeted: bool, txn: Transaction | None) -> R.Reply | None:
    """Is ``verb`` legal now?  None if yes, else the 503 reply."""
    rule = _SEQUENCE.get(verb)
    if rule is None:
        return None
    need_greeting, need_mail, need_rcpt, no_txn = rule
    if need_greeting and not greeted:
        return R.NEED_HELO
    if no_txn and txn is not None:
        return R.NESTED_MAIL if verb == "MAIL" else R.TXN_IN_PROGRESS
    if need_mail and txn is None:
        return R.NEED_MAIL
    if need_rcpt and txn is not None and not txn.recipients:
        return R.NO_VALID_RCPT if txn.rcpt_attempts else R.NEED_RCPT
    return None


class CloseSession(Exception):
    """Raised by a handler to end the session after the pending replies are sent."""
