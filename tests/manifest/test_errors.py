"""One test per error class: the exact position and message of each diagnostic.

Positions are stated by pointing at the source text (``helpers.at``), so each
test checks the reported line:col against the text itself.
"""

from __future__ import annotations

import pytest

from capos_sched.manifest import ManifestError, load_plan, load_plan_text

from .helpers import BASE, at, error_at, errors

NS = "not supported in capos-sched manifests"


def thread(body: str) -> str:
    """A manifest whose only thread `p/t` is ``{body}``."""
    return f"machine: cpus: 1\nprocesses: p: threads: t: {{{body}}}\n"


# --------------------------------------------------------------------------
# Syntax


def test_missing_comma_between_fields():
    text = 'machine: cpus: 1 policy: "wfq"\n'
    error_at(text, "policy", "unexpected identifier `policy`; expected `,` or a newline")


def test_unclosed_brace_at_end_of_file():
    text = "machine: {cpus: 1\n"
    assert errors(text) == [
        (1, len("machine: {cpus: 1") + 1, "unexpected end of file; expected `}`")
    ]


def test_missing_value():
    text = "machine: cpus: ,\n"
    error_at(text, ",", "unexpected `,`; expected a value")


def test_unterminated_string():
    text = 'machine: cpus: 1\nprocesses: p: threads: t: workload: kind: "spin\n'
    error_at(text, '"spin', "string literal not terminated")


def test_unknown_escape_sequence():
    text = BASE + 'processes: p: grants: "a\\qb": kind: "schedulingPolicy"\n'
    error_at(text, "\\q", "unknown escape sequence `\\q`")


def test_unexpected_character():
    text = "machine: cpus: ~\n"
    error_at(text, "~", "unexpected character `~`")


def test_nul_character():
    text = "machine: cpus: 1\x00\n"
    error_at(text, "\x00", "unexpected character U+0000; expected `,` or a newline")


def test_syntax_errors_on_several_lines_are_all_reported():
    text = "machine: cpus: 1 policy: 2\nprocesses: ,\n"
    assert errors(text) == [
        (*at(text, "policy"), "unexpected identifier `policy`; expected `,` or a newline"),
        (*at(text, ","), "unexpected `,`; expected a value"),
    ]


# --------------------------------------------------------------------------
# Outside the subset: "not supported", at the construct


