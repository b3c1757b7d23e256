"""The configuration's tree: one frozen dataclass per table, each key with its
default, its documentation (``metadata["doc"]``, rendered by reference.py) and
its simple checks (``min``/``max``, applied by load.py)."""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal


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
    milters: list[str] = _f(
        [],
        "Milters for this listener (as Postfix's `-o smtpd_milters=...` in master.cf): `inet:host:port` or `unix:/path`, "
        'replacing `milter.milters` here; `["none"]`: no milter on this listener; empty: `milter.milters`. '
        "Used on mx, submission and submissions listeners.",
    )


@dataclass(frozen=True)
class Tls:
    """TLS for STARTTLS and implicit-TLS listeners."""

    cert_file: str = _f(
        "",
        "PEM certificate chain (server certificate first); relative to data_dir. Empty: no TLS (STARTTLS not offered; submission listeners then refuse to start).",
    )
    key_file: str = _f("", "PEM private key of the certificate; relative to data_dir.")
    min_version: Literal["TLSv1.2", "TLSv1.3"] = _f("TLSv1.2", "Oldest TLS version accepted.")
    ciphers: str = _f(
        "", "OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are OpenSSL's); empty keeps Python's secure default."
    )
    handshake_timeout: float = _f(30.0, "Seconds a TLS handshake may take.", min=0.001)


@dataclass(frozen=True)
class Auth:
    """SMTP AUTH (RFC 4954) on submission listeners, and what authenticated users may do."""

    users_file: str = _f(
        "users",
        "Users and their password hashes (scrypt), managed with `smtprs passwd`; relative to data_dir. Re-read when it changes.",
    )
    allow_plaintext: bool = _f(
        False,
        "Offer AUTH on connections without TLS. Off: AUTH is offered only after STARTTLS (or on implicit TLS) and answered 538 5.7.11 before.",
    )
    failure_delay: float = _f(
        1.0,
        "Seconds before the 535 reply to the first failed AUTH from a client address (an IPv6 /64); it doubles with each further failure.",
        min=0.0,
    )
    max_failure_delay: float = _f(30.0, "Longest delay before a 535 reply, in seconds.", min=0.0)
    failure_window: float = _f(
        900.0, "Seconds after which a client address's failed AUTH attempts are forgotten.", min=0.001
    )
    restrict_senders: bool = _f(
        True, "An authenticated user may use only the envelope senders `senders` allows (553 5.7.1 otherwise)."
    )
    senders: dict[str, list[str]] = _f(
        {},
        "Envelope senders each user may use, besides the default (the login itself if it is an address, else login@ each local domain): "
        'a table `user = ["addr@example.org", "*@dept.example.org"]` of shell-style patterns, compared case-insensitively. The null sender `<>` is always allowed.',
    )
    received_user: bool = _f(
        False, "Name the authenticated user in the Received header field (`(Authenticated sender: NAME)`)."
    )


