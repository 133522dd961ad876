"""The shipped manifests keep the shape their consumers (demo, benchmarks) rely on.

Sizes may be tuned by the runtime's benchmarks; what is checked here is what
each manifest is for. system-thread-fairness is also pinned exactly by the
golden test, since issue 3 specifies it field by field.
"""

from __future__ import annotations

import pytest

from capos_sched.core.constants import DEFAULT_WEIGHT, SLICE_NS
from capos_sched.core.thread import LatencyClass
from capos_sched.manifest import DEFAULT_MANIFEST, GrantPlan, MachinePlan, load_plan
from capos_sched.workload import Hash, IpcClient, IpcServer, Sleeper, Spin, is_finite

SHIPPED = DEFAULT_MANIFEST.parent


def load(name: str):
    return load_plan(SHIPPED / f"{name}.cue")


def test_system_thread_fairness_is_as_specified():
    plan = load("system-thread-fairness")
    assert plan.machine == MachinePlan(2, "wfq", SLICE_NS)
    fairness, tuner = plan.processes
    assert fairness.name == "fairness"
    assert [(t.name, t.weight, t.workload) for t in fairness.threads] == [
        ("a", 2048, Spin()),
        ("b", 1024, Spin()),
        ("c", 1024, Spin()),
    ]
    assert fairness.grants == () and fairness.exec is None
    assert tuner.name == "tuner"
    assert tuner.threads == () and tuner.exec is None
    assert tuner.grants == (
        GrantPlan("policy", "schedulingPolicy"),
        GrantPlan("fairness/a", "thread", "fairness/a"),
        GrantPlan("fairness/b", "thread", "fairness/b"),
        GrantPlan("fairness/c", "thread", "fairness/c"),
    )


def test_default_manifest_is_a_small_mixed_workload_that_ends():
    plan = load_plan(DEFAULT_MANIFEST)
    assert plan.machine.cpus == 2
    kinds = {type(t.workload) for t in plan.threads()}
    assert {Spin, Sleeper, IpcClient, IpcServer} <= kinds
    spin_weights = {t.weight for t in plan.threads() if isinstance(t.workload, Spin)}
    assert len(spin_weights) >= 2, "the hogs should have different weights"
    for thread in plan.threads():
        if not isinstance(thread.workload, IpcServer):  # servers end with their clients
            assert is_finite(thread.workload), thread.full_name
        if isinstance(thread.workload, Spin):
            assert thread.workload.total_ns <= 2_000_000_000


def test_default_manifest_grants_no_scheduling_policy():
    plan = load_plan(DEFAULT_MANIFEST)
    kinds = [g.kind for p in plan.processes for g in p.grants]
    assert "schedulingPolicy" not in kinds


def test_thread_fairness_interactive():
    plan = load("thread-fairness-interactive")
    assert plan.machine.cpus == 1
    threads = plan.threads()
    assert sorted(type(t.workload).__name__ for t in threads) == ["Sleeper", "Spin"]
    (sleeper,) = [t for t in threads if isinstance(t.workload, Sleeper)]
    assert sleeper.latency_class is LatencyClass.INTERACTIVE
    assert 100_000 <= sleeper.workload.burst_ns <= 500_000
    assert 2_000_000 <= sleeper.workload.period_ns <= 10_000_000
    assert {t.weight for t in threads} == {DEFAULT_WEIGHT}


def test_ipc_pairs():
    plan = load("ipc-pairs")
    assert plan.machine.cpus == 2
    for endpoint in ("echo0", "echo1"):
        servers = [t for t in plan.threads() if isinstance(t.workload, IpcServer)]
        clients = [t for t in plan.threads() if isinstance(t.workload, IpcClient)]
        assert [t.workload.endpoint for t in servers].count(endpoint) == 1
        assert [t.workload.endpoint for t in clients].count(endpoint) == 1
    hogs = [t for t in plan.threads() if isinstance(t.workload, Spin)]
    assert len(hogs) == 2


def test_multi_process_weights_differ_by_process():
    plan = load("multi-process")
    assert plan.machine.cpus == 2
    assert len(plan.processes) == 3
    weights = []
    for process in plan.processes:
        assert len(process.threads) == 2
        assert all(isinstance(t.workload, Spin) for t in process.threads)
        (weight,) = {t.weight for t in process.threads}
        weights.append(weight)
    assert len(set(weights)) == 3


@pytest.mark.parametrize("name", ["thread-scale"])
def test_thread_scale(name):
    plan = load(name)
    assert plan.machine.cpus == 2
    threads = plan.threads()
    assert len(threads) == 4
    assert all(isinstance(t.workload, Hash) for t in threads)
    assert len({t.weight for t in threads}) == 1
    assert len({t.workload for t in threads}) == 1
