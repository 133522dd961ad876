"""Parsing: manifest text to an abstract syntax tree, with every problem located.

:func:`parse` runs the lark parser from :mod:`.grammar`, recovers from syntax
errors well enough to report several per file, and converts lark's tree into
the small AST below. Constructs the grammar accepts but capos-sched does not
evaluate (imports, embeddings, arithmetic, comprehensions, interpolation,
attributes ...) are reported here, each at its own position, as "not supported
in capos-sched manifests", and replaced by a :class:`Poison` node so that the
rest of the file can still be evaluated and checked.

The AST is immutable. Shorthand fields (``a: b: c: 1``) are expanded to nested
struct literals, as the CUE spec defines them.
"""

from __future__ import annotations

import contextvars
import decimal
import enum
import functools
import re
from typing import Any

import attrs
from lark import Lark, Token, Transformer, Tree
from lark.exceptions import UnexpectedInput, UnexpectedToken

from .errors import Diagnostics, Pos, Source
from .grammar import EOF_COMMA, LEX_STATE, NEWLINE_COMMA, LexState, make_parser

UNSUPPORTED = "not supported in capos-sched manifests"

PACKAGE_NAME = "capos"
"""The package every manifest and the schema belong to (so that ``cue`` can
evaluate the schema and a manifest together)."""


# --------------------------------------------------------------------------
# The AST


class LabelKind(enum.Enum):
    """CUE's three kinds of field (spec, "Definitions and hidden fields")."""

    REGULAR = "regular"
    DEFINITION = "definition"  # `#Name` or `_#name`: not exported, closed on reference
    HIDDEN = "hidden"  # `_name`: not exported


@attrs.frozen(slots=True)
class Lit:
    """A concrete scalar literal. ``kind`` is int, float, string, bool or null;
    floats are Decimals (CUE numbers are exact)."""

    pos: Pos
    kind: str
    value: Any


@attrs.frozen(slots=True)
class Top:
    """``_``, the value every value is an instance of."""

    pos: Pos


@attrs.frozen(slots=True)
class BottomLit:
    """``_|_``, the explicit error value."""

    pos: Pos


@attrs.frozen(slots=True)
class Poison:
    """Stands for a construct already reported as an error; evaluates to a
    silent bottom so that it causes no further diagnostics."""

    pos: Pos


@attrs.frozen(slots=True)
class Ref:
    """An identifier used as a value: a field, a definition or a predeclared name."""

    pos: Pos
    name: str


@attrs.frozen(slots=True)
class Selector:
    """``operand.name``."""

    pos: Pos
    operand: Expr
    name: str


@attrs.frozen(slots=True)
class Bound:
    """A unary comparison ``>=x``, ``<=x``, ``>x``, ``<x`` or ``!=x``."""

    pos: Pos
    op: str
    operand: Expr


@attrs.frozen(slots=True)
class Conj:
    """``a & b & ...`` (at least two terms)."""

    pos: Pos
    terms: tuple[Expr, ...]


@attrs.frozen(slots=True)
class Disj:
    """``a | *b | ...`` (at least two terms); ``marked[i]`` is True for ``*`` terms."""

    pos: Pos
    terms: tuple[Expr, ...]
    marked: tuple[bool, ...]


@attrs.frozen(slots=True)
class Field:
    """``name: value`` (or ``name?: value``). ``pos`` is the label's position.

    ``quoted`` labels (``"a-b": 1``) are not bound as identifiers: they cannot
    be referenced (spec, "Field declarations")."""

    pos: Pos
    name: str
    kind: LabelKind
    optional: bool
    quoted: bool
    value: Expr


@attrs.frozen(slots=True)
class PatternField:
    """``[pattern]: value``: ``value`` applies to every field whose label matches."""

    pos: Pos
    pattern: Expr
    value: Expr


Decl = Field | PatternField


