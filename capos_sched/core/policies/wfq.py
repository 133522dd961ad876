"""WFQ: Phase D weighted-fair queueing by virtual finish, one page.

Per CPU, one ordered DSQ keyed by virtual finish = vruntime + class slice * REF /
weight (interactive slice / 4, batch slice * 4), computed afresh at every
enqueue; ties go by enqueue order. The mechanism charges vruntime +=
elapsed * REF / weight. The rules, callback by callback:

- select_cpu: where the driver asked (the last CPU), else the least-loaded CPU
  (fewest queued + running; ties: the lowest CPU).
- enqueue: a new thread starts at its CPU's virtual time; any other enqueue
  clamps lag: vruntime >= virtual time - slice (a sleeper banks at most one
  slice; scx_simple's rule). A wake kicks an idle CPU, and an interactive wake
  with an earlier finish than the running thread's preempts it.
- dispatch: steal (this CPU's queue is empty: take the lowest sibling front) or
  pull (a sibling's front is at least a threshold of virtual finish behind
  ours: take it), else run our own front. One thread moves per pick.
- running: the CPU's virtual time = max(itself, min(vruntime of the picked
  thread, vruntime of the new front)): it never decreases.
- set_weight: a queued thread is re-keyed at once (weight or class changed).

Why two side structures (both O(log CPUs) per operation, independent of the
thread count, so a 64-CPU pick does not walk 63 siblings):

- ``_fronts``, a heap of ``front key << bits | cpu`` with lazy repair. Every
  non-empty queue has an entry whose key is at most its true front key: an
  insert that makes a new front pushes one, and anything that raises a front
  (a pop, a re-key, a thread the mechanism removed) leaves a lower bound,
  which is checked against the queue when it reaches the top and replaced by
  the true front. So the first entry that matches its queue is the lowest
  front (ties: the lowest CPU), exactly what a walk over the siblings finds.
- ``_loads``, a tournament tree of ``load << bits | cpu``; the callbacks that
  see a load change (enqueue, dispatch, running, stopping, exit_thread) mark
  the CPU dirty, and a least-loaded placement refreshes the dirty leaves
  before it reads the root.
"""

from __future__ import annotations

import heapq
from typing import Any

from ..constants import REFERENCE_WEIGHT as REF
from ..policy import ENQ_NEW, ENQ_PREEMPTED
from ..thread import LatencyClass, class_slice_ns

INTERACTIVE = LatencyClass.INTERACTIVE


