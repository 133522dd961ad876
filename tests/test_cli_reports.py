"""Reports for people: the error column, the legend, the live view at 80
columns, and ``bench matrix`` leaving the checkout alone unless asked."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from rich.console import Console

from capos_sched.cli import main
from capos_sched.runtime.view import fair_error, live_table, report_view

ROOT = Path(__file__).resolve().parents[1]


def thread(name: str, weight: int, runtime_ns: int, workload: str = "spin") -> dict[str, Any]:
    return {
        "name": name,
        "weight": weight,
        "class": "normal",
        "workload": workload,
        "runtime_ns": runtime_ns,
        "context_switches": 1,
        "preemptions": 0,
        "voluntary_blocks": 0,
        "migrations": 0,
        "wake_latency_ns": None,
        "ipc_round_trip_ns": None,
        "finished_ns": None,
        "failed": None,
        "removed": False,
    }


def report(cpus: int, *threads: dict[str, Any], elapsed_ns: int = 1_000_000_000) -> dict:
    return {
        "manifest": "m.cue",
        "policy": "wfq",
        "cpus": cpus,
        "slice_ns": 4_000_000,
        "elapsed_ns": elapsed_ns,
        "dispatch_overhead_ns": {"count": 0, "p50": None, "p99": None, "max": None},
        "threads": list(threads),
    }


def render(item: Any, width: int) -> str:
    out = Console(file=io.StringIO(), width=width, color_system=None)
    out.print(item)
    return out.file.getvalue()  # type: ignore[attr-defined]


def error_cell(text: str, name: str) -> str:
    (line,) = [ln for ln in text.splitlines() if name in ln]
    return [cell.strip() for cell in line.split("│")][7]


def test_one_thread_alone_is_not_unfair_whatever_the_overhead() -> None:
    alone = report(1, thread("solo/hog", 1024, 934_000_000))  # 6.6% lost to start-up
    assert fair_error(alone) == {"solo/hog": pytest.approx(0.0)}
    assert error_cell(render(report_view(alone, 160), 160), "solo/hog") == "+0.0%"


def test_the_error_is_the_deviation_from_the_weighted_split() -> None:
    exact = report(1, thread("p/a", 2048, 600_000_000), thread("p/b", 1024, 300_000_000))
    assert fair_error(exact) == {"p/a": pytest.approx(0.0), "p/b": pytest.approx(0.0)}
    skewed = report(1, thread("p/a", 2048, 500_000_000), thread("p/b", 1024, 400_000_000))
    errors = fair_error(skewed)
    assert errors["p/a"] == pytest.approx(5 / 9 / (2 / 3) - 1)  # -16.7%
    assert errors["p/b"] == pytest.approx(4 / 9 / (1 / 3) - 1)  # +33.3%
    text = render(report_view(skewed, 160), 160)
    assert (error_cell(text, "p/a"), error_cell(text, "p/b")) == ("-16.7%", "+33.3%")
    # a thread that blocks has no ideal and no error; its CPU time is not the hogs'
    mixed = report(1, thread("p/a", 1024, 450_000_000), thread("p/s", 1024, 100_000_000, "sleeper"))
    assert fair_error(mixed) == {"p/a": pytest.approx(0.0)}


def test_the_legend_says_what_share_ideal_and_error_mean() -> None:
    text = " ".join(
        render(report_view(report(2, thread("p/a", 1024, 900_000_000)), 160), 160).split()
    )
    assert "share: CPUs used (runtime / elapsed; 1.000 = one CPU)" in text
    assert "ideal: the weighted-fair share of the 2 CPUs" in text
    assert "error: share against its fair part of the 0.900 CPUs the CPU-bound threads" in text


LIVE_ROWS = [
    {"name": n, "weight": w, "class": c, "state": s, "runtime_ns": r, "share": sh, "ideal": i}
    for n, w, c, s, r, sh, i in [
        ("hogs/heavy", 2048, "normal", "running", 600_000_000, 0.66, 0.667),
        ("hogs/light", 1024, "normal", "ready", 300_000_000, 0.33, 0.333),
        ("shell/typist", 1024, "interactive", "blocked", 30_000_000, 0.031, None),
        ("echo/server", 1024, "ipcServer", "blocked", 1_000_000, 0.07, None),
        ("echo/client", 1024, "normal", "running", 2_000_000, 0.15, None),
    ]
]


@pytest.mark.parametrize("width", [80, 100, 160])
def test_the_live_view_keeps_one_row_per_thread_and_whole_names(width: int) -> None:
    text = render(live_table(LIVE_ROWS, 1_200_000_000, 5.0, width), width)
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines)
    assert "…" not in text
    for row in LIVE_ROWS:
        (line,) = [ln for ln in lines if row["name"] in ln]  # whole, on exactly one line
        assert "#" in line and row["state"] in line
    heavy = next(ln for ln in lines if "hogs/heavy" in ln)
    assert "|" in heavy.split("0.667")[1]  # the ideal marker is on the row's own bar


def test_the_final_table_at_80_columns_keeps_whole_names() -> None:
    names = [row["name"] for row in LIVE_ROWS]
    rep = report(2, *(thread(n, 1024, 100_000_000) for n in names))
    text = render(report_view(rep, 80), 80)
    assert "…" not in text
    for name in names:
        assert len([ln for ln in text.splitlines() if name in ln]) == 1


def test_bench_matrix_writes_the_docs_only_when_asked(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import bench.matrix as matrix

    saved = json.loads((ROOT / "bench" / "results" / "matrix.json").read_text())
    monkeypatch.setattr(matrix, "measure", lambda *_args: saved)
    docs, results = tmp_path / "benchmarks.md", tmp_path / "results" / "matrix.json"
    docs.write_text("# Benchmarks\n")
    monkeypatch.setattr(matrix, "DOCS", docs)
    monkeypatch.setattr(matrix, "RESULTS", results)
    args = ["bench", "matrix", "--runs", "1", "--settle", "0", "--json"]

    plain = CliRunner().invoke(main, args)
    assert plain.exit_code == 0, plain.output
    assert json.loads(plain.stdout) == saved
    assert docs.read_text() == "# Benchmarks\n" and not results.exists()

    recorded = CliRunner().invoke(main, [*args, "--write-docs"])
    assert recorded.exit_code == 0, recorded.output
    assert matrix.SECTION in docs.read_text()
    assert json.loads(results.read_text()) == saved
