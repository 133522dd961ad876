"""The text report's per-scheduler table (runtime/view.py), from a simulated
delegation scenario; a report without sub-schedulers has none."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from capos_sched.manifest import load_plan
from capos_sched.runtime.simulate import simulate_plan
from capos_sched.runtime.view import _cpu_ranges, holdings_text, report_view

MANIFESTS = Path(__file__).resolve().parents[2] / "manifests"


def text_of(name: str) -> str:
    report = simulate_plan(load_plan(MANIFESTS / name), duration_ns=2_000_000_000, jitter=0.0)
    out = Console(width=200, record=True, file=io.StringIO())
    out.print(report_view(report, width=200))
    return out.export_text()


def line_of(text: str, scheduler: str) -> str:
    return next(line for line in text.splitlines() if line.split()[:1] == [scheduler])


def test_cpu_ranges_and_holdings_are_compact():
    assert _cpu_ranges([5, 1, 2, 3]) == "1-3,5"
    assert _cpu_ranges([0]) == "0"
    holdings = [
        {"cpu": 1, "held": ["enqImmed", "enq"]},
        {"cpu": 2, "held": ["enqImmed", "enq"]},
        {"cpu": 3, "held": ["enqImmed"]},
        {"cpu": 0, "held": []},
    ]
    assert holdings_text(holdings) == "enq 1-2 enqImmed 3"
    assert holdings_text([]) == "-"


def test_the_kill_scenario_shows_holdings_time_and_the_exit_record():
    text = text_of("delegation-kill.cue")
    web, batch = line_of(text, "web"), line_of(text, "batch")
    assert "enq 1-2" in web and "2000.0" in web  # one spinning thread on CPU 1 for 2 s
    assert "(killed)" in batch and "parentKill" in batch
    assert "maintenance" in text


def test_a_report_without_sub_schedulers_has_no_scheduler_table():
    text = text_of("default.cue")
    assert "schedulers" not in text and "parentKill" not in text
