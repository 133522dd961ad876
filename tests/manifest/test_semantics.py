"""The evaluator against the CUE specification's own examples.

Rows marked "spec" are from the tables of the CUE language specification
(doc/ref/spec.md in cue-lang/cue); each checks that what capos-sched accepts
means what it means to CUE. Files here are evaluated standalone (no schema).
"""

from __future__ import annotations

import decimal
import logging

import pytest
from lark import Lark
from lark import logger as lark_logger

from capos_sched.manifest import ManifestError
from capos_sched.manifest.grammar import GRAMMAR, CommaInserter
from capos_sched.manifest.loader import export_text


def cue(text: str) -> dict:
    return export_text(text, "s.cue", with_schema=False)


def value(expression: str):
    """The exported value of ``x: <expression>``."""
    return cue(f"x: {expression}\n")["x"]


def messages(text: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        cue(text)
    return [d.message for d in info.value.diagnostics]


# --------------------------------------------------------------------------
# Defaults (spec, "Default values")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('*"tcp" | "udp"', "tcp"),
        ('string | *"foo"', "foo"),
        ("*1 | 2 | 3", 1),
        ("(*1|2|3) | *(1|*2|3)", 2),
        ('(*"tcp"|"udp") & ("udp"|*"tcp")', "tcp"),
        ('(*"tcp"|"udp") & ("udp"|"tcp")', "tcp"),
        ('(*"tcp"|"udp") & "tcp"', "tcp"),
        ("(*true | false) & bool", True),
        ("(*true | false) & (true | false)", True),
        ("float | *1", 1),
        ("(* >=5 | int) & (* <=5 | int)", 5),
        ("{a: 1} | *{b: 1}", {"b": 1}),
        ("({a:1}|*{b:1}) & ({a:1}|*{b:1})", {"b": 1}),
    ],
)
def test_defaults_resolve_as_in_the_spec(expression, expected):
    assert value(expression) == expected


@pytest.mark.parametrize(
    "expression",
    [
        "(*1|2|3) | (1|*2|3)",  # spec: default 1|2, still ambiguous
        "(*1|2) & (1|*2)",  # spec: default _|_
        '(*"tcp"|"udp") & (*"udp"|"tcp")',  # spec: default _|_
        "*{a: 1} | *{b: 1}",
        '"tcp" | "udp"',
    ],
)
def test_ambiguous_disjunctions_are_incomplete(expression):
    (message,) = messages(f"x: {expression}\n")
    assert message.startswith("incomplete value: `x` ")
    assert "ambiguous" in message or "alternatives" in message


def test_a_default_is_kept_through_a_reference():
    assert cue("a: *1 | int\nb: a\n") == {"a": 1, "b": 1}


# --------------------------------------------------------------------------
# Unification, bounds, numbers (spec, "Unification", "Bounds", "Numeric values")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("{a: int, a: 1}", {"a": 1}),
        ("{a: int} & {a: 1}", {"a": 1}),
        ("{a: >=1 & <=7} & {a: >=5 & <=9} & {a: 6}", {"a": 6}),
        ("{a: 1} & {b: 2}", {"a": 1, "b": 2}),
        ("{a: 1, b: int} & {b: 2}", {"a": 1, "b": 2}),
        ("2 & >=2 & <=5", 2),
        ("2.5 & >=1 & <=5", decimal.Decimal("2.5")),
        ("2.5 & float & >1 & <5", decimal.Decimal("2.5")),
        (">=0 & <=7 & >=3 & <=10 & 3", 3),
        ("!=null & 1", 1),
        ("_ & 5", 5),
        ("number & 1", 1),
        ("0xBad_Face", 0xBADFACE),
        ("0o755", 0o755),
        ("0b0101_0001", 0b01010001),
        ("170_141_183_460_469_231_731_687_303_715_884_105_727", 2**127 - 1),
        (".25", decimal.Decimal("0.25")),
        ("1E6", decimal.Decimal("1E6")),
        ("-7", -7),
        ("uint8 & 255", 255),
        ('"日本語"', "日本語"),
        ('"\\u65e5本\\U00008a9e"', "日本語"),
        ('"a\\tb\\"c\\\\d\\/"', 'a\tb"c\\d/'),
    ],
)
def test_unification_as_in_the_spec(expression, expected):
    assert value(expression) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("{a: 1} & {a: 2}", "conflicting values for `a`: 2 and 1 (other value at 1:8)"),
        ("2.5 & int & >1 & <5", "`x`: expected int, got 2.5"),
        ("int & 1.0", "`x`: expected int, got 1.0"),
        ('("a" | "b") & "c"', 'unknown x "c"; expected one of "a", "b"'),
        (">=0 & <=7 & >=3 & <=10 & 8", "x 8 outside [3, 7]"),
        ("uint8 & 256", "x 256 outside [0, 255]"),
        ("null & 8", "`x`: expected null, got 8"),
        ("true & false", "conflicting values for `x`: false and true (other value at 1:4)"),
        ("_|_", "explicit error (`_|_`)"),
    ],
)
def test_errors_as_in_the_spec(expression, message):
    assert messages(f"x: {expression}\n") == [message]


def test_an_int_and_a_float_never_unify():
    assert messages("x: 1 & 1.0\n") == ["`x`: expected int, got 1.0"]


# --------------------------------------------------------------------------
# Structs: closedness, patterns, hidden and optional fields