@pytest.mark.parametrize(
    ("text", "needle", "message"),
    [
        ('import "strings"\n' + BASE, "import", f"`import` is {NS}"),
        (
            "machine: {#M, cpus: 1}\n#M: {}\n" + BASE[17:],
            "#M,",
            f"embedding a value in a struct is {NS}; unify instead (`name: #Definition & {{...}}`)",
        ),
        ("machine: cpus: 1 + 1\n" + BASE[17:], "+", f"binary operator `+` is {NS}"),
        ("machine: cpus: 2 * 1\n" + BASE[17:], "*", f"binary operator `*` is {NS}"),
        (
            BASE + 'processes: p: exec: ["a\\(x)"]\n',
            "\\(",
            f"string interpolation (`\\(...)`) is {NS}",
        ),
        ("for x in [] {}\n" + BASE, "for", f"comprehensions (`for ...`) are {NS}"),
        ("let x = 1\n" + BASE, "let", f"`let` declarations are {NS}"),
        ("machine: cpus: 1 @go(Cpus)\n" + BASE[17:], "@go", f"attributes (`@name(...)`) are {NS}"),
        (
            BASE + 'processes: p: exec: ["""\n\ta\n\t"""]\n',
            '"""',
            f'multi-line strings (`"""`) are {NS}',
        ),
        (BASE + "processes: p: exec: ['a']\n", "'a'", f"byte literals (`'...'`) are {NS}"),
        (
            BASE + 'processes: p: exec: [#"a"#]\n',
            '#"',
            f'raw strings (`#"..."#`) are {NS}',
        ),
        ("machine: cpus: 1Ki\n" + BASE[17:], "1Ki", f"number multipliers (such as `1Ki`) are {NS}"),
        (
            "machine: cpus: _x[0]\n_x: [1]\n" + BASE[17:],
            "_x[0]",
            f"index expressions (`x[i]`) are {NS}",
        ),
        (
            'machine: cpus: len("ab")\n' + BASE[17:],
            "len",
            f"function calls (`len(...)`) are {NS}",
        ),
        (
            BASE + 'processes: p: exec: [=~"^a"]\n',
            "=~",
            f"regular expression constraints (`=~`) are {NS}",
        ),
        ("X=machine: cpus: 1\n" + BASE[17:], "X=", f"aliases (`X=label: value`) are {NS}"),
        (
            '("machine"): cpus: 1\n' + BASE[17:],
            '"machine"',
            f"dynamic field labels (`(expr): value`) are {NS}",
        ),
        ("machine: cpus!: 1\n" + BASE[17:], "cpus!", f"required fields (`cpus!`) are {NS}"),
        ("machine: {cpus: 1, ...}\n" + BASE[17:], "...", f"`...` in a struct is {NS}"),
        (
            "machine: cpus: -_x\n_x: 1\n" + BASE[17:],
            "-_x",
            f"unary `-` on anything but a number literal is {NS}",
        ),
        ("machine: cpus: !_x\n_x: 1\n" + BASE[17:], "!_x", f"unary `!` is {NS}"),
        ("machine: cpus: 1 & >=0.5\n" + BASE[17:], ">=0.5", f"bounds on float limits are {NS}"),
        ("machine: cpus: bytes\n" + BASE[17:], "bytes", f"the predeclared `bytes` is {NS}"),
        (
            "package capos\npackage capos\n" + BASE,
            "package",
            "the package clause must come first in the file",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) and len(value) < 12 else None,
)
def test_unsupported_construct(text, needle, message):
    occurrence = 2 if message.startswith("the package clause") else 1
    error_at(text, needle, message, occurrence)


def test_package_must_be_capos():
    text = "package foo\n" + BASE
    error_at(text, "package", "package `foo`: capos-sched manifests belong to package `capos`")


def test_reference_to_a_field_of_an_enclosing_struct():
    text = (
        "machine: cpus: 1\n"
        "processes: p: threads: {\n"
        '  t: {weight: 2, workload: kind: "spin"}\n'
        '  u: {weight: t.weight, workload: kind: "spin"}\n'
        "}\n"
    )
    error_at(
        text,
        "t.weight",
        f"reference `t` to a field of an enclosing struct is {NS}; "
        "only top-level fields and definitions can be referenced",
    )


def test_default_marker_outside_a_disjunction():
    text = "machine: cpus: *1\n" + BASE[17:]
    error_at(text, "*1", "a default marker `*` must mark a term of a disjunction")


# --------------------------------------------------------------------------
# Unification and the schema


def test_conflicting_values_name_both_positions():
    text = "machine: cpus: 1\nmachine: cpus: 2\n" + BASE[17:]
    line, col = at(text, "1\n")
    error_at(text, "2\n", f"conflicting values for `cpus`: 2 and 1 (other value at {line}:{col})")


def test_conflict_inside_a_disjunction_keeps_both_positions():
    text = thread('workload: {kind: "spin"}, workload: kind: "hash"')
    line, col = at(text, '"spin"')
    error_at(
        text,
        '"hash"',
        f'conflicting values for `kind`: "hash" and "spin" (other value at {line}:{col})',
    )


def test_field_not_allowed_suggests_the_closest():
    text = thread('wieght: 10, workload: kind: "spin"')
    error_at(text, "wieght", "field `wieght` not allowed; did you mean `weight`?")


def test_field_not_allowed_without_a_close_match():
    text = thread('priority: 10, workload: kind: "spin"')
    error_at(text, "priority", "field `priority` not allowed")


def test_unknown_top_level_field():
    text = BASE + "proceses: {}\n"
    error_at(text, "proceses", "field `proceses` not allowed; did you mean `processes`?")


def test_weight_outside_bounds():
    text = thread('weight: 0, workload: kind: "spin"')
    error_at(text, "0,", "weight 0 outside [1, 10000]")


def test_weight_above_bounds():
    text = thread('weight: 10001, workload: kind: "spin"')
    error_at(text, "10001", "weight 10001 outside [1, 10000]")


def test_cpus_outside_bounds():
    text = "machine: cpus: 65\n" + BASE[17:]
    error_at(text, "65", "cpus 65 outside [1, 64]")


def test_unknown_class_suggests_the_closest():
    text = thread('class: "interactiv", workload: kind: "spin"')
    error_at(
        text,
        '"interactiv"',
        'unknown class "interactiv"; expected one of "normal", "interactive", "batch", '
        '"ipcServer" (did you mean "interactive"?)',
    )


def test_unknown_policy():
    text = 'machine: {cpus: 1, policy: "rr"}\n' + BASE[17:]
    error_at(
        text,
        '"rr"',
        'unknown policy "rr"; expected one of "wfq", "fifo", "eevdf", or a file PATH.py',
    )


def test_policy_file_is_resolved_relative_to_the_manifest(tmp_path):
    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "mine.py").write_text("POLICY = None\n")
    manifest = tmp_path / "m.cue"
    manifest.write_text('machine: {cpus: 1, policy: "pol/mine.py"}\n' + BASE[17:])
    assert load_plan(manifest).machine.policy == str(tmp_path / "pol" / "mine.py")
    manifest.write_text('machine: {cpus: 1, policy: "pol/none.py"}\n' + BASE[17:])
    with pytest.raises(ManifestError, match=r"policy file .pol/none\.py. not found"):
        load_plan(manifest)


