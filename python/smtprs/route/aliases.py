"""The addressing tables: the aliases file and the virtual map, parsed.

Reads two files named in the configuration, once, at start-up:

- ``local.aliases``, in the familiar /etc/aliases format (aliases(5))::

      # comment
      postmaster: root
      staff:      alice, bob@example.org,
                  "carol"            <- a line that starts with a blank continues the one before
      alice:      \\alice, alice@elsewhere.example   <- "\\name": the mailbox itself, no further lookup

  Names are local parts (no domain) and apply to every local domain.

- ``local.virtual_map``, in the style of Postfix's virtual(5)::

      info@example.net     alice
      sales@example.net    alice, bob@example.org
      @example.net         catchall                 <- the domain's catch-all

Targets are addresses (``user@domain``) or bare names (local mailboxes or
aliases).  File (``/path``), command (``|cmd``) and ``:include:`` targets are
refused with a ConfigError naming the file and line: smtprs never runs
commands or writes arbitrary files on a sender's behalf.

This module only parses and looks up; expansion (recursion, loops, limits)
belongs to the router, the one place routing is decided.  Keys are stored
case-folded unless ``case_sensitive``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

# a bare alias name or mailbox name as written in the files (local part syntax, loosely)
_NAME = re.compile(r"[^\s@,:\"\\<>()\[\];]+")


@dataclass(frozen=True)
class Entry:
    """One name (or address) and its targets, with where it was defined."""

    targets: tuple[str, ...]
    origin: str  # "file:line", for messages


@dataclass
class Table:
    """A lookup table: key -> targets.  Keys are already normalised."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def get(self, key: str) -> Entry | None:
        return self.entries.get(key)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries


def _logical_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each logical line: comments and blank lines
    dropped, lines starting with a blank joined to the one before."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    current: tuple[int, str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[:1] in (" ", "\t"):
            if current is None:
                raise ConfigError(f"{path}:{number}: continuation line without a line to continue")
            current = (current[0], current[1] + " " + stripped)
            continue
        if current is not None:
            yield current
        current = (number, stripped)
    if current is not None:
        yield current


def _split_targets(text: str, where: str) -> tuple[str, ...]:
    """Split ``a, "b c", d e`` on commas and blanks outside quotes."""
    out: list[str] = []
    token = ""
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            token += ch
        elif not quoted and (ch == "," or ch.isspace()):
            if token:
                out.append(token)
            token = ""
        else:
            token += ch
    if quoted:
        raise ConfigError(f"{where}: unbalanced quote")
    if token:
        out.append(token)
    return tuple(_check_target(t, where) for t in out)


def _check_target(target: str, where: str) -> str:
    t = target
    if t.startswith('"') and t.endswith('"') and len(t) >= 2:
        t = t[1:-1]
    if t.startswith("<") and t.endswith(">"):
        t = t[1:-1]
    if t.startswith(("/", "|", ":include:")) or t.lower().startswith(":include:"):
        raise ConfigError(f"{where}: target {target!r}: file, command and :include: targets are not supported")
    bare = t[1:] if t.startswith("\\") else t
    local, at, domain = bare.rpartition("@")
    if not at:
        local, domain = bare, ""
    if not local or not _NAME.fullmatch(local) or (at and not re.fullmatch(r"[A-Za-z0-9.-]+|\[[^\]]+\]", domain)):
        raise ConfigError(f"{where}: target {target!r} is not an address or a name")
    if t.startswith("\\") and at:
        raise ConfigError(f"{where}: target {target!r}: \\ marks a local mailbox name, without a domain")
    return t


def load_aliases(path: Path, *, case_sensitive: bool = False) -> Table:
    """Parse an aliases file; raises ConfigError naming file:line."""
    table = Table()
    for number, line in _logical_lines(path):
        where = f"{path}:{number}"
        m = re.match(r'("(?:[^"\\]|\\.)*"|[^:\s]+)\s*:(.*)$', line)
        if not m:
            raise ConfigError(f"{where}: expected 'name: address, ...'")
        name = m.group(1)
        if name.startswith('"'):
            name = name[1:-1]
        if not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: alias name {name!r} is not a local part (no domain, blanks or quotes)")
        key = name if case_sensitive else name.lower()
        targets = _split_targets(m.group(2), where)
        if not targets:
            raise ConfigError(f"{where}: alias {name!r} has no target")
        if key in table.entries:
            raise ConfigError(f"{where}: alias {name!r} is already defined at {table.entries[key].origin}")
        table.entries[key] = Entry(targets, where)
    return table


def load_virtual(path: Path, *, case_sensitive: bool = False) -> Table:
    """Parse a virtual map (``address targets`` / ``@domain targets``); raises ConfigError."""
    table = Table()
    for number, line in _logical_lines(path):
        where = f"{path}:{number}"
        key_text, rest = (line.split(None, 1) + [""])[:2]
        local, at, domain = key_text.rpartition("@")
        if (
            not at
            or not domain
            or not re.fullmatch(r"[A-Za-z0-9.-]+", domain)
            or (local and not _NAME.fullmatch(local))
        ):
            raise ConfigError(f"{where}: expected 'user@domain targets' or '@domain targets', got {key_text!r}")
        key = f"{local if case_sensitive else local.lower()}@{domain.lower()}"
        targets = _split_targets(rest, where)
        if not targets:
            raise ConfigError(f"{where}: {key_text!r} has no target")
        if any(t.startswith("\\") for t in targets):
            raise ConfigError(f"{where}: \\name targets belong in the aliases file")
        if key in table.entries:
            raise ConfigError(f"{where}: {key_text!r} is already defined at {table.entries[key].origin}")
        table.entries[key] = Entry(targets, where)
    return table