def test_multiple_declarations_of_a_definition_merge_before_closing():
    # spec, "Definitions and hidden fields": #MyStruct
    text = (
        "#MyStruct: {sub: field: string}\n"
        "#MyStruct: {sub: enabled?: bool}\n"
        'ok: #MyStruct & {sub: {field: "x", enabled: true}}\n'
    )
    assert cue(text) == {"ok": {"sub": {"field": "x", "enabled": True}}}
    bad = text + 'myValue: #MyStruct & {sub: {field: "y", feild: 2}}\n'
    assert messages(bad) == ["field `feild` not allowed; did you mean `field`?"]


def test_a_definition_is_closed_recursively():
    text = "#A: {b: {c: int}}\nx: #A & {b: {c: 1, d: 2}}\n"
    assert messages(text) == ["field `d` not allowed"]


def test_a_regular_struct_stays_open():
    assert cue("_a: {b: int}\nx: _a & {b: 1, c: 2}\n") == {"x": {"b": 1, "c": 2}}


def test_pattern_constraints_apply_to_every_matching_field():
    # spec, "Pattern and default constraints": intMap
    assert cue("intMap: [string]: int\nintMap: {t1: 43}\n") == {"intMap": {"t1": 43}}
    assert messages("intMap: [string]: int\nintMap: {t1: 43, t2: 2.4}\n") == [
        "`t2`: expected int, got 2.4"
    ]


def test_a_pattern_allows_fields_in_a_closed_struct():
    assert cue("#M: {[string]: int}\nx: #M & {anything: 1}\n") == {"x": {"anything": 1}}


def test_hidden_definition_and_optional_fields_are_not_exported():
    text = "_h: 1\n#D: {a: int}\nx: {y?: int, z: _h}\n"
    assert cue(text) == {"x": {"z": 1}}


def test_an_optional_field_set_to_a_value_is_exported():
    assert cue("#D: {a?: int}\nx: #D & {a: 3}\n") == {"x": {"a": 3}}


def test_shorthand_is_nesting():
    assert cue("a: b: c: 1\na: b: d: 2\n") == {"a": {"b": {"c": 1, "d": 2}}}


def test_open_and_closed_lists():
    assert value("[1, 2, ...int] & [1, 2, 3]") == [1, 2, 3]
    assert value("[...string]") == []
    assert messages('x: [...int] & [1, "a"]\n') == ['`[1]`: expected int, got "a"']


# --------------------------------------------------------------------------
# References and scope


def test_quoted_labels_bind_no_identifier():
    # spec, "Field declarations": `d: s` is an unresolved identifier
    assert messages('"s": 3\nd: s\n') == ["reference `s` not found"]


def test_selectors_reach_definitions_and_quoted_fields():
    text = '#T: {x: int, y: 3, "x-y": 4}\nb: #T.y\nd: #T."x-y"\n'
    assert cue(text) == {"b": 3, "d": 4}


def test_top_level_references_see_every_declaration():
    assert cue("a: {x: 1}\nb: a\na: {y: 2}\n")["b"] == {"x": 1, "y": 2}


def test_keywords_can_be_labels():
    assert cue('"package": 1\nimport: 2\nfor: 3\ntrue: 4\n') == {
        "package": 1,
        "import": 2,
        "for": 3,
        "true": 4,
    }


# --------------------------------------------------------------------------
# Commas and comments (spec, "Commas", "Comments")


@pytest.mark.parametrize(
    "text",
    [
        "a: 1\nb: [1, 2]\n",
        "a: 1, b: [1, 2]\n",
        "a: 1,\nb: [\n\t1,\n\t2,\n]\n",
        "a: 1 // one\nb: [1, // first\n\t2]\n",
        "a: 1\n\n\n// only a comment\nb: [1, 2]",
        "a: *1 |\n\t2\nb: [1, 2]\n",
    ],
)
def test_newlines_stand_for_commas(text):
    assert cue(text) == {"a": 1, "b": [1, 2]}


def test_the_grammar_has_no_lalr_conflicts(caplog):
    # lark resolves shift/reduce conflicts silently; debug mode logs them.
    messages_logged: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages_logged.append(record.getMessage())

    handler = Capture()
    lark_logger.addHandler(handler)
    level = lark_logger.level
    lark_logger.setLevel(logging.DEBUG)
    try:
        Lark(
            GRAMMAR, start="file", parser="lalr", lexer="basic", postlex=CommaInserter(), debug=True
        )
        # The check itself must be able to fail: a dangling-else grammar conflicts.
        Lark('start: "if" start ["else" start] | "x"', parser="lalr", debug=True)
    finally:
        lark_logger.removeHandler(handler)
        lark_logger.setLevel(level)
    conflicts = [m for m in messages_logged if "conflict" in m.lower()]
    assert len(conflicts) == 1 and "else" in conflicts[0].lower(), conflicts


def test_top_level_patterns_apply_to_top_level_fields():
    assert messages('[string]: int\na: 1\nb: "x"\n') == ['`b`: expected int, got "x"']


def test_a_top_level_pattern_referring_to_a_field_it_constrains_is_a_cycle():
    # The cycle `x: x & int` contributes nothing: x stays `int`, as in CUE.
    assert messages("[string]: x\nx: int\n") == ["incomplete value: `x` must be concrete, not int"]
    assert messages("[string]: x\na: 1\nx: int\n") == [
        "incomplete value: `x` must be concrete, not int"
    ]