def test_unknown_workload_kind():
    text = thread('workload: kind: "spinn"')
    error_at(
        text,
        '"spinn"',
        'unknown kind "spinn"; expected one of "spin", "hash", "sleeper", "ipcClient", '
        '"ipcServer" (did you mean "spin"?)',
    )


def test_field_of_another_workload_kind():
    text = thread('workload: {kind: "spin", blocks: 4}')
    error_at(text, "blocks", "field `blocks` not allowed")


def test_wrong_type():
    text = thread('weight: "heavy", workload: kind: "spin"')
    error_at(text, '"heavy"', '`weight`: expected int, got "heavy"')


def test_float_where_an_int_is_expected():
    text = thread('weight: 2.5, workload: kind: "spin"')
    error_at(text, "2.5", "`weight`: expected int, got 2.5")


def test_struct_where_a_scalar_is_expected():
    text = "machine: cpus: {n: 1}\n" + BASE[17:]
    error_at(text, "{n", "`cpus`: expected int, got struct")


def test_explicit_type_is_incomplete():
    text = "machine: cpus: int\n" + BASE[17:]
    error_at(text, "cpus", "incomplete value: `cpus` must be concrete, not int & >=1 & <=64")


def test_missing_required_field_is_incomplete():
    text = 'machine: policy: "fifo"\n' + BASE[17:]
    error_at(text, "machine", "incomplete value: `machine.cpus` is not set (int & >=1 & <=64)")


def test_missing_machine_is_reported_at_the_start():
    text = BASE[17:]
    assert errors(text) == [
        (1, 1, "incomplete value: `machine.cpus` is not set (int & >=1 & <=64)")
    ]


def test_missing_workload_field_is_incomplete():
    text = thread('workload: {kind: "hash", blocks: 4}')
    error_at(text, "workload", "incomplete value: `workload.blockSize` is not set (int & >=1)")


def test_ambiguous_workload():
    text = thread("workload: {}")
    error_at(
        text,
        "workload",
        "incomplete value: `workload` matches 5 alternatives; set `kind` to one of "
        '"spin", "hash", "sleeper", "ipcClient", "ipcServer"',
    )


def test_reference_not_found_suggests_a_definition():
    text = thread('weight: defaultWeight, workload: kind: "spin"')
    error_at(
        text,
        "defaultWeight,",
        "reference `defaultWeight` not found; did you mean `#defaultWeight`?",
    )


def test_reference_cycle():
    text = "_a: _b\n_b: _a\nmachine: cpus: _a\n" + BASE[17:]
    # As in CUE: a reference cycle contributes nothing (`_`), so `cpus` is
    # left as the schema's type.
    error_at(text, "cpus", "incomplete value: `cpus` must be concrete, not int & >=1 & <=64")


def test_explicit_bottom():
    text = "machine: cpus: _|_\n" + BASE[17:]
    error_at(text, "_|_", "explicit error (`_|_`)")


def test_list_lengths_conflict():
    text = BASE + 'processes: p: exec: ["a"] & ["a", "b"]\n'
    error_at(text, '["a", "b"]', "list of 2 elements where 1 are allowed")


def test_selecting_a_missing_field():
    text = "#M: {cpus: 1}\nmachine: cpus: #M.cores\n" + BASE[17:]
    error_at(text, "cores", "no field `cores` to select")


# --------------------------------------------------------------------------
# Model checks beyond types


def test_invalid_duration():
    text = thread('workload: {kind: "spin", total: "1 s"}')
    error_at(
        text,
        '"1 s"',
        '`total`: invalid duration "1 s": write a number with a unit ns, us, ms or s '
        '(such as "250us" or "1.5ms"), or integer nanoseconds',
    )


