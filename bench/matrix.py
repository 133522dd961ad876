"""The Phase D test matrix, measured on the real runtime beside its baselines.

Six cases (``CASES``, a list: ``register`` adds one), each run ``--runs``
times under every built-in policy (``wfq``, ``eevdf``, ``fifo``) side by side;
every figure is the median over the runs with its spread (min-max). Within one
run the policies and the Linux baselines are measured back to back, so they
see the same machine:

1. CPU hogs 2:1:1 (``system-thread-fairness.cue``) on 1 and 2 CPUs over a
   window: maximum relative error of the runtime shares against the
   water-filled ideal; Linux: three pinned hog processes at nice 0/3/3
   (1024:526:526), CPU time from ``/proc``.
2. Short sleepers (``thread-fairness-interactive.cue``): wake-to-run latency
   of the interactive sleeper beside a hog on 1 CPU (for WFQ also without
   wake-up preemption and as class ``normal``); Linux: a sleeping process
   beside a pinned hog (its oversleep).
3. Direct IPC pairs (``ipc-pairs.cue``): client round trips.
4. Multi-process (``multi-process.cue``): per-process share error; Linux with
   nice 0/3/6 (its own weights give its ideal).
5. Thread scale (``thread-scale.cue``): elapsed on 1 CPU / elapsed on 2 CPUs;
   Linux: the same hashing in pinned processes on 1 and on 2 cores.
6. Short requests (inline manifest): at equal weight, an interactive thread
   computing 1 ms per 4 ms beside two hogs on 1 CPU, where EEVDF's deadlines
   should differ from WFQ: its wake-to-run p50/p99 and its share; Linux: the
   same sleeper beside two pinned hogs (oversleep).

The gates are Phase D's, checked on WFQ. ``--quick`` is a fast pass (about a
minute) usable on a loaded host.

    capos-sched bench matrix --quick --json
    capos-sched bench matrix --runs 3 --json
    capos-sched bench matrix --runs 5 --write-docs   # record docs/benchmarks.md
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import trio

from bench import linux_baseline as linux
from capos_sched.core import LatencyClass, ideal_shares
from capos_sched.manifest import Plan, load_plan, load_plan_text
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
POLICIES = ("wfq", "eevdf", "fifo")
"""The built-in policies every case compares, side by side."""

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


@attrs.frozen
class Settings:
    """What every case is measured with."""

    window_s: float
    quick: bool = False
    policies: tuple[str, ...] = POLICIES


@attrs.frozen
class Case:
    """One row group of the matrix: ``measure(settings)`` returns its figures,
    ``{policy: {...}, "linux": {...}}`` by convention; ``render(case, result)``
    its markdown lines (the aggregated figures, the whole result); ``gates``
    its pass/fail checks. Register a new case with ``register`` (the list
    ``CASES`` is the matrix, in order)."""

    name: str
    measure: Callable[[Settings], dict[str, Any]]
    render: Callable[[dict[str, Any], dict[str, Any]], list[str]]
    gates: Callable[[dict[str, Any]], dict[str, dict[str, Any]]] | None = None


CASES: list[Case] = []


def register(case: Case) -> Case:
    """Append ``case`` to the matrix (a case of the same name is replaced)."""
    CASES[:] = [c for c in CASES if c.name != case.name]
    CASES.append(case)
    return case


def case_names() -> list[str]:
    return [c.name for c in CASES]


def measure_fairness(s: Settings) -> dict[str, Any]:
    plan = load("system-thread-fairness.cue")
    out: dict[str, Any] = {}
    for policy in s.policies:
        out[policy] = {
            f"{cpus}cpu_error": thread_share_error(
                run_plan(plan, duration_s=s.window_s, cpus=cpus, policy=policy)
            )
            for cpus in (1, 2)
        }
    nices = (0, 3, 3)
    out["linux"] = {}
    for cpus in (1, 2):
        cores = pinned_cores(cpus) or list(range(cpus))
        runtimes = linux.hog_runtimes(nices, cores, s.window_s)
        ideals = ideal_shares([linux.nice_weight(n) for n in nices], cpus)
        out["linux"][f"{cpus}cpu_error"] = max_share_error(runtimes, ideals)
    return out


def _sleeper_figures(runtime: Runtime, name: str) -> dict[str, Any]:
    rt = runtime.thread(name)
    assert rt is not None
    return {
        "wake_latency_ns": summary(list(rt.wake_latency.recent)),
        "oversleep_ns": summary(list(rt.oversleep.recent)),
        "wake_preemptions": runtime.report()["wake_preemptions"],
    }


def measure_sleepers(s: Settings) -> dict[str, Any]:
    plan = load("thread-fairness-interactive.cue")
    sleeper = next(t for t in plan.threads() if t.latency_class is LatencyClass.INTERACTIVE)
    normal = with_class(plan, sleeper.full_name, LatencyClass.NORMAL)
    out: dict[str, Any] = {"slice_ns": plan.machine.slice_ns}
    for policy in s.policies:
        runtime = run_plan(plan, duration_s=s.window_s, policy=policy)
        out[policy] = _sleeper_figures(runtime, sleeper.full_name)
    if "wfq" in s.policies:  # what makes WFQ's figure: the two halves of its wake rule
        variants = {
            "wfq_no_preemption": (plan, RuntimeConfig(wake_preemption=False)),
            "wfq_normal": (normal, RuntimeConfig()),
        }
        for key, (variant, config) in variants.items():
            runtime = run_plan(variant, duration_s=s.window_s, policy="wfq", config=config)
            out[key] = _sleeper_figures(runtime, sleeper.full_name)
    burst, period = sleeper.workload.burst_ns, sleeper.workload.period_ns
    cores = pinned_cores(1) or [0]
    out["linux"] = {
        "oversleep_ns": summary(linux.sleeper_oversleep(burst, period, 1, cores, s.window_s))
    }
    return out


def measure_ipc(s: Settings) -> dict[str, Any]:
    """Every policy, then again in reverse order (ABBA cancels a load that
    drifts during the case; one pass in quick mode), round trips pooled per
    policy."""
    plan = load("ipc-pairs.cue")
    clients = [t.full_name for t in plan.threads() if t.workload.kind == "ipcClient"]
    order = list(s.policies) if s.quick else [*s.policies, *reversed(s.policies)]
    samples: dict[str, list[int]] = {p: [] for p in s.policies}
    elapsed: dict[str, list[int]] = {p: [] for p in s.policies}
    overhead: dict[str, list[int]] = {p: [] for p in s.policies}
    for policy in order:
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
        for policy in s.policies
    }


def measure_multiprocess(s: Settings) -> dict[str, Any]:
    plan = load("multi-process.cue")
    out: dict[str, Any] = {
        policy: {"error": process_share_error(run_plan(plan, duration_s=s.window_s, policy=policy))}
        for policy in s.policies
    }
    process_nice = {"gold": 0, "silver": 3, "bronze": 6}
    threads = plan.threads()
    nices = [process_nice.get(t.process, 0) for t in threads]
    cpus = plan.machine.cpus
    runtimes = linux.hog_runtimes(nices, pinned_cores(cpus) or list(range(cpus)), s.window_s)
    ideal = ideal_shares([linux.nice_weight(n) for n in nices], cpus)
    got: dict[str, float] = {}
    want: dict[str, float] = {}
    for t, r, i in zip(threads, runtimes, ideal, strict=True):
        got[t.process] = got.get(t.process, 0) + r
        want[t.process] = want.get(t.process, 0) + i
    names = sorted(got)
    out["linux"] = {"error": max_share_error([got[n] for n in names], [want[n] for n in names])}
    return out


QUICK_SCALE_DIVISOR = 4
"""Quick mode hashes a quarter of thread-scale.cue's rounds."""


