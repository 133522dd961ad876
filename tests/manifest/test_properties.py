"""Properties: rendering round-trips, and no input escapes as anything but ManifestError."""

from __future__ import annotations

import decimal
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capos_sched.manifest import ManifestError, Plan, load_plan, load_plan_text
from capos_sched.manifest.loader import DEFAULT_MANIFEST, export_text
from capos_sched.manifest.render import to_cue

# CAPOS_FUZZ_EXAMPLES=5000 runs a long fuzzing session; the default keeps the suite fast.
SETTINGS = settings(
    max_examples=int(os.environ.get("CAPOS_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# --------------------------------------------------------------------------
# Any data survives rendering as CUE and evaluating it back.

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)
documents = st.dictionaries(st.text(max_size=8), values, max_size=5)


def _plain(value: Any) -> Any:
    """Exported data with exact decimals as the floats they were rendered from."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


@SETTINGS
@given(documents)
def test_any_data_rendered_as_cue_evaluates_back_to_itself(document):
    text = to_cue(document, package=None)
    assert _plain(export_text(text, with_schema=False)) == document


# --------------------------------------------------------------------------
# Any valid manifest, rendered, loads back to the same plan.

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=8).filter(
    lambda name: name[0] not in "-."
)
durations = st.integers(1, 10**12) | st.builds(
    lambda n, unit: f"{n}{unit}", st.integers(1, 10**6), st.sampled_from(["ns", "us", "ms", "s"])
)
counts = st.none() | st.integers(1, 10**6)


def _with_count(base: dict[str, Any], count: int | None) -> dict[str, Any]:
    return base if count is None else {**base, "count": count}


@st.composite
def workloads(draw: st.DrawFn, servers: list[str]) -> dict[str, Any]:
    kinds = ["spin", "hash", "sleeper"] + (["ipcClient"] if servers else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "spin":
        total = draw(st.none() | durations)
        return {"kind": "spin"} if total is None else {"kind": "spin", "total": total}
    if kind == "hash":
        return {
            "kind": "hash",
            "blocks": draw(st.integers(1, 1000)),
            "blockSize": draw(st.integers(1, 1 << 20)),
            "rounds": draw(st.integers(1, 50)),
        }
    if kind == "sleeper":
        base = {"kind": "sleeper", "burst": draw(st.integers(0, 10**9)), "period": draw(durations)}
        return _with_count(base, draw(counts))
    base = {
        "kind": "ipcClient",
        "endpoint": draw(st.sampled_from(servers)),
        "burst": draw(durations),
    }
    return _with_count(base, draw(counts))


def _thread(weight: int, latency_class: str, workload: dict[str, Any]) -> dict[str, Any]:
    return {"weight": weight, "class": latency_class, "workload": workload}


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    """Manifest data in the exported form: every default written out."""
    process_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    endpoints = draw(st.lists(names, max_size=2, unique=True))
    classes = st.sampled_from(["normal", "interactive", "batch", "ipcServer"])
    processes: dict[str, Any] = {}
    all_threads: list[str] = []
    for index, process in enumerate(process_names):
        threads: dict[str, Any] = {}
        if index == 0:  # every endpoint gets its one server in the first process
            for endpoint in endpoints:
                service = {"kind": "ipcServer", "endpoint": endpoint, "service": draw(durations)}
                threads[f"server-{endpoint}"] = _thread(1024, "ipcServer", service)
        for name in draw(st.lists(names, max_size=4, unique=True)):
            if name not in threads:
                weight = draw(st.integers(1, 10000))
                threads[name] = _thread(weight, draw(classes), draw(workloads(endpoints)))
        processes[process] = {"threads": threads}
        all_threads.extend(f"{process}/{name}" for name in threads)
    for body in processes.values():
        if draw(st.booleans()):
            body["exec"] = draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3))
        grants: dict[str, Any] = {}
        if draw(st.booleans()):
            grants[draw(names)] = {"kind": "schedulingPolicy"}
        for target in (
            draw(st.lists(st.sampled_from(all_threads), max_size=3)) if all_threads else []
        ):
            grants[target] = {"kind": "thread", "thread": target}
        body["grants"] = grants
    machine = {
        "cpus": draw(st.integers(1, 64)),
        "policy": draw(st.sampled_from(["wfq", "fifo"])),
        "slice": draw(durations),
    }
    return {"machine": machine, "processes": processes}


@SETTINGS
@given(manifests())
def test_any_valid_manifest_rendered_loads_back_to_the_same_plan(document):
    plan = load_plan_text(to_cue(document))
    assert plan.to_json() == document
    expected_threads = [
        (process, name)
        for process, body in document["processes"].items()
        for name in body["threads"]
    ]
    assert [(t.process, t.name) for t in plan.threads()] == expected_threads
    rebuilt = load_plan_text(to_cue(plan.to_json()))
    assert (rebuilt.machine, rebuilt.processes) == (plan.machine, plan.processes)


# --------------------------------------------------------------------------
# Nothing but ManifestError, whatever the input.


def _load_or_error(text: str) -> Plan | ManifestError:
    try:
        return load_plan_text(text, "fuzz.cue")
    except ManifestError as error:
        internal = [d for d in error.diagnostics if "internal error" in d.message]
        assert not internal, str(error)
        for diagnostic in error.diagnostics:
            assert diagnostic.filename in ("fuzz.cue", str(Path(diagnostic.filename)))
            assert diagnostic.render().startswith(diagnostic.filename)
        return error


@SETTINGS
@given(st.text(max_size=200))
def test_random_text_yields_a_plan_or_a_manifest_error(text):
    _load_or_error(text)


TOKENS = [
    "package",
    "capos",
    "import",
    "machine",
    "processes",
    "threads",
    "grants",
    "exec",
    "workload",
    "kind",
    "weight",
    "class",
    "cpus",
    "policy",
    "slice",
    "total",
    "#Thread",
    "#Workload",
    "#Spin",
    "_h",
    "int",
    "string",
    "number",
    "bool",
    "_",
    "_|_",
    "true",
    "null",
    "for",
    "let",
    "if",
    "len",
    "0",
    "1",
    "1024",
    "-1",
    "1.5",
    "0x1f",
    "1Ki",
    '"spin"',
    '"hash"',
    '"wfq"',
    '"1ms"',
    '"a/b"',
    '"x\\(y)"',
    "'b'",
    '"""',
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ":",
    "?",
    "!",
    ",",
    ".",
    "...",
    "|",
    "&",
    "*",
    "-",
    "+",
    "/",
    ">=",
    "<=",
    "<",
    ">",
    "!=",
    "=~",
    "==",
    "&&",
    "||",
    "=",
    "@a",
    "//c",
    "\n",
    "\t",
    "~",
]


@SETTINGS
@given(st.lists(st.sampled_from(TOKENS), max_size=60), st.randoms(use_true_random=False))
def test_token_soup_yields_a_plan_or_a_manifest_error(tokens, random):
    separators = [" ", "", "\n"]
    text = "".join(token + random.choice(separators) for token in tokens)
    _load_or_error(text)


VALID_TEXTS = [
    DEFAULT_MANIFEST.read_text(),
    (DEFAULT_MANIFEST.parent / "system-thread-fairness.cue").read_text(),
    (Path(__file__).parent / "golden" / "language.cue").read_text(),
]


@SETTINGS
@given(
    st.sampled_from(VALID_TEXTS),
    st.lists(
        st.tuples(st.floats(0, 1), st.integers(0, 12), st.sampled_from([*TOKENS, "", "x"])),
        min_size=1,
        max_size=4,
    ),
)
def test_edited_manifests_yield_a_plan_or_a_manifest_error(text, edits):
    for where, length, insert in edits:
        at = int(where * len(text))
        text = text[:at] + insert + text[at + length :]
    _load_or_error(text)


@SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_in_a_file_yield_a_plan_or_a_manifest_error(raw):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.cue"
        path.write_bytes(raw)
        try:
            load_plan(path)
        except ManifestError as error:
            assert not [d for d in error.diagnostics if "internal error" in d.message]


def test_deep_nesting_is_a_manifest_error_not_a_crash():
    for opener, closer in (("[", "]"), ("{a: ", "}")):
        text = "machine: cpus: " + opener * 5000 + "1" + closer * 5000 + "\n"
        assert isinstance(_load_or_error(text), ManifestError)


def test_deep_parentheses_are_just_grouping():
    plan = load_plan_text("machine: cpus: " + "(" * 5000 + "2" + ")" * 5000 + "\n")
    assert plan.machine.cpus == 2