@attrs.frozen(slots=True)
class StructLit:
    """``{ decls }``. ``idents`` are the identifiers this literal binds (its
    unquoted labels): a reference is resolved against the innermost literal
    that binds its name."""

    pos: Pos
    decls: tuple[Decl, ...]
    idents: frozenset[str]


@attrs.frozen(slots=True)
class ListLit:
    """``[a, b, ...T]``. ``tail`` is None for a closed list, else the type of
    the elements after ``items`` (``Top`` for a bare ``...``)."""

    pos: Pos
    items: tuple[Expr, ...]
    tail: Expr | None


Expr = Lit | Top | BottomLit | Poison | Ref | Selector | Bound | Conj | Disj | StructLit | ListLit


@attrs.frozen
class File:
    """One parsed source file: its optional package clause and top-level declarations."""

    source: Source
    package: str | None
    decls: tuple[Decl, ...]
    idents: frozenset[str]
    complete: bool = True
    """False when an unsupported construct that could declare fields
    (an embedding, a dynamic label ...) was dropped: then a missing field may
    just be in the dropped part, so missing-value errors are not reported."""
    has_references: bool = False
    """True when the file uses an identifier as a value (then the evaluator
    checks that every reference resolves, wherever it stands)."""


# --------------------------------------------------------------------------
# Parsing


def parse(source: Source, diagnostics: Diagnostics) -> File | None:
    """Parse ``source``; report problems to ``diagnostics``.

    Returns None when the text is not syntactically valid (the reported syntax
    errors would make any evaluation misleading). Returns a File, possibly with
    Poison nodes, when the text parses; unsupported constructs are reported.
    Reentrant and thread-safe: each parse has its own AST builder and lexer
    state (the shared lark parser holds none).
    """
    built = Diagnostics()  # what the builder finds, merged below
    builder = _AstBuilder(source, built)
    lex_state = LexState()
    syntax_errors = Diagnostics()
    reporter = _SyntaxErrorReporter(source, syntax_errors, lex_state)
    builder_token = _BUILDER.set(builder)
    lex_token = LEX_STATE.set(lex_state)
    result: Any = None
    try:
        result = _parser().parse(source.text, on_error=reporter.recover)
    except UnexpectedInput as error:
        reporter.report(error)
    finally:
        LEX_STATE.reset(lex_token)
        _BUILDER.reset(builder_token)
    for comment in lex_state.block_comments:
        reporter.count += 1
        pos = Pos(source, comment.line, comment.column)
        reporter.positions.add((pos.line, pos.col))
        syntax_errors.error(
            pos,
            "unexpected `/`: block comments (`/* ... */`) are not CUE; "
            "CUE has only line comments (`// ...`)",
        )
    if reporter.count:
        # After a syntax error the recovered parse sees fragments. Keep one
        # diagnostic per line (the leftmost: a construct reported as not
        # supported often causes the syntax error after it), none of what the
        # builder found after the first syntax error, and no "embedding":
        # after a syntax error that is the recovery's doing (`a 1` is a
        # missing colon, not two embedded values).
        first_error = min(reporter.positions, default=(0, 0))
        kept: dict[int, Any] = {d.line: d for d in syntax_errors.items()}
        for diagnostic in built.items():
            position = (diagnostic.line, diagnostic.col)
            if position > first_error or position in builder.embeddings:
                continue
            line = kept.get(diagnostic.line)
            if line is None or diagnostic.col < line.col:
                kept[diagnostic.line] = diagnostic
        for diagnostic in kept.values():
            diagnostics.add(diagnostic)
        return None
    for diagnostic in built.items():
        diagnostics.add(diagnostic)
    return result if isinstance(result, File) else None


_BUILDER: contextvars.ContextVar[_AstBuilder] = contextvars.ContextVar("manifest_ast_builder")
"""The AST builder of the parse running in this context (thread or task)."""


@functools.cache
def _parser() -> Lark:
    """The lark parser (built once: the grammar's analysis takes most of a
    second). It holds no per-parse state: its transformer forwards every
    rule to the running parse's own builder (:data:`_BUILDER`)."""
    return make_parser(_forwarder())


