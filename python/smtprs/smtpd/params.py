"""The ESMTP parameters of MAIL and RCPT: which values are good, which reply
refuses a bad one, and what is kept of the good ones.

Pure functions over the parameters as the core parsed them (keywords upper
case; ENVID, ORCPT and AUTH values already xtext-decoded) and the few
settings and session facts each check needs; they return either the reply
that refuses the command or the values the transaction keeps.  Nothing here
does I/O or logs: the session does both, and asks the spool for its free
space between ``mail_size`` and ``mail_params`` (that is the order of the
checks, so a client with several problems always hears about the same one).

MAIL: SIZE (RFC 1870), BODY (RFC 6152), SMTPUTF8 (RFC 6531), AUTH= (RFC 4954
5), RET and ENVID (RFC 3461 4).  RCPT: NOTIFY and ORCPT (RFC 3461 4), plus the
two RCPT checks that are not parameters but come before any lookup: a
non-ASCII address without SMTPUTF8, and the recipient limit.  Any other
keyword is refused with 555, naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import _core
from .. import reply as R
from ..errors import AddressError

Params = Mapping[str, str | None]

SMTPUTF8_VALUE = R.Reply(501, "5.5.4", "SMTPUTF8 takes no value")

# What each command understands; a keyword outside these is refused (555).
MAIL_KEYWORDS = frozenset({"SIZE", "BODY", "SMTPUTF8", "AUTH", "RET", "ENVID"})
RCPT_KEYWORDS = frozenset({"NOTIFY", "ORCPT"})

_NOTIFY_WORDS = ("NEVER", "SUCCESS", "FAILURE", "DELAY")


@dataclass(frozen=True)
class MailParams:
    """What a transaction keeps of MAIL's parameters."""

    smtputf8: bool
    # for the envelope, in this order: BODY (upper case), SMTPUTF8 (no value),
    # RET (upper case), ENVID, AUTH (the mailbox an authenticated user may claim)
    kept: dict[str, str | None]


def unsupported(keyword: str) -> R.Reply:
    """555 for an ESMTP parameter we do not support, naming it.  The keyword
    is cut short: it comes from the client, and a long one (a 500-octet
    command line allows it) would make a reply line over 512 octets."""
    return R.Reply(555, "5.5.4", f"Unsupported option: {keyword[:64]}")


def _unknown(params: Params, known: frozenset[str]) -> R.Reply | None:
    # the first unknown keyword in the client's order is the one named
    for keyword in params:
        if keyword not in known:
            return unsupported(keyword)
    return None


def valid_envid(value: str) -> bool:
    """RFC 3461 4.4: printable US-ASCII, at most 100 characters (after xtext decoding)."""
    return 0 < len(value) <= 100 and all(32 <= ord(c) < 127 for c in value)


# -- MAIL -------------------------------------------------------------------------
def mail_size(params: Params, max_message_size: int) -> int | None | R.Reply:
    """SIZE=: the declared size (None when not declared), or the refusal.

    A bare SIZE without a value declares nothing, as before; SIZE= with an
    empty or non-numeric value (or more than 20 digits) is malformed.
    R.SIZE_EXCEEDED is the one refusal the session logs.
    """
    size = params.get("SIZE")
    if size is None:
        return None
    if not size or not size.isdigit() or len(size) > 20:
        return R.BAD_SIZE
    if int(size) > max_message_size:
        return R.SIZE_EXCEEDED
    return int(size)


