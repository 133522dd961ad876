"""The C accelerator of the ordered DSQ (core/_accel.c) against the pure-Python
reference (runqueue.PureVirtualFinishQueue): the same
operation sequences give the same results, queue by queue and through the whole
scheduler. The C cases skip where the extension was not built (no compiler); the rest of
the suite runs against whichever implementation is selected (``make test`` runs
tests/core both ways, the second time with CAPOS_SCHED_PURE=1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import hypothesis.strategies as st
import pytest
from hypothesis import example, given, settings

from capos_sched.core import MAX_WEIGHT, QueueCpu, Scheduler, runqueue
from capos_sched.core.runqueue import KEY_MAX, KEY_MIN, PureVirtualFinishQueue

accel = runqueue._accel
needs_accel = pytest.mark.skipif(accel is None, reason="C accelerator not built (no compiler)")
IMPLS = [pytest.param("python"), pytest.param("c", marks=needs_accel)]


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


# Mostly small keys, so ties (broken by enqueue order) are common.
keys = st.one_of(
    st.integers(0, 3),
    st.integers(-3, 3),
    st.integers(0, 10**12),
    st.sampled_from([KEY_MIN, KEY_MAX]),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.integers(0, 2), st.integers(0, 7), keys),
        st.tuples(st.just("pop"), st.integers(0, 2)),
        st.tuples(st.just("discard"), st.integers(0, 2), st.integers(0, 7)),
        st.tuples(st.just("peek"), st.integers(0, 2)),
    ),
    max_size=80,
)


def name(thread: FakeThread | None) -> str | None:
    return None if thread is None else thread.name


def run_queue_ops(cls: type, sequence) -> list:  # type: ignore[no-untyped-def]
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
        else:  # peek
            head = queue.head()
            head = head if head is None else (head[0], head[1].name)
            seen.append((head, queue.head_key(), name(queue.front()), len(queue)))
        seen.append([[t.name for t in x] for x in queues])  # the lazy iterator, in key order
        heaps = [len(x._heap) for x in queues]  # the same compactions, at the same points
        assert all(size <= 2 * len(x) + 1 for size, x in zip(heaps, queues, strict=True))
        seen.append(heaps)
    return seen


@needs_accel
@settings(max_examples=300, deadline=None)
@given(ops)
# found by hypothesis: a pop that leaves the dead entries of discards behind
# broke the bound heap <= 2 * live + 1 in both (pop compacts now)
@example([("push", 1, 0, 0), ("push", 1, 1, 0), ("push", 1, 1, 0), ("push", 0, 1, 0), ("pop", 1)])
def test_queue_operations_match_the_reference(sequence) -> None:
    expected = run_queue_ops(PureVirtualFinishQueue, sequence)
    assert run_queue_ops(accelerated_class(), sequence) == expected


@pytest.mark.parametrize("impl", IMPLS)
def test_heap_stays_bounded_and_ordered_under_churn(impl: str) -> None:
    """Re-keying the same threads 200 times keeps the heap compacted, in both."""
    for cls in [PureVirtualFinishQueue if impl == "python" else accelerated_class()]:
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


@needs_accel
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
    its own front heap: ``head_key`` and ``front``)."""
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


@needs_accel
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


@needs_accel
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


@pytest.mark.parametrize(
    ("pure", "implementation"), [("1", "python"), pytest.param("", "c", marks=needs_accel)]
)
def test_bench_dispatch_reports_the_implementation_that_ran(pure: str, implementation: str) -> None:
    argv = [sys.executable, "-m", "bench.dispatch", "--threads", "40", "--cycles", "90", "--json"]
    env = {**os.environ, "CAPOS_SCHED_PURE": pure}
    report = json.loads(subprocess.run(argv, env=env, capture_output=True, check=True).stdout)
    assert report["implementation"] == implementation
    assert ("reference_ns_per_dispatch" in report) == (implementation == "c")
    assert 0 < report["bytes_per_thread"] <= 1024 and report["memory_goal_met"]
