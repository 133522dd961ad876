"""``bench rpc`` runs end to end and reports every figure (no speed assertions:
the figures themselves are recorded in docs/benchmarks.md)."""

from __future__ import annotations

import json

import pytest

from .conftest import cli


@pytest.mark.slow
def test_bench_rpc_reports_echo_idle_and_loaded_phases() -> None:
    out = cli(
        "bench", "rpc", "--json", "--calls", "100", "--inflight", "20", "--rounds", "1", timeout=180
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    for phase in ("echo", "idle"):
        for mode in ("sequential", "inflight"):
            figures = report[phase][mode]
            assert figures["calls"] == (100 if mode == "sequential" else 400)
            assert figures["calls_per_s"] > 0
            assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    loaded = report["loaded"]
    assert "sequential" in loaded or "skipped" in loaded
    if "sequential" in loaded:
        assert loaded["cpu_seconds_per_second"] > 0.5
    assert set(report["goals"]) == {
        "idle_sequential_at_least_80pct_of_echo",
        "loaded_p99_at_most_2ms",
    }
    assert report["idle_vs_echo_sequential"] > 0
