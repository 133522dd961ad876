"""Cost of one full dispatch cycle of the core, against ``heapq`` at the same size.

A cycle is what a CPU does at every slice end: ``preempt_current`` (charge the
running thread and re-enqueue it at its ordered place) and ``pick_next`` (IPC
slot check, steal/pull walk over the siblings, pop the front, dispatch). The
CPUs take turns, so every cycle sees ``threads`` runnable threads spread over
``cpus`` queues, with steal checks on every pick.

The baseline, measured in the same process right after, is Python's ``heapq``
doing one ``heappop`` + ``heappush`` on a heap of ``threads`` floats, pushing
keys that advance like virtual finishes do: the least a heap-ordered
dispatcher written in Python could cost.

    python -m bench.dispatch --threads 100000 --json
"""

from __future__ import annotations

import gc
import heapq
import json
import random
import statistics
import sys
import time
from collections.abc import Callable

import click

from capos_sched.core import MAX_WEIGHT, SLICE_NS, QueueCpu, Scheduler
from capos_sched.core.constants import MAX_CPUS


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


def measure_dispatch(threads: int, cpus: int, cycles: int, seed: int = 0) -> float:
    """Nanoseconds per dispatch cycle."""
    rng = random.Random(seed)
    core = Scheduler(cpus)
    for i in range(threads):
        core.spawn(f"t{i}", 0, rng.randint(1, MAX_WEIGHT), placement=QueueCpu(i % cpus))
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

    return median_batch_ns(run_batch, cycles)


def measure_heapq(threads: int, cycles: int, seed: int = 0) -> float:
    """Nanoseconds per heappop + heappush on a heap of ``threads`` floats.

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

    return median_batch_ns(run_batch, cycles)


def run(threads: int, cpus: int, cycles: int) -> dict:
    dispatch_ns = measure_dispatch(threads, cpus, cycles)
    heapq_ns = measure_heapq(threads, cycles)
    return {
        "threads": threads,
        "cpus": cpus,
        "cycles": cycles,
        "ns_per_dispatch": round(dispatch_ns, 1),
        "heapq_ns": round(heapq_ns, 1),
        "ratio": round(dispatch_ns / heapq_ns, 2),
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
    help="Dispatch cycles timed (in 5 batches; median reported).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def dispatch(threads: int, cpus: int, cycles: int, as_json: bool) -> None:
    """Cost of one dispatch cycle (pick, charge, re-enqueue, steal checks) at N threads,
    against heapq pop+push at the same N, measured in the same run."""
    if not as_json:
        click.echo(
            f"measuring {cycles} dispatch cycles at {threads} threads on {cpus} CPUs...", err=True
        )
    result = run(threads, cpus, cycles)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{result['ns_per_dispatch']:.0f} ns per dispatch vs heapq {result['heapq_ns']:.0f} ns"
        f" -> ratio {result['ratio']:.2f} (goal <= 3 at 100,000 threads)"
    )


if __name__ == "__main__":
    dispatch()
