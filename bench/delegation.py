"""The ``delegation`` case of ``bench matrix``: CPU delegation on the real runtime.

Runs ``manifests/delegation-shares.cue`` (web at weight 200 and batch at 100
under the root, on 4 CPUs: the default split gives web CPUs 1-2 and batch CPU
3) for the window under each policy, and reports:

- ``share_error``: the max relative error of each sub-scheduler's share of the
  CPU time its threads got against the weight-proportional ideal (2:1);
- ``eviction_ns``: p50/p99, over ``REVOKES`` revokes on the simulator at
  seeded random times under load, of the time from the revoke until the
  child's last run on the revoked CPU ends (virtual time: the mechanism's own
  latency, which is the slice cut at once, plus nothing else);
- ``evictions_within_one_dispatch``: whether every revoke took effect by the
  CPU's next dispatch (the rule);
- ``runtime_eviction_ns``: p50/p99 on the real runtime (wfq), from each timed
  revoke of CPU 2 (``manifests/delegation-revoke.cue``, revoked and granted
  back every ``RUNTIME_PERIOD_NS``) to the trace's ``evict web`` mark, made
  when the lost caps took effect on CPU 2 (its slice cut, its next dispatch).

    python -m bench.matrix --cases delegation --quick --json
"""

from __future__ import annotations

import random
from typing import Any

from capos_sched.core import CpuCap
from capos_sched.sim import Simulator
from capos_sched.workload import Spin

REVOKES = 200
RUNTIME_PERIOD_NS = 50_000_000
"""Revoke-and-grant-back period of the runtime eviction measure."""


def _scheduler_shares(runtime: Any, plan: Any) -> dict[str, int]:
    got: dict[str, int] = {}
    for thread in runtime.report()["threads"]:
        process = plan.process(thread["name"].split("/", 1)[0])
        name = "root" if process is None else process.scheduler
        got[name] = got.get(name, 0) + thread["runtime_ns"]
    return got


def eviction_latencies(revokes: int = REVOKES, seed: int = 0) -> tuple[list[int], bool]:
    """Revoke CPU 2 from a loaded child at random times; per revoke, ns from the
    revoke until the child's last run on CPU 2 ended, and whether each took
    effect by the next dispatch of CPU 2."""
    rng = random.Random(seed)
    latencies, within_one = [], True
    for _ in range(revokes):
        sim = Simulator(4, "wfq", jitter=0.05, seed=rng.randrange(1 << 30))
        sim.core.attach_scheduler("web", "root", "wfq", 200, 0)
        for k in range(4):
            sim.add_thread(f"w{k}", Spin(), scheduler="web")
        at = rng.randrange(10_000_000, 90_000_000)
        last_end = [at]

        def revoke(sim: Simulator = sim) -> None:
            sim.act(sim.core.revoke_cpus("root", "web", [2], CpuCap.ENQ_IMMED, sim.now_ns))

        sim.at(at, revoke)
        original = sim._on_stop
        clean = [True]

        def on_stop(
            cpu: int,
            sim: Simulator = sim,
            original: Any = original,
            at: int = at,
            last_end: list[int] = last_end,
            clean: list[bool] = clean,
        ) -> None:
            original(cpu)
            if cpu == 2 and sim.now_ns >= at:
                last_end[0] = max(last_end[0], sim.now_ns)
                ref = sim.core.running_thread(2)  # what CPU 2 dispatched next
                if ref is not None and sim.core.scheduler_of(ref) == "web":
                    clean[0] = False

        sim._on_stop = on_stop  # type: ignore[method-assign]
        sim.run(100_000_000)
        latencies.append(last_end[0] - at)
        within_one &= clean[0]
    return latencies, within_one


def runtime_eviction_latencies(window_s: float) -> list[int]:
    """Revoke CPU 2 from web on the real runtime every ``RUNTIME_PERIOD_NS``
    (granted back half a period later); ns from each revoke's trace mark to
    the ``evict web`` mark that follows it on CPU 2."""
    import functools

    import attrs
    import trio

    from bench.matrix import load
    from capos_sched.manifest.plan import DelegationEventPlan
    from capos_sched.runtime.runtime import Runtime
    from capos_sched.runtime.trace import TraceRecorder

    plan = load("delegation-revoke.cue")
    events, at, k = [], 100_000_000, 0
    while at + RUNTIME_PERIOD_NS < window_s * 1e9:
        events.append(DelegationEventPlan(f"r{k}", at, "revoke", "web", (2,), ("enqImmed",)))
        half = at + RUNTIME_PERIOD_NS // 2
        events.append(DelegationEventPlan(f"g{k}", half, "grant", "web", (2,), ("enq",)))
        at, k = at + RUNTIME_PERIOD_NS, k + 1
    plan = attrs.evolve(plan, events=tuple(events))
    trace = TraceRecorder(cpus=plan.machine.cpus)
    runtime = Runtime(plan, "wfq", trace=trace)
    trio.run(functools.partial(runtime.run, duration_s=window_s))
    marks = sorted(
        (e["ts"], e["name"])
        for e in trace.events
        if e.get("cat") == "delegation" and e.get("tid") == 2
    )
    latencies, revoked_at = [], None
    for ts, name in marks:
        if name == "revoke web":
            revoked_at = ts
        elif name == "evict web" and revoked_at is not None:
            latencies.append(int((ts - revoked_at) * 1000))  # trace times are us
            revoked_at = None
    return latencies


def measure_delegation(s: Any) -> dict[str, Any]:
    from bench.matrix import load, max_share_error, run_plan, summary

    plan = load("delegation-shares.cue")
    weights = {sched.name: sched.weight for sched in plan.schedulers}
    out: dict[str, Any] = {}
    for policy in s.policies:
        got = _scheduler_shares(run_plan(plan, duration_s=s.window_s, policy=policy), plan)
        names = sorted(weights)
        out[policy] = {
            "share_error": max_share_error(
                [got.get(n, 0) for n in names], [weights[n] for n in names]
            ),
            "runtime_ns": {n: got.get(n, 0) for n in names},
        }
    latencies, within = eviction_latencies(REVOKES // 4 if s.quick else REVOKES)
    out["eviction_ns"] = summary(latencies)
    out["evictions_within_one_dispatch"] = within
    out["runtime_eviction_ns"] = summary(runtime_eviction_latencies(max(1.0, s.window_s)))
    return out


def render_delegation(agg: dict[str, Any], result: dict[str, Any]) -> list[str]:
    lines = ["| policy | share error vs 2:1 |", "| --- | --- |"]
    for policy, node in agg.items():
        if isinstance(node, dict) and "share_error" in node:
            value = node["share_error"]
            value = value.get("median") if isinstance(value, dict) else value
            lines.append(f"| {policy} | {'-' if value is None else f'{value * 100:.2f}%'} |")
    return lines


def register_case(register: Any, case: Any) -> None:
    """Add the case to the matrix of the calling module (``register`` and
    ``Case`` are passed in: under ``python -m bench.matrix`` that module is
    ``__main__``, not ``bench.matrix``)."""
    register(case("delegation", measure_delegation, render_delegation))
