"""Evaluation: parsed files to CUE values, and values to exported data.

The files of one package (the schema and a manifest) share one package scope,
as in CUE. A reference resolves lexically, like CUE's: to the innermost struct
literal that binds the name, else to the package, else to a predeclared
identifier. capos-sched only evaluates references that resolve to the
package scope (top-level fields and definitions) or to predeclared types: CUE
re-binds references to fields of an enclosing struct for every instance of
that struct, which this evaluator does not implement, so such references are
reported as not supported rather than given a different meaning.

:func:`export` turns an evaluated value into plain data the way ``cue
export`` does: defaults are chosen, definitions, hidden and optional fields
are dropped, and any value that is an error or not concrete is reported.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import attrs

from . import syntax
from .disjunctions import disjoin, resolve_default
from .errors import Diagnostics, Pos, Source, show_name
from .lattice import (
    ALL_KINDS,
    BOOL,
    FLOAT,
    INT,
    NUMBER_KINDS,
    STRING,
    Atom,
    Closedness,
    Constraint,
    Disjunction,
    Field,
    Forcing,
    Lazy,
    Limit,
    List,
    Struct,
    Top,
    Value,
    deferred,
    describe,
    describe_atom,
    force,
    make_list,
    make_struct,
)
from .problems import Bottom, Code, Problem, problem
from .syntax import UNSUPPORTED, LabelKind
from .unification import close, matches, unify, unify_all, unify_structs


def _int_range(low: int, high: int) -> tuple[frozenset[str], Limit, Limit]:
    return frozenset({INT}), Limit(low, True), Limit(high, True)


# Predeclared identifiers (spec, "Predeclared identifiers") that this subset
# evaluates: the basic types and the sized integer types.
_TYPES: dict[str, tuple[frozenset[str], Limit | None, Limit | None]] = {
    "int": (frozenset({INT}), None, None),
    "float": (frozenset({FLOAT}), None, None),
    "number": (NUMBER_KINDS, None, None),
    "string": (frozenset({STRING}), None, None),
    "bool": (frozenset({BOOL}), None, None),
    "uint": (frozenset({INT}), Limit(0, True), None),
    "uint8": _int_range(0, 2**8 - 1),
    "uint16": _int_range(0, 2**16 - 1),
    "uint32": _int_range(0, 2**32 - 1),
    "uint64": _int_range(0, 2**64 - 1),
    "uint128": _int_range(0, 2**128 - 1),
    "int8": _int_range(-(2**7), 2**7 - 1),
    "int16": _int_range(-(2**15), 2**15 - 1),
    "int32": _int_range(-(2**31), 2**31 - 1),
    "int64": _int_range(-(2**63), 2**63 - 1),
    "int128": _int_range(-(2**127), 2**127 - 1),
    "rune": _int_range(0, 0x10FFFF),
}
_UNSUPPORTED_PREDECLARED = frozenset(
    {"bytes", "float32", "float64", "len", "close", "and", "or", "div", "mod", "quo", "rem"}
)


class Evaluator:
    """Evaluates the files of one package.

    Every top-level name has one Lazy value, computed when first needed;
    references are Lazy too, so that evaluation order follows need, as in
    CUE (a field may refer to a sibling subtree of its own enclosing field).
    Reference cycles are resolved by :class:`~.lattice.Forcing`.
    """

    def __init__(self, files: Sequence[syntax.File]) -> None:
        self.files = tuple(files)
        # Regular fields and definitions/hidden fields live in separate
        # namespaces: a quoted regular label may be spelled like a definition.
        self._regular: dict[str, list[syntax.Field]] = {}
        self._others: dict[str, list[syntax.Field]] = {}
        self._patterns: list[syntax.PatternField] = []
        for file in self.files:
            for decl in file.decls:
                if isinstance(decl, syntax.PatternField):
                    self._patterns.append(decl)
                elif decl.kind is LabelKind.REGULAR:
                    self._regular.setdefault(decl.name, []).append(decl)
                else:
                    self._others.setdefault(decl.name, []).append(decl)
        self._package_idents = frozenset().union(*(f.idents for f in self.files))
        self._forcing = Forcing()
        self._top: dict[tuple[bool, str], Lazy] = {}
        self._references: dict[str, Value] = {}
        self._top_patterns: list[tuple[Value, Value]] | None = None
        self._close_cache: dict[int, Value] = {}

    # -- the package ------------------------------------------------------
    def root(self) -> Struct:
        """The package's value: every top-level field, unified across files.
        Definitions and hidden fields are in ``hidden``, not closed (export
        checks them for errors, as CUE does, without exporting them)."""
        fields: dict[str, Field] = {}
        for name, decls in self._regular.items():
            value = self._top_value(True, name, decls[0].pos)
            fields[name] = Field(value, all(d.optional for d in decls), _manifest_pos(decls))
        hidden: dict[str, Field] = {}
        for name, decls in self._others.items():
            value = self._top_value(False, name, decls[0].pos)
            hidden[name] = Field(value, all(d.optional for d in decls), _manifest_pos(decls))
        return make_struct(fields, hidden, tuple(self._package_patterns()), (), None)

    def schema_labels(self) -> frozenset[str]:
        """Regular top-level labels declared in schema files (the manifest's
        allowed top-level fields)."""
        return frozenset(
            decl.name
            for file in self.files
            if file.source.is_schema
            for decl in file.decls
            if isinstance(decl, syntax.Field) and decl.kind is LabelKind.REGULAR
        )

    def _package_patterns(self) -> list[tuple[Value, Value]]:
        """The top-level pattern constraints."""
        if self._top_patterns is None:
            self._top_patterns = [
                (self.eval(p.pattern, ()), self.eval(p.value, ())) for p in self._patterns
            ]
        return self._top_patterns

    def _top_value(self, regular: bool, name: str, pos: Pos) -> Lazy:
        key = (regular, name)
        lazy = self._top.get(key)
        if lazy is None:
            lazy = Lazy(lambda: self._compute_top(regular, name), self._forcing, pos)
            self._top[key] = lazy
        return lazy

    def _compute_top(self, regular: bool, name: str) -> Value:
        decls = (self._regular if regular else self._others)[name]
        value = unify_all([self.eval(d.value, ()) for d in decls])
        if regular:
            for pattern, constraint in self._package_patterns():
                if matches(pattern, name):
                    value = unify(constraint, value)
        return value

    def reference(self, name: str, pos: Pos) -> Value:
        """The value of a reference to top-level ``name``; definitions come closed
        (spec: "referencing a definition will recursively close it")."""
        cached = self._references.get(name)
        if cached is not None:
            return cached
        kind = _kind_of(name)
        regular = kind is LabelKind.REGULAR
        if name not in (self._regular if regular else self._others):
            return problem(Code.REFERENCE, pos, f"reference `{name}` not found")  # pragma: no cover
        value: Value = self._top_value(regular, name, pos)
        if kind is LabelKind.DEFINITION:
            value = close(value, self._close_cache)
        self._references[name] = value
        return value

    # -- expressions ------------------------------------------------------
    def eval(self, expr: syntax.Expr, scopes: tuple[syntax.StructLit, ...]) -> Value:
        if isinstance(expr, syntax.Lit):
            return Atom(expr.kind, expr.value, expr.pos)
        if isinstance(expr, syntax.StructLit):
            return self._eval_struct(expr, scopes)
        if isinstance(expr, syntax.Ref):
            return self._eval_ref(expr, scopes)
        if isinstance(expr, syntax.Disj):
            terms = tuple(self.eval(t, scopes) for t in expr.terms)
            marked, pos = expr.marked, expr.pos
            return deferred(terms, lambda *ts: disjoin(ts, marked, pos))
        if isinstance(expr, syntax.Conj):
            return unify_all([self.eval(t, scopes) for t in expr.terms])
        if isinstance(expr, syntax.Bound):
            bound = expr
            return deferred((self.eval(bound.operand, scopes),), lambda v: _bound(bound, v))
        if isinstance(expr, syntax.ListLit):
            items = tuple(self.eval(item, scopes) for item in expr.items)
            tail = None if expr.tail is None else self.eval(expr.tail, scopes)
            return make_list(items, tail, expr.pos)
        if isinstance(expr, syntax.Selector):
            sel = expr
            return deferred((self.eval(sel.operand, scopes),), lambda v: _select(sel, v))
        if isinstance(expr, syntax.Top):
            return Top(expr.pos)
        if isinstance(expr, syntax.BottomLit):
            return problem(Code.BOTTOM, expr.pos, "explicit error (`_|_`)")
        if isinstance(expr, syntax.Poison):
            return Bottom(())
        raise TypeError(f"unknown expression {expr!r}")  # pragma: no cover

    def _eval_struct(self, lit: syntax.StructLit, scopes: tuple[syntax.StructLit, ...]) -> Value:
        inner = (lit, *scopes)
        regular: dict[str, list[syntax.Field]] = {}
        others: dict[str, list[syntax.Field]] = {}
        patterns: list[tuple[Value, Value]] = []
        for decl in lit.decls:
            if isinstance(decl, syntax.Field):
                group = regular if decl.kind is LabelKind.REGULAR else others
                group.setdefault(decl.name, []).append(decl)
            else:
                patterns.append((self.eval(decl.pattern, inner), self.eval(decl.value, inner)))
        fields = {
            name: self._eval_field(name, decls, inner, patterns) for name, decls in regular.items()
        }
        hidden = {name: self._eval_field(name, decls, inner, []) for name, decls in others.items()}
        return make_struct(fields, hidden, tuple(patterns), (), lit.pos)

    def _eval_field(
        self,
        name: str,
        decls: list[syntax.Field],
        scopes: tuple[syntax.StructLit, ...],
        patterns: list[tuple[Value, Value]],
    ) -> Field:
        value = unify_all([self.eval(d.value, scopes) for d in decls])
        for pattern, constraint in patterns:
            if matches(pattern, name):
                value = unify(constraint, value)
        if isinstance(value, Bottom) and any(p.label is None for p in value.problems):
            value = Bottom(tuple(p.with_label(name) for p in value.problems))
        return Field(value, all(d.optional for d in decls), decls[0].pos)

    def _eval_ref(self, ref: syntax.Ref, scopes: tuple[syntax.StructLit, ...]) -> Value:
        unresolved = self._unresolved(ref, scopes)
        if unresolved is not None:
            return unresolved
        if ref.name in self._package_idents:
            return self.reference(ref.name, ref.pos)
        kinds, low, high = _TYPES[ref.name]
        return Constraint(kinds, ref.pos, low, high)

    def check_references(self, diagnostics: Diagnostics) -> None:
        """Report every reference of the manifest files that does not resolve
        or is not supported, wherever it stands (in a pattern constraint, an
        optional field, a list's tail ...): in CUE an unresolved reference is
        an error of the file, evaluated or not."""
        for file in self.files:
            if file.has_references and not file.source.is_schema:
                for decl in file.decls:
                    self._check_decl(decl, (), diagnostics)

    def _check_decl(
        self, decl: syntax.Decl, scopes: tuple[syntax.StructLit, ...], diagnostics: Diagnostics
    ) -> None:
        if isinstance(decl, syntax.PatternField):
            self._check_expr(decl.pattern, scopes, diagnostics)
        self._check_expr(decl.value, scopes, diagnostics)

    def _check_expr(
        self, expr: syntax.Expr, scopes: tuple[syntax.StructLit, ...], diagnostics: Diagnostics
    ) -> None:
        if isinstance(expr, syntax.Ref):
            unresolved = self._unresolved(expr, scopes)
            for found in unresolved.problems if unresolved is not None else ():
                diagnostics.error(found.pos, found.message())
        elif isinstance(expr, syntax.StructLit):
            inner = (expr, *scopes)
            for decl in expr.decls:
                self._check_decl(decl, inner, diagnostics)
        elif isinstance(expr, syntax.Conj | syntax.Disj):
            for term in expr.terms:
                self._check_expr(term, scopes, diagnostics)
        elif isinstance(expr, syntax.ListLit):
            for item in expr.items:
                self._check_expr(item, scopes, diagnostics)
            if expr.tail is not None:
                self._check_expr(expr.tail, scopes, diagnostics)
        elif isinstance(expr, syntax.Selector | syntax.Bound):
            self._check_expr(expr.operand, scopes, diagnostics)

    def _unresolved(self, ref: syntax.Ref, scopes: tuple[syntax.StructLit, ...]) -> Bottom | None:
        """Why ``ref`` cannot be evaluated, or None when it resolves to a
        top-level name or a predeclared type."""
        name = ref.name
        for lit in scopes:
            if name in lit.idents:
                return problem(
                    Code.UNSUPPORTED,
                    ref.pos,
                    f"reference `{name}` to a field of an enclosing struct is {UNSUPPORTED}; "
                    "only top-level fields and definitions can be referenced",
                )
        if name in self._package_idents or name in _TYPES:
            return None
        if name in _UNSUPPORTED_PREDECLARED:
            return problem(Code.UNSUPPORTED, ref.pos, f"the predeclared `{name}` is {UNSUPPORTED}")
        candidates = sorted(self._package_idents | set(_TYPES))
        suggestion = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        hint = f"; did you mean `{suggestion[0]}`?" if suggestion else ""
        return problem(Code.REFERENCE, ref.pos, f"reference `{name}` not found{hint}")


def _manifest_pos(decls: list[syntax.Field]) -> Pos:
    """The position of a field declared in several files: the manifest's."""
    pos = decls[0].pos
    for decl in decls[1:]:
        if pos.source.is_schema and not decl.pos.source.is_schema:
            pos = decl.pos
    return pos


def _bound(bound: syntax.Bound, operand: Value) -> Value:
    operand = resolve_default(operand)
    if isinstance(operand, Bottom):
        return operand
    if not isinstance(operand, Atom):
        return problem(
            Code.BOUND_ARG, bound.pos, f"a bound needs a concrete value, not {describe(operand)}"
        )
    if bound.op == "!=":
        return Constraint(ALL_KINDS, bound.pos, excluded=(operand,))
    if operand.kind != INT:
        what = "float limits" if operand.kind == FLOAT else f"{operand.kind} values"
        return problem(Code.UNSUPPORTED, bound.pos, f"bounds on {what} are {UNSUPPORTED}")
    limit = Limit(operand.value, bound.op in (">=", "<="))
    if bound.op in (">=", ">"):
        return Constraint(NUMBER_KINDS, bound.pos, low=limit)
    return Constraint(NUMBER_KINDS, bound.pos, high=limit)


def _select(sel: syntax.Selector, operand: Value) -> Value:
    operand = resolve_default(operand)
    if isinstance(operand, Bottom):
        return operand
    if not isinstance(operand, Struct):
        return problem(
            Code.SELECTOR, sel.pos, f"cannot select `{sel.name}` from {describe(operand)}"
        )
    table = operand.fields if _kind_of(sel.name) is LabelKind.REGULAR else operand.hidden
    field = table.get(sel.name)
    if field is None or field.optional:
        return problem(Code.SELECTOR, sel.pos, f"no field `{sel.name}` to select")
    return field.value


def _kind_of(name: str) -> LabelKind:
    if name.startswith(("#", "_#")):
        return LabelKind.DEFINITION
    if name.startswith("_"):
        return LabelKind.HIDDEN
    return LabelKind.REGULAR


def close_root(root: Struct, allowed: frozenset[str]) -> Struct:
    """``root`` with only ``allowed`` regular top-level fields: the others get a
    "field `x` not allowed; did you mean ...?" error."""
    gate = make_struct({}, {}, (), (Closedness(allowed, ()),), None)
    return unify_structs((gate, root))


# --------------------------------------------------------------------------
# Export

Path = tuple[str | int, ...]


@attrs.frozen
class Exported:
    """Plain data (dicts, lists, str, int, Decimal, bool, None) with the
    position of every value and label, keyed by path from the root.

    ``broken`` holds every path that is, or leads to, a value left out of
    ``data`` because it was an error or incomplete (reported or not): checks
    on such parts of the data would only echo that error.
    """

    data: Any
    value_positions: dict[Path, Pos]
    label_positions: dict[Path, Pos]
    broken: frozenset[Path] = frozenset()

    def intact(self, path: Path) -> bool:
        """True when nothing at or under ``path`` was left out."""
        return path not in self.broken


_MISSING = object()


class _Exporter:
    def __init__(self, main: Source, diagnostics: Diagnostics, report_incomplete: bool) -> None:
        self.main = main
        self.diagnostics = diagnostics
        self.report_incomplete = report_incomplete
        self.value_positions: dict[Path, Pos] = {}
        self.label_positions: dict[Path, Pos] = {}
        self.broken: set[Path] = set()
        self.walking: dict[int, Path] = {}
        """The structs and lists on the path being walked (by identity), and
        the Lazy values they came from: the path each was entered at."""

    def _break(self, path: Path) -> None:
        for end in range(len(path), -1, -1):
            if path[:end] in self.broken:
                return
            self.broken.add(path[:end])

    def run(self, value: Value, path: Path, anchor: tuple[Pos | None, Path]) -> Any:
        """The data of ``value`` at ``path``, or _MISSING after reporting why not."""
        outer = id(value) if isinstance(value, Lazy) else None
        value = resolve_default(value)
        if isinstance(value, Atom):
            self.value_positions[path] = value.pos
            return value.value
        if isinstance(value, Struct | List):
            if self._enter(value, outer, path, anchor):
                return _MISSING
            try:
                return self._composite(value, path, anchor)
            finally:
                self._leave(value, outer)
        self._break(path)
        if isinstance(value, Bottom):
            self._report_all(value, path, anchor)
            return _MISSING
        if self.report_incomplete:
            self._incomplete(value, path, anchor)
        return _MISSING

    def _composite(self, value: Struct | List, path: Path, anchor: tuple[Pos | None, Path]) -> Any:
        if value.pos is not None:
            self.value_positions[path] = value.pos
        if isinstance(value, List):
            items = []
            for index, item in enumerate(value.items):
                result = self.run(item, (*path, index), anchor)
                if result is not _MISSING:
                    items.append(result)
            return items
        out: dict[str, Any] = {}
        for label, field in value.fields.items():
            if field.optional:
                continue  # optional fields are constraints, not data
            child = (*path, label)
            self.label_positions[child] = field.pos
            result = self.run(field.value, child, _anchor(anchor, field, path, label))
            if result is not _MISSING:
                out[label] = result
        self._check_hidden(value, path, anchor)
        return out

    def check(self, value: Value, path: Path, anchor: tuple[Pos | None, Path]) -> None:
        """Report the errors in a value that is not exported (a definition, a
        hidden field): CUE evaluates those too. Only errors count: such values
        need not be concrete, and their optional fields are not evaluated."""
        outer = id(value) if isinstance(value, Lazy) else None
        value = force(value)
        if isinstance(value, Bottom):
            self._report_all(value, path, anchor)
        elif isinstance(value, Struct | List):
            if self._enter(value, outer, path, anchor):
                return
            try:
                if isinstance(value, List):
                    for index, item in enumerate(value.items):
                        self.check(item, (*path, index), anchor)
                else:
                    for label, field in value.fields.items():
                        if not field.optional:
                            self.check(
                                field.value, (*path, label), _anchor(anchor, field, path, label)
                            )
                    self._check_hidden(value, path, anchor)
            finally:
                self._leave(value, outer)

    def _check_hidden(self, value: Struct, path: Path, anchor: tuple[Pos | None, Path]) -> None:
        for label, field in value.hidden.items():
            if not field.optional:
                self.check(field.value, (*path, label), _anchor(anchor, field, path, label))

    def _enter(
        self, value: Struct | List, outer: int | None, path: Path, anchor: tuple[Pos | None, Path]
    ) -> bool:
        """Put ``value`` on the path being walked; True (after reporting) when
        it is already there: a structural cycle, a value containing itself."""
        ancestor = self.walking.get(id(value))
        if ancestor is None and outer is not None:
            ancestor = self.walking.get(outer)
        if ancestor is not None:
            self._break(path)
            anchor_pos = anchor[0] if anchor[0] is not None else Pos(self.main, 1, 1)
            self.diagnostics.error(
                anchor_pos,
                f"structural cycle: {show_name(_dotted(path))} contains itself "
                f"(it is {show_name(_dotted(ancestor))})",
            )
            return True
        self.walking[id(value)] = path
        if outer is not None:
            self.walking[outer] = path
        return False

    def _leave(self, value: Struct | List, outer: int | None) -> None:
        del self.walking[id(value)]
        if outer is not None:
            self.walking.pop(outer, None)

    def _report_all(self, value: Bottom, path: Path, anchor: tuple[Pos | None, Path]) -> None:
        for found in value.problems:
            if found.label is None and path and isinstance(path[-1], str):
                found = found.with_label(path[-1])
            self._report(found, path, anchor)

    def _report(self, problem: Problem, path: Path, anchor: tuple[Pos | None, Path]) -> None:
        pos = problem.primary_pos()
        message = problem.message()
        if pos.source.is_schema and pos.source is not self.main:
            # A schema line would not help the reader: point at the manifest
            # field this is about, and say where the schema has its part.
            anchor_pos, anchor_path = anchor
            shown = _dotted(path[len(anchor_path) - 1 :] if anchor_path else path)
            message = f"{message} (in {show_name(shown)}; schema at {pos.short()})"
            pos = anchor_pos if anchor_pos is not None else Pos(self.main, 1, 1)
        self.diagnostics.error(pos, message)

    def _incomplete(self, value: Value, path: Path, anchor: tuple[Pos | None, Path]) -> None:
        anchor_pos, anchor_path = anchor
        if anchor_pos is None:
            anchor_pos = Pos(self.main, 1, 1)
            shown = _dotted(path)
        else:
            shown = _dotted(path[len(anchor_path) - 1 :]) if anchor_path else _dotted(path)
        if isinstance(value, Disjunction):
            self.diagnostics.error(anchor_pos, _ambiguous(shown, value))
            return
        what = describe(value)
        if anchor_path == path:
            text = f"incomplete value: {show_name(shown)} must be concrete, not {what}"
        else:
            text = f"incomplete value: {show_name(shown)} is not set ({what})"
        self.diagnostics.error(anchor_pos, text)


def _anchor(
    anchor: tuple[Pos | None, Path], field: Field, path: Path, label: str
) -> tuple[Pos | None, Path]:
    """The anchor for a field's problems: the field itself when the manifest declares it."""
    return anchor if field.pos.source.is_schema else (field.pos, (*path, label))


def _dotted(path: Path) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text or "value"


def _ambiguous(shown: str, value: Disjunction) -> str:
    """Explain an unresolved disjunction; name a field that would settle it."""
    alternatives = value.alternatives
    if all(isinstance(a, Struct) for a in alternatives):
        structs = [a for a in alternatives if isinstance(a, Struct)]
        for label in structs[0].fields:
            atoms = [s.fields[label].value if label in s.fields else None for s in structs]
            if all(isinstance(a, Atom) for a in atoms):
                names = [describe_atom(a) for a in atoms if isinstance(a, Atom)]
                if len(set(names)) == len(names):
                    return (
                        f"incomplete value: {show_name(shown)} matches {len(structs)} "
                        f"alternatives; set {show_name(label)} to one of {', '.join(names)}"
                    )
    shown_alts = " | ".join(describe(a) for a in alternatives)
    return f"incomplete value: {show_name(shown)} is ambiguous ({shown_alts}); pick one"


def export(
    value: Value, main: Source, diagnostics: Diagnostics, report_incomplete: bool = True
) -> Exported:
    """Export ``value`` like ``cue export``; problems go to ``diagnostics``.

    Positions that would lie in no manifest line are anchored at the nearest
    enclosing field the manifest (``main``) declares, or at its first line.
    With ``report_incomplete`` False, values that are merely not concrete are
    left out silently (see syntax.File.complete).
    """
    exporter = _Exporter(main, diagnostics, report_incomplete)
    data = exporter.run(value, (), (None, ()))
    return Exported(
        {} if data is _MISSING else data,
        exporter.value_positions,
        exporter.label_positions,
        frozenset(exporter.broken),
    )