def space_wanted(size: int | None, min_free_space: int) -> int:
    """Free octets the spool must have for this MAIL: the configured reserve
    plus one and a half times the declared size.  0: no need to look."""
    return min_free_space + (size * 3 // 2 if size else 0)


def auth_parameter(
    value: str | None, auth_user: str | None, sender_allowed: Callable[[str, str], bool]
) -> str | None | R.Reply:
    """MAIL's AUTH= (RFC 4954 5): the mailbox to keep, None to forget it, or the refusal.

    Kept only from an authenticated client, and only when that user may
    claim the mailbox as a sender; otherwise it is treated as AUTH=<>, that
    is, forgotten.
    """
    if value is None:
        return R.BAD_AUTH_PARAM
    if value == "<>":
        return None
    try:
        mailbox = _core.parse_mailbox(value, smtputf8=True).address()
    except AddressError:
        return R.BAD_AUTH_PARAM
    if auth_user is not None and sender_allowed(auth_user, mailbox):
        return mailbox
    return None


def mail_params(
    params: Params,
    *,
    path_utf8: bool,
    auth_user: str | None,
    sender_allowed: Callable[[str, str], bool],
) -> MailParams | R.Reply:
    """MAIL's parameters other than SIZE (see mail_size): what to keep, or the refusal.

    ``path_utf8``: the reverse-path has non-ASCII characters; ``auth_user``
    and ``sender_allowed`` (Policy.sender_allowed) decide what AUTH= keeps.
    """
    body = params.get("BODY")
    if body is not None and body.upper() not in ("7BIT", "8BITMIME"):
        return R.BAD_BODY
    smtputf8 = "SMTPUTF8" in params
    if smtputf8 and params["SMTPUTF8"] is not None:
        return SMTPUTF8_VALUE
    if path_utf8 and not smtputf8:
        return R.UTF8_NOT_ASKED
    auth: str | None = None
    if "AUTH" in params:
        claimed = auth_parameter(params["AUTH"], auth_user, sender_allowed)
        if isinstance(claimed, R.Reply):
            return claimed
        auth = claimed
    ret: str | None = None
    if "RET" in params:
        ret = (params["RET"] or "").upper()
        if ret not in ("FULL", "HDRS"):
            return R.BAD_RET
    envid = params.get("ENVID")
    if "ENVID" in params and (envid is None or not valid_envid(envid)):
        return R.BAD_ENVID
    if (refusal := _unknown(params, MAIL_KEYWORDS)) is not None:
        return refusal
    kept: dict[str, str | None] = {}
    if body is not None:
        kept["BODY"] = body.upper()
    if smtputf8:
        kept["SMTPUTF8"] = None
    if ret is not None:
        kept["RET"] = ret
    if envid is not None:
        kept["ENVID"] = envid
    if auth is not None:
        kept["AUTH"] = auth
    return MailParams(smtputf8=smtputf8, kept=kept)


# -- RCPT -------------------------------------------------------------------------
def rcpt_params(
    params: Params,
    *,
    path_utf8: bool,
    smtputf8: bool,
    recipients: int,
    max_recipients: int,
) -> dict[str, str] | R.Reply:
    """RCPT's parameters: the DSN values to keep (NOTIFY, ORCPT), or the refusal.

    ``path_utf8``: the forward-path has non-ASCII characters; ``smtputf8``:
    MAIL asked for SMTPUTF8; ``recipients``: how many this transaction has
    accepted so far (a repeated address counted once).
    """
    dsn: dict[str, str] = {}
    if "NOTIFY" in params:
        words = [w.strip().upper() for w in (params["NOTIFY"] or "").split(",")]
        if (
            not all(w in _NOTIFY_WORDS for w in words)
            or ("NEVER" in words and len(words) > 1)
            or len(set(words)) != len(words)
        ):
            return R.BAD_NOTIFY
        dsn["NOTIFY"] = ",".join(words)
    if "ORCPT" in params:
        kind, sep, value = (params["ORCPT"] or "").partition(";")
        if not sep or not kind.strip() or not value or not kind.strip().replace("-", "").isalnum() or len(value) > 500:
            return R.BAD_ORCPT
        dsn["ORCPT"] = f"{kind.strip().lower()};{value}"
    if (refusal := _unknown(params, RCPT_KEYWORDS)) is not None:
        return refusal
    if path_utf8 and not smtputf8:
        return R.UTF8_NOT_ASKED
    if recipients >= max_recipients:
        return R.TOO_MANY_RECIPIENTS
    return dsn
