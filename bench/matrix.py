"""The Phase D test matrix, measured on the real runtime beside its baselines.

Five cases, each a shipped manifest, each run ``--runs`` times; every figure is
the median over the runs with its spread (min-max). Within one run the runtime
variants and the Linux baselines are measured back to back, so they see the
same machine:

1. CPU hogs 2:1:1 (``system-thread-fairness.cue``) on 1 and 2 CPUs over a
   window: maximum relative error of the runtime shares against the
   water-filled ideal; FIFO on 2 CPUs; Linux: three pinned hog processes at
   nice 0/3/3 (1024:526:526), CPU time from ``/proc``.
2. Short sleepers (``thread-fairness-interactive.cue``): wake-to-run latency
   of the interactive sleeper beside a hog on 1 CPU, with wake-up preemption,
   without it, as class ``normal``, and under FIFO; Linux: a sleeping process
   beside a pinned hog (its oversleep).
3. Direct IPC pairs (``ipc-pairs.cue``): client round trips under WFQ and FIFO.
4. Multi-process (``multi-process.cue``): per-process share error; FIFO;
   Linux with nice 0/3/6 (its own weights give its ideal).
5. Thread scale (``thread-scale.cue``): elapsed on 1 CPU / elapsed on 2 CPUs;
   Linux: the same hashing in pinned processes on 1 and on 2 cores.

    capos-sched bench matrix --runs 3 --json
    capos-sched bench matrix --runs 5 --write-docs   # record docs/benchmarks.md
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import trio

from bench import linux_baseline as linux
from capos_sched.core import LatencyClass, ideal_shares
from capos_sched.manifest import Plan, load_plan
from capos_sched.manifest.plan import ProcessPlan
from capos_sched.runtime.runtime import Runtime, RuntimeConfig
from capos_sched.runtime.stats import percentile
from capos_sched.runtime.workers import pinned_cores
from capos_sched.workload import Hash

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
DOCS = ROOT / "docs" / "benchmarks.md"
RESULTS = ROOT / "bench" / "results" / "matrix.json"
SECTION = "## Phase D matrix"
CASES = ("fairness", "sleepers", "ipc", "multiprocess", "scale")

GATE_FAIRNESS_1CPU = 0.01
GATE_FAIRNESS_2CPU = 0.02
GATE_IPC_RATIO = 1.10
GATE_SCALE = 1.6


def say(message: str) -> None:
    click.echo(message, err=True)


# ------------------------------------------------------------------ helpers


def load(name: str) -> Plan:
    return load_plan(MANIFESTS / name)


def run_plan(
    plan: Plan,
    *,
    duration_s: float | None,
    cpus: int | None = None,
    policy: str | None = None,
    config: RuntimeConfig | None = None,
) -> Runtime:
    runtime = Runtime(plan, policy, cpus, config=config or RuntimeConfig())
    trio.run(functools.partial(runtime.run, duration_s=duration_s))
    return runtime


def with_class(plan: Plan, full_name: str, latency_class: LatencyClass) -> Plan:
    """``plan`` with one thread's class changed."""
    import attrs

    processes = []
    for process in plan.processes:
        threads = tuple(
            attrs.evolve(t, latency_class=latency_class) if t.full_name == full_name else t
            for t in process.threads
        )
        processes.append(ProcessPlan(process.name, threads, process.exec, process.grants))
    return Plan(plan.source, plan.machine, tuple(processes))


def max_share_error(runtimes: Sequence[float], ideals: Sequence[float]) -> float:
    """Max relative error of the observed fractions against the ideal fractions."""
    total, ideal_total = sum(runtimes), sum(ideals)
    if total <= 0:
        return float("inf")
    return max(
        abs(r / total - i / ideal_total) / (i / ideal_total)
        for r, i in zip(runtimes, ideals, strict=True)
    )


def thread_share_error(runtime: Runtime) -> float:
    report = runtime.report()
    weights = [t["weight"] for t in report["threads"]]
    return max_share_error(
        [t["runtime_ns"] for t in report["threads"]], ideal_shares(weights, runtime.cpus)
    )


