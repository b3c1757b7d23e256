"""Loading and checking the configuration: TOML in, a checked ``Config`` out."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import ssl
import stat
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from ..errors import ConfigError
from ..mailauth.keys import DkimKeyError, a_label, load_key
from .schema import DKIM_NEVER_SIGN, Config
from .values import (
    check_networks,
    dir_mode,
    mailbox_ids,
    parse_host_port,
    parse_nexthop,
    parse_socket_address,
    parse_transport,
)

# --------------------------------------------------------------------------
# Loading and validation


SYSTEM_CONFIG = "/etc/smtprs/smtprs.toml"
CONFIG_ENV = "SMTPRS_CONFIG"


def locate(explicit: str | None) -> tuple[str | None, list[str]]:
    """Which configuration file a command reads, in one order for every
    command: ``-c``, then ``$SMTPRS_CONFIG``, then /etc/smtprs/smtprs.toml when
    it exists, then none (the embedded defaults).  Returns the path (None:
    the defaults) and where it looked, for messages that say so."""
    if explicit:
        return explicit, [f"-c {explicit}"]
    looked = []
    env = os.environ.get(CONFIG_ENV, "")
    if env:
        return env, [f"${CONFIG_ENV}={env}"]
    looked.append(f"${CONFIG_ENV} (unset)")
    if os.path.exists(SYSTEM_CONFIG):
        return SYSTEM_CONFIG, [*looked, SYSTEM_CONFIG]
    looked.append(f"{SYSTEM_CONFIG} (absent)")
    return None, [*looked, "the embedded defaults"]


def load(path: str | os.PathLike[str] | None = None, *, overrides: dict[str, Any] | None = None) -> Config:
    """Load the configuration from ``path`` (None: the embedded default)."""
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        p = Path(path)
        raw = _read_toml(p)
        base = p.resolve().parent
    if overrides:
        raw = merge_tables(raw, overrides)
    cfg: Config = _build(Config, raw, "")
    data_dir = Path(cfg.data_dir)
    if not data_dir.is_absolute():
        data_dir = base / data_dir
    cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
    _check(cfg)
    return cfg


CONFIG_MAX = 16 * 1024 * 1024  # a configuration file larger than this is a mistake (a log, an image)


def _read_toml(p: Path) -> dict[str, Any]:
    """The TOML table in file ``p``; a ConfigError naming ``p`` and the
    problem for anything else: no such file, a directory, a FIFO or device
    (never opened: reading a FIFO would wait for a writer), a path through a
    regular file (ENOTDIR), a symlink loop, no permission, an I/O error, a
    file too large, not UTF-8, not TOML."""
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"{p}: is a directory, not a configuration file")
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{p}: not a regular file")
        if st.st_size > CONFIG_MAX:
            raise ConfigError(f"{p}: {st.st_size} octets is too large for a configuration file")
        with p.open("rb") as fh:
            data = fh.read(CONFIG_MAX + 1)
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read it: {e.strerror or e}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (octet {e.start}): TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None


def merge_tables(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` over ``a``, table by table (what ``overrides`` does to a file's tables)."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_tables(out[k], v)
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
    hi = meta.get("max") if meta else None
    if hi is not None and value > hi:
        raise ConfigError(f"{key}: expected {what} <= {hi}, got {value!r}")


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return repr(value)


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
                raise ConfigError(
                    f"local.lmtp: {cfg.local.lmtp} is smtprs's own lmtp listener (smtpd.listeners[{i}]): mail would loop"
                )
    local = {d.lower() for d in cfg.local.domains}
    for i, d in enumerate(cfg.local.virtual_domains):
        if not d or any(c in d for c in " /@[]"):
            raise ConfigError(f"local.virtual_domains[{i}]: not a domain name: {d!r}")
        if d.lower() in local:
            raise ConfigError(
                f"local.virtual_domains[{i}]: {d!r} is also in local.domains (a domain is either local or virtual)"
            )
    if any(c in cfg.local.recipient_delimiter for c in '@" \t\\'):
        raise ConfigError(
            f"local.recipient_delimiter: {cfg.local.recipient_delimiter!r} may not contain @, quotes, blanks or backslashes"
        )
    if cfg.queue.retry_max < cfg.queue.retry_min:
        raise ConfigError("queue.retry_max: must be >= queue.retry_min")
    if not cfg.queue.control_socket:
        raise ConfigError("queue.control_socket: must not be empty")
    r = cfg.relay
    check_networks(r.trusted_networks, "relay.trusted_networks", token=False)
    check_networks(cfg.screen.greylist.exempt_networks, "screen.greylist.exempt_networks")
    if cfg.screen.greylist.retry_window <= cfg.screen.greylist.delay:
        raise ConfigError("screen.greylist.retry_window: must be longer than screen.greylist.delay")
    check_networks(cfg.smtpd.limit_exempt_networks, "smtpd.limit_exempt_networks")
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
            raise ConfigError(
                f"{key}: {domain!r} is neither in local.domains nor routed to local by relay.transport, so this mailbox would never get mail"
            )
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
            raise ConfigError(
                f"smtpd.listeners[{i}].mode: a submissions listener (implicit TLS) needs smtpd.tls.cert_file and smtpd.tls.key_file"
            )
        if lst.mode == "submission" and not cfg.smtpd.auth.allow_plaintext:
            raise ConfigError(
                f"smtpd.listeners[{i}].mode: a submission listener needs smtpd.tls.cert_file and smtpd.tls.key_file "
                "(or smtpd.auth.allow_plaintext = true, which sends passwords in the clear)"
            )
        if lst.mode == "pop3s":
            raise ConfigError(
                f"smtpd.listeners[{i}].mode: a pop3s listener (implicit TLS) needs smtpd.tls.cert_file and smtpd.tls.key_file"
            )
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
    _check_dkim(cfg)


def _check_dkim(cfg: Config) -> None:
    d = cfg.dkim
    seen: dict[tuple[str, str], int] = {}
    for i, k in enumerate(d.keys):
        key = f"dkim.keys[{i}]"
        domain = k.domain.strip().lower().rstrip(".")
        if not domain or any(c in domain for c in " /@[]\t") or ".." in domain:
            raise ConfigError(f"{key}.domain: not a domain name: {k.domain!r}")
        try:
            domain = a_label(domain)  # a Unicode domain signs as its A-label (RFC 8616)
        except DkimKeyError as e:
            raise ConfigError(f"{key}.domain: {e}") from None
        # a domain may have several keys (each signs: RFC 8463 advises RSA and
        # Ed25519 side by side), but each under a selector of its own
        if (domain, k.selector.lower()) in seen:
            raise ConfigError(
                f"{key}: {k.domain!r} already has a key with selector {k.selector!r} "
                f"(dkim.keys[{seen[domain, k.selector.lower()]}])"
            )
        seen[domain, k.selector.lower()] = i
        if not k.selector or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in k.selector):
            raise ConfigError(f"{key}.selector: not a selector (letters, digits, - _ .): {k.selector!r}")
        if not k.key_file:
            raise ConfigError(f"{key}.key_file: a key file is needed (smtprs dkim keygen writes one)")
        try:
            load_key(cfg.path(k.key_file), k.algorithm)
        except DkimKeyError as e:
            raise ConfigError(f"{key}.key_file: {e}") from None
    names = [h.lower() for h in d.sign_headers]
    if "from" not in names:
        raise ConfigError("dkim.sign_headers: must include from (RFC 6376 5.4)")
    for what, fields in (("sign_headers", names), ("oversign_headers", [h.lower() for h in d.oversign_headers])):
        for j, h in enumerate(fields):
            if not h or any(c.isspace() or c == ":" or not c.isascii() for c in h):
                raise ConfigError(f"dkim.{what}[{j}]: not a header field name: {h!r}")
            if h in DKIM_NEVER_SIGN:
                raise ConfigError(f"dkim.{what}[{j}]: {h} is not to be signed (RFC 6376 5.4)")
