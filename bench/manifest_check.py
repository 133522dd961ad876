"""How long checking a manifest of 10,000 threads takes (goal: under 2 s).

It writes a manifest of 100 processes x 100 threads, every thread with a
weight and a finite spin workload (the thread line a real manifest has), then
times ``load_plan`` in-process (best and median of several runs) and one whole
``capos-sched check`` process (interpreter start-up and imports included).

Baseline, in the same run: ``json.loads`` of the same data written as JSON,
the floor for reading this much structure in Python (no grammar, no
unification, no validation).

    capos-sched bench manifest --json
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from capos_sched.manifest import load_plan


def manifest_text(processes: int, threads: int) -> tuple[str, str]:
    """The CUE manifest and the same data as JSON."""
    lines = ["package capos", "", "machine: cpus: 2", "", "processes: {"]
    data: dict = {"machine": {"cpus": 2}, "processes": {}}
    for p in range(processes):
        lines.append(f"\tp{p}: threads: {{")
        process = data["processes"][f"p{p}"] = {"threads": {}}
        for t in range(threads):
            weight = 1 + (t * 37) % 4096
            lines.append(
                f'\t\tt{t}: {{weight: {weight}, workload: {{kind: "spin", total: "{t + 1}ms"}}}}'
            )
            process["threads"][f"t{t}"] = {
                "weight": weight,
                "workload": {"kind": "spin", "total": f"{t + 1}ms"},
            }
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n", json.dumps(data)


def run(processes: int, threads: int, runs: int) -> dict:
    cue, as_json = manifest_text(processes, threads)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"threads-{processes * threads}.cue"
        path.write_text(cue)
        timings = []
        for _ in range(runs):
            start = time.perf_counter()
            plan = load_plan(path)
            timings.append(time.perf_counter() - start)
        if len(plan.threads()) != processes * threads:
            raise RuntimeError(f"plan has {len(plan.threads())} threads")
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-c", "from capos_sched.cli import main; main()", "check", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        whole = time.perf_counter() - start
        if completed.returncode != 0:
            raise RuntimeError(completed.stderr)
    baseline = []
    for _ in range(runs):
        start = time.perf_counter()
        json.loads(as_json)
        baseline.append(time.perf_counter() - start)
    return {
        "threads": processes * threads,
        "manifest_bytes": len(cue.encode()),
        "load_plan_s": {
            "best": round(min(timings), 3),
            "median": round(statistics.median(timings), 3),
        },
        "check_process_s": round(whole, 3),
        "json_loads_s": round(statistics.median(baseline), 4),
        "goal_s": 2.0,
        "goal_met": whole < 2.0,
    }


@click.command(
    "manifest",
    epilog="""\b
Examples:
  capos-sched bench manifest --json                  # 100 x 100 = 10,000 threads
  capos-sched bench manifest --processes 10 --threads 10 --runs 1
""",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Processes in the generated manifest.",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Threads per process.",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 50),
    default=5,
    show_default=True,
    help="Times each measurement is repeated (best and median reported).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def manifest(processes: int, threads: int, runs: int, as_json: bool) -> None:
    """Time checking a manifest of PROCESSES x THREADS threads (goal: 10,000 in under 2 s),
    against json.loads of the same data in the same run."""
    if not as_json:
        click.echo(f"checking a manifest of {processes * threads} threads...", err=True)
    result = run(processes, threads, runs)
    if as_json:
        click.echo(json.dumps(result))
        return
    load = result["load_plan_s"]
    click.echo(
        f"{result['threads']} threads ({result['manifest_bytes'] / 1024:.0f} KiB): load_plan best "
        f"{load['best']:.2f} s, median {load['median']:.2f} s; whole `check` process "
        f"{result['check_process_s']:.2f} s (goal < 2 s); json.loads of the same data "
        f"{result['json_loads_s'] * 1000:.0f} ms"
    )


if __name__ == "__main__":
    manifest()
