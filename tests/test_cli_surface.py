"""The CLI surface: bench commands print their JSON keys; log-level defaults."""

import json

from click.testing import CliRunner

from capos_sched.cli import main


def test_bench_dispatch_json_keys():
    result = CliRunner().invoke(
        main, ["bench", "dispatch", "--threads", "50", "--cpus", "3", "--cycles", "500", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {"threads", "cpus", "ns_per_dispatch", "heapq_ns", "ratio"}
    assert (report["threads"], report["cpus"]) == (50, 3)
    assert report["ns_per_dispatch"] > 0 and report["heapq_ns"] > 0
    # ns figures are rounded to 0.1 ns in the report; the ratio to 0.01.
    assert abs(report["ratio"] - report["ns_per_dispatch"] / report["heapq_ns"]) < 0.02


def test_bench_dispatch_rejects_bad_sizes_cleanly():
    result = CliRunner().invoke(main, ["bench", "dispatch", "--threads", "0"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "--threads" in result.output


def test_bench_manifest_json_keys():
    result = CliRunner().invoke(
        main, ["bench", "manifest", "--processes", "3", "--threads", "4", "--runs", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["threads"] == 12
    assert set(report) >= {"load_plan_s", "check_process_s", "json_loads_s", "goal_met"}
    assert 0 < report["load_plan_s"]["best"] <= report["load_plan_s"]["median"]


def test_log_level_defaults_to_info_for_serve_and_warning_elsewhere(monkeypatch):
    seen = []
    monkeypatch.setattr(
        "capos_sched.cli.configure_logging", lambda level, *_args, **_kw: seen.append(level)
    )
    runner = CliRunner()
    assert (
        runner.invoke(main, ["bench", "dispatch", "--threads", "5", "--cycles", "5"]).exit_code == 0
    )
    assert runner.invoke(main, ["serve", "--help"]).exit_code == 0
    assert runner.invoke(main, ["--log-level", "error", "serve", "--help"]).exit_code == 0
    assert seen == ["warning", "info", "error"]