@dataclass(frozen=True)
class Smtpd:
    """The inbound SMTP server (sessions, limits, timeouts)."""

    listeners: list[Listener] = _f([Listener()], "The listening sockets (`[[smtpd.listeners]]` tables).")
    banner: str = _f("ESMTP smtprs", "Text after the host name in the 220 greeting.")
    max_message_size: int = _f(
        10 * 1024 * 1024, "Largest message accepted, in octets (advertised with SIZE; counted while streaming).", min=1
    )
    max_recipients: int = _f(100, "Most recipients in one transaction; more get 452 4.5.3.", min=1)
    max_errors: int = _f(10, "Error replies in one session before it is closed with 421 4.7.0.", min=1)
    max_connections: int = _f(1000, "Concurrent sessions; more get 421 4.3.2 and are closed.", min=1)
    max_connections_per_client: int = _f(
        50,
        "Concurrent sessions from one client address (an IPv6 /64 counts as one address); more get 421 4.7.0 and are closed.",
        min=1,
    )
    max_connection_rate: int = _f(
        0,
        "Connections one client address (an IPv6 /64) may open within `connection_rate_window` seconds; more get 421 4.7.0 and are closed "
        "(every attempt counts, refused ones too; counted as a sliding window: the previous window's attempts weigh by how much of it "
        "the last `connection_rate_window` seconds overlap). 0: no limit.",
        min=0,
    )
    connection_rate_window: float = _f(60.0, "The time window of `max_connection_rate`, in seconds.", min=0.001)
    limit_exempt_networks: list[str] = _f(
        ["$trusted_networks", "127.0.0.0/8", "::1/128"],
        "Client networks (CIDR) exempt from `max_connections_per_client` and `max_connection_rate` (Postfix's "
        "`smtpd_client_event_limit_exceptions`); `$trusted_networks` stands for relay.trusted_networks. The counts of "
        "other clients are one per client for the whole server, shared by all workers.",
    )
    max_junk_commands: int = _f(
        100,
        "NOOP, RSET, VRFY and HELP commands a session may send between two accepted messages before each further one counts as an error.",
        min=1,
    )
    max_received_headers: int = _f(
        50, "A message with more Received headers than this is refused with 554 5.4.6 (mail loop).", min=1
    )
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
    users: list[str] = _f(
        [],
        "Known local users. Empty: every local part of a local domain that can name a mailbox (letters, digits and `._=+-`, not starting with a dot, no `..`; UTF-8 local parts only through local.mailboxes or an address key of relay.transport) is deliverable and its mailbox is made on first delivery; otherwise unknown users get 550 5.1.1 at RCPT.",
    )
    maildir: str = _f(
        "mail/{user}",
        "Path of a user's Maildir (the directory holding tmp/ new/ cur/); `{user}` and `{domain}` are replaced; relative to data_dir.",
    )
    delivery: Literal["maildir", "mbox", "lmtp"] = _f(
        "maildir",
        "How local mailboxes are delivered: `maildir` (local.maildir), `mbox` (local.mbox, one file per user) or `lmtp` (handed to the LMTP server at local.lmtp).",
    )
    mbox: str = _f(
        "mbox/{user}",
        "Path of a user's mbox file when local.delivery is `mbox`; `{user}` and `{domain}` are replaced; relative to data_dir.",
    )
    lock_timeout: float = _f(
        30.0,
        "Seconds an mbox delivery waits for the mailbox lock (fcntl and dotlock) before it is deferred.",
        min=0.001,
    )
    lmtp: str = _f(
        "127.0.0.1:24",
        "The LMTP server that gets local mail when local.delivery is `lmtp`: `host:port`, `[ipv6]:port` or `unix:/path/to/socket`.",
    )
    lmtp_timeout: float = _f(
        300.0, "Seconds to wait for the LMTP server: for the connection and for each reply.", min=0.001
    )
    aliases: str = _f(
        "",
        "Aliases file in the /etc/aliases format (`name: address, address`); empty for none. Names apply to every local domain; read at start-up.",
    )
    virtual_domains: list[str] = _f(
        [],
        "Virtual domains: domains we take mail for whose addresses exist only in local.virtual_map (no mailbox of their own).",
    )
    virtual_map: str = _f(
        "",
        "Virtual map file: lines `address target, target` (Postfix virtual(5) style) mapping addresses of virtual or local domains to local mailbox names or other addresses; `@domain target` is the domain's catch-all. Empty for none.",
    )
    recipient_delimiter: str = _f(
        "+",
        "Sub-addressing: `user+tag@domain` is delivered to `user` (each character here is a delimiter; empty turns it off).",
    )
    case_sensitive: bool = _f(
        False, "Match local parts case-sensitively (by default `Alice` and `alice` are the same mailbox)."
    )
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
    retry_min: float = _f(
        300.0,
        "Delay before the first retry of a deferred recipient, in seconds; it doubles after each attempt.",
        min=0.001,
    )
    retry_max: float = _f(14400.0, "Longest delay between two retries, in seconds.", min=0.001)
    max_lifetime: float = _f(
        5 * 86400.0, "Seconds a message may stay in the queue before its undelivered recipients fail.", min=0.001
    )
    delivery_concurrency: int = _f(20, "Deliveries running at once.", min=1)
    in_flow_delay: float = _f(
        1.0,
        "Flow control, as Postfix's in_flow_delay: while more new messages wait for their first delivery attempt than delivery_concurrency "
        "can take, a session waits up to this many seconds (at most 1) before answering MAIL, then answers as usual; "
        "not on LMTP listeners (nothing is queued there). 0 turns it off.",
        min=0.0,
        max=1.0,
    )
    min_free_space: int = _f(
        0,
        "MAIL is answered 452 4.3.1 when the spool's file system has less free space than this many octets plus 1.5 times the SIZE the client "
        "declared (as Postfix's queue_minfree). A full disk is answered 452 4.3.1 at the end of the data in any case.",
        min=0,
    )
    delay_warning: float = _f(
        0.0,
        'Seconds after arrival when a sender whose mail is still deferred gets a "delayed" notice (RFC 3464 Action: delayed), once; 0 turns it off.',
        min=0,
    )
    bounce_size_limit: int = _f(
        1024 * 1024,
        "Largest original message returned whole in a bounce when the sender asked for it (MAIL ... RET=FULL); larger ones are returned as headers only.",
        min=0,
    )
    control_socket: str = _f(
        "control.sock",
        "Unix socket (relative to data_dir) on which the running server takes queue commands (`smtprs queue flush`); mode 0600.",
    )
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

    trusted_networks: list[str] = _f(
        [],
        'Client networks (CIDR) that may relay without authentication. Empty: nobody; `["127.0.0.0/8", "::1/128"]` lets local programs relay (beware of local proxies).',
    )
    relayhost: str = _f(
        "",
        "Smart host for all non-local mail: `host` or `host:port` (MX lookup on host), `[host]` or `[host]:port` (no MX lookup). Empty: deliver by DNS (MX records).",
    )
    transport: dict[str, str] = _f(
        {},
        'The transport map, consulted first (before local delivery, relayhost and DNS): keys are a full address (`"bob@example.org"`), '
        "a domain, or `.example.org` for its subdomains, looked up in that order. Values name a transport and its next hop, as Postfix's transport(5): "
        "`smtp:[10.0.0.5]:2525` (`[host]` no MX lookup, `host` MX lookup; `smtp:` alone: the recipient domain's MX; a value without a prefix means smtp, "
        "as relayhost), `lmtp:[host]:port` / `lmtp:host:port` / `lmtp:unix:/path` (an LMTP server such as Dovecot; port 24 by default), "
        "`local` (this machine's mailboxes: local.mailboxes, then the templates by local.delivery), `error:5.1.1 text` (refused at RCPT with "
        "550 5.1.1 text; a 4.x.x code gives 450), `discard` (accepted and thrown away, logged as sent). Addresses and domains routed to lmtp, local, "
        "error or discard are final destinations: taken without relay permission; smtp ones still need it.",
    )
    smtp_port: int = _f(25, "Port used to reach MX and A hosts (and next hops given without a port).", min=1)
    tls: TlsLevel = _f(
        "may",
        "TLS to the next hop: `may` (STARTTLS whenever offered, certificate not checked), `verify` (STARTTLS required and the certificate verified for the host name, else deferred), `none`.",
    )
    tls_policy: dict[str, TlsLevel] = _f(
        {}, 'TLS level per recipient domain or next-hop host, overriding `relay.tls`: `"bank.example" = "verify"`.'
    )
    tls_ca_file: str = _f("", "CA certificates (PEM) for `verify`; empty for the system's trust store.")
    auth_username: str = _f("", "User name for AUTH (PLAIN or LOGIN) to the relayhost; empty: no AUTH.")
    auth_password: str = _f(
        "",
        "Password for AUTH to the relayhost. It is never logged; keep the configuration file readable by smtprs only (mode 0600): the server warns otherwise.",
    )
    auth_require_tls: bool = _f(
        True, "Send the relayhost credentials only over a TLS-protected connection (otherwise the attempt is deferred)."
    )
    address_preference: Literal["ipv4", "ipv6"] = _f("ipv4", "Which addresses of a host are tried first.")
    destination_concurrency: int = _f(
        10, "Connections at once to one destination (a domain, or a relayhost/transport next hop).", min=1
    )
    transaction_recipient_limit: int = _f(
        100, "Most recipients in one SMTP transaction; more go in further transactions on the same connection.", min=1
    )
    idle_timeout: float = _f(
        2.0,
        "Seconds an idle connection is kept for reuse by further messages to the same destination; 0 closes it after each delivery.",
        min=0,
    )
    connect_timeout: float = _f(30.0, "Seconds to establish a TCP connection to a next hop.", min=0.001)
    greeting_timeout: float = _f(
        300.0, "Seconds to wait for the 220 greeting (RFC 5321 4.5.3.2.1: 5 minutes).", min=0.001
    )
    command_timeout: float = _f(
        300.0,
        "Seconds to wait for the reply to EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET, QUIT (RFC 5321 4.5.3.2.2-3: 5 minutes).",
        min=0.001,
    )
    data_init_timeout: float = _f(
        120.0, "Seconds to wait for the 354 reply to DATA (RFC 5321 4.5.3.2.4: 2 minutes).", min=0.001
    )
    data_block_timeout: float = _f(
        180.0, "Seconds each block of message data may take to send (RFC 5321 4.5.3.2.5: 3 minutes).", min=0.001
    )
    data_end_timeout: float = _f(
        600.0, "Seconds to wait for the reply to the final dot (RFC 5321 4.5.3.2.6: 10 minutes).", min=0.001
    )


