"""Parsers of the configuration's value syntaxes (host:port, next hops, transports,
mailbox owner and mode), shared by the checks at load time and the stages that
read the values (router, SMTP client)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..errors import ConfigError


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
        path = text[len("unix:") :]
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
        raise ConfigError(f'{key}: expected an octal mode such as "0700" or "0750", got {text!r}') from None
    if not 0 <= mode <= 0o777 or mode & 0o700 != 0o700:
        raise ConfigError(f"{key}: expected a mode from 0700 to 0777 (the owner keeps rwx), got {text!r}")
    return mode


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(names: list[str], trusted: list[str]) -> list[Network]:
    """CIDR strings as networks; ``$trusted_networks`` stands for ``trusted`` (relay.trusted_networks)."""
    out: list[Network] = []
    for n in names:
        out += [ipaddress.ip_network(t, strict=False) for t in (trusted if n == "$trusted_networks" else [n])]
    return out


def check_networks(names: list[str], key: str, *, token: bool = True) -> None:
    """ConfigError naming ``key[i]`` for an entry that is not a CIDR network (nor, with
    ``token``, ``$trusted_networks``)."""
    for i, net in enumerate(names):
        if token and net == "$trusted_networks":
            continue
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            what = "a network (CIDR) or $trusted_networks" if token else "a network (CIDR)"
            raise ConfigError(f"{key}[{i}]: not {what}: {net!r}") from None


def client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address (an IPv4-mapped IPv6 address as its IPv4 one); None if ``ip`` is not one."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def address_in(ip: str, nets: list[Network]) -> bool:
    """Is ``ip`` (an IPv4-mapped IPv6 address as its IPv4 one) in one of ``nets``?"""
    addr = client_address(ip) if nets else None
    return addr is not None and any(addr in net for net in nets)
