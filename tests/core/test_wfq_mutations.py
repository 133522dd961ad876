"""WFQ rules that today's suite let mutate unnoticed, one test each (issue 9).

Each test names the mutation it kills; docs/policies.md records the runs.
"""

from __future__ import annotations

from capos_sched.core import SLICE_NS, QueueCpu, Scheduler
from capos_sched.runtime.stats import Samples, percentile
from capos_sched.sim import SimThread

MS = 1_000_000


def spawn(s: Scheduler, name: str, cpu: int = 0, **kwargs):
    return s.spawn(name, 0, placement=QueueCpu(cpu), **kwargs).thread


def hog_running_and_blocked(s: Scheduler, cls: str):
    """CPU 0 runs ``hog``, which has run 3 slices (virtual time 3 slices, its
    running finish 4); ``other`` (class ``cls``) is blocked since time 0.
    Returns (hog's running virtual finish, other)."""
    other = spawn(s, "other", latency_class=cls)
    assert s.pick_next(0, 0).thread == other
    s.block_current(0, 0, 0)
    hog = spawn(s, "hog")
    for k in range(4):
        assert s.pick_next(0, k * SLICE_NS).thread == hog
        if k < 3:
            s.preempt_current(0, (k + 1) * SLICE_NS, SLICE_NS)
    assert s.policy_object.vtime[0] == 3 * SLICE_NS
    return 4 * SLICE_NS, other


def test_only_interactive_wakes_preempt():
    # Kills: dropping the "only interactive threads wake-preempt" check. A
    # normal thread with an earlier finish than the running one still waits.
    # Woken, it is placed one slice behind the virtual time: its finish (3
    # slices for normal and ipcServer) is earlier than the hog's (4).
    for cls in ("normal", "ipcServer"):
        s = Scheduler(1)
        hog_finish, other = hog_running_and_blocked(s, cls)
        wake = s.wake(other, 20 * MS)
        assert s.snapshot(other).virtual_runtime_ns + SLICE_NS < hog_finish
        assert wake.preempt is None, cls
    s = Scheduler(1)
    _, other = hog_running_and_blocked(s, "interactive")
    assert s.wake(other, 20 * MS).preempt == 0


def test_wake_preemption_needs_a_strictly_earlier_finish():
    # Kills: "<" -> "<=" in the wake-preemption comparison. An interactive
    # thread's finish is vruntime + slice / 4.
    quarter = SLICE_NS // 4
    for offset, preempts in ((0, False), (1, True)):
        s = Scheduler(1)
        hog_finish, other = hog_running_and_blocked(s, "interactive")
        s._threads[other.tid].virtual_runtime_ns = hog_finish - quarter - offset  # white-box
        wake = s.wake(other, 20 * MS)
        # equal finish: no preemption; one virtual ns earlier: preemption
        assert (wake.preempt == 0) is preempts, offset


def test_queue_virtual_time_never_decreases():
    # Kills: letting a CPU's virtual time decrease (the documented invariant).
    # A woken long sleeper is placed one slice behind the virtual time; picking
    # it must not drag the virtual time back to its vruntime.
    s = Scheduler(1)
    spawn(s, "hog")
    sleeper = spawn(s, "sleeper")
    now = 0
    for _ in range(2):
        s.pick_next(0, now)
        s.block_current(0, now, 0) if s.running_thread(0) == sleeper else s.preempt_current(
            0, now + SLICE_NS, SLICE_NS
        )
        now += SLICE_NS
    seen = [s.policy_object.vtime[0]]
    for _ in range(50):
        s.pick_next(0, now)
        now += SLICE_NS
        s.preempt_current(0, now, SLICE_NS)
        seen.append(s.policy_object.vtime[0])
    s.wake(sleeper, now)
    for _ in range(10):
        s.pick_next(0, now)
        seen.append(s.policy_object.vtime[0])
        s.check_invariants()  # the policy's own check of the same rule
        now += SLICE_NS
        s.preempt_current(0, now, SLICE_NS)
    assert seen == sorted(seen) and seen[-1] > seen[0]


def test_one_percentile_for_every_report():
    # The simulator used to say p99 = 100 for 1..100 and the runtime 99.
    samples = Samples()
    for value in range(1, 101):
        samples.add(value)
    assert samples.summary() == {"count": 100, "p50": 50, "p99": 99, "max": 100}
    assert percentile(list(range(1, 101)), 0.99) == 99
    assert isinstance(SimThread("t", None, None, False).wake_latencies, Samples)
