"""Loading a manifest: read, parse, unify with the schema, export, validate.

Loading is atomic: it returns a whole valid Plan or raises ManifestError
listing every problem found; nothing else escapes, whatever the input.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import structlog

from capos_sched import paths

from . import syntax
from .errors import Diagnostic, Diagnostics, ManifestError, Pos, Source
from .evaluator import Evaluator, Exported, close_root, export
from .plan import Plan
from .render import json_text
from .validate import build_plan

DEFAULT_MANIFEST: Path = paths.DEFAULT_MANIFEST
"""The default boot manifest (absolute path)."""
SCHEMA_PATH: Path = paths.MANIFEST_SCHEMA
"""The manifest schema, written in the manifest language."""

_log = structlog.get_logger(__name__)


@functools.cache
def schema_file() -> syntax.File:
    """The parsed schema (parsed once per process)."""
    diagnostics = Diagnostics()
    try:
        text = SCHEMA_PATH.read_text(encoding="utf-8")
    except OSError as error:
        raise ManifestError(
            (Diagnostic.whole_file(str(SCHEMA_PATH), f"cannot read the schema: {error.strerror}"),)
        ) from None
    parsed = syntax.parse(Source(str(SCHEMA_PATH), text, is_schema=True), diagnostics)
    diagnostics.raise_if_any()
    assert parsed is not None
    return parsed


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the duration of a load.

    A load allocates hundreds of thousands of small, acyclic objects (AST
    nodes, values); each allocation burst triggers collections that rescan
    all of them, which cost about a third of a large load. Reference counting
    still frees everything; the collector resumes afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def evaluate(
    source: Source, diagnostics: Diagnostics, with_schema: bool = True
) -> tuple[syntax.File, Exported] | None:
    """Parse ``source`` and export it, unified with the schema unless
    ``with_schema`` is False (problems go to ``diagnostics``)."""
    parsed = syntax.parse(source, diagnostics)
    if parsed is None:
        return None
    if not with_schema:
        evaluator = Evaluator([parsed])
        evaluator.check_references(diagnostics)
        return parsed, export(evaluator.root(), source, diagnostics, parsed.complete)
    evaluator = Evaluator([schema_file(), parsed])
    evaluator.check_references(diagnostics)
    root = close_root(evaluator.root(), evaluator.schema_labels())
    return parsed, export(root, source, diagnostics, parsed.complete)


def export_text(text: str, filename: str = "<string>", with_schema: bool = True) -> Any:
    """The data ``cue export`` would print for ``text`` (with the schema, or as
    a standalone CUE file when ``with_schema`` is False), without the model
    checks. Floats come back as exact Decimals. Raises ManifestError."""
    diagnostics = Diagnostics()
    source = Source(filename, text)
    try:
        with _cyclic_gc_paused():
            evaluated = evaluate(source, diagnostics, with_schema)
    except RecursionError:
        diagnostics.error(Pos(source, 1, 1), "the manifest is nested too deeply to evaluate")
        evaluated = None
    diagnostics.raise_if_any()
    assert evaluated is not None
    return evaluated[1].data


def load_plan_text(text: str, filename: str = "<string>") -> Plan:
    """The Plan for manifest ``text``; ``filename`` is used in diagnostics.

    Raises ManifestError, and nothing else, when the manifest is not valid.
    """
    diagnostics = Diagnostics()
    source = Source(filename, text)
    try:
        with _cyclic_gc_paused():
            plan = _load(source, diagnostics)
    except ManifestError:
        raise
    except RecursionError:
        diagnostics.error(Pos(source, 1, 1), "the manifest is nested too deeply to evaluate")
        plan = None
    except Exception as error:  # the contract: ManifestError or a Plan, whatever the input
        _log.exception("manifest_internal_error", filename=filename)
        diagnostics.error(
            Pos(source, 1, 1),
            f"internal error while evaluating the manifest ({type(error).__name__}: {error}); "
            "this is a capos-sched bug",
        )
        plan = None
    diagnostics.raise_if_any()
    assert plan is not None
    return plan


def _load(source: Source, diagnostics: Diagnostics) -> Plan | None:
    evaluated = evaluate(source, diagnostics)
    if evaluated is None:
        return None
    parsed, exported = evaluated
    plan = build_plan(exported, parsed, source.filename, diagnostics)
    if plan is None or diagnostics:
        return None
    return _with_export(plan, exported)


def load_plan(path: str | os.PathLike[str]) -> Plan:
    """The Plan for the manifest file at ``path``.

    Raises ManifestError (never OSError or UnicodeDecodeError) for a file
    that cannot be read, is not UTF-8, or is not a valid manifest.
    """
    name = os.fspath(path)
    return load_plan_text(read_manifest(name), name)


def read_manifest(path: str | os.PathLike[str]) -> str:
    """The text of the manifest file at ``path``; ManifestError (never OSError or
    UnicodeDecodeError) for a file that cannot be read or is not UTF-8."""
    name = os.fspath(path)
    try:
        raw = Path(name).read_bytes()
    except IsADirectoryError:
        raise _file_error(name, "is a directory, not a manifest file") from None
    except FileNotFoundError:
        raise _file_error(name, "no such file") from None
    except OSError as error:
        raise _file_error(name, f"cannot read: {error.strerror or error}") from None
    return decode(raw, name)


def decode(raw: bytes, filename: str) -> str:
    """``raw`` as UTF-8 text, or ManifestError pointing at the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        before = raw[: error.start]
        line = before.count(b"\n") + 1
        line_start = before.rfind(b"\n") + 1
        column = len(before[line_start:].decode("utf-8", errors="replace")) + 1
        line_end = raw.find(b"\n", error.start)
        text = raw[line_start : None if line_end < 0 else line_end]
        shown = text.decode("utf-8", errors="replace")
        bad = raw[error.start]
        raise ManifestError(
            (
                Diagnostic(
                    filename,
                    line,
                    column,
                    f"the file is not valid UTF-8 (byte 0x{bad:02x})",
                    shown,
                ),
            )
        ) from None


def _file_error(filename: str, message: str) -> ManifestError:
    return ManifestError((Diagnostic.whole_file(filename, message),))


def _with_export(plan: Plan, exported: Exported) -> Plan:
    return attrs.evolve(plan, exported=json_text(exported.data, None))
