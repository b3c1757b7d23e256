"""``smtprs route test ADDRESS...`` and ``smtprs config show [-n]``: asking
where an address would go (as Exim's ``-bt``, sendmail's ``-bv``) and what the
configuration in force is (as Postfix's ``postconf`` / ``postconf -n``),
without sending anything and without touching the spool.

``route test`` builds the router and the relay policy as daemon.py does
(``Router(cfg)``, ``Policy(cfg)``) and asks them the server's own questions:
``Router.expand`` for the expansion (traced: a ``Router`` subclass records
each table hit and each address visited, so the steps shown are the real
expansion's, not a copy of it), ``Router.route`` for each final recipient's
next hop, the policy's ``relay_allowed`` for the RCPT answer a given client
would get, and deliver/mx.py's ``Resolver`` (``[dns]``) for the MX and
address lookups of a remote next hop.

``config show`` prints the effective configuration (the file over the
defaults) as TOML through tomli-w: every key, in schema order, secrets
masked; ``-n`` only what differs from the defaults.  Its output loads back as
a configuration giving the same ``Config`` (the masked secrets aside).

Imported by cli.py only (``register``); it imports no stage but route/ (the
router), smtpd/policy.py (the relay decision) and deliver/mx.py (the lookups).
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Any

import trio

from . import _core
from . import config as config_mod
from . import reply as R
from .cli_queue import load_config
from .errors import AddressError
from .hops import Discard, LmtpMailbox, LocalMailbox, MboxMailbox, NextHop, RemoteHop, Unroutable
from .route.aliases import Entry, Table
from .route.router import Expansion, Router

DEFAULT_CLIENT = "192.0.2.1"  # TEST-NET-1 (RFC 5737): an outside client, never in trusted_networks by accident
MASK = "********"
_SECRET = re.compile(r"password|secret", re.IGNORECASE)

# --------------------------------------------------------------------------
# config show


def _plain(value: Any) -> Any:
    """A configuration value as TOML's types: tables for dataclasses, in field order."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def config_tree(cfg: config_mod.Config) -> dict[str, Any]:
    """The whole configuration as nested dicts, in schema order."""
    tree: dict[str, Any] = _plain(cfg)
    return tree


