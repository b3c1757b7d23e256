"""smtprs: a mail transfer agent with a Rust SMTP core and a Trio server.

The public API is small and curated here; everything else is internal.
"""

from __future__ import annotations

from ._core import (
    Path,
    ReplyParser,
    ServerConnection,
    dot_stuff,
    dot_unstuff,
    format_reply,
    parse_mailbox,
    parse_path,
)
from .config import Config, load as load_config
from .errors import AddressError, ConfigError, ParseError, SmtprsError, SpoolError
from .reply import Reply

__version__ = "0.1.0"

__all__ = [
    "AddressError",
    "Config",
    "ConfigError",
    "ParseError",
    "Path",
    "Reply",
    "ReplyParser",
    "ServerConnection",
    "SmtprsError",
    "SpoolError",
    "__version__",
    "dot_stuff",
    "dot_unstuff",
    "format_reply",
    "load_config",
    "parse_mailbox",
    "parse_path",
]
