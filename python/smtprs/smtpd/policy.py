"""Relay and sender policy: who may send mail to other domains, and as whom.

Reads ``smtpd.auth`` (the senders each user may use) and ``local.domains``.
The session asks three questions and acts on the answers:

- ``relay_allowed(client_ip, auth_user)``: may this client have mail for
  non-local domains accepted?  An authenticated user may, and so may a client
  in ``relay.trusted_networks`` (empty by default: nobody else).
- ``limit_exempt(client_ip)``: is the client exempt from the per-client
  connection limits (``smtpd.limit_exempt_networks``: by default
  relay.trusted_networks and loopback)?
- ``sender_allowed(auth_user, sender)``: may this authenticated user use this
  envelope sender?  Their login if it is an address (else login@ each local
  domain), plus the patterns ``smtpd.auth.senders`` lists for them; the null
  sender is always allowed.

It holds no state beyond the compiled configuration and writes nothing.
"""

from __future__ import annotations

import fnmatch

from ..config import Config
from ..config.values import address_in, networks
from .auth import normalize_username


class Policy:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        auth = cfg.smtpd.auth
        self.restrict_senders = auth.restrict_senders
        self._senders = {normalize_username(u): [p.lower() for p in pats] for u, pats in auth.senders.items()}
        self._domains = [d.lower() for d in cfg.local.domains]
        self._trusted = networks(cfg.relay.trusted_networks, [])
        self._limit_exempt = networks(cfg.smtpd.limit_exempt_networks, cfg.relay.trusted_networks)

    def relay_allowed(self, client_ip: str, auth_user: str | None) -> bool:
        """Whether mail for non-local domains is accepted from this client."""
        return auth_user is not None or self.trusted(client_ip)

    def trusted(self, client_ip: str) -> bool:
        """Is the client in relay.trusted_networks (may it relay without AUTH)?"""
        return address_in(client_ip, self._trusted)

    def limit_exempt(self, client_ip: str) -> bool:
        """Is the client in smtpd.limit_exempt_networks (not counted by the per-client limits)?"""
        return address_in(client_ip, self._limit_exempt)

    def sender_patterns(self, auth_user: str) -> list[str]:
        user = normalize_username(auth_user)
        own = [user] if "@" in user else [f"{user}@{d}" for d in self._domains]
        return own + self._senders.get(user, [])

    def sender_allowed(self, auth_user: str, sender: str) -> bool:
        """Whether ``auth_user`` may use the envelope sender ``sender`` ("" is <>)."""
        if not self.restrict_senders or sender == "":
            return True
        address = sender.lower()
        return any(fnmatch.fnmatchcase(address, p) for p in self.sender_patterns(auth_user))
