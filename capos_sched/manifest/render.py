"""Rendering plain data as manifest (CUE) text.

``capos-sched export`` without ``--json`` prints this form: it is itself a
valid manifest (and valid CUE), so an exported manifest can be edited and
loaded again. The round trip ``data -> to_cue -> evaluate -> data`` is
property-tested.
"""

from __future__ import annotations

import decimal
import json
import math
import re
from typing import Any

_IDENTIFIER = re.compile(r"[A-Za-z$][A-Za-z0-9_$]*")
# Keywords and the literal names may be labels in CUE, but quoting them keeps
# the output obviously unambiguous to a reader.
_QUOTED_WORDS = frozenset({"package", "import", "true", "false", "null", "for", "if", "let", "in"})


def label(name: str) -> str:
    """A field label: bare when it is a plain identifier, else a quoted string."""
    if _IDENTIFIER.fullmatch(name) and name not in _QUOTED_WORDS:
        return name
    return string(name)


def string(value: str) -> str:
    """A CUE string literal. JSON's escapes (\\" \\\\ \\n \\t \\uXXXX ...) are all CUE escapes."""
    return json.dumps(value, ensure_ascii=False)


def scalar(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no CUE representation")
        return repr(value)
    if isinstance(value, decimal.Decimal):
        text = decimal_text(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, str):
        return string(value)
    raise TypeError(f"cannot render {type(value).__name__} as CUE")


def decimal_text(value: decimal.Decimal) -> str:
    """An exact decimal as CUE prints it: the shortest scientific form of the
    General Decimal Arithmetic spec (``1E+400``, ``0.25``, ``1.50``), which
    keeps every digit written (``0.1000000000000000055511151231257827``).
    CUE has no negative zero."""
    if value.is_zero():
        value = value.copy_abs()
    return str(value)


def json_text(data: Any, indent: int | None = 2) -> str:
    """``data`` as JSON, with exact decimals printed as CUE prints them (where
    ``json.dumps`` would go through a binary float: `0.1`, `Infinity`);
    compact (no spaces, one line) when ``indent`` is None."""
    separators = (",", ":") if indent is None else None
    try:
        return json.dumps(
            data, indent=indent, separators=separators, ensure_ascii=False, default=_no_decimals
        )
    except _HasDecimals:
        return _json(data, indent, 0)  # the same layout, written out by hand


class _HasDecimals(Exception):
    pass


def _no_decimals(value: Any) -> Any:
    raise _HasDecimals if isinstance(value, decimal.Decimal) else TypeError(value)


def _json(value: Any, indent: int | None, depth: int) -> str:
    inner = "" if indent is None else "\n" + " " * (indent * (depth + 1))
    outer = "" if indent is None else "\n" + " " * (indent * depth)
    colon = ":" if indent is None else ": "
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [
            f"{json.dumps(k, ensure_ascii=False)}{colon}{_json(v, indent, depth + 1)}"
            for k, v in value.items()
        ]
        return "{" + inner + ("," + inner).join(items) + outer + "}"
    if isinstance(value, list):
        if not value:
            return "[]"
        items = [_json(v, indent, depth + 1) for v in value]
        return "[" + inner + ("," + inner).join(items) + outer + "]"
    if isinstance(value, decimal.Decimal):
        return decimal_text(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} has no JSON representation")
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


def _value(value: Any, indent: int) -> str:
    pad = "\t" * indent
    if isinstance(value, dict):
        if not value:
            return "{}"
        lines = [f"{pad}\t{label(k)}: {_value(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + "\n".join(lines) + f"\n{pad}}}"
    if isinstance(value, list):
        if not value:
            return "[]"
        if not any(isinstance(v, dict | list) for v in value):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        lines = [f"{pad}\t{_value(v, indent + 1)}," for v in value]
        return "[\n" + "\n".join(lines) + f"\n{pad}]"
    return scalar(value)


def to_cue(data: dict[str, Any], package: str | None = "capos") -> str:
    """``data`` (a dict) as a manifest file: an optional package clause, then
    one top-level field per key."""
    blocks = [f"package {package}"] if package else []
    blocks.extend(f"{label(k)}: {_value(v, 0)}" for k, v in data.items())
    return "\n\n".join(blocks) + "\n"
