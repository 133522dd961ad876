"""Unification (CUE's ``&``, the lattice's greatest lower bound), and closing.

:func:`unify` never raises: a conflict yields a Bottom carrying a located
Problem. Semantics follow the CUE specification:

- unification distributes over disjunctions (see :mod:`.disjunctions`);
- a struct unified with a struct merges field by field; pattern constraints
  (``[string]: T``) apply to every regular field whose label matches;
- a definition is closed when referenced (:func:`close`): it then rejects any
  regular field it neither declares nor matches with a pattern, recursively;
- a Lazy operand not computed yet makes the result Lazy too.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from typing import Any

from . import disjunctions
from .errors import Pos, show_name
from .lattice import (
    INT,
    LIST,
    NUMBER_KINDS,
    STRING,
    STRUCT,
    Atom,
    Closedness,
    Constraint,
    Disjunction,
    Field,
    Lazy,
    Limit,
    List,
    Struct,
    Top,
    Value,
    deferred,
    describe,
    describe_atom,
    describe_kinds,
    force,
    is_failed,
    kind_name,
    make_list,
    make_struct,
    value_pos,
)
from .problems import Bottom, Code, Problem, label_problems, merge_bottoms


def unify(a: Value, b: Value) -> Value:
    """``a & b``. By convention ``a`` is the constraint side (schema, pattern,
    earlier declaration) and ``b`` the value being checked; this only decides
    how a conflict is worded, never its outcome."""
    if a is b:
        return a
    if isinstance(a, Lazy) or isinstance(b, Lazy):
        return deferred((a, b), unify)
    if isinstance(a, Bottom):
        return merge_bottoms(a, b) if isinstance(b, Bottom) else a
    if isinstance(b, Bottom):
        return b
    if isinstance(a, Top):
        return b
    if isinstance(b, Top):
        return a
    if isinstance(a, Disjunction) or isinstance(b, Disjunction):
        return disjunctions.unify_disjunctions(a, b)
    if isinstance(a, Atom):
        if isinstance(b, Atom):
            return _unify_atoms(a, b)
        if isinstance(b, Constraint):
            return _check_atom(b, a)
        return _mismatch(a, b)
    if isinstance(a, Constraint):
        if isinstance(b, Atom):
            return _check_atom(a, b)
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
    result: Value = unify_structs(structs)
    for value in values:
        if not isinstance(value, Struct):
            result = unify(result, value)
    return result


# --------------------------------------------------------------------------
# Scalars


def _unify_atoms(a: Atom, b: Atom) -> Value:
    if a.kind == b.kind and a.value == b.value:
        # Keep the manifest's position: later checks report at the value.
        return b if a.pos is not None and a.pos.source.is_schema else a
    same_kind = a.kind == b.kind
    return Bottom(
        (
            Problem(
                Code.CONFLICT if same_kind else Code.MISMATCH,
                b.pos,
                expected=describe_atom(a) if same_kind else a.kind,
                expected_pos=a.pos,
                got=describe_atom(b),
            ),
        )
    )


def _mismatch(a: Value, b: Value) -> Bottom:
    pos = value_pos(b) or value_pos(a)
    return Bottom(
        (
            Problem(
                Code.MISMATCH,
                pos,  # type: ignore[arg-type]
                expected=kind_name(a),
                expected_pos=value_pos(a),
                got=describe_atom(b) if isinstance(b, Atom) else kind_name(b),
            ),
        )
    )


def _check_atom(constraint: Constraint, atom: Atom) -> Value:
    if atom.kind not in constraint.kinds:
        return Bottom(
            (
                Problem(
                    Code.MISMATCH,
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
            (Problem(Code.BOUND, atom.pos, text=constraint.range_text(), got=describe_atom(atom)),)
        )
    for excluded in constraint.excluded:
        if _equal_atoms(excluded, atom):
            return Bottom(
                (
                    Problem(
                        Code.BOUND,
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
                    Code.MISMATCH,
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
                        Code.BOUND,
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
    only = _only_number(kinds, low, high, excluded)
    if only is not None and pos is not None:
        # Bounds that admit one number are that number, as in CUE: `>=5 & <=5`
        # is 5, and so is `int & >4 & <6`.
        kind, value = only
        return Atom(kind, value, pos)
    return Constraint(kinds, pos, low, high, excluded)


def _only_number(
    kinds: frozenset[str], low: Limit | None, high: Limit | None, excluded: tuple[Atom, ...]
) -> tuple[str, Any] | None:
    """The (kind, value) of the single number ``kinds`` and the bounds admit, if one."""
    if low is None or high is None:
        return None
    if low.value == high.value:
        only = low.value
        if INT in kinds and only == int(only):
            kind, value = INT, int(only)
        elif "float" in kinds:
            kind, value = "float", decimal.Decimal(only)
        else:
            return None
    elif kinds == frozenset({INT}):
        first = _ceil(low.value) + (1 if not low.inclusive and low.value == _ceil(low.value) else 0)
        last = _floor(high.value) - (
            1 if not high.inclusive and high.value == _floor(high.value) else 0
        )
        if first != last:
            return None
        kind, value = INT, first
    else:
        return None
    if any(x.kind in NUMBER_KINDS and x.value == value for x in excluded):
        return None
    return kind, value


def _ceil(value: int | decimal.Decimal) -> int:
    return int(decimal.Decimal(value).to_integral_value(decimal.ROUND_CEILING))


def _floor(value: int | decimal.Decimal) -> int:
    return int(decimal.Decimal(value).to_integral_value(decimal.ROUND_FLOOR))


def _constraint_with_composite(constraint: Constraint, composite: Struct | List) -> Value:
    kind = STRUCT if isinstance(composite, Struct) else LIST
    if kind in constraint.kinds and constraint.low is None and constraint.high is None:
        return composite
    return _mismatch(constraint, composite)


# --------------------------------------------------------------------------
# Structs


def matches(pattern: Value, label: str) -> bool:
    """Whether a pattern constraint ``[pattern]: ...`` applies to ``label``."""
    pattern = force(pattern)
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


def allows(rule: Closedness, label: str) -> bool:
    return label in rule.labels or any(matches(p, label) for p in rule.patterns)


def _constrain(value: Value, label: str, pos: Pos, other: Struct) -> Value:
    """``value``, a field ``other`` does not declare, under ``other``'s
    pattern constraints and closedness rules."""
    for pattern, constraint in other.patterns:
        if matches(pattern, label):
            value = unify(constraint, value)
    for rule in other.closed:
        if not allows(rule, label):
            return Bottom(
                (
                    Problem(
                        Code.CLOSED,
                        pos,
                        text=f"field {show_name(label)} not allowed",
                        label=label,
                        candidates=rule.labels,
                    ),
                )
            )
    return value


def _prefer_manifest(a: Pos, b: Pos) -> Pos:
    return b if a.source.is_schema and not b.source.is_schema else a


def _merge_into(table: dict[str, Field], label: str, field: Field) -> None:
    """Unify ``field`` into ``table[label]``."""
    previous = table.get(label)
    if previous is None:
        table[label] = field
        return
    table[label] = Field(
        unify(previous.value, field.value),
        previous.optional and field.optional,
        _prefer_manifest(previous.pos, field.pos),
    )


def unify_structs(structs: Sequence[Struct]) -> Struct:
    """Unify structs: merge fields, and apply every struct's patterns and
    closedness rules to the fields the other structs bring (its own fields
    already satisfy them: the Struct invariant)."""
    if len(structs) == 1:
        return structs[0]
    constraining = [
        (1 << index, struct)
        for index, struct in enumerate(structs)
        if struct.patterns or struct.closed
    ]
    fields: dict[str, Field] = {}
    declared_by: dict[str, int] = {}  # label -> bit mask of the structs declaring it
    for index, struct in enumerate(structs):
        bit = 1 << index
        for label, field in struct.fields.items():
            previous = fields.get(label)
            if previous is None:
                fields[label] = field
                if constraining:
                    declared_by[label] = bit
            else:
                fields[label] = Field(
                    unify(previous.value, field.value),
                    previous.optional and field.optional,
                    _prefer_manifest(previous.pos, field.pos),
                )
                if constraining:
                    declared_by[label] |= bit
    for label, field in fields.items():
        value = field.value
        if constraining:
            mask = declared_by[label]
            for bit, struct in constraining:
                if not mask & bit:
                    value = _constrain(value, label, field.pos, struct)
        if isinstance(value, Bottom):
            value = label_problems(value, label)
        if value is not field.value:
            fields[label] = Field(value, field.optional, field.pos)

    hidden: dict[str, Field] = {}
    with_hidden = [s for s in structs if s.hidden]
    if len(with_hidden) == 1:
        hidden = with_hidden[0].hidden
    else:
        for struct in with_hidden:
            for label, field in struct.hidden.items():
                _merge_into(hidden, label, field)
        for label, field in hidden.items():
            if isinstance(field.value, Bottom):
                hidden[label] = Field(label_problems(field.value, label), field.optional, field.pos)

    first = structs[0]
    patterns, closed, pos = first.patterns, first.closed, first.pos
    for struct in structs[1:]:
        if struct.patterns:
            patterns = patterns + tuple(p for p in struct.patterns if p not in patterns)
        if struct.closed:
            closed = closed + tuple(c for c in struct.closed if c not in closed)
        if struct.pos is not None:
            pos = struct.pos if pos is None else _prefer_manifest(pos, struct.pos)
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
                    Code.LENGTH,
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
        item = unify(left, right)
        items.append(label_problems(item, f"[{index}]") if isinstance(item, Bottom) else item)
    tail = None if a.tail is None or b.tail is None else unify(a.tail, b.tail)
    return make_list(tuple(items), tail, b.pos or a.pos)


# --------------------------------------------------------------------------
# Closing


def close(value: Value, cache: dict[int, Value] | None = None) -> Value:
    """The value a reference to a definition yields: recursively closed.

    ``cache`` (keyed by object identity; values are immutable) avoids closing
    a shared sub-value twice. A Lazy part is closed when it is computed.
    """
    if cache is None:
        cache = {}
    key = id(value)
    cached = cache.get(key)
    if cached is not None:
        return cached
    result: Value = value
    if isinstance(value, Lazy):
        result = deferred((value,), lambda v: close(v, cache))
    elif isinstance(value, Struct) and not value.closed_deep:
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
        result = Struct(fields, hidden, patterns, closed, value.pos, value.failed, True)
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


__all__ = ["close", "describe", "matches", "unify", "unify_all", "unify_structs"]