def test_duration_that_is_not_whole_nanoseconds():
    text = thread('workload: {kind: "sleeper", burst: "0.5ns", period: "1ms"}')
    error_at(text, '"0.5ns"', '`burst`: duration "0.5ns" is not a whole number of nanoseconds')


def test_zero_period():
    text = thread('workload: {kind: "sleeper", burst: "1ms", period: "0ms"}')
    error_at(text, '"0ms"', 'period "0ms" must be > 0')


def test_zero_period_in_nanoseconds():
    text = thread('workload: {kind: "sleeper", burst: 1000, period: 0}')
    error_at(text, "0}", "period 0 must be > 0")


def test_invalid_process_name():
    text = BASE + 'processes: "bad name": threads: {}\n'
    error_at(
        text,
        '"bad name"',
        'process name "bad name" is not valid: use letters, digits, `_`, `-` and `.` '
        "(it forms part of a `process/thread` name)",
    )


def test_process_name_with_a_trailing_newline_is_shown_escaped():
    text = BASE + 'processes: "p\\n": threads: {}\n'
    error_at(
        text,
        '"p\\n"',
        'process name "p\\n" is not valid: use letters, digits, `_`, `-` and `.` '
        "(it forms part of a `process/thread` name)",
    )


def test_thread_name_with_a_slash():
    text = 'machine: cpus: 1\nprocesses: p: threads: "a/b": workload: kind: "spin"\n'
    error_at(
        text,
        '"a/b"',
        'thread name "a/b" is not valid: use letters, digits, `_`, `-` and `.` '
        "(it forms part of a `process/thread` name)",
    )


def test_duplicate_thread():
    text = (
        "machine: cpus: 1\n"
        "processes: p: threads: {\n"
        '  t: workload: kind: "spin"\n'
        '  t: workload: kind: "spin"\n'
        "}\n"
    )
    line, col = at(text, "t:")
    error_at(text, "t:", f"duplicate thread `p/t` (first declared at {line}:{col})", occurrence=2)


def test_duplicate_grant():
    text = BASE + (
        'processes: q: grants: {\n  g: kind: "schedulingPolicy"\n  g: kind: "schedulingPolicy"\n}\n'
    )
    line, col = at(text, "g:")
    error_at(text, "g:", f"duplicate grant `g` of process `q` (first declared at {line}:{col})", 2)


def test_a_process_may_be_declared_in_several_places():
    text = BASE + 'processes: p: grants: g: kind: "schedulingPolicy"\n'
    plan = load_plan_text(text)
    assert [g.name for g in plan.processes[0].grants] == ["g"]
    assert [t.name for t in plan.processes[0].threads] == ["t"]


def test_grant_of_an_unknown_thread_suggests_the_closest():
    text = BASE + 'processes: q: grants: h: {kind: "thread", thread: "p/tt"}\n'
    error_at(
        text,
        '"p/tt"',
        "grant `h` names thread `p/tt`, which does not exist; did you mean `p/t`?",
    )


def test_grant_of_a_thread_without_its_process():
    text = BASE + 'processes: q: grants: h: {kind: "thread", thread: "zzz"}\n'
    error_at(
        text,
        '"zzz"',
        "grant `h` names thread `zzz`, which does not exist; name a thread as `process/thread`",
    )


def test_unknown_grant_kind():
    text = BASE + 'processes: q: grants: h: kind: "cpu"\n'
    error_at(
        text,
        '"cpu"',
        'unknown kind "cpu"; expected one of "schedulingPolicy", "thread", "cpuDelegation"',
    )


def test_cpu_delegation_grant_of_an_unknown_scheduler():
    text = BASE + 'processes: q: grants: d: {kind: "cpuDelegation", scheduler: "rot"}\n'
    error_at(
        text,
        '"rot"',
        'grant `d` names scheduler "rot", which is neither "root" nor declared under '
        '`schedulers:`; did you mean "root"?',
    )


def test_cpu_delegation_grant_needs_a_scheduler():
    text = BASE + 'processes: q: grants: d: kind: "cpuDelegation"\n'
    assert errors(text), "a cpuDelegation grant without a scheduler must be refused"


def test_cpu_delegation_grant_of_root_is_in_the_plan():
    plan = load_plan_text(
        BASE + 'processes: q: grants: d: {kind: "cpuDelegation", scheduler: "root"}\n', "t.cue"
    )
    (grant,) = plan.process("q").grants
    assert (grant.kind, grant.scheduler, grant.target) == ("cpuDelegation", "root", None)


