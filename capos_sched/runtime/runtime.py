"""The trio runtime: simulated CPUs driving worker processes on real time.

Contract for callers (the ``run`` command, the RPC layer)
---------------------------------------------------------
``Runtime(plan, policy=None, cpus=None, config=RuntimeConfig(), trace=None)``
is a ``PlanHost``: ``runtime.host`` is the runtime itself, ``runtime.scheduler``
the core. Everything on it belongs to the one trio thread that runs it:

- ``await runtime.run(duration_s=None, stop_when_finished=True,
  task_status=...)`` runs until ``duration_s`` passes, until every finite
  thread finished (when ``stop_when_finished``), or until ``request_stop()``.
  Use ``await nursery.start(runtime.run, ...)``: it reports started (value:
  the runtime) once every worker is up and the CPUs are about to dispatch.
  A Runtime runs once. Every worker is stopped before ``run`` returns or
  raises, also on cancellation. Workers are forked by the thread that runs
  ``run`` (their parent-death signal is tied to that thread), so run it in a
  thread that lives as long as the daemon: the main thread.
- ``runtime.trio_token`` (set once ``run`` has started): hand mutations from
  another thread with ``runtime.trio_token.run_sync_soon(fn)``; ``fn`` then
  runs in the trio thread and may call ``runtime.apply_plan(plan)``,
  ``runtime.scheduler.set_weight(...)``, ``runtime.report()`` and so on.
- ``runtime.request_stop(reason)`` (trio thread) or
  ``runtime.request_stop_threadsafe(reason)`` (any thread) ends the run: the
  running slices are cut short, charged, and ``run`` returns.
- ``runtime.now_ns()``: the runtime clock (``config.clock_ns`` minus the
  construction epoch), the time base of every core call.
- ``runtime.report()``: the ``capos-sched run --json`` document, valid during
  and after the run.

How a CPU works
---------------
Each simulated CPU is one trio task owning one worker process. It asks the
core for the next dispatch, decides daemon-side (with the simulator's
``Program`` bookkeeping) how long the thread may compute before its next
voluntary stop, sends the worker "spin for N ns" or "hash blocks i..j" with the
thread's small state, and charges the core exactly the worker-measured
elapsed time. The round trip minus that time is the dispatch overhead, kept
as a statistic. A CPU with nothing to run parks on an event; wakes, timer
expiries and plan changes kick it (the reschedule IPI). An interactive wake
with an earlier virtual finish raises the running worker's preempt flag.
Timers, the watchdog and the deadline are tasks of the same nursery.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import structlog
import trio

from capos_sched.core import (
    FALLBACK_POLICY,
    Dispatch,
    Effects,
    Policy,
    QueueCpu,
    Stall,
    ThreadRef,
    ThreadState,
    Wake,
    WakeReason,
    ideal_shares,
)
from capos_sched.drive import scheduler_rows, step, thread_row
from capos_sched.runtime.host import PlanHost
from capos_sched.runtime.probe import SliceProbe
from capos_sched.runtime.protocol import (
    OP_HASH,
    OP_SPIN,
    ST_COMPLETE,
    ST_ERROR,
    ST_LIMIT,
    ST_PREEMPTED,
    encode_request,
)
from capos_sched.runtime.stats import Samples
from capos_sched.runtime.timers import sleep_until_monotonic_ns
from capos_sched.runtime.trace import TraceRecorder
from capos_sched.runtime.workers import Worker, WorkerDied, pinned_cores
from capos_sched.workload import Hash, IpcClient, IpcServer, Program, Sleeper, Spin, Stop, is_finite

if TYPE_CHECKING:
    from capos_sched.manifest import Plan, ThreadPlan

log = structlog.get_logger("capos_sched.runtime")

_MONOTONIC_CLOCKS = (time.perf_counter_ns, time.monotonic_ns)
"""Clocks that read CLOCK_MONOTONIC on Linux, the clock timerfd deadlines use."""

DEFAULT_NICE = 10
WATCHDOG_SLICES = 250
"""Default stall threshold in slices (1 s at the 4 ms slice): a weight-1 thread
beside weight-1024 ones legitimately waits about 1024 slices per turn, so the
threshold is generous and the bypass needs a stall three times longer."""
STOP_GRACE_S = 3.0
MAX_WORKER_CRASHES = 3
"""A thread whose worker dies under it this many slices in a row fails; fewer
cost it only the slice in progress (it is re-queued, nothing charged)."""
MAX_HASH_BYTES = 256 * 1024 * 1024
DIRECT_WAIT_NS = 250_000
"""The direct wait measured in docs/benchmarks.md (``RuntimeConfig.direct_wait_ns``,
off by default: see there)."""


class RuntimeFailure(Exception):
    """The runtime cannot go on (a worker cannot be started)."""


@attrs.frozen
class RuntimeConfig:
    """Knobs of a runtime; every default is what ``capos-sched run`` uses.

    ``watchdog_threshold_ns``/``watchdog_bypass_ns`` default (None) to
    ``WATCHDOG_SLICES`` slices and three times that; ``clock_ns`` is injected
    for tests (monotonic nanoseconds).
    """

    nice: int = DEFAULT_NICE
    sched_idle: bool = False
    """Workers under SCHED_IDLE: the daemon's RPC and dispatch always preempt
    them (``serve`` turns this on; ``run`` keeps plain nice so that a busy
    machine's other tasks do not preempt the simulated CPUs)."""
    pin: bool = True
    wake_preemption: bool = True
    watchdog_threshold_ns: int | None = None
    watchdog_bypass_ns: int | None = None
    max_hash_bytes: int = MAX_HASH_BYTES
    direct_wait_ns: int = 0
    """A request whose limit is at most this is waited for directly (a
    blocking ``select`` on the trio thread, for at most its limit plus this)
    when nothing else in trio is due (``Worker.request``); 0 (the default):
    always through trio. Off by default because, measured on a quiet host
    (docs/benchmarks.md, "Quiet host, evening of 2026-12-02"), it took 3-13 us
    off the demo's median slice overhead but skewed the real runtime's
    delegation shares (2:1 web:batch: 38-40% error with it, 20-21% without)
    and reads trio's private run loop; ``DIRECT_WAIT_NS`` is the value measured."""
    clock_ns: Callable[[], int] = time.perf_counter_ns


@attrs.define(eq=False)
class HashData:
    """Shared data of one ``hash`` thread and its progress.

    Invariants: ``0 <= position <= end`` with ``end = blocks * rounds``;
    ``fd`` (a memfd of ``blocks * block_size`` bytes) is open until the thread
    is done, then -1.
    """

    data_id: int
    fd: int
    blocks: int
    block_size: int
    end: int
    position: int = 0
    acc: int = 0


@attrs.define(eq=False)
class RtThread:
    """The runtime's view of one plan thread.

    Invariants: exactly one of ``program`` (spin, sleeper, IPC) and ``hash``
    is set; ``finished_ns`` and ``failed`` are never both set; ``woke_ns`` is
    set only between a timer wake and the next dispatch; ``call_started_ns``
    only between an IPC call and the dispatch that follows its reply.
    """

    name: str
    process: str
    ref: ThreadRef
    workload: Any
    finite: bool
    program: Program | None = None
    hash: HashData | None = None
    finished_ns: int | None = None
    failed: str | None = None
    removed: bool = False
    last_cpu: int | None = None
    woke_ns: int | None = None
    sleep_deadline_ns: int | None = None
    call_started_ns: int | None = None
    reply_pending: bool = False
    wake_latency: Samples = attrs.Factory(Samples)
    timer_late: Samples = attrs.Factory(Samples)
    oversleep: Samples = attrs.Factory(Samples)
    round_trips: Samples = attrs.Factory(Samples)
    dispatches: int = 0
    crashes_in_a_row: int = 0
    """Slices in a row whose worker died under this thread (reset by a slice that ends)."""
    worker_crashes: int = 0
    cpu_runtime_ns: dict[int, int] = attrs.Factory(dict)
    """Run time per CPU, as charged to the core (``cpu_runtime_ns`` in the report)."""

    @property
    def cpu_bound(self) -> bool:
        return isinstance(self.workload, Spin | Hash)


class Runtime(PlanHost):
    """A PlanHost whose CPUs run on worker processes in real time (see module doc)."""

    def __init__(
        self,
        plan: Plan,
        policy: Policy | str | Any | None = None,
        cpus: int | None = None,
        *,
        config: RuntimeConfig | None = None,
        trace: TraceRecorder | None = None,
        manifest_name: str | None = None,
        guard: Any = None,
    ) -> None:
        self.config = config or RuntimeConfig()
        self._clock = self.config.clock_ns
        self._epoch = self._clock()
        self._threads: dict[ThreadRef, RtThread] = {}
        self._order: list[RtThread] = []
        self._next_data_id = 1
        self.manifest_name = manifest_name or str(getattr(plan, "source", "<plan>"))
        self.trace = trace
        self.trio_token: trio.lowlevel.TrioToken | None = None
        self._workers: list[Worker] = []
        self._parked: list[trio.Event | None] = []
        self._stop_event = trio.Event()
        self._stop_reason: str | None = None
        self._stopping = False
        self._ran = False
        self._nursery: trio.Nursery | None = None
        self._started_ns: int | None = None
        self._ended_ns: int | None = None
        self._stop_when_finished = True
        self._overhead = Samples()
        self._wake_preemptions = 0
        self._restarts = 0
        self._stalls = 0
        self._bypass: dict[str, Any] | None = None
        self._bypassed: str | None = None
        """The built-in policy a stall bypass replaced, restored once stalls clear."""
        self._quiet_since_ns: int | None = None
        self._bypasses = 0
        self._last_exit: Any = None
        """The newest exit record logged (records are logged once, in order)."""
        self.notification_sinks: list[Callable[[Any], None]] = []
        """Called with the CPU-delegation notifications of every effect acted on."""
        self._timer_fds: set[int] = set()
        """The descriptors of the armed timers (a direct wait watches them)."""
        self.probe: SliceProbe | None = None
        """Set before ``run`` to record where each slice's time goes (``bench slice``)."""
        super().__init__(plan, policy, cpus, guard)
        self._initial_policy = self.scheduler.policy_name
        ncpus = len(self.scheduler.cpus)
        self._parked = [None] * ncpus
        if self.trace is not None:
            self.trace.cpus = ncpus
        slice_ns = self.scheduler.slice_ns
        self.watchdog_threshold_ns = self.config.watchdog_threshold_ns or WATCHDOG_SLICES * slice_ns
        self.watchdog_bypass_ns = self.config.watchdog_bypass_ns or 3 * self.watchdog_threshold_ns

    # ---------------------------------------------------------------- contract

    @property
    def host(self) -> PlanHost:
        return self

    @property
    def cpus(self) -> int:
        return len(self.scheduler.cpus)

    @property
    def workers(self) -> list[Worker]:
        """The CPUs' workers (for diagnostics and tests; owned by the CPU tasks)."""
        return list(self._workers)

    def thread(self, full_name: str) -> RtThread | None:
        """The runtime state of a thread by full name (latest one of that name)."""
        for rt in reversed(self._order):
            if rt.name == full_name:
                return rt
        return None

    @property
    def running(self) -> bool:
        return self._started_ns is not None and self._ended_ns is None

    def now_ns(self) -> int:
        return self._clock() - self._epoch

    def elapsed_ns(self) -> int:
        if self._started_ns is None:
            return 0
        end = self._ended_ns if self._ended_ns is not None else self.now_ns()
        return end - self._started_ns

    def request_stop(self, reason: str = "requested") -> None:
        """End the run (trio thread only); the first reason given is kept."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop_event.set()

    def request_stop_threadsafe(self, reason: str = "requested") -> None:
        """``request_stop`` from any thread (no-op once the run has ended)."""
        if self.trio_token is None:
            return
        with contextlib.suppress(trio.RunFinishedError):
            self.trio_token.run_sync_soon(self.request_stop, reason)

    def apply_plan(self, plan: Plan, now_ns: int | None = None):  # type: ignore[override]
        """PlanHost.apply_plan at ``now_ns`` (default: now), then kick idle CPUs."""
        change = super().apply_plan(plan, self.now_ns() if now_ns is None else now_ns)
        self._kick_idle_if_work()
        return change

    async def run(
        self,
        *,
        duration_s: float | None = None,
        stop_when_finished: bool = True,
        task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._ran:
            raise RuntimeError("a Runtime runs once; build a new one")
        self._ran = True
        self._stop_when_finished = stop_when_finished
        self.trio_token = trio.lowlevel.current_trio_token()
        cores = pinned_cores(self.cpus) if self.config.pin else None
        self._workers = [
            Worker.create(
                k, self.config.nice, None if cores is None else cores[k], self.config.sched_idle
            )
            for k in range(self.cpus)
        ]
        try:
            try:
                async with trio.open_nursery() as starting:
                    for worker in self._workers:
                        starting.start_soon(worker.start)
            except* WorkerDied as group:
                raise RuntimeFailure(
                    "; ".join(str(e) for e in group.exceptions)  # type: ignore[union-attr]
                ) from None
            log.info(
                "runtime started",
                cpus=self.cpus,
                policy=self.scheduler.policy_name,
                workers=[w.pid for w in self._workers],
                pinned=cores,
                nice=self.config.nice,
            )
            self._started_ns = self.now_ns()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._watchdog)
                if self.plan.schedulers:
                    nursery.start_soon(self._delegation)
                if duration_s is not None:
                    nursery.start_soon(self._deadline, duration_s)
                task_status.started(self)
                self._check_finished()
                async with trio.open_nursery() as cpu_tasks:
                    for k in range(self.cpus):
                        cpu_tasks.start_soon(self._cpu_loop, k)
                    await self._stop_event.wait()
                    self._stopping = True
                    for worker in self._workers:
                        worker.preempt()
                    for k in range(self.cpus):
                        self._kick(k)
                    cpu_tasks.cancel_scope.deadline = trio.current_time() + STOP_GRACE_S
                self._ended_ns = self.now_ns()
                nursery.cancel_scope.cancel()
            log.info("runtime stopped", reason=self._stop_reason, elapsed_ns=self.elapsed_ns())
        finally:
            if self._started_ns is not None and self._ended_ns is None:
                self._ended_ns = self.now_ns()
            self._stopping = True
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as stopping:
                    for worker in self._workers:
                        stopping.start_soon(worker.stop)
                for worker in self._workers:
                    worker.close()
                for rt in self._order:
                    self._release_data(rt)

    # ------------------------------------------------------------------ report

    def report(self) -> dict[str, Any]:
        """The ``--json`` report (see the issue for the required keys)."""
        overhead = self._overhead.summary()
        threads = []
        for rt in self._order:
            snap = self.scheduler.snapshot_any(rt.ref)
            row = thread_row(
                rt.name,
                snap,
                wake_latency_ns=rt.wake_latency.summary(),
                timer_late_ns=rt.timer_late.summary(),
                oversleep_ns=rt.oversleep.summary(),
                ipc_round_trip_ns=rt.round_trips.summary(),
                finished_ns=rt.finished_ns,
                failed=rt.failed,
                removed=rt.removed,
                scheduler=self.scheduler.scheduler_of(rt.ref)
                if self.scheduler.is_live(rt.ref)
                else None,
                cpu_runtime_ns={str(c): ns for c, ns in sorted(rt.cpu_runtime_ns.items())},
            )
            # The run report's order: name, process, weight, class, workload, ...
            threads.append(
                {
                    "name": row.pop("name"),
                    "process": rt.process,
                    "weight": row.pop("weight"),
                    "class": row.pop("class"),
                    "workload": getattr(rt.workload, "kind", type(rt.workload).__name__),
                    **row,
                    "worker_crashes": rt.worker_crashes,
                }
            )
        return {
            "manifest": self.manifest_name,
            "policy": self._initial_policy,
            "cpus": self.cpus,
            "slice_ns": self.scheduler.slice_ns,
            "elapsed_ns": self.elapsed_ns(),
            "dispatch_overhead_ns": {
                "count": overhead["count"] if overhead else 0,
                "p50": overhead["p50"] if overhead else None,
                "p99": overhead["p99"] if overhead else None,
                "max": overhead["max"] if overhead else None,
            },
            "threads": threads,
            "policy_final": self.scheduler.policy_name,
            "policy_exits": [record.as_dict() for record in self.scheduler.exits],
            "schedulers": scheduler_rows(self.scheduler),
            "stop_reason": self._stop_reason,
            "wake_preemptions": self._wake_preemptions,
            "watchdog": {
                "threshold_ns": self.watchdog_threshold_ns,
                "bypass_after_ns": self.watchdog_bypass_ns,
                "stalls": self._stalls,
                "bypass": self._bypass,
                "bypass_active": self._bypassed is not None,
            },
            "workers": {
                "nice": self.config.nice,
                "sched_idle": self.config.sched_idle,
                "pinned": [w.core for w in self._workers] if self._workers else None,
                "restarts": self._restarts,
            },
        }

    def share_rows(self) -> list[dict[str, Any]]:
        """Per-thread share of the elapsed time against the water-filled ideal
        (ideal only for CPU-bound threads: the ideal assumes always runnable)."""
        elapsed = max(1, self.elapsed_ns())
        bound = [rt for rt in self._order if rt.cpu_bound and not rt.removed]
        live_bound = [rt for rt in bound if rt.finished_ns is None and rt.failed is None]
        weights = [self.scheduler.snapshot_any(rt.ref).weight for rt in live_bound]
        ideals = dict(zip(live_bound, ideal_shares(weights, self.cpus), strict=True))
        rows = []
        for rt in self._order:
            snap = self.scheduler.snapshot_any(rt.ref)
            rows.append(
                {
                    "name": rt.name,
                    "weight": snap.weight,
                    "class": snap.latency_class.wire_name,
                    "state": "failed"
                    if rt.failed
                    else "finished"
                    if rt.finished_ns is not None
                    else snap.state.name.lower(),
                    "runtime_ns": snap.runtime_ns,
                    "share": snap.runtime_ns / elapsed,
                    "ideal": ideals.get(rt),
                }
            )
        return rows

    # --------------------------------------------------------------- PlanHost

    def on_thread_added(self, thread_plan: ThreadPlan, ref: ThreadRef) -> None:
        workload = thread_plan.workload
        rt = RtThread(
            name=thread_plan.full_name,
            process=thread_plan.process,
            ref=ref,
            workload=workload,
            finite=is_finite(workload),
        )
        self._threads[ref] = rt
        self._order.append(rt)
        if isinstance(workload, Hash):
            size = workload.blocks * workload.block_size
            if size > self.config.max_hash_bytes:
                self._fail_unstarted(
                    rt, f"hash data of {size} bytes exceeds {self.config.max_hash_bytes}"
                )
                return
            try:
                rt.hash = self._make_hash_data(workload)
            except OSError as exc:
                self._fail_unstarted(rt, f"cannot allocate hash data: {exc}")
        else:
            rt.program = Program.start(workload)

    def on_threads_spawned(self) -> None:
        self._kick_idle_if_work()  # a plan applied in steps: its new threads may run at once

    def on_thread_removed(
        self, full_name: str, ref: ThreadRef, running_on: int | None, effects: Effects
    ) -> None:
        rt = self._threads.get(ref)
        if rt is None:
            return
        rt.removed = True
        self._act(effects)
        if not self.scheduler.is_live(ref):
            self._release_data(rt)
        elif running_on is not None and self._workers:
            # Killed while running: the core reaps it when its CPU stops it,
            # so cut the slice short rather than let it run out its budget.
            self._workers[running_on].preempt()
        self._check_finished()

    # --------------------------------------------------------------- internals

    def _fail_unstarted(self, rt: RtThread, reason: str) -> None:
        rt.failed = reason
        log.error("thread failed", thread=rt.name, reason=reason)
        if self.scheduler.is_live(rt.ref):
            self.scheduler.kill(rt.ref, self.now_ns())

    def _make_hash_data(self, spec: Hash) -> HashData:
        data_id, self._next_data_id = self._next_data_id, self._next_data_id + 1
        size = spec.blocks * spec.block_size
        fd = os.memfd_create(f"capos-sched-hash-{data_id}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            pattern = random.Random(data_id).randbytes(min(size, 1 << 20))
            offset = 0
            while offset < size:
                start = offset % len(pattern)
                offset += os.pwrite(fd, pattern[start : start + size - offset], offset)
        except BaseException:
            os.close(fd)
            raise
        return HashData(data_id, fd, spec.blocks, spec.block_size, spec.blocks * spec.rounds)

    def _release_data(self, rt: RtThread) -> None:
        data = rt.hash
        if data is None or data.fd < 0:
            return
        os.close(data.fd)
        data.fd = -1
        for worker in self._workers:
            worker.detach_later(data.data_id)

    def _rel(self, now_ns: int) -> int:
        """A runtime-clock time as nanoseconds since the run started."""
        return now_ns - (self._started_ns or 0)

    def _kick(self, cpu: int) -> None:
        event = self._parked[cpu]
        if event is not None:
            event.set()

    def _kick_idle_if_work(self) -> None:
        if all(event is None for event in self._parked):
            return
        if self.scheduler.has_runnable_work():
            for k in range(self.cpus):
                self._kick(k)

    def _check_finished(self) -> None:
        if not self._stop_when_finished or self._started_ns is None:
            return
        finite = [rt for rt in self._order if rt.finite and not rt.removed]
        if finite and all(rt.finished_ns is not None or rt.failed for rt in finite):
            self.request_stop("finished")

    async def _deadline(self, duration_s: float) -> None:
        await trio.sleep(duration_s)
        self.request_stop("duration")

    async def _cpu_loop(self, k: int) -> None:
        core = self.scheduler
        while not self._stopping:
            picking = time.perf_counter_ns() if self.probe is not None else 0  # bench slice
            dispatch = core.pick_next(k, self.now_ns())
            if core.exits and core.exits[-1] is not self._last_exit:
                self._log_new_exits()  # pick_next returns no effects: an ejection in dispatch
            if self._plan.schedulers or self.notification_sinks:
                self._notify([])  # a change that took effect on k in this dispatch
            if dispatch is None:
                event = self._parked[k] = trio.Event()
                await event.wait()
                self._parked[k] = None
                continue
            await self._run_dispatch(k, dispatch, picking)

    async def _run_dispatch(self, k: int, dispatch: Dispatch, picking: int = 0) -> None:
        picked = time.perf_counter_ns() if self.probe is not None else 0
        probed: tuple[int, ...] | None = None
        rt = self._threads[dispatch.thread]
        start = self.now_ns()
        rt.dispatches += 1
        if rt.woke_ns is not None:
            rt.wake_latency.add(start - rt.woke_ns)
            rt.woke_ns = None
            if rt.sleep_deadline_ns is not None:
                rt.oversleep.add(start - rt.sleep_deadline_ns)
                rt.sleep_deadline_ns = None
        if rt.reply_pending and rt.call_started_ns is not None:
            rt.round_trips.add(start - rt.call_started_ns)
            rt.call_started_ns = None
            rt.reply_pending = False
        if rt.last_cpu is not None and rt.last_cpu != k and self.trace is not None:
            self.trace.instant(
                k,
                f"migrate {rt.name}",
                self._rel(start),
                "migration",
                {"thread": rt.name, "from": rt.last_cpu, "to": k},
            )
        rt.last_cpu = k
        worker = self._workers[k]
        # From here on a preempt of CPU k is meant for this dispatch, even one
        # raised before the request is sent (attach, restart, stop).
        worker.clear_preempt()

        payload: bytes | None = None
        limit = 0
        if rt.hash is not None:
            data = rt.hash
            limit = dispatch.budget_ns
            payload = encode_request(
                OP_HASH, rt.ref.tid, limit, data.data_id, data.position, data.end, data.acc
            )
        else:
            assert rt.program is not None
            left = rt.program.burst_left_ns
            if not rt.program.done:
                limit = dispatch.budget_ns if left is None else min(dispatch.budget_ns, left)
            if limit > 0:
                payload = encode_request(OP_SPIN, rt.ref.tid, limit)

        elapsed = 0
        status = ST_LIMIT
        if payload is not None:
            for attempt in (1, 2):
                t0 = self._clock()
                try:
                    if rt.hash is not None and rt.hash.data_id not in worker.attached:
                        await worker.attach(
                            rt.hash.data_id, rt.hash.fd, rt.hash.blocks, rt.hash.block_size
                        )
                    status, _, elapsed, position, acc = await worker.request(
                        payload, *self._direct_wait(worker, limit)
                    )
                except WorkerDied as exc:
                    if not exc.ran and attempt == 1:
                        # Died while idle (the send failed): the thread never ran.
                        await self._restart_worker(k, f"found dead before dispatch: {exc}")
                        worker = self._workers[k]
                        continue
                    await self._worker_crashed(k, rt, exc)
                    return
                t1 = self._clock()
                self._overhead.add(max(0, t1 - t0 - elapsed))
                rt.crashes_in_a_row = 0
                if self.probe is not None and rt.hash is None:
                    probed = (picking, picked, t0, worker.sent_ns, position, acc, t1)
                break
            if rt.hash is not None and status != ST_ERROR:
                rt.hash.position, rt.hash.acc = position, acc

        stop: Stop
        if status == ST_ERROR:
            self._fail_running(k, rt, "the worker could not run the thread's kernel", elapsed)
            return
        if rt.hash is not None:
            stop = Stop.FINISHED if status == ST_COMPLETE else Stop.EXPIRED
        else:
            assert rt.program is not None
            # Credited exactly what the core is charged: the CPU time the
            # worker used (a slice cut short by the wall cap or a preempt
            # credits, and is charged, less than its limit).
            _, stop = rt.program.run(elapsed)
        end = self.now_ns()
        if self.trace is not None:
            self.trace.dispatch(
                k,
                rt.name,
                self._rel(start),
                end - start,
                {
                    "elapsed_ns": elapsed,
                    "budget_ns": dispatch.budget_ns,
                    "stop": stop.value,
                    "source": dispatch.source,
                    "preempted": status == ST_PREEMPTED,
                },
            )
        self._after_run(k, rt, elapsed, stop, end)
        if probed is not None:
            self._probe_record(probed, elapsed)

    def _direct_wait(self, worker: Worker, limit: int) -> tuple[int, list[int]]:
        """How long ``worker``'s reply may be waited for directly (0: through
        trio), and the descriptors that must end such a wait: the other
        CPUs' busy workers and the armed timers."""
        slack = self.config.direct_wait_ns
        if limit > slack:
            return 0, []
        watch = [w.sock.fileno() for w in self._workers if w.busy and w is not worker and w.sock]
        watch.extend(self._timer_fds)
        return limit + slack, watch

    def _probe_record(self, times: tuple[int, ...], elapsed: int) -> None:
        """One probed dispatch's stamps (see ``capos_sched.runtime.probe``)."""
        assert self.probe is not None
        done = time.perf_counter_ns()
        if self._clock is not time.perf_counter_ns:
            return  # an injected clock: the stamps are not comparable
        self.probe.record((*times, done, elapsed))

    def _after_run(self, k: int, rt: RtThread, elapsed: int, stop: Stop, now: int) -> None:
        if stop is Stop.CALL:
            rt.call_started_ns = now
            rt.reply_pending = False
        rt.cpu_runtime_ns[k] = rt.cpu_runtime_ns.get(k, 0) + elapsed
        effects = step(self.scheduler, k, now, elapsed, stop, rt.workload, self._program_of)
        if stop is Stop.FINISHED:
            rt.finished_ns = self._rel(now)
            self._release_data(rt)
        elif stop is Stop.SLEEP and not effects.exited and self._nursery is not None:
            self._nursery.start_soon(self._timer, rt, now + rt.workload.period_ns)
        if effects.exited and rt.finished_ns is None and rt.failed is None:
            self._release_data(rt)  # killed by a plan change while it ran
        for server in effects.delivered:
            if server != rt.ref:
                self._trace_wake(k, "ipcCall", self._threads[server])
        self._act(effects)
        self._kick_idle_if_work()
        if stop is Stop.FINISHED:
            # The only change of a slice end that can finish the run (failures
            # and removals check for themselves): not a scan of every thread
            # at every slice.
            self._check_finished()

    def _program_of(self, ref: ThreadRef) -> Program | None:
        rt = self._threads.get(ref)
        return None if rt is None else rt.program

    def _act(self, effects: Effects) -> None:
        """Carry out what a core call asks of the driver (see ``capos_sched.drive``)."""
        for woken in (*effects.replied, *effects.released):
            client = self._threads.get(woken.thread)
            if client is not None:
                client.reply_pending = True
                self._trace_wake(woken.cpu, "ipcReply", client)
        for cpu in effects.kicks:
            self._kick(cpu)
        for cpu in effects.preempts:
            self._preempt_for_wake(cpu)
        if effects.ejections:
            self._log_new_exits()
        if self.plan.schedulers or self.notification_sinks:
            self._notify(list(getattr(effects, "notifications", None) or ()))

    def _notify(self, notifications: list[Any]) -> None:
        """Hand CPU-delegation notifications to the sinks (CpuListener
        subscribers, rpc/delegation.py): those of an effect, and those the core
        raised in dispatch (``take_notifications``: a revoke in effect on a CPU)."""
        # Drained at every dispatch even with no sink: the core keeps them
        # until taken, and a long run's pool rotation raises some every period.
        notifications += self.scheduler.take_notifications()
        if not notifications:
            return
        if self.trace is not None:
            self._trace_evictions(notifications)
        for sink in self.notification_sinks:
            sink(notifications)

    def _trace_evictions(self, notifications: list[Any]) -> None:
        """A Perfetto instant where a scheduler lost caps on a CPU: the change
        took effect there, so its queued threads were evicted and none of its
        threads runs there any more (``evict web`` on CPU 2)."""
        assert self.trace is not None
        at = self._rel(self.now_ns())
        for note in notifications:
            lost = note.before & ~note.after
            if note.kind != "effectiveCapsUpdated" or not lost or note.cpu is None:
                continue
            stats = self.scheduler.scheduler_stats(note.scheduler)
            self.trace.instant(
                note.cpu,
                f"evict {note.scheduler}",
                at,
                "delegation",
                {
                    "scheduler": note.scheduler,
                    "before": note.before.names,
                    "after": note.after.names,
                    "evictions": stats.evictions,
                },
            )

    async def _timer(self, rt: RtThread, deadline_ns: int) -> None:
        if self._clock in _MONOTONIC_CLOCKS:
            # Precise to the kernel's hrtimer, not to epoll's millisecond.
            await sleep_until_monotonic_ns(deadline_ns + self._epoch, self._timer_fds)
        else:  # an injected clock (tests): only trio's own time is comparable
            await trio.sleep(max(0, deadline_ns - self.now_ns()) / 1e9)
        core = self.scheduler
        if self._stopping or not core.is_live(rt.ref):
            return
        thread = core.resolve(rt.ref)
        if thread.state is not ThreadState.BLOCKED:
            return
        now = self.now_ns()
        rt.timer_late.add(max(0, now - deadline_ns))
        assert rt.program is not None
        rt.program.resume()
        cpu = thread.cpu if thread.cpu is not None else 0
        wake = core.wake(rt.ref, now, QueueCpu(cpu), WakeReason.TIMER)
        rt.woke_ns = now
        rt.sleep_deadline_ns = deadline_ns
        self._on_wake(wake, "timer", rt)

    def _on_wake(self, wake: Wake, reason: str, rt: RtThread) -> None:
        self._trace_wake(wake.cpu, reason, rt)
        if wake.kick is not None:
            self._kick(wake.kick)
        if wake.preempt is not None:
            self._preempt_for_wake(wake.preempt)

    def _trace_wake(self, cpu: int | None, reason: str, rt: RtThread) -> None:
        if self.trace is not None and cpu is not None:
            self.trace.instant(
                cpu,
                f"wake {rt.name}",
                self._rel(self.now_ns()),
                "wake",
                {"thread": rt.name, "reason": reason},
            )

    def _preempt_for_wake(self, cpu: int) -> None:
        if self.config.wake_preemption and self._workers:
            # The core asks only while that CPU has a dispatch (its flag is
            # lowered when the next one starts, so this cannot go stale).
            self._workers[cpu].preempt()
            self._wake_preemptions += 1

    def _log_new_exits(self) -> None:
        """Log every exit record of the core not logged yet, oldest first."""
        exits = self.scheduler.exits
        new = []
        for record in reversed(exits):
            if record is self._last_exit:
                break
            new.append(record)
        for record in reversed(new):
            self._log_ejection(record)
        self._last_exit = exits[-1] if exits else None

    def _log_ejection(self, record: Any) -> None:
        log.error(
            "policy ejected: continuing under the fallback",
            fallback=FALLBACK_POLICY,
            **record.as_dict(),
        )

    def _fail_running(self, k: int, rt: RtThread, reason: str, elapsed: int) -> None:
        now = self.now_ns()
        self.scheduler.exit_current(k, now, elapsed)
        rt.failed = reason
        self._release_data(rt)
        log.error("thread failed", thread=rt.name, cpu=k, reason=reason)
        self._kick_idle_if_work()
        self._check_finished()

    async def _worker_crashed(self, k: int, rt: RtThread, exc: WorkerDied) -> None:
        """The worker died mid-slice: the slice is lost, nothing else.

        Nothing was measured, so nothing is charged, and the thread's progress
        (its program, its hash position) only ever moves on a reply, so it is
        intact: the thread goes back to its queue, live, its handles valid. A
        thread under which ``MAX_WORKER_CRASHES`` workers died in a row fails.
        """
        worker = self._workers[k]
        await worker.reap(1.0)
        reason = f"worker {worker.pid} of CPU {k} {worker.exit_status()} while running it ({exc})"
        rt.worker_crashes += 1
        rt.crashes_in_a_row += 1
        if rt.crashes_in_a_row >= MAX_WORKER_CRASHES:
            self._fail_running(k, rt, f"{rt.crashes_in_a_row} worker crashes in a row: {reason}", 0)
        else:
            self.scheduler.preempt_current(k, self.now_ns(), 0)
            if not self.scheduler.is_live(rt.ref):
                self._release_data(rt)  # removed by a plan change while it ran
            self._kick_idle_if_work()
            log.warning(
                "worker crashed: thread re-queued, its slice lost",
                thread=rt.name,
                cpu=k,
                crashes_in_a_row=rt.crashes_in_a_row,
                limit=MAX_WORKER_CRASHES,
                reason=reason,
            )
        await self._restart_worker(k, reason)

    async def _restart_worker(self, k: int, reason: str) -> None:
        worker = self._workers[k]
        await worker.kill()
        self._restarts += 1
        log.warning("restarting worker", cpu=k, old_pid=worker.pid, reason=reason)
        try:
            await worker.start()
        except WorkerDied as exc:
            raise RuntimeFailure(f"cannot restart the worker of CPU {k}: {exc}") from exc
        if self._stopping:
            worker.preempt()

    async def _delegation(self) -> None:
        """The plan's timed ``events:`` (at their times from the start) and the
        default split's pool rotation: the acts ``simulate`` runs on virtual time."""
        from capos_sched.drive import apply_event

        assert self._started_ns is not None
        pending = list(self.plan.events)
        while True:
            now = self.now_ns()
            for event in [e for e in pending if self._started_ns + e.at_ns <= now]:
                pending.remove(event)
                effects, problem = apply_event(self.scheduler, event, now)
                if self.trace is not None and problem is None:
                    self._trace_event(event, now)
                self._act(effects)
                if problem is not None:
                    log.warning("delegation event refused", problem=problem)
            rotation = self.scheduler.next_delegation_event_ns()
            if rotation is not None and rotation <= now:
                self._act(self.scheduler.delegation_tick(now))
                rotation = self.scheduler.next_delegation_event_ns()
            wakes = [self._started_ns + e.at_ns for e in pending]
            if rotation is not None:
                wakes.append(rotation)
            if not wakes:
                return
            await trio.sleep(max(0, min(wakes) - self.now_ns()) / 1e9)

    def _trace_event(self, event: Any, now_ns: int) -> None:
        """A timed delegation event in the trace, on each CPU it names."""
        assert self.trace is not None
        args = {"event": event.name, "child": event.child, "caps": list(event.caps)}
        for cpu in event.cpus or (0,):
            self.trace.instant(
                int(cpu), f"{event.action} {event.child}", self._rel(now_ns), "delegation", args
            )

    async def _watchdog(self) -> None:
        period_s = max(self.watchdog_threshold_ns / 4, 1_000_000) / 1e9
        reported: dict[ThreadRef, int] = {}
        while True:
            await trio.sleep(period_s)
            reported = self.watchdog_check(self.now_ns(), reported)

    def watchdog_check(self, now: int, reported: dict[ThreadRef, int]) -> dict[ThreadRef, int]:
        """One watchdog pass at ``now``; returns the stalls reported so far.

        A stall is judged by the core (``Scheduler.stalls``): by the time the
        machine spent running other work or idle while the thread waited, so a
        starved daemon (host contention) is not a policy stall. A stall longer
        than ``watchdog_bypass_ns`` ejects the policy to the fallback (a
        bypass); a bypass of a built-in policy ends by itself once no thread has
        stalled for ``bypass_quiet_ns``.
        """
        core = self.scheduler
        stalls = core.stalls(now, self.watchdog_threshold_ns)
        # Only threads stalled right now are remembered: one report per stall.
        stalled_now: dict[ThreadRef, int] = {}
        for stall in stalls:
            since = now - stall.waited_ns
            stalled_now[stall.thread] = since
            if reported.get(stall.thread) != since:
                self._stalls += 1
                log.warning(
                    "watchdog: runnable thread stalled",
                    thread=stall.name,
                    waited_ms=round(stall.waited_ns / 1e6, 1),
                    judged_ms=round(stall.judged_ns / 1e6, 1),
                    threshold_ms=round(self.watchdog_threshold_ns / 1e6, 1),
                    reason=self._stall_reason(stall),
                )
        self._eject_stalled_sub_policies(stalls, now)
        stalls = [stall for stall in stalls if stall.scheduler == "root"]
        worst = stalls[0] if stalls else None
        if worst is not None and worst.judged_ns > self.watchdog_bypass_ns:
            previous = core.policy_name
            message = (
                f"{worst.name} waited {worst.judged_ns / 1e6:.1f} ms"
                f" (bypass after {self.watchdog_bypass_ns / 1e6:.1f} ms)"
            )
            record = core.eject("stall", message, now)
            if record is not None:
                self._bypasses += 1
                self._log_new_exits()
                self._bypassed = previous if previous in {p.value for p in Policy} else None
                self._bypass = {
                    "at_ns": self._rel(now),
                    "thread": worst.name,
                    "waited_ns": worst.judged_ns,
                    "policy": previous,
                    "ended_ns": None,
                }
                self._quiet_since_ns = None
                for k in range(self.cpus):
                    self._kick(k)
        elif self._bypassed is not None:
            if stalls:
                self._quiet_since_ns = None
            elif self._quiet_since_ns is None:
                self._quiet_since_ns = now
            elif now - self._quiet_since_ns >= self.bypass_quiet_ns():
                self.set_policy(self._bypassed, reason="bypass ended: no stall for a threshold")
        return stalled_now

    def _eject_stalled_sub_policies(self, stalls: list[Any], now: int) -> None:
        """A stall past the bypass bound of a sub-scheduler's thread ejects that
        scheduler's policy to fifo (for good), never the root's."""
        done: set[str] = set()
        for stall in stalls:
            name = stall.scheduler
            if name == "root" or name in done or stall.judged_ns <= self.watchdog_bypass_ns:
                continue
            done.add(name)
            message = f"{stall.name} waited {stall.judged_ns / 1e6:.1f} ms"
            record, effects = self.scheduler.eject_scheduler_policy(name, "stall", message, now)
            if record is not None:
                log.warning(
                    "watchdog: sub-scheduler policy ejected", scheduler=name, message=message
                )
            self._act(effects)

    def bypass_quiet_ns(self) -> int:
        """How long a bypass must see no stall before the replaced policy is
        restored: 10 thresholds, doubled at every further bypass (a policy that
        keeps stalling stays bypassed ever longer instead of flapping)."""
        return 10 * self.watchdog_threshold_ns * 2 ** max(0, self._bypasses - 1)

    def set_policy(self, policy: Any, reason: str = "operator") -> None:
        """Switch the policy now (trio thread): atomic, accounting carried over.
        Ends a bypass. ``policy`` is a built-in name or a policy object."""
        previous = self.scheduler.policy_name
        effects = self.scheduler.set_policy(policy, self.now_ns())
        if self._bypass is not None and self._bypass["ended_ns"] is None:
            self._bypass["ended_ns"] = self._rel(self.now_ns())
        self._bypassed = None
        self._quiet_since_ns = None
        log.info("policy switched", was=previous, now=self.scheduler.policy_name, reason=reason)
        self._act(effects)
        for k in range(self.cpus):
            self._kick(k)

    def policy_status(self) -> dict[str, Any]:
        """PlanHost's, with the watchdog's last bypass (times since the run started)."""
        status = super().policy_status()
        if self._bypass is not None:
            status["bypass"] = {**self._bypass, "active": self._bypass["ended_ns"] is None}
        return status

    def rel_ns(self, now_ns: int) -> int:
        return self._rel(now_ns)

    def _stall_reason(self, stall: Stall) -> str:
        core = self.scheduler
        cpu = stall.cpu if stall.cpu is not None else 0
        where = f"in the IPC slot of CPU {cpu}" if stall.where == "ipcSlot" else stall.where
        parts = [
            f"{where} on CPU {cpu}",
            f"weight {stall.weight}",
            f"class {stall.latency_class.wire_name}",
            f"policy {core.policy_name}",
        ]
        running = core.running_thread(cpu)
        if running is not None:
            snap = core.snapshot_any(running)
            parts.append(f"CPU {cpu} runs {snap.name} (weight {snap.weight})")
        return "; ".join(parts)


def describe_workload(workload: Any) -> str:
    """A short human description of a workload spec (for tables)."""
    match workload:
        case Spin(total_ns=None):
            return "spin"
        case Spin(total_ns=total):
            return f"spin {total / 1e6:g} ms"
        case Hash(blocks=b, block_size=s, rounds=r):
            return f"hash {b}x{s}B x{r}"
        case Sleeper(burst_ns=burst, period_ns=period):
            return f"sleeper {burst / 1e6:g}/{period / 1e6:g} ms"
        case IpcClient(endpoint=ep):
            return f"ipcClient {ep}"
        case IpcServer(endpoint=ep):
            return f"ipcServer {ep}"
    return str(workload)
