"""Source positions, diagnostics and the one error type the manifest layer raises.

Every problem found in a manifest becomes a :class:`Diagnostic` that points at
a line and column of a source file. Problems are collected (up to
:data:`MAX_DIAGNOSTICS`) rather than raised one by one, so an operator sees all
of them in one run; the collection is raised as a single :class:`ManifestError`.
"""

from __future__ import annotations

import json

import attrs

MAX_DIAGNOSTICS = 20
"""Diagnostics reported per load; further ones are counted, not shown, because
past twenty most are consequences of the first ones."""


def quote(text: str) -> str:
    """A user's string as a message shows it: double-quoted, with control
    characters escaped, so a message always stays on one line."""
    return json.dumps(text, ensure_ascii=False)


def show_name(text: str) -> str:
    """A label or name as a message shows it: in backticks when it reads
    plainly, else quoted like a string."""
    if text and text.isprintable() and "`" not in text and text.strip() == text:
        return f"`{text}`"
    return quote(text)


@attrs.frozen(eq=False)
class Source:
    """One manifest or schema text, kept whole so diagnostics can quote lines.

    Invariant: ``lines`` is ``text`` split at ``\\n`` with carriage returns
    removed, so ``lines[n - 1]`` is the n-th line a diagnostic may quote.
    """

    filename: str
    text: str = attrs.field(repr=False)
    is_schema: bool = False
    lines: tuple[str, ...] = attrs.field(init=False, repr=False)

    @lines.default
    def _split_lines(self) -> tuple[str, ...]:
        return tuple(line.rstrip("\r") for line in self.text.split("\n"))

    def line(self, number: int) -> str:
        """The 1-based ``number``-th line, or "" past the end."""
        if 1 <= number <= len(self.lines):
            return self.lines[number - 1]
        return ""


@attrs.frozen(slots=True)
class Pos:
    """A 1-based line and column in a :class:`Source` (columns count characters).
    Two positions are equal when they are the same place in the same Source."""

    source: Source
    line: int
    col: int

    def __repr__(self) -> str:
        return f"Pos({self.source.filename}:{self.line}:{self.col})"

    def short(self, relative_to: Source | None = None) -> str:
        """``line:col``, prefixed by the file name when it is another file."""
        if relative_to is self.source:
            return f"{self.line}:{self.col}"
        return f"{self.source.filename}:{self.line}:{self.col}"

    def sort_key(self) -> tuple[str, int, int]:
        return (self.source.filename, self.line, self.col)


@attrs.frozen
class Diagnostic:
    """One problem at one position.

    Invariants: ``line`` and ``col`` are 1-based, or both 0 when the problem
    concerns the file as a whole (it cannot be read, for instance); then
    ``source_line`` is empty and the rendering has no position or caret.
    """

    filename: str
    line: int
    col: int
    message: str
    source_line: str = ""

    @classmethod
    def at(cls, pos: Pos, message: str) -> Diagnostic:
        return cls(pos.source.filename, pos.line, pos.col, message, pos.source.line(pos.line))

    @classmethod
    def whole_file(cls, filename: str, message: str) -> Diagnostic:
        return cls(filename, 0, 0, message)

    def render(self) -> str:
        """``file:line:col: message``, then the source line and a caret under the column."""
        if self.line == 0:
            return f"{self.filename}: {self.message}"
        # Control characters are shown as U+FFFD, one for one, so that the
        # terminal is not driven by the file and the caret stays aligned; tabs
        # are kept in the caret's indentation to line up under tabbed source.
        shown = "".join(
            ch if ch.isprintable() or ch == "\t" else "\ufffd" for ch in self.source_line
        )
        prefix = "".join("\t" if ch == "\t" else " " for ch in shown[: self.col - 1])
        return f"{self.filename}:{self.line}:{self.col}: {self.message}\n    {shown}\n    {prefix}^"


class ManifestError(Exception):
    """A manifest could not be loaded; ``diagnostics`` says every reason found.

    Invariant: ``diagnostics`` is non-empty, sorted by file and position, holds
    at most :data:`MAX_DIAGNOSTICS` entries; ``omitted`` counts the rest.
    """

    def __init__(self, diagnostics: tuple[Diagnostic, ...], omitted: int = 0) -> None:
        if not diagnostics:
            raise ValueError("a ManifestError needs at least one diagnostic")
        self.diagnostics = diagnostics
        self.omitted = omitted
        super().__init__(self.render())

    def render(self) -> str:
        parts = [d.render() for d in self.diagnostics]
        if self.omitted:
            parts.append(f"... and {self.omitted} more error(s) not shown")
        return "\n".join(parts)

    def __str__(self) -> str:
        return self.render()


class Diagnostics:
    """Collects diagnostics while a manifest is processed; raises them together.

    Duplicates (same position and message) are dropped, so a problem reached
    along two evaluation paths is reported once.
    """

    def __init__(self) -> None:
        self._seen: set[tuple[str, int, int, str]] = set()
        self._items: list[Diagnostic] = []

    def add(self, diagnostic: Diagnostic) -> None:
        key = (diagnostic.filename, diagnostic.line, diagnostic.col, diagnostic.message)
        if key not in self._seen:
            self._seen.add(key)
            self._items.append(diagnostic)

    def error(self, pos: Pos, message: str) -> None:
        self.add(Diagnostic.at(pos, message))

    def items(self) -> tuple[Diagnostic, ...]:
        return tuple(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def exception(self) -> ManifestError:
        ordered = sorted(self._items, key=lambda d: (d.filename, d.line, d.col, d.message))
        return ManifestError(
            tuple(ordered[:MAX_DIAGNOSTICS]), max(0, len(ordered) - MAX_DIAGNOSTICS)
        )

    def raise_if_any(self) -> None:
        if self._items:
            raise self.exception()
