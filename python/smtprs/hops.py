"""Next hops: where the router says one recipient goes, and what every delivery
agent is given.

Shared by the stages (route/ makes them, queue/ groups recipients by their
``destination``, deliver/ acts on them), so they live outside all of them.
Frozen values: a router is rebuilt on reload, never changed, so a hop can be
cached and compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import reply as R


@dataclass(frozen=True)
class LocalMailbox:
    """Deliver to a Maildir on this machine.

    ``mode`` is that of the directories smtprs creates (files: without the
    execute bits); ``owner`` the (uid, gid) they are given, None for ours."""

    user: str
    domain: str
    maildir: Path
    mode: int = 0o700
    owner: tuple[int, int] | None = None

    kind = "maildir"

    @property
    def destination(self) -> str:
        return "local"


@dataclass(frozen=True)
class MboxMailbox:
    """Append to a user's mbox file on this machine."""

    user: str
    domain: str
    path: Path
    mode: int = 0o700  # of a directory smtprs creates; the file: without execute bits
    owner: tuple[int, int] | None = None

    kind = "mbox"

    @property
    def destination(self) -> str:
        return "local"


@dataclass(frozen=True)
class LmtpMailbox:
    """Hand the mail to an LMTP server for the mailbox ``rcpt``."""

    user: str
    domain: str
    rcpt: str  # the address given to the LMTP server: user@domain (sub-address tag removed), or as given (an lmtp transport)
    server: str  # local.lmtp or an lmtp transport: host:port or unix:/path

    kind = "lmtp"

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
class Discard:
    """Accepted and thrown away (the ``discard`` transport); ``reason`` is for the log."""

    reason: str = ""

    kind = "discard"

    @property
    def destination(self) -> str:
        return "discard"


@dataclass(frozen=True)
class Unroutable:
    """No way to deliver: the reply says why (5xx: the recipient fails; 4xx, from an
    ``error:4.x.x`` transport: it is deferred and tried again)."""

    reply: R.Reply

    kind = "none"

    @property
    def destination(self) -> str:
        return "none"


NextHop = LocalMailbox | MboxMailbox | LmtpMailbox | RemoteHop | Discard | Unroutable
Mailbox = LocalMailbox | MboxMailbox | LmtpMailbox
