"""CUE values and their unification, for the subset capos-sched evaluates.

Values form CUE's lattice: :class:`Top` above everything, :class:`Bottom`
(an error) below, concrete :class:`Atom` scalars, non-concrete
:class:`Constraint` scalars (types, bounds and ``!=`` exclusions), structs,
lists, and disjunctions with defaults. :func:`unify` is the greatest lower
bound (CUE's ``&``); it never raises: a conflict yields a Bottom carrying a
located :class:`Problem`.

Semantics follow the CUE specification:

- unification distributes over disjunctions; defaults combine by the spec's
  rules U0-U2 and D0-D2/M0-M3 (see :func:`disjoin` and :func:`unify`);
- a struct unified with a struct merges field by field; pattern constraints
  (``[string]: T``) apply to every regular field whose label matches;
- a definition is closed when referenced (:func:`close`): it then rejects any
  regular field it neither declares nor matches with a pattern, recursively;
- a struct any of whose non-optional fields is an error is itself an error,
  for the purpose of eliminating disjuncts.

Every value is immutable once built; struct and list values share unchanged
parts freely.
"""

from __future__ import annotations

import decimal
import difflib
import functools
import json
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from .errors import Pos, show_name

# --------------------------------------------------------------------------
# Problems: what a Bottom says


MISMATCHES = frozenset({"conflict", "mismatch"})
"""Problem codes meaning "a concrete value or type clashed with another one".
When every alternative of a disjunction fails with one of these at the same
user value, the alternatives are summarised as "expected one of ..."."""


@attrs.frozen(slots=True)
class Problem:
    """Why a value is bottom.

    ``code`` is one of: conflict (two different concrete values), mismatch
    (a value of the wrong type), bound (outside a bound or an excluded value),
    closed (a field a closed struct does not allow), alternatives (no
    disjunct matched), length (lists of different lengths), reference,
    selector, bottom (an explicit ``_|_``), incomplete.

    For conflict and mismatch, ``expected``/``expected_pos`` describe the side
    that came from the constraint (left operand) and ``got``/``pos`` the other
    side; rendering prefers whichever position is in the manifest over one in
    the schema. ``label`` is the innermost field name, attached once known.
    """

    code: str
    pos: Pos
    text: str = ""
    label: str | None = None
    expected: str = ""
    expected_pos: Pos | None = None
    got: str = ""
    hint: str = ""
    candidates: frozenset[str] = frozenset()
    """For "closed": the allowed labels, for a "did you mean" computed only
    when the problem is reported (most problems die in failed disjuncts)."""

    def with_label(self, label: str) -> Problem:
        if self.label is not None:
            return self
        return Problem(
            self.code,
            self.pos,
            self.text,
            label,
            self.expected,
            self.expected_pos,
            self.got,
            self.hint,
            self.candidates,
        )

    def primary_pos(self) -> Pos:
        """The position to report: the manifest's side of a conflict if it has one."""
        other = self.expected_pos
        if self.code in MISMATCHES and other is not None and self.pos.source.is_schema:
            return self.pos if other.source.is_schema else other
        return self.pos

    def message(self) -> str:
        """The message, naming the field (``label``) when known."""
        name = show_name(self.label) if self.label else "value"
        plain = self.label if self.label and show_name(self.label)[0] == "`" else name
        if self.code == "conflict":
            primary = self.primary_pos()
            here, there = (self.got, self.expected)
            other = self.expected_pos
            if primary is not self.pos:
                here, there, other = self.expected, self.got, self.pos
            where = f" (other value at {other.short(primary.source)})" if other else ""
            return f"conflicting values for {name}: {here} and {there}{where}"
        if self.code == "mismatch":
            return f"{name}: expected {self.expected}, got {self.got}"
        if self.code == "bound":
            return f"{plain} {self.got} {self.text}"
        if self.code == "alternatives":
            text = f"unknown {plain} {self.got}; expected one of {self.expected}"
            return text + (f" (did you mean {self.hint}?)" if self.hint else "")
        if self.code == "closed":
            hint = _suggest(self.label or "", self.candidates) if self.label else ""
            return self.text + (f"; did you mean {show_name(hint)}?" if hint else "")
        return self.text


