"""The EEVDF rules, one test each: eligibility, deadline order, lag clamp,
placement that preserves lag, reweight rescale."""

from __future__ import annotations

import pytest

from capos_sched.core import SLICE_NS, QueueCpu, Scheduler

MS = 1_000_000


def spawn(s: Scheduler, name: str, **kwargs):
    return s.spawn(name, 0, placement=QueueCpu(0), **kwargs).thread


def state(s: Scheduler, ref):
    return s._threads[ref.tid].policy_data  # white-box: the policy's own state


def v(s: Scheduler, ref) -> int:
    return s.policy_object.v(s._threads[ref.tid])


def test_an_ineligible_thread_waits_even_with_the_earliest_deadline():
    s = Scheduler(1, "eevdf")
    inter = spawn(s, "inter", latency_class="interactive")  # request 1 ms
    batch = spawn(s, "batch", latency_class="batch")  # request 16 ms
    assert s.pick_next(0, 0).thread == inter  # deadline 1 ms < 16 ms
    s.preempt_current(0, 3 * MS, 3 * MS)
    # inter: v = 3 ms, deadline 4 ms; batch: v = 0, deadline 16 ms; V = 1.5 ms.
    assert state(s, inter).deadline < state(s, batch).deadline
    assert not s.policy_object.eligible(s._threads[inter.tid])
    assert s.pick_next(0, 3 * MS).thread == batch  # eligibility before deadline


def test_earliest_deadline_first_among_eligible_threads():
    s = Scheduler(1, "eevdf")
    for name, cls in (("batch", "batch"), ("normal", "normal"), ("inter", "interactive")):
        spawn(s, name, latency_class=cls)
    order = []
    for _ in range(3):
        order.append(s.pick_next(0, 0).name)
        s.block_current(0, 0, 0)
    assert order == ["inter", "normal", "batch"]


@pytest.mark.parametrize("ahead", [False, True])
def test_lag_is_clamped_to_about_one_request_at_dequeue(ahead):
    s = Scheduler(1, "eevdf")
    a, b = spawn(s, "a"), spawn(s, "b")
    assert s.pick_next(0, 0).thread == a
    if ahead:
        s.block_current(0, 100 * MS, 100 * MS)  # leaves 50 ms ahead of V: lag -50 ms
        assert state(s, a).vlag == -SLICE_NS
    else:
        s.preempt_current(0, 100 * MS, 100 * MS)
        assert s.pick_next(0, 100 * MS).thread == b
        s.block_current(0, 100 * MS, 0)  # leaves 50 ms behind V: lag +50 ms
        assert state(s, b).vlag == SLICE_NS


def test_a_wake_preserves_the_lag_it_left_with():
    s = Scheduler(1, "eevdf")
    a, b = spawn(s, "a"), spawn(s, "b")
    assert s.pick_next(0, 0).thread == a
    s.preempt_current(0, 100 * MS, 100 * MS)
    assert s.pick_next(0, 100 * MS).thread == b
    s.block_current(0, 100 * MS, 0)
    lag = state(s, b).vlag
    assert lag == SLICE_NS
    s.wake(b, 200 * MS)
    avg = s.policy_object.avg()
    assert avg - v(s, b) == lag  # back in the average with its lag
    assert v(s, a) - v(s, b) == 2 * lag  # placed at V_before - lag * (W + w) / W


def test_reweight_rescales_lag_and_keeps_the_average():
    s = Scheduler(1, "eevdf")
    a, b = spawn(s, "a"), spawn(s, "b")
    assert s.pick_next(0, 0).thread == a
    s.preempt_current(0, 8 * MS, 8 * MS)  # a: v = 8 ms; b: 0; V = 4 ms
    policy = s.policy_object
    before_avg = policy.avg()
    lag_before = before_avg - v(s, b)
    s.set_weight(b, 4096)
    assert abs(policy.avg() - before_avg) <= 1  # V unchanged (integer rounding)
    assert policy.avg() - v(s, b) == lag_before * 1024 // 4096
    # and the queue is re-keyed: b's deadline uses its new weight
    assert state(s, b).deadline == v(s, b) + SLICE_NS * 1024 // 4096
    s.check_invariants()


def test_deadline_is_request_over_weight():
    s = Scheduler(1, "eevdf")
    spawn(s, "light")
    heavy = spawn(s, "heavy", weight=4096)  # deadline 1 ms against 4 ms
    assert s.pick_next(0, 0).thread == heavy


def test_weighted_shares_on_one_and_two_cpus():
    from capos_sched.core import ideal_shares
    from capos_sched.sim import Simulator
    from capos_sched.workload import Spin

    for cpus in (1, 2):
        sim = Simulator(cpus, "eevdf", seed=3, jitter=0.2)
        for i, weight in enumerate((2048, 1024, 1024)):
            sim.add_thread(f"t{i}", Spin(), weight=weight)
        got = [t["runtime_ns"] for t in sim.run(3 * 10**9)["threads"]]
        for runtime, share in zip(got, ideal_shares([2048, 1024, 1024], cpus), strict=True):
            assert abs(runtime / 3e9 - share) <= 0.02 * share, (cpus, got)