@dataclass(frozen=True)
class Dns:
    """The DNS resolver used for MX, A and AAAA lookups."""

    nameservers: list[str] = _f([], "Name server IP addresses; empty for those of /etc/resolv.conf.")
    port: int = _f(53, "Port of the name servers.", min=1)
    timeout: float = _f(
        10.0, "Seconds one lookup may take, retries included; a timeout defers the mail (4.4.3).", min=0.001
    )


@dataclass(frozen=True)
class Dane:
    """DANE for outbound SMTP (RFC 7672): TLSA records, DNSSEC-validated, authenticate the MX hosts' certificates."""

    mode: Literal["off", "opportunistic", "mandatory"] = _f(
        "off",
        "`off`: no DANE. `opportunistic` (Postfix's `dane`): for MX hosts whose MX and address records are DNSSEC-validated, "
        "look up TLSA `_PORT._tcp.HOST`; validated usable records (DANE-EE 3, DANE-TA 2) require STARTTLS and a matching "
        "certificate, else the host is deferred (4.7.4/4.7.5), never sent to in clear; hosts without secure TLSA get relay.tls. "
        "`mandatory` (Postfix's `dane-only`): every MX host must have validated usable TLSA records, else deferred. "
        "Off by default because it needs a validating resolver that sets the AD bit on a trusted path: dns.nameservers must "
        "point at a local unbound or knot-resolver (127.0.0.1) that validates (dnspython does not validate itself).",
    )


