"""The Plan model and the public API the runtime and RPC layers code against."""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import attrs
import pytest

from capos_sched.core import constants
from capos_sched.core.thread import LatencyClass
from capos_sched.manifest import (
    DEFAULT_MANIFEST,
    SCHEMA_PATH,
    Diagnostic,
    GrantPlan,
    MachinePlan,
    ManifestError,
    Plan,
    ProcessPlan,
    ThreadPlan,
    load_plan,
    load_plan_text,
    parse_duration,
)
from capos_sched.manifest.evaluator import Evaluator
from capos_sched.manifest.lattice import Atom, force
from capos_sched.manifest.loader import schema_file
from capos_sched.workload import Hash, IpcClient, IpcServer, Sleeper, Spin

TWO_PROCESSES = """
package capos
machine: {cpus: 2, policy: "fifo", slice: 2000000}
processes: {
	p: {
		threads: {
			a: {weight: 10, class: "batch", workload: {kind: "spin", total: 5}}
			b: workload: {kind: "hash", blocks: 2, blockSize: 3}
		}
		exec: ["client", "--fast"]
	}
	q: {
		threads: {
			s: {class: "ipcServer", workload: {kind: "ipcServer", endpoint: "e", service: 7}}
			c: workload: {kind: "ipcClient", endpoint: "e", burst: 8, count: 9}
			z: workload: {kind: "sleeper", burst: 0, period: 11}
		}
		grants: {
			policy: kind: "schedulingPolicy"
			"p/a": {kind: "thread", thread: "p/a"}
		}
	}
}
"""


@pytest.fixture(scope="module")
def plan() -> Plan:
    return load_plan_text(TWO_PROCESSES, "two.cue")


def test_plan_fields(plan):
    assert plan.source == "two.cue"
    assert plan.machine == MachinePlan(cpus=2, policy="fifo", slice_ns=2_000_000)
    assert [p.name for p in plan.processes] == ["p", "q"]
    p, q = plan.processes
    assert p.exec == ("client", "--fast")
    assert p.grants == ()
    assert q.exec is None
    assert q.grants == (
        GrantPlan("policy", "schedulingPolicy", None),
        GrantPlan("p/a", "thread", "p/a"),
    )


def test_threads_in_manifest_order_with_workloads_in_nanoseconds(plan):
    assert plan.threads() == (
        ThreadPlan("p", "a", 10, LatencyClass.BATCH, Spin(total_ns=5)),
        ThreadPlan("p", "b", 1024, LatencyClass.NORMAL, Hash(blocks=2, block_size=3, rounds=1)),
        ThreadPlan("q", "s", 1024, LatencyClass.IPC_SERVER, IpcServer("e", 7)),
        ThreadPlan("q", "c", 1024, LatencyClass.NORMAL, IpcClient("e", 8, 9)),
        ThreadPlan("q", "z", 1024, LatencyClass.NORMAL, Sleeper(0, 11, None)),
    )
    assert [t.full_name for t in plan.threads()] == ["p/a", "p/b", "q/s", "q/c", "q/z"]


def test_lookups(plan):
    assert plan.thread("q/c") is plan.processes[1].threads[1]
    assert plan.thread("q/nope") is None
    assert plan.process("p") is plan.processes[0]
    assert plan.process("r") is None


def test_plans_are_immutable(plan):
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        plan.machine.cpus = 3  # type: ignore[misc]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        plan.processes[0].threads[0].weight = 1  # type: ignore[misc]
    assert isinstance(plan.processes, tuple)
    assert isinstance(plan.processes[0].threads, tuple)
    data = plan.to_json()
    data["machine"]["cpus"] = 99
    assert plan.to_json()["machine"]["cpus"] == 2


def test_to_json_of_a_hand_built_plan_matches_the_export(plan):
    by_hand = Plan(plan.source, plan.machine, plan.processes)
    assert by_hand.exported is None
    assert by_hand == plan  # the export text is not part of equality
    assert by_hand.to_json() == plan.to_json()
    assert json.dumps(by_hand.to_json()) == json.dumps(plan.to_json())  # same field order


def test_the_export_keeps_durations_as_written():
    plan = load_plan_text('machine: {cpus: 1, slice: "3ms"}\n')
    assert plan.machine.slice_ns == 3_000_000
    assert plan.to_json()["machine"]["slice"] == "3ms"
    assert Plan(plan.source, plan.machine, ()).to_json()["machine"]["slice"] == 3_000_000


