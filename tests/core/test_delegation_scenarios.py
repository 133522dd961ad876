"""The delegation scenarios of manifests/ on the simulator, checked from the
report (the same report `capos-sched simulate --json` prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from capos_sched.manifest import ManifestError, load_plan, load_plan_text
from capos_sched.runtime.simulate import simulate_plan

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"
MS = 1_000_000
S = 1_000_000_000


def simulate(name: str, seconds: float = 2.0) -> dict[str, Any]:
    plan = load_plan(MANIFESTS / name)
    return simulate_plan(plan, duration_ns=int(seconds * S), jitter=0.0)


def per_cpu(report: dict[str, Any], scheduler: str) -> dict[int, int]:
    row = next(r for r in report["schedulers"] if r["name"] == scheduler)
    return {int(k): v for k, v in row["allocated_ns"].items()}


def thread_cpus(report: dict[str, Any], prefix: str) -> set[int]:
    return {
        int(cpu)
        for t in report["threads"]
        if t["name"].startswith(prefix)
        for cpu, ns in t["cpu_runtime_ns"].items()
        if ns
    }


def test_two_children_at_2_to_1_run_only_on_their_own_cpus():
    report = simulate("delegation-shares.cue")
    assert thread_cpus(report, "front/") == {1, 2}
    assert thread_cpus(report, "jobs/") == {3}
    web, batch = sum(per_cpu(report, "web").values()), sum(per_cpu(report, "batch").values())
    assert web == 2 * batch == 4 * S  # 2 CPUs against 1, the whole window


def test_a_revoke_under_load_moves_the_child_off_the_cpu_within_one_dispatch():
    report = simulate("delegation-revoke.cue")
    web = [t for t in report["threads"] if t["scheduler"] == "web"]
    on_2 = sum(t["cpu_runtime_ns"].get("2", 0) for t in web)
    assert on_2 == 1 * S  # up to the revoke at 1 s, not a nanosecond after
    assert per_cpu(report, "web") == {1: 2 * S, 2: 1 * S}
    holdings = next(r for r in report["schedulers"] if r["name"] == "web")["holdings"]
    assert [h["cpu"] for h in holdings] == [1]


def test_a_kill_rehomes_the_threads_to_the_root_with_their_accounting():
    report = simulate("delegation-kill.cue")
    batch = next(r for r in report["schedulers"] if r["name"] == "batch")
    assert batch["alive"] is False
    assert batch["exit"] == {
        "kind": "parentKill",
        "parent": "root",
        "message": "maintenance",
        "removed": ["batch"],
    }
    jobs = [t for t in report["threads"] if t["name"].startswith("jobs/")]
    assert {t["scheduler"] for t in jobs} == {"root"}
    # Runtime before the kill (batch's) and after (the root's) both counted.
    assert sum(t["runtime_ns"] for t in jobs) == sum(batch["allocated_ns"].values()) + sum(
        per_cpu(report, "root").values()
    )
    assert sum(t["runtime_ns"] for t in jobs) > 1.5 * S


def test_the_pool_is_shared_round_robin():
    report = simulate("delegation-pool.cue")
    a, b = per_cpu(report, "a"), per_cpu(report, "b")
    # CPUs 3 and 4 alternate every 200 ms: 2 s = 10 periods, 5 each.
    assert a[3] == b[3] == a[4] == b[4] == 1 * S
    assert thread_cpus(report, "pa/") == {1, 3, 4} and thread_cpus(report, "pb/") == {2, 3, 4}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'schedulers: a: {parent: "nope"}',
            'm.cue:2:25: scheduler `a` names unknown parent "nope"',
        ),
        ('schedulers: {a: {parent: "b"}, b: {parent: "a"}}', "schedulers form a cycle"),
        ("schedulers: a: {weight: 0}", "weight"),
        ('schedulers: a: {policy: "rr"}', 'unknown policy "rr"'),
        ("schedulers: root: {}", 'the scheduler "root" is the machine\'s own'),
        (
            'schedulers: {a: {}, b: {parent: "a"}, c: {parent: "b"}, d: {parent: "c"}, '
            'e: {parent: "d"}}',
            "scheduler `e` is at depth 5; the tree may be at most 4 deep",
        ),
        ('processes: p: {scheduler: "web", threads: {}}', 'names unknown scheduler "web"'),
        (
            'schedulers: a: {}\nevents: x: {at: "1s", action: "revoke", child: "a"}',
            "a revoke needs `cpus` and `caps`",
        ),
        (
            'schedulers: a: {}\nevents: x: {at: "1s", action: "revoke", child: "a", '
            'cpus: [1, 9], caps: ["enq"]}',
            "m.cue:3:63: event `x` names CPU 9; the machine has CPUs 0-3",
        ),
        ("schedulers: a: {weight: 10001}", "weight 10001 outside [1, 10000]"),
        (
            'schedulers: a: {}\nevents: x: {at: "1s", action: "kill", child: "b"}',
            'event `x` names "b", which is not declared',
        ),
    ],
)
def test_bad_scheduler_declarations_are_positioned_errors(text: str, message: str):
    with pytest.raises(ManifestError) as info:
        load_plan_text("machine: {cpus: 4}\n" + text + "\n", "m.cue")
    assert message in str(info.value)
    assert "m.cue:" in str(info.value)


def test_a_plan_without_schedulers_is_unchanged():
    plan = load_plan(MANIFESTS / "default.cue")
    assert plan.schedulers == () and plan.events == ()
    assert {p.scheduler for p in plan.processes} == {"root"}


def test_machine_pool_rotation_sets_the_pools_period():
    from capos_sched.core import Scheduler
    from capos_sched.drive import attach_schedulers

    text = 'machine: {cpus: 5, poolRotation: "50ms"}\nschedulers: {a: {}, b: {}}\n'
    plan = load_plan_text(text, "m.cue")
    assert plan.machine.pool_rotation_ns == 50 * MS
    core = Scheduler(5, "wfq")
    attach_schedulers(core, plan)
    assert core.next_delegation_event_ns() == 50 * MS
    default = Scheduler(5, "wfq")
    attach_schedulers(default, load_plan_text(text.replace(', poolRotation: "50ms"', "")))
    assert default.next_delegation_event_ns() == 200 * MS


def test_a_pool_rotation_below_ten_ms_is_a_positioned_error():
    with pytest.raises(ManifestError, match=r'm.cue:1:34: poolRotation "5ms" is below the minimum'):
        load_plan_text('machine: {cpus: 4, poolRotation: "5ms"}\n', "m.cue")
