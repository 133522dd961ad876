"""Plans and run helpers for the runtime tests."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import trio

from capos_sched.core import LatencyClass
from capos_sched.manifest.plan import MachinePlan, Plan, ProcessPlan, ThreadPlan
from capos_sched.runtime.runtime import Runtime, RuntimeConfig
from capos_sched.runtime.trace import TraceRecorder
from capos_sched.workload import Workload

MS = 1_000_000


def thread(
    full_name: str,
    workload: Workload,
    weight: int = 1024,
    latency_class: str = "normal",
) -> ThreadPlan:
    process, name = full_name.split("/")
    return ThreadPlan(process, name, weight, LatencyClass.parse(latency_class), workload)


def plan(*threads: ThreadPlan, cpus: int = 1, policy: str = "wfq", slice_ns: int = 4 * MS) -> Plan:
    processes: dict[str, list[ThreadPlan]] = {}
    for t in threads:
        processes.setdefault(t.process, []).append(t)
    return Plan(
        "<test>",
        MachinePlan(cpus, policy, slice_ns),
        tuple(ProcessPlan(name, tuple(ts)) for name, ts in processes.items()),
    )


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in report["threads"]}


async def run_for(
    the_plan: Plan,
    duration_s: float | None,
    *,
    trace: bool = False,
    **config: Any,
) -> tuple[Runtime, dict[str, Any], dict[str, Any] | None]:
    """Run a plan on a fresh Runtime; (runtime, report, trace document)."""
    recorder = TraceRecorder(the_plan.machine.cpus) if trace else None
    runtime = Runtime(the_plan, config=RuntimeConfig(**config), trace=recorder)
    await runtime.run(duration_s=duration_s)
    return runtime, runtime.report(), recorder.document() if recorder else None


def dispatches(doc: dict[str, Any], name: str | None = None) -> list[dict[str, Any]]:
    """The trace's dispatch slices (optionally of one thread), in time order."""
    events = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    if name is not None:
        events = [e for e in events if e["name"] == name]
    return sorted(events, key=lambda e: e["ts"])


def expected_hash(data_id: int, blocks: int, block_size: int, rounds: int) -> int:
    """The accumulator a hash thread must end with (same data and fold as the runtime)."""
    size = blocks * block_size
    pattern = random.Random(data_id).randbytes(min(size, 1 << 20))
    data = (pattern * (size // len(pattern) + 1))[:size]
    acc = 0
    for g in range(blocks * rounds):
        i = g % blocks
        digest = hashlib.blake2b(data[i * block_size : (i + 1) * block_size], digest_size=8)
        acc = ((acc * 31) ^ int.from_bytes(digest.digest(), "little")) & ((1 << 64) - 1)
    return acc


async def wait_until(predicate: Any, timeout_s: float = 10.0, step_s: float = 0.005) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(step_s)