def process_share_error(runtime: Runtime) -> float:
    report = runtime.report()
    ideal = ideal_shares([t["weight"] for t in report["threads"]], runtime.cpus)
    got: dict[str, float] = {}
    want: dict[str, float] = {}
    for t, share in zip(report["threads"], ideal, strict=True):
        got[t["process"]] = got.get(t["process"], 0) + t["runtime_ns"]
        want[t["process"]] = want.get(t["process"], 0) + share
    names = sorted(got)
    return max_share_error([got[n] for n in names], [want[n] for n in names])


def summary(samples: Sequence[int]) -> dict[str, int] | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "p50": percentile(ordered, 0.5),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1],
    }


def spread(values: Sequence[float]) -> dict[str, Any]:
    """Median and min-max of one figure over the runs."""
    clean = [v for v in values if v is not None]
    if not clean:
        return {"median": None, "min": None, "max": None, "runs": list(values)}
    return {
        "median": statistics.median(clean),
        "min": min(clean),
        "max": max(clean),
        "runs": list(values),
    }


def _busy_ns() -> int:
    """CPU time the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (
        (user + nice + system + irq + softirq + steal) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    )


def _own_ns() -> int:
    """CPU time of this process and its reaped children (workers, baseline processes)."""
    t = os.times()
    return int((t.user + t.system + t.children_user + t.children_system) * 1e9)


class ForeignLoad:
    """CPUs' worth of work done on the machine by processes that are not ours."""

    def __init__(self) -> None:
        self.wall, self.busy, self.own = time.monotonic_ns(), _busy_ns(), _own_ns()

    def cpus(self) -> float:
        wall = time.monotonic_ns() - self.wall
        foreign = (_busy_ns() - self.busy) - (_own_ns() - self.own)
        return max(0.0, foreign / max(wall, 1))


def settle(max_wait_s: float, threshold_cpus: float = 0.3) -> float:
    """Wait (at most ``max_wait_s``) until others use less than ``threshold_cpus``
    over one second; return the last measured foreign load."""
    deadline = time.monotonic() + max_wait_s
    while True:
        probe = ForeignLoad()
        time.sleep(1.0)
        load = probe.cpus()
        if load < threshold_cpus or time.monotonic() >= deadline:
            return load
        say(f"  machine busy ({load:.2f} CPUs used by others); waiting...")


# -------------------------------------------------------------------- cases


def case_fairness(window_s: float) -> dict[str, Any]:
    plan = load("system-thread-fairness.cue")
    out: dict[str, Any] = {}
    for cpus in (1, 2):
        out[f"wfq_{cpus}cpu_error"] = thread_share_error(
            run_plan(plan, duration_s=window_s, cpus=cpus, policy="wfq")
        )
    out["fifo_2cpu_error"] = thread_share_error(
        run_plan(plan, duration_s=window_s, cpus=2, policy="fifo")
    )
    nices = (0, 3, 3)
    for cpus in (1, 2):
        cores = pinned_cores(cpus) or list(range(cpus))
        runtimes = linux.hog_runtimes(nices, cores, window_s)
        ideals = ideal_shares([linux.nice_weight(n) for n in nices], cpus)
        out[f"linux_{cpus}cpu_error"] = max_share_error(runtimes, ideals)
    return out


def case_sleepers(window_s: float) -> dict[str, Any]:
    plan = load("thread-fairness-interactive.cue")
    sleeper = next(t for t in plan.threads() if t.latency_class is LatencyClass.INTERACTIVE)
    variants: dict[str, tuple[Plan, str | None, RuntimeConfig]] = {
        "interactive": (plan, None, RuntimeConfig()),
        "interactive_no_preemption": (plan, None, RuntimeConfig(wake_preemption=False)),
        "normal": (with_class(plan, sleeper.full_name, LatencyClass.NORMAL), None, RuntimeConfig()),
        "fifo": (plan, "fifo", RuntimeConfig()),
    }
    out: dict[str, Any] = {"slice_ns": plan.machine.slice_ns}
    for name, (variant, policy, config) in variants.items():
        runtime = run_plan(variant, duration_s=window_s, policy=policy, config=config)
        rt = runtime.thread(sleeper.full_name)
        assert rt is not None
        out[name] = {
            "wake_latency_ns": summary(list(rt.wake_latency.recent)),
            "oversleep_ns": summary(list(rt.oversleep.recent)),
            "wake_preemptions": runtime.report()["wake_preemptions"],
        }
    burst, period = sleeper.workload.burst_ns, sleeper.workload.period_ns
    cores = pinned_cores(1) or [0]
    out["linux"] = {
        "oversleep_ns": summary(linux.sleeper_oversleep(burst, period, 1, cores, window_s))
    }
    return out


