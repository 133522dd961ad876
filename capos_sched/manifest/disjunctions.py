"""Disjunctions: ``a | *b``, their defaults, and unification across them.

Defaults combine by the spec's rules U0-U2 and D0-D2/M0-M3. An alternative
that fails is dropped, unless its failure is fatal (an unresolved reference,
a construct capos-sched does not evaluate): that is an error of the file,
which CUE reports wherever it stands, so the whole disjunction fails with it.
Equal alternatives collapse into one.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import unification
from .errors import Pos
from .lattice import (
    Atom,
    Constraint,
    Disjunction,
    Struct,
    Value,
    force,
    is_failed,
    problems_in,
    same_value,
)
from .problems import Bottom, Problem, explain_failed_alternatives


def alternatives_of(value: Value) -> tuple[tuple[Value, ...], tuple[Value, ...] | None]:
    """A value as (alternatives, defaults): the spec's ⟨v⟩ or ⟨v, d⟩."""
    value = force(value)
    if isinstance(value, Disjunction):
        return value.alternatives, value.defaults
    return (value,), None


def disjoin(terms: Sequence[Value], marked: Sequence[bool], pos: Pos | None) -> Value:
    """``t1 | *t2 | ...``, with defaults by the spec's rules.

    In a marked disjunction, a marked term contributes its own default if it
    has one (M2) else itself (M1); unmarked terms contribute none (M0, M3).
    In an unmarked disjunction the terms' own defaults carry over (D1, D2).
    """
    any_marked = any(marked)
    alternatives: list[Value] = []
    defaults: list[Value] = []
    failures: list[tuple[Problem, ...]] = []
    for term, is_marked in zip(terms, marked, strict=True):
        term_alts, term_defaults = alternatives_of(term)
        for alt in term_alts:
            if is_failed(alt):
                failures.append(problems_in(alt))
            else:
                _add_unique(alternatives, alt)
        if any_marked:
            if is_marked:
                for d in term_defaults if term_defaults is not None else term_alts:
                    if not is_failed(d):
                        _add_unique(defaults, d)
        elif term_defaults is not None:
            for d in term_defaults:
                _add_unique(defaults, d)
    fatal = _fatal(failures)
    if fatal is not None:
        return fatal
    if not alternatives:
        return Bottom(tuple(p for problems in failures for p in problems))
    return _make_disjunction(alternatives, defaults or None, pos)


def _fatal(failures: Sequence[tuple[Problem, ...]]) -> Bottom | None:
    fatal = tuple(p for problems in failures for p in problems if p.code.fatal)
    return Bottom(fatal) if fatal else None


def _make_disjunction(
    alternatives: list[Value], defaults: list[Value] | None, pos: Pos | None
) -> Value:
    if len(alternatives) == 1:
        return alternatives[0]
    return Disjunction(tuple(alternatives), None if not defaults else tuple(defaults), pos)


def _among(value: Value, values: tuple[Value, ...]) -> bool:
    return any(same_value(v, value) for v in values)


def _add_unique(values: list[Value], value: Value) -> None:
    if not any(same_value(v, value) for v in values):
        values.append(value)


def unify_disjunctions(a: Value, b: Value) -> Value:
    """``a & b`` where either is a disjunction: the cross product of the
    alternatives, without the failed ones; defaults likewise (U1, U2)."""
    a_alts, a_defaults = alternatives_of(a)
    b_alts, b_defaults = alternatives_of(b)
    results: list[Value] = []
    combined: list[tuple[Value, Value, Value]] = []  # (left, right, left & right), not failed
    failures: list[tuple[Problem, ...]] = []
    skipped: list[tuple[Value, Value]] = []
    for left in a_alts:
        for right in b_alts:
            if _obviously_conflicting(left, right):
                skipped.append((left, right))
                continue
            result = unification.unify(left, right)
            if is_failed(result):
                failures.append(problems_in(result))
            else:
                combined.append((left, right, result))
                _add_unique(results, result)
    fatal = _fatal(failures)
    if fatal is not None:
        return fatal
    if not results:
        # Only now are the skipped pairs' reasons worth computing.
        failures.extend(problems_in(unification.unify(left, right)) for left, right in skipped)
        return explain_failed_alternatives(failures)
    defaults: list[Value] | None = None
    if a_defaults is not None or b_defaults is not None:
        # A combination is a default when a side's part is one of its
        # defaults; a side without defaults takes no part in the choice (U1).
        # When both sides have defaults, the defaults are the combinations of
        # two defaults (U2); when none of those unifies, CUE (v0.4, which this
        # follows) falls back to the combinations with one default:
        # `(*1024 | int) & (*10000 | 1)` is 10000.
        both: list[Value] = []
        either: list[Value] = []
        for left, right, result in combined:
            left_default = a_defaults is None or _among(left, a_defaults)
            right_default = b_defaults is None or _among(right, b_defaults)
            if left_default and right_default:
                _add_unique(both, result)
            elif (left_default or right_default) and a_defaults and b_defaults:
                _add_unique(either, result)
        defaults = both or either
    pos = b.pos if not isinstance(b, Bottom) else None
    return _make_disjunction(results, defaults, pos)


def _obviously_conflicting(a: Value, b: Value) -> bool:
    """Whether unifying ``a`` and ``b`` certainly fails for a cheap reason: two
    different atoms, an atom of a type a constraint excludes, or two structs
    that disagree on a concrete field (typically ``kind``). Such pairs are
    unified in full only if the reason is needed for a message."""
    if isinstance(a, Struct):
        if not isinstance(b, Struct):
            return False
        small, large = (a, b) if len(a.fields) <= len(b.fields) else (b, a)
        for label, field in small.fields.items():
            other = large.fields.get(label)
            if other is not None and _atoms_differ(field.value, other.value):
                return True
        return False
    return _atoms_differ(a, b)


def _atoms_differ(x: Value, y: Value) -> bool:
    if isinstance(x, Atom):
        if isinstance(y, Atom):
            return not x.same_as(y)
        return isinstance(y, Constraint) and x.kind not in y.kinds
    return isinstance(x, Constraint) and isinstance(y, Atom) and y.kind not in x.kinds


def resolve_default(value: Value) -> Value:
    """The value export uses: a disjunction's single default, or its single
    alternative; otherwise the disjunction itself (still ambiguous)."""
    value = force(value)
    if not isinstance(value, Disjunction):
        return value
    if value.defaults is not None and len(value.defaults) == 1:
        return force(value.defaults[0])
    return value