def test_endpoint_with_clients_but_no_server():
    text = thread('workload: {kind: "ipcClient", endpoint: "echo", burst: "1ms"}')
    error_at(
        text,
        '"echo"',
        'endpoint "echo" has clients but no server '
        '(a thread with workload kind "ipcServer" and endpoint "echo")',
    )


def test_endpoint_with_two_servers():
    text = (
        "machine: cpus: 1\n"
        "processes: p: threads: {\n"
        '  s1: workload: {kind: "ipcServer", endpoint: "echo", service: 0}\n'
        '  s2: workload: {kind: "ipcServer", endpoint: "echo", service: 0}\n'
        "}\n"
    )
    line, col = at(text, '"echo"')
    error_at(
        text,
        '"echo"',
        f'endpoint "echo" already has a server, `p/s1` (at {line}:{col}); '
        "an endpoint has exactly one server",
        occurrence=2,
    )


def test_empty_endpoint():
    text = thread('workload: {kind: "ipcServer", endpoint: "", service: 0}')
    error_at(text, '""', 'endpoint "" is not allowed (must be != "")')


def test_empty_exec():
    text = BASE + "processes: p: exec: []\n"
    error_at(text, "exec", "`exec` is an empty list; it must name a command to run")


def test_empty_exec_argument():
    text = BASE + 'processes: p: exec: ["run", ""]\n'
    error_at(text, '""', "`exec` has an empty argument")


def test_empty_grant_name():
    text = BASE + 'processes: p: grants: "": kind: "schedulingPolicy"\n'
    error_at(text, '""', "a grant name must not be empty")


# --------------------------------------------------------------------------
# All errors, in order, capped; the rendering


def test_every_error_in_a_file_is_reported_in_order():
    text = (
        'machine: {cpus: 0, policy: "rr"}\n'
        "processes: p: threads: {\n"
        '  a: {wieght: 10, workload: kind: "spin"}\n'
        '  b: {weight: 0, class: "interactiv", workload: kind: "spinn"}\n'
        "}\n"
    )
    found = errors(text)
    assert [(line, col) for line, col, _ in found] == [
        at(text, "0,"),
        at(text, '"rr"'),
        at(text, "wieght"),
        at(text, "0, class"),
        at(text, '"interactiv"'),
        at(text, '"spinn"'),
    ]


def test_errors_are_capped_and_the_rest_counted():
    threads = "".join(f'  t{i}: {{weight: 0, workload: kind: "spin"}}\n' for i in range(25))
    text = "machine: cpus: 1\nprocesses: p: threads: {\n" + threads + "}\n"
    with pytest.raises(ManifestError) as info:
        load_plan_text(text)
    assert len(info.value.diagnostics) == 20
    assert info.value.omitted == 5
    assert str(info.value).endswith("\n... and 5 more error(s) not shown")


def test_rendering_has_the_position_the_source_line_and_a_caret():
    text = 'machine: cpus: 1\nprocesses: p: threads: t: {\n\tweight: 0, workload: kind: "spin"}\n'
    with pytest.raises(ManifestError) as info:
        load_plan_text(text, "dir/m.cue")
    assert str(info.value) == (
        "dir/m.cue:3:10: weight 0 outside [1, 10000]\n"
        '    \tweight: 0, workload: kind: "spin"}\n'
        "    \t        ^"
    )


# --------------------------------------------------------------------------
# Files


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.cue"
    with pytest.raises(ManifestError) as info:
        load_plan(missing)
    assert str(info.value) == f"{missing}: no such file"


def test_directory(tmp_path):
    with pytest.raises(ManifestError) as info:
        load_plan(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a directory, not a manifest file"


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.cue"
    path.write_bytes(b"machine: cpus: 1\n// caf\xe9\n")
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.line, diagnostic.col) == (2, len("// caf") + 1)
    assert diagnostic.message == "the file is not valid UTF-8 (byte 0xe9)"


def test_binary_file(tmp_path):
    path = tmp_path / "binary.cue"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ManifestError) as info:
        load_plan(path)
    assert info.value.diagnostics[0].message.startswith("the file is not valid UTF-8")


def test_control_characters_are_not_echoed_to_the_terminal():
    text = "machine: cpus: 0 // \x1b[31mred\x07\n"
    with pytest.raises(ManifestError) as info:
        load_plan_text(text, "m.cue")
    rendered = str(info.value)
    assert "\x1b" not in rendered and "\x07" not in rendered
    assert rendered.splitlines()[1] == "    machine: cpus: 0 // \ufffd[31mred\ufffd"
    assert rendered.splitlines()[2] == "    " + " " * 15 + "^"