@attrs.frozen(slots=True)
class Bottom:
    """An error value. ``problems`` is empty for a silent bottom: one that
    stands for an error already reported elsewhere (see syntax.Poison)."""

    problems: tuple[Problem, ...]


# --------------------------------------------------------------------------
# Scalars


@attrs.frozen(slots=True)
class Top:
    """``_``: unifies with anything, yielding the other value."""

    pos: Pos | None = None


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


# --------------------------------------------------------------------------
# Structs and lists


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
    label is declared or matches a pattern."""

    labels: frozenset[str]
    patterns: tuple[Value, ...]

    def allows(self, label: str) -> bool:
        return label in self.labels or any(matches(p, label) for p in self.patterns)


@attrs.frozen(slots=True)
class Struct:
    """A struct value.

    ``fields`` holds regular fields, ``hidden`` holds definitions and hidden
    fields (never exported, never checked for closedness: the spec exempts
    hidden fields, and capos-sched accepts no definitions inside data).
    ``patterns`` are (pattern, constraint) pairs; ``closed`` lists the rules
    of every definition that closed this struct (all must allow a field).
    ``failed`` is True when a non-optional field is, or contains, an error.
    """

    fields: dict[str, Field]
    hidden: dict[str, Field]
    patterns: tuple[tuple[Value, Value], ...]
    closed: tuple[Closedness, ...]
    pos: Pos | None
    failed: bool


@attrs.frozen(slots=True)
class List:
    """A list value: ``items``, then (for an open list) any number of ``tail``
    elements. ``failed`` as for Struct."""

    items: tuple[Value, ...]
    tail: Value | None
    pos: Pos | None
    failed: bool


@attrs.frozen(slots=True)
class Disjunction:
    """``alternatives`` (at least two, none an error) with the default
    alternatives, or None when the disjunction has no default."""

    alternatives: tuple[Value, ...]
    defaults: tuple[Value, ...] | None
    pos: Pos | None


Value = Top | Bottom | Atom | Constraint | Struct | List | Disjunction


def is_failed(value: Value) -> bool:
    """True for a bottom and for a struct or list that contains one."""
    if isinstance(value, Bottom):
        return True
    if isinstance(value, Struct | List):
        return value.failed
    return False


def make_struct(
    fields: dict[str, Field],
    hidden: dict[str, Field],
    patterns: tuple[tuple[Value, Value], ...],
    closed: tuple[Closedness, ...],
    pos: Pos | None,
) -> Struct:
    failed = any(not f.optional and is_failed(f.value) for f in fields.values())
    if not failed:
        failed = any(not f.optional and is_failed(f.value) for f in hidden.values())
    return Struct(fields, hidden, patterns, closed, pos, failed)


def make_list(items: tuple[Value, ...], tail: Value | None, pos: Pos | None) -> List:
    return List(items, tail, pos, any(is_failed(v) for v in items))


def value_pos(value: Value) -> Pos | None:
    if isinstance(value, Bottom):
        return value.problems[0].pos if value.problems else None
    return value.pos


def describe(value: Value) -> str:
    """A short description for messages: the value itself if scalar."""
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
    if isinstance(value, Atom):
        return value.kind
    if isinstance(value, Constraint):
        return describe_kinds(value.kinds)
    if isinstance(value, Struct):
        return STRUCT
    if isinstance(value, List):
        return LIST
    return describe(value)


# --------------------------------------------------------------------------
# Pattern matching and closing


def matches(pattern: Value, label: str) -> bool:
    """Whether a pattern constraint ``[pattern]: ...`` applies to ``label``."""
    if (
        isinstance(pattern, Constraint)
        and not pattern.excluded
        and not (pattern.low or pattern.high)
    ):
        return STRING in pattern.kinds
    if isinstance(pattern, Atom):
        return pattern.kind == STRING and pattern.value == label
    if isinstance(pattern, Top):
        return True
    # Any other pattern (a disjunction of labels, a `!=` bound ...): the label
    # matches when it unifies with the pattern. The probe's position is never
    # reported: only whether the result failed matters.
    probe = Atom(STRING, label, value_pos(pattern))  # type: ignore[arg-type]
    return not is_failed(unify(pattern, probe))


def close(value: Value, cache: dict[int, Value] | None = None) -> Value:
    """The value a reference to a definition yields: recursively closed.

    ``cache`` (keyed by object identity; values are immutable) avoids closing
    a shared sub-value twice.
    """
    if cache is None:
        cache = {}
    key = id(value)
    if key in cache:
        return cache[key]
    result: Value = value
    if isinstance(value, Struct):
        rule = Closedness(frozenset(value.fields), tuple(p for p, _ in value.patterns))
        closed = value.closed if rule in value.closed else (*value.closed, rule)
        fields = {
            name: Field(close(f.value, cache), f.optional, f.pos)
            for name, f in value.fields.items()
        }
        hidden = {
            name: Field(close(f.value, cache), f.optional, f.pos)
            for name, f in value.hidden.items()
        }
        patterns = tuple((p, close(c, cache)) for p, c in value.patterns)
        result = Struct(fields, hidden, patterns, closed, value.pos, value.failed)
    elif isinstance(value, List):
        items = tuple(close(v, cache) for v in value.items)
        tail = None if value.tail is None else close(value.tail, cache)
        result = List(items, tail, value.pos, value.failed)
    elif isinstance(value, Disjunction):
        alternatives = tuple(close(v, cache) for v in value.alternatives)
        defaults = None
        if value.defaults is not None:
            defaults = tuple(close(v, cache) for v in value.defaults)
        result = Disjunction(alternatives, defaults, value.pos)
    cache[key] = result
    return result


# --------------------------------------------------------------------------
# Unification


def unify(a: Value, b: Value) -> Value:
    """``a & b``. By convention ``a`` is the constraint side (schema, pattern,
    earlier declaration) and ``b`` the value being checked; this only decides
    how a conflict is worded, never its outcome."""
    if a is b:
        return a
    if isinstance(a, Bottom):
        return _merge_bottoms(a, b) if isinstance(b, Bottom) else a
    if isinstance(b, Bottom):
        return b
    if isinstance(a, Top):
        return b
    if isinstance(b, Top):
        return a
    if isinstance(a, Disjunction) or isinstance(b, Disjunction):
        return _unify_disjunctions(a, b)
    if isinstance(a, Atom):
        if isinstance(b, Atom):
            return _unify_atoms(a, b)
        if isinstance(b, Constraint):
            return _check_atom(b, a, atom_is_left=True)
        return _mismatch(a, b)
    if isinstance(a, Constraint):
        if isinstance(b, Atom):
            return _check_atom(a, b, atom_is_left=False)
        if isinstance(b, Constraint):
            return _unify_constraints(a, b)
        if isinstance(b, Struct | List):
            return _constraint_with_composite(a, b)
        return _mismatch(a, b)  # pragma: no cover - every pair is handled above
    if isinstance(a, Struct):
        if isinstance(b, Struct):
            return unify_structs((a, b))
        if isinstance(b, Constraint):
            return _constraint_with_composite(b, a)
        return _mismatch(a, b)
    if isinstance(a, List):
        if isinstance(b, List):
            return _unify_lists(a, b)
        if isinstance(b, Constraint):
            return _constraint_with_composite(b, a)
        return _mismatch(a, b)
    return _mismatch(a, b)  # pragma: no cover


def unify_all(values: Sequence[Value]) -> Value:
    """Unify many values; structs are merged in one pass (linear in their
    fields, where folding pairwise would copy a growing struct each time)."""
    if len(values) == 1:
        return values[0]
    structs = [v for v in values if isinstance(v, Struct)]
    if len(structs) < 3:
        result = values[0]
        for value in values[1:]:
            result = unify(result, value)
        return result
    result = unify_structs(structs)
    for value in values:
        if not isinstance(value, Struct):
            result = unify(result, value)
    return result


def _merge_bottoms(a: Bottom, b: Bottom) -> Bottom:
    return Bottom(a.problems + tuple(p for p in b.problems if p not in a.problems))


def _unify_atoms(a: Atom, b: Atom) -> Value:
    if a.kind == b.kind and a.value == b.value:
        # Keep the manifest's position: later checks report at the value.
        return b if a.pos is not None and a.pos.source.is_schema else a
    return Bottom(
        (
            Problem(
                "conflict" if a.kind == b.kind else "mismatch",
                b.pos,
                expected=describe_atom(a) if a.kind == b.kind else a.kind,
                expected_pos=a.pos,
                got=_got(b),
            ),
        )
    )


def _got(value: Value) -> str:
    return describe_atom(value) if isinstance(value, Atom) else describe(value)


def _mismatch(a: Value, b: Value) -> Bottom:
    pos = value_pos(b) or value_pos(a)
    return Bottom(
        (
            Problem(
                "mismatch",
                pos,  # type: ignore[arg-type]
                expected=kind_name(a),
                expected_pos=value_pos(a),
                got=_got(b) if isinstance(b, Atom) else kind_name(b),
            ),
        )
    )


def _check_atom(constraint: Constraint, atom: Atom, atom_is_left: bool) -> Value:
    if atom.kind not in constraint.kinds:
        return Bottom(
            (
                Problem(
                    "mismatch",
                    atom.pos,
                    expected=describe_kinds(constraint.kinds),
                    expected_pos=constraint.pos,
                    got=describe_atom(atom),
                ),
            )
        )
    if (constraint.low or constraint.high) and not _within(
        atom.value, constraint.low, constraint.high
    ):
        return Bottom(
            (Problem("bound", atom.pos, text=constraint.range_text(), got=describe_atom(atom)),)
        )
    for excluded in constraint.excluded:
        if _equal_atoms(excluded, atom):
            return Bottom(
                (
                    Problem(
                        "bound",
                        atom.pos,
                        text=f"is not allowed (must be != {describe_atom(excluded)})",
                        got=describe_atom(atom),
                    ),
                )
            )
    return atom


def _equal_atoms(a: Atom, b: Atom) -> bool:
    # Integers and floats compare by numeric value (spec, comparison operators).
    if a.kind in NUMBER_KINDS and b.kind in NUMBER_KINDS:
        return a.value == b.value
    return a.kind == b.kind and a.value == b.value


def _within(value: Any, low: Limit | None, high: Limit | None) -> bool:
    if low is not None and (value < low.value or (value == low.value and not low.inclusive)):
        return False
    return not (
        high is not None and (value > high.value or (value == high.value and not high.inclusive))
    )


def _tighter_low(a: Limit | None, b: Limit | None) -> Limit | None:
    if a is None or b is None:
        return a or b
    if a.value != b.value:
        return a if a.value > b.value else b
    return a if not a.inclusive else b


def _tighter_high(a: Limit | None, b: Limit | None) -> Limit | None:
    if a is None or b is None:
        return a or b
    if a.value != b.value:
        return a if a.value < b.value else b
    return a if not a.inclusive else b


def _unify_constraints(a: Constraint, b: Constraint) -> Value:
    kinds = a.kinds & b.kinds
    if not kinds:
        return Bottom(
            (
                Problem(
                    "mismatch",
                    b.pos or a.pos,  # type: ignore[arg-type]
                    expected=describe_kinds(a.kinds),
                    expected_pos=a.pos,
                    got=describe_kinds(b.kinds),
                ),
            )
        )
    low = _tighter_low(a.low, b.low)
    high = _tighter_high(a.high, b.high)
    if low is not None and high is not None:
        empty = low.value > high.value or (
            low.value == high.value and not (low.inclusive and high.inclusive)
        )
        if empty:
            return Bottom(
                (
                    Problem(
                        "bound",
                        b.pos or a.pos,  # type: ignore[arg-type]
                        text="and the bounds leave no possible value",
                        got=f"{a.describe()} & {b.describe()}",
                    ),
                )
            )
    excluded = a.excluded + tuple(
        x for x in b.excluded if not any(x.same_as(y) for y in a.excluded)
    )
    if kinds == a.kinds and low is a.low and high is a.high and len(excluded) == len(a.excluded):
        return a
    pos = a.pos or b.pos
    if low is not None and high is not None and low.value == high.value and pos is not None:
        # `>=5 & <=5` admits one number: it is that number (spec, default
        # values: `(* >=5 | int) & (* <=5 | int)` resolves to 5).
        only = low.value
        kind = INT if INT in kinds and only == int(only) else FLOAT if FLOAT in kinds else None
        if kind is not None:
            value = int(only) if kind == INT else decimal.Decimal(only)
            return _check_atom(
                Constraint(kinds, pos, excluded=excluded), Atom(kind, value, pos), False
            )
    return Constraint(kinds, pos, low, high, excluded)


def _constraint_with_composite(constraint: Constraint, composite: Struct | List) -> Value:
    kind = STRUCT if isinstance(composite, Struct) else LIST
    if kind in constraint.kinds and constraint.low is None and constraint.high is None:
        return composite
    return _mismatch(constraint, composite)


def _label_problems(value: Value, label: str) -> Value:
    """Attach ``label`` to the problems of a bottom that do not name a field yet."""
    if isinstance(value, Bottom) and any(p.label is None for p in value.problems):
        return Bottom(tuple(p.with_label(label) for p in value.problems))
    return value


def _suggest(label: str, candidates: Iterable[str]) -> str:
    close_matches = difflib.get_close_matches(label, list(candidates), n=1, cutoff=0.6)
    return close_matches[0] if close_matches else ""


def _disallowed(rules: tuple[Closedness, ...], label: str, pos: Pos) -> Bottom | None:
    for rule in rules:
        if not rule.allows(label):
            return Bottom(
                (
                    Problem(
                        "closed",
                        pos,
                        text=f"field {show_name(label)} not allowed",
                        label=label,
                        candidates=rule.labels,
                    ),
                )
            )
    return None


def _merge_hidden(hidden: dict[str, Field], label: str, field: Field) -> None:
    """Unify ``field`` into ``hidden[label]`` (hidden fields merge like regular ones)."""
    previous = hidden.get(label)
    if previous is None:
        hidden[label] = field
        return
    merged = _label_problems(unify(previous.value, field.value), label)
    hidden[label] = Field(
        merged,
        previous.optional and field.optional,
        _prefer_manifest(previous.pos, field.pos),
    )


def _prefer_manifest(a: Pos, b: Pos) -> Pos:
    return b if a.source.is_schema and not b.source.is_schema else a


def unify_structs(structs: Sequence[Struct]) -> Struct:
    """Unify structs: merge fields, apply every struct's patterns and closedness
    rules to the fields the other structs bring."""
    if len(structs) == 1:
        return structs[0]
    if len(structs) == 2:
        return _unify_two_structs(structs[0], structs[1])
    # Group each label's declarations, remembering which structs declared it.
    by_label: dict[str, list[tuple[int, Field]]] = {}
    for index, struct in enumerate(structs):
        for label, field in struct.fields.items():
            entry = by_label.get(label)
            if entry is None:
                by_label[label] = [(index, field)]
            else:
                entry.append((index, field))
    # Only structs with patterns or closedness rules constrain others' fields.
    constraining = [
        (index, struct) for index, struct in enumerate(structs) if struct.patterns or struct.closed
    ]
    fields: dict[str, Field] = {}
    for label, entries in by_label.items():
        if len(entries) == 1:
            _, first = entries[0]
            value, optional, pos = first.value, first.optional, first.pos
        else:
            value = unify_all([f.value for _, f in entries])
            optional = all(f.optional for _, f in entries)
            pos = entries[0][1].pos
            for _, f in entries[1:]:
                pos = _prefer_manifest(pos, f.pos)
        if constraining:
            declared_by = {index for index, _ in entries} if len(entries) > 1 else {entries[0][0]}
            for index, struct in constraining:
                if index in declared_by:
                    continue
                for pattern, constraint in struct.patterns:
                    if matches(pattern, label):
                        value = unify(constraint, value)
                if struct.closed:
                    refused = _disallowed(struct.closed, label, pos)
                    if refused is not None:
                        value = refused
        if isinstance(value, Bottom):
            value = _label_problems(value, label)
        fields[label] = Field(value, optional, pos)

    hidden: dict[str, Field] = {}
    for struct in structs:
        for label, field in struct.hidden.items():
            _merge_hidden(hidden, label, field)

    patterns: list[tuple[Value, Value]] = []
    closed: list[Closedness] = []
    for struct in structs:
        patterns.extend(p for p in struct.patterns if p not in patterns)
        closed.extend(c for c in struct.closed if c not in closed)
    pos = structs[0].pos
    for struct in structs[1:]:
        if struct.pos is not None:
            pos = struct.pos if pos is None else _prefer_manifest(pos, struct.pos)
    return make_struct(fields, hidden, tuple(patterns), tuple(closed), pos)


def _constrain(value: Value, label: str, pos: Pos, other: Struct) -> Value:
    """``value``, a field only ``other``'s partner declares, under ``other``'s
    pattern constraints and closedness rules."""
    for pattern, constraint in other.patterns:
        if matches(pattern, label):
            value = unify(constraint, value)
    if other.closed:
        refused = _disallowed(other.closed, label, pos)
        if refused is not None:
            return refused
    return value


def _unify_two_structs(a: Struct, b: Struct) -> Struct:
    """The common case of :func:`unify_structs` (a schema struct and a
    manifest struct), without its bookkeeping."""
    fields: dict[str, Field] = {}
    b_fields = b.fields
    b_constrains = bool(b.patterns or b.closed)
    a_constrains = bool(a.patterns or a.closed)
    for label, fa in a.fields.items():
        fb = b_fields.get(label)
        if fb is None:
            value = fa.value
            if b_constrains:
                value = _constrain(value, label, fa.pos, b)
            field = fa if value is fa.value else Field(value, fa.optional, fa.pos)
        else:
            value = unify(fa.value, fb.value)
            pos = _prefer_manifest(fa.pos, fb.pos)
            field = Field(value, fa.optional and fb.optional, pos)
        if isinstance(field.value, Bottom):
            field = Field(_label_problems(field.value, label), field.optional, field.pos)
        fields[label] = field
    a_fields = a.fields
    for label, fb in b_fields.items():
        if label in a_fields:
            continue
        value = fb.value
        if a_constrains:
            value = _constrain(value, label, fb.pos, a)
        if isinstance(value, Bottom):
            value = _label_problems(value, label)
        fields[label] = fb if value is fb.value else Field(value, fb.optional, fb.pos)
    if not b.hidden:
        hidden = a.hidden
    elif not a.hidden:
        hidden = b.hidden
    else:
        hidden = dict(a.hidden)
        for label, field in b.hidden.items():
            _merge_hidden(hidden, label, field)
    patterns = a.patterns + tuple(p for p in b.patterns if p not in a.patterns)
    closed = a.closed + tuple(c for c in b.closed if c not in a.closed)
    pos = b.pos if a.pos is None else (a.pos if b.pos is None else _prefer_manifest(a.pos, b.pos))
    return make_struct(fields, hidden, patterns, closed, pos)


def _unify_lists(a: List, b: List) -> Value:
    n_a, n_b = len(a.items), len(b.items)
    if (a.tail is None and n_b > n_a) or (b.tail is None and n_a > n_b):
        closed_len = n_a if a.tail is None else n_b
        other_len = n_b if a.tail is None else n_a
        pos = b.pos or a.pos
        return Bottom(
            (
                Problem(
                    "length",
                    pos,  # type: ignore[arg-type]
                    text=f"list of {other_len} elements where {closed_len} are allowed",
                ),
            )
        )
    items: list[Value] = []
    for index in range(max(n_a, n_b)):
        left = a.items[index] if index < n_a else a.tail
        right = b.items[index] if index < n_b else b.tail
        assert left is not None and right is not None
        items.append(_label_problems(unify(left, right), f"[{index}]"))
    tail = None if a.tail is None or b.tail is None else unify(a.tail, b.tail)
    return make_list(tuple(items), tail, b.pos or a.pos)


# --------------------------------------------------------------------------
# Disjunctions


def alternatives_of(value: Value) -> tuple[tuple[Value, ...], tuple[Value, ...] | None]:
    """A value as (alternatives, defaults): the spec's ⟨v⟩ or ⟨v, d⟩."""
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
    failures: list[Bottom] = []
    for term, is_marked in zip(terms, marked, strict=True):
        term_alts, term_defaults = alternatives_of(term)
        for alt in term_alts:
            if is_failed(alt):
                failures.append(alt if isinstance(alt, Bottom) else Bottom(_problems_in(alt)))
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
    if not alternatives:
        problems: list[Problem] = []
        for failure in failures:
            problems.extend(failure.problems)
        return Bottom(tuple(problems))
    return _make_disjunction(alternatives, defaults or None, pos)