# The header fields signed by default: rspamd's default sign_headers (its
# dkim_signing module), which is RFC 6376 5.4.1's list (OpenDKIM's default)
# plus Content-Language, List-Unsubscribe-Post, OpenPGP and Autocrypt.
DKIM_SIGN_HEADERS = [
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-language",
    "resent-to",
    "resent-cc",
    "resent-from",
    "resent-sender",
    "resent-message-id",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-owner",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "openpgp",
    "autocrypt",
]
# signed once more than they occur, so none can be added unnoticed (RFC 6376 8.15): rspamd's "(o)" set
DKIM_OVERSIGN_HEADERS = ["from", "reply-to", "subject", "to", "cc"]
# RFC 6376 5.4: fields a signer should not sign (trace fields, what later hops add or drop)
DKIM_NEVER_SIGN = ("return-path", "received", "comments", "keywords", "bcc", "resent-bcc", "dkim-signature")
DkimAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]


@dataclass(frozen=True)
class DkimKey:
    """One DKIM signing key (a `[[dkim.keys]]` table)."""

    domain: str = _f(
        "",
        "Signing domain (d=): mail whose From: address is in this domain, or in a subdomain without a key of its own, is signed with this key.",
    )
    selector: str = _f("", "Selector (s=): the public key is published at `SELECTOR._domainkey.DOMAIN` (TXT).")
    key_file: str = _f(
        "",
        "The private key, PEM (RSA: PKCS#1 or PKCS#8; Ed25519: PKCS#8, or dkimpy's base64 seed), as `smtprs dkim keygen` writes it; "
        "relative to data_dir. Read and checked at start-up: a missing, unreadable or wrong-type key is a configuration error.",
    )
    algorithm: DkimAlgorithm = _f(
        "rsa-sha256",
        "`rsa-sha256` (RSA keys of 1024 bits or more; 2048 advised) or `ed25519-sha256` (RFC 8463).",
    )


