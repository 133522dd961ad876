"""The scheduler tree and timed delegation events on the real runtime (`run`)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from capos_sched.manifest import load_plan
from capos_sched.runtime.runtime import Runtime
from capos_sched.runtime.trace import TraceRecorder

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


@pytest.mark.slow
def test_run_builds_the_tree_and_runs_the_timed_revoke():
    plan = load_plan(MANIFESTS / "delegation-revoke.cue")
    plan = type(plan)(
        plan.source,
        plan.machine,
        plan.processes,
        schedulers=plan.schedulers,
        events=tuple(
            type(e)(e.name, 300_000_000, e.action, e.child, e.cpus, e.caps, e.reason)
            for e in plan.events
        ),
    )
    trace = TraceRecorder(cpus=plan.machine.cpus)
    runtime = Runtime(plan, trace=trace)
    assert runtime.scheduler.scheduler_names() == ["root", "web", "batch"]
    assert [h.cpu for h in runtime.scheduler.cpu_holdings("web") if h.held] == [1, 2]
    trio.run(functools.partial(runtime.run, duration_s=1.0))
    # With no subscriber the runtime still drains the core's notifications.
    assert runtime.scheduler.take_notifications() == []
    assert [h.cpu for h in runtime.scheduler.cpu_holdings("web") if h.held] == [1]
    stats = runtime.scheduler.scheduler_stats("web")
    assert set(stats.allocated_ns) <= {1, 2} and stats.allocated_ns.get(1, 0) > 0
    runtime.scheduler.check_invariants()
    report = runtime.report()
    rows = {r["name"]: r for r in report["schedulers"]}
    for thread in report["threads"]:  # each child's threads ran only on its CPUs
        cpus = {int(c) for c, ns in thread["cpu_runtime_ns"].items() if ns}
        assert cpus <= ({1, 2} if thread["process"] == "front" else {3}), thread
        assert sum(thread["cpu_runtime_ns"].values()) == thread["runtime_ns"]
    assert [h["cpu"] for h in rows["web"]["holdings"]] == [1]
    assert rows["web"]["parent"] == "root" and rows["web"]["weight"] == 200
    # The trace marks the timed revoke, then the eviction once it is in effect
    # on CPU 2 (and nowhere else: web kept CPU 1); web ran on CPU 2 before the
    # mark only.
    marks = [e for e in trace.events if e.get("cat") == "delegation"]
    revoke = [e for e in marks if e["name"] == "revoke web"]
    evict = [e for e in marks if e["name"] == "evict web"]
    assert [e["tid"] for e in revoke] == [2] and [e["tid"] for e in evict] == [2], marks
    assert revoke[0]["ts"] <= evict[0]["ts"]
    assert evict[0]["args"]["evictions"] == stats.evictions
    assert "enqImmed" in evict[0]["args"]["before"] and evict[0]["args"]["after"] == []
    web_slices = [
        e
        for e in trace.events
        if e.get("ph") == "X" and e["tid"] == 2 and str(e["name"]).startswith("front/")
    ]
    assert web_slices and all(e["ts"] <= evict[0]["ts"] for e in web_slices)


def _with_events_at(plan, at_ns: int):
    return type(plan)(
        plan.source,
        plan.machine,
        plan.processes,
        schedulers=plan.schedulers,
        events=tuple(
            type(e)(e.name, at_ns, e.action, e.child, e.cpus, e.caps, e.reason) for e in plan.events
        ),
    )


@pytest.mark.slow
def test_run_kills_a_child_and_rehomes_its_threads_with_their_accounting():
    plan = _with_events_at(load_plan(MANIFESTS / "delegation-kill.cue"), 300_000_000)
    runtime = Runtime(plan)
    trio.run(functools.partial(runtime.run, duration_s=0.8))
    assert not runtime.scheduler.scheduler_alive("batch")
    runtime.scheduler.check_invariants()
    report = runtime.report()
    rows = {r["name"]: r for r in report["schedulers"]}
    assert rows["batch"]["exit"]["kind"] == "parentKill"
    assert rows["batch"]["exit"]["message"] == "maintenance"
    jobs = [t for t in report["threads"] if t["process"] == "jobs"]
    assert [t["scheduler"] for t in jobs] == ["root", "root"]
    for thread in jobs:  # the run time from before the kill is kept
        assert sum(thread["cpu_runtime_ns"].values()) == thread["runtime_ns"] > 0
        assert int(thread["cpu_runtime_ns"].get("3", 0)) > 0, thread  # batch's CPU, before


@pytest.mark.slow
def test_run_rotates_the_pool_between_the_children():
    plan = load_plan(MANIFESTS / "delegation-pool.cue")
    runtime = Runtime(plan)
    trio.run(functools.partial(runtime.run, duration_s=1.0))
    runtime.scheduler.check_invariants()
    report = runtime.report()
    own = {"pa": {1}, "pb": {2}}  # one CPU each beside the root's CPU 0; 3 and 4 are the pool
    pool_ns = {"pa": 0, "pb": 0}
    for thread in report["threads"]:
        cpus = {int(c) for c, ns in thread["cpu_runtime_ns"].items() if ns}
        assert cpus <= own[thread["process"]] | {3, 4}, thread
        pool_ns[thread["process"]] += sum(
            ns for c, ns in thread["cpu_runtime_ns"].items() if int(c) in (3, 4)
        )
    assert pool_ns["pa"] > 0 and pool_ns["pb"] > 0, pool_ns  # both held the pool in turn