def _make_disjunction(
    alternatives: list[Value], defaults: list[Value] | None, pos: Pos | None
) -> Value:
    if len(alternatives) == 1:
        return alternatives[0]
    return Disjunction(tuple(alternatives), None if not defaults else tuple(defaults), pos)


def _add_unique(values: list[Value], value: Value) -> None:
    if isinstance(value, Atom):
        if any(isinstance(v, Atom) and v.same_as(value) for v in values):
            return
    elif any(v is value for v in values):
        return
    values.append(value)


def _unify_disjunctions(a: Value, b: Value) -> Value:
    a_alts, a_defaults = alternatives_of(a)
    b_alts, b_defaults = alternatives_of(b)
    results: list[Value] = []
    failures: list[Value] = []
    skipped: list[tuple[Value, Value]] = []
    for left in a_alts:
        for right in b_alts:
            if _obviously_conflicting(left, right):
                skipped.append((left, right))
                continue
            result = unify(left, right)
            if is_failed(result):
                failures.append(result)
            else:
                _add_unique(results, result)
    if not results:
        # Only now are the skipped pairs' reasons worth computing.
        failures.extend(unify(left, right) for left, right in skipped)
        return explain_failed_alternatives(failures)
    defaults: list[Value] | None = None
    if a_defaults is not None or b_defaults is not None:
        defaults = []
        for left in a_defaults if a_defaults is not None else a_alts:
            for right in b_defaults if b_defaults is not None else b_alts:
                result = unify(left, right)
                if not is_failed(result):
                    _add_unique(defaults, result)
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


