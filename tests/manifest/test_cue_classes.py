"""The classes of disagreement with real CUE found in issue 10, as unit tests.

These run without Node; test_cue_diff.py checks the same classes against real
CUE. Each error is asserted at its exact line:col, pointed at in the text.
"""

from __future__ import annotations

import decimal
import threading

import pytest

from capos_sched.manifest import ManifestError, load_plan_text
from capos_sched.manifest.commands import export_json_text
from capos_sched.manifest.errors import Diagnostics, Source
from capos_sched.manifest.loader import export_text
from capos_sched.manifest.render import decimal_text, json_text
from capos_sched.manifest.syntax import UNSUPPORTED, parse

from .helpers import BASE, at, error_at


def cue(text: str):
    return export_text(text, "s.cue", with_schema=False)


def located(text: str) -> list[tuple[int, int, str]]:
    with pytest.raises(ManifestError) as info:
        cue(text)
    return [(d.line, d.col, d.message) for d in info.value.diagnostics]


# --------------------------------------------------------------------------
# Errors inside a disjunction are errors of the file, not failed alternatives


def test_an_enclosing_reference_in_a_default_is_refused_not_dropped():
    text = "burst: 1\nw: {burst: 2, count: *burst | 5}\n"
    assert located(text) == [
        (
            *at(text, "burst |"),
            f"reference `burst` to a field of an enclosing struct is {UNSUPPORTED}; "
            "only top-level fields and definitions can be referenced",
        )
    ]


def test_an_unresolved_reference_in_a_disjunction_is_reported():
    for text in ('policy: _nope | "fifo"\n', 'policy: *_nope | "fifo"\n', 'p: "fifo" | _nope\n'):
        assert located(text) == [(*at(text, "_nope"), "reference `_nope` not found")]


def test_an_unsupported_alternative_is_reported():
    text = 'data: bytes | "x"\n'
    assert located(text) == [(*at(text, "bytes"), f"the predeclared `bytes` is {UNSUPPORTED}")]
    inside = "x: {a: bytes} | {b: 1}\n"
    assert located(inside) == [(*at(inside, "bytes"), f"the predeclared `bytes` is {UNSUPPORTED}")]


def test_an_unresolved_reference_in_a_manifest_disjunction():
    text = BASE + 'machine: policy: _nope | "fifo"\n'
    error_at(text, "_nope", "reference `_nope` not found")


@pytest.mark.parametrize(
    "text",
    [
        "x: {[_nope]: int}\nx: a: 1\n",
        "x: {[string]: {a: _nope}}\n",
        "[_nope]: int\na: 1\n",
        "x: [..._nope]\n",
        "x: {a?: _nope}\n",
    ],
)
def test_an_unresolved_reference_is_reported_where_nothing_evaluates_it(text):
    assert located(text) == [(*at(text, "_nope"), "reference `_nope` not found")]


def test_an_unsupported_reference_in_an_optional_field_is_reported():
    text = "x: {a?: bytes}\n"
    assert located(text) == [(*at(text, "bytes"), f"the predeclared `bytes` is {UNSUPPORTED}")]


def test_an_ordinary_failing_alternative_is_still_dropped():
    assert cue('x: *(1 & 2) | "fifo"\n') == {"x": "fifo"}


# --------------------------------------------------------------------------
# Hidden fields and definitions are evaluated even when unused


@pytest.mark.parametrize(
    ("text", "needle", "message"),
    [
        ("_a: 1 & 2\nx: 1\n", "2", "conflicting values for `_a`: 2 and 1 (other value at 1:5)"),
        ("#D: {a: 1 & 2}\nx: 1\n", "2", "conflicting values for `a`: 2 and 1 (other value at 1:9)"),
        ("_h: _|_\nx: 1\n", "_|_", "explicit error (`_|_`)"),
        ("#D: {a: _nope}\nx: 1\n", "_nope", "reference `_nope` not found"),
        (
            "x: {_h: 1 & 2, a: 1}\n",
            "2",
            "conflicting values for `_h`: 2 and 1 (other value at 1:9)",
        ),
        ("#D: {a: int}\n_x: #D & {b: 1}\ny: 1\n", "b:", "field `b` not allowed"),
        (
            "_x: b: _x\ny: 1\n",
            "b:",
            "structural cycle: `_x.b` contains itself (it is `_x`)",
        ),
    ],
)
def test_unused_hidden_fields_and_definitions_report_their_errors(text, needle, message):
    assert located(text) == [(*at(text, needle), message)]


