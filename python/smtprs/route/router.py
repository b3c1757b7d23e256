"""The router: recipient address -> next hop, the one place routing is decided.

Reads the configuration (local domains, users, Maildir template).  Used twice:
by the session at RCPT time (accept, reject, or refuse to relay: mail for
another domain is accepted only when the session's policy lets this client
relay) and by the scheduler at delivery time (which agent, which mailbox), so
a configuration change applies to mail already queued.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .. import _core
from .. import reply as R
from ..config import Config
from ..errors import AddressError

# Local parts that may name a mailbox directory: no "/", no leading dot, no
# "%" or "!" (no routing tricks), nothing a shell or a path would read twice.
_SAFE_USER = re.compile(r"[a-z0-9_=+-][a-z0-9._=+-]{0,63}")


@dataclass(frozen=True)
class LocalMailbox:
    """Deliver to a Maildir on this machine."""

    user: str
    domain: str
    maildir: Path

    kind = "local"


@dataclass(frozen=True)
class Remote:
    """Deliver to another host over SMTP (the SMTP agent finds the MX for ``domain``)."""

    domain: str

    kind = "smtp"


@dataclass(frozen=True)
class Unroutable:
    """No way to deliver: the reply says why (permanent)."""

    reply: R.Reply

    kind = "none"


NextHop = LocalMailbox | Remote | Unroutable


class Router:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._domains = {d.lower() for d in cfg.local.domains}
        self._users = {u.lower() for u in cfg.local.users}
        self._default_domain = cfg.local.domains[0].lower()

    def is_local(self, domain: str) -> bool:
        return domain.lower() in self._domains

    def check_recipient(self, path: _core.Path, *, relay_allowed: bool = False) -> R.Reply | None:
        """At RCPT: None if we take mail for ``path``, else the reply refusing it.

        Mail for other domains is taken only when the session's policy allows
        this client to relay (``relay_allowed``); otherwise 554 5.7.1.
        """
        hop = self._route(path.local_part, path.domain)
        if isinstance(hop, Remote) and not relay_allowed:
            return R.RELAY_DENIED
        return hop.reply if isinstance(hop, Unroutable) else None

    def route(self, address: str) -> NextHop:
        """At delivery: the next hop for an address stored in an envelope."""
        if "@" not in address:
            return self._route(address, "")
        try:
            path = _core.parse_mailbox(address, smtputf8=True)
        except AddressError:
            return Unroutable(R.Reply(550, "5.1.3", "Bad recipient address syntax"))
        return self._route(path.local_part, path.domain)

    def _route(self, local_part: str, domain: str) -> NextHop:
        if not domain:
            # RFC 5321 4.1.1.3: <Postmaster> without a domain must be accepted
            if local_part.lower() != "postmaster":
                return Unroutable(R.Reply(553, "5.1.3", "Bad recipient address syntax"))
            domain = self._default_domain
        if not self.is_local(domain):
            return Remote(domain.lower())
        user = local_part.lower()
        if not _SAFE_USER.fullmatch(user) or ".." in user:
            return Unroutable(R.BAD_MAILBOX_NAME)
        if self._users and user not in self._users and user != "postmaster":
            return Unroutable(R.UNKNOWN_USER)
        return LocalMailbox(user, domain.lower(), self.cfg.maildir_path(user, domain.lower()))