def _forwarder() -> Transformer:
    """A Transformer whose method for each rule calls that rule's method on
    the current parse's :class:`_AstBuilder`."""

    def forward(rule: Any) -> Any:
        def method(self: Transformer, children: list[Any]) -> Any:
            return rule(_BUILDER.get(), children)

        method.__name__ = rule.__name__
        return method

    rules = {
        name: forward(member)
        for name, member in vars(_AstBuilder).items()
        if callable(member) and not name.startswith("_")
    }
    forwarder_class = type("_Forwarder", (Transformer,), rules)
    return forwarder_class(visit_tokens=False)


# Terminals a value can start with, for "expected a value" in syntax errors.
# (Only terminals that cannot continue a complete value: `[`, `(`, `*`, `-`
# can also be an index, a call or a binary operator.)
_VALUE_STARTS = frozenset({"IDENT", "INT", "FLOAT", "STRING", "BOTTOM", "LBRACE"})
_CLOSERS = (("RBRACE", "`}`"), ("RSQB", "`]`"), ("RPAR", "`)`"))
_UNSUPPORTED_TOKENS = {
    "SI_NUMBER": "number multipliers (such as `1Ki`) are " + UNSUPPORTED,
    "MULTILINE_STRING": 'multi-line strings (`"""`) are ' + UNSUPPORTED,
    "RAW_STRING": 'raw strings (`#"..."#`) are ' + UNSUPPORTED,
    "BYTES": "byte literals (`'...'`) are " + UNSUPPORTED,
    "ATTRIBUTE": "attributes (`@name(...)`) are " + UNSUPPORTED,
    "UNTERMINATED_STRING": "string literal not terminated",
}
_PLACEHOLDER = "_\x00"
"""The identifier the error recovery inserts for a missing value (no
source text can spell it); it stands for the reported error (a Poison)."""
_MAX_RECOVERIES = 200
_RESYNC_TOKENS = 3
"""Tokens the parser must accept after a syntax error before the next error
counts as a new one (fewer, and it is taken for an echo of the first)."""
_COMPREHENSION = re.compile(r"^\s*(for|if|let)\b")
_INNER_COMPREHENSION = re.compile(r"[\[{(,]\s*(for|if|let)\s+\S*\s*$")
_BINARY_OPERATORS = frozenset({"|", "&", "||", "&&", "==", "+", "-", "*", "/"})
_BINARY_OPERATORS |= {">=", "<=", ">", "<", "!=", "=~", "!~"}


def _describe_char(char: str) -> str:
    if char.isprintable() and not char.isspace():
        return f"character `{char}`"
    return f"character U+{ord(char):04X}"


def describe_token(token: Token) -> str:
    """A token as a message names it: "identifier `x`", "newline", "`}`" ..."""
    kind = token.type
    if kind == "$END" or (kind == "COMMA" and token.value == EOF_COMMA):
        return "end of file"
    if kind == "COMMA" and token.value == NEWLINE_COMMA:
        return "newline"
    if kind == "IDENT":
        return f"identifier `{token.value}`"
    if kind in ("INT", "FLOAT"):
        return f"number `{token.value}`"
    if kind == "STRING":
        text = token.value if len(token.value) <= 30 else token.value[:27] + '..."'
        text = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
        return f"string {text}"
    if kind == "BAD_CHAR":
        return _describe_char(token.value)
    return f"`{token.value}`"


