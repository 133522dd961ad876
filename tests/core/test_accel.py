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

from capos_sched.core import (
    MAX_WEIGHT,
    SLICE_NS,
    LastCpu,
    LeastLoaded,
    QueueCpu,
    Scheduler,
    runqueue,
)
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
    assert report["cycle"] == implementation  # the WFQ cycle in C with the C queues
    if implementation == "c":  # the loop is the common case: at most the first picks hand back
        assert report["cycle_calls"] > 180 and report["cycle_fallbacks"] <= 4
    assert ("reference_ns_per_dispatch" in report) == (implementation == "c")
    assert 0 < report["bytes_per_thread"] <= 1024 and report["memory_goal_met"]


# ------------------------------------------------ the dispatch cycle (_accel.WfqCycle)


def owner_of(owner) -> tuple | None:  # type: ignore[no-untyped-def]
    if owner is None:
        return None
    return (owner.kind, getattr(owner, "id", None), owner.cpu)


def state_digest(s: Scheduler) -> tuple:
    """Everything the cycle writes, of the scheduler, its threads, its CPUs and
    the WFQ policy's side structures (heap slots in array order included)."""
    threads = [
        (
            t.tid,
            t.generation,
            t.state,
            t.weight,
            t.latency_class,
            t.runtime_ns,
            t.virtual_runtime_ns,
            t._vruntime_remainder,
            t.last_started_ns,
            t.last_cpu,
            t.runnable_since_ns,
            t.context_switches,
            t.preemptions,
            t.voluntary_blocks,
            t.migrations,
            owner_of(t.owner),
            t.queue_seq,
            t.slice_ns,
            t.dispatch_source,
            t.wait_mark_ns,
        )
        for t in s.threads()
    ]
    cpus = [
        (c.current and c.current.tid, c.last_tid, c.running_finish, c.idle, c.ipc_slot)
        for c in s.cpus
    ]
    counters = (
        s.now_ns,
        s._charged_ns,
        s._idle_acc_ns,
        s._nr_idle,
        s._idle_changed_ns,
        s._nr_busy,
        s._enqueue_seq,
        s._dispatching,
        s._handoff,
        list(s._kicks),
        list(s._preempts),
        s.policy_name,
        [(e.kind, e.callback, e.message) for e in s.exits],
    )
    policy = s.policy_object
    side: tuple = ()
    if s.policy_name == "wfq":
        side = (
            list(policy.vtime),
            list(policy._fronts),
            sorted(policy._dirty),
            [list(q._heap) for q in policy.queues],  # a copy: the reference's is live
            [sorted(q._entries) for q in policy.queues],
        )
    return threads, cpus, counters, side


# Round run times and weights make exact ties (equal finishes, a pull exactly
# at the threshold) common; the odd ones make everything else.
CYCLE_ARGS = st.one_of(
    st.sampled_from([0, 1, SLICE_NS // 4, SLICE_NS, 2 * SLICE_NS]), st.integers(0, 12_000_000)
)
CYCLE_WEIGHTS = st.lists(
    st.one_of(st.sampled_from([1, 512, 1024, 2048]), st.integers(1, MAX_WEIGHT)),
    min_size=1,
    max_size=10,
)
CYCLE_STEPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["expire"] * 8
            + ["stop", "block", "wake", "wake", "weight", "class", "kill", "spawn", "pick"]
            + ["call", "serve", "switch", "huge", "kick", "noslice"]
        ),
        st.integers(0, 3),
        CYCLE_ARGS,
    ),
    max_size=80,
)


