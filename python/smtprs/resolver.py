"""The DNS resolver settings ``[dns]`` as a dnspython resolver: one place for
the MX lookups (deliver/mx.py, dnspython's async resolver) and the inbound
checks (mailauth/inbound.py, its synchronous one, run in worker threads).

Below every stage, as the configuration is: it imports nothing of smtprs's
but the ``Dns`` table and the log.
"""

from __future__ import annotations

from typing import TypeVar

import dns.resolver

from . import maillog
from .config import Dns

R = TypeVar("R", bound=dns.resolver.BaseResolver)


def configured(cls: type[R], cfg: Dns) -> R:
    """A ``cls`` (dns.resolver.Resolver or dns.asyncresolver.Resolver) with
    ``cfg``'s name servers (else /etc/resolv.conf's, else 127.0.0.1), port
    and time bounds: ``timeout`` bounds one lookup with its retries, each try
    at most 2 s."""
    if cfg.nameservers:
        r = cls(configure=False)
        r.nameservers = list(cfg.nameservers)
    else:
        try:
            r = cls(configure=True)
        except dns.resolver.NoResolverConfiguration:
            # no /etc/resolv.conf: a local resolver is the only sensible guess
            maillog.warning("dns: no name server in /etc/resolv.conf; using 127.0.0.1 (set dns.nameservers)")
            r = cls(configure=False)
            r.nameservers = ["127.0.0.1"]
    r.port = cfg.port
    r.lifetime = cfg.timeout
    r.timeout = min(cfg.timeout, 2.0)  # per try; the lifetime bounds the retries
    return r