def with_rounds(plan: Plan, divisor: int) -> Plan:
    """``plan`` with every hash thread doing ``rounds // divisor`` rounds."""
    processes = []
    for process in plan.processes:
        threads = tuple(
            attrs.evolve(
                t, workload=attrs.evolve(t.workload, rounds=max(1, t.workload.rounds // divisor))
            )
            if isinstance(t.workload, Hash)
            else t
            for t in process.threads
        )
        processes.append(ProcessPlan(process.name, threads, process.exec, process.grants))
    return Plan(plan.source, plan.machine, tuple(processes))


def measure_scale(s: Settings) -> dict[str, Any]:
    plan = load("thread-scale.cue")
    if s.quick:
        plan = with_rounds(plan, QUICK_SCALE_DIVISOR)
    out: dict[str, Any] = {}
    for policy in s.policies:
        elapsed = {}
        for cpus in (1, 2):
            report = run_plan(plan, duration_s=120.0, cpus=cpus, policy=policy).report()
            assert report["stop_reason"] == "finished", report["stop_reason"]
            elapsed[cpus] = report["elapsed_ns"]
        out[policy] = {
            "elapsed_1cpu_ns": elapsed[1],
            "elapsed_2cpu_ns": elapsed[2],
            "speedup": elapsed[1] / elapsed[2],
        }
    spec = plan.threads()[0].workload
    assert isinstance(spec, Hash)
    n = len(plan.threads())
    linux_elapsed = {
        cpus: linux.hash_elapsed_ns(
            n, spec.blocks, spec.block_size, spec.rounds, pinned_cores(cpus) or list(range(cpus))
        )
        for cpus in (1, 2)
    }
    out["linux"] = {
        "elapsed_1cpu_ns": linux_elapsed[1],
        "elapsed_2cpu_ns": linux_elapsed[2],
        "speedup": linux_elapsed[1] / linux_elapsed[2],
    }
    return out


SHORT_REQUEST_BURST_NS = 1_000_000
SHORT_REQUEST_SLEEP_NS = 3_000_000
SHORT_REQUEST_MANIFEST = f"""\
package capos

// One CPU, three threads of equal weight: two hogs and a short-request
// thread (class interactive) computing 1 ms, then sleeping 3 ms. It asks for
// 25% of the CPU, under its fair third, so a scheduler that honours short
// requests runs it soon after every wake-up and gives it all it asks for.
machine: {{cpus: 1, policy: "wfq"}}

processes: {{
	short: threads: req: {{
		class: "interactive"
		workload: {{
			kind:   "sleeper"
			burst:  "{SHORT_REQUEST_BURST_NS // 1000}us"
			period: "{SHORT_REQUEST_SLEEP_NS // 1000}us"
		}}
	}}
	hogs: threads: {{
		h0: workload: kind: "spin"
		h1: workload: kind: "spin"
	}}
}}
"""


def measure_short_request(s: Settings) -> dict[str, Any]:
    """Where EEVDF should differ from WFQ: the short-request thread's wake-to-run
    latency and its share of the CPU, at equal weight beside two hogs."""
    plan = load_plan_text(SHORT_REQUEST_MANIFEST, "short-request.cue")
    name = "short/req"
    out: dict[str, Any] = {
        "demand": SHORT_REQUEST_BURST_NS / (SHORT_REQUEST_BURST_NS + SHORT_REQUEST_SLEEP_NS)
    }
    for policy in s.policies:
        runtime = run_plan(plan, duration_s=s.window_s, policy=policy)
        report = runtime.report()
        total = sum(t["runtime_ns"] for t in report["threads"]) or 1
        mine = next(t for t in report["threads"] if t["name"] == name)
        out[policy] = {
            **_sleeper_figures(runtime, name),
            "share": mine["runtime_ns"] / total,
        }
    cores = pinned_cores(1) or [0]
    samples = linux.sleeper_oversleep(
        SHORT_REQUEST_BURST_NS, SHORT_REQUEST_SLEEP_NS, 2, cores, s.window_s
    )
    out["linux"] = {"oversleep_ns": summary(samples)}
    return out


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


def _gate(value: float | None, limit: float, kind: str) -> dict[str, Any]:
    passed = None if value is None else (value <= limit if kind == "max" else value >= limit)
    return {"value": value, "limit": limit, "kind": kind, "pass": passed}


def gates_fairness(agg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "fairness_1cpu_error": _gate(med(agg, "wfq", "1cpu_error"), GATE_FAIRNESS_1CPU, "max"),
        "fairness_2cpu_error": _gate(med(agg, "wfq", "2cpu_error"), GATE_FAIRNESS_2CPU, "max"),
    }


def gates_sleepers(agg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    slice_ns = med(agg, "slice_ns") or 4_000_000
    p99 = med(agg, "wfq", "wake_latency_ns", "p99")
    return {
        "sleeper_p99_le_slice": _gate(p99, slice_ns, "max"),
        "sleeper_p99_le_quarter_slice (goal)": _gate(p99, slice_ns / 4, "max"),
    }


def gates_ipc(agg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = {}
    for stat in ("p50", "p99"):
        wfq = med(agg, "wfq", "round_trip_ns", stat)
        fifo = med(agg, "fifo", "round_trip_ns", stat)
        ratio = None if not wfq or not fifo else wfq / fifo
        result[f"ipc_{stat}_wfq_over_fifo"] = _gate(ratio, GATE_IPC_RATIO, "max")
    return result


def gates_multiprocess(agg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"multiprocess_error": _gate(med(agg, "wfq", "error"), GATE_FAIRNESS_2CPU, "max")}


def gates_scale(agg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {"scale_speedup": _gate(med(agg, "wfq", "speedup"), GATE_SCALE, "min")}


def gates(agg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The Phase D gates (on WFQ, the policy they were set for), of the cases measured."""
    result: dict[str, dict[str, Any]] = {}
    for case in CASES:
        if case.name in agg and case.gates is not None:
            result.update(case.gates(agg[case.name]))
    return result


# -------------------------------------------------------------------- docs


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _spread(node: dict[str, Any] | None, fmt: Callable[[float], str]) -> str:
    """``median (min - max)`` of an aggregated figure, or ``-`` when absent."""
    if not node or node.get("median") is None:
        return "-"
    if node["min"] == node["max"]:  # one run (or no spread): the figure alone
        return fmt(node["median"])
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


LABELS = {"wfq": "WFQ", "eevdf": "EEVDF", "fifo": "FIFO", "linux": "Linux"}


def _label(policy: str) -> str:
    return LABELS.get(policy, policy)


def _policies(case: dict[str, Any]) -> list[str]:
    """The policies a case measured, in matrix order (Linux apart)."""
    return [p for p in POLICIES if isinstance(case.get(p), dict)]


def _verdict(result: dict[str, Any], name: str) -> str:
    entry = result.get("gates", {}).get(name)
    if not entry or entry["pass"] is None:
        return "not measured"
    return "**pass**" if entry["pass"] else "**FAIL**"


def render_fairness(f: dict[str, Any], result: dict[str, Any]) -> list[str]:
    lines = [
        "### 1. CPU hogs 2:1:1 (`system-thread-fairness.cue`)",
        "",
        "Maximum relative error of the runtime shares against the water-filled ideal, "
        f"{result['window_s']:g} s window (Linux: nice 0/3/3 hogs).",
        "",
        "| policy | 1 CPU | 2 CPUs |",
        "| --- | ---: | ---: |",
    ]
    for policy in [*_policies(f), "linux"]:
        v = f.get(policy, {})
        lines.append(
            f"| {_label(policy)} | {_spread_pct(v.get('1cpu_error'))} | "
            f"{_spread_pct(v.get('2cpu_error'))} |"
        )
    return [
        *lines,
        "",
        f"Gates (WFQ): 1 CPU <= 1% {_verdict(result, 'fairness_1cpu_error')}, "
        f"2 CPUs <= 2% {_verdict(result, 'fairness_2cpu_error')}. " + _load_line(f),
        "",
    ]


def _latency_rows(
    case: dict[str, Any], rows: list[tuple[str, str]], with_share: bool = False
) -> list[str]:
    lines = []
    for key, label in rows:
        v = case.get(key)
        if not isinstance(v, dict):
            continue
        wake = v.get("wake_latency_ns") or {}
        over = v.get("oversleep_ns") or {}
        cells = [
            _spread_us(wake.get("p50")),
            _spread_us(wake.get("p99")),
            _spread_us(wake.get("max")),
            _spread_us(over.get("p50")),
            _spread_us(over.get("p99")),
        ]
        if with_share:
            cells.append(_spread_pct(v.get("share")))
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return lines


def render_sleepers(s: dict[str, Any], result: dict[str, Any]) -> list[str]:
    rows = [(p, f"{_label(p)}, class interactive") for p in _policies(s)]
    rows[1:1] = [
        ("wfq_no_preemption", "WFQ, interactive, no wake-up preemption"),
        ("wfq_normal", "WFQ, class normal"),
    ]
    rows.append(("linux", "Linux: sleeping process beside a hog"))
    return [
        "### 2. Short sleepers (`thread-fairness-interactive.cue`, 1 CPU)",
        "",
        "Wake latency: from the timer wake (the sleeper made runnable) to running on "
        "a worker. Oversleep: from the requested wake-up time to running, which also "
        "counts the daemon's timer lateness (sleeper timers are timerfds armed at "
        "the absolute deadline, `capos_sched/runtime/timers.py`); it is the figure "
        "comparable with Linux's. Microseconds.",
        "",
        "| policy | wake p50 | wake p99 | wake max | oversleep p50 | oversleep p99 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *_latency_rows(s, rows),
        "",
        f"Gate (WFQ) p99 <= one slice (4 ms): {_verdict(result, 'sleeper_p99_le_slice')}. "
        f"Goal p99 <= slice / 4 with wake-up preemption: "
        f"{_verdict(result, 'sleeper_p99_le_quarter_slice (goal)')}. " + _load_line(s),
        "",
    ]


def render_ipc(i: dict[str, Any], result: dict[str, Any]) -> list[str]:
    g = result.get("gates", {})
    how = "one pass per policy" if result.get("quick") else "every policy, then in reverse order"
    lines = [
        "### 3. Direct IPC pairs (`ipc-pairs.cue`, 2 CPUs, 2 pairs + 2 hogs)",
        "",
        "Client round trip: from the call to the client running again with the reply. "
        f"Microseconds; each run measures {how} and pools both clients' calls per policy.",
        "",
        "| policy | p50 | p99 | max | run time s |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for policy in _policies(i):
        rtt = i.get(policy, {}).get("round_trip_ns", {})
        lines.append(
            f"| {_label(policy)} | {_spread_us(rtt.get('p50'))} | {_spread_us(rtt.get('p99'))}"
            f" | {_spread_us(rtt.get('max'))} | "
            f"{_spread_x(i.get(policy, {}).get('elapsed_ns'), 1e9)} |"
        )
    return [
        *lines,
        "",
        f"Gate WFQ within 10% of FIFO: p50 {_verdict(result, 'ipc_p50_wfq_over_fifo')} "
        f"(ratio {g.get('ipc_p50_wfq_over_fifo', {}).get('value') or 0:.2f}), "
        f"p99 {_verdict(result, 'ipc_p99_wfq_over_fifo')} "
        f"(ratio {g.get('ipc_p99_wfq_over_fifo', {}).get('value') or 0:.2f}). " + _load_line(i),
        "",
    ]


def render_multiprocess(m: dict[str, Any], result: dict[str, Any]) -> list[str]:
    lines = [
        "### 4. Multi-process load (`multi-process.cue`, 2 CPUs, weights 2048/1024/512)",
        "",
        "Maximum relative error of per-process shares against the ideal (Linux: nice 0/3/6).",
        "",
        "| policy | error |",
        "| --- | ---: |",
    ]
    for policy in [*_policies(m), "linux"]:
        lines.append(f"| {_label(policy)} | {_spread_pct(m.get(policy, {}).get('error'))} |")
    return [
        *lines,
        "",
        f"Gate (WFQ) <= 2%: {_verdict(result, 'multiprocess_error')}. " + _load_line(m),
        "",
    ]


def render_scale(c: dict[str, Any], result: dict[str, Any]) -> list[str]:
    work = "a quarter of its rounds (`--quick`)" if result.get("quick") else "its full work"
    lines = [
        f"### 5. Thread scale (`thread-scale.cue`, 4 finite `hash` threads, {work})",
        "",
        "| policy | 1 CPU s | 2 CPUs s | speedup |",
        "| --- | ---: | ---: | ---: |",
    ]
    for policy in [*_policies(c), "linux"]:
        v = c.get(policy, {})
        label = "Linux processes" if policy == "linux" else _label(policy)
        lines.append(
            f"| {label} | {_spread_x(v.get('elapsed_1cpu_ns'), 1e9)} | "
            f"{_spread_x(v.get('elapsed_2cpu_ns'), 1e9)} | {_spread_x(v.get('speedup'))} |"
        )
    return [
        *lines,
        "",
        f"Gate (WFQ) speedup >= 1.6x: {_verdict(result, 'scale_speedup')}. " + _load_line(c),
        "",
    ]


def render_short_request(r: dict[str, Any], result: dict[str, Any]) -> list[str]:
    demand = (r.get("demand") or {}).get("median") or 0.25
    rows = [(p, _label(p)) for p in _policies(r)]
    rows.append(("linux", "Linux: sleeping process beside 2 hogs"))
    return [
        "### 6. Short requests at equal weight (1 CPU: an interactive 1 ms / 3 ms sleeper "
        "and 2 hogs)",
        "",
        "Where EEVDF should differ from WFQ: all three threads weigh 1024, the short-request "
        f"thread asks for {demand * 100:.0f}% of the CPU (under its fair third). Wake latency "
        "and oversleep as in case 2, microseconds; share: its part of the run time charged.",
        "",
        "| policy | wake p50 | wake p99 | wake max | oversleep p50 | oversleep p99 | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *_latency_rows(r, rows, with_share=True),
        "",
        _load_line(r),
        "",
    ]


register(Case("fairness", measure_fairness, render_fairness, gates_fairness))
register(Case("sleepers", measure_sleepers, render_sleepers, gates_sleepers))
register(Case("ipc", measure_ipc, render_ipc, gates_ipc))
register(Case("multiprocess", measure_multiprocess, render_multiprocess, gates_multiprocess))
register(Case("scale", measure_scale, render_scale, gates_scale))
register(Case("short_request", measure_short_request, render_short_request))

CASE_MODULES: tuple[str, ...] = ()
"""Modules imported at the end of this one, each ``register``-ing cases of its
own (``from bench.matrix import Case, Settings, register``): a case kept in its
own module (``bench/delegation.py``, say) joins the matrix by adding its name
here; its rendering and gates come with it."""


def load_case_modules(names: Sequence[str] = CASE_MODULES) -> None:
    """Import the modules that register more cases (once each, as imports go)."""
    for name in names:
        importlib.import_module(name)


load_case_modules()


def render_markdown(result: dict[str, Any]) -> str:
    agg = result["matrix"]
    runs = result["runs"]
    command = _command(result)
    load = result.get("loadavg") or {}
    load_text = (
        f" Load average (1 min) {load['start']:.2f} at the start, {load['end']:.2f} at the end."
        if load
        else ""
    )
    lines = [
        SECTION,
        "",
        f"`{command}` ({result['date']}, {result['machine']}, "
        f"Python {result['python']}; {result['seconds']:.0f} s in all).{load_text} "
        + (
            f"Every figure is the median of {runs} runs with the min - max spread in "
            "parentheses; within a run, "
            if runs > 1
            else "One run, so no spread; "
        )
        + "every policy and the Linux baseline were measured back to back on the same "
        "machine. The runtime's workers run at nice +10, pinned one per core; the Linux "
        "baselines are "
        "real processes pinned to the same cores. Raw numbers: `bench/results/matrix.json`.",
        "",
    ]
    for case in CASES:
        if case.name in agg:
            lines += case.render(agg[case.name], result)
    lines += [
        "How to read these figures:",
        "",
        "- The runtime's shares are of the time the core is charged: the wall-clock time "
        "each worker measured around the thread's compute (time Linux gives another "
        "process meanwhile is charged too, so the runtime's shares are shares of its "
        "CPUs' wall-clock time). The Linux baselines are CPU time read from `/proc`.",
        "- WFQ's wake-up preemption is what gets the interactive sleeper under a quarter "
        "slice: without it, or as class `normal`, the sleeper waits for the hog's current "
        "slice to end (4 ms slices, a wake every 5 ms: about 3 ms at the median). EEVDF "
        "preempts on a wake-up only when the woken thread's deadline is earlier than the "
        "running one's (docs/policies.md); FIFO never does.",
        "- IPC threads are charged their compute only; the two dispatch round trips per "
        "call (about 50-100 us each) are overhead nobody is charged.",
        "- The daemon itself (nice 0, not pinned) shares the cores with the workers; its "
        "per-slice work is the dispatch overhead in `capos-sched run --json`.",
        "",
        f"Reproduce: `.venv/bin/{command} --write-docs` (writes this section and the JSON; "
        "`--json` prints the JSON on stdout; `--cases` picks cases, `--policies` policies).",
        "",
    ]
    return "\n".join(lines)


def _command(result: dict[str, Any]) -> str:
    if result.get("quick"):
        return "capos-sched bench matrix --quick"
    return f"capos-sched bench matrix --runs {result['runs']}"


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
    cases: Sequence[str],
    runs: int,
    window_s: float,
    settle_s: float = 0.0,
    quick: bool = False,
    policies: Sequence[str] = POLICIES,
) -> dict[str, Any]:
    settings = Settings(window_s, quick, tuple(policies))
    by_name = {c.name: c for c in CASES}
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    per_run: list[dict[str, Any]] = []
    for index in range(runs):
        run: dict[str, Any] = {}
        for name in cases:
            if settle_s > 0:
                settle(settle_s)
            say(f"run {index + 1}/{runs}: {name} ...")
            t0 = time.monotonic()
            load = ForeignLoad()
            run[name] = by_name[name].measure(settings)
            run[name]["foreign_load_cpus"] = load.cpus()
            say(
                f"run {index + 1}/{runs}: {name} done in {time.monotonic() - t0:.1f} s "
                f"(others used {run[name]['foreign_load_cpus']:.2f} CPUs meanwhile)"
            )
        per_run.append(run)
    agg = aggregate(per_run)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "python": sys.version.split()[0],
        "runs": runs,
        "window_s": window_s,
        "quick": quick,
        "policies": list(policies),
        "loadavg": {"start": load_start, "end": os.getloadavg()[0]},
        "seconds": time.monotonic() - started,
        "matrix": agg,
        "gates": gates(agg),
        "per_run": per_run,
    }


QUICK_WINDOW_S = 1.0


@click.command(
    "matrix",
    epilog="""\b
Examples:
  capos-sched bench matrix --quick --json             # every case, every policy, ~1 min
  capos-sched bench matrix --json                     # measure, print, change nothing
  capos-sched bench matrix --runs 5 --write-docs      # record docs/benchmarks.md
  capos-sched bench matrix --cases short_request --policies wfq,eevdf --runs 3
  capos-sched bench matrix --from-json bench/results/matrix.json
""",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 50),
    default=None,
    help="Times the whole matrix is measured (medians and min-max spreads reported).  "
    "[default: 3, or 1 with --quick]",
)
@click.option(
    "--window",
    "window_s",
    type=click.FloatRange(min=0.5),
    default=None,
    help="Seconds per fixed-window measurement (fairness, sleepers, multi-process, "
    f"short requests).  [default: 3, or {QUICK_WINDOW_S:g} with --quick]",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A fast pass usable on a loaded host: one run, 1 s windows, one IPC pass per "
    "policy, a quarter of the thread-scale work, no settling.",
)
@click.option(
    "--cases",
    default=None,
    help="Comma-separated subset of the cases.  [default: all of " + ", ".join(case_names()) + "]",
)
@click.option(
    "--policies",
    default=",".join(POLICIES),
    show_default=True,
    help="Comma-separated subset of the policies compared side by side.",
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
    default=None,
    help="Before each case, wait up to this many seconds for other processes to "
    "use less than 0.3 CPU (the machines are shared).  [default: 30, or 0 with --quick]",
)
def matrix(
    runs: int | None,
    window_s: float | None,
    quick: bool,
    cases: str | None,
    policies: str,
    as_json: bool,
    output: Path | None,
    write_docs: bool,
    settle_s: float | None,
    from_json: Path | None,
) -> None:
    """The Phase D test matrix on the real runtime: WFQ, EEVDF and FIFO side by
    side on every case, beside Linux where it has a baseline (minutes; --quick
    about one)."""
    chosen = [c.strip() for c in (cases or ",".join(case_names())).split(",") if c.strip()]
    unknown = [c for c in chosen if c not in case_names()]
    if unknown:
        raise click.BadParameter(f"unknown case(s) {', '.join(unknown)}", param_hint="--cases")
    chosen_policies = [p.strip() for p in policies.split(",") if p.strip()]
    bad = [p for p in chosen_policies if p not in POLICIES]
    if bad or not chosen_policies:
        raise click.BadParameter(
            f"unknown policy(ies) {', '.join(bad) or '(none given)'}; expected some of "
            + ", ".join(POLICIES),
            param_hint="--policies",
        )
    if from_json is not None:
        result = json.loads(from_json.read_text(encoding="utf-8"))
    else:
        result = measure(
            chosen,
            runs or (1 if quick else 3),
            window_s or (QUICK_WINDOW_S if quick else 3.0),
            settle_s if settle_s is not None else (0.0 if quick else 30.0),
            quick,
            chosen_policies,
        )
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


from bench.delegation import register_case as _register_delegation  # noqa: E402

_register_delegation(register, Case)

if __name__ == "__main__":
    matrix()