class WfqPolicy:
    name = "wfq"
    builtin = True
    __slots__ = ("__dict__", "_fronts", "queues")  # read at every pick by the C twin (_accel.c)

    def __init__(self, pull_threshold_ns: int | None = None) -> None:
        self.pull_threshold_ns = pull_threshold_ns

    def init(self, ctx: Any) -> None:
        self.slice_ns = ctx.slice_ns
        if self.pull_threshold_ns is None:
            self.pull_threshold_ns = ctx.slice_ns
        self.class_slice = {c: class_slice_ns(c, ctx.slice_ns) for c in LatencyClass}
        self.queues = [ctx.create_dsq(cpu, ordered=True) for cpu in range(ctx.nr_cpus)]
        self.vtime = [0] * ctx.nr_cpus
        self._vtime_checked = [0] * ctx.nr_cpus
        self._bits = max(1, (ctx.nr_cpus - 1).bit_length())
        self._mask = (1 << self._bits) - 1
        self._fronts: list[int] = []
        self._loads = TournamentTree(ctx.nr_cpus)
        self._dirty: set[int] = set(range(ctx.nr_cpus))

    def select_cpu(self, ctx: Any, thread: Any, prev_cpu: int) -> int:
        if prev_cpu >= 0:
            return prev_cpu
        return self._least_loaded(ctx)

    def enqueue(self, ctx: Any, thread: Any, flags: int) -> None:
        cpu = thread.last_cpu
        floor = self.vtime[cpu] if flags & ENQ_NEW else self.vtime[cpu] - self.slice_ns
        if thread.virtual_runtime_ns < floor:
            ctx.raise_vruntime(thread, floor)
        budget = self.class_slice[thread.latency_class]
        finish = thread.virtual_runtime_ns + budget * REF // thread.weight
        self._insert(ctx, thread, cpu, finish, budget)
        if flags & ENQ_PREEMPTED:
            return  # this CPU picks next anyway
        if ctx.is_idle(cpu):
            ctx.kick(cpu)
            return
        if thread.latency_class is INTERACTIVE and finish < ctx.running_virtual_finish(cpu):
            ctx.kick(cpu, preempt=True)
        idle = ctx.pick_idle_cpu()
        if idle >= 0:
            ctx.kick(idle)

    def dispatch(self, ctx: Any, cpu: int) -> None:
        own = self.queues[cpu]
        own_key = own.head_key()
        victim = self._lowest_sibling(cpu)
        if victim is not None and (
            own_key is None or victim[0] <= own_key - self.pull_threshold_ns
        ):
            self._dirty.add(victim[1])
            ctx.move_to_local(victim[1], cpu, source="steal" if own_key is None else "pull")
        elif own_key is not None:
            self._dirty.add(cpu)
            ctx.move_to_local(own.id, cpu)

    def running(self, ctx: Any, thread: Any) -> None:
        cpu = thread.last_cpu
        vruntime = thread.virtual_runtime_ns
        front = self.queues[cpu].front()
        if front is not None and front.virtual_runtime_ns < vruntime:
            vruntime = front.virtual_runtime_ns
        if vruntime > self.vtime[cpu]:
            self.vtime[cpu] = vruntime
        self._dirty.add(cpu)

    def stopping(self, ctx: Any, thread: Any, runnable: bool) -> None:
        self._dirty.add(thread.last_cpu)

    def exit_thread(self, ctx: Any, thread: Any) -> None:
        if thread.last_cpu is not None:
            self._dirty.add(thread.last_cpu)

    def set_weight(self, ctx: Any, thread: Any, weight: int) -> None:
        dsq = ctx.queued_on(thread)
        if dsq is not None and 0 <= dsq < ctx.nr_cpus:
            budget = self.class_slice[thread.latency_class]
            finish = thread.virtual_runtime_ns + budget * REF // weight
            self._insert(ctx, thread, dsq, finish, budget)

    # ------------------------------------------------ side structures (see top)

    def _insert(self, ctx: Any, thread: Any, cpu: int, finish: int, budget: int) -> None:
        queue = self.queues[cpu]
        front = queue.head_key()
        ctx.insert(thread, cpu, finish, budget)
        self._dirty.add(cpu)
        if front is None or finish < front:  # a new front: the one case that lowers it
            heapq.heappush(self._fronts, finish << self._bits | cpu)
            if len(self._fronts) > 4 * len(self.queues) + 16:
                self._rebuild_fronts()

    def _rebuild_fronts(self) -> None:
        bits = self._bits
        self._fronts = [
            key << bits | cpu
            for cpu, queue in enumerate(self.queues)
            if (key := queue.head_key()) is not None
        ]
        heapq.heapify(self._fronts)

    def _lowest_sibling(self, cpu: int) -> tuple[int, int] | None:
        """(front key, CPU) of the non-empty queue other than ``cpu``'s with the
        lowest front (ties: the lowest CPU), or None; repairs stale entries."""
        fronts, queues, bits, mask = self._fronts, self.queues, self._bits, self._mask
        own: list[int] = []
        found = None
        while fronts:
            entry = fronts[0]
            k = entry & mask
            key = entry >> bits
            true_key = queues[k].head_key()
            if true_key != key:  # a lower bound left by a pop or a removal
                if true_key is None:
                    heapq.heappop(fronts)
                else:
                    heapq.heapreplace(fronts, true_key << bits | k)
            elif k == cpu:
                own.append(heapq.heappop(fronts))
            else:
                found = key, k
                break
        for entry in own:
            heapq.heappush(fronts, entry)
        return found

    def _least_loaded(self, ctx: Any) -> int:
        loads, queues, bits = self._loads, self.queues, self._bits
        for k in self._dirty:
            loads.set(k, (len(queues[k]) + (not ctx.is_idle(k))) << bits | k)
        self._dirty.clear()
        return loads.min() & self._mask

    def check_invariants(self, ctx: Any) -> None:
        """The documented rule checked: no CPU's virtual time ever decreases."""
        for cpu, (now, before) in enumerate(zip(self.vtime, self._vtime_checked, strict=True)):
            assert now >= before, f"CPU {cpu} virtual time decreased: {before} -> {now}"
        self._vtime_checked = list(self.vtime)
        bits, mask = self._bits, self._mask
        for cpu, queue in enumerate(self.queues):
            key = queue.head_key()
            if key is not None:
                bounds = [e >> bits for e in self._fronts if e & mask == cpu]
                assert bounds and min(bounds) <= key, f"CPU {cpu}: no front entry <= {key}"
            if cpu not in self._dirty:
                load = len(queue) + (not ctx.is_idle(cpu))
                leaf = self._loads._tree[self._loads._base + cpu]
                assert leaf == load << bits | cpu, f"CPU {cpu}: load leaf {leaf} != {load}"


class TournamentTree:
    """The minimum of ``size`` integer leaves, kept in a complete binary tree:
    ``set`` is O(log size), ``min`` is O(1).

    Invariant: every inner node holds the minimum of its two children; leaves
    beyond ``size`` hold a value larger than any set one.
    """

    __slots__ = ("_base", "_tree")

    def __init__(self, size: int) -> None:
        base = 1
        while base < size:
            base *= 2
        self._base = base
        self._tree: list[float | int] = [float("inf")] * (2 * base)

    def set(self, leaf: int, value: int) -> None:
        tree = self._tree
        i = self._base + leaf
        if tree[i] == value:
            return
        tree[i] = value
        i >>= 1
        while i:
            left, right = tree[2 * i], tree[2 * i + 1]
            best = left if left < right else right
            if tree[i] == best:
                break  # nothing above can change
            tree[i] = best
            i >>= 1

    def min(self) -> int:
        return self._tree[1]  # type: ignore[return-value]
