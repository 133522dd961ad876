"""The real runtime's per-slice cost, with where it goes and same-run baselines.

Runs manifests on the trio runtime (real worker processes) and reports:

- ``demo``: ``manifests/default.cue`` (the demo: two hogs, an interactive
  typist, an IPC pair), its dispatch overhead p50/p99 (round trip to the
  worker minus the CPU time it is charged) and the breakdown of a slice
  (``capos_sched.runtime.probe``: pick, prepare, send, to_worker,
  worker_extra, from_worker, after_run);
- ``ipc``: ``manifests/ipc-pairs.cue`` under WFQ and under FIFO, the
  clients' IPC round trips (call to running again with the reply) p50/p99,
  the WFQ/FIFO ratio, and the same breakdown;
- ``baseline``: in the same run, a raw round trip of the same message sizes
  between this process and a child process on the same kind of socketpair
  (``SOCK_SEQPACKET``), once with blocking calls (what the kernel costs) and
  once with trio's socket API from a trio task (what trio adds); the child is
  reniced like the workers.

Each policy's runs alternate (WFQ, FIFO, FIFO, WFQ with ``--runs 2``) so a
host load that drifts during the benchmark hits both alike. The load average
is recorded before and after.

    python -m bench.slice --json
"""

from __future__ import annotations

import functools
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
import trio

from bench.matrix import summary
from capos_sched.interpreter import ISOLATED
from capos_sched.manifest import load_plan
from capos_sched.runtime.probe import SliceProbe
from capos_sched.runtime.protocol import OP_SPIN, REPLY, REQUEST, encode_request
from capos_sched.runtime.runtime import DEFAULT_NICE, DIRECT_WAIT_NS, Runtime, RuntimeConfig

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"

GOAL_OVERHEAD_P50_NS = 30_000
GOAL_OVERHEAD_P99_NS = 150_000
GOAL_IPC_P50_NS = 70_000
GOAL_IPC_RATIO = 1.10
IPC_CAP_S = 60.0

ECHO_CHILD = f"""
import os, socket, sys
os.nice({DEFAULT_NICE})
sock = socket.socket(fileno=int(sys.argv[1]))
reply = bytes({REPLY.size})
while True:
    msg = sock.recv({REQUEST.size})
    if not msg:
        break
    sock.send(reply)
"""


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ------------------------------------------------------------------ baselines