@dataclass(frozen=True)
class Dkim:
    """DKIM signing of outbound mail (RFC 6376): mail from authenticated users or relay.trusted_networks whose From: domain has a key."""

    keys: list[DkimKey] = _f(
        [], "Signing keys (`[[dkim.keys]]` tables: domain, selector, key_file, algorithm). Empty: nothing is signed."
    )
    sign_headers: list[str] = _f(
        DKIM_SIGN_HEADERS,
        "Header fields signed when present (each occurrence), compared case-insensitively; relaxed/relaxed canonicalization. Must include `from`.",
    )
    oversign_headers: list[str] = _f(
        DKIM_OVERSIGN_HEADERS,
        "Header fields signed once more than they occur, so that none can be added later without breaking the signature (RFC 6376 8.15).",
    )


@dataclass(frozen=True)
class MtaSts:
    """MTA-STS for delivery by MX (RFC 8461): the recipient domain's policy, fetched over HTTPS, says which MX hosts to use and that TLS must be verified."""

    enabled: bool = _f(
        True,
        "Look up the MTA-STS policy of each recipient domain delivered to by MX (a TXT lookup of `_mta-sts.DOMAIN`; the policy is fetched "
        "over HTTPS only from domains that publish one). Under `enforce`, only the MX hosts the policy lists are used, STARTTLS with a "
        "certificate valid for the MX host name is required, and any failure defers; `testing` delivers as before and records the failure. "
        "Not applied to relayhost or transport-map next hops.",
    )
    fetch_timeout: float = _f(
        10.0,
        "Seconds the HTTPS fetch of a policy may take in all (connect, TLS, request, response); a delivery waits for it.",
        min=0.001,
    )
    max_policy_size: int = _f(
        65536,
        "Largest policy file accepted, in octets (RFC 8461 3.3 suggests 64 KiB); a larger one is a fetch error.",
        min=1,
    )
    cache_dir: str = _f(
        "mta-sts",
        "Directory (relative to data_dir) where fetched policies are kept, one file per domain, so a restart keeps them until their max_age.",
    )
    https_port: int = _f(
        443,
        "Port of the policy's HTTPS server (`https://mta-sts.DOMAIN/`). RFC 8461 says 443; another value is for tests only.",
        min=1,
        max=65535,
    )


@dataclass(frozen=True)
class MailauthSpf:
    """What an SPF result does (RFC 7208 8; replies per RFC 7372)."""

    fail_policy: Literal["accept", "reject"] = _f(
        "accept",
        "`accept` (record spf=fail in Authentication-Results only) or `reject` (550 5.7.23 after the data). "
        "softfail, neutral, none and permerror never reject.",
    )
    temperror_policy: Literal["accept", "defer"] = _f(
        "accept",
        "`accept` (record spf=temperror only) or `defer` (451 4.7.24: the client tries again later).",
    )
    check_helo: bool = _f(
        True,
        "Also check the HELO name of a non-null sender (RFC 7208 2.3), recorded as a second `spf=... smtp.helo=` "
        "result; it never refuses mail and DMARC does not read it. A null sender's HELO is always checked.",
    )


