"""``capos-sched run`` / ``simulate`` as a user runs them: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAIRNESS = str(ROOT / "manifests" / "system-thread-fairness.cue")
INTERACTIVE = str(ROOT / "manifests" / "thread-fairness-interactive.cue")
CLI = [str(Path(sys.executable).with_name("capos-sched"))]

REPORT_KEYS = {
    "manifest",
    "policy",
    "cpus",
    "slice_ns",
    "elapsed_ns",
    "dispatch_overhead_ns",
    "threads",
}
THREAD_KEYS = {
    "name",
    "weight",
    "class",
    "runtime_ns",
    "virtual_runtime_ns",
    "context_switches",
    "preemptions",
    "voluntary_blocks",
    "migrations",
    "wake_latency_ns",
    "ipc_round_trip_ns",
    "finished_ns",
}
SUMMARY_KEYS = {"count", "p50", "p99", "max"}


def capos(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def workers_of(pid: int) -> list[int]:
    """Live worker processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"capos_sched.runtime.worker" in cmdline:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_daemon(*args: str) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [*CLI, "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 30
    workers: list[int] = []
    while time.monotonic() < deadline:
        workers = workers_of(proc.pid)
        if len(workers) == 2:
            break
        time.sleep(0.05)
    assert len(workers) == 2, "the daemon did not start its two workers"
    time.sleep(0.3)  # let it dispatch for a while
    return proc, workers


def test_run_json_has_the_report_keys_and_weights_order_runtime() -> None:
    result = capos("run", FAIRNESS, "--cpus", "2", "--duration", "0.6", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # exactly one document on stdout
    assert set(report) >= REPORT_KEYS
    assert set(report["dispatch_overhead_ns"]) >= {"p50", "p99"}
    assert report["policy"] == "wfq" and report["cpus"] == 2
    assert report["elapsed_ns"] >= 600_000_000
    threads = {t["name"]: t for t in report["threads"]}
    assert set(threads) == {"fairness/a", "fairness/b", "fairness/c"}
    for t in threads.values():
        assert set(t) >= THREAD_KEYS
        assert t["wake_latency_ns"] is None and t["ipc_round_trip_ns"] is None
    a, b, c = (threads[f"fairness/{n}"]["runtime_ns"] for n in "abc")
    assert a > b and a > c


def test_run_json_sleeper_summaries() -> None:
    result = capos("run", INTERACTIVE, "--duration", "0.5", "--json")
    assert result.returncode == 0, result.stderr
    threads = {t["name"]: t for t in json.loads(result.stdout)["threads"]}
    wake = threads["typist/typist"]["wake_latency_ns"]
    assert set(wake) == SUMMARY_KEYS and wake["count"] >= 20
    assert wake["p50"] <= wake["p99"] <= wake["max"]


def test_disable_wfq_environment_forces_fifo() -> None:
    result = capos(
        "run", FAIRNESS, "--duration", "0.3", "--json", env={"CAPOS_SCHED_DISABLE_WFQ": "1"}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["policy"] == "fifo"
    explicit = capos("run", FAIRNESS, "--duration", "0.3", "--json", "--policy", "fifo")
    assert json.loads(explicit.stdout)["policy"] == "fifo"


def test_trace_option_writes_a_trace(tmp_path: Path) -> None:
    out = tmp_path / "run.trace.json"
    result = capos("run", INTERACTIVE, "--duration", "0.3", "--json", "--trace", str(out))
    assert result.returncode == 0, result.stderr
    doc = json.loads(out.read_text())
    kinds = {e["ph"] for e in doc["traceEvents"]}
    assert {"M", "X", "i"} <= kinds
    assert {e["name"] for e in doc["traceEvents"] if e["ph"] == "X"} == {
        "hog/hog",
        "typist/typist",
    }


def test_bad_input_gives_messages_not_tracebacks(tmp_path: Path) -> None:
    missing = capos("run", str(tmp_path / "nope.cue"))
    assert missing.returncode == 1
    assert "nope.cue" in missing.stderr and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
    broken = tmp_path / "broken.cue"
    broken.write_text("machine: {cpus: 0\n")
    bad = capos("run", str(broken))
    assert bad.returncode == 1 and "broken.cue:" in bad.stderr and "Traceback" not in bad.stderr
    flags = capos("run", FAIRNESS, "--cpus", "zero")
    assert flags.returncode == 2 and "Usage:" in flags.stderr and "Traceback" not in flags.stderr
    trace = capos("run", FAIRNESS, "--duration", "0.1", "--trace", str(tmp_path / "no/dir/t.json"))
    assert trace.returncode == 2 and "--trace" in trace.stderr and "Traceback" not in trace.stderr
    sim = capos("simulate", str(tmp_path / "nope.cue"))
    assert sim.returncode == 1 and "no such file" in sim.stderr


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_stop_cleanly_with_a_report(signum: int, code: int) -> None:
    proc, workers = start_daemon(FAIRNESS, "--duration", "60", "--json")
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=20)
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    report = json.loads(stdout)
    assert report["stop_reason"] == signal.Signals(signum).name
    assert report["elapsed_ns"] < 30e9
    assert sum(t["runtime_ns"] for t in report["threads"]) > 0
    assert not [w for w in workers if alive(w)]


def test_no_worker_survives_a_sigkilled_daemon() -> None:
    proc, workers = start_daemon(FAIRNESS, "--duration", "60", "--json")
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and any(alive(w) for w in workers):
        time.sleep(0.02)
    assert not [w for w in workers if alive(w)], "workers outlived the daemon by 2 s"


def test_simulate_is_deterministic_and_has_the_run_keys() -> None:
    first = capos("simulate", FAIRNESS, "--duration", "2", "--seed", "7", "--json")
    second = capos("simulate", FAIRNESS, "--duration", "2", "--seed", "7", "--json")
    other = capos("simulate", FAIRNESS, "--duration", "2", "--seed", "8", "--json")
    assert first.returncode == 0, first.stderr
    assert first.stdout == second.stdout
    assert first.stdout != other.stdout
    report = json.loads(first.stdout)
    assert set(report) >= REPORT_KEYS
    assert report["elapsed_ns"] == 2_000_000_000
    for t in report["threads"]:
        assert set(t) >= THREAD_KEYS
    runtimes = {t["name"]: t["runtime_ns"] for t in report["threads"]}
    assert runtimes["fairness/a"] > runtimes["fairness/b"]


def test_run_default_manifest_table() -> None:
    result = capos("run", "--duration", "0.5")
    assert result.returncode == 0, result.stderr
    assert "default.cue" in result.stdout
    for name in ("hogs/heavy", "shell/typist", "echo/client"):
        assert name in result.stdout


def test_run_reports_workers_that_cannot_start_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from click.testing import CliRunner

    from capos_sched.cli import main
    from capos_sched.runtime import workers

    async def refuse(self: workers.Worker) -> None:
        raise workers.WorkerDied(f"worker for CPU {self.cpu} did not start")

    monkeypatch.setattr(workers.Worker, "start", refuse)
    result = CliRunner().invoke(main, ["run", "--duration", "0.2"])
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert result.stderr.startswith("error: worker for CPU ")  # CPUs fail in any order
    assert "did not start" in result.stderr and "Traceback" not in result.stderr


def test_run_reports_a_refused_fork_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from click.testing import CliRunner

    from capos_sched.cli import main

    def no_more_processes(*_args: object, **_kwargs: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", no_more_processes)
    result = CliRunner().invoke(main, ["run", "--duration", "0.2"])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ")
    assert "cannot start the worker" in result.stderr and "Traceback" not in result.stderr
