"""CUE values, for the subset capos-sched evaluates: the lattice's elements.

:class:`Top` is above everything, :class:`~.problems.Bottom` (an error)
below; between them concrete :class:`Atom` scalars, non-concrete
:class:`Constraint` scalars (types, bounds and ``!=`` exclusions), structs,
lists and disjunctions with defaults. :class:`Lazy` stands for a value not
computed yet (a reference, or what combines one): CUE evaluates a field only
when it is needed, which is what lets a field refer to a sibling subtree of
its own enclosing field, or a definition to itself through an optional field.

Values are immutable once built (a Lazy changes only from "not computed" to
its value; a struct or list caches whether it contains an error); parts are
shared freely.
"""

from __future__ import annotations

import decimal
import functools
import json
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from .errors import Pos
from .problems import Bottom, Problem

INT, FLOAT, STRING, BOOL, NULL, STRUCT, LIST = (
    "int",
    "float",
    "string",
    "bool",
    "null",
    "struct",
    "list",
)
NUMBER_KINDS = frozenset({INT, FLOAT})
ALL_KINDS = frozenset({INT, FLOAT, STRING, BOOL, NULL, STRUCT, LIST})


@attrs.frozen(slots=True)
class Top:
    """``_``: unifies with anything, yielding the other value."""

    pos: Pos | None = None


@attrs.frozen(slots=True)
class Atom:
    """A concrete scalar: ``kind`` is int, float (a Decimal), string, bool or null."""

    kind: str
    value: Any
    pos: Pos

    def same_as(self, other: Atom) -> bool:
        return self.kind == other.kind and self.value == other.value


@attrs.frozen(slots=True)
class Limit:
    """One side of a numeric bound: ``>=value`` when inclusive, ``>value`` otherwise."""

    value: int | decimal.Decimal
    inclusive: bool


@attrs.frozen(slots=True)
class Constraint:
    """A non-concrete scalar: one of ``kinds``, within ``low``/``high``, and
    equal to none of ``excluded``.

    Invariants: ``kinds`` is non-empty; bounds only occur with number kinds.
    """

    kinds: frozenset[str]
    pos: Pos | None
    low: Limit | None = None
    high: Limit | None = None
    excluded: tuple[Atom, ...] = ()

    def describe(self) -> str:
        """In CUE syntax: ``int & >=1 & <=10000``."""
        parts = [describe_kinds(self.kinds)] if self.kinds != ALL_KINDS else []
        if parts == ["number"] and (self.low or self.high):
            parts = []
        if self.low:
            parts.append((">=" if self.low.inclusive else ">") + str(self.low.value))
        if self.high:
            parts.append(("<=" if self.high.inclusive else "<") + str(self.high.value))
        parts.extend("!=" + describe_atom(atom) for atom in self.excluded)
        return " & ".join(parts) if parts else "_"

    def range_text(self) -> str:
        """How a bound violation reads: "outside [1, 10000]", "must be >= 1" ..."""
        low, high = self.low, self.high
        if low and high:
            left = "[" if low.inclusive else "("
            right = "]" if high.inclusive else ")"
            return f"outside {left}{low.value}, {high.value}{right}"
        if low:
            return f"must be {'>=' if low.inclusive else '>'} {low.value}"
        if high:
            return f"must be {'<=' if high.inclusive else '<'} {high.value}"
        return "is not allowed"  # pragma: no cover - only called with a bound


@attrs.frozen(slots=True)
class Field:
    """A field of a struct value. ``pos`` is a label position, the manifest's
    when the manifest declares the field (so diagnostics point there)."""

    value: Value
    optional: bool
    pos: Pos


@attrs.frozen(slots=True)
class Closedness:
    """One closing definition's rule: the labels it declares and the
    patterns of its pattern constraints. A regular field is allowed when its
    label is declared or matches a pattern (see unification.allows)."""

    labels: frozenset[str]
    patterns: tuple[Value, ...]