def test_unused_definitions_need_not_be_concrete():
    assert cue("_h: {a: int}\n#D: {b: string, c?: 1 & 2}\nx: 1\n") == {"x": 1}


# --------------------------------------------------------------------------
# No false reference cycles


def test_a_reference_into_a_sibling_subtree():
    assert cue("p: a: t: 1\np: b: t: p.a.t\n") == {"p": {"a": {"t": 1}, "b": {"t": 1}}}


def test_a_thread_weight_from_another_process():
    text = (
        'machine: cpus: 1\nprocesses: {\n\ta: threads: x: {weight: 7, workload: kind: "spin"}\n'
        '\tb: threads: y: {weight: processes.a.threads.x.weight, workload: kind: "spin"}\n}\n'
    )
    plan = load_plan_text(text)
    assert [t.weight for t in plan.threads()] == [7, 7]


def test_a_recursive_definition_through_an_optional_field():
    text = "#L: {v: int, next?: #L}\nx: #L & {v: 1, next: {v: 2, next: {v: 3}}}\n"
    assert cue(text) == {"x": {"v": 1, "next": {"v": 2, "next": {"v": 3}}}}
    bad = "#L: {v: int, next?: #L}\nx: #L & {v: 1, next: {w: 2}}\n"
    assert located(bad) == [
        (*at(bad, "v:"), "incomplete value: `v` must be concrete, not int"),
        (*at(bad, "w:"), "field `w` not allowed"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("_a: _b & 2\n_b: _a\nx: _a\n", {"x": 2}),
        ("a: b & 2\nb: a\n", {"a": 2, "b": 2}),
        ("a: b\nb: c & {x: 1}\nc: a\n", {"a": {"x": 1}, "b": {"x": 1}, "c": {"x": 1}}),
        ("a: a & 1\n", {"a": 1}),
    ],
)
def test_a_reference_cycle_resolves_to_its_other_conjuncts(text, expected):
    assert cue(text) == expected


def test_an_unresolved_cycle_is_incomplete():
    text = "a: b\nb: a\n"
    assert located(text) == [
        (1, 1, "incomplete value: `a` must be concrete, not _"),
        (2, 1, "incomplete value: `b` must be concrete, not _"),
    ]


def test_a_structural_cycle():
    text = "a: b: a\n"
    assert located(text) == [
        (*at(text, "b"), "structural cycle: `a.b` contains itself (it is `a`)")
    ]


# --------------------------------------------------------------------------
# Exact decimals


@pytest.mark.parametrize(
    ("literal", "printed"),
    [
        ("0.1000000000000000055511151231257827", "0.1000000000000000055511151231257827"),
        ("1E+400", "1E+400"),
        ("1e-400", "1E-400"),
        ("1e6", "1E+6"),
        ("100.0e-2", "1.000"),
        ("1.50", "1.50"),
        ("2.5e1", "25"),
        (".25", "0.25"),
        ("-0.0", "0.0"),
    ],
)
def test_floats_print_as_cue_prints_them(literal, printed):
    value = cue(f"x: {literal}\n")["x"]
    assert isinstance(value, decimal.Decimal)
    assert decimal_text(value) == printed
    assert json_text({"x": value}) == '{\n  "x": ' + printed + "\n}"


def test_export_json_keeps_every_digit():
    text = BASE + "_f: 1E+400\n"
    assert '"x"' not in export_json_text(load_plan_text(text))  # a manifest exports no hidden field
    data = {"a": decimal.Decimal("0.1000000000000000055511151231257827"), "b": [1, "é"]}
    assert json_text(data) == (
        '{\n  "a": 0.1000000000000000055511151231257827,\n  "b": [\n    1,\n    "é"\n  ]\n}'
    )


# --------------------------------------------------------------------------
# Valid CUE that was refused


def test_a_disjunction_of_equal_structs_collapses():
    assert cue("x: {a: 1} | {a: 1}\n") == {"x": {"a": 1}}
    assert cue("x: [1, 2] | [1, 2]\n") == {"x": [1, 2]}
    assert cue("x: ({a: int} | {a: 1}) & {a: 1}\n") == {"x": {"a": 1}}