@dataclass(frozen=True)
class MailauthDmarc:
    """What a DMARC result does (RFC 7489 6.6.4, 10.3 and 7.3 of the receiver's choice)."""

    reject_policy: Literal["accept", "quarantine-header", "reject"] = _f(
        "accept",
        "For a DMARC failure of a domain publishing p=reject: `accept` (record dmarc=fail only), "
        "`quarantine-header` (accept, adding `X-Smtprs-Quarantine:` for a Sieve rule to file it into Junk), "
        "or `reject` (550 5.7.1 after the data). A p=quarantine failure is never rejected: it gets the header "
        "unless this is `accept`.",
    )


@dataclass(frozen=True)
class Mailauth:
    """Inbound message authentication on `mx` listeners: SPF, DKIM, ARC and DMARC, recorded in one Authentication-Results field (RFC 8601)."""

    enabled: bool = _f(
        False,
        "Check mail received on `mx` listeners (not submission or LMTP; not from authenticated clients). "
        "Off by default, as Postfix without a milter: every message then costs DNS lookups.",
    )
    authserv_id: str = _f(
        "", "The authserv-id of our Authentication-Results field (RFC 8601 2.5); empty for the server's hostname."
    )
    dns_budget: float = _f(
        10.0,
        "Seconds all of one message's DNS lookups may take together (each also bounded by dns.timeout); "
        "past it the unfinished checks give temperror.",
        min=0.001,
    )
    max_lookups: int = _f(
        40,
        "DNS lookups per message, all checks together (SPF's own limit of 10 DNS mechanisms, RFC 7208 4.6.4, applies within); "
        "past it the unfinished checks give temperror.",
        min=1,
    )
    dkim_max_size: int = _f(
        8 * 1024 * 1024,
        "Largest message (octets) whose DKIM signatures and ARC chain are verified; the content is kept in memory "
        "up to this size for the verifier. Larger: dkim=neutral, and a DMARC result that needed DKIM is permerror (never rejected).",
        min=1,
    )
    max_signatures: int = _f(
        5, "DKIM signatures verified per message (the topmost); further ones are reported as neutral.", min=1
    )
    spf: MailauthSpf = _f(MailauthSpf(), "SPF policy.")
    dmarc: MailauthDmarc = _f(MailauthDmarc(), "DMARC policy.")


MilterAction = Literal["tempfail", "accept", "reject"]


@dataclass(frozen=True)
class Milter:
    """Content filters speaking the Sendmail/Postfix milter protocol (version 6): rspamd, OpenDKIM, spamass-milter..."""

    milters: list[str] = _f(
        [],
        "The milters every mx and submission listener uses, in order (Postfix's smtpd_milters): "
        "`inet:host:port` or `unix:/path`. Empty: none. A listener's own `milters` replaces this list.",
    )
    default_action: MilterAction = _f(
        "tempfail",
        "What a milter that is down, times out or breaks the protocol gets (Postfix's milter_default_action): "
        "`tempfail` (451 4.7.1, the client tries again later), `reject` (550 5.7.1) or `accept` (go on without that milter).",
    )
    connect_timeout: float = _f(30.0, "Seconds to connect to a milter and negotiate.", min=0.001)
    command_timeout: float = _f(
        30.0, "Seconds a milter may take to answer a command (connect, helo, mail, rcpt, a header field).", min=0.001
    )
    content_timeout: float = _f(
        300.0,
        "Seconds a milter may take to answer a body chunk or the end of the message (each progress reply restarts it).",
        min=0.001,
    )
    macros: dict[str, list[str]] = _f(
        {},
        "The macros sent at a stage, replacing smtprs's list for it (Postfix's milter_*_macros): a table "
        '`stage = ["j", "{client_addr}"]`, stage one of connect, helo, mail, rcpt, data, eoh, eom. See docs/milter.md.',
    )


