"""How long one owner step of a big plan load takes (issue 8, item 13).

Loads a plan of ``--threads`` new threads (sleepers, 50 processes) into an
owner holding a small plan, twice in the same process: the stepped load the
daemon does (stage, spawn steps of ``--step`` threads, commit, retire steps;
rpc/loads.py) and, as the baseline, the whole load as one owner operation
(``Owner.load``, what the daemon did before). Reports the longest owner step
of each (the longest the owner could not answer anyone else), the total, and
the machine's load. Every figure in milliseconds.

    python -m bench.plan_load --threads 50000 --json
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import click

from capos_sched.core import LatencyClass
from capos_sched.manifest.plan import GrantPlan, MachinePlan, Plan, ProcessPlan, ThreadPlan
from capos_sched.rpc.grants import GrantTable
from capos_sched.rpc.loads import LOAD_STEP_THREADS
from capos_sched.rpc.owner import Owner
from capos_sched.runtime.host import PlanHost
from capos_sched.serve import CoreHost
from capos_sched.workload import Sleeper


def _plan(threads: int, processes: int = 50) -> Plan:
    sleep = Sleeper(burst_ns=0, period_ns=10**9)
    per = max(1, threads // processes)
    procs = [
        ProcessPlan(
            f"p{p}",
            tuple(
                ThreadPlan(f"p{p}", f"t{i}", 1024, LatencyClass.NORMAL, sleep) for i in range(per)
            ),
            grants=(GrantPlan("policy", "schedulingPolicy"), GrantPlan("t0", "thread", f"p{p}/t0")),
        )
        for p in range(min(processes, threads))
    ]
    return Plan("bench.cue", MachinePlan(1, "wfq", 4_000_000), procs)


def _owner() -> Owner:
    small = _plan(50)
    host = CoreHost(PlanHost(small))
    return Owner(host, GrantTable.from_plan(small, host), "small")


CPU_MS: list[float] = []
"""Each step's CPU time (this thread's), beside its wall time: on a loaded host the
wall time also counts the time other processes had the CPU."""


def _timed(steps: list[float], fn: Any, *args: Any) -> Any:
    t0, c0 = time.perf_counter(), time.thread_time()
    out = fn(*args)
    steps.append((time.perf_counter() - t0) * 1e3)
    CPU_MS.append((time.thread_time() - c0) * 1e3)
    return out


def stepped(plan: Plan, step: int) -> dict[str, Any]:
    owner, steps = _owner(), []
    CPU_MS.clear()
    _timed(steps, owner.stage_load, plan)
    while not _timed(steps, owner.load_step, step):
        pass
    _timed(steps, owner.commit_load, "big")
    while not _timed(steps, owner.retire_step, step):
        pass
    load_cpu = max(CPU_MS)
    unload: list[float] = []  # back to the small plan: 50k threads removed
    _timed(unload, owner.stage_load, _plan(50))
    while not _timed(unload, owner.load_step, step):
        pass
    _timed(unload, owner.commit_load, "small")
    while not _timed(unload, owner.retire_step, step):
        pass
    return {
        "owner_steps": len(steps),
        "max_step_ms": round(max(steps), 1),
        "max_step_cpu_ms": round(load_cpu, 1),
        "total_ms": round(sum(steps), 1),
        "unload_max_step_ms": round(max(unload), 1),
        "unload_total_ms": round(sum(unload), 1),
        "unload_max_step_cpu_ms": round(max(CPU_MS), 1),
    }


def one_step(plan: Plan) -> dict[str, Any]:
    owner, steps = _owner(), []
    CPU_MS.clear()
    _timed(steps, owner.load, plan, "big")
    unload: list[float] = []
    _timed(unload, owner.load, _plan(50), "small")
    return {
        "max_step_ms": round(steps[0], 1),
        "max_step_cpu_ms": round(CPU_MS[0], 1),
        "unload_max_step_ms": round(unload[0], 1),
        "unload_max_step_cpu_ms": round(CPU_MS[1], 1),
    }


@click.command("plan-load")
@click.option("--threads", type=click.IntRange(100, 200_000), default=50_000, show_default=True)
@click.option(
    "--step", type=click.IntRange(1, 200_000), default=LOAD_STEP_THREADS, show_default=True
)
@click.option("--json", "as_json", is_flag=True)
def main(threads: int, step: int, as_json: bool) -> None:
    """Longest owner step of a big plan load, stepped vs one operation (same run)."""
    plan = _plan(threads)
    load_before = os.getloadavg()
    report = {
        "threads": threads,
        "step_threads": step,
        "stepped": stepped(plan, step),
        "one_step_baseline": one_step(plan),
        "goal_max_step_ms": 100,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
    }
    report["goal_met"] = (
        max(report["stepped"]["max_step_ms"], report["stepped"]["unload_max_step_ms"]) <= 100
    )
    click.echo(json.dumps(report, indent=None if not as_json else 2))


if __name__ == "__main__":
    main()
