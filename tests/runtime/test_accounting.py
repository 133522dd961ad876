"""Credit and charge the same quantity: the worker's CPU time (issue 8, item 17).

A finite workload is credited exactly what the core is charged, and a worker
that is stopped (SIGSTOP) or descheduled is charged for neither.
"""

from __future__ import annotations

import os
import signal

import trio

from capos_sched.runtime.runtime import Runtime
from capos_sched.sim import Simulator
from capos_sched.workload import Spin

from .helpers import MS, by_name, plan, thread, wait_until


def test_in_the_simulator_the_heavier_finite_hog_finishes_first() -> None:
    for cpus, extra in ((1, 0), (2, 1)):  # on 2 CPUs a third hog makes weights matter
        sim = Simulator(cpus)
        sim.add_thread("heavy", Spin(total_ns=1000 * MS), weight=2048)
        sim.add_thread("light", Spin(total_ns=1000 * MS), weight=1024)
        for i in range(extra):
            sim.add_thread(f"hog{i}", Spin(), weight=1024)
        rows = {t["name"]: t for t in sim.run(10_000 * MS)["threads"]}
        assert rows["heavy"]["finished_ns"] < rows["light"]["finished_ns"], rows
        assert rows["heavy"]["runtime_ns"] == rows["light"]["runtime_ns"] == 1000 * MS


async def test_a_finite_hog_is_charged_what_it_is_credited_even_when_stopped() -> None:
    total = 300 * MS
    runtime = Runtime(plan(thread("h/a", Spin(total_ns=total)), cpus=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        await trio.sleep(0.05)
        await wait_until(lambda: runtime.workers[0].busy)
        pid = runtime.workers[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # mid-slice
        await trio.sleep(0.4)
        os.kill(pid, signal.SIGCONT)
    report = runtime.report()
    row = by_name(report)["h/a"]
    assert row["finished_ns"] is not None and report["elapsed_ns"] > total + 400 * MS
    # Charged its CPU time, which is what its 300 ms of work was credited with:
    # not the 400 ms it spent stopped (an overrun of one clock check per slice).
    assert total <= row["runtime_ns"] <= total + 5 * MS, row["runtime_ns"]


async def test_the_heavier_finite_hog_finishes_first_on_one_cpu() -> None:
    threads = (
        thread("h/heavy", Spin(total_ns=200 * MS), weight=2048),
        thread("h/light", Spin(total_ns=200 * MS), weight=1024),
    )
    runtime = Runtime(plan(*threads, cpus=1))
    await runtime.run(duration_s=10)
    rows = by_name(runtime.report())
    assert rows["h/heavy"]["finished_ns"] < rows["h/light"]["finished_ns"], rows
    for row in rows.values():
        assert 200 * MS <= row["runtime_ns"] <= 205 * MS, row