class _SyntaxErrorReporter:
    """Reports lark's syntax errors and patches the parse to continue after them.

    Recovery (lark's ``on_error`` protocol) tries, in order: insert a missing
    comma, insert a placeholder value, else skip the offending token. Only the
    first error of each line is reported: later ones on the same line are
    almost always echoes of the first.
    """

    def __init__(self, source: Source, diagnostics: Diagnostics, lex_state: LexState) -> None:
        self.source = source
        self.diagnostics = diagnostics
        self.lex_state = lex_state
        self.positions: set[tuple[int, int]] = set()
        """Where the syntax errors reported are (line, col)."""
        self.count = 0
        self.recoveries = 0
        self.last_line = 0
        self.emitted_at_last_error = -_RESYNC_TOKENS

    def _token_pos(self, token: Token) -> Pos:
        if token.type == "$END" or token.line is None:
            return self._end_pos()
        if token.type == "COMMA" and token.value in (NEWLINE_COMMA, EOF_COMMA):
            # An inserted comma stands at the end of the line it terminates.
            if token.value == EOF_COMMA:
                return self._end_pos()
            return Pos(self.source, token.line, len(self.source.line(token.line)) + 1)
        return Pos(self.source, token.line, token.column)

    def _end_pos(self) -> Pos:
        """Just after the last non-blank line: where a missing token belongs."""
        line = len(self.source.lines)
        while line > 1 and not self.source.line(line).strip():
            line -= 1
        return Pos(self.source, line, len(self.source.line(line)) + 1)

    def report(self, error: UnexpectedInput) -> None:
        if not isinstance(error, UnexpectedToken):  # pragma: no cover - BAD_CHAR lexes anything
            pos = Pos(self.source, error.line or 1, error.column or 1)
            self._add(pos, "unexpected input")
            return
        token = error.token
        pos = self._token_pos(token)
        self._add(pos, self._message(token, error.accepts or error.expected))

    def _add(self, pos: Pos, message: str) -> None:
        # An error on the line of the previous one, or before the parser has
        # accepted a few tokens since, is an echo of that error.
        accepted = self.lex_state.emitted - 1 - self.emitted_at_last_error
        self.emitted_at_last_error = self.lex_state.emitted
        echo = self.count and (pos.line == self.last_line or accepted < _RESYNC_TOKENS)
        self.count += 1
        if echo:
            return
        self.last_line = pos.line
        self.positions.add((pos.line, pos.col))
        self.diagnostics.error(pos, message)

    def _message(self, token: Token, expected: set[str]) -> str:
        if token.type in _UNSUPPORTED_TOKENS:
            return _UNSUPPORTED_TOKENS[token.type]
        if token.type == "ARROW":
            return (
                "unexpected `<-` (one token in CUE); for a bound on a negative number write `< -1`"
            )
        if token.type == "BAD_CHAR" and token.value == "#":
            return "unexpected character `#`; a definition name is `#` followed by a letter"
        line = self.source.line(token.line) if token.line else ""
        before = line[: token.column - 1] if token.column else ""
        match = _COMPREHENSION.match(line) or _INNER_COMPREHENSION.search(before)
        if match and match.group(1) == "let":
            return "`let` declarations are " + UNSUPPORTED
        if match:
            return f"comprehensions (`{match.group(1)} ...`) are " + UNSUPPORTED
        at_end = token.type == "$END" or (token.type == "COMMA" and token.value == EOF_COMMA)
        message = f"unexpected {describe_token(token)}{_expected(expected, at_end)}"
        if token.value in _BINARY_OPERATORS and not before.strip():
            message += (
                "; a line break after a value ends it (CUE inserts a comma there): "
                "put the operator at the end of the previous line"
            )
        return message

    def recover(self, error: UnexpectedInput) -> bool:
        self.report(error)
        if not isinstance(error, UnexpectedToken) or error.token.type == "$END":
            return False
        self.recoveries += 1
        if self.recoveries > _MAX_RECOVERIES:
            return False
        interactive = error.interactive_parser
        token = error.token
        fillers = (
            Token.new_borrow_pos("COMMA", ",", token),
            Token.new_borrow_pos("IDENT", _PLACEHOLDER, token),
        )
        for filler in fillers:
            trial = interactive.copy()
            try:
                trial.feed_token(filler)
                trial.feed_token(token)
            except UnexpectedInput:
                continue
            interactive.feed_token(filler)
            interactive.feed_token(token)
            return True
        return True  # skip the offending token