def differences(cfg: Any, default: Any) -> dict[str, Any]:
    """The keys of ``cfg`` (a table) whose value differs from ``default``'s,
    recursing into sub-tables; a list or map key is kept whole."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        mine, theirs = getattr(cfg, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(mine):
            sub = differences(mine, theirs)
            if sub:
                out[f.name] = sub
        elif mine != theirs:
            out[f.name] = _plain(mine)
    return out


def mask_secrets(tree: Any) -> Any:
    """``tree`` with the value of every non-empty string key named like a
    password or a secret replaced by ``MASK``."""
    if isinstance(tree, dict):
        return {k: MASK if _SECRET.search(k) and isinstance(v, str) and v else mask_secrets(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [mask_secrets(v) for v in tree]
    return tree


def defaults_like(cfg_path: str | None) -> config_mod.Config:
    """The defaults as ``load`` would make them for a file at ``cfg_path``:
    data_dir resolved against the file's directory (the current one for none),
    so that -n does not list a data_dir the file never set."""
    base = Path(cfg_path).resolve().parent if cfg_path else Path.cwd()
    default = config_mod.Config()
    return dataclasses.replace(default, data_dir=str(base / default.data_dir))


def source_line(path: str | None, looked: list[str]) -> str:
    """The first comment line: which file the configuration came from."""
    if path is None:
        return "# smtprs config show: embedded defaults (no file: " + "; ".join(looked[:-1]) + ")"
    return f"# smtprs config show: from {Path(path).resolve()}"


def render_toml(tree: dict[str, Any], comments: list[str]) -> str:
    import tomli_w  # here, not at the top: every smtprs command imports this module to register its parsers

    body = tomli_w.dumps(tree)
    return "\n".join(comments) + "\n" + (("\n" + body) if body else "")


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    if args.non_default:
        tree = differences(cfg, defaults_like(args.config))
    else:
        tree = config_tree(cfg)
    if not args.show_secrets:
        tree = mask_secrets(tree)
    if args.json:
        json.dump(tree, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0
    comments = [source_line(args.config, args.config_looked)]
    if args.non_default:
        comments.append("# only the keys whose value differs from the default (as postconf -n)")
    if not args.show_secrets and tree != config_tree(cfg) and _has_mask(tree):
        comments.append(f'# secrets are shown as "{MASK}" (--show-secrets prints them)')
    sys.stdout.write(render_toml(tree, comments))
    return 0


def _has_mask(tree: Any) -> bool:
    if isinstance(tree, dict):
        return any(_has_mask(v) for v in tree.values())
    if isinstance(tree, list):
        return any(_has_mask(v) for v in tree)
    return bool(tree == MASK)


# --------------------------------------------------------------------------
# route test: the router's own expansion, traced


def _quoted(local_part: str) -> str:
    """A local part as written in an address: quoted unless it is a dot-atom (RFC 5321 4.1.2)."""
    if re.fullmatch(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*", local_part) or not (
        local_part.isascii()
    ):
        return local_part
    return '"' + local_part.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _TracedTable(Table):
    """A router's lookup table that records each hit in its router's trace."""

    label: str
    router: TracingRouter

    def get(self, key: str) -> Entry | None:
        entry = super().get(key)
        if entry is not None:
            self.router.record_hit(self.label, key, entry)
        return entry


class TracingRouter(Router):
    """The server's Router, recording the expansion's steps: each address it
    visits (``_visit``, with its nesting depth) and each table entry that
    matched (the aliases file, the virtual map, a catch-all).  The routing is
    the base class's, unchanged."""

    def __init__(self, cfg: config_mod.Config) -> None:
        super().__init__(cfg)
        self.trace: list[dict[str, Any]] = []
        self._depth = 0
        self._tracing = False
        self.aliases = self._traced(self.aliases, "aliases")
        self.virtual = self._traced(self.virtual, "virtual map")

    def _traced(self, table: Table, label: str) -> _TracedTable:
        t = _TracedTable(entries=table.entries)
        t.label, t.router = label, self
        return t

    def _visit(self, *args: Any, **kwargs: Any) -> None:
        local_part, domain = args[0], args[1]
        if self._tracing:
            self.trace.append({"depth": self._depth, "step": "address", "address": f"{local_part}@{domain}"})
        self._depth += 1
        try:
            super()._visit(*args, **kwargs)
        finally:
            self._depth -= 1

    def record_hit(self, label: str, key: str, entry: Entry) -> None:
        if not self._tracing:
            return
        table = "virtual map catch-all" if key.startswith("@") else label
        self.trace.append(
            {"depth": self._depth, "step": table, "key": key, "origin": entry.origin, "targets": list(entry.targets)}
        )

    def traced_expand(self, path: _core.Path) -> tuple[Expansion | Unroutable, list[dict[str, Any]]]:
        """The expansion as for a client allowed to relay (where the mail goes once
        accepted), with its steps."""
        self.trace, self._depth, self._tracing = [], 0, True
        try:
            result = self.expand(path, relay_allowed=True)
        finally:
            self._tracing = False
        return result, self.trace

    def normalised(self, path: _core.Path) -> tuple[str, list[str]]:
        """The address as the router matches it, and what was changed."""
        lp, domain = path.local_part, path.domain or self._default_domain
        notes = []
        if not path.domain:
            notes.append(f"no domain: {self._default_domain} (the first of local.domains)")
        if domain != domain.lower():
            notes.append("domain folded to lower case")
        if not self.is_ours(domain):
            return f"{_quoted(lp)}@{domain.lower()}", notes + [
                "not a local or virtual domain: the local part is kept as given"
            ]
        folded = self._fold(lp)
        if folded != lp:
            notes.append("local part folded to lower case (local.case_sensitive = false)")
        base = self._base(folded)
        if base != folded:
            notes.append(f'sub-address "{folded[len(base) :]}" removed (local.recipient_delimiter)')
        return f"{_quoted(base)}@{domain.lower()}", notes

    def transport_key(self, address: str) -> str | None:
        """Which relay.transport key matched ``address`` (the order transport_of looks in)."""
        local, _, domain = address.rpartition("@")
        spec = self.transport_of(local, domain)
        if spec is None:
            return None
        d = domain.lower().rstrip(".")
        lp = self._fold(local)
        parts = d.split(".")
        candidates = [f"{lp}@{d}", f"{self._base(lp)}@{d}", d] + [
            "." + ".".join(parts[i:]) for i in range(1, len(parts))
        ]
        first = next((c for c in candidates if c in self._transport), None)
        for key, value in self.cfg.relay.transport.items():
            k_local, at, k_dom = key.rpartition("@")
            norm = f"{self._fold(k_local)}@{k_dom.lower().rstrip('.')}" if at else key.lower().rstrip(".")
            if norm == first and self._transport[norm] == spec:
                return f"{json.dumps(key)} = {json.dumps(value)}"
        return "(an entry)"  # not expected: transport_of looked elsewhere than the candidates above


