"""The per-slice transport: one trio wake-up per request, the worker's stamps,
and the probe's breakdown (``bench slice``)."""

from __future__ import annotations

import json
import socket
import threading
import time

import trio
import trio.testing

from capos_sched.runtime.probe import PHASES, SliceProbe
from capos_sched.runtime.protocol import OP_SPIN, ST_LIMIT, encode_request
from capos_sched.runtime.runtime import Runtime, RuntimeConfig
from capos_sched.runtime.timers import sleep_until_monotonic_ns
from capos_sched.runtime.workers import DIRECT_RUN_NS, Worker, WorkerDied
from capos_sched.workload import IpcClient, IpcServer, Spin

from .helpers import MS, plan, thread


class TaskSteps(trio.abc.Instrument):
    """Counts how many times one task is resumed by the trio scheduler."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def _started_worker() -> Worker:
    worker = Worker.create(cpu=0, nice=0, core=None)
    worker.direct_run_ns = DIRECT  # its own test below
    await worker.start()
    return worker


async def test_a_request_costs_its_task_one_trio_wake_up() -> None:
    # trio.socket's send and recv each add a checkpoint (three scheduler passes
    # per request); the send's hands the trio thread to other tasks before the
    # reply's wait. Only the wait for the reply may yield.
    worker = await _started_worker()
    try:
        await worker.request(encode_request(OP_SPIN, 7, 100_000))  # warm-up
        steps = TaskSteps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(steps)
        try:
            for _ in range(5):
                status, tid, elapsed, _, _ = await worker.request(
                    encode_request(OP_SPIN, 7, 100_000)
                )
                assert (status, tid) == (ST_LIMIT, 7) and elapsed > 0
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert steps.steps == 5
    finally:
        await worker.stop()
        worker.close()


DIRECT = 60_000 * MS
"""A direct wait no reply outlasts, even on a loaded host (the tests count
wake-ups, not time)."""


async def _steps_of_requests(worker: Worker, count: int, **direct: object) -> int:
    """How many trio wake-ups ``count`` 100 us requests cost this task."""
    await worker.request(encode_request(OP_SPIN, 7, 100_000))  # warm-up
    steps = TaskSteps(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(steps)
    try:
        for _ in range(count):
            status, tid, elapsed, _, _ = await worker.request(
                encode_request(OP_SPIN, 7, 100_000), **direct
            )
            assert (status, tid) == (ST_LIMIT, 7) and elapsed > 0
    finally:
        trio.lowlevel.remove_instrument(steps)
    return steps.steps


async def test_a_direct_wait_with_nothing_else_due_costs_no_trio_wake_up() -> None:
    worker = await _started_worker()
    try:
        assert await _steps_of_requests(worker, 5, direct_wait_ns=DIRECT) == 0
    finally:
        await worker.stop()
        worker.close()


async def test_a_direct_wait_is_declined_while_another_task_is_runnable() -> None:
    worker = await _started_worker()
    woken = 0
    wake = trio.Event()

    async def woken_before_each_request() -> None:
        nonlocal woken
        while True:
            await wake.wait()
            woken += 1

    try:
        await worker.request(encode_request(OP_SPIN, 7, 100_000))  # warm-up
        async with trio.open_nursery() as nursery:
            nursery.start_soon(woken_before_each_request)
            steps = TaskSteps(trio.lowlevel.current_task())
            for _ in range(5):
                await trio.testing.wait_all_tasks_blocked()
                wake.set()  # the other task is runnable now
                wake = trio.Event()
                trio.lowlevel.add_instrument(steps)
                try:
                    await worker.request(encode_request(OP_SPIN, 7, 100_000), DIRECT)
                finally:
                    trio.lowlevel.remove_instrument(steps)
            nursery.cancel_scope.cancel()
        # Every request went through trio, so the other task ran before each reply.
        assert steps.steps == 5 and woken == 5
    finally:
        await worker.stop()
        worker.close()


async def test_a_worker_waits_through_trio_at_least_every_direct_run() -> None:
    # Tasks woken in the same trio batch as this one are in no run queue: they
    # run once this task yields, so it yields at least every DIRECT_RUN_NS.
    worker = await _started_worker()
    try:
        assert worker.direct_run_ns == DIRECT and DIRECT_RUN_NS < DIRECT
        assert await _steps_of_requests(worker, 3, direct_wait_ns=DIRECT) == 0
        # The warm-up request waits through trio; then one more after a long run.
        steps = TaskSteps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(steps)
        try:
            for _ in range(3):
                worker.trio_waited_ns = time.perf_counter_ns() - DIRECT - 1
                await worker.request(encode_request(OP_SPIN, 7, 100_000), DIRECT)
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert steps.steps == 3
    finally:
        await worker.stop()
        worker.close()


async def test_a_direct_wait_is_declined_before_a_trio_deadline_within_it() -> None:
    worker = await _started_worker()
    try:
        beyond = within = None
        with trio.move_on_after(DIRECT / 1e9 + 3600):  # a deadline after the wait's bound
            beyond = await _steps_of_requests(worker, 3, direct_wait_ns=DIRECT)
        with trio.move_on_after(DIRECT / 2 / 1e9):  # within it: through trio
            within = await _steps_of_requests(worker, 3, direct_wait_ns=DIRECT)
        assert (beyond, within) == (0, 3)
    finally:
        await worker.stop()
        worker.close()


async def test_a_direct_wait_ends_when_a_watched_descriptor_is_ready() -> None:
    # Another CPU's reply or a timer that fires must not wait for this one.
    worker = await _started_worker()
    ready, other = socket.socketpair()
    try:
        other.send(b"x")  # `ready` is readable for the whole test
        steps = await _steps_of_requests(worker, 3, direct_wait_ns=DIRECT, watch=[ready.fileno()])
        assert steps == 3
    finally:
        ready.close()
        other.close()
        await worker.stop()
        worker.close()


async def test_a_send_that_waited_through_trio_drops_the_direct_wait() -> None:
    # Other tasks ran while the send waited: the watched set (timers, other
    # workers, trio's state) decided before it may be stale.
    worker = await _started_worker()
    try:
        assert worker.sock is not None
        real = worker.sock
        full = [True]

        class FullOnce:
            def send(self, message: bytes) -> int:
                if full.pop() if full else False:
                    raise BlockingIOError
                return real.send(message)

            def __getattr__(self, name: str) -> object:
                return getattr(real, name)

        await worker.request(encode_request(OP_SPIN, 7, 100_000))  # warm-up
        worker.sock = FullOnce()  # type: ignore[assignment]
        steps = TaskSteps(trio.lowlevel.current_task())
        trio.lowlevel.add_instrument(steps)
        try:
            status, _, _, _, _ = await worker.request(encode_request(OP_SPIN, 7, 100_000), DIRECT)
        finally:
            trio.lowlevel.remove_instrument(steps)
            worker.sock = real
        # One step for the send's wait, one for the reply's wait through trio.
        assert status == ST_LIMIT and worker.send_waits == 1 and steps.steps == 2
    finally:
        await worker.stop()
        worker.close()


async def test_a_hand_off_from_another_thread_ends_a_direct_wait() -> None:
    # The RPC thread hands every mutation to trio with run_sync_soon: it must
    # run while a long request is in flight, not once the reply is in.
    worker = await _started_worker()
    token = trio.lowlevel.current_trio_token()
    ran_before_reply = []
    handed = threading.Event()

    def hand_off() -> None:
        while not worker.busy:
            time.sleep(0.001)
        time.sleep(0.1)  # the request's direct wait has begun by now
        token.run_sync_soon(lambda: ran_before_reply.append(worker.busy))
        handed.set()

    try:
        await worker.request(encode_request(OP_SPIN, 7, 100_000))  # warm-up
        thread = threading.Thread(target=hand_off)
        thread.start()
        status, _, _, _, _ = await worker.request(encode_request(OP_SPIN, 7, 2000 * MS), DIRECT)
        thread.join()
        assert status == ST_LIMIT and handed.is_set()
        assert ran_before_reply == [True]
    finally:
        await worker.stop()
        worker.close()


async def test_an_armed_timer_is_in_the_set_a_direct_wait_watches() -> None:
    armed: set[int] = set()
    seen: list[set[int]] = []

    async def look() -> None:
        await trio.sleep(0.01)
        seen.append(set(armed))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(look)
        await sleep_until_monotonic_ns(time.monotonic_ns() + 200 * MS, armed)
    assert len(seen) == 1 and len(seen[0]) == 1
    assert armed == set()


async def test_the_runtime_waits_directly_only_for_short_requests() -> None:
    p = plan(thread("a/hog", Spin(50 * MS)), thread("b/hog", Spin(50 * MS)), cpus=2)
    runtime = Runtime(p, config=RuntimeConfig(direct_wait_ns=250_000))
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        first, second = runtime.workers
        second.busy = True  # as while CPU 1 waits for its reply
        runtime._timer_fds.add(99)
        try:
            wait, watch = runtime._direct_wait(first, 100_000)
            assert wait == 350_000 and sorted(watch) == sorted([second.sock.fileno(), 99])
            assert runtime._direct_wait(first, 4 * MS) == (0, [])
        finally:
            runtime._timer_fds.discard(99)
            second.busy = False
        runtime.request_stop()
    off = Runtime(p, config=RuntimeConfig(direct_wait_ns=0))
    assert off._direct_wait(first, 100_000) == (0, [])


async def test_spin_reply_carries_the_workers_receive_and_reply_times() -> None:
    worker = await _started_worker()
    try:
        before = time.perf_counter_ns()
        _, _, elapsed, received, replied = await worker.request(encode_request(OP_SPIN, 1, 2 * MS))
        after = time.perf_counter_ns()
        # The worker may hold the request before the daemon's send returns
        # (the daemon can be descheduled right after waking it).
        assert before <= received <= replied <= after
        assert before <= worker.sent_ns <= after
        assert replied - received >= elapsed >= MS
    finally:
        await worker.stop()
        worker.close()


async def test_a_dead_worker_reads_as_worker_died() -> None:
    worker = await _started_worker()
    try:
        assert worker.process is not None
        worker.process.kill()
        worker.process.wait()
        try:
            await worker.request(encode_request(OP_SPIN, 1, MS))
        except WorkerDied:
            pass
        else:
            raise AssertionError("a request to a dead worker returned")
    finally:
        await worker.kill()
        worker.close()


async def test_the_probe_records_every_phase_of_every_probed_dispatch() -> None:
    p = plan(
        thread("ipc/server", IpcServer("e", 50_000), latency_class="ipcServer"),
        thread("ipc/client", IpcClient("e", 50_000, 200)),
        thread("bg/hog", Spin(50 * MS)),
        cpus=2,
    )
    runtime = Runtime(p)
    runtime.probe = SliceProbe()
    await runtime.run(duration_s=10.0)
    summary = runtime.probe.summary()
    counts = {name: runtime.probe.phases[name].count for name in PHASES}
    assert len(set(counts.values())) == 1 and counts["overhead"] >= 200, counts
    for name in PHASES:
        assert summary[name] is not None and summary[name]["p50"] >= 0
    # The phases between the request and its reply add up to the overhead
    # sample of each dispatch (same clock), so their medians cannot exceed it
    # by much in total.
    wire = ("send", "to_worker", "worker_extra", "from_worker")
    assert summary["to_worker"]["p50"] > 0 and summary["from_worker"]["p50"] > 0
    assert sum(summary[n]["p50"] for n in wire) <= 3 * summary["overhead"]["p50"]


def test_the_probe_derives_each_phase_from_one_dispatchs_stamps() -> None:
    probe = SliceProbe()
    # picking, picked, t0, sent, received, replied, t1, done, elapsed
    probe.record((100, 110, 130, 160, 200, 1300, 1450, 1500, 1000))
    probe.record((0, 10, 20, 30, 25, 1100, 1200, 1210, 1000))  # got it before the send returned
    phases = {name: list(s.recent) for name, s in probe.phases.items()}
    assert phases == {
        "pick": [10, 0],
        "prepare": [20, 10],
        "send": [30, 10],
        "to_worker": [40, 0],
        "worker_extra": [100, 75],
        "from_worker": [150, 100],
        "after_run": [50, 10],
        "overhead": [320, 180],
    }
    assert all(s.count == 2 for s in probe.phases.values())


def test_bench_slice_baseline_and_goals() -> None:
    from bench import slice as bench_slice

    raw = bench_slice.baseline_blocking(200)
    assert raw is not None and raw["count"] == 200 and 0 < raw["p50"] <= raw["p99"]
    trip = {"p50": 60_000, "p99": 90_000}
    result = {
        "demo": {"dispatch_overhead_ns": {"p50": 31_000, "p99": 100_000}},
        "ipc": {"wfq": {"round_trip_ns": trip}, "wfq_over_fifo": {"p50": 1.2, "p99": 1.0}},
    }
    goals = bench_slice.goals(result)
    assert {name: g["met"] for name, g in goals.items()} == {
        "dispatch_overhead_p50_ns": False,
        "dispatch_overhead_p99_ns": True,
        "ipc_round_trip_p50_ns": True,
        "ipc_wfq_over_fifo_p50": False,
    }


def test_bench_slice_runs_the_workers_as_asked(monkeypatch) -> None:
    from click.testing import CliRunner

    from bench import slice as bench_slice

    seen: list[tuple[str, bool]] = []

    def demo(duration_s: float, config: RuntimeConfig) -> dict[str, object]:
        seen.append(("demo", config.sched_idle))
        return {"dispatch_overhead_ns": {"p50": 1, "p99": 1}}

    def ipc(runs: int, config: RuntimeConfig) -> dict[str, object]:
        seen.append(("ipc", config.sched_idle))
        return {"wfq": {"round_trip_ns": None}}

    monkeypatch.setattr(bench_slice, "measure_demo", demo)
    monkeypatch.setattr(bench_slice, "measure_ipc", ipc)
    for name in ("baseline_blocking", "baseline_trio", "baseline_trio_lowlevel"):
        monkeypatch.setattr(bench_slice, name, lambda round_trips: None)
    for flag, idle in (("idle", True), ("nice", False)):
        seen.clear()
        result = CliRunner().invoke(bench_slice.slice_bench, ["--workers", flag, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["workers"] == flag
        assert seen == [("demo", idle), ("ipc", idle)]
