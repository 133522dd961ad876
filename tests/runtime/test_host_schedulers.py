"""PlanHost (runtime/host.py) with sub-schedulers: the tree comes from the plan,
a stepped load spawns its new threads under the new plan's schedulers, and a
load that would change the tree is refused before anything changes."""

from __future__ import annotations

import pytest

from capos_sched.core import InvalidArgument
from capos_sched.manifest import load_plan_text
from capos_sched.runtime.host import PlanHost

TREE = """
machine: {cpus: 4}
schedulers: {web: {weight: 200}, batch: {weight: 100}}
processes: {
	front: {scheduler: "web", threads: w1: {workload: {kind: "spin"}}}
%s
}
"""
JOBS = 'jobs: {scheduler: "batch", threads: b1: {workload: {kind: "spin"}}}'


def test_a_load_spawns_new_threads_under_the_new_plans_scheduler():
    host = PlanHost(load_plan_text(TREE % ""))
    core = host.scheduler
    assert core.scheduler_of(host.thread_ref("front/w1")) == "web"
    change = host.apply_plan(load_plan_text(TREE % JOBS), 0)
    assert "jobs/b1" in change.added
    assert core.scheduler_of(host.thread_ref("jobs/b1")) == "batch"
    assert core.scheduler_of(host.thread_ref("front/w1")) == "web"


def test_a_load_that_changes_the_scheduler_tree_is_refused_and_changes_nothing():
    host = PlanHost(load_plan_text(TREE % ""))
    before = host.thread_refs()
    other = (TREE % JOBS).replace("batch: {weight: 100}", "batch: {weight: 300}")
    with pytest.raises(InvalidArgument, match="same schedulers"):
        host.apply_plan(load_plan_text(other), 0)
    assert host.thread_refs() == before
    assert host.scheduler.scheduler_names() == ["root", "web", "batch"]