def _describe_hop(router: TracingRouter, address: str, hop: NextHop) -> dict[str, Any]:
    """What ``route(address)`` answered, for a person: the kind, where, and why."""
    cfg = router.cfg
    key = router.transport_key(address)
    via = f"relay.transport {key}" if key else None
    if isinstance(hop, LocalMailbox):
        d: dict[str, Any] = {"kind": "maildir", "path": str(hop.maildir)}
    elif isinstance(hop, MboxMailbox):
        d = {"kind": "mbox", "path": str(hop.path)}
    elif isinstance(hop, LmtpMailbox):
        d = {"kind": "lmtp", "server": hop.server, "rcpt": hop.rcpt}
    elif isinstance(hop, Discard):
        d = {"kind": "discard", "reason": hop.reason}
    elif isinstance(hop, Unroutable):
        d = {"kind": "refused", "reply": str(hop.reply)}
    else:
        d = {
            "kind": "smtp",
            "host": hop.host,
            "port": hop.port,
            "mx": hop.mx,
            "tls": hop.tls,
            "destination": hop.destination,
        }
        if key is None:
            if hop.domain.startswith("["):
                via = "address literal (no DNS)"
            elif cfg.relay.relayhost:
                via = f"relay.relayhost = {json.dumps(cfg.relay.relayhost)}" + (" (with AUTH)" if hop.auth else "")
            else:
                via = "DNS: the MX records of the domain (no transport entry, no relayhost)"
        policy = {k.lower().strip("[]") for k in cfg.relay.tls_policy}
        which = next((k for k in (hop.domain, hop.host) if k in policy), None)
        tls = [f"relay.tls_policy {json.dumps(which)} = {hop.tls}" if which else f"relay.tls = {hop.tls}"]
        if hop.mx and cfg.dane.mode != "off":
            tls.append(f"dane.mode {cfg.dane.mode}")
        if hop.mx and hop.host == hop.domain and cfg.mta_sts.enabled:
            tls.append("the domain's MTA-STS policy, if it publishes one (looked up at delivery)")
        d["tls_policy"] = tls
    if via is None and d["kind"] in ("maildir", "mbox", "lmtp"):
        local, _, domain = address.rpartition("@")
        listed = router._listed_mailbox(router._fold(local), domain.lower())  # local.mailboxes entry?
        if listed is not None:
            via = "local.mailboxes"
        else:
            kind = cfg.local.delivery
            template = getattr(cfg.local, "lmtp" if kind == "lmtp" else kind)
            via = f"local.delivery = {kind}, local.{kind} = {json.dumps(template)}"
    d["via"] = via
    return d


async def _lookup(router: TracingRouter, hop: RemoteHop, resolver: Any) -> dict[str, Any]:
    """The MX and address lookups delivery would make for ``hop``, through deliver/mx.py."""
    from .deliver.mx import DnsFailure

    out: dict[str, Any] = {}
    if hop.mx:
        try:
            names = await resolver.mx_hosts(hop.host)
        except DnsFailure as e:
            out["error"] = f"{e.code} {e.enhanced} {e.text}"
            out["permanent"] = e.permanent
            return out
        out["implicit_mx"] = names == [(0, hop.host)]
        out["mx"] = [{"preference": p, "host": n} for p, n in names]
    else:
        out["mx"] = [{"preference": None, "host": hop.host}]
    try:
        hosts = await resolver.hosts(hop.host, hop.mx)
    except DnsFailure as e:
        out["error"] = f"{e.code} {e.enhanced} {e.text}"
        out["permanent"] = e.permanent
        hosts = []
    for entry in out["mx"]:
        entry["addresses"] = [h.ip for h in hosts if h.name == entry["host"]]
    return out


