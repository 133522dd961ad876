"""The scheduler tree and timed delegation events on the real runtime (`run`)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from capos_sched.manifest import load_plan
from capos_sched.runtime.runtime import Runtime

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
    runtime = Runtime(plan)
    assert runtime.scheduler.scheduler_names() == ["root", "web", "batch"]
    assert [h.cpu for h in runtime.scheduler.cpu_holdings("web") if h.held] == [1, 2]
    trio.run(functools.partial(runtime.run, duration_s=1.0))
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
