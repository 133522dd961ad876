"""Linux baselines for the Phase D matrix: the same shapes as real processes.

Everything here runs plain processes under the host kernel's scheduler (EEVDF
or CFS), pinned with ``sched_setaffinity`` to the cores the runtime's workers
use, weighted with nice values. CPU time is read from
``/proc/<pid>/schedstat`` (nanoseconds; ``utime + stime`` from
``/proc/<pid>/stat`` in clock ticks when schedstat is missing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Linux's sched_prio_to_weight, nice -20 .. 19.
NICE_TO_WEIGHT = (
    88761, 71755, 56483, 46273, 36291,
    29154, 23254, 18705, 14949, 11916,
    9548, 7620, 6100, 4904, 3906,
    3121, 2501, 1991, 1586, 1277,
    1024, 820, 655, 526, 423,
    335, 272, 215, 172, 137,
    110, 87, 70, 56, 45,
    36, 29, 23, 18, 15,
)  # fmt: skip

HOG = "while True:\n    pass\n"

SLEEPER = r"""
import json, sys, time
burst, period, duration = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
clock = time.perf_counter_ns
late = []
end = clock() + int(duration * 1e9)
while clock() < end:
    stop = clock() + burst
    while clock() < stop:
        pass
    deadline = clock() + period
    time.sleep(period / 1e9)
    late.append(clock() - deadline)
print(json.dumps(late))
"""

HASHER = r"""
import hashlib, random, sys, time
blocks, size, rounds = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
pattern = random.Random(1).randbytes(min(blocks * size, 1 << 20))
data = memoryview((pattern * (blocks * size // len(pattern) + 1))[: blocks * size])
acc = 0
for g in range(blocks * rounds):
    i = g % blocks
    d = hashlib.blake2b(data[i * size : (i + 1) * size], digest_size=8).digest()
    acc = ((acc * 31) ^ int.from_bytes(d, "little")) & ((1 << 64) - 1)
print(acc)
"""


def nice_weight(nice: int) -> int:
    return NICE_TO_WEIGHT[nice + 20]


def cpu_time_ns(pid: int) -> int:
    """CPU time a process has used, in nanoseconds."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _spawn(code: str, args: Sequence[str], nice: int, cores: Sequence[int]) -> subprocess.Popen:
    base = os.getpriority(os.PRIO_PROCESS, 0)

    def setup() -> None:
        os.setpriority(os.PRIO_PROCESS, 0, base + nice)
        os.sched_setaffinity(0, set(cores))

    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        preexec_fn=setup,  # no threads run in the benchmark process here
    )


def _stop(procs: Sequence[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def hog_runtimes(
    nices: Sequence[int], cores: Sequence[int], window_s: float, warmup_s: float = 0.3
) -> list[int]:
    """CPU time (ns) each nice-weighted hog got over ``window_s``, all pinned to ``cores``."""
    procs = [_spawn(HOG, (), nice, cores) for nice in nices]
    try:
        time.sleep(warmup_s)
        before = [cpu_time_ns(p.pid) for p in procs]
        time.sleep(window_s)
        after = [cpu_time_ns(p.pid) for p in procs]
    finally:
        _stop(procs)
    return [a - b for a, b in zip(after, before, strict=True)]


def sleeper_oversleep(
    burst_ns: int, period_ns: int, hogs: int, cores: Sequence[int], window_s: float
) -> list[int]:
    """Oversleep samples (ns past the requested wake-up until running again) of
    a sleeper computing ``burst_ns`` per period beside ``hogs`` CPU hogs."""
    hog_procs = [_spawn(HOG, (), 0, cores) for _ in range(hogs)]
    sleeper = None
    try:
        time.sleep(0.2)
        sleeper = _spawn(SLEEPER, (str(burst_ns), str(period_ns), str(window_s)), 0, cores)
        out, _ = sleeper.communicate(timeout=window_s + 30)
        return [int(x) for x in json.loads(out)]
    finally:
        _stop(hog_procs + ([sleeper] if sleeper is not None else []))


def hash_elapsed_ns(
    threads: int, blocks: int, block_size: int, rounds: int, cores: Sequence[int]
) -> int:
    """Wall time for ``threads`` processes hashing the thread-scale work on ``cores``."""
    start = time.perf_counter_ns()
    procs = [
        _spawn(HASHER, (str(blocks), str(block_size), str(rounds)), 0, cores)
        for _ in range(threads)
    ]
    try:
        for proc in procs:
            proc.wait()
    finally:
        _stop(procs)
    return time.perf_counter_ns() - start
