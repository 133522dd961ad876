"""EEVDF: earliest eligible virtual deadline first (Linux ``kernel/sched/fair.c``).

One DSQ shared by every CPU, ordered by virtual deadline, and the weighted
sums that give V, the weighted average vruntime of the runnable threads
(queued and running). One queue makes shares fair across CPUs without a
balancer; each CPU takes the earliest eligible deadline from it.
A thread's EEVDF vruntime is the mechanism's ``virtual_runtime_ns`` plus an
offset of its own (``policy_data``), so placement can move it while the
mechanism's accounting stays monotonic. The request of a thread is its class
slice, as in WFQ (interactive slice / 4, batch slice * 4). The rules:

- eligible iff v <= V (compared as ``W * v <= sum(w * v)``, no division);
- virtual deadline = v + request * REF / w, set at every enqueue;
- dispatch: the earliest deadline among eligible threads;
- stopping to sleep: lag = V - v, clamped to about one request (+/- request *
  REF / w), kept for the wake;
- enqueue of a waking thread: v = V - lag * (W + w) / W (the lag it left with
  is preserved once it is back in the average);
- set_weight: lag rescaled by old / new, so V is unchanged.
- A wake kicks an idle CPU; with none idle, it preempts the thread running on
  its CPU when the woken thread is eligible with an earlier deadline.

Why two heaps beside the DSQ (Linux augments its tree instead): the earliest
eligible deadline is found in O(log n) amortized, not by walking the queue
past every ineligible thread (hundreds per pick at 10,000 threads). A queued
thread's v and deadline do not change while it is queued; each insert gets
an entry in ``_later`` (by v, ties by insert order). A pick first promotes
the entries of ``_later`` that became eligible (v <= V) to ``_now`` (by
deadline, ties by insert order: the DSQ's own order), then takes the first
entry of ``_now`` still eligible, sending back any that V left behind (V can
go down). Entries of threads no longer queued here, or re-inserted since,
are dropped when met, and the heaps are compacted when dead entries
dominate.

Left out of Linux's EEVDF (docs/policies.md): RUN_TO_PARITY (a running task
keeps the CPU until it is no longer eligible or its slice is used up), the
PREEMPT_SHORT wake-up rule for short slices, DELAY_DEQUEUE (sleepers with
negative lag stay queued until it decays), the deadline kept across a short
run (here renewed at every enqueue), the cgroup hierarchy, and per-CPU run
queues with load balancing (one shared queue stands for them).
"""

from __future__ import annotations

import heapq
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
    counted: bool = False
    """The sums include this thread (it is queued or running)."""
    entry: int = 0
    """The insert order of its live heap entry (0: none)."""


SHARED = 0
"""The one DSQ, ordered by virtual deadline."""


