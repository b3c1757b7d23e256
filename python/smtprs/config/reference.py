"""The configuration reference, generated from the definitions in schema.py, so
the documentation cannot drift from the code."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Literal

from .schema import Config

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
                n = "one" if f.default_factory() else "none"  # type: ignore[operator]
                out.append(f"| `{prefix}{f.name}` | array of tables | {n}, see below | {f.metadata['doc']} |")
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