_UNKNOWN = None


@attrs.define(slots=True, eq=False)
class Struct:
    """A struct value.

    ``fields`` holds regular fields, ``hidden`` holds definitions and hidden
    fields (never exported, never checked for closedness: the spec exempts
    them). ``patterns`` are (pattern, constraint) pairs; ``closed`` lists the
    rules of every definition that closed this struct (all must allow a
    field); ``closed_deep`` is True when :func:`unification.close` made it
    (closing it again changes nothing).

    Invariant: every field already satisfies this struct's own patterns and
    closedness rules, so unification checks only the fields other structs bring.
    ``failed`` (see :func:`is_failed`) is None until known: True when a
    non-optional field is, or contains, an error.
    """

    fields: dict[str, Field]
    hidden: dict[str, Field]
    patterns: tuple[tuple[Value, Value], ...]
    closed: tuple[Closedness, ...]
    pos: Pos | None
    failed: bool | None = _UNKNOWN
    closed_deep: bool = False


@attrs.define(slots=True, eq=False)
class List:
    """A list value: ``items``, then (for an open list) any number of ``tail``
    elements. ``failed`` as for Struct."""

    items: tuple[Value, ...]
    tail: Value | None
    pos: Pos | None
    failed: bool | None = _UNKNOWN


@attrs.frozen(slots=True)
class Disjunction:
    """``alternatives`` (at least two, none an error) with the default
    alternatives, or None when the disjunction has no default."""

    alternatives: tuple[Value, ...]
    defaults: tuple[Value, ...] | None
    pos: Pos | None


# --------------------------------------------------------------------------
# Lazy values


class Forcing:
    """The Lazy values being computed, innermost last, for one evaluation.

    A Lazy that is needed while it is being computed is a reference cycle:
    it contributes ``_`` to itself (CUE: ``a: b & 2, b: a`` gives 2 for
    both). Every value computed inside the cycle, above the Lazy it closes,
    saw that provisional ``_`` and is computed again when next needed; the
    Lazy that closes the cycle keeps its result. ``cycles_met`` counts the
    cycles met by every evaluation in the process (only ever incremented), so
    that a cache of a derived fact can tell whether it saw one.
    """

    cycles_met: ClassVar[int] = 0

    def __init__(self) -> None:
        self.provisional: list[bool] = []

    def cycle_to(self, depth: int) -> None:
        Forcing.cycles_met += 1
        for index in range(depth + 1, len(self.provisional)):
            self.provisional[index] = True


_PENDING, _FORCING, _DONE = 0, 1, 2


class Lazy:
    """A value computed on first need (and kept, unless a cycle made it provisional)."""

    __slots__ = ("_compute", "_depth", "_state", "_value", "forcing", "pos")

    def __init__(self, compute: Callable[[], Value], forcing: Forcing, pos: Pos | None) -> None:
        self._compute: Callable[[], Value] | None = compute
        self._state = _PENDING
        self._value: Value | None = None
        self._depth = 0
        self.forcing = forcing
        self.pos = pos

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def value(self) -> Value:
        """The computed value; only when :attr:`done`."""
        assert self._value is not None
        return self._value

    def force(self) -> Value:
        if self._state == _DONE:
            return self._value  # type: ignore[return-value]
        forcing = self.forcing
        if self._state == _FORCING:
            forcing.cycle_to(self._depth)
            return Top(self.pos)
        assert self._compute is not None
        self._state = _FORCING
        self._depth = len(forcing.provisional)
        forcing.provisional.append(False)
        try:
            value = self._compute()
            while isinstance(value, Lazy):
                value = value.force()
        except BaseException:
            self._state = _PENDING
            forcing.provisional.pop()
            raise
        if forcing.provisional.pop():
            self._state = _PENDING
        else:
            self._state = _DONE
            self._value = value
            self._compute = None
        return value

    def __repr__(self) -> str:
        return f"Lazy({self._value!r})" if self._state == _DONE else "Lazy(...)"


