"""The C accelerator of the ordered DSQ (core/_accel.c) against the pure-Python
reference (runqueue.PureVirtualFinishQueue, pure_balance_victim): the same
operation sequences give the same results, queue by queue and through the whole
scheduler. Skipped where the extension was not built (no compiler); the rest of
the suite runs against whichever implementation is selected (``make test`` runs
tests/core both ways, the second time with CAPOS_SCHED_PURE=1)."""

from __future__ import annotations

import os
import subprocess
import sys

import hypothesis.strategies as st
import pytest
from hypothesis import example, given, settings

from capos_sched.core import MAX_WEIGHT, QueueCpu, Scheduler, runqueue
from capos_sched.core.runqueue import KEY_MAX, KEY_MIN, PureVirtualFinishQueue
from capos_sched.core.runqueue import pure_balance_victim as pure_victim

accel = pytest.importorskip("capos_sched.core._accel", reason="C accelerator not built")


class FakeThread:
    """What a DSQ reads and writes of a thread: its ``queue_seq``."""

    __slots__ = ("name", "queue_seq")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue_seq = -1

    def __repr__(self) -> str:
        return self.name


def accelerated_class() -> type:
    """The accelerated queue class (built whether or not CAPOS_SCHED_PURE is set)."""
    assert runqueue.AcceleratedVirtualFinishQueue is not None
    return runqueue.AcceleratedVirtualFinishQueue


# Mostly small keys and thresholds, so ties (between siblings' fronts, and at
# exactly the pull threshold) are common.
keys = st.one_of(
    st.integers(0, 3),
    st.integers(-3, 3),
    st.integers(0, 10**12),
    st.sampled_from([KEY_MIN, KEY_MAX]),
)
thresholds = st.one_of(st.integers(0, 3), st.integers(0, 10**12))
ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 2), st.integers(0, 7), keys),
        st.tuples(st.just("pop"), st.integers(0, 2)),
        st.tuples(st.just("discard"), st.integers(0, 2), st.integers(0, 7)),
        st.tuples(st.just("peek"), st.integers(0, 2)),
        st.tuples(st.just("walk"), st.integers(0, 2), thresholds),
    ),
    max_size=80,
)


def name(thread: FakeThread | None) -> str | None:
    return None if thread is None else thread.name


def run_queue_ops(cls: type, victim_walk, sequence) -> list:  # type: ignore[no-untyped-def]
    """Apply ``sequence`` to three queues of ``cls``; every observable result."""
    queues = [cls(k, k) for k in range(3)]
    threads = [FakeThread(f"t{i}") for i in range(8)]
    seq, seen = 0, []
    for op, q, *args in sequence:
        queue = queues[q]
        if op == "push":
            seq += 1
            thread = threads[args[0]]
            for other in queues:  # as the scheduler: a thread lives in one DSQ
                if other is not queue:
                    other.discard(thread)
            queue.push(thread, args[1], seq)
            seen.append(thread.queue_seq)
        elif op == "pop":
            seen.append(name(queue.pop()))
        elif op == "discard":
            queue.discard(threads[args[0]])
        elif op == "peek":
            head = queue.head()
            head = head if head is None else (head[0], head[1].name)
            seen.append((head, queue.head_key(), name(queue.front()), len(queue)))
        else:
            own_key, victim = victim_walk(queues, queue, args[0])
            seen.append((own_key, None if victim is None else victim.id))
        seen.append([[t.name for t in x] for x in queues])  # the lazy iterator, in key order
        heaps = [len(x._heap) for x in queues]  # the same compactions, at the same points
        assert all(size <= 2 * len(x) + 1 for size, x in zip(heaps, queues, strict=True))
        seen.append(heaps)
    return seen


@settings(max_examples=300, deadline=None)
@given(ops)
# found by hypothesis: a pop that leaves the dead entries of discards behind
# broke the bound heap <= 2 * live + 1 in both (pop compacts now)
@example([("push", 1, 0, 0), ("push", 1, 1, 0), ("push", 1, 1, 0), ("push", 0, 1, 0), ("pop", 1)])
def test_queue_operations_match_the_reference(sequence) -> None:
    expected = run_queue_ops(PureVirtualFinishQueue, pure_victim, sequence)
    assert run_queue_ops(accelerated_class(), accel.balance_victim, sequence) == expected


def test_heap_stays_bounded_and_ordered_under_churn() -> None:
    """Re-keying the same threads 200 times compacts the C heap like the reference."""
    for cls in (PureVirtualFinishQueue, accelerated_class()):
        queue = cls()
        threads = [FakeThread(f"t{i}") for i in range(50)]
        seq = 0
        for round_ in range(200):
            for i, thread in enumerate(threads):
                seq += 1
                queue.push(thread, (round_ * 37 + i) % 101, seq)
        assert len(queue) == 50
        assert len(queue._heap) <= 2 * 50 + 1
        order = [queue.pop() for _ in range(50)]
        final = {t.name: (199 * 37 + i) % 101 for i, t in enumerate(threads)}
        assert [final[t.name] for t in order] == sorted(final.values())
        assert queue.pop() is None and len(queue) == 0


