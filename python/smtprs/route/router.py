"""The router: recipient address -> next hop, the one place routing is decided.

Reads the configuration (local and virtual domains, users, mailbox templates,
the delivery kind) and the addressing tables of ``aliases.py`` (the aliases
file and the virtual map).  Used twice:

- by the session at RCPT time: ``expand(path)`` turns the address the client
  gave into the final recipients -- virtual map, aliases (nested, with loop
  detection and a depth bound), sub-addressing, case folding, catch-all -- or
  refuses it (unknown user, alias loop, or relay denied: mail for another
  domain is taken only when the session's policy lets this client relay).  The expanded
  recipients are what the envelope stores, each with its own delivery state.
  An address enters an envelope only through ``expand``.
- by the scheduler at delivery time: ``route(address)`` maps a stored (already
  expanded) address to its next hop -- a Maildir, an mbox file, the LMTP
  server, or another host over SMTP -- without expanding again, so a configuration change of the
  delivery kind or of the mailbox paths applies to mail already queued.

Why expand at RCPT and not at delivery (Postfix's local does aliases at
delivery): a refused alias is refused while the client is still there, and
every final recipient then has its own state in the envelope -- one delivered,
another deferred -- with nothing to re-expand (and double) on a retry.  The
original address is kept beside each expanded one (``Recipient.original``)
for the log and for delivery status notifications.

A remote recipient's next hop comes from, in order: the transport map (the
domain itself, then ``.parent`` keys for its subdomains), the relayhost, and
DNS (the MX records of the recipient's domain, looked up by the SMTP agent
through deliver/mx.py).  Whether a client may relay at all is the session's
decision (``relay_allowed``, from smtpd/policy.py), passed in here; the
router only refuses.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from .. import _core
from .. import reply as R
from ..config import Config, Transport, dir_mode, mailbox_ids, parse_nexthop, parse_transport
from ..errors import AddressError
from ..hops import Discard, LmtpMailbox, LocalMailbox, Mailbox, MboxMailbox, NextHop, RemoteHop, Unroutable
from .aliases import Table, load_aliases, load_virtual

# Local parts that may name a mailbox directory: no "/", no leading dot, no
# "%" or "!" (no routing tricks), nothing a shell or a path would read twice.
_SAFE_USER = re.compile(r"[a-z0-9_=+-][a-z0-9._=+-]{0,63}")
_SAFE_USER_CASED = re.compile(r"[A-Za-z0-9_=+-][A-Za-z0-9._=+-]{0,63}")

MAX_ALIAS_DEPTH = 20  # nesting of aliases / virtual entries before we call it a loop
MAX_EXPANSION = 1000  # final recipients one address may expand to
MAX_VISITS = 10000  # lookups one expansion may make (a wide, deep tree)
ROUTE_CACHE_MAX = 4096  # addresses whose next hop Router.route remembers
# transports that make an address or domain a final destination of ours: mail
# for it is taken without relay permission (smtp ones are relaying)
FINAL_TRANSPORTS = ("lmtp", "local", "error", "discard")


@dataclass(frozen=True)
class Expansion:
    """The final recipients of one address, in order, without duplicates."""

    addresses: tuple[str, ...]


class _Refused(Exception):
    def __init__(self, reply: R.Reply) -> None:
        self.reply = reply


class Router:
    def __init__(self, cfg: Config) -> None:
        """Reads the aliases file and virtual map now (raises ConfigError)."""
        self.cfg = cfg
        loc = cfg.local
        self.case_sensitive = loc.case_sensitive
        self._domains = {d.lower() for d in loc.domains}
        self._virtual_domains = {d.lower() for d in loc.virtual_domains}
        self._users = {self._fold(u) for u in loc.users}
        self._default_domain = loc.domains[0].lower()
        self._delimiters = loc.recipient_delimiter
        self._safe = _SAFE_USER_CASED if self.case_sensitive else _SAFE_USER
        aliases_path = cfg.file_path(loc.aliases)
        virtual_path = cfg.file_path(loc.virtual_map)
        self.aliases = load_aliases(aliases_path, case_sensitive=self.case_sensitive) if aliases_path else Table()
        self.virtual = load_virtual(virtual_path, case_sensitive=self.case_sensitive) if virtual_path else Table()
        r = cfg.relay
        self._transport: dict[str, Transport] = {}
        for key, value in r.transport.items():
            spec = parse_transport(value, f"relay.transport.{key}", r.smtp_port)
            local, at, dom = key.rpartition("@")
            self._transport[f"{self._fold(local)}@{dom.lower().rstrip('.')}" if at else key.lower().rstrip(".")] = spec
        self._mode = dir_mode(loc.mailbox_mode)
        self._owner = mailbox_ids(loc.mailbox_owner)
        self._mailboxes: dict[str, tuple[str, Path]] = {}
        for address, entry in loc.mailboxes.items():
            local, _, dom = address.rpartition("@")
            kind = "maildir" if entry.maildir else "mbox"
            self._mailboxes[f"{self._fold(local)}@{dom.lower().rstrip('.')}"] = (
                kind,
                cfg.path(entry.maildir or entry.mbox),
            )
        self._tls_policy = {k.lower().strip("[]"): v for k, v in r.tls_policy.items()}
        # route() answers depend only on the configuration, which a Router never
        # changes (a reload builds a new one): remembered, bounded.
        self._routes: dict[str, NextHop] = {}

    # -- small helpers -----------------------------------------------------------
    def _fold(self, local_part: str) -> str:
        return local_part if self.case_sensitive else local_part.lower()

    def _base(self, local_part: str) -> str:
        """``user+tag`` -> ``user`` (the first delimiter character ends the name)."""
        for i, ch in enumerate(local_part):
            if ch in self._delimiters and i > 0:
                return local_part[:i]
        return local_part

    def is_local(self, domain: str) -> bool:
        return domain.lower() in self._domains

    def is_virtual(self, domain: str) -> bool:
        return domain.lower() in self._virtual_domains

    def is_ours(self, domain: str) -> bool:
        """A domain we take mail for: local or virtual."""
        d = domain.lower()
        return d in self._domains or d in self._virtual_domains

    # -- at RCPT -------------------------------------------------------------------
    def check_recipient(self, path: _core.Path, *, relay_allowed: bool = False) -> R.Reply | None:
        """At RCPT: None if we take mail for ``path``, else the reply refusing it."""
        result = self.expand(path, relay_allowed=relay_allowed)
        return result.reply if isinstance(result, Unroutable) else None

    def expand(self, path: _core.Path, *, relay_allowed: bool = False) -> Expansion | Unroutable:
        """At RCPT: the final recipients of ``path``, or the reply refusing it.

        Mail for other domains is taken only when the session's policy allows
        this client to relay (``relay_allowed``); otherwise 554 5.7.1.  Remote
        targets of aliases and virtual entries are the administrator's choice
        and need no relay permission.
        """
        local_part, domain = path.local_part, path.domain
        if not domain:
            # RFC 5321 4.1.1.3: <Postmaster> without a domain must be accepted
            if local_part.lower() != "postmaster":
                return Unroutable(R.Reply(553, "5.1.3", "Bad recipient address syntax"))
            domain = self._default_domain
        if not self.is_ours(domain):
            spec = self.transport_of(local_part, domain)
            if not relay_allowed and (spec is None or spec.kind not in FINAL_TRANSPORTS):
                return Unroutable(R.RELAY_DENIED)
            hop = self.route(path.address())
            return hop if isinstance(hop, Unroutable) else Expansion((path.address(),))
        out: dict[str, None] = {}
        visits = [0]
        try:
            self._visit(local_part, domain, (), out, visits)
        except _Refused as e:
            return Unroutable(e.reply)
        original = f"{local_part}@{domain}"
        for address in out:
            hop = self.route(address)
            if isinstance(hop, Unroutable):
                if address.lower() == original.lower():
                    return hop
                r = hop.reply
                return Unroutable(R.Reply(r.code, r.enhanced, f"<{original}> expands to <{address}>: {r.first_line}"))
        return Expansion(tuple(out))

    def _visit(
        self, local_part: str, domain: str, chain: tuple[str, ...], out: dict[str, None], visits: list[int]
    ) -> None:
        visits[0] += 1
        if visits[0] > MAX_VISITS:
            raise _Refused(R.Reply(550, "5.4.6", f"Alias expansion of <{chain[0]}> is too large"))
        d = domain.lower()
        if not self.is_ours(d):  # a remote target of an alias or virtual entry
            out[f"{local_part}@{domain}"] = None
            self._check_size(out, chain)
            return
        lp = self._fold(local_part)
        node = f"{lp}@{d}"
        if node in chain:
            raise _Refused(R.Reply(550, "5.4.6", "Alias loop: " + " -> ".join((*chain, node))))
        if len(chain) >= MAX_ALIAS_DEPTH:
            raise _Refused(R.Reply(550, "5.4.6", f"Aliases of <{chain[0]}> nested more than {MAX_ALIAS_DEPTH} deep"))
        chain = (*chain, node)
        base = self._base(lp)
        # 1. the virtual map, for virtual and local domains: user+tag@d, then user@d
        for key in dict.fromkeys((node, f"{base}@{d}")):
            entry = self.virtual.get(key)
            if entry is not None:
                for t in entry.targets:
                    self._visit_target(t, self._default_domain, None, chain, out, visits)
                return
        if self.is_virtual(d):
            self._catch_all(lp, d, chain, out, visits)
            return
        # 2. the aliases file, for local domains: user+tag, then user
        for key in dict.fromkeys((lp, base)):
            entry = self.aliases.get(key)
            if entry is not None:
                for t in entry.targets:
                    self._visit_target(t, d, key, chain, out, visits)
                return
        # 3. a mailbox
        self._mailbox(lp, d, chain, out, visits)

    def _visit_target(
        self,
        target: str,
        domain: str,
        alias: str | None,
        chain: tuple[str, ...],
        out: dict[str, None],
        visits: list[int],
    ) -> None:
        """One target of an alias (``alias`` is its name) or of a virtual entry."""
        if target.startswith("\\"):  # \name: the mailbox itself
            self._mailbox(self._fold(target[1:]), domain, chain, out, visits, direct=True)
            return
        local, at, dom = target.rpartition("@")
        if not at:
            local, dom = target, domain
        if alias is not None and self._fold(local) == alias and self.is_local(dom):
            # "alice: alice, ..." names alice's own mailbox, not the alias again
            self._mailbox(alias, dom.lower(), chain, out, visits, direct=True)
            return
        self._visit(local, dom, chain, out, visits)

    def _mailbox(
        self, lp: str, d: str, chain: tuple[str, ...], out: dict[str, None], visits: list[int], direct: bool = False
    ) -> None:
        user = self._base(lp)
        if self._listed(lp, d):  # its own mailbox or transport: it exists, whatever its name
            out[f"{lp}@{d}"] = None
            self._check_size(out, chain)
            return
        spec = self.transport_of(lp, d)
        names_a_path = spec is None or spec.kind == "local"
        if names_a_path and (not self._safe.fullmatch(user) or ".." in user):
            raise _Refused(self._about(chain, R.BAD_MAILBOX_NAME))
        if self._users and user not in self._users and user.lower() != "postmaster":
            if not direct:
                self._catch_all(lp, d, chain, out, visits)
                return
            raise _Refused(self._about(chain, R.UNKNOWN_USER))
        out[f"{lp}@{d}"] = None
        self._check_size(out, chain)

    def _catch_all(self, lp: str, d: str, chain: tuple[str, ...], out: dict[str, None], visits: list[int]) -> None:
        entry = self.virtual.get(f"@{d}")
        if entry is None:
            raise _Refused(self._about(chain, R.UNKNOWN_USER))
        for t in entry.targets:
            self._visit_target(t, self._default_domain, None, chain, out, visits)

    @staticmethod
    def _about(chain: tuple[str, ...], reply: R.Reply) -> R.Reply:
        """The reply, naming the alias target at fault when it is not the address itself."""
        if len(chain) <= 1:
            return reply
        return R.Reply(reply.code, reply.enhanced, f"<{chain[0]}>: alias target <{chain[-1]}>: {reply.first_line}")

    @staticmethod
    def _check_size(out: dict[str, None], chain: tuple[str, ...]) -> None:
        if len(out) > MAX_EXPANSION:
            raise _Refused(R.Reply(550, "5.5.3", f"<{chain[0]}> expands to more than {MAX_EXPANSION} recipients"))

    def alias_problems(self) -> list[str]:
        """Each alias that cannot be expanded (a loop, an unknown target), for check-config and the log."""
        problems = []
        for name, entry in self.aliases.entries.items():
            try:
                path = _core.parse_mailbox(f"{name}@{self._default_domain}", smtputf8=True)
            except AddressError:
                continue
            result = self.expand(path)
            if isinstance(result, Unroutable):
                problems.append(f"{entry.origin}: alias {name}: {result.reply}")
        return problems

    # -- at delivery ----------------------------------------------------------------
    def route(self, address: str) -> NextHop:
        """At delivery: the next hop for an address stored in an envelope (already expanded).

        Asked at RCPT and again at each delivery attempt, mostly for the same
        addresses; the answer (a frozen value) is kept for the next time."""
        hop = self._routes.get(address)
        if hop is None:
            hop = self._route(address)
            if len(self._routes) >= ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[address] = hop
        return hop

    def _route(self, address: str) -> NextHop:
        if "@" not in address:
            local_part, domain = address, ""
        else:
            try:
                path = _core.parse_mailbox(address, smtputf8=True)
            except AddressError:
                return Unroutable(R.Reply(550, "5.1.3", "Bad recipient address syntax"))
            local_part, domain = path.local_part, path.domain
        if not domain:
            if local_part.lower() != "postmaster":
                return Unroutable(R.Reply(553, "5.1.3", "Bad recipient address syntax"))
            domain = self._default_domain
        d = domain.lower()
        spec = self.transport_of(local_part, d)
        if spec is not None:
            # the stored address is in RFC 5321 form (a local part quoted where it must be): given on as is
            return self._by_transport(spec, local_part, d, address if "@" in address else f"{local_part}@{d}")
        if self.is_virtual(d):
            # not expected (expand() rewrites virtual addresses), but an address
            # stored by an older version is still delivered if it maps to one mailbox
            try:
                result = self.expand(_core.parse_mailbox(f"{local_part}@{d}", smtputf8=True))
            except AddressError:
                return Unroutable(R.Reply(550, "5.1.3", "Bad recipient address syntax"))
            if isinstance(result, Unroutable):
                return result
            if len(result.addresses) != 1 or self.is_virtual(result.addresses[0].rpartition("@")[2]):
                return Unroutable(R.Reply(550, "5.1.1", "Virtual address was not expanded"))
            return self.route(result.addresses[0])
        if not self.is_local(d):
            return self._remote(d)
        return self._local(local_part, d)

    def _local(self, local_part: str, d: str) -> Mailbox | Unroutable:
        """The mailbox of a recipient of a local domain (or of one routed ``local``)."""
        lp = self._fold(local_part)
        user = self._base(lp)
        box = self._listed_mailbox(lp, d)
        if box is not None:
            return box
        if not self._safe.fullmatch(user) or ".." in user:
            return Unroutable(R.BAD_MAILBOX_NAME)
        if self._users and user not in self._users and user.lower() != "postmaster":
            return Unroutable(R.UNKNOWN_USER)
        return self.mailbox(user, d)

    def _by_transport(self, spec: Transport, local_part: str, d: str, address: str) -> NextHop:
        if spec.kind == "local":
            return self._local(local_part, d)
        if spec.kind == "lmtp":
            return LmtpMailbox(self._fold(local_part), d, address, spec.server)
        if spec.kind == "error":
            return Unroutable(R.Reply(spec.code, spec.enhanced, spec.text))
        if spec.kind == "discard":
            return Discard(spec.text)
        host = spec.host or d  # smtp: alone is the recipient domain's MX
        return RemoteHop(d, host, spec.port, spec.mx if spec.host else True, self._tls_for(d, host))

    # -- the tables: transport map and per-address mailboxes --------------------------
    def transport_of(self, local_part: str, domain: str) -> Transport | None:
        """The transport map's entry for an address: ``user+tag@d``, ``user@d``, ``d``,
        then ``.parent`` keys (as Postfix's transport(5) with address keys); None if none."""
        if not self._transport:
            return None
        d = domain.lower().rstrip(".")
        lp = self._fold(local_part)
        for key in dict.fromkeys((f"{lp}@{d}", f"{self._base(lp)}@{d}")):
            spec = self._transport.get(key)
            if spec is not None:
                return spec
        return self._transport_for(d)

    def _listed(self, lp: str, d: str) -> bool:
        """The address has an entry of its own: in local.mailboxes, or a final
        transport keyed by the address."""
        if self._listed_mailbox(lp, d) is not None:
            return True
        for key in dict.fromkeys((f"{lp}@{d}", f"{self._base(lp)}@{d}")):
            spec = self._transport.get(key)
            if spec is not None and spec.kind in FINAL_TRANSPORTS:
                return True
        return False

    def _listed_mailbox(self, lp: str, d: str) -> LocalMailbox | MboxMailbox | None:
        if not self._mailboxes:
            return None
        for key in dict.fromkeys((f"{lp}@{d}", f"{self._base(lp)}@{d}")):
            entry = self._mailboxes.get(key)
            if entry is not None:
                kind, path = entry
                user = key.rpartition("@")[0]
                if kind == "mbox":
                    return MboxMailbox(user, d, path, self._mode, self._owner)
                return LocalMailbox(user, d, path, self._mode, self._owner)
        return None

    def maildir_of(self, login: str) -> Path:
        """The Maildir that POP3 serves to ``login`` (``user`` or ``user@local.domain``,
        matched as RCPT would be: case-folded, sub-address tag removed).
        Raises ValueError for a login that names no local mailbox."""
        local, at, domain = login.rpartition("@")
        if not at:
            local, domain = login, self._default_domain
        lp, d = self._fold(local), domain.lower()
        user = self._base(lp)
        box = self._listed_mailbox(lp, d)
        if isinstance(box, LocalMailbox):
            return box.maildir
        if box is not None or not self.is_local(d) or not self._safe.fullmatch(user) or ".." in user:
            raise ValueError(f"{login!r} names no local Maildir")
        return self.cfg.maildir_path(user, d)

    def _remote(self, domain: str) -> RemoteHop | Unroutable:
        r = self.cfg.relay
        d = domain.lower().rstrip(".")
        if d.startswith("["):  # an address literal: that host, no DNS
            literal = d[1:-1]
            if literal.startswith("ipv6:"):
                literal = literal[5:]
            try:
                ip = ipaddress.ip_address(literal)
            except ValueError:
                return Unroutable(R.Reply(550, "5.1.2", "Unsupported address literal"))
            return RemoteHop(d, str(ip), r.smtp_port, False, self._tls_for(d, str(ip)))
        if r.relayhost:
            host, port, mx = parse_nexthop(r.relayhost, "relay.relayhost", r.smtp_port)
            return RemoteHop(d, host, port, mx, self._tls_for(d, host), auth=bool(r.auth_username))
        return RemoteHop(d, d, r.smtp_port, True, self._tls_for(d, d))

    def _transport_for(self, domain: str) -> Transport | None:
        if domain in self._transport:
            return self._transport[domain]
        parts = domain.split(".")
        for i in range(1, len(parts)):
            key = "." + ".".join(parts[i:])
            if key in self._transport:
                return self._transport[key]
        return None

    def _tls_for(self, domain: str, host: str) -> str:
        return self._tls_policy.get(domain) or self._tls_policy.get(host) or self.cfg.relay.tls

    def mailbox(self, user: str, domain: str) -> Mailbox:
        """The next hop of a local mailbox, by ``local.delivery``."""
        kind = self.cfg.local.delivery
        if kind == "mbox":
            return MboxMailbox(user, domain, self.cfg.mbox_path(user, domain), self._mode, self._owner)
        if kind == "lmtp":
            return LmtpMailbox(user, domain, f"{user}@{domain}", self.cfg.local.lmtp)
        return LocalMailbox(user, domain, self.cfg.maildir_path(user, domain), self._mode, self._owner)