def _problems_in(value: Value) -> tuple[Problem, ...]:
    """Every problem inside a failed value (non-optional fields only)."""
    if isinstance(value, Bottom):
        return value.problems
    found: list[Problem] = []
    if isinstance(value, Struct) and value.failed:
        for label, field in value.fields.items():
            if not field.optional and is_failed(field.value):
                found.extend(p.with_label(label) for p in _problems_in(field.value))
        for label, field in value.hidden.items():
            if not field.optional and is_failed(field.value):
                found.extend(p.with_label(label) for p in _problems_in(field.value))
    elif isinstance(value, List) and value.failed:
        for item in value.items:
            found.extend(_problems_in(item))
    return tuple(found)


def explain_failed_alternatives(failures: Sequence[Value]) -> Bottom:
    """The error of a disjunction none of whose alternatives unified.

    CUE would list every alternative's error. To say something useful, pick:
    a problem inside the value that every alternative meets; else
    the alternative that failed for a reason other than a clashing value
    (the user picked it, and got it wrong: a bound, an unknown field ...);
    failing that, when every alternative clashed at the same user value,
    one "unknown X; expected one of ..." error; failing that, the
    alternative with the fewest problems.
    """
    per_alternative = [_problems_in(f) for f in failures]
    if any(not problems for problems in per_alternative):
        return Bottom(())  # an error reported elsewhere caused this one
    # A problem every alternative shares lies in the value itself (a conflict
    # inside it), not in the choice of alternative: report just that.
    shared = [p for p in per_alternative[0] if all(p in ps for ps in per_alternative[1:])]
    if shared:
        return Bottom(tuple(shared))
    plausible = [ps for ps in per_alternative if not any(p.code in MISMATCHES for p in ps)]
    if plausible:
        return Bottom(min(plausible, key=len))
    # Every alternative clashed; find a user value they all clashed with.
    summary = _shared_mismatch(per_alternative)
    if summary is not None:
        return Bottom((summary,))
    return Bottom(min(per_alternative, key=len))