def case_ipc() -> dict[str, Any]:
    """WFQ and FIFO in ABBA order (cancels a load that drifts during the case),
    round trips pooled per policy."""
    plan = load("ipc-pairs.cue")
    clients = [t.full_name for t in plan.threads() if t.workload.kind == "ipcClient"]
    samples: dict[str, list[int]] = {"wfq": [], "fifo": []}
    elapsed: dict[str, list[int]] = {"wfq": [], "fifo": []}
    overhead: dict[str, list[int]] = {"wfq": [], "fifo": []}
    for policy in ("wfq", "fifo", "fifo", "wfq"):
        runtime = run_plan(plan, duration_s=60.0, policy=policy)
        for name in clients:
            rt = runtime.thread(name)
            assert rt is not None
            samples[policy].extend(rt.round_trips.recent)
        report = runtime.report()
        elapsed[policy].append(report["elapsed_ns"])
        overhead[policy].append(report["dispatch_overhead_ns"]["p50"] or 0)
    return {
        policy: {
            "round_trip_ns": summary(samples[policy]),
            "elapsed_ns": statistics.median(elapsed[policy]),
            "dispatch_overhead_p50_ns": statistics.median(overhead[policy]),
        }
        for policy in ("wfq", "fifo")
    }


def case_multiprocess(window_s: float) -> dict[str, Any]:
    plan = load("multi-process.cue")
    out: dict[str, Any] = {
        "wfq_error": process_share_error(run_plan(plan, duration_s=window_s, policy="wfq")),
        "fifo_error": process_share_error(run_plan(plan, duration_s=window_s, policy="fifo")),
    }
    process_nice = {"gold": 0, "silver": 3, "bronze": 6}
    threads = plan.threads()
    nices = [process_nice.get(t.process, 0) for t in threads]
    cpus = plan.machine.cpus
    runtimes = linux.hog_runtimes(nices, pinned_cores(cpus) or list(range(cpus)), window_s)
    ideal = ideal_shares([linux.nice_weight(n) for n in nices], cpus)
    got: dict[str, float] = {}
    want: dict[str, float] = {}
    for t, r, i in zip(threads, runtimes, ideal, strict=True):
        got[t.process] = got.get(t.process, 0) + r
        want[t.process] = want.get(t.process, 0) + i
    names = sorted(got)
    out["linux_error"] = max_share_error([got[n] for n in names], [want[n] for n in names])
    return out


def case_scale() -> dict[str, Any]:
    plan = load("thread-scale.cue")
    elapsed = {}
    for cpus in (1, 2):
        runtime = run_plan(plan, duration_s=120.0, cpus=cpus)
        report = runtime.report()
        assert report["stop_reason"] == "finished", report["stop_reason"]
        elapsed[cpus] = report["elapsed_ns"]
    spec = plan.threads()[0].workload
    assert isinstance(spec, Hash)
    n = len(plan.threads())
    linux_elapsed = {
        cpus: linux.hash_elapsed_ns(
            n, spec.blocks, spec.block_size, spec.rounds, pinned_cores(cpus) or list(range(cpus))
        )
        for cpus in (1, 2)
    }
    return {
        "elapsed_1cpu_ns": elapsed[1],
        "elapsed_2cpu_ns": elapsed[2],
        "speedup": elapsed[1] / elapsed[2],
        "linux_elapsed_1cpu_ns": linux_elapsed[1],
        "linux_elapsed_2cpu_ns": linux_elapsed[2],
        "linux_speedup": linux_elapsed[1] / linux_elapsed[2],
    }


