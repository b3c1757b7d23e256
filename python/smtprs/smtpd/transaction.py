"""One mail transaction, its envelope side: MAIL and RCPT, what the
transaction has gathered, and which commands the session's state allows.

``Transaction`` is the state the envelope side (here) and the content side
(smtpd/intake.py) share.  ``check_sequence`` is the RFC 5321 4.1.4 order of
commands as one table, answered with 503 before any handler runs.  ``mail``
and ``rcpt`` are the two commands' handlers, in the order of their checks:
AUTH before MAIL on submission listeners, the parameters (smtpd/params.py),
the spool's free space, who may use which sender and who may relay
(smtpd/policy.py), the router's expansion of each recipient, the library's
hooks (on_rcpt is asked also when the checks refuse a recipient, and its
``Permit`` accepts one refused for relaying: ``_permitted``), the milters
(milter/driver.py: connect, helo and mail at MAIL, rcpt at RCPT); then flow control (``queue.in_flow_delay``, as Postfix's): while the
scheduler is behind (more new messages wait for their first delivery attempt
than queue.delivery_concurrency takes), MAIL waits until it catches up or the
delay has passed, and is then answered as usual.  On an LMTP listener every
recipient must expand to local mailboxes, and each accepted RCPT gets a slot
for its reply after the data (smtpd/lmtp.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import trio

from .. import _core, maillog
from .. import reply as R
from ..hooks import Hooks, Permit, overrides
from ..hops import Unroutable
from ..milter.driver import Client as MilterClient
from ..milter.driver import MilterTransaction
from ..milter.driver import Settings as MilterSettings
from ..queue.backend import Writer
from ..route.router import Expansion
from . import lmtp
from . import params as esmtp
from .context import Flow, SessionView

_debug = logging.getLogger("smtprs")


@dataclass
class Transaction:
    """What one MAIL ... DATA/BDAT transaction has gathered."""

    sender: _core.Path
    params: dict[str, str | None]
    smtputf8: bool = False
    recipients: list[str] = field(default_factory=list)
    rcpt_params: dict[str, dict[str, str]] = field(default_factory=dict)  # address -> NOTIFY/ORCPT
    targets: dict[str, str] = field(default_factory=dict)  # expanded recipient -> the RCPT address it came from
    # LMTP: every accepted RCPT, one reply each after the data
    lmtp_slots: list[lmtp.Slot] = field(default_factory=list)
    rcpt_attempts: int = 0
    writer: Writer | None = None
    mode: str | None = None  # "DATA" or "BDAT" once content started
    bdat_error: R.Reply | None = None  # the reply every further BDAT of this transaction gets
    hold: bytearray | None = None  # submission: the header block, held until its end is seen
    milter: MilterTransaction | None = None  # the listener's milters for this transaction (milter/driver.py)


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


# The replies of the table, by the names the engine gives them (it answers
# these itself, except for BDAT: see greeting.auto_replies and _core.AutoReplies).
SEQUENCE_REPLIES: dict[str, R.Reply] = {
    "need_helo": R.NEED_HELO,
    "nested_mail": R.NESTED_MAIL,
    "txn_in_progress": R.TXN_IN_PROGRESS,
    "need_mail": R.NEED_MAIL,
    "need_rcpt": R.NEED_RCPT,
    "no_valid_rcpt": R.NO_VALID_RCPT,
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


class TransactionSession(SessionView, Protocol):
    """What MAIL and RCPT use of their session (smtpd/session.py)."""

    txn: Transaction | None

    @property
    def conn(self) -> _core.ServerConnection: ...
    @property
    def milters(self) -> MilterSettings | None: ...
    @property
    def mode(self) -> str: ...
    @property
    def helo_name(self) -> str: ...
    @property
    def tls(self) -> str | None: ...

    async def ask_hook(self, name: str, *args: object, refused: R.Reply | None = None) -> R.Reply | None: ...


async def mail(s: TransactionSession, cmd: _core.Command) -> None:
    """MAIL FROM: the checks, then a new transaction."""
    cfg = s.ctx.cfg
    path = cmd.path
    assert path is not None
    if s.submission and s.auth_user is None:
        maillog.reject(s.id, s.peer, "MAIL", R.AUTH_REQUIRED, f"from=<{path.address()}>")
        s.reply(R.AUTH_REQUIRED)
        return
    params = cmd.params
    size = esmtp.mail_size(params, cfg.smtpd.max_message_size)
    if isinstance(size, R.Reply):
        if size == R.SIZE_EXCEEDED:
            maillog.reject(s.id, s.peer, "MAIL", R.SIZE_EXCEEDED, f"SIZE={params['SIZE']}")
        s.reply(size)
        return
    # the spool's free space is asked between SIZE and the other parameters:
    # that has always been the order of the checks
    need = esmtp.space_wanted(size, cfg.queue.min_free_space)
    if need:
        free = s.ctx.spool.free_space()
        if free is not None and free < need:
            maillog.reject(s.id, s.peer, "MAIL", R.SPOOL_FULL, f"{free} octets free in the spool, {need} wanted")
            s.reply(R.SPOOL_FULL)
            return
    policy = s.ctx.policy
    mail = esmtp.mail_params(
        params, path_utf8=path.is_utf8, auth_user=s.auth_user, sender_allowed=policy.sender_allowed
    )
    if isinstance(mail, R.Reply):
        s.reply(mail)
        return
    if s.auth_user is not None and not policy.sender_allowed(s.auth_user, path.address()):
        maillog.reject(s.id, s.peer, "MAIL", R.SENDER_NOT_OWNED, f"from=<{path.address()}> sasl_username={s.auth_user}")
        s.reply(R.SENDER_NOT_OWNED)
        return
    if s.hooks is not None and (refusal := await s.ask_hook("on_mail", path.address())) is not None:
        s.reply(refusal)
        return
    milter = None
    if s.milters is not None:  # connect, helo and mail go to the milters now (milter/driver.py)
        milter = MilterTransaction(s.milters, _milter_client(s))
        if (refusal := await milter.mail(path.address(), _esmtp_args(params))) is not None:
            s.reply(refusal)
            return
    flow = s.ctx.flow
    if flow is not None and not s.lmtp and flow.behind() and cfg.queue.in_flow_delay > 0:
        await _flow_delay(s, flow, cfg.queue.in_flow_delay)
    s.txn = Transaction(sender=path, params=mail.kept, smtputf8=mail.smtputf8, milter=milter)
    s.reply(R.SENDER_OK)


def _milter_client(s: TransactionSession) -> MilterClient:
    port = s.peer.rpartition(":")[2]
    return MilterClient(
        session=s.id,
        peer=s.peer,
        ip=s.peer_ip,
        port=int(port) if port.isdigit() else 0,
        hostname=s.ctx.hostname,
        mode=s.mode,
        helo=s.helo_name,
        tls=s.tls,
        auth_user=s.auth_user,
    )


def _esmtp_args(params: dict[str, str | None]) -> list[str]:
    """MAIL/RCPT parameters as the milter protocol sends them: KEY=VALUE or KEY."""
    return [k if v is None else f"{k}={v}" for k, v in params.items()]


def mail_auto_possible(s: TransactionSession) -> bool:
    """May the engine accept MAIL by itself on this session (when its
    parameters need no check, see _core.AutoReplies)?  Not on submission
    listeners (AUTH first, who may use which sender), not with an on_mail
    hook, not when MAIL must ask the spool for free space
    (queue.min_free_space); flow control is asked per read (Session.mail_auto)."""
    hooks = s.hooks
    mail_hook = hooks is not None and getattr(type(hooks), "on_mail", None) is not Hooks.on_mail
    milters = s.milters is not None  # the milters see MAIL (milter/driver.py)
    return not s.submission and not mail_hook and not milters and s.ctx.cfg.queue.min_free_space == 0


def from_engine(s: TransactionSession, cmd: _core.Command) -> Transaction:
    """The transaction of a MAIL the engine accepted by itself: what ``mail``
    would have made of it (the engine accepts only MAILs none of whose checks
    can refuse)."""
    path = cmd.path
    assert path is not None
    mail = esmtp.mail_params(
        cmd.params, path_utf8=path.is_utf8, auth_user=s.auth_user, sender_allowed=s.ctx.policy.sender_allowed
    )
    assert not isinstance(mail, R.Reply), mail
    return Transaction(sender=path, params=mail.kept, smtputf8=mail.smtputf8)


async def _flow_delay(s: TransactionSession, flow: Flow, delay: float) -> None:
    """Delivery is behind: wait until it catches up, at most ``delay`` seconds
    (then go on anyway, as Postfix does)."""
    start = trio.current_time()
    with trio.move_on_after(delay):
        await flow.caught_up()
    s.ctx.metrics.inc("smtprs_flow_delays_total")
    if _debug.isEnabledFor(logging.DEBUG):
        _debug.debug(
            "%s: MAIL waited %.3fs for delivery to catch up (in_flow_delay)", s.id, trio.current_time() - start
        )


async def rcpt(s: TransactionSession, cmd: _core.Command) -> None:
    """RCPT TO: the checks, the router's expansion, then one more recipient."""
    txn = s.txn
    assert txn is not None and cmd.path is not None
    txn.rcpt_attempts += 1
    dsn = esmtp.rcpt_params(
        cmd.params,
        path_utf8=cmd.path.is_utf8,
        smtputf8=txn.smtputf8,
        recipients=len(txn.recipients),
        max_recipients=s.ctx.cfg.smtpd.max_recipients,
    )
    if isinstance(dsn, R.Reply):
        s.reply(dsn)
        return
    relay_allowed = s.ctx.policy.relay_allowed(s.peer_ip, s.auth_user)
    expansion = s.ctx.router.expand(cmd.path, relay_allowed=relay_allowed)
    address = cmd.path.address()
    asked = False  # the on_rcpt hook has had its say
    accepted = R.RECIPIENT_OK
    if isinstance(expansion, Unroutable):
        refusal: R.Reply | None = expansion.reply
        if not s.lmtp and overrides(s.hooks, "on_rcpt"):
            # the hook may permit what the server's own checks refuse
            asked = True
            answer = await s.ask_hook("on_rcpt", txn.sender.address(), address, refused=expansion.reply)
            if isinstance(answer, Permit):
                permitted = _permitted(s, cmd.path, expansion, relay_allowed)
                if permitted is not None:
                    expansion, refusal, accepted = permitted, None, answer
            elif answer is not None:
                refusal = answer  # the hook's own refusal instead (logged as such)
            else:
                maillog.reject(s.id, s.peer, "RCPT", refusal, f"from=<{txn.sender.address()}> to=<{address}>")
        else:
            maillog.reject(s.id, s.peer, "RCPT", refusal, f"from=<{txn.sender.address()}> to=<{address}>")
        if refusal is not None:
            s.reply(refusal)
            return
    assert not isinstance(expansion, Unroutable)
    if s.lmtp:
        refusal = lmtp.check_targets(s.ctx, address, expansion.addresses)
        if refusal is not None:
            maillog.reject(s.id, s.peer, "RCPT", refusal, f"from=<{txn.sender.address()}> to=<{address}>")
            s.reply(refusal)
            return
        txn.lmtp_slots.append(lmtp.Slot(address, expansion.addresses))
    elif (
        not asked
        and s.hooks is not None
        and (refused := await s.ask_hook("on_rcpt", txn.sender.address(), address)) is not None
    ):
        s.reply(refused)
        return
    if (
        (grey := s.ctx.greylist) is not None
        and s.mode == "mx"
        and s.auth_user is None
        and not grey.exempt(s.peer_ip, address)
    ):
        verdict = await grey.check(s.peer_ip, txn.sender.address(), address)
        s.ctx.metrics.inc(
            "smtprs_greylist_total", result="passed" if verdict.passed else "deferred", reason=verdict.why
        )
        if not verdict.passed:
            refusal = verdict.reply(address)
            maillog.reject(
                s.id,
                s.peer,
                "RCPT",
                refusal,
                f"from=<{txn.sender.address()}> to=<{address}> greylisted ({verdict.why})",
            )
            s.reply(refusal)
            return
    if txn.milter is not None and (refusal := await txn.milter.rcpt(address, _esmtp_args(cmd.params))) is not None:
        s.reply(refusal)
        return
    if address not in txn.recipients:  # a repeated RCPT gets one copy, as in Postfix
        txn.recipients.append(address)
        txn.rcpt_params[address] = dsn
    for target in expansion.addresses:  # so does a mailbox reached twice
        txn.targets.setdefault(target, address)
    s.conn.recipient_accepted()  # the engine may answer DATA by itself now
    s.reply(accepted)


def _permitted(s: TransactionSession, path: _core.Path, refused: Unroutable, relay_allowed: bool) -> Expansion | None:
    """What an on_rcpt ``Permit`` accepts: the recipient as the router expands
    it when relaying is allowed (so a permit lifts "relay access denied"), or
    None -- the refusal stands, logged -- when the router has no route for it
    even then (an unknown local user, a bad address, an alias loop): a permit
    never makes the server accept mail it would then bounce."""
    detail = f"from=<{s.txn.sender.address() if s.txn else ''}> to=<{path.address()}>"
    if not relay_allowed:
        again = s.ctx.router.expand(path, relay_allowed=True)
        if not isinstance(again, Unroutable):
            maillog.warning(f"{s.id}: permit: RCPT from {s.peer}: {detail}: permitted by a hook over {refused.reply}")
            return again
    maillog.warning(
        f"{s.id}: permit: RCPT from {s.peer}: {detail}: a hook permitted it, but it has no route; refused with {refused.reply}"
    )
    return None
