"""Cost of one full dispatch cycle of the core, against ``heapq`` at the same size.

A cycle is what a CPU does at every slice end: ``preempt_current`` (charge the
running thread and re-enqueue it at its ordered place) and ``pick_next`` (IPC
slot check, steal/pull walk over the siblings, pop the front, dispatch). The
CPUs take turns, so every cycle sees ``threads`` runnable threads spread over
``cpus`` queues, with steal checks on every pick.

The baseline, measured in the same process with its batches interleaved with
the dispatch batches, is Python's ``heapq``
doing one ``heappop`` + ``heappush`` on a heap of ``threads`` floats, pushing
keys that advance like virtual finishes do: the least a heap-ordered
dispatcher written in Python could cost.

    python -m bench.dispatch --threads 100000 --json

``--compare-core DIR`` also times another copy of ``capos_sched/core`` (for
instance main's, before a change: ``git archive main | tar -x -C /tmp/base``,
then ``--compare-core /tmp/base/capos_sched/core``) in the same process, its
batches interleaved with ours, so a loaded host slows both alike.

The report names the implementation of the ordered DSQ that ran
(``implementation``: "c" for the compiled accelerator, "python" for the
reference; ``CAPOS_SCHED_PURE=1`` forces the reference) and of the cycle
itself (``cycle``: "c" when ``preempt_current`` and ``pick_next`` ran as the
accelerator's WFQ twin, ``_accel.WfqCycle``, with ``cycle_fallbacks`` of its
``cycle_calls`` handed to the Python methods; "python" otherwise). When it is "c", the
pure-Python reference is timed too, interleaved (``reference_ns_per_dispatch``,
``vs_reference``). ``bytes_per_thread`` is what the loaded core allocated
(tracemalloc), divided by the thread count.
"""

from __future__ import annotations

import gc
import heapq
import importlib.util
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import click

from capos_sched.core import MAX_WEIGHT, SLICE_NS, Scheduler, runqueue
from capos_sched.core.constants import MAX_CPUS

CORE_DIR = str(Path(runqueue.__file__).parent)
GOAL_RATIO = 3.0
GOAL_BYTES_PER_THREAD = 1024


