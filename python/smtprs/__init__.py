"""smtprs: a mail transfer agent with a Rust SMTP core and a Trio server.

The public API is small and curated here; everything else is internal:

- run the server inside a Trio program: ``serve(config, hooks)`` with a
  ``Hooks`` subclass whose async methods (on_connect, on_helo, on_auth,
  on_mail, on_rcpt, on_message, on_data, on_disconnect, on_delivered,
  on_bounced, on_deferred) accept or answer a ``Reply`` (``PERMIT``/``Permit``
  from on_rcpt accepts a recipient the server's checks refused; the
  ``Message`` given to on_message changes the mail before the 250); ``smtprs serve``
  loads them from the configuration (``hooks = "package.module:factory"``);
- test against a real server from synchronous code: ``smtprs.testing``
  (``Controller``, and the ``smtprs_server`` pytest fixture; imported on its own);
- send a message with our own SMTP client: ``await send(sender, rcpts, message)``
  (MX routing, or a given ``host``);
- the Rust parsers: ``parse_path``, ``parse_mailbox``, ``dot_stuff``,
  ``dot_unstuff``, ``format_reply``, ``ReplyParser``, ``ServerConnection``;
- the configuration: ``load_config(path, overrides=...)``.
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
from .api import RunningServer, SendResult, send, serve
from .config import Config
from .config import load as load_config
from .content import Content
from .envelope import Envelope, Recipient
from .errors import AddressError, ConfigError, ListenError, ParseError, SmtprsError, SpoolError
from .hooks import PERMIT, Hooks, Message, Permit, SessionInfo
from .reply import Reply

__version__ = "0.1.0"

__all__ = [
    "AddressError",
    "Config",
    "ConfigError",
    "Content",
    "Envelope",
    "Hooks",
    "ListenError",
    "Message",
    "PERMIT",
    "ParseError",
    "Path",
    "Permit",
    "Recipient",
    "Reply",
    "ReplyParser",
    "RunningServer",
    "SendResult",
    "ServerConnection",
    "SessionInfo",
    "SmtprsError",
    "SpoolError",
    "__version__",
    "dot_stuff",
    "dot_unstuff",
    "format_reply",
    "load_config",
    "parse_mailbox",
    "parse_path",
    "send",
    "serve",
]