def test_structs_that_differ_stay_ambiguous():
    text = "x: {a: 1} | {a: 2}\n"
    ((_, _, message),) = located(text)
    assert message.startswith("incomplete value: `x` matches 2 alternatives")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("int & >1 & <3", 2),
        (">1 & <3 & int", 2),
        ("int & >=4 & <=4", 4),
    ],
)
def test_int_bounds_admitting_one_value_are_that_value(expression, expected):
    assert cue(f"x: {expression}\n") == {"x": expected}


def test_int_bounds_admitting_two_values_are_incomplete():
    text = "x: int & >1 & <4\n"
    assert located(text) == [(1, 1, "incomplete value: `x` must be concrete, not int & >1 & <4")]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("(*1024 | int) & (*10000 | 1)", 10000),
        ("(*1 | 2 | 3) & (*2 | 3)", 2),
        ("(*1 | 2) & (1 | 2)", 1),
        ("(*1 | 2) & 2", 2),
    ],
)
def test_defaults_on_both_sides_combine_as_in_cue(expression, expected):
    assert cue(f"x: {expression}\n") == {"x": expected}


@pytest.mark.parametrize(
    ("expression", "shown"),
    [("(*1 | 2) & (*2 | 1)", "1 | 2"), ("(*1 | int) & (*2 | int)", "1 | 2 | int")],
)
def test_defaults_on_both_sides_can_be_ambiguous(expression, shown):
    assert located(f"x: {expression}\n") == [
        (1, 1, f"incomplete value: `x` is ambiguous ({shown}); pick one")
    ]


def test_a_default_reference_overrides_the_schema_default():
    text = BASE + "processes: p: threads: t: weight: *#maxWeight | 1\n"
    assert [t.weight for t in load_plan_text(text).threads()] == [10000]


# --------------------------------------------------------------------------
# Syntax errors say what is wrong, first


def test_a_missing_colon_is_not_an_embedding():
    text = "machine: cpus: 1\nprocesses 1\n"
    error_at(text, "1\n", "unexpected number `1`; expected `:`", occurrence=2)


def test_an_arrow_is_one_token():
    text = "x: int8 & <-127\n"
    assert located(text) == [
        (
            *at(text, "<-"),
            "unexpected `<-` (one token in CUE); for a bound on a negative number write `< -1`",
        )
    ]
    assert cue("x: int8 & < -127\n") == {"x": -128}


def test_a_double_comma_is_the_only_error():
    text = "machine: cpus: 2,,\n" + BASE[17:]
    # At the second comma, as CUE reports it ("expected operand, found ','").
    error_at(text, ",", "unexpected `,`; expected a value", occurrence=2)


def test_a_newline_before_an_operator():
    text = "machine: cpus: 1\n\t| 2\n" + BASE[17:]
    error_at(
        text,
        "| 2",
        "unexpected `|`; expected a value; a line break after a value ends it "
        "(CUE inserts a comma there): put the operator at the end of the previous line",
    )


@pytest.mark.parametrize("comment", ["/* block */", "/* two\n lines */", "/* unterminated"])
def test_a_block_comment_is_not_cue(comment):
    text = "machine: cpus: 1\n" + comment + "\n" + BASE[17:]
    error_at(
        text,
        "/*",
        "unexpected `/`: block comments (`/* ... */`) are not CUE; "
        "CUE has only line comments (`// ...`)",
    )


def test_parses_in_threads_do_not_mix():
    texts = {
        "good": "a: 1\nb: {c: [1, 2]}\n",
        "bad": "a: 1 +\n",
        "comment": "a: 1 /* x */\n",
    }
    failures: list[str] = []

    def work(name: str) -> None:
        for _ in range(40):
            diagnostics = Diagnostics()
            parsed = parse(Source(name, texts[name]), diagnostics)
            names = {d.filename for d in diagnostics.items()}
            if names - {name} or (parsed is not None and parsed.source.filename != name):
                failures.append(f"{name}: {names}")
            if (name == "good") != (parsed is not None and not diagnostics):
                failures.append(f"{name}: parsed={parsed is not None} {diagnostics.items()}")

    threads = [threading.Thread(target=work, args=(name,)) for name in texts for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