def _shared_mismatch(per_alternative: Sequence[Sequence[Problem]]) -> Problem | None:
    first = [p for p in per_alternative[0] if p.code in MISMATCHES]
    for candidate in first:
        at_same_value: list[Problem] = []
        for problems in per_alternative:
            same = [p for p in problems if p.code in MISMATCHES and p.pos == candidate.pos]
            if not same:
                break
            at_same_value.append(same[0])
        else:
            return _summarise(at_same_value)
    return None


def _summarise(problems: Sequence[Problem]) -> Problem:
    """One problem for "this value matches none of these alternatives"."""
    got = problems[0].got
    expected: list[str] = []
    for p in problems:
        if p.expected not in expected:
            expected.append(p.expected)
    conflicts = [p for p in problems if p.code == "conflict"]
    label = next((p.label for p in problems if p.label), None)
    if len(conflicts) == len(problems):
        # Every alternative is a literal of the same type as the value.
        hint = ""
        if got.startswith('"'):
            # Compare the strings' contents: the quotes alone look alike.
            unquoted = {e[1:-1]: e for e in expected if e.startswith('"')}
            match = _suggest(got[1:-1], unquoted)
            hint = unquoted[match] if match else ""
        return Problem(
            "alternatives",
            problems[0].pos,
            label=label,
            expected=", ".join(expected),
            got=got,
            hint=hint,
        )
    # Types and literals mixed: a literal of a listed type says nothing more.
    kinds = {p.expected for p in problems if p.code == "mismatch"}
    shown = [e for e in expected if e in kinds or not _literal_of_kind(e, kinds)]
    text = " or ".join(shown)
    return Problem("mismatch", problems[0].pos, label=label, expected=text, got=got)


def _literal_of_kind(text: str, kinds: set[str]) -> bool:
    if text.startswith('"'):
        return STRING in kinds
    if text in ("true", "false"):
        return BOOL in kinds
    if text == "null":
        return NULL in kinds
    try:
        decimal.Decimal(text)
    except decimal.InvalidOperation:
        return False
    if "." in text or "e" in text.lower():
        return FLOAT in kinds or "number" in kinds
    return INT in kinds or "number" in kinds


def resolve_default(value: Value) -> Value:
    """The value export uses: a disjunction's single default, or its single
    alternative; otherwise the disjunction itself (still ambiguous)."""
    if not isinstance(value, Disjunction):
        return value
    if value.defaults is not None and len(value.defaults) == 1:
        return value.defaults[0]
    return value
