"""Benchmark: how long checking a manifest of 10,000 threads takes.

Not a test (pytest does not collect it): run ``python -m tests.manifest.bench_check``.
It writes a manifest of 100 processes x 100 threads, every thread with a
weight and a finite spin workload (the thread line a real manifest has), then
times ``load_plan`` in-process (best of several runs) and one whole
``capos-sched check`` process (interpreter start-up and imports included).
The goal from issue 3 is under 2 s; docs/manifests.md records the figures.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from capos_sched.manifest import load_plan


def manifest(processes: int = 100, threads: int = 100) -> str:
    lines = ["package capos", "", "machine: cpus: 2", "", "processes: {"]
    for p in range(processes):
        lines.append(f"\tp{p}: threads: {{")
        for t in range(threads):
            weight = 1 + (t * 37) % 4096
            lines.append(
                f'\t\tt{t}: {{weight: {weight}, workload: {{kind: "spin", total: "{t + 1}ms"}}}}'
            )
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "threads-10000.cue"
        path.write_text(manifest())
        size = path.stat().st_size
        timings = []
        for _ in range(5):
            start = time.perf_counter()
            plan = load_plan(path)
            timings.append(time.perf_counter() - start)
        assert len(plan.threads()) == 10_000
        start = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, "-c", "from capos_sched.cli import main; main()", "check", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        whole = time.perf_counter() - start
        assert completed.returncode == 0, completed.stderr
    print(f"manifest: 10,000 threads, {size / 1024:.0f} KiB")
    print(f"load_plan: best {min(timings):.2f} s, median {sorted(timings)[2]:.2f} s (5 runs)")
    print(f"capos-sched check (whole process): {whole:.2f} s")


if __name__ == "__main__":
    main()
