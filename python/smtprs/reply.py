"""SMTP replies as values: a basic code, an enhanced code (RFC 3463) and text.

Every reply the server sends is defined here once, so the codes are in one
place and the session never builds reply strings by hand.  ``Reply.encode()``
formats through the Rust core (multi-line, enhanced code on every line).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import _core


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    enhanced: str | None
    text: str | tuple[str, ...]

    def encode(self) -> bytes:
        text = list(self.text) if isinstance(self.text, tuple) else self.text
        return _core.format_reply(self.code, self.enhanced, text)

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    @property
    def first_line(self) -> str:
        return self.text[0] if isinstance(self.text, tuple) else self.text

    def __str__(self) -> str:
        lines = self.text if isinstance(self.text, tuple) else (self.text,)
        return f"{self.code} {self.enhanced + ' ' if self.enhanced else ''}{' / '.join(lines)}"


# 2xx
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
VRFY_CANNOT = Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT (see RFC 5321)")
BYE = Reply(221, "2.0.0", "Bye")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")

# 4xx
TIMEOUT = Reply(421, "4.4.2", "Error: timeout exceeded")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors")
TOO_MANY_CONNECTIONS = Reply(421, "4.3.2", "Error: too many connections, try again later")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing transmission channel")
TOO_MANY_FROM_CLIENT = Reply(421, "4.7.0", "Error: too many connections from your address, try again later")
CONNECTION_RATE_EXCEEDED = Reply(
    421, "4.7.0", "Error: too many connections from your address in a short time, try again later"
)
TOO_SLOW = Reply(421, "4.4.2", "Error: timeout exceeded (data arriving too slowly)")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
SPOOL_FAILED = Reply(451, "4.3.0", "Error: queue file write error")
SPOOL_FULL = Reply(452, "4.3.1", "Error: insufficient system storage")

# 5xx
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
LMTP_USE_LHLO = Reply(500, "5.5.1", "Error: this is an LMTP server (RFC 2033): use LHLO")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
TXN_IN_PROGRESS = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NO_VALID_RCPT = Reply(554, "5.5.1", "Error: no valid recipients")
BDAT_AFTER_DATA = Reply(503, "5.5.1", "Error: DATA and BDAT cannot be mixed")
SIZE_EXCEEDED = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many hops (mail loop?)")
UNSUPPORTED_PARAM = Reply(555, "5.5.4", "Unsupported option")
BAD_BODY = Reply(501, "5.5.4", "Bad BODY value (7BIT or 8BITMIME)")
BAD_SIZE = Reply(501, "5.5.4", "Bad SIZE value")
BAD_RET = Reply(501, "5.5.4", "Bad RET value (FULL or HDRS)")
BAD_ENVID = Reply(501, "5.5.4", "Bad ENVID value")
BAD_NOTIFY = Reply(501, "5.5.4", "Bad NOTIFY value (NEVER, or SUCCESS, FAILURE, DELAY)")
BAD_ORCPT = Reply(501, "5.5.4", "Bad ORCPT value (addr-type;address)")
RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
UNKNOWN_USER = Reply(550, "5.1.1", "User unknown in local recipient table")
BAD_MAILBOX_NAME = Reply(550, "5.1.1", "Mailbox name not allowed here")
UTF8_NOT_ASKED = Reply(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter")

# TLS (RFC 3207)
TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
TLS_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")

# AUTH (RFC 4954) and submission (RFC 6409)
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication credentials invalid")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_ALREADY = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Error: authentication not enabled")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode the response (base64)")
AUTH_BAD_PLAIN = Reply(501, "5.5.2", "Malformed PLAIN response")
AUTH_UNAVAILABLE = Reply(454, "4.7.0", "Temporary authentication failure")
BAD_AUTH_PARAM = Reply(501, "5.5.4", "Bad AUTH parameter (a mailbox or <>)")
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address rejected: not owned by the authenticated user")
