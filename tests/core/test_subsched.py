"""CPU delegation enforced by the mechanism (core/subsched.py): rules 1-9 of
docs/delegation.md on a Scheduler with sub-schedulers."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from capos_sched.core import (
    ENQ_EVICTED,
    ENQ_NEW,
    ENQ_REJECTED,
    CpuCap,
    InvalidArgument,
    Scheduler,
    StaleScheduler,
    ThreadState,
    local_dsq,
    missing_caps,
)
from capos_sched.sim import Simulator
from capos_sched.workload import Spin

MS = 1_000_000
ENQ = CpuCap.ENQ_IMMED | CpuCap.ENQ


class LocalPolicy:
    """Queues every thread straight onto a held CPU's local DSQ; every
    ``inject``-th fresh enqueue goes to ``bad_cpu`` instead (qmap's fault
    injection). Records the flags of every rejected hand-back."""

    name = "local"

    def __init__(self, bad_cpu: int | None = None, inject: int = 0, always_bad: bool = False):
        self.bad_cpu = bad_cpu
        self.inject = inject
        self.always_bad = always_bad
        self.enqueues = 0
        self.injected = 0
        self.rejected_flags: list[int] = []
        self.notes: list[tuple[Any, ...]] = []

    def enqueue(self, ctx: Any, thread: Any, flags: int) -> None:
        if flags & ENQ_REJECTED:
            self.rejected_flags.append(flags)
            if not self.always_bad:
                ctx.insert(thread, ctx.local_dsq(ctx.held_cpus()[0]))
                return
        else:
            self.enqueues += 1
        if self.always_bad or (self.inject and self.enqueues % self.inject == 0):
            if not flags & ENQ_REJECTED:
                self.injected += 1
            ctx.insert(thread, ctx.local_dsq(self.bad_cpu))
            return
        held = ctx.held_cpus()
        cpu = thread.last_cpu if thread.last_cpu in held else held[0]
        if flags & ENQ_NEW:
            cpu = held[thread.tid % len(held)]  # spread new threads
        ctx.insert(thread, ctx.local_dsq(cpu))

    def caps_updated(self, ctx: Any, cpus: list[int]) -> None:
        self.notes.append(("caps", tuple(cpus)))

    def effective_caps_updated(self, ctx: Any, cpu: int, before: CpuCap, after: CpuCap) -> None:
        self.notes.append(("effective", cpu, before, after))

    def idle(self, ctx: Any, cpu: int) -> None:
        self.notes.append(("idle", cpu))


def two_children(policy_a: Any = "fifo", policy_b: Any = "fifo") -> Scheduler:
    """4 CPUs: root (0,), a (1, 2) at weight 200, b (3,) at weight 100."""
    sched = Scheduler(4, "wfq")
    sched.attach_scheduler("a", "root", policy_a, 200, 0)
    sched.attach_scheduler("b", "root", policy_b, 100, 0)
    return sched


def held(sched: Scheduler, name: str) -> dict[int, CpuCap]:
    return {h.cpu: h.held for h in sched.cpu_holdings(name) if h.held}


def run_cycles(sched: Scheduler, cycles: int, now: int = 0, slice_ns: int = MS) -> int:
    """Every CPU: stop what runs (expired), pick again; checks invariants."""
    for _ in range(cycles):
        now += slice_ns
        for cpu in range(sched.nr_cpus):
            if sched.running_thread(cpu) is not None:
                sched.stop(cpu, now, slice_ns, "expired")
            sched.pick_next(cpu, now)
            sched.check_invariants()
    return now


def cpus_of(sched: Scheduler, name: str) -> set[int]:
    out = set()
    for cpu in range(sched.nr_cpus):
        ref = sched.running_thread(cpu)
        if ref is not None and sched.scheduler_of(ref) == name:
            out.add(cpu)
    return out


# -- rules 1-3 and 9: the tree, grants and the default split ------------------


def test_without_sub_schedulers_there_is_only_the_root_holding_everything():
    sched = Scheduler(3, "wfq")
    assert sched.scheduler_names() == ["root"]
    assert sched.scheduler_children("root") == []
    assert held(sched, "root") == dict.fromkeys(range(3), CpuCap(7))
    assert sched._routed is None  # the single-policy dispatch path is untouched


def test_default_split_is_qmaps_floor_of_weight_share_self_first():
    sched = two_children()
    assert sched.scheduler_names() == ["root", "a", "b"]
    assert held(sched, "a") == {1: ENQ, 2: ENQ}
    assert held(sched, "b") == {3: ENQ}


def test_a_child_that_would_get_no_cpu_is_refused_and_nothing_changes():
    sched = two_children()
    refusal = r"cannot attach scheduler 'tiny' under 'root': .* would get no CPU"
    with pytest.raises(InvalidArgument, match=refusal):
        sched.attach_scheduler("tiny", "root", "fifo", 1, 0)
    assert sched.scheduler_names() == ["root", "a", "b"]
    assert held(sched, "a") == {1: ENQ, 2: ENQ}


def test_a_child_of_a_manual_parent_holds_nothing_until_granted():
    sched = two_children()
    denied, _ = sched.grant_cpus("root", "a", [0], CpuCap.ENQ_IMMED, 0)  # root goes manual
    assert denied == []
    sched.attach_scheduler("c", "a", "fifo", 100, 0)  # a still splits by default
    assert held(sched, "c")  # a's default split gave c CPUs
    sched.grant_cpus("a", "c", [1], CpuCap.ENQ, 0)  # a goes manual
    sched.attach_scheduler("d", "a", "fifo", 100, 0)
    assert held(sched, "d") == {}


def test_grant_of_an_implied_cap_is_denied_and_a_non_child_is_invalid():
    sched = two_children()
    sched.attach_scheduler("c", "a", "fifo", 100, 0)
    # a holds enq and enqImmed literally on 1, 2; nothing on 3.
    denied, _ = sched.grant_cpus("a", "c", [1, 3], CpuCap.ENQ, 0)
    assert denied == [3]
    denied, _ = sched.grant_cpus("a", "c", [1], CpuCap.PREEMPT, 0)
    assert denied == [1]
    with pytest.raises(InvalidArgument, match="not a direct child"):
        sched.grant_cpus("root", "c", [1], CpuCap.ENQ, 0)
    with pytest.raises(InvalidArgument, match="no scheduler named 'zz'"):
        sched.cpu_holdings("zz")


def test_pool_rotates_every_period_between_children():
    sched = Scheduler(5, "wfq")  # 100 / 100 / 100: one CPU each, two in the pool
    sched.attach_scheduler("a", "root", "fifo", 100, 0)
    sched.attach_scheduler("b", "root", "fifo", 100, 0)
    assert held(sched, "a") == {1: ENQ, 3: CpuCap.ENQ_IMMED, 4: CpuCap.ENQ_IMMED}
    assert held(sched, "b") == {2: ENQ}
    assert sched.next_delegation_event_ns() == 200 * MS
    fx = sched.delegation_tick(200 * MS)
    assert held(sched, "a") == {1: ENQ}
    assert held(sched, "b") == {2: ENQ, 3: CpuCap.ENQ_IMMED, 4: CpuCap.ENQ_IMMED}
    assert {(n.scheduler, n.cpus) for n in fx.notifications if n.kind == "capsUpdated"} == {
        ("a", (3, 4)),
        ("b", (3, 4)),
    }
    sched.delegation_tick(399 * MS)  # same period: no change
    assert 3 in held(sched, "b")


def test_pool_rotation_below_ten_ms_is_refused():
    with pytest.raises(InvalidArgument, match="below the minimum"):
        Scheduler(2).set_pool_rotation(9 * MS)


# -- rule 5: enforcement at delivery ------------------------------------------


def test_an_insert_onto_an_unheld_cpu_is_rejected_and_handed_back_with_the_missing_caps():
    policy = LocalPolicy(bad_cpu=0, always_bad=False, inject=1)
    sched = two_children(policy)
    wake = sched.spawn("t", 0, scheduler="a")
    stats = sched.scheduler_stats("a")
    assert stats.rejected_inserts == 1 == policy.injected
    assert len(policy.rejected_flags) == 1
    assert missing_caps(policy.rejected_flags[0]) == CpuCap.ENQ_IMMED  # CPU 0 was idle
    snap = sched.snapshot(wake.thread)
    assert snap.state is ThreadState.RUNNABLE and snap.cpu in (1, 2)
    assert sched.queued_on(sched.resolve(wake.thread)) == local_dsq(snap.cpu)


def test_fault_injection_rejected_inserts_equal_injected_ones_one_to_one():
    policy = LocalPolicy(bad_cpu=3, inject=64)
    sched = two_children(policy)
    for k in range(40):
        sched.spawn(f"t{k}", 0, scheduler="a")
    run_cycles(sched, 1000)
    assert policy.injected >= 20
    assert sched.scheduler_stats("a").rejected_inserts == policy.injected
    assert sched.scheduler_stats("a").forced_admits == 0


def test_a_thread_that_cannot_move_is_force_admitted_to_its_own_cpus_and_counted():
    policy = LocalPolicy(bad_cpu=0, always_bad=True)
    sched = two_children(policy)
    wake = sched.spawn("stuck", 0, scheduler="a")
    stats = sched.scheduler_stats("a")
    assert stats.forced_admits == 1 and stats.rejected_inserts == 2
    run_cycles(sched, 5)
    assert sched.snapshot(wake.thread).runtime_ns > 0
    assert sched.snapshot(wake.thread).cpu in (1, 2)


def test_a_kick_without_enq_immed_is_dropped_and_counted():
    sched = two_children()
    ctx = sched._deleg.states["b"].ctx
    ctx.kick(0)
    ctx.kick(3)
    assert sched.scheduler_stats("b").denied_kicks == 1


def test_a_preempting_kick_against_another_subtree_degrades_without_preempt():
    sched = two_children()
    sched.grant_cpus("root", "b", [0], CpuCap.ENQ, 0)
    root_thread = sched.spawn("r", 0).thread
    sched.pick_next(0, 0)
    assert sched.running_thread(0) == root_thread
    ctx = sched._deleg.states["b"].ctx
    sched._preempts.clear()
    ctx.kick(0, preempt=True)
    assert sched._preempts == [] and sched.scheduler_stats("b").denied_preempts == 1
    sched.grant_cpus("root", "b", [0], CpuCap.PREEMPT, 0)
    ctx.kick(0, preempt=True)
    assert sched._preempts == [0] and sched.scheduler_stats("b").denied_preempts == 1


def test_each_child_runs_only_on_its_own_cpus():
    sched = two_children("wfq", "eevdf")
    for k in range(6):
        sched.spawn(f"a{k}", 0, scheduler="a")
        sched.spawn(f"b{k}", 0, scheduler="b")
    for _ in range(50):
        run_cycles(sched, 1)
        assert cpus_of(sched, "a") <= {1, 2}
        assert cpus_of(sched, "b") <= {3}
    assert cpus_of(sched, "a") == {1, 2} and cpus_of(sched, "b") == {3}


# -- rule 6: a revoke evicts ----------------------------------------------------


def test_revoke_ends_the_running_slice_and_evicts_the_queued_threads():
    policy = LocalPolicy()
    sched = two_children(policy)
    refs = [sched.spawn(f"t{k}", 0, scheduler="a").thread for k in range(6)]
    run_cycles(sched, 2)
    running_on_2 = sched.running_thread(2)
    assert running_on_2 in refs
    queued_on_2 = [r for r in refs if sched.queued_on(sched.resolve(r)) == local_dsq(2)]
    assert queued_on_2
    fx = sched.revoke_cpus("root", "a", [2], CpuCap.ENQ_IMMED, 10 * MS)
    assert fx.preempts == [2]
    assert held(sched, "a") == {1: ENQ}
    # The slice ends; the next dispatch of CPU 2 folds the revoke in.
    sched.stop(2, 11 * MS, MS, "expired")
    sched.pick_next(2, 11 * MS)
    sched.check_invariants()
    assert sched.scheduler_stats("a").evictions == len(queued_on_2)
    assert sched.running_thread(2) is None or sched.scheduler_of(sched.running_thread(2)) != "a"
    for ref in refs:  # nothing lost, nothing of a on CPU 2
        thread = sched.resolve(ref)
        assert thread.state in (ThreadState.RUNNABLE, ThreadState.RUNNING)
        assert sched.queued_on(thread) != local_dsq(2)
    notes = [n for n in policy.notes if n[0] == "effective" and n[1] == 2]
    assert notes[-1] == ("effective", 2, ENQ, CpuCap.NONE)


def test_evicted_threads_are_tagged():
    seen: list[int] = []

    class Tagging(LocalPolicy):
        def enqueue(self, ctx: Any, thread: Any, flags: int) -> None:
            seen.append(flags)
            super().enqueue(ctx, thread, flags)

    sched = two_children(Tagging())
    for k in range(4):
        sched.spawn(f"t{k}", 0, scheduler="a")
    run_cycles(sched, 1)
    sched.revoke_cpus("root", "a", [1], CpuCap.ENQ_IMMED, 5 * MS)
    sched.stop(1, 5 * MS, MS, "expired")
    sched.pick_next(1, 5 * MS)
    assert any(f & ENQ_EVICTED for f in seen)


def test_simulated_revoke_moves_the_child_off_the_cpu_within_one_dispatch():
    sim = Simulator(4, "wfq")
    sim.core.attach_scheduler("a", "root", "wfq", 200, 0)
    for k in range(4):
        sim.add_thread(f"a{k}", Spin(), scheduler="a")

    def revoke() -> None:
        sim._act(sim.core.revoke_cpus("root", "a", [2], CpuCap.ENQ_IMMED, sim.now_ns))

    sim.at(100 * MS, revoke)
    report = sim.run(300 * MS)
    on_2 = sum(int(t["cpu_runtime_ns"].get("2", 0)) for t in report["threads"])
    assert on_2 == 100 * MS  # not a nanosecond after the revoke
    row = next(r for r in report["schedulers"] if r["name"] == "a")
    assert row["allocated_ns"]["2"] == 100 * MS


# -- rule 7: notifications --------------------------------------------------------


def test_notifications_caps_then_effective_at_dispatch_then_idle():
    policy = LocalPolicy()
    sched = Scheduler(4, "wfq")
    fx = sched.attach_scheduler("a", "root", policy, 200, 0)
    assert [(n.kind, n.scheduler, n.cpus) for n in fx.notifications] == [
        ("capsUpdated", "a", (1, 2, 3))
    ]
    assert policy.notes == [("caps", (1, 2, 3))]
    assert sched.pick_next(1, 0) is None  # CPU 1 folds in, finds nothing
    notes = sched.take_notifications()
    kinds = [(n.kind, n.scheduler, n.cpu) for n in notes]
    assert ("effectiveCapsUpdated", "a", 1) in kinds
    assert ("idle", "a", 1) in kinds and ("idle", "root", 1) in kinds
    assert sched.pick_next(1, 1) is None  # still idle: no second idle notice
    assert not [n for n in sched.take_notifications() if n.kind == "idle"]


# -- rule 8: kill ---------------------------------------------------------------------


def test_kill_rehomes_the_subtree_threads_to_the_parent_with_accounting():
    sched = two_children("wfq", "fifo")
    sched.attach_scheduler("c", "a", "fifo", 100, 0)
    refs = [sched.spawn(f"c{k}", 0, scheduler="c").thread for k in range(3)]
    refs += [sched.spawn(f"a{k}", 0, scheduler="a").thread for k in range(3)]
    now = run_cycles(sched, 20)
    before = {r: sched.snapshot(r).runtime_ns for r in refs}
    assert sum(before.values()) > 0
    sched.kill_scheduler("root", "a", "operator said so", now)
    sched.check_invariants()
    assert sched.scheduler_names() == ["root", "b"]
    assert all(sched.scheduler_of(r) == "root" for r in refs)
    assert {r: sched.snapshot(r).runtime_ns for r in refs} == before
    stats = sched.scheduler_stats("a")
    assert stats.exit.kind == "parentKill" and stats.exit.removed == ("a", "c")
    assert stats.exit.message == "operator said so"
    assert not sched.scheduler_alive("c")
    with pytest.raises(StaleScheduler, match="killed"):
        sched.grant_cpus("a", "c", [1], CpuCap.ENQ, now)
    with pytest.raises(StaleScheduler):
        sched.cpu_holdings("c")
    run_cycles(sched, 20, now)
    assert all(sched.snapshot(r).runtime_ns > before[r] for r in refs)


def test_only_the_direct_parent_may_kill():
    sched = two_children()
    sched.attach_scheduler("c", "a", "fifo", 100, 0)
    with pytest.raises(InvalidArgument, match="not a direct child"):
        sched.kill_scheduler("root", "c", "x", 0)
    assert sched.scheduler_alive("c")


def test_a_failing_sub_policy_is_ejected_alone():
    class Broken:
        name = "broken"

        def enqueue(self, ctx: Any, thread: Any, flags: int) -> None:
            raise RuntimeError("boom")

    sched = two_children(Broken())
    ref = sched.spawn("t", 0, scheduler="a").thread
    root_ref = sched.spawn("r", 0).thread
    assert sched.policy_name == "wfq"  # the root kept its policy
    run_cycles(sched, 3)
    assert sched.snapshot(ref).runtime_ns > 0 and sched.snapshot(root_ref).runtime_ns > 0
    assert sched._deleg.states["a"].policy_exits[0].message == "RuntimeError: boom"


# -- the state machine ------------------------------------------------------------------

NAMES = ("a", "b", "c", "d", "e")


class DelegationMachine(RuleBasedStateMachine):
    """Random trees, grants, revokes, kills, spawns and dispatches; after every
    step the Scheduler's invariants (ownership: no thread lost; the subset
    invariant; nothing queued or running on a folded CPU without caps)."""

    def __init__(self) -> None:
        super().__init__()
        self.sched = Scheduler(4, "wfq")
        self.now = 0
        self.refs: list[Any] = []

    def live(self) -> list[str]:
        return self.sched.scheduler_names()

    @rule(
        name=st.sampled_from(NAMES),
        parent=st.integers(0, 4),
        weight=st.sampled_from([50, 100, 200]),
        policy=st.sampled_from(["wfq", "fifo", "eevdf", "local"]),
    )
    def attach(self, name: str, parent: int, weight: int, policy: str) -> None:
        live = self.live()
        if name in live:
            return
        up = live[parent % len(live)]
        chosen: Any = LocalPolicy(bad_cpu=0, inject=5) if policy == "local" else policy
        try:
            self.sched.attach_scheduler(name, up, chosen, weight, self.now)
        except InvalidArgument:
            assert name not in self.live()

    @rule(who=st.integers(0, 10), cpus=st.lists(st.integers(0, 3), max_size=3),
          caps=st.integers(1, 7), grant=st.booleans())  # fmt: skip
    def change(self, who: int, cpus: list[int], caps: int, grant: bool) -> None:
        children = [n for n in self.live() if n != "root"]
        if not children:
            return
        child = children[who % len(children)]
        parent = self.sched._deleg.tree.nodes[child].parent
        if grant:
            self.sched.grant_cpus(parent, child, cpus, CpuCap(caps), self.now)
        else:
            self.sched.revoke_cpus(parent, child, cpus, CpuCap(caps), self.now)

    @rule(who=st.integers(0, 10))
    def kill(self, who: int) -> None:
        children = [n for n in self.live() if n != "root"]
        if children:
            child = children[who % len(children)]
            parent = self.sched._deleg.tree.nodes[child].parent
            self.sched.kill_scheduler(parent, child, "random", self.now)

    @rule(who=st.integers(0, 10))
    def spawn(self, who: int) -> None:
        live = self.live()
        name = live[who % len(live)]
        self.refs.append(self.sched.spawn(f"t{len(self.refs)}", self.now, scheduler=name).thread)

    @rule(cpu=st.integers(0, 3), how=st.sampled_from(["expired", "sleep", "finished"]))
    def dispatch(self, cpu: int, how: str) -> None:
        self.now += MS
        if self.sched.running_thread(cpu) is not None:
            self.sched.stop(cpu, self.now, MS, how)
        self.sched.pick_next(cpu, self.now)

    @precondition(lambda self: self.refs)
    @rule(k=st.integers(0, 100))
    def wake(self, k: int) -> None:
        ref = self.refs[k % len(self.refs)]
        if self.sched.is_live(ref):
            self.sched.wake(ref, self.now)

    @rule()
    def rotate(self) -> None:
        self.now += 50 * MS
        self.sched.delegation_tick(self.now)

    @invariant()
    def invariants(self) -> None:
        self.sched.check_invariants()
        for ref in self.refs:
            if self.sched.is_live(ref):
                assert self.sched.scheduler_of(ref) in self.live()


TestDelegationMachine = DelegationMachine.TestCase
TestDelegationMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_an_attach_that_would_starve_a_grandchild_is_refused_whole():
    sched = Scheduler(4, "wfq")
    sched.attach_scheduler("a", "root", "wfq", 100, 0)  # root (0, 1), a (2, 3)
    sched.attach_scheduler("b", "a", "wfq", 100, 0)  # a (2,), b (3,)
    with pytest.raises(InvalidArgument, match="cannot attach scheduler 'c'"):
        sched.attach_scheduler("c", "root", "wfq", 100, 0)  # a would keep 1 CPU for 2
    assert sched.scheduler_names() == ["root", "a", "b"]
    assert held(sched, "b") == {3: ENQ}


def test_a_delegate_gets_its_cpus_before_the_root_whose_threads_fill_the_rest():
    sched = two_children("wfq", "fifo")
    for k in range(4):
        sched.spawn(f"r{k}", 0)
        sched.spawn(f"a{k}", 0, scheduler="a")
        sched.spawn(f"b{k}", 0, scheduler="b")
    for _ in range(30):
        run_cycles(sched, 1)
        assert cpus_of(sched, "a") == {1, 2}
        assert cpus_of(sched, "b") == {3}
        assert cpus_of(sched, "root") == {0}
