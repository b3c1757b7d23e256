"""The configuration: one typed, frozen tree loaded from TOML.

Reads a TOML file (or nothing: every key has a default, so the embedded
configuration runs as is) and returns a ``Config``.  Each field carries its
documentation in ``metadata["doc"]``; ``reference_markdown()`` renders the
configuration reference from it, so the documentation cannot drift from the
code.  Errors are ``ConfigError`` naming the key at fault, e.g.
``smtpd.max_recipients: expected an integer >= 1, got "ten"``.

Relative paths are resolved against ``data_dir``; a relative ``data_dir`` is
resolved against the directory of the configuration file (or the current
directory for the embedded default).

The package: ``schema`` (the tree and each key's documentation), ``values``
(the value syntaxes: host:port, next hops, transports, owner and mode),
``load`` (TOML to a checked ``Config``), ``reference`` (the generated
reference).  Everything public is importable from ``smtprs.config``.
"""

from .load import RENAMED, load, locate
from .reference import reference_markdown
from .schema import (
    DKIM_NEVER_SIGN,
    POP3_MODES,
    SUBMISSION_MODES,
    Auth,
    Config,
    Dane,
    Dkim,
    DkimKey,
    Dns,
    Listener,
    Local,
    Log,
    MailboxEntry,
    Metrics,
    Mode,
    MtaSts,
    Pop3,
    Queue,
    Relay,
    Smtpd,
    Tls,
    TlsLevel,
)
from .values import (
    LMTP_PORT,
    TRANSPORTS,
    Transport,
    dir_mode,
    mailbox_ids,
    parse_host_port,
    parse_nexthop,
    parse_socket_address,
    parse_transport,
)

__all__ = [
    "locate",
    "LMTP_PORT",
    "POP3_MODES",
    "RENAMED",
    "SUBMISSION_MODES",
    "TRANSPORTS",
    "Auth",
    "DKIM_NEVER_SIGN",
    "Config",
    "Dane",
    "Dkim",
    "DkimKey",
    "Dns",
    "Listener",
    "Local",
    "Log",
    "MailboxEntry",
    "Metrics",
    "Mode",
    "MtaSts",
    "Pop3",
    "Queue",
    "Relay",
    "Smtpd",
    "Tls",
    "TlsLevel",
    "Transport",
    "dir_mode",
    "load",
    "mailbox_ids",
    "parse_host_port",
    "parse_nexthop",
    "parse_socket_address",
    "parse_transport",
    "reference_markdown",
]