@dataclass(frozen=True)
class Pop3:
    """The POP3 server (listener modes `pop3` and `pop3s`); logins are checked against smtpd.auth.users_file."""

    timeout: float = _f(
        600.0,
        "Seconds a POP3 session may be idle before it is closed (RFC 1939's autologout timer: at least 10 minutes advised); nothing is deleted then.",
        min=0.001,
    )


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

    enabled: bool = _f(
        False, "Serve metrics over HTTP at metrics.address (worker 0 serves the figures of every worker)."
    )
    address: str = _f(
        "127.0.0.1:9425",
        "Address and port of the metrics endpoint: loopback by default; it has no authentication, so expose it with care.",
    )


@dataclass(frozen=True)
class Greylist:
    """Greylisting of mx clients (postgrey's method): the first try of a (client network, sender, recipient) triplet is deferred."""

    enabled: bool = _f(
        False,
        "Greylist mail from clients on mx listeners: the first attempt of each (client /24 or /64, sender, recipient) gets "
        "450 4.7.1, a retry after `delay` passes. Never submission, LMTP or authenticated sessions. The triplets are in "
        "data_dir/greylist.sqlite, shared by all workers.",
    )
    delay: float = _f(300.0, "Seconds a new triplet is deferred (postgrey's --delay).", min=0.0)
    retry_window: float = _f(
        2 * 86400.0,
        "Seconds after the first attempt within which a retry passes; later, the triplet starts again (postgrey's --retry-window).",
        min=0.001,
    )
    max_age: float = _f(
        35.0,
        "Days a triplet that passed (and an allowlisted client) is remembered after its last use (postgrey's --max-age).",
        min=0.001,
    )
    auto_allowlist: int = _f(
        5,
        "Triplets a client network must pass before it is not greylisted any more, for `max_age` days; 0: never "
        "(postgrey's --auto-whitelist-clients).",
        min=0,
    )
    exempt_networks: list[str] = _f(
        ["$trusted_networks"],
        "Client networks (CIDR) never greylisted; `$trusted_networks` stands for relay.trusted_networks.",
    )
    exempt_domains: list[str] = _f(
        [], "Recipient domains (and their subdomains) never greylisted, e.g. for postmaster mail that must not wait."
    )


@dataclass(frozen=True)
class Screen:
    """Screening of clients on mx listeners, before their mail costs anything."""

    greylist: Greylist = _f(Greylist(), "Greylisting.")


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    hostname: str = _f(
        "", "Our host name in the greeting, EHLO reply and Received headers; empty for the machine's FQDN."
    )
    data_dir: str = _f(
        "smtprs-data", "Directory for the spool and mailboxes; relative paths in the config are relative to it."
    )
    workers: int = _f(
        0,
        "Worker processes sharing the listening sockets (SO_REUSEPORT), each with its own spool shard; 0 means one per CPU. `smtprs serve --workers N` overrides it.",
        min=0,
    )
    hooks: str = _f(
        "",
        'Python hooks that `smtprs serve` loads in every worker: `"package.module:factory"`, a module on the Python path and a '
        "callable in it (a `smtprs.Hooks` subclass, or a function returning one) called with no arguments (docs/library.md). "
        "A module or factory that cannot be loaded stops the start (exit 2). Empty: no hooks. Read at start only.",
    )
    smtpd: Smtpd = _f(Smtpd(), "Inbound SMTP.")
    local: Local = _f(Local(), "Local domains and mailboxes.")
    queue: Queue = _f(Queue(), "Spool and scheduler.")
    relay: Relay = _f(Relay(), "Relaying to other hosts.")
    dns: Dns = _f(Dns(), "DNS resolver.")
    screen: Screen = _f(Screen(), "Screening of mx clients.")
    pop3: Pop3 = _f(Pop3(), "POP3 retrieval.")
    dkim: Dkim = _f(Dkim(), "DKIM signing.")
    mta_sts: MtaSts = _f(MtaSts(), "MTA-STS for outbound delivery by MX.")
    dane: Dane = _f(Dane(), "DANE for outbound SMTP.")
    mailauth: Mailauth = _f(Mailauth(), "Inbound message authentication (SPF, DKIM, ARC, DMARC).")
    milter: Milter = _f(Milter(), "Milters (content filters).")
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