def _echo_child() -> tuple[socket.socket, subprocess.Popen[bytes]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    argv = [sys.executable, ISOLATED, "-c", ECHO_CHILD, str(theirs.fileno())]
    child = subprocess.Popen(argv, pass_fds=(theirs.fileno(),))
    theirs.close()
    return ours, child


def baseline_blocking(round_trips: int) -> dict[str, int] | None:
    """Blocking send + recv round trips with a child echo process."""
    sock, child = _echo_child()
    payload = encode_request(OP_SPIN, 1, 1000)
    samples = []
    try:
        for i in range(round_trips + 100):
            t0 = time.perf_counter_ns()
            sock.send(payload)
            sock.recv(REPLY.size)
            if i >= 100:  # the first ones include the child's start-up
                samples.append(time.perf_counter_ns() - t0)
    finally:
        sock.close()
        child.wait(5)
    return summary(samples)


def baseline_trio(round_trips: int) -> dict[str, int] | None:
    """The same round trips from a trio task with trio's socket API."""
    samples: list[int] = []

    async def main() -> None:
        raw, child = _echo_child()
        sock = trio.socket.from_stdlib_socket(raw)
        payload = encode_request(OP_SPIN, 1, 1000)
        try:
            for i in range(round_trips + 100):
                t0 = time.perf_counter_ns()
                await sock.send(payload)
                await sock.recv(REPLY.size)
                if i >= 100:
                    samples.append(time.perf_counter_ns() - t0)
        finally:
            sock.close()
            child.wait(5)

    trio.run(main)
    return summary(samples)


def baseline_trio_lowlevel(round_trips: int) -> dict[str, int] | None:
    """The same round trips from a trio task the way the runtime's workers do
    them: a plain non-blocking send, then ``wait_readable`` and ``recv``."""
    samples: list[int] = []

    async def main() -> None:
        sock, child = _echo_child()
        sock.setblocking(False)
        payload = encode_request(OP_SPIN, 1, 1000)
        try:
            for i in range(round_trips + 100):
                t0 = time.perf_counter_ns()
                sock.send(payload)
                await trio.lowlevel.wait_readable(sock)
                sock.recv(REPLY.size)
                if i >= 100:
                    samples.append(time.perf_counter_ns() - t0)
        finally:
            sock.close()
            child.wait(5)

    trio.run(main)
    return summary(samples)


# ------------------------------------------------------------------ the runtime


def run_manifest(
    name: str, policy: str | None, duration_s: float, config: RuntimeConfig | None = None
) -> Runtime:
    plan = load_plan(MANIFESTS / name)
    runtime = Runtime(plan, policy, config=config or RuntimeConfig())
    runtime.probe = SliceProbe()
    trio.run(functools.partial(runtime.run, duration_s=duration_s))
    return runtime


def breakdown(probe: SliceProbe) -> dict[str, dict[str, int] | None]:
    return {
        name: None if s is None else {"p50": s["p50"], "p99": s["p99"]}
        for name, s in probe.summary().items()
    }


def measure_demo(duration_s: float, config: RuntimeConfig | None = None) -> dict[str, Any]:
    runtime = run_manifest("default.cue", None, duration_s, config)
    report = runtime.report()
    assert runtime.probe is not None
    return {
        "manifest": "manifests/default.cue",
        "elapsed_ns": report["elapsed_ns"],
        "dispatch_overhead_ns": report["dispatch_overhead_ns"],
        "breakdown_ns": breakdown(runtime.probe),
    }


def measure_ipc(runs: int, config: RuntimeConfig | None = None) -> dict[str, Any]:
    """Each run to the manifest's own end (about 3 s), as ``bench matrix`` does:
    its FIFO round trips depend on when the hogs finish."""
    order = ["wfq", "fifo"]
    sequence: list[str] = []
    for i in range(runs):
        sequence += order if i % 2 == 0 else order[::-1]
    trips: dict[str, list[int]] = {p: [] for p in order}
    overhead: dict[str, list[int]] = {p: [] for p in order}
    probes: dict[str, SliceProbe] = {}
    for policy in sequence:
        runtime = run_manifest("ipc-pairs.cue", policy, IPC_CAP_S, config)
        for rt in runtime._order:
            if rt.workload.kind == "ipcClient":
                trips[policy].extend(rt.round_trips.recent)
        overhead[policy].extend(runtime._overhead.recent)
        assert runtime.probe is not None
        probes.setdefault(policy, runtime.probe)
    out: dict[str, Any] = {"manifest": "manifests/ipc-pairs.cue"}
    for policy in order:
        out[policy] = {
            "round_trip_ns": summary(trips[policy]),
            "dispatch_overhead_ns": summary(overhead[policy]),
            "breakdown_ns": breakdown(probes[policy]),
        }
    wfq, fifo = out["wfq"]["round_trip_ns"], out["fifo"]["round_trip_ns"]
    if wfq and fifo:
        out["wfq_over_fifo"] = {
            "p50": round(wfq["p50"] / fifo["p50"], 3),
            "p99": round(wfq["p99"] / fifo["p99"], 3),
        }
    return out


def goals(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    def goal(value: float | None, limit: float) -> dict[str, Any]:
        return {"value": value, "limit": limit, "met": value is not None and value <= limit}

    over = result["demo"]["dispatch_overhead_ns"]
    ipc = result["ipc"]
    ratio = ipc.get("wfq_over_fifo", {})
    return {
        "dispatch_overhead_p50_ns": goal(over["p50"], GOAL_OVERHEAD_P50_NS),
        "dispatch_overhead_p99_ns": goal(over["p99"], GOAL_OVERHEAD_P99_NS),
        "ipc_round_trip_p50_ns": goal(
            (ipc["wfq"]["round_trip_ns"] or {}).get("p50"), GOAL_IPC_P50_NS
        ),
        "ipc_wfq_over_fifo_p50": goal(ratio.get("p50"), GOAL_IPC_RATIO),
    }


def measure(
    duration_s: float,
    runs: int,
    round_trips: int,
    workers: str = "nice",
    direct_wait_ns: int = 0,
) -> dict[str, Any]:
    started = time.monotonic()
    config = RuntimeConfig(sched_idle=workers == "idle", direct_wait_ns=direct_wait_ns)
    load_before = load_average()
    result: dict[str, Any] = {
        "benchmark": "slice",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "python": sys.version.split()[0],
        "load_average_before": load_before,
        "workers": workers,
        "direct_wait_ns": direct_wait_ns,
        "baseline": {
            "message_bytes": {"request": REQUEST.size, "reply": REPLY.size},
            "blocking_round_trip_ns": baseline_blocking(round_trips),
            "trio_round_trip_ns": baseline_trio(round_trips),
            "trio_lowlevel_round_trip_ns": baseline_trio_lowlevel(round_trips),
        },
    }
    result["demo"] = measure_demo(duration_s, config)
    result["ipc"] = measure_ipc(runs, config)
    result["goals"] = goals(result)
    result["load_average_after"] = load_average()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _us(value: int | None) -> str:
    return "-" if value is None else f"{value / 1000:.1f}"


def render_text(result: dict[str, Any]) -> str:
    lines = [f"load average before {result['load_average_before']}"]
    base = result["baseline"]
    for key in ("blocking_round_trip_ns", "trio_round_trip_ns", "trio_lowlevel_round_trip_ns"):
        s = base[key] or {}
        lines.append(f"baseline {key}: p50 {_us(s.get('p50'))} us, p99 {_us(s.get('p99'))} us")
    over = result["demo"]["dispatch_overhead_ns"]
    lines.append(f"demo dispatch overhead: p50 {_us(over['p50'])} us, p99 {_us(over['p99'])} us")
    for name, s in result["demo"]["breakdown_ns"].items():
        if s:
            lines.append(f"  {name:<13} p50 {_us(s['p50']):>7} us  p99 {_us(s['p99']):>7} us")
    for policy in ("wfq", "fifo"):
        s = result["ipc"][policy]["round_trip_ns"] or {}
        lines.append(f"ipc {policy}: p50 {_us(s.get('p50'))} us, p99 {_us(s.get('p99'))} us")
    lines.append(f"ipc wfq/fifo: {result['ipc'].get('wfq_over_fifo')}")
    for name, g in result["goals"].items():
        verdict = "met" if g["met"] else "NOT met"
        lines.append(f"goal {name}: {g['value']} <= {g['limit']}: {verdict}")
    lines.append(f"load average after {result['load_average_after']}")
    return "\n".join(lines)


@click.command(
    "slice",
    epilog="""\b
Examples:
  capos-sched bench slice                      # 30-60 s, a text summary
  capos-sched bench slice --json               # the JSON document
  capos-sched bench slice --runs 4 --duration 3 --output bench/results/slice.json
  capos-sched bench slice --workers idle --json  # workers as serve runs them
  capos-sched bench slice --direct-wait-us 250 --json  # A/B: the runtime's direct wait on
""",
)
@click.option(
    "--duration",
    "duration_s",
    type=click.FloatRange(min=0.5, max=60),
    default=2.0,
    show_default=True,
    help="Seconds of the demo run (it may finish earlier by itself; the IPC runs "
    "always run to their end, about 3 s each).",
)
@click.option(
    "--runs",
    type=click.IntRange(1, 20),
    default=2,
    show_default=True,
    help="IPC runs per policy (WFQ, FIFO, then FIFO, WFQ, ...).",
)
@click.option(
    "--round-trips",
    type=click.IntRange(100, 1_000_000),
    default=20_000,
    show_default=True,
    help="Round trips per baseline.",
)
@click.option(
    "--workers",
    type=click.Choice(["nice", "idle"]),
    default="nice",
    show_default=True,
    help="How the workers yield to the daemon: reniced (as `run` starts them) or "
    "SCHED_IDLE (as `serve` does: the daemon's wake-ups then preempt them at once).",
)
@click.option(
    "--direct-wait-us",
    type=click.IntRange(0, 10_000),
    default=0,
    show_default=True,
    help="The runtime's direct wait for a short request's reply (RuntimeConfig."
    f"direct_wait_ns, in us; off by default, {DIRECT_WAIT_NS // 1000} is the value measured); "
    "0 waits for every reply through trio, as `run` and `serve` do.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON document on stdout.")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the JSON document to this file.  [default: nowhere]",
)
def slice_bench(
    duration_s: float,
    runs: int,
    round_trips: int,
    workers: str,
    direct_wait_us: int,
    as_json: bool,
    output: Path | None,
) -> None:
    """Per-slice cost of the real runtime: dispatch overhead, IPC round trip,
    where the time goes, against raw socketpair round trips measured in the
    same run."""
    result = measure(duration_s, runs, round_trips, workers, direct_wait_us * 1000)
    document = json.dumps(result, indent=2)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(document + "\n")
    click.echo(document if as_json else render_text(result))


if __name__ == "__main__":
    slice_bench()