Value = Top | Bottom | Atom | Constraint | Struct | List | Disjunction | Lazy


def force(value: Value) -> Value:
    """``value``, computed if it is Lazy (the result is never Lazy)."""
    while isinstance(value, Lazy):
        value = value.force()
    return value


def deferred(operands: tuple[Value, ...], compute: Callable[..., Value]) -> Value:
    """``compute(*operands)``, or a Lazy for it when an operand is a Lazy not
    computed yet (computing it now could close a cycle that is none)."""
    pending = next((v for v in operands if isinstance(v, Lazy) and not v.done), None)
    if pending is None:
        values = tuple(v.value if isinstance(v, Lazy) else v for v in operands)
        return compute(*values)
    return Lazy(lambda: compute(*(force(v) for v in operands)), pending.forcing, pending.pos)


# --------------------------------------------------------------------------
# Construction and queries


def make_struct(
    fields: dict[str, Field],
    hidden: dict[str, Field],
    patterns: tuple[tuple[Value, Value], ...],
    closed: tuple[Closedness, ...],
    pos: Pos | None,
) -> Struct:
    """A struct; whether it failed is settled now when no field is Lazy."""
    failed: bool | None = False
    for table in (fields, hidden):
        for field in table.values():
            if field.optional:
                continue
            value = field.value
            if isinstance(value, Lazy):
                failed = _UNKNOWN
            elif isinstance(value, Bottom) or (
                isinstance(value, Struct | List) and value.failed is True
            ):
                return Struct(fields, hidden, patterns, closed, pos, True)
            elif isinstance(value, Struct | List) and value.failed is None:
                failed = _UNKNOWN
    return Struct(fields, hidden, patterns, closed, pos, failed)


def make_list(items: tuple[Value, ...], tail: Value | None, pos: Pos | None) -> List:
    return List(items, tail, pos)


def is_failed(value: Value) -> bool:
    """True for a bottom and for a struct or list that contains one (in a
    non-optional field); computes Lazy parts as needed."""
    value = force(value)
    if isinstance(value, Bottom):
        return True
    if isinstance(value, Struct | List):
        if value.failed is None:
            cycles_before = Forcing.cycles_met
            failed = _contains_failure(value)
            if cycles_before == Forcing.cycles_met:  # else it may have seen a provisional `_`
                value.failed = failed
            return failed
        return value.failed
    return False


def _contains_failure(value: Struct | List) -> bool:
    if isinstance(value, List):
        return any(is_failed(item) for item in value.items)
    for table in (value.fields, value.hidden):
        for field in table.values():
            if not field.optional and is_failed(field.value):
                return True
    return False


def problems_in(value: Value) -> tuple[Problem, ...]:
    """Every problem inside a failed value (non-optional fields only)."""
    value = force(value)
    if isinstance(value, Bottom):
        return value.problems
    found: list[Problem] = []
    if isinstance(value, Struct) and is_failed(value):
        for table in (value.fields, value.hidden):
            for label, field in table.items():
                if not field.optional and is_failed(field.value):
                    found.extend(p.with_label(label) for p in problems_in(field.value))
    elif isinstance(value, List) and is_failed(value):
        for item in value.items:
            found.extend(problems_in(item))
    return tuple(found)


def value_pos(value: Value) -> Pos | None:
    if isinstance(value, Bottom):
        return value.problems[0].pos if value.problems else None
    return value.pos


@functools.cache
def describe_kinds(kinds: frozenset[str]) -> str:
    if kinds == NUMBER_KINDS:
        return "number"
    if kinds == ALL_KINDS:
        return "_"
    order = [INT, FLOAT, STRING, BOOL, NULL, STRUCT, LIST]
    return " | ".join(k for k in order if k in kinds)


