"""The per-slice transport: one trio wake-up per request, the worker's stamps,
and the probe's breakdown (``bench slice``)."""

from __future__ import annotations

import time

import trio

from capos_sched.runtime.probe import PHASES, SliceProbe
from capos_sched.runtime.protocol import OP_SPIN, ST_LIMIT, encode_request
from capos_sched.runtime.runtime import Runtime
from capos_sched.runtime.workers import Worker, WorkerDied
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


async def test_spin_reply_carries_the_workers_receive_and_reply_times() -> None:
    worker = await _started_worker()
    try:
        before = time.perf_counter_ns()
        _, _, elapsed, received, replied = await worker.request(encode_request(OP_SPIN, 1, 2 * MS))
        after = time.perf_counter_ns()
        assert before <= worker.sent_ns <= received <= replied <= after
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