# ---------------------------------------------------------------- aggregate


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Flatten nested dicts of numbers to {path: number}."""
    if isinstance(value, dict):
        flat: dict[tuple[str, ...], Any] = {}
        for key, inner in value.items():
            flat.update(_paths(inner, (*prefix, str(key))))
        return flat
    return {prefix: value}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and spread of every numeric leaf across runs, same nesting."""
    flats = [_paths(run) for run in runs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    out: dict[str, Any] = {}
    for key in keys:
        values = [flat.get(key) for flat in flats]
        node = out
        for part in key[:-1]:
            node = node.setdefault(part, {})
        if all(isinstance(v, int | float) or v is None for v in values):
            node[key[-1]] = spread(values)
        else:
            node[key[-1]] = values[0]
    return out


def med(agg: dict[str, Any], *path: str) -> float | None:
    node: Any = agg
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node.get("median") if isinstance(node, dict) else None


def gates(agg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    def gate(value: float | None, limit: float, kind: str) -> dict[str, Any]:
        passed = None if value is None else (value <= limit if kind == "max" else value >= limit)
        return {"value": value, "limit": limit, "kind": kind, "pass": passed}

    result: dict[str, dict[str, Any]] = {}
    if "fairness" in agg:
        result["fairness_1cpu_error"] = gate(
            med(agg, "fairness", "wfq_1cpu_error"), GATE_FAIRNESS_1CPU, "max"
        )
        result["fairness_2cpu_error"] = gate(
            med(agg, "fairness", "wfq_2cpu_error"), GATE_FAIRNESS_2CPU, "max"
        )
    if "sleepers" in agg:
        slice_ns = med(agg, "sleepers", "slice_ns") or 4_000_000
        p99 = med(agg, "sleepers", "interactive", "wake_latency_ns", "p99")
        result["sleeper_p99_le_slice"] = gate(p99, slice_ns, "max")
        result["sleeper_p99_le_quarter_slice (goal)"] = gate(p99, slice_ns / 4, "max")
    if "ipc" in agg:
        for stat in ("p50", "p99"):
            wfq = med(agg, "ipc", "wfq", "round_trip_ns", stat)
            fifo = med(agg, "ipc", "fifo", "round_trip_ns", stat)
            ratio = None if not wfq or not fifo else wfq / fifo
            result[f"ipc_{stat}_wfq_over_fifo"] = gate(ratio, GATE_IPC_RATIO, "max")
    if "multiprocess" in agg:
        result["multiprocess_error"] = gate(
            med(agg, "multiprocess", "wfq_error"), GATE_FAIRNESS_2CPU, "max"
        )
    if "scale" in agg:
        result["scale_speedup"] = gate(med(agg, "scale", "speedup"), GATE_SCALE, "min")
    return result


# -------------------------------------------------------------------- docs


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _spread(node: dict[str, Any] | None, fmt: Callable[[float], str]) -> str:
    """``median (min - max)`` of an aggregated figure, or ``-`` when absent."""
    if not node or node.get("median") is None:
        return "-"
    return f"{fmt(node['median'])} ({fmt(node['min'])} - {fmt(node['max'])})"


def _spread_pct(node: dict[str, Any] | None) -> str:
    return _spread(node, _pct)


def _spread_us(node: dict[str, Any] | None) -> str:
    return _spread(node, lambda ns: f"{ns / 1e3:,.0f}")


def _spread_x(node: dict[str, Any] | None, scale: float = 1.0) -> str:
    return _spread(node, lambda value: f"{value / scale:.2f}")


def _load_line(case: dict[str, Any]) -> str:
    node = case.get("foreign_load_cpus")
    if not node or node.get("median") is None:
        return ""
    return (
        f"Other processes on the machine used {node['median']:.2f} CPUs "
        f"({node['min']:.2f} - {node['max']:.2f}) while this case ran."
    )


def render_markdown(result: dict[str, Any]) -> str:
    agg = result["matrix"]
    runs = result["runs"]
    lines = [
        SECTION,
        "",
        f"`capos-sched bench matrix --runs {runs}` ({result['date']}, {result['machine']}, "
        f"Python {result['python']}; {result['seconds']:.0f} s in all). Every figure is the "
        f"median of {runs} runs with the min - max spread in parentheses; within a run, "
        "every column was measured back to back on the same machine. The runtime's workers "
        "run at nice +10, pinned one per core; the Linux baselines are real processes pinned "
        "to the same cores. Raw numbers: `bench/results/matrix.json`.",
        "",
    ]
    g = result["gates"]

    def verdict(name: str) -> str:
        entry = g.get(name)
        if not entry or entry["pass"] is None:
            return "not measured"
        return "**pass**" if entry["pass"] else "**FAIL**"

    if "fairness" in agg:
        f = agg["fairness"]
        lines += [
            "### 1. CPU hogs 2:1:1 (`system-thread-fairness.cue`)",
            "",
            f"Maximum relative error of the runtime shares against the water-filled ideal, "
            f"{result['window_s']:g} s window.",
            "",
            "| CPUs | WFQ | FIFO | Linux nice 0/3/3 | gate | result |",
            "| ---: | ---: | ---: | ---: | ---: | --- |",
            f"| 1 | {_spread_pct(f.get('wfq_1cpu_error'))} | - | "
            f"{_spread_pct(f.get('linux_1cpu_error'))} | <= 1% | "
            f"{verdict('fairness_1cpu_error')} |",
            f"| 2 | {_spread_pct(f.get('wfq_2cpu_error'))} | "
            f"{_spread_pct(f.get('fifo_2cpu_error'))} | "
            f"{_spread_pct(f.get('linux_2cpu_error'))} | <= 2% | "
            f"{verdict('fairness_2cpu_error')} |",
            "",
            _load_line(f),
            "",
        ]
    if "sleepers" in agg:
        s = agg["sleepers"]
        lines += [
            "### 2. Short sleepers (`thread-fairness-interactive.cue`, 1 CPU)",
            "",
            "Wake latency: from the timer wake (the sleeper made runnable) to running on "
            "a worker. Oversleep: from the requested wake-up time to running, which also "
            "counts the daemon's timer lateness (sleeper timers are timerfds armed at "
            "the absolute deadline, `capos_sched/runtime/timers.py`); it is the figure "
            "comparable with Linux's. Microseconds.",
            "",
            "| variant | wake p50 | wake p99 | wake max | oversleep p50 | oversleep p99 |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for key, label in (
            ("interactive", "interactive, wake-up preemption (WFQ)"),
            ("interactive_no_preemption", "interactive, no wake-up preemption"),
            ("normal", "class normal"),
            ("fifo", "FIFO"),
            ("linux", "Linux: sleeping process beside a hog"),
        ):
            v = s.get(key, {})
            wake = v.get("wake_latency_ns") or {}
            over = v.get("oversleep_ns") or {}
            lines.append(
                f"| {label} | {_spread_us(wake.get('p50'))} | {_spread_us(wake.get('p99'))} | "
                f"{_spread_us(wake.get('max'))} | {_spread_us(over.get('p50'))} | "
                f"{_spread_us(over.get('p99'))} |"
            )
        lines += [
            "",
            f"Gate p99 <= one slice (4 ms): {verdict('sleeper_p99_le_slice')}. "
            f"Goal p99 <= slice / 4 with wake-up preemption: "
            f"{verdict('sleeper_p99_le_quarter_slice (goal)')}. " + _load_line(s),
            "",
        ]
    if "ipc" in agg:
        i = agg["ipc"]
        lines += [
            "### 3. Direct IPC pairs (`ipc-pairs.cue`, 2 CPUs, 2 pairs + 2 hogs)",
            "",
            "Client round trip: from the call to the client running again with the reply. "
            "Microseconds; each run measures WFQ, FIFO, FIFO, WFQ and pools both clients' "
            "calls per policy.",
            "",
            "| policy | p50 | p99 | max | run time s |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for policy in ("wfq", "fifo"):
            rtt = i.get(policy, {}).get("round_trip_ns", {})
            lines.append(
                f"| {policy.upper()} | {_spread_us(rtt.get('p50'))} | {_spread_us(rtt.get('p99'))}"
                f" | {_spread_us(rtt.get('max'))} | "
                f"{_spread_x(i.get(policy, {}).get('elapsed_ns'), 1e9)} |"
            )
        lines += [
            "",
            f"Gate WFQ within 10% of FIFO: p50 {verdict('ipc_p50_wfq_over_fifo')} "
            f"(ratio {g.get('ipc_p50_wfq_over_fifo', {}).get('value') or 0:.2f}), "
            f"p99 {verdict('ipc_p99_wfq_over_fifo')} "
            f"(ratio {g.get('ipc_p99_wfq_over_fifo', {}).get('value') or 0:.2f}). " + _load_line(i),
            "",
        ]
    if "multiprocess" in agg:
        m = agg["multiprocess"]
        lines += [
            "### 4. Multi-process load (`multi-process.cue`, 2 CPUs, weights 2048/1024/512)",
            "",
            "Maximum relative error of per-process shares against the ideal.",
            "",
            "| WFQ | FIFO | Linux nice 0/3/6 | gate | result |",
            "| ---: | ---: | ---: | ---: | --- |",
            f"| {_spread_pct(m.get('wfq_error'))} | {_spread_pct(m.get('fifo_error'))} | "
            f"{_spread_pct(m.get('linux_error'))} | <= 2% | {verdict('multiprocess_error')} |",
            "",
            _load_line(m),
            "",
        ]
    if "scale" in agg:
        c = agg["scale"]
        lines += [
            "### 5. Thread scale (`thread-scale.cue`, 4 finite `hash` threads)",
            "",
            "| | 1 CPU s | 2 CPUs s | speedup | gate | result |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
            f"| runtime (WFQ) | {_spread_x(c.get('elapsed_1cpu_ns'), 1e9)} | "
            f"{_spread_x(c.get('elapsed_2cpu_ns'), 1e9)} | {_spread_x(c.get('speedup'))} | "
            f">= 1.6x | {verdict('scale_speedup')} |",
            f"| Linux processes | {_spread_x(c.get('linux_elapsed_1cpu_ns'), 1e9)} | "
            f"{_spread_x(c.get('linux_elapsed_2cpu_ns'), 1e9)} | "
            f"{_spread_x(c.get('linux_speedup'))} | | |",
            "",
            _load_line(c),
            "",
        ]
    lines += [
        "How to read these figures:",
        "",
        "- The runtime's shares are of the time the core is charged: the wall-clock time "
        "each worker measured around the thread's compute (time Linux gives another "
        "process meanwhile is charged too, so the runtime's shares are shares of its "
        "CPUs' wall-clock time). The Linux baselines are CPU time read from `/proc`. "
        "Linux's 2-CPU error varies widely from run to run, as its spread shows, even "
        "when the 'other processes' line says the machine was quiet.",
        "- Wake-up preemption is what gets the interactive sleeper under a quarter slice: "
        "without it, or as class `normal`, the sleeper waits for the hog's current slice "
        "to end (the hog runs 4 ms slices and the sleeper wakes every 5 ms, so about "
        "3 ms at the median).",
        "- IPC threads are charged their compute only; the two dispatch round trips per "
        "call (about 50-100 us each) are overhead nobody is charged, which is why the "
        "IPC run lasts longer than the hogs' 2 s of CPU each would suggest.",
        "- The daemon itself (nice 0, not pinned) shares the cores with the workers; its "
        "per-slice work is the dispatch overhead in `capos-sched run --json`.",
        "",
        f"Reproduce: `.venv/bin/capos-sched bench matrix --runs {runs} --write-docs` (writes "
        "this section and the JSON; `--json` prints the JSON on stdout; `--cases` picks cases).",
        "",
    ]
    return "\n".join(lines)


def write_section(markdown: str, path: Path = DOCS) -> None:
    """Replace (or append) the Phase D matrix section, leaving the rest of the file."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(SECTION + "\n")
    if start < 0:
        new = text.rstrip("\n") + "\n\n" + markdown
    else:
        end = text.find("\n## ", start + len(SECTION))
        tail = "" if end < 0 else text[end + 1 :]
        new = text[:start] + markdown + ("\n" + tail if tail else "")
    path.write_text(new.rstrip("\n") + "\n", encoding="utf-8")


# ------------------------------------------------------------------ command


def measure(
    cases: Sequence[str], runs: int, window_s: float, settle_s: float = 0.0
) -> dict[str, Any]:
    makers: dict[str, Callable[[], dict[str, Any]]] = {
        "fairness": lambda: case_fairness(window_s),
        "sleepers": lambda: case_sleepers(window_s),
        "ipc": case_ipc,
        "multiprocess": lambda: case_multiprocess(window_s),
        "scale": case_scale,
    }
    started = time.monotonic()
    per_run: list[dict[str, Any]] = []
    for index in range(runs):
        run: dict[str, Any] = {}
        for case in cases:
            if settle_s > 0:
                settle(settle_s)
            say(f"run {index + 1}/{runs}: {case} ...")
            t0 = time.monotonic()
            load = ForeignLoad()
            run[case] = makers[case]()
            run[case]["foreign_load_cpus"] = load.cpus()
            say(
                f"run {index + 1}/{runs}: {case} done in {time.monotonic() - t0:.1f} s "
                f"(others used {run[case]['foreign_load_cpus']:.2f} CPUs meanwhile)"
            )
        per_run.append(run)
    agg = aggregate(per_run)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "python": sys.version.split()[0],
        "runs": runs,
        "window_s": window_s,
        "seconds": time.monotonic() - started,
        "matrix": agg,
        "gates": gates(agg),
        "per_run": per_run,
    }


@click.command(
    "matrix",
    epilog="""\b
Examples:
  capos-sched bench matrix --json                     # measure, print, change nothing
  capos-sched bench matrix --runs 5 --write-docs      # record docs/benchmarks.md
  capos-sched bench matrix --cases fairness,ipc --runs 1 --window 1
  capos-sched bench matrix --from-json bench/results/matrix.json
""",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 50),
    default=3,
    show_default=True,
    help="Times the whole matrix is measured (medians and min-max spreads reported).",
)
@click.option(
    "--window",
    "window_s",
    type=click.FloatRange(min=0.5),
    default=3.0,
    show_default=True,
    help="Seconds per fixed-window measurement (fairness, sleepers, multi-process).",
)
@click.option(
    "--cases",
    default=",".join(CASES),
    show_default=True,
    help="Comma-separated subset of: " + ", ".join(CASES),
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document on stdout.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the JSON document to this file.  [default: bench/results/matrix.json "
    "with --write-docs, else nowhere]",
)
@click.option(
    "--write-docs",
    is_flag=True,
    help="Record the result: rewrite the matrix section of docs/benchmarks.md and write "
    "bench/results/matrix.json (or --output). Without it nothing in the checkout changes.",
)
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Measure nothing: render the docs section from a saved result.  [default: measure]",
)
@click.option(
    "--settle",
    "settle_s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Before each case, wait up to this many seconds for other processes to "
    "use less than 0.3 CPU (the machines are shared).",
)
def matrix(
    runs: int,
    window_s: float,
    cases: str,
    as_json: bool,
    output: Path | None,
    write_docs: bool,
    settle_s: float,
    from_json: Path | None,
) -> None:
    """The Phase D test matrix on the real runtime, beside Linux and FIFO (takes minutes)."""
    chosen = [c.strip() for c in cases.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        raise click.BadParameter(f"unknown case(s) {', '.join(unknown)}", param_hint="--cases")
    if from_json is not None:
        result = json.loads(from_json.read_text(encoding="utf-8"))
    else:
        result = measure(chosen, runs, window_s, settle_s)
        if output is None and write_docs:
            output = RESULTS
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    markdown = render_markdown(result)
    if write_docs:
        write_section(markdown, DOCS)
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(markdown)


if __name__ == "__main__":
    matrix()
