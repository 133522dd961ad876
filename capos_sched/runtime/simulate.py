"""Plan -> deterministic simulator: ``capos-sched simulate``.

Same report shape as ``capos-sched run --json`` (keys in the same order),
computed by ``capos_sched.sim.Simulator`` on virtual time. There is no
dispatch overhead on virtual time, so ``dispatch_overhead_ns`` is null.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from capos_sched.core import Policy
from capos_sched.sim import Progress, Simulator

if TYPE_CHECKING:
    from capos_sched.manifest import Plan

DEFAULT_JITTER = 0.02
"""Relative jitter of modelled run lengths; the seed picks it (0 = exact model)."""


def simulate_plan(
    plan: Plan,
    *,
    duration_ns: int,
    seed: int = 0,
    cpus: int | None = None,
    policy: Policy | str | None = None,
    jitter: float = DEFAULT_JITTER,
    manifest_name: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Simulate ``plan`` for ``duration_ns`` of virtual time (or until every finite
    thread finished) and return the run report; ``progress`` as in ``Simulator.run``."""
    from capos_sched.policy_files import policy_and_guard

    chosen, guard = policy_and_guard(policy or plan.machine.policy)
    sim = Simulator(
        cpus or plan.machine.cpus,
        chosen,
        plan.machine.slice_ns,
        seed=seed,
        jitter=jitter,
        guard=guard,
    )
    from capos_sched.drive import apply_event, attach_schedulers, scheduler_of_thread

    attach_schedulers(sim.core, plan)
    refused: list[str] = []

    def run_event(event: Any) -> None:
        effects, problem = apply_event(sim.core, event, sim.now_ns)
        sim.act(effects)
        if problem is not None:
            refused.append(problem)

    for event in plan.events:
        sim.at(event.at_ns, lambda event=event: run_event(event))
    kinds = {}
    for thread in plan.threads():
        sim.add_thread(
            thread.full_name,
            thread.workload,
            thread.weight,
            thread.latency_class,
            scheduler=scheduler_of_thread(plan, thread),
        )
        kinds[thread.full_name] = (thread.process, thread.workload.kind)
    raw = sim.run(duration_ns, progress)
    threads = []
    for entry in raw["threads"]:
        process, kind = kinds[entry["name"]]
        threads.append({"name": entry["name"], "process": process, "workload": kind, **entry})
    return {
        "manifest": manifest_name or plan.source,
        "policy": raw["policy"],
        "cpus": raw["cpus"],
        "slice_ns": raw["slice_ns"],
        "elapsed_ns": raw["elapsed_ns"],
        "dispatch_overhead_ns": None,
        "threads": threads,
        "seed": seed,
        "jitter": jitter,
        "virtual_time": True,
        "policy_final": raw["policy_final"],
        "policy_exits": raw["policy_exits"],
        "schedulers": raw["schedulers"],
        "refused_events": refused,
    }
