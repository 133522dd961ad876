"""The simulator at scale (issue 12, section 1).

Two generated manifests, each run in its own process (the goals are for the
whole process: interpreter start-up, imports, manifest load and simulation):

- ``hogs``: THREADS spinning threads at random weights (1..4096) on CPUS
  simulated CPUs (goal: 10,000 x 64 x 60 virtual seconds in under 60 s);
- ``mixed``: the same, but 30% of the threads (drawn at random) are
  interactive sleepers, 200 us of work every 5 ms (goal: 10,000 x 64 x 10
  virtual seconds in under 60 s).

Each run reports virtual seconds per wall second, events per second (events
taken off the simulator's event heap), peak RSS and the child's CPU time
(``process_cpu_s``, user + system: on a loaded host it moves much less than
the wall time, so it is the figure to compare two versions by). Baseline, measured in the
parent right after the child ended (so it is not part of the timed process):
a pure-``heapq`` event loop of the same event count, over a heap of the same
standing size (a stop per CPU plus a timer per sleeper), each event popped
and one pushed at a later time (the floor of a discrete event simulator in
Python, with no scheduling at all; the simulator's own heap is smaller, as it
holds only the first timer of each sleep period).

The child ends as ``capos-sched simulate`` does, with the interpreter's
teardown inside the timed process.

    capos-sched bench sim --json
    capos-sched bench sim --quick --json       # a tenth of the virtual time
"""

from __future__ import annotations

import heapq
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from capos_sched.runtime.commands import progress_option

GOAL_S = 60.0
INTERACTIVE_SHARE = 0.3
SCENARIOS = ("hogs", "mixed")
FULL_DURATION_S = {"hogs": 60.0, "mixed": 10.0}
QUICK_FACTOR = 10
"""--quick runs a tenth of the virtual time (same threads and CPUs)."""
GOAL_SHAPE = {"threads": 10_000, "cpus": 64}


def manifest_text(scenario: str, threads: int, cpus: int, seed: int = 0) -> str:
    """The CUE manifest of ``scenario``: 100 threads per process, weights and the
    interactive draw from ``random.Random(seed)`` (the same text for the same seed)."""
    rng = random.Random(seed)
    lines = ["package capos", "", f"machine: cpus: {cpus}", "", "processes: {"]
    per_process = 100
    for p in range((threads + per_process - 1) // per_process):
        lines.append(f"\tp{p}: threads: {{")
        for t in range(min(per_process, threads - p * per_process)):
            weight = rng.randint(1, 4096)
            if scenario == "mixed" and rng.random() < INTERACTIVE_SHARE:
                lines.append(
                    f'\t\tt{t}: {{weight: {weight}, class: "interactive", workload: '
                    '{kind: "sleeper", burst: "200us", period: "5ms"}}'
                )
            else:
                lines.append(f'\t\tt{t}: {{weight: {weight}, workload: kind: "spin"}}')
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def heapq_baseline(events: int, standing: int, seed: int = 0) -> float:
    """Seconds for ``events`` pops and pushes of ``(time, seq, kind, arg)`` events
    on a heap holding ``standing`` of them (the simulator's event tuples)."""
    rng = random.Random(seed)
    heap = [(rng.randrange(5_000_000), k, "stop", k) for k in range(max(1, standing))]
    heapq.heapify(heap)
    delays = [rng.randrange(50_000, 5_000_000) for _ in range(1024)]
    seq = len(heap)
    start = time.perf_counter()
    for i in range(events):
        at, _, kind, arg = heapq.heappop(heap)
        seq += 1
        heapq.heappush(heap, (at + delays[i & 1023], seq, kind, arg))
    return time.perf_counter() - start


def run_child(
    path: Path, duration_s: float, seed: int, progress_mode: str, policy: str = "wfq"
) -> dict[str, Any]:
    """One scenario, in this process: load, simulate, baseline; the figures."""
    from capos_sched.manifest import load_plan
    from capos_sched.runtime.progress import sim_progress
    from capos_sched.runtime.simulate import simulate_plan
    from capos_sched.workload import Sleeper

    start = time.perf_counter()
    plan = load_plan(path)
    loaded = time.perf_counter()
    counted: list[int] = [0]

    with sim_progress(progress_mode, f"bench sim {path.stem}") as shown:

        def progress(now_ns: int, end_ns: int, events: int) -> None:
            counted[0] = events
            if shown is not None:
                shown(now_ns, end_ns, events)

        report = simulate_plan(
            plan, duration_ns=int(duration_s * 1e9), seed=seed, policy=policy, progress=progress
        )
    simulated = time.perf_counter()
    events = counted[0]
    sleepers = sum(isinstance(t.workload, Sleeper) for t in plan.threads())
    simulate_s = simulated - loaded
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "policy": report["policy"],
        "threads": len(report["threads"]),
        "sleepers": sleepers,
        "cpus": report["cpus"],
        "virtual_s": report["elapsed_ns"] / 1e9,
        "load_s": round(loaded - start, 3),
        "simulate_s": round(simulate_s, 3),
        "events": events,
        "events_per_s": round(events / simulate_s),
        "virtual_s_per_wall_s": round(report["elapsed_ns"] / 1e9 / simulate_s, 4),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
    }


def with_baseline(result: dict[str, Any], seed: int) -> dict[str, Any]:
    """``result`` (a child's figures) with the heapq loop of its event count."""
    events = result["events"]
    baseline_s = heapq_baseline(events, result["cpus"] + result["sleepers"], seed)
    return {
        **result,
        "heapq_baseline_s": round(baseline_s, 6),
        "heapq_events_per_s": round(events / baseline_s) if baseline_s > 0 else None,
        "ratio_to_heapq": round(result["simulate_s"] / baseline_s, 1) if baseline_s > 0 else None,
    }


