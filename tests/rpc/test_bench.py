"""``bench rpc`` runs end to end and reports every figure (no speed assertions:
the figures themselves are recorded in docs/benchmarks.md)."""

from __future__ import annotations

import json

import pytest

from capos_sched.rpc.bench import loaded_verdict
from capos_sched.rpc.gate import DEFAULT_MAX_ANSWERS

from .conftest import cli


def _loaded(p99_ms: float, workers_cpu: float) -> dict[str, object]:
    return {
        "sequential": {"p99_ms": p99_ms},
        "host_sequential": {"server_children_cpu_s_per_s": workers_cpu},
    }


def test_the_loaded_verdict_needs_the_workers_to_run_during_the_calls() -> None:
    assert loaded_verdict(_loaded(1.5, 1.2)) == (True, None)
    assert loaded_verdict(_loaded(2.5, 1.2)) == (False, None)
    verdict, note = loaded_verdict(_loaded(1.0, 0.0))  # an idle figure, not a loaded one
    assert verdict is None
    assert note is not None and "0.0 CPU-s/s" in note
    assert loaded_verdict({"skipped": "no load"}) == (None, None)


@pytest.mark.slow
def test_bench_rpc_reports_echo_idle_and_loaded_phases() -> None:
    out = cli("bench", "rpc", "--json", "--quick", timeout=180)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    for phase in ("echo", "echo_gated", "idle"):
        for mode in ("sequential", "inflight"):
            figures = report[phase][mode]
            assert figures["calls"] == (500 if mode == "sequential" else 2000)
            assert figures["calls_per_s"] > 0
            assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        (host,) = report[phase]["host_per_round"]  # the server's CPU and the load, per figure
        assert host["server_cpu_s_per_s"] > 0  # the server did the work: it used CPU
        assert host["sequential"]["server_cpu_s_per_s"] > 0  # and during the sequential calls
        assert len(host["loadavg_before"]) == len(host["loadavg_after"]) == 3
        assert host["cpus_online"] >= 1
    for name in ("daemon", "echo_gated"):  # the gate bounds what a client makes the server hold
        memory = report["max_answers_memory"][name]
        assert memory["stopped_at_bound"] is True
        assert memory["answers_held"] == DEFAULT_MAX_ANSWERS == 1024
    assert set(report["gate_relay"]) == {
        "echo_gated_vs_echo_sequential",
        "added_us_per_call_sequential",
        "idle_vs_echo_gated_sequential",
    }
    loaded = report["loaded"]
    assert "sequential" in loaded or "skipped" in loaded
    if "sequential" in loaded:
        assert loaded["cpu_seconds_per_second"] > 0.5
        # Whether the SCHED_IDLE workers get CPU while the calls run depends on the
        # machine's other load (none on a busy host): the report says, and the
        # verdict follows it.
        during = loaded["host_sequential"]["server_children_cpu_s_per_s"]
        verdict = report["goals"]["loaded_p99_at_most_2ms"]
        # no verdict from a loaded phase whose workers got no CPU while the calls ran
        assert (verdict is None) == (during < 0.5), (during, verdict)
        assert ("goal_notes" in report) == (during < 0.5)
    assert set(report["goals"]) == {
        "idle_sequential_at_least_80pct_of_echo",
        "loaded_p99_at_most_2ms",
    }
    assert report["idle_vs_echo_sequential"] > 0