class EevdfPolicy:
    name = "eevdf"
    builtin = True

    def init(self, ctx: Any) -> None:
        self.request = {c: class_slice_ns(c, ctx.slice_ns) for c in LatencyClass}
        self.queue = ctx.create_dsq(SHARED, ordered=True)
        self.sum_w = 0
        self.sum_wv = 0
        self.last_v = 0
        self.members: set[Any] = set()
        self.running_deadline = [0] * ctx.nr_cpus
        self._later: list[tuple[int, int, Any]] = []
        """(v, insert order, thread): queued, not yet seen eligible."""
        self._now: list[tuple[int, int, Any]] = []
        """(deadline, insert order, thread): queued and eligible when last seen."""
        self._inserts = 0

    # ------------------------------------------------------------- callbacks

    def init_thread(self, ctx: Any, thread: Any) -> None:
        thread.policy_data = _State(thread.weight, thread.virtual_runtime_ns)

    def select_cpu(self, ctx: Any, thread: Any, prev_cpu: int) -> int:
        idle = ctx.pick_idle_cpu(prev_cpu)
        return idle if idle >= 0 else max(prev_cpu, 0)

    def enqueue(self, ctx: Any, thread: Any, flags: int) -> None:
        st = self._state(thread)
        if not st.counted:
            self._place(thread, st, wakeup=bool(flags & ENQ_WAKEUP))
        self._insert(ctx, thread, st)
        if flags & ENQ_PREEMPTED:
            return
        idle = ctx.pick_idle_cpu(thread.last_cpu)
        if idle >= 0:
            ctx.kick(idle)
        elif self.eligible(thread) and st.deadline < self.running_deadline[thread.last_cpu]:
            ctx.kick(thread.last_cpu, preempt=True)

    def dispatch(self, ctx: Any, cpu: int) -> None:
        thread = self._earliest_eligible(ctx)
        if thread is not None:
            ctx.move_to_local(SHARED, cpu, thread)
            return
        ctx.move_to_local(SHARED, cpu)  # V lags a running thread's charge: the earliest

    def running(self, ctx: Any, thread: Any) -> None:
        st = self._state(thread)
        if not st.counted:  # a server straight from the IPC slot
            self._place(thread, st, wakeup=True)
            st.deadline = self._deadline(thread, st)
        self.running_deadline[thread.last_cpu] = st.deadline

    def stopping(self, ctx: Any, thread: Any, runnable: bool) -> None:
        st = self._state(thread)
        self._sync(thread, st)
        if not runnable:
            self._leave(thread, st)

    def exit_thread(self, ctx: Any, thread: Any) -> None:
        if isinstance(thread.policy_data, _State):
            self._leave(thread, thread.policy_data)

    def set_weight(self, ctx: Any, thread: Any, weight: int) -> None:
        st = self._state(thread)
        old = st.weight
        if not st.counted:
            st.vlag = st.vlag * old // weight
            st.weight = weight
            return
        self._sync(thread, st)
        avg = self.avg()
        lag = (avg - self.v(thread)) * old // weight
        self._remove(thread, st)
        st.weight = weight
        st.offset = avg - lag - thread.virtual_runtime_ns
        self._add(thread, st)
        if ctx.queued_on(thread) == SHARED:
            self._insert(ctx, thread, st)

    # -------------------------------------------------------------- the math

    def v(self, thread: Any) -> int:
        """The thread's EEVDF vruntime."""
        return thread.virtual_runtime_ns + thread.policy_data.offset

    def avg(self) -> int:
        """V: the weighted average vruntime (the last one seen when empty)."""
        if self.sum_w:
            self.last_v = self.sum_wv // self.sum_w
        return self.last_v

    def eligible(self, thread: Any) -> bool:
        """v <= V, without the division."""
        return not self.sum_w or self.sum_w * self.v(thread) <= self.sum_wv

    def lag_limit(self, thread: Any) -> int:
        """About one request, in virtual time."""
        return self.request[thread.latency_class] * REF // thread.policy_data.weight

    # ------------------------------------------------------------- internals

    def _state(self, thread: Any) -> _State:
        st = thread.policy_data
        if not isinstance(st, _State):
            st = thread.policy_data = _State(thread.weight, thread.virtual_runtime_ns)
        return st

    def _deadline(self, thread: Any, st: _State) -> int:
        return self.v(thread) + self.request[thread.latency_class] * REF // st.weight

    def _insert(self, ctx: Any, thread: Any, st: _State) -> None:
        st.deadline = self._deadline(thread, st)
        ctx.insert(thread, SHARED, st.deadline, self.request[thread.latency_class])
        self._inserts += 1
        st.entry = self._inserts
        heapq.heappush(self._later, (self.v(thread), st.entry, thread))
        if len(self._later) + len(self._now) > 2 * len(self.queue) + 64:
            self._compact(ctx)

    def _live(self, ctx: Any, order: int, thread: Any) -> bool:
        st = thread.policy_data
        return isinstance(st, _State) and st.entry == order and ctx.queued_on(thread) == SHARED

    def _compact(self, ctx: Any) -> None:
        for heap in (self._later, self._now):
            heap[:] = [e for e in heap if self._live(ctx, e[1], e[2])]
            heapq.heapify(heap)

    def _earliest_eligible(self, ctx: Any) -> Any:
        """The queued thread with the earliest deadline among the eligible ones
        (ties: insert order), or None; see the module docstring."""
        later, now = self._later, self._now
        sum_w, sum_wv = self.sum_w, self.sum_wv
        while later:
            v, order, thread = later[0]
            if not self._live(ctx, order, thread):
                heapq.heappop(later)
            elif sum_w and sum_w * v > sum_wv:
                break  # the lowest v is not eligible: no other is
            else:
                heapq.heappop(later)
                heapq.heappush(now, (thread.policy_data.deadline, order, thread))
        while now:
            _, order, thread = now[0]
            if not self._live(ctx, order, thread):
                heapq.heappop(now)
            elif sum_w and sum_w * self.v(thread) > sum_wv:  # V went down since
                heapq.heappop(now)
                heapq.heappush(later, (self.v(thread), order, thread))
            else:
                heapq.heappop(now)  # it leaves the DSQ now
                return thread
        return None

    def _sync(self, thread: Any, st: _State) -> None:
        """Fold run time charged since last seen into the sum."""
        delta = thread.virtual_runtime_ns - st.seen_vruntime
        if delta and st.counted:
            self.sum_wv += st.weight * delta
        st.seen_vruntime = thread.virtual_runtime_ns

    def _place(self, thread: Any, st: _State, wakeup: bool) -> None:
        """Join at v = V - lag (scaled by (W + w) / W on a wake)."""
        avg, total, lag = self.avg(), self.sum_w, st.vlag
        if wakeup and total:
            lag = lag * (total + st.weight) // total
        st.offset = avg - lag - thread.virtual_runtime_ns
        st.vlag = 0
        self._add(thread, st)

    def _leave(self, thread: Any, st: _State) -> None:
        """Leave the sums, keeping the lag clamped to about one request."""
        if not st.counted:
            return
        self._sync(thread, st)
        limit = self.lag_limit(thread)
        st.vlag = max(-limit, min(limit, self.avg() - self.v(thread)))
        self._remove(thread, st)

    def _add(self, thread: Any, st: _State) -> None:
        st.seen_vruntime = thread.virtual_runtime_ns
        self.sum_w += st.weight
        self.sum_wv += st.weight * self.v(thread)
        self.members.add(thread)
        st.counted = True

    def _remove(self, thread: Any, st: _State) -> None:
        self.sum_w -= st.weight
        self.sum_wv -= st.weight * self.v(thread)
        self.members.discard(thread)
        st.counted = False

    def check_invariants(self, ctx: Any) -> None:
        """The sums are exactly those of the counted threads."""
        for thread in self.members:
            self._sync(thread, thread.policy_data)
        assert self.sum_w == sum(t.policy_data.weight for t in self.members)
        assert self.sum_wv == sum(t.policy_data.weight * self.v(t) for t in self.members)
