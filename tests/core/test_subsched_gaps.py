"""Gaps a mutation run of core/subsched.py found in test_subsched.py: each test
here fails under the named mutation (see the docstrings)."""

from __future__ import annotations

from capos_sched.core import CpuCap, Scheduler


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