@pytest.mark.parametrize(
    "build",
    [
        lambda: MachinePlan(0, "wfq", 1),
        lambda: MachinePlan(1, "rr", 1),
        lambda: MachinePlan(1, "wfq", 0),
        lambda: ThreadPlan("p", "t", 0, LatencyClass.NORMAL, Spin()),
        lambda: ThreadPlan("p", "t", 10001, LatencyClass.NORMAL, Spin()),
        lambda: ThreadPlan("p", "a/b", 1, LatencyClass.NORMAL, Spin()),
        lambda: ThreadPlan("", "t", 1, LatencyClass.NORMAL, Spin()),
        lambda: GrantPlan("g", "thread", None),
        lambda: GrantPlan("g", "schedulingPolicy", "p/t"),
        lambda: GrantPlan("g", "cpu", None),
        lambda: GrantPlan("g", "cpuDelegation"),  # no scheduler
        lambda: GrantPlan("g", "schedulingPolicy", scheduler="root"),
        lambda: Plan(
            "x",
            MachinePlan(1, "wfq", 1),
            [ProcessPlan("p", [], grants=[GrantPlan("g", "cpuDelegation", scheduler="nope")])],
        ),
        lambda: ProcessPlan("p", [ThreadPlan("q", "t", 1, LatencyClass.NORMAL, Spin())]),
        lambda: ProcessPlan("p", [ThreadPlan("p", "t", 1, LatencyClass.NORMAL, Spin())] * 2),
        lambda: ProcessPlan("p", [], exec=[]),
        lambda: Plan("x", MachinePlan(1, "wfq", 1), [ProcessPlan("p", []), ProcessPlan("p", [])]),
        lambda: Plan(
            "x",
            MachinePlan(1, "wfq", 1),
            [ProcessPlan("p", [], grants=[GrantPlan("g", "thread", "p/t")])],
        ),
    ],
)
def test_hand_built_plans_keep_the_invariants(build):
    with pytest.raises(ValueError):
        build()


@pytest.mark.parametrize(
    ("text", "nanoseconds"),
    [
        (7, 7),
        ("100ns", 100),
        ("250us", 250_000),
        ("4ms", 4_000_000),
        ("1.5ms", 1_500_000),
        ("2s", 2_000_000_000),
        ("0.000000001s", 1),
        ("0ms", 0),
    ],
)
def test_parse_duration(text, nanoseconds):
    assert parse_duration(text) == nanoseconds


@pytest.mark.parametrize(
    "text", ["4 ms", "1.5ns", "-1ms", "1m", "1h", "", "ms", "1.ms", "1e3ns", True]
)
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_load_plan_accepts_str_and_pathlike(tmp_path):
    path = tmp_path / "m.cue"
    path.write_text("machine: cpus: 3\n")
    assert load_plan(path).machine.cpus == 3
    assert load_plan(str(path)).source == str(path)
    assert load_plan(os.fspath(path)).machine.cpus == 3


def test_default_manifest_and_schema_paths():
    assert DEFAULT_MANIFEST.is_absolute() and DEFAULT_MANIFEST.name == "default.cue"
    assert Path(__file__).resolve().parents[2] / "manifests" / "default.cue" == DEFAULT_MANIFEST
    assert SCHEMA_PATH.is_file()


def test_manifest_error_carries_its_diagnostics():
    with pytest.raises(ManifestError) as info:
        load_plan_text("machine: cpus: 0\n", "m.cue")
    assert info.value.diagnostics == (
        Diagnostic("m.cue", 1, 16, "cpus 0 outside [1, 64]", "machine: cpus: 0"),
    )
    assert info.value.diagnostics[0].render() == (
        "m.cue:1:16: cpus 0 outside [1, 64]\n    machine: cpus: 0\n                   ^"
    )


def test_concurrent_loads_do_not_interfere():
    texts = [f"machine: cpus: {n}\n" for n in range(1, 33)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        plans = list(pool.map(load_plan_text, texts))
    assert [p.machine.cpus for p in plans] == list(range(1, 33))


@pytest.mark.parametrize(
    ("definition", "constant"),
    [
        ("#minWeight", constants.MIN_WEIGHT),
        ("#maxWeight", constants.MAX_WEIGHT),
        ("#defaultWeight", constants.DEFAULT_WEIGHT),
        ("#sliceNs", constants.SLICE_NS),
    ],
)
def test_schema_constants_mirror_the_core(definition, constant):
    schema = schema_file()
    reference_pos = schema.decls[0].pos
    evaluated = force(Evaluator([schema]).reference(definition, reference_pos))
    assert isinstance(evaluated, Atom) and evaluated.value == constant


def test_schema_defaults_are_the_core_constants():
    plan = load_plan_text('machine: cpus: 1\nprocesses: p: threads: t: workload: kind: "spin"\n')
    (thread,) = plan.threads()
    assert thread.weight == constants.DEFAULT_WEIGHT
    assert thread.latency_class is LatencyClass.NORMAL
    assert plan.machine.slice_ns == constants.SLICE_NS
    assert plan.machine.policy == "wfq"
