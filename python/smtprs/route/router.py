"""The router: recipient address -> next hop, the one place routing is decided.

Reads the configuration (local domains, users, Maildir template, the relay
section: transport map, relayhost, TLS policy, SMTP port).  Used twice: by the
session at RCPT time (accept, reject, or refuse to relay) and by the scheduler
at delivery time (which agent, which mailbox or next hop), so a configuration
change applies to mail already queued.

A remote recipient's next hop comes from, in order: the transport map (the
domain itself, then ``.parent`` keys for its subdomains), the relayhost, and
DNS (the MX records of the recipient's domain, looked up by the SMTP agent
through route/mx.py).  Whether a client may relay at all is the session's
decision (``relay_allowed``, from smtpd/policy.py), passed in here; the
router only refuses.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from .. import _core
from .. import reply as R
from ..config import Config, parse_nexthop
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

    @property
    def destination(self) -> str:
        return "local"


@dataclass(frozen=True)
class RemoteHop:
    """Deliver over SMTP to another host.

    ``host`` is what the SMTP agent looks up: with ``mx`` true, a domain whose
    MX records (or, without any, its own address: the implicit MX) give the
    hosts; with ``mx`` false, one host (a name looked up as A/AAAA, or an IP
    address).  ``auth`` says the relayhost credentials are to be used.
    """

    domain: str  # the recipient's domain, lower case
    host: str
    port: int
    mx: bool
    tls: str  # "none" | "may" | "verify"
    auth: bool = False

    kind = "smtp"

    @property
    def destination(self) -> str:
        """What groups recipients into one transaction, shares connections and
        counts towards the per-destination concurrency limit."""
        if self.mx:
            return self.host if self.port == 25 else f"{self.host}:{self.port}"
        return f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Unroutable:
    """No way to deliver: the reply says why (permanent)."""

    reply: R.Reply

    kind = "none"

    @property
    def destination(self) -> str:
        return "none"


NextHop = LocalMailbox | RemoteHop | Unroutable


class Router:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._domains = {d.lower() for d in cfg.local.domains}
        self._users = {u.lower() for u in cfg.local.users}
        self._default_domain = cfg.local.domains[0].lower()
        r = cfg.relay
        self._transport = {k.lower().rstrip("."): v for k, v in r.transport.items()}
        self._tls_policy = {k.lower().strip("[]"): v for k, v in r.tls_policy.items()}

    def is_local(self, domain: str) -> bool:
        return domain.lower() in self._domains

    def check_recipient(self, path: _core.Path, *, relay_allowed: bool = False) -> R.Reply | None:
        """At RCPT: None if we take mail for ``path``, else the reply refusing it.

        ``relay_allowed`` is the session's verdict on the client (a trusted
        network; later an authenticated user).  Only the domain decides what
        is remote: source routes are dropped by the parser (RFC 5321 C) and
        ``%`` or ``!`` in a local part of a local domain is refused, so
        neither can turn into a relay.
        """
        hop = self._route(path.local_part, path.domain)
        if isinstance(hop, Unroutable):
            return hop.reply
        if isinstance(hop, RemoteHop) and not relay_allowed:
            return R.RELAY_DENIED
        return None

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
            return self._remote(domain)
        user = local_part.lower()
        if not _SAFE_USER.fullmatch(user) or ".." in user:
            return Unroutable(R.BAD_MAILBOX_NAME)
        if self._users and user not in self._users and user != "postmaster":
            return Unroutable(R.UNKNOWN_USER)
        return LocalMailbox(user, domain.lower(), self.cfg.maildir_path(user, domain.lower()))

    def _remote(self, domain: str) -> RemoteHop | Unroutable:
        r = self.cfg.relay
        d = domain.lower().rstrip(".")
        if d.startswith("["):  # an address literal: that host, no DNS
            literal = d[1:-1]
            if literal.startswith("ipv6:"):
                literal = literal[5:]
            try:
                ip = ipaddress.ip_address(literal)
            except ValueError:
                return Unroutable(R.Reply(550, "5.1.2", "Unsupported address literal"))
            return RemoteHop(d, str(ip), r.smtp_port, False, self._tls_for(d, str(ip)))
        spec = self._transport_for(d)
        if spec is not None:
            host, port, mx = parse_nexthop(spec, f"relay.transport.{d}", r.smtp_port)
            return RemoteHop(d, host, port, mx, self._tls_for(d, host))
        if r.relayhost:
            host, port, mx = parse_nexthop(r.relayhost, "relay.relayhost", r.smtp_port)
            return RemoteHop(d, host, port, mx, self._tls_for(d, host), auth=bool(r.auth_username))
        return RemoteHop(d, d, r.smtp_port, True, self._tls_for(d, d))

    def _transport_for(self, domain: str) -> str | None:
        if domain in self._transport:
            return self._transport[domain]
        parts = domain.split(".")
        for i in range(1, len(parts)):
            key = "." + ".".join(parts[i:])
            if key in self._transport:
                return self._transport[key]
        return None

    def _tls_for(self, domain: str, host: str) -> str:
        return self._tls_policy.get(domain) or self._tls_policy.get(host) or self.cfg.relay.tls
