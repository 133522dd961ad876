"""Gaps a mutation run of core/subsched.py found in test_subsched.py: each test
here fails under the named mutation (see the docstrings)."""

from __future__ import annotations

from typing import Any

from capos_sched.core import CpuCap, Scheduler
from capos_sched.sim import Simulator
from capos_sched.workload import Spin

MS = 1_000_000


def two_children() -> Scheduler:
    """4 CPUs: root (0,), a (1, 2) at weight 200, b (3,) at weight 100."""
    sched = Scheduler(4, "wfq")
    sched.attach_scheduler("a", "root", "fifo", 200, 0)
    sched.attach_scheduler("b", "root", "fifo", 100, 0)
    return sched


def test_a_kick_without_enq_immed_never_reaches_the_cpu():
    """Mutation: count the denied kick but deliver it anyway."""
    sched = two_children()
    ctx = sched._deleg.states["b"].ctx
    sched._kicks.clear()
    ctx.kick(0)  # the root's CPU: b holds nothing there
    assert sched._kicks == []
    ctx.kick(3)  # b's own CPU, idle: the kick goes through
    assert sched._kicks == [3]
    assert sched.scheduler_stats("b").denied_kicks == 1


def test_a_kick_is_allowed_by_a_granted_enq_immed_alone():
    """Mutation: gate kicks on ``enq`` instead of ``enqImmed``."""
    sched = Scheduler(2, "wfq")
    sched.attach_scheduler("m", "root", "fifo", 100, 0)
    sched.revoke_cpus("root", "m", [1], CpuCap.ENQ_IMMED, 0)  # the default split's enq
    sched.grant_cpus("root", "m", [1], CpuCap.ENQ_IMMED, 0)
    [holding] = [h for h in sched.cpu_holdings("m") if h.held]
    assert (holding.cpu, holding.held) == (1, CpuCap.ENQ_IMMED)
    ctx = sched._deleg.states["m"].ctx
    sched._kicks.clear()
    ctx.kick(1)
    ctx.kick(0)
    assert sched._kicks == [1]
    assert sched.scheduler_stats("m").denied_kicks == 1


class NeverDispatches:
    """Queues every thread on a private DSQ and never moves one: a stall."""

    name = "lazy"

    def init(self, ctx: Any) -> None:
        ctx.create_dsq(1, ordered=False)

    def enqueue(self, ctx: Any, thread: Any, flags: int) -> None:
        ctx.insert(thread, 1)


def lazy_child_sim(watchdog_ms: int = 100) -> Simulator:
    sim = Simulator(4, "wfq", watchdog_ns=watchdog_ms * MS)
    sim.core.attach_scheduler("lazy", "root", NeverDispatches(), 100, 0)
    for k in range(2):
        sim.add_thread(f"r{k}", Spin(), scheduler="root")
        sim.add_thread(f"z{k}", Spin(), scheduler="lazy")
    return sim


def test_a_stalling_sub_policy_is_ejected_alone_and_its_threads_then_run():
    """Mutation: the watchdog ejects the root's policy for any stalled thread
    (the sub-scheduler's threads would then wait forever under the lazy policy)."""
    sim = lazy_child_sim()
    report = sim.run(1_000 * MS)
    core = sim.core
    assert core.policy_name == "wfq" and core.exits == []  # the root's policy stays
    [record] = core._deleg.states["lazy"].policy_exits
    assert record.kind.value == "stall" and record.policy == "lazy"
    runtimes = {t["name"]: t["runtime_ns"] for t in report["threads"]}
    assert runtimes["z0"] > 0 and runtimes["z1"] > 0  # fifo runs them after the ejection


def test_a_sub_scheduler_without_cpus_is_not_ejected_for_its_starved_threads():
    """Its threads wait because its parent gave it nothing: not its policy's fault."""
    sim = lazy_child_sim()
    sim.core.revoke_cpus("root", "lazy", range(4), CpuCap.ENQ_IMMED, 0)
    sim.run(500 * MS)
    assert sim.core._deleg.states["lazy"].policy_exits == []
    assert sim.core.exits == []
