"""EEVDF: earliest eligible virtual deadline first (Linux ``kernel/sched/fair.c``).

Per CPU, one DSQ ordered by virtual deadline, and the weighted sums that give
V, the weighted average vruntime of the CPU's threads (queued and running).
A thread's EEVDF vruntime is the mechanism's ``virtual_runtime_ns`` plus an
offset of its own (``policy_data``), so placement can move it while the
mechanism's accounting stays monotonic. The request of a thread is its class
slice, as in WFQ (interactive slice / 4, batch slice * 4). The rules:

- eligible iff v <= V (compared as ``W * v <= sum(w * v)``, no division);
- virtual deadline = v + request * REF / w, set at every enqueue;
- dispatch: the earliest deadline among eligible threads (an idle CPU steals
  the first eligible thread of the busiest sibling);
- stopping to sleep: lag = V - v, clamped to about one request (+/- request *
  REF / w), kept for the wake;
- enqueue of a waking thread: v = V - lag * (W + w) / W (the lag it left with
  is preserved once it is back in the average);
- set_weight: lag rescaled by old / new, so V is unchanged.
- A wake preempts the running thread when the woken thread is eligible with an
  earlier deadline.

Left out of Linux's EEVDF (docs/policies.md): RUN_TO_PARITY (a running task
keeps the CPU until it is no longer eligible or its slice is used up), the
PREEMPT_SHORT wake-up rule for short slices, DELAY_DEQUEUE (sleepers with
negative lag stay queued until it decays), the deadline kept across a short
run (here renewed at every enqueue), cgroup hierarchy and load balancing
beyond the idle steal.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..constants import REFERENCE_WEIGHT as REF
from ..policy import ENQ_PREEMPTED, ENQ_WAKEUP
from ..thread import LatencyClass, class_slice_ns


@attrs.define(slots=True)
class _State:
    """EEVDF per-thread state: ``v = virtual_runtime_ns + offset``."""

    weight: int
    seen_vruntime: int
    offset: int = 0
    deadline: int = 0
    vlag: int = 0
    cpu: int | None = None
    """The CPU whose sums include this thread (queued or running there)."""


class EevdfPolicy:
    name = "eevdf"
    builtin = True

    def init(self, ctx: Any) -> None:
        self.request = {c: class_slice_ns(c, ctx.slice_ns) for c in LatencyClass}
        self.queues = [ctx.create_dsq(cpu, ordered=True) for cpu in range(ctx.nr_cpus)]
        self.sum_w = [0] * ctx.nr_cpus
        self.sum_wv = [0] * ctx.nr_cpus
        self.last_v = [0] * ctx.nr_cpus
        self.members: list[set[Any]] = [set() for _ in range(ctx.nr_cpus)]
        self.running_deadline = [0] * ctx.nr_cpus

    # ------------------------------------------------------------- callbacks

    def init_thread(self, ctx: Any, thread: Any) -> None:
        thread.policy_data = _State(thread.weight, thread.virtual_runtime_ns)

    def select_cpu(self, ctx: Any, thread: Any, prev_cpu: int) -> int:
        if prev_cpu >= 0:
            return prev_cpu
        load = [len(q) + (not ctx.is_idle(k)) for k, q in enumerate(self.queues)]
        return min(range(ctx.nr_cpus), key=lambda k: (load[k], k))

    def enqueue(self, ctx: Any, thread: Any, flags: int) -> None:
        st, cpu = self._state(thread), thread.last_cpu
        if st.cpu != cpu:
            self._leave(thread, st)
            self._place(thread, st, cpu, wakeup=bool(flags & ENQ_WAKEUP))
        st.deadline = self.v(thread) + self.request[thread.latency_class] * REF // st.weight
        ctx.insert(thread, cpu, st.deadline, self.request[thread.latency_class])
        if flags & ENQ_PREEMPTED:
            return
        if ctx.is_idle(cpu):
            ctx.kick(cpu)
            return
        if self.eligible(thread, cpu) and st.deadline < self.running_deadline[cpu]:
            ctx.kick(cpu, preempt=True)
        idle = ctx.pick_idle_cpu()
        if idle >= 0:
            ctx.kick(idle)

    def dispatch(self, ctx: Any, cpu: int) -> None:
        source = "queue"
        victim = cpu
        if not len(self.queues[cpu]):
            busiest = max(self.queues, key=len)
            if not len(busiest):
                return
            victim, source = busiest.id, "steal"
        chosen = None
        for thread in ctx.iter_dsq(victim):
            if self.eligible(thread, victim):
                chosen = thread
                break
        if chosen is None:  # only when V lags a running thread's charge: take the earliest
            ctx.move_to_local(victim, cpu, source=source)
        else:
            ctx.move_to_local(victim, cpu, chosen, source=source)

    def running(self, ctx: Any, thread: Any) -> None:
        st, cpu = self._state(thread), thread.last_cpu
        if st.cpu != cpu:  # stolen, or a server straight from the IPC slot
            self._leave(thread, st)
            self._place(thread, st, cpu, wakeup=True)
            st.deadline = self.v(thread) + self.request[thread.latency_class] * REF // st.weight
        self.running_deadline[cpu] = st.deadline

    def stopping(self, ctx: Any, thread: Any, runnable: bool) -> None:
        st = self._state(thread)
        self._sync(thread, st)
        if not runnable:
            self._leave(thread, st)

    def exit_thread(self, ctx: Any, thread: Any) -> None:
        st = thread.policy_data
        if isinstance(st, _State):
            self._leave(thread, st)

    def set_weight(self, ctx: Any, thread: Any, weight: int) -> None:
        st = self._state(thread)
        old = st.weight
        if st.cpu is None:
            st.vlag = st.vlag * old // weight
            st.weight = weight
            return
        cpu = st.cpu
        self._sync(thread, st)
        avg = self.avg(cpu)
        lag = (avg - self.v(thread)) * old // weight
        self._remove(thread, st)
        st.weight = weight
        st.offset = avg - lag - thread.virtual_runtime_ns
        self._add(thread, st, cpu)
        if ctx.queued_on(thread) == cpu:
            st.deadline = self.v(thread) + self.request[thread.latency_class] * REF // weight
            ctx.insert(thread, cpu, st.deadline, self.request[thread.latency_class])

    # -------------------------------------------------------------- the math

    def v(self, thread: Any) -> int:
        """The thread's EEVDF vruntime."""
        return thread.virtual_runtime_ns + thread.policy_data.offset

    def avg(self, cpu: int) -> int:
        """V: the weighted average vruntime of ``cpu``'s threads (the last one
        seen when it has none)."""
        if self.sum_w[cpu]:
            self.last_v[cpu] = self.sum_wv[cpu] // self.sum_w[cpu]
        return self.last_v[cpu]

    def eligible(self, thread: Any, cpu: int) -> bool:
        """v <= V, without the division; a CPU with no weight: everyone is."""
        if not self.sum_w[cpu]:
            return True
        return self.sum_w[cpu] * self.v(thread) <= self.sum_wv[cpu]

    def lag_limit(self, thread: Any) -> int:
        """About one request, in virtual time."""
        return self.request[thread.latency_class] * REF // thread.policy_data.weight

    # ------------------------------------------------------------- internals

    def _state(self, thread: Any) -> _State:
        st = thread.policy_data
        if not isinstance(st, _State):
            st = thread.policy_data = _State(thread.weight, thread.virtual_runtime_ns)
        return st

    def _sync(self, thread: Any, st: _State) -> None:
        """Fold run time charged since last seen into the CPU's sum."""
        delta = thread.virtual_runtime_ns - st.seen_vruntime
        if delta and st.cpu is not None:
            self.sum_wv[st.cpu] += st.weight * delta
        st.seen_vruntime = thread.virtual_runtime_ns

    def _place(self, thread: Any, st: _State, cpu: int, wakeup: bool) -> None:
        """Join ``cpu`` at v = V - lag (scaled by (W + w) / W on a wake)."""
        avg, total = self.avg(cpu), self.sum_w[cpu]
        lag = st.vlag
        if wakeup and total:
            lag = lag * (total + st.weight) // total
        st.offset = avg - lag - thread.virtual_runtime_ns
        st.vlag = 0
        self._add(thread, st, cpu)

    def _leave(self, thread: Any, st: _State) -> None:
        """Leave the CPU's sums, keeping the lag clamped to about one request."""
        if st.cpu is None:
            return
        self._sync(thread, st)
        limit = self.lag_limit(thread)
        st.vlag = max(-limit, min(limit, self.avg(st.cpu) - self.v(thread)))
        self._remove(thread, st)

    def _add(self, thread: Any, st: _State, cpu: int) -> None:
        st.seen_vruntime = thread.virtual_runtime_ns
        self.sum_w[cpu] += st.weight
        self.sum_wv[cpu] += st.weight * self.v(thread)
        self.members[cpu].add(thread)
        st.cpu = cpu

    def _remove(self, thread: Any, st: _State) -> None:
        cpu = st.cpu
        assert cpu is not None
        self.sum_w[cpu] -= st.weight
        self.sum_wv[cpu] -= st.weight * self.v(thread)
        self.members[cpu].discard(thread)
        st.cpu = None

    def check_invariants(self, ctx: Any) -> None:
        """The sums are exactly those of the CPU's members."""
        for cpu, members in enumerate(self.members):
            for thread in members:
                self._sync(thread, thread.policy_data)
            assert self.sum_w[cpu] == sum(t.policy_data.weight for t in members), cpu
            assert self.sum_wv[cpu] == sum(t.policy_data.weight * self.v(t) for t in members)