def _expected(expected: set[str], at_end: bool) -> str:
    closers = [name for terminal, name in _CLOSERS if terminal in expected]
    if at_end and closers:
        return "; expected " + " or ".join(closers)
    if "COLON" in expected:
        return "; expected `:`"
    if expected & _VALUE_STARTS:
        return "; expected a value"
    wanted = (["`,`", "a newline"] if "COMMA" in expected else []) + closers
    if not wanted:
        return ""
    if len(wanted) == 1:
        return "; expected " + wanted[0]
    return "; expected " + ", ".join(wanted[:-1]) + " or " + wanted[-1]


# --------------------------------------------------------------------------
# Strings and numbers

_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "/": "/",
    "\\": "\\",
    '"': '"',
}


def decode_string(token: Token, source: Source, diagnostics: Diagnostics) -> str | None:
    """The value of a double-quoted string token, or None after reporting why not."""
    body = token.value[1:-1]
    out: list[str] = []
    i = 0
    ok = True
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            if ch != "\r":  # the spec discards carriage returns inside strings
                out.append(ch)
            i += 1
            continue
        pos = Pos(source, token.line, token.column + 1 + i)
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nxt])
            i += 2
        elif nxt in ("u", "U"):
            width = 4 if nxt == "u" else 8
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                diagnostics.error(pos, f"escape `\\{nxt}` needs exactly {width} hexadecimal digits")
                ok = False
                i += 2
                continue
            code = int(digits, 16)
            if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
                diagnostics.error(
                    pos, f"escape `\\{nxt}{digits}` is not a valid Unicode code point"
                )
                ok = False
            else:
                out.append(chr(code))
            i += 2 + width
        elif nxt == "(":
            diagnostics.error(pos, "string interpolation (`\\(...)`) is " + UNSUPPORTED)
            return None
        elif nxt == "x" or nxt.isdigit():
            diagnostics.error(
                pos, "byte escapes (`\\x..`, `\\ooo`) are only valid in byte literals"
            )
            ok = False
            i += 2
        else:
            diagnostics.error(pos, f"unknown escape sequence `\\{nxt}`")
            ok = False
            i += 2
    return "".join(out) if ok else None


def parse_int(text: str) -> int:
    digits = text.replace("_", "")
    if digits[:2] in ("0x", "0X"):
        return int(digits[2:], 16)
    if digits[:2] == "0o":
        return int(digits[2:], 8)
    if digits[:2] == "0b":
        return int(digits[2:], 2)
    return int(digits, 10)


# --------------------------------------------------------------------------
# Tree to AST

_PREDECLARED_LITERALS = {"true": ("bool", True), "false": ("bool", False), "null": ("null", None)}


def _label_kind(name: str) -> LabelKind:
    if name.startswith(("#", "_#")):
        return LabelKind.DEFINITION
    if name.startswith("_"):
        return LabelKind.HIDDEN
    return LabelKind.REGULAR


@attrs.frozen(slots=True)
class _Label:
    """A label while a field is being built (not part of the final AST)."""

    pos: Pos
    name: str | None  # None for a pattern label
    kind: LabelKind
    optional: bool
    quoted: bool
    pattern: Expr | None = None


@attrs.frozen(slots=True)
class _Default:
    """``*x`` while a disjunction is being built."""

    pos: Pos
    operand: Expr


@attrs.frozen(slots=True)
class _Ellipsis:
    pos: Pos
    tail: Expr


_BINARY_PRECEDENCE = {"|": 1, "&": 2}
"""The binary operators the subset evaluates; the others are reported."""