def examine(
    router: TracingRouter,
    policy: Any,
    address: str,
    *,
    client: str,
    sender: str,
) -> dict[str, Any]:
    """Everything ``route test`` says about one address, but the DNS lookups."""
    result: dict[str, Any] = {"address": address, "client": client, "sender": sender}
    text = address if address.startswith("<") and address.endswith(">") else f"<{address}>"
    try:
        path = _core.parse_path(text, smtputf8=True, allow_null=False)
    except AddressError as e:
        reply = R.Reply(e.code, e.enhanced, str(e))
        result.update(refused=str(reply), rcpt=str(reply), recipients=[], steps=[], deliverable=False)
        return result
    result["normalised"], result["notes"] = router.normalised(path)
    expansion, steps = router.traced_expand(path)
    result["steps"] = steps
    if isinstance(expansion, Unroutable):
        result["refused"] = str(expansion.reply)
        result["recipients"] = []
    else:
        result["recipients"] = [
            {"address": a, "route": _describe_hop(router, a, router.route(a))} for a in expansion.addresses
        ]
    allowed = policy.relay_allowed(client, None)
    at_rcpt = router.expand(path, relay_allowed=allowed)
    result["rcpt"] = str(at_rcpt.reply if isinstance(at_rcpt, Unroutable) else R.RECIPIENT_OK)
    result["deliverable"] = "refused" not in result and all(
        r["route"]["kind"] != "refused" for r in result["recipients"]
    )
    return result


async def _resolve_all(router: TracingRouter, results: list[dict[str, Any]]) -> None:
    from .deliver.mx import Resolver

    cfg = router.cfg
    resolver = Resolver(cfg.dns, prefer=cfg.relay.address_preference, dnssec=cfg.dane.mode != "off")
    # one lookup per next hop however many recipients share it (an alias of 1000
    # remote addresses in one domain makes one): each bounded by dns.timeout
    answers: dict[tuple[str, bool], dict[str, Any]] = {}
    for res in results:
        for rcpt in res["recipients"]:
            hop = router.route(rcpt["address"])
            if isinstance(hop, RemoteHop):
                key = (hop.host, hop.mx)
                if key not in answers:
                    answers[key] = await _lookup(router, hop, resolver)
                rcpt["dns"] = answers[key]
                if "error" in rcpt["dns"]:
                    res["deliverable"] = False


def render(results: list[dict[str, Any]], head: str) -> str:
    lines = [head]
    for res in results:
        lines.append("")
        lines.append(f"address: {res['address']}")
        if "normalised" in res:
            notes = "; ".join(res["notes"])
            lines.append(f"  normalised: {res['normalised']}" + (f" ({notes})" if notes else ""))
        if res["steps"] and all(step["step"] == "address" for step in res["steps"]):
            lines.append("  expansion: none (no aliases or virtual map entry matched)")
        elif res["steps"]:
            lines.append("  expansion:")
            for step in res["steps"]:
                if step["step"] == "address":
                    lines.append("    " + "  " * (2 * step["depth"]) + step["address"])
                else:
                    pad = "    " + "  " * (2 * step["depth"] - 1)
                    lines.append(f"{pad}{step['step']} {step['origin']}: {step['key']} -> {', '.join(step['targets'])}")
        if "refused" in res:
            lines.append(f"  refused: {res['refused']}")
        else:
            lines.append(f"  recipients: {len(res['recipients'])}")
        for rcpt in res["recipients"]:
            lines += _render_recipient(rcpt)
        lines.append(f"  RCPT from {res['client']}: {res['rcpt']}")
        lines.append(f"  result: {'deliverable' if res['deliverable'] else 'NOT deliverable'}")
    return "\n".join(lines) + "\n"


