"""The exceptions smtprs raises, in one hierarchy.

The Rust core (``smtprs._core``) imports these classes and raises them, so the
hierarchy and its documentation live here.  Every error that maps to an SMTP
reply carries the reply's ``code`` and ``enhanced`` status as attributes.
"""

from __future__ import annotations


class SmtprsError(Exception):
    """Base class of every smtprs exception."""


class ParseError(SmtprsError, ValueError):
    """Input that does not follow the protocol grammar.

    ``code`` and ``enhanced`` are the SMTP reply a server should give for it.
    """

    def __init__(self, message: str, code: int = 501, enhanced: str = "5.5.4") -> None:
        super().__init__(message)
        self.code = code
        self.enhanced = enhanced


class AddressError(ParseError):
    """A path or mailbox that does not follow RFC 5321 4.1.2."""

    def __init__(self, message: str, code: int = 553, enhanced: str = "5.1.3") -> None:
        super().__init__(message, code, enhanced)


class ConfigError(SmtprsError):
    """A configuration that cannot be used; the message names the key at fault."""


class SpoolError(SmtprsError):
    """The spool could not store or read a message.

    ``storage_full`` is true when the cause is a full disk or quota (ENOSPC,
    EDQUOT): the session answers 452 4.3.1 then, 451 4.3.0 otherwise.
    """

    def __init__(self, message: str, *, storage_full: bool = False) -> None:
        super().__init__(message)
        self.storage_full = storage_full


class ListenError(SmtprsError):
    """A listening socket could not be opened (address in use, permission)."""