class _AstBuilder:
    """Builds the AST of one parse while lark parses, reporting unsupported
    constructs: one public method per grammar rule, called with the rule's
    children (see :func:`_forwarder`)."""

    def __init__(self, source: Source, diagnostics: Diagnostics) -> None:
        self.source = source
        self.diagnostics = diagnostics
        self.complete = True
        self.has_references = False
        self.embeddings: set[tuple[int, int]] = set()
        """Where embeddings were reported (line, col)."""

    # -- helpers ---------------------------------------------------------
    def _tpos(self, token: Token) -> Pos:
        if token.line is None:  # a token the error recovery inserted
            return Pos(self.source, 1, 1)
        return Pos(self.source, token.line, token.column)

    def _pos(self, children: list[Any]) -> Pos:
        """The position of the first child that has one."""
        for child in children:
            if isinstance(child, Token):
                return self._tpos(child)
            if isinstance(child, Tree):
                return self._pos(child.children)
            pos = getattr(child, "pos", None)
            if pos is not None:
                return pos
        return Pos(self.source, 1, 1)

    def _poison(self, pos: Pos, message: str) -> Poison:
        self.diagnostics.error(pos, message)
        return Poison(pos)

    def _value(self, item: Any) -> Expr:
        """An operand; a stray `*x` outside a disjunction is an error."""
        if isinstance(item, _Default):
            return self._poison(item.pos, "a default marker `*` must mark a term of a disjunction")
        return item

    # -- file and declarations ------------------------------------------
    def file(self, children: list[Any]) -> File:
        package: str | None = None
        decls: list[Decl] = []
        seen_declaration = False
        for child in children:
            if child is None:
                continue
            if isinstance(child, tuple) and child[0] == "package":
                _, pos, name = child
                if seen_declaration or package is not None:
                    self.diagnostics.error(pos, "the package clause must come first in the file")
                elif name != PACKAGE_NAME:
                    self.diagnostics.error(
                        pos,
                        f"package `{name}`: capos-sched manifests belong to "
                        f"package `{PACKAGE_NAME}`",
                    )
                package = name
                continue
            seen_declaration = True
            if isinstance(child, Field | PatternField):
                decls.append(child)
        return File(
            self.source, package, tuple(decls), _idents(decls), self.complete, self.has_references
        )

    def preamble(self, children: list[Token]) -> Any:
        keyword, argument = children
        pos = self._tpos(keyword)
        if keyword.value in ("for", "if"):
            self.diagnostics.error(
                pos, f"comprehensions (`{keyword.value} ...`) are " + UNSUPPORTED
            )
            return None
        if keyword.value == "let":
            self.diagnostics.error(pos, "`let` declarations are " + UNSUPPORTED)
            return None
        if keyword.value == "package" and argument.type == "IDENT":
            if _label_kind(argument.value) is not LabelKind.REGULAR or argument.value == "_":
                self.diagnostics.error(self._tpos(argument), "invalid package name")
            return ("package", pos, argument.value)
        self.complete = False  # whatever it meant, it is dropped
        if keyword.value == "import":
            self.diagnostics.error(pos, "`import` is " + UNSUPPORTED)
            return None
        self.diagnostics.error(
            self._tpos(argument), f"unexpected {describe_token(argument)}; expected `:`"
        )
        return None

    def embedding(self, children: list[Any]) -> None:
        pos = self._pos(children)
        self.complete = False
        value = children[0]
        if isinstance(value, Poison) or (
            isinstance(value, Disj | Conj) and any(isinstance(t, Poison) for t in value.terms)
        ):
            return None  # already reported (or the error recovery's doing)
        self.embeddings.add((pos.line, pos.col))
        self.diagnostics.error(
            pos,
            "embedding a value in a struct is " + UNSUPPORTED + "; unify instead "
            "(`name: #Definition & {...}`)",
        )
        return None

    def struct_ellipsis(self, children: list[Any]) -> None:
        self.diagnostics.error(self._pos(children), "`...` in a struct is " + UNSUPPORTED)
        return None

    def field(self, children: list[Any]) -> Decl | None:
        *labels, value = children
        value = self._value(value)
        if any(label is None for label in labels):
            self.complete = False
            return None
        result: Decl | None = None
        for label in reversed(labels):
            if result is not None:
                value = StructLit(result.pos, (result,), _idents([result]))
            if label.pattern is not None:
                result = PatternField(label.pos, label.pattern, value)
            else:
                result = Field(
                    label.pos, label.name, label.kind, label.optional, label.quoted, value
                )
        return result

    def _mark(self, pos: Pos, name: str, mark: Tree | None) -> bool:
        """True for `?` (optional). A `!` (required) is reported, and the
        field kept as a regular one so that it causes no further errors."""
        if mark is None:
            return False
        if mark.children[0].value == "?":
            return True
        self.diagnostics.error(pos, f"required fields (`{name}!`) are " + UNSUPPORTED)
        return False

    def ident_label(self, children: list[Any]) -> _Label | None:
        token, mark = children
        pos = self._tpos(token)
        name = token.value
        if name == "_":
            self.diagnostics.error(pos, "`_` cannot be used as a label")
            return None
        return _Label(pos, name, _label_kind(name), self._mark(pos, name, mark), quoted=False)

    def string_label(self, children: list[Any]) -> _Label | None:
        token, mark = children
        pos = self._tpos(token)
        name = decode_string(token, self.source, self.diagnostics)
        if name is None:
            return None
        return _Label(pos, name, LabelKind.REGULAR, self._mark(pos, name, mark), quoted=True)

    def pattern_label(self, children: list[Any]) -> _Label:
        pos = self._pos(children)
        return _Label(pos, None, LabelKind.REGULAR, False, False, pattern=self._value(children[0]))

    def dynamic_label(self, children: list[Any]) -> None:
        pos = self._pos(children)
        self.diagnostics.error(pos, "dynamic field labels (`(expr): value`) are " + UNSUPPORTED)
        return None

    def alias_label(self, children: list[Any]) -> _Label | None:
        pos = self._pos(children)
        self.diagnostics.error(pos, "aliases (`X=label: value`) are " + UNSUPPORTED)
        return children[1]  # the field itself is kept; only the alias is dropped

    # -- expressions -----------------------------------------------------
    def expr(self, children: list[Any]) -> Any:
        """A flat ``operand (op operand)*`` sequence: apply CUE's precedence.

        Only ``|`` (lowest) and ``&`` are evaluated; any other binary operator
        is reported where it stands.
        """
        operands = children[0::2]
        operators = [_operator_token(op) for op in children[1::2]]
        for token in operators:
            if token.value not in _BINARY_PRECEDENCE:
                return self._poison(
                    self._tpos(token), f"binary operator `{token.value}` is " + UNSUPPORTED
                )
        groups: list[list[Any]] = [[operands[0]]]
        for token, operand in zip(operators, operands[1:], strict=True):
            if token.value == "|":
                groups.append([operand])
            else:
                groups[-1].append(operand)
        terms = [self._conjunction(group) for group in groups]
        if len(terms) == 1:
            return terms[0]
        exprs: list[Expr] = []
        marked: list[bool] = []
        for term in terms:
            is_default = isinstance(term, _Default)
            exprs.append(term.operand if is_default else term)
            marked.append(is_default)
        return Disj(self._pos(exprs), tuple(exprs), tuple(marked))

    def _conjunction(self, group: list[Any]) -> Any:
        if len(group) == 1:
            return group[0]  # may be a default marker, legal as a disjunction term
        terms = tuple(self._value(item) for item in group)
        return Conj(self._pos(list(terms)), terms)

    def default(self, children: list[Any]) -> _Default:
        return _Default(self._tpos(children[0]), self._value(children[1]))

    def neg(self, children: list[Any]) -> Expr:
        operand = self._value(children[1])
        pos = self._tpos(children[0])
        if isinstance(operand, Lit) and operand.kind in ("int", "float"):
            return Lit(pos, operand.kind, -operand.value)
        if isinstance(operand, Poison):
            return operand
        return self._poison(pos, "unary `-` on anything but a number literal is " + UNSUPPORTED)

    def unary_plus(self, children: list[Any]) -> Poison:
        return self._poison(self._tpos(children[0]), "unary `+` is " + UNSUPPORTED)

    def unary_not(self, children: list[Any]) -> Poison:
        return self._poison(self._tpos(children[0]), "unary `!` is " + UNSUPPORTED)

    def bound(self, children: list[Any]) -> Expr:
        token = _operator_token(children[0])
        pos = self._tpos(token)
        operand = self._value(children[1])
        if token.value in ("=~", "!~"):
            return self._poison(
                pos, f"regular expression constraints (`{token.value}`) are " + UNSUPPORTED
            )
        return Bound(pos, token.value, operand)

    def selector(self, children: list[Any]) -> Expr:
        operand, name_token = children
        pos = self._tpos(name_token)
        if name_token.type == "STRING":
            name = decode_string(name_token, self.source, self.diagnostics)
            if name is None:
                return Poison(pos)
        else:
            name = name_token.value
        return Selector(pos, self._value(operand), name)

    def index(self, children: list[Any]) -> Poison:
        return self._poison(self._pos(children), "index expressions (`x[i]`) are " + UNSUPPORTED)

    def call(self, children: list[Any]) -> Poison:
        callee = children[0]
        what = f"`{callee.name}(...)`" if isinstance(callee, Ref) else "calls"
        return self._poison(self._pos(children), f"function calls ({what}) are " + UNSUPPORTED)

    def ref(self, children: list[Token]) -> Expr:
        token = children[0]
        pos = self._tpos(token)
        if token.value == _PLACEHOLDER:
            return Poison(pos)  # the error recovery's placeholder: already reported
        name = token.value
        if name == "_":
            return Top(pos)
        if name in _PREDECLARED_LITERALS:
            kind, value = _PREDECLARED_LITERALS[name]
            return Lit(pos, kind, value)
        self.has_references = True
        return Ref(pos, name)

    def paren(self, children: list[Any]) -> Expr:
        return self._value(children[0])

    def struct(self, children: list[Any]) -> StructLit:
        decls = [c for c in children[1:] if isinstance(c, Field | PatternField)]
        return StructLit(self._tpos(children[0]), tuple(decls), _idents(decls))

    def list(self, children: list[Any]) -> ListLit:
        items: list[Expr] = []
        tail: Expr | None = None
        for child in children[1:]:
            if child is None:
                continue
            if isinstance(child, _Ellipsis):
                tail = child.tail
            else:
                items.append(self._value(child))
        return ListLit(self._tpos(children[0]), tuple(items), tail)

    def list_ellipsis(self, children: list[Any]) -> _Ellipsis:
        token, tail = children
        pos = self._tpos(token)
        return _Ellipsis(pos, Top(pos) if tail is None else self._value(tail))

    def literal(self, children: list[Token]) -> Expr:
        token = children[0]
        pos = self._tpos(token)
        kind = token.type
        if kind == "INT":
            return Lit(pos, "int", parse_int(token.value))
        if kind == "FLOAT":
            return Lit(pos, "float", decimal.Decimal(token.value.replace("_", "")))
        if kind == "STRING":
            value = decode_string(token, self.source, self.diagnostics)
            return Poison(pos) if value is None else Lit(pos, "string", value)
        if kind == "BOTTOM":
            return BottomLit(pos)
        if kind == "BAD_CHAR":
            return self._poison(pos, f"unexpected {_describe_char(token.value)}")
        return self._poison(pos, _UNSUPPORTED_TOKENS[kind])


def _operator_token(tree: Tree) -> Token:
    """The token inside a ``binary_op``/``rel_op`` tree (rel_op may be nested)."""
    child = tree.children[0]
    return _operator_token(child) if isinstance(child, Tree) else child


def _idents(decls: list[Decl] | tuple[Decl, ...]) -> frozenset[str]:
    return frozenset(d.name for d in decls if isinstance(d, Field) and not d.quoted)