def run_scenario(
    scenario: str,
    threads: int,
    cpus: int,
    duration_s: float,
    seed: int,
    progress_mode: str,
    policy: str = "wfq",
) -> dict[str, Any]:
    """Write the manifest, run it in a fresh process, time that whole process."""
    with tempfile.TemporaryDirectory(prefix="capos-bench-sim-") as directory:
        path = Path(directory) / f"{scenario}-{threads}x{cpus}.cue"
        path.write_text(manifest_text(scenario, threads, cpus, seed))
        command = [
            sys.executable,
            "-c",
            "from bench.sim import child_main; child_main()",
            str(path),
            repr(duration_s),
            str(seed),
            progress_mode,
            policy,
        ]
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            stdout, _ = child.communicate()
        except KeyboardInterrupt:  # the child has it too: let it end by itself
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            raise
        process_s = time.perf_counter() - start
    if child.returncode != 0:
        raise click.ClickException(f"{scenario}: the child exited {child.returncode}")
    result = with_baseline(json.loads(stdout), seed)
    goal_shape = threads == GOAL_SHAPE["threads"] and cpus == GOAL_SHAPE["cpus"]
    full = goal_shape and duration_s >= FULL_DURATION_S[scenario] and policy == "wfq"
    return {
        "scenario": scenario,
        **result,
        "process_s": round(process_s, 3),
        "goal": f"{GOAL_SHAPE['threads']} threads x {GOAL_SHAPE['cpus']} CPUs x "
        f"{FULL_DURATION_S[scenario]:g} virtual s in under {GOAL_S:g} s (whole process)",
        "goal_met": (process_s < GOAL_S) if full else None,
        "projected_full_s": round(
            result["load_s"]
            + result["simulate_s"] * FULL_DURATION_S[scenario] / max(result["virtual_s"], 1e-9),
            1,
        )
        if goal_shape
        else None,
    }


def child_main() -> None:
    """The child process of one scenario (Ctrl-C reaches it too: it exits 130
    quietly and the parent reports the interruption)."""
    path, duration, seed, mode, policy = sys.argv[1:6]
    try:
        result = run_child(Path(path), float(duration), int(seed), mode, policy)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.stdout.write(json.dumps(result) + "\n")


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


@click.command(
    "sim",
    epilog="""\b
Examples:
  capos-sched bench sim --json                        # both goals: 10,000 threads x 64 CPUs
  capos-sched bench sim --quick --json                # a tenth of the virtual time (under load)
  capos-sched bench sim --scenario mixed --duration 2
  capos-sched bench sim --threads 2000 --cpus 16 --quick
  capos-sched bench sim --quick --policy eevdf --json

\b
Each scenario runs in its own process (the goals are for the whole process);
a progress line goes to stderr when it is a terminal (see --progress).
""",
)
@click.option(
    "--scenario",
    "scenarios",
    type=click.Choice(SCENARIOS),
    multiple=True,
    help="Run only this scenario (repeatable).  [default: hogs and mixed]",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 100_000),
    default=GOAL_SHAPE["threads"],
    show_default=True,
    help="Threads in each generated manifest.",
)
@click.option(
    "--cpus",
    type=click.IntRange(1, 64),
    default=GOAL_SHAPE["cpus"],
    show_default=True,
    help="Simulated CPUs.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Virtual seconds of every scenario.  [default: 60 for hogs, 10 for mixed]",
)
@click.option(
    "--quick",
    is_flag=True,
    help=f"A {QUICK_FACTOR}th of the default virtual time (6 s and 1 s), for a loaded host.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Weights, draw and jitter.")
@click.option(
    "--policy",
    type=click.Choice(["wfq", "eevdf", "fifo"]),
    default="wfq",
    show_default=True,
    help="The built-in policy simulated (the goals are judged for wfq, the default).",
)
@progress_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def sim(
    scenarios: tuple[str, ...],
    threads: int,
    cpus: int,
    duration: float | None,
    quick: bool,
    seed: int,
    policy: str,
    progress_mode: str,
    as_json: bool,
) -> None:
    """Run the simulator at scale (hogs, and a mixed manifest with 30% interactive
    sleepers) against a pure-heapq event loop of the same event count."""
    results = []
    for scenario in scenarios or SCENARIOS:
        virtual = duration or FULL_DURATION_S[scenario] / (QUICK_FACTOR if quick else 1)
        if not as_json:
            click.echo(
                f"{scenario}: {threads} threads x {cpus} CPUs x {virtual:g} virtual s...",
                err=True,
            )
        results.append(run_scenario(scenario, threads, cpus, virtual, seed, progress_mode, policy))
    document = {
        "benchmark": "sim",
        "quick": quick,
        "seed": seed,
        "policy": policy,
        "load_average": _load_average(),
        "cpu_count": os.cpu_count(),
        "scenarios": results,
    }
    if as_json:
        click.echo(json.dumps(document))
        return
    for r in results:
        met = {True: "met", False: "NOT met", None: "not judged at this size"}[r["goal_met"]]
        click.echo(
            f"{r['scenario']} ({r['policy']}): {r['threads']} threads x {r['cpus']} CPUs x "
            f"{r['virtual_s']:g} virtual s: whole process {r['process_s']:.1f} s "
            f"(load {r['load_s']:.1f} s, simulate {r['simulate_s']:.1f} s); "
            f"{r['virtual_s_per_wall_s']:.3f} virtual s per wall s; "
            f"{r['events_per_s']:,} events/s ({r['ratio_to_heapq']}x the heapq loop); "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB; goal {met}"
        )
    click.echo(f"load average {document['load_average']}")


if __name__ == "__main__":
    sim()