def _render_recipient(rcpt: dict[str, Any]) -> list[str]:
    r = rcpt["route"]
    kind = r["kind"]
    head = f"    {rcpt['address']}: "
    if kind in ("maildir", "mbox"):
        out = [f"{head}local {kind} {r['path']} (via {r['via']})"]
    elif kind == "lmtp":
        out = [f"{head}lmtp {r['server']} as RCPT TO:<{r['rcpt']}> (via {r['via']})"]
    elif kind == "discard":
        out = [f"{head}discard{': ' + r['reason'] if r['reason'] else ''} (via {r['via']})"]
    elif kind == "refused":
        out = [f"{head}refused: {r['reply']}" + (f" (via {r['via']})" if r["via"] else "")]
    else:
        what = f"MX of {r['host']}" if r["mx"] else f"host {r['host']} (no MX lookup)"
        out = [f"{head}smtp to {what}, port {r['port']} (via {r['via']})"]
        out.append(f"      tls: {'; '.join(r['tls_policy'])}")
    dns = rcpt.get("dns")
    if dns is not None:
        if dns.get("implicit_mx"):
            out.append(f"      no MX record: implicit MX {r['host']} (RFC 5321 5.1)")
        for mx in dns.get("mx", []):
            addrs = ", ".join(mx["addresses"]) or "no address"
            if mx["preference"] is None and mx["addresses"] == [mx["host"]]:
                out.append(f"      {mx['host']}: an IP address, no lookup")
                continue
            pref = "" if mx["preference"] is None else f"MX {mx['preference']} "
            out.append(f"      {pref}{mx['host']}: {addrs}")
        if "error" in dns:
            fate = "bounced" if dns["permanent"] else "deferred"
            out.append(f"      DNS: {dns['error']} (mail would be {fate})")
    elif kind == "smtp":
        out.append("      DNS: not looked up (--no-dns)")
    return out


def cmd_route_test(args: argparse.Namespace) -> int:
    from .smtpd.policy import Policy

    cfg = load_config(args)
    try:
        client = str(ipaddress.ip_address(args.client))
    except ValueError:
        print(f"smtprs route test: --client: not an IP address: {args.client!r}", file=sys.stderr)
        return 2
    sender = args.sender or ""
    if sender:
        try:
            _core.parse_path(sender if sender.startswith("<") else f"<{sender}>", smtputf8=True)
        except AddressError as e:
            print(f"smtprs route test: --sender: {e}", file=sys.stderr)
            return 2
    router = TracingRouter(cfg)  # as daemon.build does (ConfigError for a bad aliases file or map)
    policy = Policy(cfg)
    results = [examine(router, policy, a, client=client, sender=sender) for a in args.addresses]
    if not args.no_dns:
        trio.run(_resolve_all, router, results)
    if args.json:
        json.dump(results, sys.stdout, indent=1, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        trusted = "in relay.trusted_networks" if policy.trusted(client) else "not in relay.trusted_networks"
        default = " (the default: an outside client; --client to change)" if args.client == DEFAULT_CLIENT else ""
        head = (
            f"configuration: {args.config or 'the embedded defaults'}\n"
            f"RCPT checked as from client {client}{default}, {trusted}, not authenticated"
            + (f", after MAIL FROM:<{sender.strip('<>')}>" if sender else "")
        )
        sys.stdout.write(render(results, head))
    return 0 if all(r["deliverable"] for r in results) else 1


# --------------------------------------------------------------------------
# argparse


def register(sub: Any) -> None:
    """Add ``route test`` and ``config show`` to cli.py's subcommands."""
    rsub = sub.add_parser("route", help="inspect routing").add_subparsers(dest="route_command", required=True)
    p = rsub.add_parser(
        "test",
        help="show where addresses would go: expansion, next hop, MX answer, the RCPT reply (sends nothing)",
    )
    p.add_argument("--config", "-c")
    p.add_argument("--sender", "-f", help="the envelope sender shown with the RCPT check (it changes no routing)")
    p.add_argument(
        "--client", default=DEFAULT_CLIENT, help=f"the client IP the RCPT check is made for (default {DEFAULT_CLIENT})"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--no-dns", action="store_true", help="no MX or address lookups")
    p.add_argument("addresses", nargs="+", metavar="ADDRESS")
    p.set_defaults(func=cmd_route_test)
    csub = sub.add_parser("config", help="inspect the configuration").add_subparsers(
        dest="config_command", required=True
    )
    p = csub.add_parser("show", help="print the effective configuration as TOML (-n: only what differs from defaults)")
    p.add_argument("--config", "-c")
    p.add_argument("-n", "--non-default", action="store_true", help="only the keys whose value is not the default")
    p.add_argument("--json", action="store_true", help="as one JSON object instead of TOML")
    p.add_argument("--show-secrets", action="store_true", help="print passwords and secrets instead of masking them")
    p.set_defaults(func=cmd_config_show)
