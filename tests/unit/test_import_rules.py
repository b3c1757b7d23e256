"""The import rules of ARCHITECTURE.md, checked over smtprs's import graph.

Every ``import`` and ``from ... import`` in python/smtprs counts, including
those under ``if TYPE_CHECKING:`` and inside functions: a type-only cycle is
still a cycle for a reader.  ``from . import x`` counts as an import of the
module ``x`` when there is one (and of the package's ``__init__`` only for a
name defined there); the compiled core (``_core``) is a leaf.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "python" / "smtprs"

STAGES = ("smtpd", "queue", "route", "deliver", "retrieve")
# the composition root and the programs around it: no stage imports them
OUTER = ("daemon", "api", "cli", "cli_queue", "cli_inspect", "supervisor", "sendmail", "testing", "__main__")
# (importer prefix, forbidden prefixes)
RULES = [
    ("smtprs.deliver", ["smtprs.queue", "smtprs.route", "smtprs.smtpd", "smtprs.retrieve"]),
    ("smtprs.queue", ["smtprs.smtpd", "smtprs.retrieve"]),
    ("smtprs.route", ["smtprs.queue", "smtprs.deliver", "smtprs.smtpd", "smtprs.retrieve"]),
    ("smtprs.retrieve", ["smtprs.queue", "smtprs.route", "smtprs.deliver", "smtprs.smtpd"]),
    # the shared values: below every stage
    ("smtprs.content", [f"smtprs.{s}" for s in STAGES]),
    ("smtprs.hops", [f"smtprs.{s}" for s in STAGES]),
    ("smtprs.hooks", [f"smtprs.{s}" for s in STAGES]),
    ("smtprs.envelope", [f"smtprs.{s}" for s in STAGES]),
    ("smtprs.reply", [f"smtprs.{s}" for s in STAGES]),
    ("smtprs.config", [f"smtprs.{s}" for s in STAGES]),
    ("smtprs.resolver", [f"smtprs.{s}" for s in STAGES]),
] + [(f"smtprs.{s}", [f"smtprs.{o}" for o in OUTER]) for s in STAGES]


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("smtprs"):
                    continue
                submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                graph[name].update(submodules)
                names = [a.name for a in node.names if f"{target}.{a.name}" not in mods and a.name != "_core"]
                if names and target in mods:
                    graph[name].add(target)
        graph[name].discard(name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (found := visit(m)) is not None:
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)) is not None:
            return found
    return None


def test_the_graph_is_read() -> None:
    """The checks below mean something only if the graph has the edges we know of."""
    g = _graph()
    assert "smtprs.smtpd.session" in g["smtprs.daemon"]
    assert "smtprs.hops" in g["smtprs.deliver.base"]
    assert "smtprs.smtpd.context" in g["smtprs.smtpd.session"]  # (a TYPE_CHECKING import)


def test_no_import_cycle() -> None:
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_cycle_finder_finds_one() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("importer,forbidden", RULES, ids=[r[0] for r in RULES])
def test_stage_rules(importer: str, forbidden: list[str]) -> None:
    bad = [
        (a, b)
        for a, targets in _graph().items()
        if a == importer or a.startswith(importer + ".")
        for b in targets
        if any(b == f or b.startswith(f + ".") for f in forbidden)
    ]
    assert bad == []
