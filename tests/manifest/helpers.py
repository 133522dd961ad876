"""Shared helpers for the manifest tests."""

from __future__ import annotations

import pytest

from capos_sched.manifest import ManifestError, load_plan_text

BASE = 'machine: cpus: 1\nprocesses: p: threads: t: workload: kind: "spin"\n'
"""A minimal valid manifest; tests append to it or replace parts of it."""


def at(text: str, needle: str, occurrence: int = 1) -> tuple[int, int]:
    """1-based (line, column) of the ``occurrence``-th ``needle`` in ``text``.

    Tests state expected positions by pointing at the text they mean, so a
    position is checked against the source, not against the implementation.
    """
    index = -1
    for _ in range(occurrence):
        index = text.index(needle, index + 1)
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column


def errors(text: str, filename: str = "m.cue") -> list[tuple[int, int, str]]:
    """Every (line, col, message) loading ``text`` reports; fails if it loads."""
    with pytest.raises(ManifestError) as info:
        load_plan_text(text, filename)
    return [(d.line, d.col, d.message) for d in info.value.diagnostics]


def error_at(text: str, needle: str, message: str, occurrence: int = 1) -> None:
    """Assert that loading ``text`` reports exactly one error: ``message`` at ``needle``."""
    assert errors(text) == [(*at(text, needle, occurrence), message)]
