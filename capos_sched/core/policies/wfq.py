"""WFQ: Phase D weighted-fair queueing by virtual finish, one page.

Per CPU, one ordered DSQ keyed by virtual finish = vruntime + class slice * REF /
weight (interactive slice / 4, batch slice * 4), computed afresh at every
enqueue; ties go by enqueue order. The mechanism charges vruntime +=
elapsed * REF / weight. The rules, callback by callback:

- select_cpu: where the driver asked (the last CPU), else the least-loaded CPU.
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
"""

from __future__ import annotations

from typing import Any

from ..constants import REFERENCE_WEIGHT as REF
from ..policy import ENQ_NEW, ENQ_PREEMPTED
from ..runqueue import balance_victim
from ..thread import LatencyClass, class_slice_ns

INTERACTIVE = LatencyClass.INTERACTIVE


class WfqPolicy:
    name = "wfq"
    builtin = True

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

    def select_cpu(self, ctx: Any, thread: Any, prev_cpu: int) -> int:
        if prev_cpu >= 0:
            return prev_cpu
        load = [len(q) + (not ctx.is_idle(k)) for k, q in enumerate(self.queues)]
        return min(range(ctx.nr_cpus), key=lambda k: (load[k], k))

    def enqueue(self, ctx: Any, thread: Any, flags: int) -> None:
        cpu = thread.last_cpu
        floor = self.vtime[cpu] if flags & ENQ_NEW else self.vtime[cpu] - self.slice_ns
        if thread.virtual_runtime_ns < floor:
            ctx.raise_vruntime(thread, floor)
        budget = self.class_slice[thread.latency_class]
        finish = thread.virtual_runtime_ns + budget * REF // thread.weight
        ctx.insert(thread, cpu, finish, budget)
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
        own_key, victim = balance_victim(self.queues, own, self.pull_threshold_ns)
        if victim is not None:
            ctx.move_to_local(victim.id, cpu, source="steal" if own_key is None else "pull")
        elif own_key is not None:
            ctx.move_to_local(own.id, cpu)

    def running(self, ctx: Any, thread: Any) -> None:
        cpu = thread.last_cpu
        vruntime = thread.virtual_runtime_ns
        front = self.queues[cpu].front()
        if front is not None and front.virtual_runtime_ns < vruntime:
            vruntime = front.virtual_runtime_ns
        if vruntime > self.vtime[cpu]:
            self.vtime[cpu] = vruntime

    def set_weight(self, ctx: Any, thread: Any, weight: int) -> None:
        dsq = ctx.queued_on(thread)
        if dsq is not None and 0 <= dsq < ctx.nr_cpus:
            budget = self.class_slice[thread.latency_class]
            finish = thread.virtual_runtime_ns + budget * REF // weight
            ctx.insert(thread, dsq, finish, budget)

    def check_invariants(self, ctx: Any) -> None:
        """The documented rule checked: no CPU's virtual time ever decreases."""
        for cpu, (now, before) in enumerate(zip(self.vtime, self._vtime_checked, strict=True)):
            assert now >= before, f"CPU {cpu} virtual time decreased: {before} -> {now}"
        self._vtime_checked = list(self.vtime)