def describe_atom(atom: Atom) -> str:
    """An atom in CUE syntax (strings quoted and escaped)."""
    if atom.kind == STRING:
        return json.dumps(atom.value, ensure_ascii=False)
    if atom.kind == BOOL:
        return "true" if atom.value else "false"
    if atom.kind == NULL:
        return "null"
    if atom.kind == FLOAT:
        text = str(atom.value)
        return text if any(c in text for c in ".eE") else text + ".0"
    return str(atom.value)


def describe(value: Value) -> str:
    """A short description for messages: the value itself if scalar."""
    value = force(value)
    if isinstance(value, Atom):
        return describe_atom(value)
    if isinstance(value, Constraint):
        return value.describe()
    if isinstance(value, Struct):
        return "a struct"
    if isinstance(value, List):
        return "a list"
    if isinstance(value, Top):
        return "_"
    if isinstance(value, Disjunction):
        return " | ".join(describe(v) for v in value.alternatives)
    return "_|_"


def kind_name(value: Value) -> str:
    """The type a value has or requires, for "expected int, got ..." messages."""
    value = force(value)
    if isinstance(value, Atom):
        return value.kind
    if isinstance(value, Constraint):
        return describe_kinds(value.kinds)
    if isinstance(value, Struct):
        return STRUCT
    if isinstance(value, List):
        return LIST
    return describe(value)


def same_value(a: Value, b: Value) -> bool:
    """Whether two values are the same CUE value (positions aside): a
    disjunction keeps one of two equal alternatives (CUE: ``{a: 1} | {a: 1}``
    is ``{a: 1}``)."""
    if a is b:
        return True
    if isinstance(a, Lazy) or isinstance(b, Lazy):
        a, b = force(a), force(b)
        if a is b:
            return True
    if type(a) is not type(b):
        return False
    if isinstance(a, Atom) and isinstance(b, Atom):
        return a.same_as(b)
    if isinstance(a, Constraint) and isinstance(b, Constraint):
        return (
            a.kinds == b.kinds
            and a.low == b.low
            and a.high == b.high
            and len(a.excluded) == len(b.excluded)
            and all(x.same_as(y) for x, y in zip(a.excluded, b.excluded, strict=True))
        )
    if isinstance(a, Top) and isinstance(b, Top):
        return True
    if isinstance(a, Struct) and isinstance(b, Struct):
        return (
            _same_fields(a.fields, b.fields)
            and _same_fields(a.hidden, b.hidden)
            and _same_pairs(a.patterns, b.patterns)
            and len(a.closed) == len(b.closed)
            and all(_same_rule(x, y) for x, y in zip(a.closed, b.closed, strict=True))
        )
    if isinstance(a, List) and isinstance(b, List):
        return (
            len(a.items) == len(b.items)
            and all(same_value(x, y) for x, y in zip(a.items, b.items, strict=True))
            and (a.tail is None) == (b.tail is None)
            and (a.tail is None or same_value(a.tail, b.tail))  # type: ignore[arg-type]
        )
    if isinstance(a, Disjunction) and isinstance(b, Disjunction):
        return _same_tuple(a.alternatives, b.alternatives) and (
            a.defaults is b.defaults
            or (
                a.defaults is not None
                and b.defaults is not None
                and _same_tuple(a.defaults, b.defaults)
            )
        )
    return False


def _same_fields(a: dict[str, Field], b: dict[str, Field]) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k].optional == b[k].optional and same_value(a[k].value, b[k].value) for k in a)


def _same_tuple(a: tuple[Value, ...], b: tuple[Value, ...]) -> bool:
    return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))


def _same_pairs(a: tuple[tuple[Value, Value], ...], b: tuple[tuple[Value, Value], ...]) -> bool:
    return len(a) == len(b) and all(
        same_value(p, q) and same_value(c, d) for (p, c), (q, d) in zip(a, b, strict=True)
    )


def _same_rule(a: Closedness, b: Closedness) -> bool:
    return a.labels == b.labels and _same_tuple(a.patterns, b.patterns)