def test_accelerated_queue_refuses_keys_beyond_64_bits() -> None:
    queue = accelerated_class()()
    with pytest.raises(OverflowError):
        queue.push(FakeThread("a"), KEY_MAX + 1, 1)
    assert len(queue) == 0


def test_scheduler_refuses_ordered_keys_beyond_64_bits_in_both() -> None:
    from capos_sched.core import PolicyViolation

    for key in (KEY_MAX + 1, KEY_MIN - 1):
        s = Scheduler(1)
        t = s.spawn("a", 0, placement=QueueCpu(0)).thread
        dsq = s.create_dsq(7, ordered=True)
        thread = s.resolve(t)
        with pytest.raises(PolicyViolation, match="signed 64-bit"):
            s.insert(thread, dsq.id, key)
        assert len(dsq) == 0 and thread.owner is s.policy_object.queues[0]  # unchanged


def scheduler_trace(pure: bool, cpus: int, weights: list[int], steps: list[tuple]) -> list:
    """Every Dispatch of a WFQ scheduler driven by ``steps``, with the ordered
    DSQ of one implementation (WFQ's steal/pull reads the queue fronts through
    its own front heap, not ``balance_victim``: the walk is compared alone)."""
    mp = pytest.MonkeyPatch()
    cls = PureVirtualFinishQueue if pure else accelerated_class()
    import capos_sched.core.scheduler as scheduler_module

    mp.setattr(scheduler_module, "VirtualFinishQueue", cls)
    try:
        s = Scheduler(cpus)
        refs = [
            s.spawn(f"t{i}", 0, w, placement=QueueCpu(i % cpus)).thread
            for i, w in enumerate(weights)
        ]
        assert all(type(q) is cls for q in s.policy_object.queues)
        now, trace = 0, []
        for kind, cpu, arg in steps:
            cpu %= cpus
            now += 1_000_000
            if kind == "weight":
                s.set_weight(refs[arg % len(refs)], 1 + arg % MAX_WEIGHT)
                continue
            if s.cpus[cpu].current is not None:
                if kind == "block":
                    s.block_current(cpu, now, arg)
                else:
                    s.preempt_current(cpu, now, arg)
            d = s.pick_next(cpu, now)
            trace.append(
                None
                if d is None
                else (d.cpu, d.thread.tid, d.budget_ns, d.virtual_finish_ns, d.source)
            )
            if kind == "block":
                for ref in refs:
                    if s.snapshot(ref).state.name == "BLOCKED":
                        s.wake(ref, now)
                        break
        s.check_invariants()
        trace.append([s.snapshot(r).virtual_runtime_ns for r in refs])
        return trace
    finally:
        mp.undo()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 4),
    st.lists(st.integers(1, MAX_WEIGHT), min_size=1, max_size=12),
    st.lists(
        st.tuples(
            st.sampled_from(["preempt", "preempt", "block", "weight"]),
            st.integers(0, 3),
            st.integers(0, 8_000_000),
        ),
        max_size=60,
    ),
)
def test_scheduler_dispatches_match_the_reference(cpus, weights, steps) -> None:
    expected = scheduler_trace(True, cpus, weights, steps)
    assert scheduler_trace(False, cpus, weights, steps) == expected


def test_pure_env_var_selects_the_reference() -> None:
    code = "from capos_sched.core import runqueue as r; print(r.IMPLEMENTATION)"
    env = {k: v for k, v in os.environ.items() if k != "CAPOS_SCHED_PURE"}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    pure = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "CAPOS_SCHED_PURE": "1"},
        capture_output=True,
        text=True,
    )
    assert (default.stdout.strip(), pure.stdout.strip()) == ("c", "python")


@pytest.mark.parametrize("impl", ["python", "c"])
def test_walk_pulls_at_exactly_the_threshold_and_ties_go_to_the_first(impl: str) -> None:
    cls = PureVirtualFinishQueue if impl == "python" else accelerated_class()
    walk = pure_victim if impl == "python" else accel.balance_victim
    queues = [cls(k, k) for k in range(3)]
    for seq, (q, key) in enumerate([(0, 10), (1, 6), (2, 6)], start=1):
        queues[q].push(FakeThread(f"t{seq}"), key, seq)
    assert walk(queues, queues[0], 4) == (10, queues[1])  # 6 <= 10 - 4; tie: the first
    assert walk(queues, queues[0], 5) == (10, None)  # 6 > 10 - 5: no pull
    queues[0].pop()
    assert walk(queues, queues[0], 10**9) == (None, queues[1])  # empty: steal
