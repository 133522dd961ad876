"""What an error value says: problem codes, problems, and the explanation of
a disjunction none of whose alternatives unified.

A :class:`Problem` is located and typed (:class:`Code`); rendering it into a
message happens only when it is reported, because most problems die inside
failed disjuncts.
"""

from __future__ import annotations

import decimal
import difflib
import enum
from collections.abc import Iterable, Sequence

import attrs

from .errors import Pos, show_name


class Code(enum.Enum):
    """Why a value is bottom."""

    CONFLICT = "conflict"
    """Two different concrete values."""
    MISMATCH = "mismatch"
    """A value of the wrong type."""
    BOUND = "bound"
    """Outside a bound, or an excluded value."""
    CLOSED = "closed"
    """A field a closed struct does not allow."""
    ALTERNATIVES = "alternatives"
    """No disjunct matched."""
    LENGTH = "length"
    """Lists of different lengths."""
    SELECTOR = "selector"
    """Selecting a field that is not there, or from a non-struct."""
    BOTTOM = "bottom"
    """An explicit ``_|_``."""
    BOUND_ARG = "bound-arg"
    """A bound whose limit is not a concrete number."""
    REFERENCE = "reference"
    """A reference to nothing."""
    UNSUPPORTED = "unsupported"
    """Valid CUE that capos-sched does not evaluate."""

    @property
    def fatal(self) -> bool:
        """A fatal problem is an error of the file, not of one alternative: a
        disjunction does not drop the alternative that has it, it fails
        (CUE reports an unresolved reference wherever it stands; and a
        construct capos-sched does not evaluate must never be silently
        dropped in favour of another alternative)."""
        return self in _FATAL

    @property
    def clash(self) -> bool:
        """A concrete value or type clashed with another one. When every
        alternative of a disjunction clashes at the same user value, the
        alternatives are summarised as "expected one of ..."."""
        return self in _CLASHES


_FATAL = frozenset({Code.REFERENCE, Code.UNSUPPORTED})
_CLASHES = frozenset({Code.CONFLICT, Code.MISMATCH})


@attrs.frozen(slots=True)
class Problem:
    """Why a value is bottom.

    For conflict and mismatch, ``expected``/``expected_pos`` describe the side
    that came from the constraint (left operand) and ``got``/``pos`` the other
    side; rendering prefers whichever position is in the manifest over one in
    the schema. ``label`` is the innermost field name, attached once known.
    """

    code: Code
    pos: Pos
    text: str = ""
    label: str | None = None
    expected: str = ""
    expected_pos: Pos | None = None
    got: str = ""
    hint: str = ""
    candidates: frozenset[str] = frozenset()
    """For CLOSED: the allowed labels, for a "did you mean" computed only
    when the problem is reported."""

    def with_label(self, label: str) -> Problem:
        if self.label is not None:
            return self
        return attrs.evolve(self, label=label)

    def primary_pos(self) -> Pos:
        """The position to report: the manifest's side of a conflict if it has one."""
        other = self.expected_pos
        if self.code.clash and other is not None and self.pos.source.is_schema:
            return self.pos if other.source.is_schema else other
        return self.pos

    def message(self) -> str:
        """The message, naming the field (``label``) when known."""
        name = show_name(self.label) if self.label else "value"
        plain = self.label if self.label and show_name(self.label)[0] == "`" else name
        code = self.code
        if code is Code.CONFLICT:
            primary = self.primary_pos()
            here, there = (self.got, self.expected)
            other = self.expected_pos
            if primary is not self.pos:
                here, there, other = self.expected, self.got, self.pos
            where = f" (other value at {other.short(primary.source)})" if other else ""
            return f"conflicting values for {name}: {here} and {there}{where}"
        if code is Code.MISMATCH:
            return f"{name}: expected {self.expected}, got {self.got}"
        if code is Code.BOUND:
            return f"{plain} {self.got} {self.text}"
        if code is Code.ALTERNATIVES:
            text = f"unknown {plain} {self.got}; expected one of {self.expected}"
            return text + (f" (did you mean {self.hint}?)" if self.hint else "")
        if code is Code.CLOSED:
            hint = suggest(self.label or "", self.candidates) if self.label else ""
            return self.text + (f"; did you mean {show_name(hint)}?" if hint else "")
        return self.text


