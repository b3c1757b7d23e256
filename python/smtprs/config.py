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
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import ssl
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

from .errors import ConfigError


def _f(default: Any, doc: str, **checks: Any) -> Any:
    """A config field: its default, its documentation and simple value checks."""
    meta = {"doc": doc, **checks}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        value = default
        return field(default_factory=lambda: _copy(value), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


Mode = Literal["mx", "submission", "submissions", "lmtp", "pop3", "pop3s"]
SUBMISSION_MODES = ("submission", "submissions")
POP3_MODES = ("pop3", "pop3s")


@dataclass(frozen=True)
class Listener:
    """One listening socket."""

    address: str = _f("127.0.0.1:2525", "Address and port to listen on: `host:port`, `[ipv6]:port`.")
    mode: Mode = _f(
        "mx",
        "What the listener serves: `mx` (mail from other servers, port 25 behaviour; STARTTLS offered when a certificate is configured), "
        "`submission` (mail from users, port 587: STARTTLS, AUTH required before MAIL, RFC 6409), "
        "`submissions` (the same over implicit TLS, port 465, RFC 8314), "
        "`lmtp` (RFC 2033 for another MTA handing mail over for final delivery: LHLO, one reply per recipient after the data, each given only once the mail is in the mailbox; nothing is queued), "
        "`pop3` (users fetch their Maildir, port 110: STLS, then USER/PASS or AUTH PLAIN against the users file, RFC 1939/2449/2595), "
        "`pop3s` (the same over implicit TLS, port 995, RFC 8314).",
    )


@dataclass(frozen=True)
class Tls:
    """TLS for STARTTLS and implicit-TLS listeners."""

    cert_file: str = _f("", "PEM certificate chain (server certificate first); relative to data_dir. Empty: no TLS (STARTTLS not offered; submission listeners then refuse to start).")
    key_file: str = _f("", "PEM private key of the certificate; relative to data_dir.")
    min_version: Literal["TLSv1.2", "TLSv1.3"] = _f("TLSv1.2", "Oldest TLS version accepted.")
    ciphers: str = _f("", "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's); empty keeps Python's secure default.")
    handshake_timeout: float = _f(30.0, "Seconds a TLS handshake may take.", min=0.001)


@dataclass(frozen=True)
class Auth:
    """SMTP AUTH (RFC 4954) on submission listeners, and what authenticated users may do."""

    users_file: str = _f("users", "Users and their password hashes (scrypt), managed with `smtprs passwd`; relative to data_dir. Re-read when it changes.")
    allow_plaintext: bool = _f(False, "Offer AUTH on connections without TLS. Off: AUTH is offered only after STARTTLS (or on implicit TLS) and answered 538 5.7.11 before.")
    failure_delay: float = _f(1.0, "Seconds before the 535 reply to the first failed AUTH from a client address (an IPv6 /64); it doubles with each further failure.", min=0.0)
    max_failure_delay: float = _f(30.0, "Longest delay before a 535 reply, in seconds.", min=0.0)
    failure_window: float = _f(900.0, "Seconds after which a client address's failed AUTH attempts are forgotten.", min=0.001)
    restrict_senders: bool = _f(True, "An authenticated user may use only the envelope senders `senders` allows (553 5.7.1 otherwise).")
    senders: dict[str, list[str]] = _f(
        {},
        "Envelope senders each user may use, besides the default (the login itself if it is an address, else login@ each local domain): "
        'a table `user = ["addr@example.org", "*@dept.example.org"]` of shell-style patterns, compared case-insensitively. The null sender `<>` is always allowed.',
    )
    received_user: bool = _f(False, "Name the authenticated user in the Received header field (`(Authenticated sender: NAME)`).")


@dataclass(frozen=True)
class Smtpd:
    """The inbound SMTP server (sessions, limits, timeouts)."""

    listeners: list[Listener] = _f([Listener()], "The listening sockets (`[[smtpd.listeners]]` tables).")
    banner: str = _f("ESMTP smtprs", "Text after the host name in the 220 greeting.")
    max_message_size: int = _f(10 * 1024 * 1024, "Largest message accepted, in octets (advertised with SIZE; counted while streaming).", min=1)
    max_recipients: int = _f(100, "Most recipients in one transaction; more get 452 4.5.3.", min=1)
    max_errors: int = _f(10, "Error replies in one session before it is closed with 421 4.7.0.", min=1)
    max_connections: int = _f(1000, "Concurrent sessions; more get 421 4.3.2 and are closed.", min=1)
    max_connections_per_client: int = _f(
        50, "Concurrent sessions from one client address (an IPv6 /64 counts as one address); more get 421 4.7.0 and are closed.", min=1
    )
    max_connection_rate: int = _f(
        0,
        "Connections one client address (an IPv6 /64) may open within `connection_rate_window` seconds; more get 421 4.7.0 and are closed "
        "(every attempt counts, refused ones too). 0: no limit.",
        min=0,
    )
    connection_rate_window: float = _f(60.0, "The time window of `max_connection_rate`, in seconds.", min=0.001)
    max_junk_commands: int = _f(
        100, "NOOP, RSET, VRFY and HELP commands a session may send between two accepted messages before each further one counts as an error.", min=1
    )
    max_received_headers: int = _f(50, "A message with more Received headers than this is refused with 554 5.4.6 (mail loop).", min=1)
    max_header_size: int = _f(1024 * 1024, "Largest header block accepted, in octets (552 5.3.4 beyond).", min=1)
    max_command_line: int = _f(512, "Longest command line in octets including CRLF (RFC 5321 4.5.3.1.4).", min=512)
    max_text_line: int = _f(1000, "Longest message text line in octets including CRLF (RFC 5321 4.5.3.1.6).", min=1000)
    command_timeout: float = _f(
        300.0,
        "Seconds a client has to send its next whole command line, counted from the previous reply: a deadline, not a time per read, "
        "so a client trickling bytes is dropped too (RFC 5321 4.5.3.2.7: at least 5 minutes).",
        min=0.001,
    )
    data_timeout: float = _f(180.0, "Seconds to wait for each block of message data (RFC 5321 4.5.3.2.5).", min=0.001)
    min_data_rate: int = _f(
        500,
        "Slowest average rate, in octets per second, at which message content (DATA or BDAT) may arrive: the content must be complete "
        "within data_timeout plus its size divided by this rate, else 421 4.4.2. 0: only data_timeout per read.",
        min=0,
    )
    shutdown_timeout: float = _f(
        30.0,
        "On SIGTERM: seconds sessions in the middle of a transaction get to finish it (idle sessions get 421 4.3.2 at once; "
        "what is unfinished then gets 421 4.3.2 and is not kept).",
        min=0.0,
    )
    send_timeout: float = _f(300.0, "Seconds a reply may take to be sent before the session is dropped.", min=0.001)
    tls: Tls = _f(Tls(), "TLS.")
    auth: Auth = _f(Auth(), "SMTP AUTH and the senders authenticated users may use.")


@dataclass(frozen=True)
class MailboxEntry:
    """One address's own mailbox in `[local.mailboxes]`: a Maildir or an mbox file."""

    maildir: str = _f("", "Path of the Maildir (tmp/ new/ cur/ inside), relative to data_dir.")
    mbox: str = _f("", "Path of the mbox file, relative to data_dir.")


@dataclass(frozen=True)
class Local:
    """Local delivery: which domains are ours and where their mailboxes are."""

    domains: list[str] = _f(["localhost"], "Domains whose mail is delivered here (compared case-insensitively).")
    users: list[str] = _f([], "Known local users. Empty: every local part of a local domain that can name a mailbox (letters, digits and `._=+-`, not starting with a dot, no `..`; UTF-8 local parts only through local.mailboxes or an address key of relay.transport) is deliverable and its mailbox is made on first delivery; otherwise unknown users get 550 5.1.1 at RCPT.")
    maildir: str = _f("mail/{user}", "Path of a user's Maildir (the directory holding tmp/ new/ cur/); `{user}` and `{domain}` are replaced; relative to data_dir.")
    delivery: Literal["maildir", "mbox", "lmtp"] = _f("maildir", "How local mailboxes are delivered: `maildir` (local.maildir), `mbox` (local.mbox, one file per user) or `lmtp` (handed to the LMTP server at local.lmtp).")
    mbox: str = _f("mbox/{user}", "Path of a user's mbox file when local.delivery is `mbox`; `{user}` and `{domain}` are replaced; relative to data_dir.")
    lock_timeout: float = _f(30.0, "Seconds an mbox delivery waits for the mailbox lock (fcntl and dotlock) before it is deferred.", min=0.001)
    lmtp: str = _f("127.0.0.1:24", "The LMTP server that gets local mail when local.delivery is `lmtp`: `host:port`, `[ipv6]:port` or `unix:/path/to/socket`.")
    lmtp_timeout: float = _f(300.0, "Seconds to wait for the LMTP server: for the connection and for each reply.", min=0.001)
    aliases: str = _f("", "Aliases file in the /etc/aliases format (`name: address, address`); empty for none. Names apply to every local domain; read at start-up.")
    virtual_domains: list[str] = _f([], "Virtual domains: domains we take mail for whose addresses exist only in local.virtual_map (no mailbox of their own).")
    virtual_map: str = _f("", "Virtual map file: lines `address target, target` (Postfix virtual(5) style) mapping addresses of virtual or local domains to local mailbox names or other addresses; `@domain target` is the domain's catch-all. Empty for none.")
    recipient_delimiter: str = _f("+", "Sub-addressing: `user+tag@domain` is delivered to `user` (each character here is a delimiter; empty turns it off).")
    case_sensitive: bool = _f(False, "Match local parts case-sensitively (by default `Alice` and `alice` are the same mailbox).")
    mailboxes: dict[str, MailboxEntry] = _f(
        {},
        'Per-address mailboxes, before the templates: `"alice@example.org" = { maildir = "/srv/mail/alice" }`, '
        '`"carol@example.org" = { mbox = "/var/mail/carol" }` (relative to data_dir). An address listed here exists even when local.users '
        "does not name it, and may have a UTF-8 local part (mail to it needs SMTPUTF8). `user+tag@domain` finds `user@domain`. "
        "The domain must be a local domain or one routed `local` by relay.transport.",
    )
    mailbox_owner: str = _f(
        "",
        "Owner of the mailboxes smtprs creates (Maildir directories and files, mbox files): `user:group` or `user` (its primary group), names or numbers, "
        'so that a reader running as another user (Dovecot as `vmail`, say) can use them: `"vmail:vmail"`. Empty: the user smtprs runs as. '
        "Changing owners needs root; a delivery that cannot is deferred (4.3.0).",
    )
    mailbox_mode: str = _f(
        "0700",
        "Permission bits of the mailbox directories smtprs creates, in octal; files get the same bits without execute (`0700` -> `0600`, "
        "`0750` -> `0640`, `0755` -> `0644` for readers in the group or anyone). The owner keeps rwx. Applied exactly, whatever the umask.",
    )


@dataclass(frozen=True)
class Queue:
    """The spool and the delivery scheduler."""

    directory: str = _f("spool", "Spool directory (relative to data_dir).")
    retry_min: float = _f(300.0, "Delay before the first retry of a deferred recipient, in seconds; it doubles after each attempt.", min=0.001)
    retry_max: float = _f(14400.0, "Longest delay between two retries, in seconds.", min=0.001)
    max_lifetime: float = _f(5 * 86400.0, "Seconds a message may stay in the queue before its undelivered recipients fail.", min=0.001)
    delivery_concurrency: int = _f(20, "Deliveries running at once.", min=1)
    min_free_space: int = _f(
        0,
        "MAIL is answered 452 4.3.1 when the spool's file system has less free space than this many octets plus 1.5 times the SIZE the client "
        "declared (as Postfix's queue_minfree). A full disk is answered 452 4.3.1 at the end of the data in any case.",
        min=0,
    )
    delay_warning: float = _f(0.0, "Seconds after arrival when a sender whose mail is still deferred gets a \"delayed\" notice (RFC 3464 Action: delayed), once; 0 turns it off.", min=0)
    bounce_size_limit: int = _f(1024 * 1024, "Largest original message returned whole in a bounce when the sender asked for it (MAIL ... RET=FULL); larger ones are returned as headers only.", min=0)
    control_socket: str = _f("control.sock", "Unix socket (relative to data_dir) on which the running server takes queue commands (`smtprs queue flush`); mode 0600.")
    backend: Literal["segments", "null"] = _f(
        "segments",
        "Where accepted mail is kept: `segments` (the spool directory: append-only, fsync'd segment files). "
        "`null` keeps nothing: every message is answered 250 and thrown away, as Postfix's `smtp-sink` does (OpenSMTPD's queue_null); "
        "it is for measuring the SMTP engine alone, breaks the handoff promise, and logs a warning while it is on.",
    )


TlsLevel = Literal["none", "may", "verify"]


@dataclass(frozen=True)
class Relay:
    """Mail for other domains: who may relay, how the next hop is found, the SMTP client."""

    trusted_networks: list[str] = _f([], "Client networks (CIDR) that may relay without authentication. Empty: nobody; `[\"127.0.0.0/8\", \"::1/128\"]` lets local programs relay (beware of local proxies).")
    relayhost: str = _f("", "Smart host for all non-local mail: `host` or `host:port` (MX lookup on host), `[host]` or `[host]:port` (no MX lookup). Empty: deliver by DNS (MX records).")
    transport: dict[str, str] = _f(
        {},
        "The transport map, consulted first (before local delivery, relayhost and DNS): keys are a full address (`\"bob@example.org\"`), "
        "a domain, or `.example.org` for its subdomains, looked up in that order. Values name a transport and its next hop, as Postfix's transport(5): "
        "`smtp:[10.0.0.5]:2525` (`[host]` no MX lookup, `host` MX lookup; `smtp:` alone: the recipient domain's MX; a value without a prefix means smtp, "
        "as relayhost), `lmtp:[host]:port` / `lmtp:host:port` / `lmtp:unix:/path` (an LMTP server such as Dovecot; port 24 by default), "
        "`local` (this machine's mailboxes: local.mailboxes, then the templates by local.delivery), `error:5.1.1 text` (refused at RCPT with "
        "550 5.1.1 text; a 4.x.x code gives 450), `discard` (accepted and thrown away, logged as sent). Addresses and domains routed to lmtp, local, "
        "error or discard are final destinations: taken without relay permission; smtp ones still need it.",
    )
    smtp_port: int = _f(25, "Port used to reach MX and A hosts (and next hops given without a port).", min=1)
    tls: TlsLevel = _f("may", "TLS to the next hop: `may` (STARTTLS whenever offered, certificate not checked), `verify` (STARTTLS required and the certificate verified for the host name, else deferred), `none`.")
    tls_policy: dict[str, TlsLevel] = _f({}, "TLS level per recipient domain or next-hop host, overriding `relay.tls`: `\"bank.example\" = \"verify\"`.")
    tls_ca_file: str = _f("", "CA certificates (PEM) for `verify`; empty for the system's trust store.")
    auth_username: str = _f("", "User name for AUTH (PLAIN or LOGIN) to the relayhost; empty: no AUTH.")
    auth_password: str = _f("", "Password for AUTH to the relayhost. It is never logged; keep the configuration file readable by smtprs only (mode 0600): the server warns otherwise.")
    auth_require_tls: bool = _f(True, "Send the relayhost credentials only over a TLS-protected connection (otherwise the attempt is deferred).")
    address_preference: Literal["ipv4", "ipv6"] = _f("ipv4", "Which addresses of a host are tried first.")
    destination_concurrency: int = _f(10, "Connections at once to one destination (a domain, or a relayhost/transport next hop).", min=1)
    transaction_recipient_limit: int = _f(100, "Most recipients in one SMTP transaction; more go in further transactions on the same connection.", min=1)
    idle_timeout: float = _f(2.0, "Seconds an idle connection is kept for reuse by further messages to the same destination; 0 closes it after each delivery.", min=0)
    connect_timeout: float = _f(30.0, "Seconds to establish a TCP connection to a next hop.", min=0.001)
    greeting_timeout: float = _f(300.0, "Seconds to wait for the 220 greeting (RFC 5321 4.5.3.2.1: 5 minutes).", min=0.001)
    command_timeout: float = _f(300.0, "Seconds to wait for the reply to EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, QUIT (RFC 5321 4.5.3.2.2-3: 5 minutes).", min=0.001)
    data_init_timeout: float = _f(120.0, "Seconds to wait for the 354 reply to DATA (RFC 5321 4.5.3.2.4: 2 minutes).", min=0.001)
    data_block_timeout: float = _f(180.0, "Seconds each block of message data may take to send (RFC 5321 4.5.3.2.5: 3 minutes).", min=0.001)
    data_end_timeout: float = _f(600.0, "Seconds to wait for the reply to the final dot (RFC 5321 4.5.3.2.6: 10 minutes).", min=0.001)


@dataclass(frozen=True)
class Dns:
    """The DNS resolver used for MX, A and AAAA lookups."""

    nameservers: list[str] = _f([], "Name server IP addresses; empty for those of /etc/resolv.conf.")
    port: int = _f(53, "Port of the name servers.", min=1)
    timeout: float = _f(10.0, "Seconds one lookup may take, retries included; a timeout defers the mail (4.4.3).", min=0.001)


@dataclass(frozen=True)
class Pop3:
    """The POP3 server (listener modes `pop3` and `pop3s`); logins are checked against smtpd.auth.users_file."""

    timeout: float = _f(600.0, "Seconds a POP3 session may be idle before it is closed (RFC 1939's autologout timer: at least 10 minutes advised); nothing is deleted then.", min=0.001)


@dataclass(frozen=True)
class Log:
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = _f("info", "Lowest level logged.")
    file: str = _f("", "Log file; empty for standard error.")
    format: Literal["plain", "json"] = _f(
        "plain",
        "`plain`: one line per event, as Postfix's maillog; `json`: one JSON object per line "
        '(`{"time", "level", "pid", "event", "message"}`; `event` names the kind of line: `queued`, `delivered`, `reject`, ...).',
    )


@dataclass(frozen=True)
class Metrics:
    """The Prometheus metrics endpoint (`GET /metrics`); `smtprs status` works without it."""

    enabled: bool = _f(False, "Serve metrics over HTTP at metrics.address (worker 0 serves the figures of every worker).")
    address: str = _f("127.0.0.1:9425", "Address and port of the metrics endpoint: loopback by default; it has no authentication, so expose it with care.")


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    hostname: str = _f("", "Our host name in the greeting, EHLO reply and Received headers; empty for the machine's FQDN.")
    data_dir: str = _f("smtprs-data", "Directory for the spool and mailboxes; relative paths in the config are relative to it.")
    workers: int = _f(0, "Worker processes sharing the listening sockets (SO_REUSEPORT), each with its own spool shard; 0 means one per CPU. `smtprs serve --workers N` overrides it.", min=0)
    smtpd: Smtpd = _f(Smtpd(), "Inbound SMTP.")
    local: Local = _f(Local(), "Local domains and mailboxes.")
    queue: Queue = _f(Queue(), "Spool and scheduler.")
    relay: Relay = _f(Relay(), "Relaying to other hosts.")
    dns: Dns = _f(Dns(), "DNS resolver.")
    pop3: Pop3 = _f(Pop3(), "POP3 retrieval.")
    log: Log = _f(Log(), "Logging.")
    metrics: Metrics = _f(Metrics(), "Metrics endpoint.")
    unsafe_no_fsync: bool = _f(
        False,
        "Skip every fsync: the spool's, and the Maildir and mbox deliveries'. A crash or power loss then loses mail that was answered 250; "
        "for benchmarks and throw-away test machines only.",
    )

    # -- derived values -------------------------------------------------
    @property
    def host_name(self) -> str:
        return self.hostname or socket.getfqdn() or "localhost"

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def spool_path(self) -> Path:
        """The spool root; each worker's shard is ``shard-N`` inside it."""
        return self.data_path / self.queue.directory

    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def maildir_path(self, user: str, domain: str) -> Path:
        return self.data_path / self.local.maildir.format(user=user, domain=domain)

    @property
    def control_socket_path(self) -> Path:
        return self.data_path / self.queue.control_socket

    def control_socket_for(self, worker: int) -> Path:
        """Worker 0 uses queue.control_socket; worker K > 0 adds ``.K`` to it."""
        base = self.control_socket_path
        return base if worker == 0 else base.with_name(f"{base.name}.{worker}")

    def control_sockets(self) -> list[Path]:
        """Every worker's control socket that exists now (worker 0's always listed)."""
        base = self.control_socket_path
        more = [p for p in base.parent.glob(base.name + ".*") if p.suffix[1:].isdigit()] if base.parent.is_dir() else []
        return [base] + sorted(more, key=lambda p: int(p.suffix[1:]))

    @property
    def tls_ca_path(self) -> Path | None:
        return self.data_path / self.relay.tls_ca_file if self.relay.tls_ca_file else None
    def mbox_path(self, user: str, domain: str) -> Path:
        return self.data_path / self.local.mbox.format(user=user, domain=domain)

    def path(self, value: str) -> Path:
        """A path from the configuration: relative ones are relative to data_dir."""
        return self.data_path / value

    def file_path(self, name: str) -> Path | None:
        """A file named in the config (aliases, virtual map): None when empty, else ``path(name)``."""
        return self.path(name) if name else None

    @property
    def users_path(self) -> Path:
        return self.path(self.smtpd.auth.users_file)


# --------------------------------------------------------------------------
# Loading and validation


def load(path: str | os.PathLike[str] | None = None, *, overrides: dict[str, Any] | None = None) -> Config:
    """Load the configuration from ``path`` (None: the embedded default)."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        try:
            with p.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{p}: no such file") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
        base = p.resolve().parent
    if overrides:
        raw = _merge(raw, overrides)
    cfg: Config = _build(Config, raw, "")
    data_dir = Path(cfg.data_dir)
    if not data_dir.is_absolute():
        data_dir = base / data_dir
    cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
    _check(cfg)
    return cfg


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


# keys that were renamed: the error says what to write instead
RENAMED = {
    "queue.fsync": "unsafe_no_fsync = true (top level) replaces queue.fsync = false",
    "queue.discard": 'queue.backend = "null" replaces queue.discard = true',
}


def _build(cls: type[Any], raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            if f"{prefix}{key}" in RENAMED:
                raise ConfigError(f"{prefix}{key}: renamed: {RENAMED[prefix + key]}")
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{prefix}{key}: unknown key (known here: {known})")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _convert(hints[name], raw[name], prefix + name, f.metadata)
    return cls(**values)


def _convert(tp: Any, value: Any, key: str, meta: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type, tp), value, key + ".")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_show(value)}")
        return [_convert(item, v, f"{key}[{i}]", {}) for i, v in enumerate(value)]
    if origin is dict:
        _, item = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {_show(value)}")
        return {str(k): _convert(item, v, f"{key}.{k}", {}) for k, v in value.items()}
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: expected one of {', '.join(map(repr, allowed))}, got {_show(value)}")
        return value
    if origin in (Union, types.UnionType):
        errors = []
        for alt in typing.get_args(tp):
            try:
                return _convert(alt, value, key, meta)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
        _bounds(key, value, meta, "an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number of seconds, got {_show(value)}")
        _bounds(key, value, meta, "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_show(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover - a bug in this module


def _bounds(key: str, value: float, meta: Any, what: str) -> None:
    lo = meta.get("min") if meta else None
    if lo is not None and value < lo:
        raise ConfigError(f"{key}: expected {what} >= {lo}, got {value!r}")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def parse_host_port(text: str, key: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port), with the key in errors."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{key}: expected host:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        n = int(port)
    except ValueError:
        raise ConfigError(f"{key}: port must be a number, got {port!r}") from None
    if not 0 <= n <= 65535:
        raise ConfigError(f"{key}: port out of range: {n}")
    return host, n


def parse_nexthop(text: str, key: str, default_port: int) -> tuple[str, int, bool]:
    """A next hop as written in relayhost/transport -> (host, port, mx lookup?).

    ``host`` and ``host:port`` mean "look up the MX records of host";
    ``[host]`` and ``[host]:port`` mean "connect to host itself" (an IP
    address or a name looked up as A/AAAA).  ``[IPv6:addr]`` is accepted too.
    """
    t = text.strip()
    if not t:
        raise ConfigError(f"{key}: empty next hop")
    port = default_port
    if t.startswith("["):
        end = t.find("]")
        if end < 0:
            raise ConfigError(f"{key}: missing ']' in {text!r}")
        host, rest = t[1:end], t[end + 1 :]
        if host.lower().startswith("ipv6:"):
            host = host[5:]
        mx = False
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"{key}: expected [host] or [host]:port, got {text!r}")
            port = _port(rest[1:], key)
    else:
        host, sep, p = t.rpartition(":")
        if not sep:
            host = t
        else:
            port = _port(p, key)
        mx = True
        try:
            ipaddress.ip_address(host)
            mx = False  # an IP address has no MX records
        except ValueError:
            pass
    if not host or any(c in host for c in " /@[]") or (mx and ":" in host):
        raise ConfigError(f"{key}: not a host name or address: {text!r}")
    return host.lower().rstrip("."), port, mx


TRANSPORTS = ("smtp", "lmtp", "local", "error", "discard")
LMTP_PORT = 24
_TRANSPORT_PREFIX = re.compile(r"([A-Za-z][A-Za-z0-9_-]*):(.*)", re.S)
_ERROR_TEXT = re.compile(r"(?:([245]\d\d)[ -])?(?:([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$))?(.*)", re.S)


@dataclass(frozen=True)
class Transport:
    """A value of relay.transport, parsed: which transport, and its next hop.

    - ``smtp``: ``host``/``port``/``mx`` as ``parse_nexthop`` gives them;
      ``host`` empty means "the recipient domain's MX records".
    - ``lmtp``: ``server`` is ``host:port``, ``[v6]:port`` or ``unix:/path``.
    - ``error``: ``code``, ``enhanced`` and ``text`` of the refusal.
    - ``discard``: ``text`` is the optional reason, for the log.
    - ``local``: nothing more.
    """

    kind: str
    host: str = ""
    port: int = 0
    mx: bool = True
    server: str = ""
    code: int = 0
    enhanced: str = ""
    text: str = ""


def parse_transport(text: str, key: str, default_port: int) -> Transport:
    """A relay.transport value -> ``Transport``; ConfigError naming ``key`` when wrong.

    ``transport:nexthop`` as Postfix's transport(5).  A value with no known
    transport prefix keeps its old meaning, an SMTP next hop (``[host]:port``,
    ``host:port``, ``host``); an unknown prefix (``relay:[h]``) is an error
    rather than a host name, so a typo cannot route mail somewhere odd.
    """
    t = text.strip()
    if not t:
        raise ConfigError(f"{key}: empty transport")
    word = t.lower()
    if word in ("local", "local:"):
        return Transport("local")
    if word in ("discard", "discard:"):
        return Transport("discard")
    if word in ("smtp", "smtp:"):
        return Transport("smtp", "", default_port, True)
    m = _TRANSPORT_PREFIX.fullmatch(t)
    if t.startswith("[") or m is None:
        host, port, mx = parse_nexthop(t, key, default_port)
        return Transport("smtp", host, port, mx)
    name, rest = m.group(1).lower(), m.group(2).strip()
    if name not in TRANSPORTS:
        if rest.isdigit():  # host:port, today's SMTP next hop with an MX lookup
            host, port, mx = parse_nexthop(t, key, default_port)
            return Transport("smtp", host, port, mx)
        raise ConfigError(f"{key}: unknown transport {m.group(1)!r} in {text!r} (known: {', '.join(TRANSPORTS)})")
    if name == "smtp":
        host, port, mx = parse_nexthop(rest, key, default_port)
        return Transport("smtp", host, port, mx)
    if name == "lmtp":
        return Transport("lmtp", server=_lmtp_server(rest, key, text))
    if name == "local":
        raise ConfigError(f"{key}: the local transport takes no next hop, got {text!r}")
    if name == "discard":
        return Transport("discard", text=rest)
    e = _ERROR_TEXT.fullmatch(rest)
    assert e is not None  # the pattern matches every string
    code_s, cls, sub, detail, why = e.groups()
    if code_s and cls and code_s[0] != cls:
        raise ConfigError(f"{key}: reply code {code_s} and enhanced code {cls}.{sub}.{detail} disagree in {text!r}")
    cls = cls or (code_s[0] if code_s else "5")
    if cls == "2" or (code_s or "5")[0] == "2":
        raise ConfigError(f"{key}: an error transport needs a 4xx or 5xx code, got {text!r}")
    code = int(code_s) if code_s else (550 if cls == "5" else 450)
    enhanced = f"{cls}.{sub}.{detail}" if sub else f"{cls}.0.0"
    why = " ".join(why.split()) or "Mail for this address is not accepted"
    return Transport("error", code=code, enhanced=enhanced, text=why)


def _lmtp_server(rest: str, key: str, text: str) -> str:
    """The next hop of ``lmtp:...`` as local.lmtp spells it (``host:port`` or ``unix:/path``)."""
    if rest.lower().startswith("unix:"):
        parse_socket_address(rest, key)
        return "unix:" + rest[5:]
    if rest.lower().startswith("inet:"):
        rest = rest[5:]
    if not rest:
        raise ConfigError(f"{key}: lmtp needs a server: lmtp:[host]:port or lmtp:unix:/path, got {text!r}")
    if rest.startswith("["):
        end = rest.find("]")
        host, tail = (rest[1:end], rest[end + 1 :]) if end > 0 else ("", "")
        if not host or (tail and not tail.startswith(":")):
            raise ConfigError(f"{key}: expected lmtp:[host]:port, got {text!r}")
        port = _port(tail[1:], key) if tail else LMTP_PORT
    else:
        host, sep, p = rest.rpartition(":")
        if not sep:
            host, p = rest, ""
        port = _port(p, key) if p else LMTP_PORT
    if host.lower().startswith("ipv6:"):
        host = host[5:]
    if not host or any(c in host for c in " /@[]"):
        raise ConfigError(f"{key}: not a host name or address: {text!r}")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port(text: str, key: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"{key}: port must be a number, got {text!r}") from None
    if not 1 <= n <= 65535:
        raise ConfigError(f"{key}: port out of range: {n}")
    return n
def parse_socket_address(text: str, key: str) -> tuple[str, int] | str:
    """``unix:/path`` -> the path (a str); ``host:port`` -> (host, port)."""
    if text.startswith("unix:"):
        path = text[len("unix:"):]
        if not path:
            raise ConfigError(f"{key}: expected unix:/path, got {text!r}")
        return path
    return parse_host_port(text, key)


def mailbox_ids(owner: str, key: str = "local.mailbox_owner") -> tuple[int, int] | None:
    """``user:group`` / ``user`` (names or numbers) -> (uid, gid); None when empty."""
    import grp
    import pwd

    if not owner:
        return None
    user, sep, group = owner.partition(":")
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        if not user.isdigit():
            raise ConfigError(f"{key}: no such user: {user!r}") from None
        uid, gid = int(user), -1
    else:
        uid, gid = pw.pw_uid, pw.pw_gid
    if sep:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"{key}: no such group: {group!r}") from None
    if gid < 0:
        raise ConfigError(f"{key}: user {user} has no entry in the password database: give the group too (uid:gid)")
    return uid, gid


def dir_mode(text: str, key: str = "local.mailbox_mode") -> int:
    """``"0750"`` -> 0o750: the mode of mailbox directories (files: without x bits)."""
    try:
        mode = int(text, 8)
    except ValueError:
        raise ConfigError(f"{key}: expected an octal mode such as \"0700\" or \"0750\", got {text!r}") from None
    if not 0 <= mode <= 0o777 or mode & 0o700 != 0o700:
        raise ConfigError(f"{key}: expected a mode from 0700 to 0777 (the owner keeps rwx), got {text!r}")
    return mode


def _check(cfg: Config) -> None:
    """Checks across keys, after the types are right."""
    if not cfg.smtpd.listeners:
        raise ConfigError("smtpd.listeners: at least one listener is needed")
    for i, lst in enumerate(cfg.smtpd.listeners):
        host, _ = parse_host_port(lst.address, f"smtpd.listeners[{i}].address")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if host not in ("localhost", "*", "0.0.0.0"):
                raise ConfigError(f"smtpd.listeners[{i}].address: {host!r} is not an IP address") from None
    parse_host_port(cfg.metrics.address, "metrics.address")
    if not cfg.local.domains:
        raise ConfigError("local.domains: at least one local domain is needed")
    for i, d in enumerate(cfg.local.domains):
        if not d or any(c in d for c in " /@[]"):
            raise ConfigError(f"local.domains[{i}]: not a domain name: {d!r}")
    for key in ("maildir", "mbox"):
        template = getattr(cfg.local, key)
        try:
            template.format(user="u", domain="d")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"local.{key}: bad template {template!r} (only {{user}} and {{domain}}): {e}") from None
        if "{user}" not in template:
            raise ConfigError(f"local.{key}: the template must contain {{user}}")
    lmtp_target = parse_socket_address(cfg.local.lmtp, "local.lmtp")
    if cfg.local.delivery == "lmtp":
        for i, lst in enumerate(cfg.smtpd.listeners):
            if lst.mode == "lmtp" and parse_host_port(lst.address, "") == lmtp_target:
                raise ConfigError(f"local.lmtp: {cfg.local.lmtp} is smtprs's own lmtp listener (smtpd.listeners[{i}]): mail would loop")
    local = {d.lower() for d in cfg.local.domains}
    for i, d in enumerate(cfg.local.virtual_domains):
        if not d or any(c in d for c in " /@[]"):
            raise ConfigError(f"local.virtual_domains[{i}]: not a domain name: {d!r}")
        if d.lower() in local:
            raise ConfigError(f"local.virtual_domains[{i}]: {d!r} is also in local.domains (a domain is either local or virtual)")
    if any(c in cfg.local.recipient_delimiter for c in '@" \t\\'):
        raise ConfigError(f"local.recipient_delimiter: {cfg.local.recipient_delimiter!r} may not contain @, quotes, blanks or backslashes")
    if cfg.queue.retry_max < cfg.queue.retry_min:
        raise ConfigError("queue.retry_max: must be >= queue.retry_min")
    if not cfg.queue.control_socket:
        raise ConfigError("queue.control_socket: must not be empty")
    r = cfg.relay
    for i, net in enumerate(r.trusted_networks):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"relay.trusted_networks[{i}]: not a network (CIDR): {net!r}") from None
    if r.relayhost:
        parse_nexthop(r.relayhost, "relay.relayhost", r.smtp_port)
    own_lmtp = {parse_host_port(lst.address, "") for lst in cfg.smtpd.listeners if lst.mode == "lmtp"}
    routed_local: set[str] = set()
    for dom, hop in r.transport.items():
        local_part, at, domain = dom.rpartition("@")
        if at and not local_part:
            raise ConfigError(f"relay.transport.{dom}: expected an address, a domain or .domain")
        name = domain if at else dom
        if not name.strip(".") or any(c in name for c in " /@[]") or (at and name.startswith(".")):
            raise ConfigError(f"relay.transport.{dom}: not a domain name")
        spec = parse_transport(hop, f"relay.transport.{dom}", r.smtp_port)
        if spec.kind == "lmtp" and not spec.server.startswith("unix:") and parse_host_port(spec.server, "") in own_lmtp:
            raise ConfigError(f"relay.transport.{dom}: {hop} is smtprs's own lmtp listener: mail would loop")
        if spec.kind == "local":
            routed_local.add(dom.lower().rstrip("."))
    local_domains = {d.lower() for d in cfg.local.domains}
    for address, entry in cfg.local.mailboxes.items():
        key = f"local.mailboxes.{address}"
        local_part, at, domain = address.rpartition("@")
        d = domain.lower().rstrip(".")
        if not at or not local_part or not d or any(c in address for c in " /[]\t\r\n"):
            raise ConfigError(f"{key}: expected an address, user@domain")
        if bool(entry.maildir) == bool(entry.mbox):
            raise ConfigError(f"{key}: give exactly one of maildir and mbox")
        parents = {"." + ".".join(d.split(".")[i:]) for i in range(1, d.count(".") + 1)}
        if d not in local_domains and not ({address.lower(), d} | parents) & routed_local:
            raise ConfigError(f"{key}: {domain!r} is neither in local.domains nor routed to local by relay.transport, so this mailbox would never get mail")
    mailbox_ids(cfg.local.mailbox_owner)
    dir_mode(cfg.local.mailbox_mode)
    if r.smtp_port > 65535:
        raise ConfigError(f"relay.smtp_port: port out of range: {r.smtp_port}")
    if bool(r.auth_username) != bool(r.auth_password):
        raise ConfigError("relay.auth_password: relay.auth_username and relay.auth_password go together")
    if r.tls_ca_file:
        ca = cfg.data_path / r.tls_ca_file
        if not ca.is_file():
            raise ConfigError(f"relay.tls_ca_file: no such file: {r.tls_ca_file!r}")
        try:
            ssl.create_default_context(cafile=str(ca))
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"relay.tls_ca_file: cannot load {r.tls_ca_file!r}: {e}") from None
    for i, ns in enumerate(cfg.dns.nameservers):
        try:
            ipaddress.ip_address(ns)
        except ValueError:
            raise ConfigError(f"dns.nameservers[{i}]: not an IP address: {ns!r}") from None
    if cfg.dns.port > 65535:
        raise ConfigError(f"dns.port: port out of range: {cfg.dns.port}")
    tls = cfg.smtpd.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        missing = "smtpd.tls.key_file" if tls.cert_file else "smtpd.tls.cert_file"
        raise ConfigError(f"{missing}: smtpd.tls.cert_file and smtpd.tls.key_file go together")
    for i, lst in enumerate(cfg.smtpd.listeners):
        if tls.cert_file:
            continue
        if lst.mode == "submissions":
            raise ConfigError(f"smtpd.listeners[{i}].mode: a submissions listener (implicit TLS) needs smtpd.tls.cert_file and smtpd.tls.key_file")
        if lst.mode == "submission" and not cfg.smtpd.auth.allow_plaintext:
            raise ConfigError(
                f"smtpd.listeners[{i}].mode: a submission listener needs smtpd.tls.cert_file and smtpd.tls.key_file "
                "(or smtpd.auth.allow_plaintext = true, which sends passwords in the clear)"
            )
        if lst.mode == "pop3s":
            raise ConfigError(f"smtpd.listeners[{i}].mode: a pop3s listener (implicit TLS) needs smtpd.tls.cert_file and smtpd.tls.key_file")
        if lst.mode == "pop3" and not cfg.smtpd.auth.allow_plaintext:
            raise ConfigError(
                f"smtpd.listeners[{i}].mode: a pop3 listener needs smtpd.tls.cert_file and smtpd.tls.key_file for STLS "
                "(or smtpd.auth.allow_plaintext = true, which sends passwords in the clear)"
            )
    auth = cfg.smtpd.auth
    if auth.max_failure_delay < auth.failure_delay:
        raise ConfigError("smtpd.auth.max_failure_delay: must be >= smtpd.auth.failure_delay")
    for user, patterns in auth.senders.items():
        for j, pattern in enumerate(patterns):
            if not pattern or any(c.isspace() for c in pattern) or "@" not in pattern:
                raise ConfigError(f"smtpd.auth.senders.{user}[{j}]: not an address pattern: {pattern!r}")


# --------------------------------------------------------------------------
# Reference documentation, generated from the definitions above


def reference_markdown() -> str:
    """The configuration reference as Markdown, one table per section."""
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(cls: type[Any], prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                walk(typing.cast(type, tp), f"{prefix}{f.name}.")
                continue
            if typing.get_origin(tp) is list and dataclasses.is_dataclass(typing.get_args(tp)[0]):
                out.append(f"| `{prefix}{f.name}` | array of tables | one, see below | {f.metadata['doc']} |")
                walk(typing.get_args(tp)[0], f"{prefix}{f.name}[].")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
            out.append(f"| `{prefix}{f.name}` | {_type_name(tp)} | `{_toml(default)}` | {f.metadata['doc']} |")

    walk(Config, "")
    return "\n".join(out) + "\n"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"table of {_type_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "table (" + " or ".join(f"`{f.name}`" for f in dataclasses.fields(tp)) + ")"
    if origin is Literal:
        return " \\| ".join(f'"{a}"' for a in typing.get_args(tp))
    return {int: "integer", float: "seconds", str: "string", bool: "boolean"}.get(tp, str(tp))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
