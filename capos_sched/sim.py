"""A deterministic simulator: the core driven by modelled workloads on virtual time.

Nothing here reads a clock or does I/O. An event heap orders CPU stops and
timer expiries by virtual time (ties by insertion order); a seeded
``random.Random`` adds optional jitter to run lengths, so a run is fast and
exactly reproducible from ``(threads, cpus, policy, seed)``.

Cost per event: the heap holds a stop per CPU, pending kicks and operator
calls, and only the *first* timer of each sleep period. A timer is set at
``now + period`` and ``now`` never goes back, so the timers of one period
expire in the order they were set: each period keeps a FIFO queue, and its
head stands for it in the heap (the order of events is the heap's own,
``(time, seq)``, unchanged). The heap's size, and so the cost of an event,
follows the CPU count and the number of distinct periods, not the threads.

Workload models (``capos_sched.workload``):
- Spin: computes for whole budgets (until ``total_ns`` if finite);
- Hash: computes ``blocks * block_size * rounds * HASH_NS_PER_BYTE`` ns;
- Sleeper: ``burst_ns`` then a timer of ``period_ns``;
- IpcClient: ``burst_ns`` then a call on its endpoint, blocked until the reply;
- IpcServer: waits on its endpoint, ``service_ns`` per call, then reply-and-wait.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from capos_sched.core import (
    SLICE_NS,
    CallbackGuard,
    Effects,
    LastCpu,
    LatencyClass,
    Policy,
    Scheduler,
    ThreadRef,
    ThreadState,
    WakeReason,
)
from capos_sched.drive import scheduler_rows, step, thread_row
from capos_sched.runtime.stats import Samples
from capos_sched.workload import Program, Stop, Workload, is_finite

Progress = Callable[[int, int, int], None]
"""``progress(now_ns, end_ns, events)``: how far a run is (see ``Simulator.run``)."""
PROGRESS_EVERY = 8192
"""Events between two progress calls: rare enough to cost nothing per event."""
_LAST_CPU = LastCpu()
"""The placement hint of every timer wake (one value, not one per wake)."""
_EXPIRED, _SLEEP, _CALL, _FINISHED = Stop.EXPIRED, Stop.SLEEP, Stop.CALL, Stop.FINISHED
_BLOCKED = ThreadState.BLOCKED
_heappush = heapq.heappush


@attrs.define
class SimThread:
    name: str
    ref: ThreadRef
    program: Program
    finite: bool
    finished_ns: int | None = None
    woke_ns: int | None = None
    wake_latencies: Samples = attrs.Factory(Samples)
    call_started_ns: int | None = None
    """Set by a call, cleared when the client next runs (the round trip ends
    when the client runs again, as in the runtime, not at the reply)."""
    round_trips: Samples = attrs.Factory(Samples)
    cpu_runtime_ns: dict[int, int] = attrs.Factory(dict)
    """Run time per CPU, as the simulator ran it (``cpu_runtime_ns`` in the
    report), but for the run ``last_run_ns`` not yet added (``runtime_by_cpu``)."""
    last_run_cpu: int | None = None
    last_run_ns: int = 0
    """Run time on ``last_run_cpu`` since the thread last ran elsewhere: a thread
    mostly stays on its CPU, so a segment adds to an int, not to the dict."""

    def runtime_by_cpu(self) -> dict[int, int]:
        """Run time per CPU, complete (``cpu_runtime_ns`` plus the pending run)."""
        if self.last_run_cpu is not None:
            cpu = self.last_run_cpu
            self.cpu_runtime_ns[cpu] = self.cpu_runtime_ns.get(cpu, 0) + self.last_run_ns
            self.last_run_cpu, self.last_run_ns = None, 0
        return self.cpu_runtime_ns


class Simulator:
    """Run modelled threads on the core with a virtual clock."""

    def __init__(
        self,
        cpus: int,
        policy: Policy | str | Any = Policy.WFQ,
        slice_ns: int = SLICE_NS,
        seed: int = 0,
        jitter: float = 0.0,
        guard: CallbackGuard | None = None,
        watchdog_ns: int | None = None,
    ) -> None:
        self.core = Scheduler(cpus, policy, slice_ns, guard=guard)
        self.watchdog_ns = watchdog_ns
        """Stall threshold: a judged wait longer than this ejects the policy
        (checked every quarter of it; None: no watchdog)."""
        self._calls: list[Callable[[], None]] = []
        self._initial_policy = self.core.policy_name
        self.now_ns = 0
        self._rng = random.Random(seed)
        self._random = self._rng.random
        self._jitter = jitter
        self._jitter_low, self._jitter_span = -jitter, jitter - -jitter
        """``random.uniform(-jitter, jitter)`` is ``low + span * random()``, spelled
        out below (the same float, a call less per dispatch)."""
        self._events: list[tuple[int, int, str, int]] = []
        self._seq = 0
        self._timers: dict[int, deque[tuple[int, int, int]]] = {}
        """period -> the pending timers ``(at, seq, tid)`` of that period, in
        expiry order; the first stands in the heap as ``(at, seq, "timers", period)``."""
        self._threads: dict[int, SimThread] = {}
        self._running: list[tuple[SimThread, int, Stop] | None] = [None] * cpus
        """cpu -> what it runs: (thread, planned run length, planned stop)."""
        self._stop_seq: list[int] = [0] * cpus
        """cpu -> seq of its one live stop event; older stop events are stale."""
        self._idle: set[int] = set(range(cpus))
        self.events = 0
        """Events taken off the event heap so far (stale stops included)."""
        self._finite = 0
        self._finite_left = 0
        """Finite threads added / not finished yet: the run's end test is O(1)."""
        self._rotation_pending = False
        self.notifications: list[Any] = []
        """Every CPU delegation notification of the run, in order."""

    def add_thread(
        self,
        name: str,
        workload: Workload,
        weight: int | None = None,
        latency_class: LatencyClass | str = LatencyClass.NORMAL,
        scheduler: str = "root",
    ) -> ThreadRef:
        kwargs = {} if weight is None else {"weight": weight}
        wake = self.core.spawn(
            name, self.now_ns, latency_class=latency_class, scheduler=scheduler, **kwargs
        )
        self._threads[wake.thread.tid] = SimThread(
            name, wake.thread, Program.start(workload), is_finite(workload)
        )
        if is_finite(workload):
            self._finite += 1
            self._finite_left += 1
        return wake.thread

    def run(
        self,
        duration_ns: int,
        progress: Progress | None = None,
        progress_every: int = PROGRESS_EVERY,
    ) -> dict:
        """Simulate until ``duration_ns`` or until every finite thread finished.

        ``progress(now_ns, end_ns, events)`` is called every ``progress_every``
        events and once at the end (the driver decides what to show; the
        simulation never depends on it)."""
        for cpu in sorted(self._idle):
            self._schedule(self.now_ns, "kick", cpu)
        if self.watchdog_ns is not None:
            self._schedule(self.now_ns + self.watchdog_ns // 4, "watchdog", 0)
        self._schedule_rotation()
        end = self.now_ns + duration_ns
        events = self.events
        next_progress = events + progress_every if progress is not None else -1
        heap = self._events
        heappop = heapq.heappop
        stop_seq = self._stop_seq
        on_stop = self._on_stop
        on_timer = self._on_timer
        idle = self._idle
        while heap and (not self._finite or self._finite_left):
            if heap[0][0] > end:
                break
            at, seq, kind, arg = heappop(heap)
            self.now_ns = at
            events += 1
            if events == next_progress:
                self.events = events
                progress(at, end, events)  # type: ignore[misc]
                next_progress += progress_every
            if kind == "stop":
                if stop_seq[arg] == seq:  # else cancelled by a preemption
                    on_stop(arg)
            elif kind == "timers":
                queue = self._timers[arg]
                tid = queue.popleft()[2]
                if queue:
                    head_at, head_seq, _ = queue[0]
                    heapq.heappush(heap, (head_at, head_seq, "timers", arg))
                on_timer(tid)
            elif kind == "timer":
                on_timer(arg)
            elif kind == "kick":
                if arg in idle:
                    self._try_dispatch(arg)
            elif kind == "call":
                self._calls[arg]()
            elif kind == "watchdog":
                self._watchdog()
            elif kind == "rotate":
                self._rotation_pending = False
                self._act(self.core.delegation_tick(self.now_ns))
                self._schedule_rotation()
        self.events = events
        self._charge_partial(min(end, self.now_ns) if self._all_finite_done() else end)
        if progress is not None:
            progress(self.now_ns, end, events)
        return self.report()

    def report(self) -> dict:
        threads = []
        for sim in self._threads.values():
            threads.append(
                thread_row(
                    sim.name,
                    self.core.snapshot_any(sim.ref),
                    wake_latency_ns=sim.wake_latencies.summary(),
                    ipc_round_trip_ns=sim.round_trips.summary(),
                    finished_ns=sim.finished_ns,
                    scheduler=self.core.scheduler_of(sim.ref)
                    if self.core.is_live(sim.ref)
                    else None,
                    cpu_runtime_ns={str(c): ns for c, ns in sorted(sim.runtime_by_cpu().items())},
                )
            )
        return {
            "policy": self._initial_policy,
            "cpus": self.core.nr_cpus,
            "slice_ns": self.core.slice_ns,
            "elapsed_ns": self.now_ns,
            "threads": threads,
            "policy_final": self.core.policy_name,
            "policy_exits": [record.as_dict() for record in self.core.exits],
            "schedulers": scheduler_rows(self.core),
        }

    def at(self, time_ns: int, fn: Callable[[], None]) -> None:
        """Call ``fn()`` at virtual time ``time_ns`` during ``run`` (an operator's act)."""
        self._calls.append(fn)
        self._schedule(time_ns, "call", len(self._calls) - 1)

    def _watchdog(self) -> None:
        assert self.watchdog_ns is not None
        stalls = self.core.stalls(self.now_ns, self.watchdog_ns)
        # The verdict is on the policy that runs the stalled thread: the root's,
        # or a sub-scheduler's (ejected alone, see Scheduler.eject_scheduler_policy).
        worst_of: dict[str, Any] = {}
        for stall in stalls:
            worst_of.setdefault(stall.scheduler, stall)
        for name, worst in worst_of.items():
            message = f"{worst.name} waited {worst.judged_ns / 1e6:.1f} ms"
            if name == "root":
                self.core.eject("stall", message, self.now_ns)
            else:
                self._act(self.core.eject_scheduler_policy(name, "stall", message, self.now_ns)[1])
        if stalls:
            for cpu in sorted(self._idle):
                self._schedule(self.now_ns, "kick", cpu)
        self._schedule(self.now_ns + self.watchdog_ns // 4, "watchdog", 0)

    def set_policy(self, policy: Any) -> None:
        """Switch policies at the current virtual time (atomic, see the core)."""
        self._act(self.core.set_policy(policy, self.now_ns))

    # ---------------------------------------------------------------- internals

    def _schedule_rotation(self) -> None:
        at = self.core.next_delegation_event_ns()
        if at is not None and not self._rotation_pending:
            self._rotation_pending = True
            self._schedule(max(at, self.now_ns), "rotate", 0)

    def _schedule(self, at: int, kind: str, arg: int) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, self._seq, kind, arg))
        if kind == "stop":
            self._stop_seq[arg] = self._seq

    def _schedule_timer(self, at: int, tid: int, period: int) -> None:
        """A timer for thread ``tid`` at ``at`` (= now + ``period``), queued
        behind the earlier timers of its period (see the module docstring)."""
        self._seq = seq = self._seq + 1
        queue = self._timers.get(period)
        if queue is None:
            queue = self._timers[period] = deque()
        elif queue and at < queue[-1][0]:
            # Only if virtual time went back (an operator call set in the past):
            # the period's queue would be out of order, so this one goes alone.
            _heappush(self._events, (at, seq, "timer", tid))
            return
        if not queue:
            _heappush(self._events, (at, seq, "timers", period))
        queue.append((at, seq, tid))

    def _all_finite_done(self) -> bool:
        return self._finite > 0 and self._finite_left == 0

    def _try_dispatch(self, cpu: int) -> None:
        now = self.now_ns
        dispatch = self.core.pick_next(cpu, now)
        if dispatch is None:
            self._idle.add(cpu)
            return
        self._idle.discard(cpu)
        sim = self._threads[dispatch.thread.tid]
        if sim.woke_ns is not None:
            sim.wake_latencies.add(now - sim.woke_ns)
            sim.woke_ns = None
        if sim.call_started_ns is not None:
            sim.round_trips.add(now - sim.call_started_ns)
            sim.call_started_ns = None
        ran, stop = sim.program.run(dispatch.budget_ns)
        if self._jitter and ran > 0:
            ran = int(ran * (1.0 + (self._jitter_low + self._jitter_span * self._random())))
            if ran < 1:
                ran = 1
        self._running[cpu] = (sim, ran, stop)
        self._seq = seq = self._seq + 1
        _heappush(self._events, (now + ran, seq, "stop", cpu))
        self._stop_seq[cpu] = seq

    def _on_stop(self, cpu: int) -> None:
        sim, ran, stop = self._running[cpu]  # type: ignore[misc]
        self._running[cpu] = None
        if sim.last_run_cpu == cpu:
            sim.last_run_ns += ran
        else:
            sim.runtime_by_cpu()
            sim.last_run_cpu, sim.last_run_ns = cpu, ran
        now = self.now_ns
        if stop is _CALL:
            sim.call_started_ns = now
        spec = sim.program.spec
        effects = step(self.core, cpu, now, ran, stop, spec, self._program_of)
        if stop is _FINISHED:
            if sim.finite and sim.finished_ns is None:
                self._finite_left -= 1
            sim.finished_ns = now
        elif stop is _SLEEP and not effects.exited:
            period = spec.period_ns  # type: ignore[union-attr]
            self._schedule_timer(now + period, sim.ref.tid, period)
        self._act(effects)
        self._try_dispatch(cpu)

    def _program_of(self, ref: ThreadRef) -> Program | None:
        sim = self._threads.get(ref.tid)
        return None if sim is None else sim.program

    def act(self, effects: Effects) -> None:
        """Act on the effects of a core call made from outside (an operator's
        act scheduled with ``at``): kicks, preempts, notifications."""
        self._act(effects)

    def _act(self, effects: Effects) -> None:
        if effects.notifications:
            self.notifications.extend(effects.notifications)
        notifications = self.core.take_notifications()
        if notifications:
            self.notifications.extend(notifications)
        for cpu in effects.kicks:
            self._kick(cpu)
        for cpu in effects.preempts:
            if self._running[cpu] is not None:
                self._preempt(cpu)

    def _on_timer(self, tid: int) -> None:
        sim = self._threads[tid]
        core = self.core
        if core.state_of(sim.ref) is not _BLOCKED:
            return
        sim.program.resume()
        now = self.now_ns
        wake = core.wake(sim.ref, now, _LAST_CPU, WakeReason.TIMER)
        sim.woke_ns = now
        self._kick(wake.kick)
        preempt = wake.preempt
        if preempt is not None and self._running[preempt] is not None:
            self._preempt(preempt)

    def _kick(self, cpu: int | None) -> None:
        if cpu is not None and cpu in self._idle:
            self._schedule(self.now_ns, "kick", cpu)  # the handler re-checks idleness

    def _preempt(self, cpu: int) -> None:
        """Cut a slice short now (wake-up preemption); a segment that ends in a
        voluntary stop is left to end by itself."""
        sim, planned, stop = self._running[cpu]  # type: ignore[misc]
        if stop is not _EXPIRED:
            return
        started = self.core.running_since(cpu) or self.now_ns
        ran = self.now_ns - started
        unrun = planned - ran
        if sim.program.burst_left_ns is not None:
            sim.program.burst_left_ns += unrun
        self._running[cpu] = (sim, ran, Stop.EXPIRED)
        self._schedule(self.now_ns, "stop", cpu)  # supersedes the planned stop

    def _charge_partial(self, end: int) -> None:
        """Charge running segments up to ``end`` so the report covers the window."""
        for cpu, running in enumerate(self._running):
            if running is None:
                continue
            sim = running[0]
            started = self.core.running_since(cpu) or end
            partial = max(0, end - started)
            self.core.charge_current(cpu, partial)
            per_cpu = sim.runtime_by_cpu()
            per_cpu[cpu] = per_cpu.get(cpu, 0) + partial
        self.now_ns = end