@attrs.frozen(slots=True)
class Bottom:
    """An error value. ``problems`` is empty for a silent bottom: one that
    stands for an error already reported elsewhere (see syntax.Poison)."""

    problems: tuple[Problem, ...]

    def fatal(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.code.fatal)


def problem(code: Code, pos: Pos, text: str) -> Bottom:
    """A bottom with one problem."""
    return Bottom((Problem(code, pos, text=text),))


def merge_bottoms(a: Bottom, b: Bottom) -> Bottom:
    return Bottom(a.problems + tuple(p for p in b.problems if p not in a.problems))


def label_problems(value: Bottom, label: str) -> Bottom:
    """``value`` with ``label`` attached to the problems that name no field yet."""
    if any(p.label is None for p in value.problems):
        return Bottom(tuple(p.with_label(label) for p in value.problems))
    return value


def suggest(label: str, candidates: Iterable[str]) -> str:
    close_matches = difflib.get_close_matches(label, list(candidates), n=1, cutoff=0.6)
    return close_matches[0] if close_matches else ""


# --------------------------------------------------------------------------
# Explaining a failed disjunction


def explain_failed_alternatives(per_alternative: Sequence[tuple[Problem, ...]]) -> Bottom:
    """The error of a disjunction none of whose alternatives unified, given
    each alternative's problems.

    CUE would list every alternative's error. To say something useful, pick:
    a problem inside the value that every alternative meets; else
    the alternative that failed for a reason other than a clashing value
    (the user picked it, and got it wrong: a bound, an unknown field ...);
    failing that, when every alternative clashed at the same user value,
    one "unknown X; expected one of ..." error; failing that, the
    alternative with the fewest problems.
    """
    if any(not problems for problems in per_alternative):
        return Bottom(())  # an error reported elsewhere caused this one
    # A problem every alternative shares lies in the value itself (a conflict
    # inside it), not in the choice of alternative: report just that.
    shared = [p for p in per_alternative[0] if all(p in ps for ps in per_alternative[1:])]
    if shared:
        return Bottom(tuple(shared))
    plausible = [ps for ps in per_alternative if not any(p.code.clash for p in ps)]
    if plausible:
        return Bottom(min(plausible, key=len))
    # Every alternative clashed; find a user value they all clashed with.
    summary = _shared_mismatch(per_alternative)
    if summary is not None:
        return Bottom((summary,))
    return Bottom(min(per_alternative, key=len))


def _shared_mismatch(per_alternative: Sequence[Sequence[Problem]]) -> Problem | None:
    first = [p for p in per_alternative[0] if p.code.clash]
    for candidate in first:
        at_same_value: list[Problem] = []
        for problems in per_alternative:
            same = [p for p in problems if p.code.clash and p.pos == candidate.pos]
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
    conflicts = [p for p in problems if p.code is Code.CONFLICT]
    label = next((p.label for p in problems if p.label), None)
    if len(conflicts) == len(problems):
        # Every alternative is a literal of the same type as the value.
        hint = ""
        if got.startswith('"'):
            # Compare the strings' contents: the quotes alone look alike.
            unquoted = {e[1:-1]: e for e in expected if e.startswith('"')}
            match = suggest(got[1:-1], unquoted)
            hint = unquoted[match] if match else ""
        return Problem(
            Code.ALTERNATIVES,
            problems[0].pos,
            label=label,
            expected=", ".join(expected),
            got=got,
            hint=hint,
        )
    # Types and literals mixed: a literal of a listed type says nothing more.
    kinds = {p.expected for p in problems if p.code is Code.MISMATCH}
    shown = [e for e in expected if e in kinds or not _literal_of_kind(e, kinds)]
    text = " or ".join(shown)
    return Problem(Code.MISMATCH, problems[0].pos, label=label, expected=text, got=got)


def _literal_of_kind(text: str, kinds: set[str]) -> bool:
    if text.startswith('"'):
        return "string" in kinds
    if text in ("true", "false"):
        return "bool" in kinds
    if text == "null":
        return "null" in kinds
    try:
        decimal.Decimal(text)
    except decimal.InvalidOperation:
        return False
    if "." in text or "e" in text.lower():
        return "float" in kinds or "number" in kinds
    return "int" in kinds or "number" in kinds