def median_batch_ns(run_batch: Callable[[int], None], cycles: int) -> float:
    """Median nanoseconds per iteration over 5 batches; ``run_batch(n)`` runs n."""
    per_batch = max(1, cycles // 5)
    batches = []
    for _ in range(5):
        gc.collect()
        start = time.perf_counter_ns()
        run_batch(per_batch)
        batches.append((time.perf_counter_ns() - start) / per_batch)
    return statistics.median(batches)


def load_core(directory: str, name: str = "bench_compared_core", pure: bool = False) -> type:
    """The ``Scheduler`` class of the core package at ``directory`` (loaded
    under its own name, so it does not replace ours); ``pure``: with
    ``CAPOS_SCHED_PURE=1`` while it imports, so it runs the reference."""
    saved = os.environ.get("CAPOS_SCHED_PURE")
    if pure:
        os.environ["CAPOS_SCHED_PURE"] = "1"
    try:
        return _load_core(directory, name)
    finally:
        if pure:
            if saved is None:
                del os.environ["CAPOS_SCHED_PURE"]
            else:
                os.environ["CAPOS_SCHED_PURE"] = saved


def implementation_of(scheduler: type) -> str:
    """ "c" or "python": the ordered DSQ the core of ``scheduler`` uses."""
    package = scheduler.__module__.rpartition(".")[0]
    return sys.modules[f"{package}.runqueue"].IMPLEMENTATION


def _load_core(directory: str, name: str) -> type:
    spec = importlib.util.spec_from_file_location(
        name, f"{directory}/__init__.py", submodule_search_locations=[directory]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module.Scheduler


def load_threads(core, threads: int, cpus: int, seed: int) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    placement = sys.modules[type(core).__module__].QueueCpu
    for i in range(threads):
        core.spawn(f"t{i}", 0, rng.randint(1, MAX_WEIGHT), placement=placement(i % cpus))


def bytes_per_thread(threads: int, cpus: int, seed: int = 0, scheduler: type = Scheduler) -> float:
    """Bytes the core allocates per runnable thread (tracemalloc, after loading
    ``threads`` and one pick per CPU), with the empty core subtracted."""
    gc.collect()
    tracemalloc.start()
    try:
        core = scheduler(cpus)
        empty = tracemalloc.get_traced_memory()[0]
        load_threads(core, threads, cpus, seed)
        for cpu in range(cpus):
            core.pick_next(cpu, 0)
        gc.collect()
        loaded = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (loaded - empty) / threads


def dispatch_batch(threads: int, cpus: int, seed: int = 0, scheduler: type = Scheduler):
    """A loaded core and ``run_batch(n)`` running n dispatch cycles on it."""
    core = scheduler(cpus)
    load_threads(core, threads, cpus, seed)
    clock = [0]
    for cpu in range(cpus):
        core.pick_next(cpu, 0)

    def run_batch(n: int) -> None:
        now = clock[0]
        preempt, pick = core.preempt_current, core.pick_next
        for i in range(n):
            cpu = i % cpus
            now += SLICE_NS
            preempt(cpu, now, SLICE_NS)
            pick(cpu, now)
        clock[0] = now

    run_batch.core = core  # type: ignore[attr-defined]
    return run_batch


def measure_dispatch(threads: int, cpus: int, cycles: int, seed: int = 0) -> float:
    """Nanoseconds per dispatch cycle."""
    return median_batch_ns(dispatch_batch(threads, cpus, seed), cycles)


def interleaved_medians(runs: list[Callable[[int], None]], cycles: int) -> list[float]:
    """Median nanoseconds per iteration of each runner: 10 batches each, the
    runners taking turns batch by batch, so a loaded host slows all alike, and
    the order reversed every other round (the batch that runs second in a pair
    was measured about 5% faster when both cores were the same code: the order
    must not favour any)."""
    per_batch = max(1, cycles // 10)
    times: list[list[float]] = [[] for _ in runs]
    for round_ in range(10):
        order = range(len(runs)) if round_ % 2 == 0 else range(len(runs) - 1, -1, -1)
        for k in order:
            run_batch = runs[k]
            gc.collect()
            start = time.perf_counter_ns()
            run_batch(per_batch)
            times[k].append((time.perf_counter_ns() - start) / per_batch)
    return [statistics.median(t) for t in times]


def compare_dispatch(threads: int, cpus: int, cycles: int, other: type) -> tuple[float, float]:
    """(ours, other's) nanoseconds per cycle: medians of 10 batches each, run
    alternately."""
    ours, theirs = interleaved_medians(
        [dispatch_batch(threads, cpus), dispatch_batch(threads, cpus, scheduler=other)], cycles
    )
    return ours, theirs


def heapq_batch(threads: int, seed: int = 0) -> Callable[[int], None]:
    """``run_batch(n)``: n heappop + heappush on a heap of ``threads`` floats.

    Each pushed key is the popped key plus one slice scaled by a random weight,
    the same key distribution the dispatcher's virtual finishes follow.
    """
    rng = random.Random(seed)
    heap = [rng.random() * SLICE_NS for _ in range(threads)]
    heapq.heapify(heap)
    steps = [SLICE_NS * 1024 / rng.randint(1, MAX_WEIGHT) for _ in range(4096)]
    pop, push = heapq.heappop, heapq.heappush

    def run_batch(n: int) -> None:
        for i in range(n):
            push(heap, pop(heap) + steps[i & 4095])

    return run_batch


def measure_heapq(threads: int, cycles: int, seed: int = 0) -> float:
    """Nanoseconds per heappop + heappush on a heap of ``threads`` floats."""
    return median_batch_ns(heapq_batch(threads, seed), cycles)


def run(
    threads: int,
    cpus: int,
    cycles: int,
    compare_core: str | None = None,
    reference: bool = True,
    memory: bool = True,
) -> dict:
    compared: dict = {}
    implementation = runqueue.IMPLEMENTATION
    # Ours, the other core if any, and the heapq baseline, batches interleaved.
    runs = [dispatch_batch(threads, cpus)]
    if compare_core is not None:
        runs.append(dispatch_batch(threads, cpus, scheduler=load_core(compare_core)))
    elif reference and implementation != "python":
        pure = load_core(CORE_DIR, "bench_reference_core", pure=True)
        assert implementation_of(pure) == "python"
        runs.append(dispatch_batch(threads, cpus, scheduler=pure))
    runs.append(heapq_batch(threads))
    dispatch_ns, *other, heapq_ns = interleaved_medians(runs, cycles)
    fast = getattr(runs[0].core, "_fast_cycle", None)  # type: ignore[attr-defined]
    cycle_report = {
        "cycle": "python" if fast is None else "c",
        "cycle_fallbacks": None if fast is None else fast.fallbacks,
        "cycle_calls": None if fast is None else fast.calls,
    }
    if compare_core is not None:
        compared = {
            "compared_core": compare_core,
            "compared_ns_per_dispatch": round(other[0], 1),
            "vs_compared": round(dispatch_ns / other[0], 3),
        }
    elif other:
        compared = {
            "reference_ns_per_dispatch": round(other[0], 1),
            "vs_reference": round(dispatch_ns / other[0], 3),
            "reference_ratio": round(other[0] / heapq_ns, 2),
        }
    ratio = dispatch_ns / heapq_ns
    memory_report: dict = {}
    if memory:
        per_thread = bytes_per_thread(threads, cpus)
        memory_report = {
            "bytes_per_thread": round(per_thread),
            "memory_goal_met": per_thread <= GOAL_BYTES_PER_THREAD,
        }
    return {
        "threads": threads,
        "cpus": cpus,
        "cycles": cycles,
        "implementation": implementation,
        **cycle_report,
        "ns_per_dispatch": round(dispatch_ns, 1),
        "heapq_ns": round(heapq_ns, 1),
        "ratio": round(ratio, 2),
        "ratio_goal_met": ratio <= GOAL_RATIO,
        **memory_report,
        **compared,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
    }


@click.command(
    "dispatch",
    epilog="""\b
Examples:
  capos-sched bench dispatch --threads 100000 --json
  capos-sched bench dispatch --threads 1000 --cpus 1 --cycles 10000
""",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 10_000_000),
    default=100_000,
    show_default=True,
    help="Runnable threads spread over the CPUs' queues.",
)
@click.option(
    "--cpus",
    type=click.IntRange(1, MAX_CPUS),
    default=4,
    show_default=True,
    help="Simulated CPUs taking turns (each pick walks its siblings).",
)
@click.option(
    "--cycles",
    type=click.IntRange(5, 100_000_000),
    default=200_000,
    show_default=True,
    help="Dispatch cycles timed (in 10 batches, interleaved with the baselines; median reported).",
)
@click.option(
    "--compare-core",
    type=click.Path(file_okay=False, exists=True),
    help="Also time the core package in this directory, interleaved with ours. "
    "[default: none (ours only)]",
)
@click.option(
    "--reference/--no-reference",
    default=True,
    show_default=True,
    help="When the C accelerator runs, also time the pure-Python reference, interleaved.",
)
@click.option(
    "--memory/--no-memory",
    default=True,
    show_default=True,
    help="Report bytes per thread in the loaded core (tracemalloc; loads it once more).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def dispatch(
    threads: int,
    cpus: int,
    cycles: int,
    compare_core: str | None,
    reference: bool,
    memory: bool,
    as_json: bool,
) -> None:
    """Cost of one dispatch cycle (pick, charge, re-enqueue, steal checks) at N threads,
    against heapq pop+push at the same N, measured in the same run."""
    if not as_json:
        click.echo(
            f"measuring {cycles} dispatch cycles at {threads} threads on {cpus} CPUs...", err=True
        )
    result = run(threads, cpus, cycles, compare_core, reference, memory)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"[{result['implementation']}, cycle {result['cycle']}]"
        f" {result['ns_per_dispatch']:.0f} ns per dispatch"
        f" vs heapq {result['heapq_ns']:.0f} ns -> ratio {result['ratio']:.2f}"
        f" (goal <= {GOAL_RATIO:g} at 100,000 threads: "
        f"{'met' if result['ratio_goal_met'] else 'not met'})"
    )
    if result["cycle"] == "c":
        click.echo(
            f"cycle in C: {result['cycle_calls'] - result['cycle_fallbacks']} of"
            f" {result['cycle_calls']} calls (the rest ran the Python methods)"
        )
    if "reference_ns_per_dispatch" in result:
        click.echo(
            f"pure-Python reference, interleaved: {result['reference_ns_per_dispatch']:.0f} ns"
            f" (accelerated / reference = {result['vs_reference']:.3f})"
        )
    if "bytes_per_thread" in result:
        click.echo(
            f"{result['bytes_per_thread']} bytes per thread in the core"
            f" (goal <= {GOAL_BYTES_PER_THREAD}: "
            f"{'met' if result['memory_goal_met'] else 'not met'})"
        )
    click.echo(f"load average (1 min): {result['load_avg_1m']}")


if __name__ == "__main__":
    dispatch()
