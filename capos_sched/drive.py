"""What every driver of the core shares: one step from a worker's stop to core calls.

The simulator (virtual time) and the trio runtime (real time) both run a
thread's segment, learn how long it ran and why it stopped (``Stop``), and
must then tell the core and move the workload programs on. That is this one
function, so the two drivers cannot drift apart; each then acts on the
returned ``Effects`` in its own way (an event heap, or trio tasks and worker
flags):

- ``effects.kicks``: idle CPUs to wake; ``effects.preempts``: slices to cut;
- ``effects.delivered``: servers that received a call (their program has
  moved on already);
- ``effects.replied`` / ``effects.released``: callers whose call ended (by a
  reply, or unanswered because their server exited) and which are runnable;
- ``effects.exited``: the stopped thread is gone (finished or killed).

Also here: the per-thread report row both drivers print (one report type).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from capos_sched.core import Effects, Scheduler, ThreadRef, ThreadSnapshot
from capos_sched.workload import Program, Stop

ProgramOf = Callable[[ThreadRef], "Program | None"]


def step(
    core: Scheduler,
    cpu: int,
    now_ns: int,
    elapsed_ns: int,
    stop: Stop,
    workload: Any,
    program_of: ProgramOf,
) -> Effects:
    """``cpu``'s running thread ran ``elapsed_ns`` and stopped for ``stop``:
    tell the core, move the programs of the threads it woke on, and return
    what the driver must still do (see the module docstring)."""
    endpoint = getattr(workload, "endpoint", None)
    # stop._value_ is stop.value without the enum property (once per segment)
    effects = core.stop(cpu, now_ns, elapsed_ns, stop._value_, endpoint)
    if effects.delivered:
        for server in effects.delivered:
            _resume(program_of(server))
    if effects.replied or effects.released:
        for woken in (*effects.replied, *effects.released):
            _resume(program_of(woken.thread))
    return effects


def _resume(program: Program | None) -> None:
    if program is not None:
        program.resume()


def thread_row(name: str, snap: ThreadSnapshot, **extra: Any) -> dict[str, Any]:
    """One thread of a run report (``run --json`` and ``simulate --json``):
    the core's accounting, then the driver's own measurements in ``extra``."""
    return {
        "name": name,
        "weight": snap.weight,
        "class": snap.latency_class.wire_name,
        "runtime_ns": snap.runtime_ns,
        "virtual_runtime_ns": snap.virtual_runtime_ns,
        "context_switches": snap.context_switches,
        "preemptions": snap.preemptions,
        "voluntary_blocks": snap.voluntary_blocks,
        "migrations": snap.migrations,
        **extra,
    }


# -- the plan's scheduler tree: one construction for simulate and run ----------


def attach_schedulers(core: Scheduler, plan: Any, now_ns: int = 0) -> list[Effects]:
    """Attach the plan's sub-schedulers to ``core`` (parents first), each with
    a fresh instance of its policy (the machine's when it names none); the
    root's default split gives them CPUs. Returns the effects of each attach."""
    from capos_sched.policy_files import policy_and_guard

    effects = []
    if plan.schedulers and plan.machine.pool_rotation_ns is not None:
        core.set_pool_rotation(plan.machine.pool_rotation_ns)
    for sched in plan.schedulers:
        policy, _guard = policy_and_guard(sched.policy or plan.machine.policy)
        fx = core.attach_scheduler(sched.name, sched.parent, policy, sched.weight, now_ns)
        effects.append(fx)
    return effects


def scheduler_of_thread(plan: Any, thread_plan: Any) -> str:
    """The scheduler that runs ``thread_plan`` (its process's; default the root)."""
    process = plan.process(thread_plan.process)
    return "root" if process is None else process.scheduler


def apply_event(core: Scheduler, event: Any, now_ns: int) -> tuple[Effects, str | None]:
    """Run one timed delegation event (``events:`` in the manifest): the parent
    of ``event.child`` grants, revokes or kills. A refused act (the child was
    killed already, say) changes nothing and comes back as a message."""
    from capos_sched.core import CoreError, CpuCap
    from capos_sched.core.delegation import parse_caps

    if not core.scheduler_alive(event.child):
        return Effects(), f"event {event.name}: scheduler {event.child!r} is not alive"
    parent = next(
        name for name in core.scheduler_names() if event.child in core.scheduler_children(name)
    )
    caps = parse_caps(event.caps) if event.caps else CpuCap.NONE
    try:
        if event.action == "grant":
            return core.grant_cpus(parent, event.child, event.cpus, caps, now_ns)[1], None
        if event.action == "revoke":
            return core.revoke_cpus(parent, event.child, event.cpus, caps, now_ns), None
        return core.kill_scheduler(parent, event.child, event.reason or event.name, now_ns), None
    except CoreError as exc:
        return Effects(), f"event {event.name}: {exc}"


def scheduler_rows(core: Scheduler) -> list[dict[str, Any]]:
    """The report's per-scheduler rows (``simulate`` and ``run``): live ones in
    tree order, then killed ones; holdings, counters, CPU time allocated per
    CPU, exit record. Empty without sub-schedulers."""
    names = core.scheduler_names()
    killed = core.killed_schedulers()
    if names == ["root"] and not killed:
        return []
    rows = []
    for name in names:
        row = core.scheduler_stats(name).as_dict()
        row["parent"] = core.scheduler_parent(name)
        row["weight"] = core.scheduler_weight(name)
        row["holdings"] = [
            {"cpu": h.cpu, "held": h.held.names, "effective": h.effective.names}
            for h in core.cpu_holdings(name)
        ]
        rows.append(row)
    for name in killed:
        row = core.scheduler_stats(name).as_dict()
        row["holdings"] = []
        rows.append(row)
    return rows