def cycle_trace(fast: bool, cpus: int, weights: list[int], steps: list[tuple]) -> list:
    """Every result and the whole state after every step of a WFQ scheduler
    driven by ``steps``: ``fast``, the C cycle on the C queues; else the
    pure-Python reference (its queues and its cycle)."""
    import capos_sched.core.scheduler as scheduler_module

    mp = pytest.MonkeyPatch()
    if fast:
        mp.setattr(scheduler_module, "VirtualFinishQueue", accelerated_class())
        mp.setattr(scheduler_module, "FastCycle", accel.WfqCycle)
    else:
        mp.setattr(scheduler_module, "VirtualFinishQueue", PureVirtualFinishQueue)
        mp.setattr(scheduler_module, "FastCycle", None)
    try:
        s = Scheduler(cpus)
        assert (s._fast_cycle is not None) == fast
        refs = [
            s.spawn(f"t{i}", 0, w, placement=QueueCpu(i % cpus)).thread
            for i, w in enumerate(weights)
        ]
        now, trace = 0, []
        for kind, cpu, arg in steps:
            cpu %= cpus
            now += 1_000_000
            running = s.cpus[cpu].current is not None
            target = refs[arg % len(refs)]
            live = s.is_live(target)
            result: object = None
            if kind == "expire" and not running:
                result = s.pick_next(cpu, now)  # an idle CPU's turn: it picks
            elif kind in ("expire", "block", "call", "serve") and running:
                if kind == "expire":
                    result = s.preempt_current(cpu, now, arg)
                elif kind == "block":
                    result = s.block_current(cpu, now, arg)
                else:
                    how = "call" if kind == "call" else "wait"
                    result = s.stop(cpu, now, arg, how, "ep")
                result = (result, s.pick_next(cpu, now))
            elif kind == "stop" and running:
                result = (s.stop(cpu, now, arg, "expired"), s.pick_next(cpu, now))
            elif kind == "pick" and not running:
                result = s.pick_next(cpu, now)
            elif kind == "wake" and live and s.snapshot(target).state.name == "BLOCKED":
                placement = [LastCpu(), QueueCpu(cpu), LeastLoaded()][arg % 3]
                result = s.wake(target, now, placement)
            elif kind == "weight" and live:
                s.set_weight(target, 1 + arg % MAX_WEIGHT)
            elif kind == "class" and live:
                s.set_latency_class(target, arg % 4)
            elif kind == "kill" and live:
                result = s.kill(target, now)
            elif kind == "spawn":
                refs.append(s.spawn(f"n{len(refs)}", now, 1 + arg % MAX_WEIGHT).thread)
            elif kind == "switch":
                result = s.set_policy("fifo" if s.policy_name == "wfq" else "wfq", now)
            elif kind == "huge" and live:
                # Virtual runtimes near and beyond 64 bits: the C cycle must
                # hand these to the reference (whose keys the scheduler refuses).
                s._threads[target.tid].virtual_runtime_ns += (1 << 62) + arg * (1 << 40)
            elif kind == "noslice" and live:
                # A queued thread without a budget of its own (as after an IPC
                # slot): its pick computes its class slice.
                s._threads[target.tid].slice_ns = None
            elif kind == "kick":
                s.kick(cpu)  # leaves a kick for pick_next's fresh-effects rule
            trace.append((kind, result, state_digest(s)))
        s.check_invariants()
        return trace
    finally:
        mp.undo()


@needs_accel
@settings(max_examples=150, deadline=None)
@given(st.integers(1, 4), CYCLE_WEIGHTS, CYCLE_STEPS)
# CPU 0 goes idle, gets two threads, and a least-loaded spawn on CPU 1 cleans
# its load mark; its pick (in C: CPU 1's pick took the spawn's kick) leaves idle
# and marks its load dirty again (running)
@example(
    2,
    [1024],
    [("expire", 1, 0), ("expire", 0, 0)]
    + [("spawn", 0, 1023)] * 3
    + [("expire", 1, 0), ("expire", 0, 0)],
)
# an interactive thread with no budget of its own is picked: its class slice
@example(1, [1024] * 3, [("expire", 0, 0), ("class", 0, 4), ("noslice", 0, 4), ("expire", 0, 0)])
# a pull exactly at the threshold (finish 4 ms behind ours)
@example(2, [1024, 1024], [("expire", 0, 0), ("expire", 0, SLICE_NS)])
# the lag clamp at a preempt: a thread pulled from a CPU whose virtual time is
# 24 ms behind runs 0 ns, and is re-queued one slice behind the virtual time
@example(
    2,
    [1024],
    [
        ("expire", 0, 0),
        ("expire", 0, 3 * SLICE_NS),
        ("expire", 0, 3 * SLICE_NS),
        ("spawn", 1, 1023),
        ("expire", 0, 0),
        ("expire", 0, 0),
    ],
)
def test_the_c_cycle_matches_the_reference_step_by_step(cpus, weights, steps) -> None:
    expected = cycle_trace(False, cpus, weights, steps)
    assert cycle_trace(True, cpus, weights, steps) == expected


@needs_accel
def test_the_c_cycle_runs_the_common_case_and_hands_the_rest_back() -> None:
    """The differential test compares something: the C cycle is bound for WFQ,
    takes every call of a plain preempt/pick loop itself, and hands a kill
    pending to the reference (and stays out for another policy)."""
    import capos_sched.core.scheduler as scheduler_module

    mp = pytest.MonkeyPatch()
    mp.setattr(scheduler_module, "VirtualFinishQueue", accelerated_class())
    mp.setattr(scheduler_module, "FastCycle", accel.WfqCycle)
    try:
        s = Scheduler(2)
        refs = [
            s.spawn(f"t{i}", 0, 100 * (i + 1), placement=QueueCpu(i % 2)).thread for i in range(6)
        ]
        fast = s._fast_cycle
        assert s.pick_next.__self__ is fast and s.preempt_current.__self__ is fast
        s.pick_next(0, 0)  # the spawns left kicks to clear: the reference's path
        assert (fast.calls, fast.fallbacks) == (1, 1)
        s.pick_next(1, 0)
        for k in range(1, 41):
            s.preempt_current(k % 2, k * 1000, 1000)
            s.pick_next(k % 2, k * 1000)
        assert (fast.calls, fast.fallbacks) == (82, 1)
        running = s.running_thread(0)
        assert running is not None and s.kill(running, 50_000) == 0
        s.preempt_current(0, 50_000, 1000)  # the kill: the reference's path
        assert fast.fallbacks == 2 and not s.is_live(running)
        assert sum(s.is_live(r) for r in refs) == 5
        s.set_policy("fifo")
        assert s._fast_cycle is None and "pick_next" not in s.__dict__
        s.set_policy("wfq")
        assert s._fast_cycle is not None and s._fast_cycle is not fast
    finally:
        mp.undo()
