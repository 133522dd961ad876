"""``bench matrix``: every policy side by side on every case, a list of cases
that another module can extend, and a quick mode."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from click.testing import CliRunner

import bench.matrix as matrix
from capos_sched.cli import main


def fake_case(calls: list[Any]) -> matrix.Case:
    def measure(s: matrix.Settings) -> dict[str, Any]:
        calls.append(s)
        out: dict[str, Any] = {p: {"x": 0.01 * (i + 1)} for i, p in enumerate(s.policies)}
        out["linux"] = {"x": 0.5}
        return out

    def render(case: dict[str, Any], result: dict[str, Any]) -> list[str]:
        return ["### fake", *(f"| {p} | {matrix._spread_pct(case[p]['x'])} |" for p in case
                             if p != "foreign_load_cpus")]  # fmt: skip

    def gates(case: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {"fake_wfq": matrix._gate(matrix.med(case, "wfq", "x"), 0.02, "max")}

    return matrix.Case("fake", measure, render, gates)


def test_a_registered_case_is_measured_under_every_policy_rendered_and_gated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(matrix, "CASES", list(matrix.CASES))
    calls: list[Any] = []
    matrix.register(fake_case(calls))
    assert matrix.case_names()[-1] == "fake"
    result = matrix.measure(["fake"], 2, 0.5, quick=True)
    assert [c.policies for c in calls] == [matrix.POLICIES] * 2 and calls[0].quick
    case = result["matrix"]["fake"]
    assert {k for k in case if k != "foreign_load_cpus"} == {"wfq", "eevdf", "fifo", "linux"}
    assert case["eevdf"]["x"]["median"] == pytest.approx(0.02)
    assert result["gates"] == {
        "fake_wfq": {"value": pytest.approx(0.01), "limit": 0.02, "kind": "max", "pass": True}
    }
    assert result["quick"] and set(result["loadavg"]) == {"start", "end"}
    text = matrix.render_markdown(result)
    assert "`capos-sched bench matrix --quick`" in text and "Load average (1 min)" in text
    assert "| eevdf | 2.00% |" in text and "| linux | 50.00% |" in text
    # registering again under the same name replaces the case
    matrix.register(fake_case(calls))
    assert matrix.case_names().count("fake") == 1


def test_the_command_compares_all_three_policies_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}

    def measure(cases: Any, runs: Any, window: Any, settle: Any, quick: Any, policies: Any) -> Any:
        seen.update(cases=cases, runs=runs, window=window, settle=settle, quick=quick)
        seen["policies"] = list(policies)
        return {"matrix": {}, "runs": runs, "date": "d", "machine": "m", "python": "3",
                "seconds": 1.0, "window_s": window, "gates": {}}  # fmt: skip

    monkeypatch.setattr(matrix, "measure", measure)
    out = CliRunner().invoke(main, ["bench", "matrix", "--quick"])
    assert out.exit_code == 0, out.output
    assert seen == {
        "cases": matrix.case_names(),
        "runs": 1,
        "window": 1.0,
        "settle": 0.0,
        "quick": True,
        "policies": ["wfq", "eevdf", "fifo"],
    }
    assert "short_request" in seen["cases"]
    out = CliRunner().invoke(main, ["bench", "matrix"])
    assert (seen["runs"], seen["window"], seen["settle"], seen["quick"]) == (3, 3.0, 30.0, False)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "wfq,cfs"], "unknown policy(ies) cfs"),
        (["--policies", ","], "unknown policy(ies) (none given)"),
        (["--cases", "nope"], "unknown case(s) nope"),
    ],
)
def test_bad_cases_and_policies_are_usage_errors(args: list[str], message: str) -> None:
    out = CliRunner().invoke(main, ["bench", "matrix", *args])
    assert out.exit_code == 2 and message in out.output


@pytest.mark.slow
def test_quick_short_request_and_fairness_cases_on_the_real_runtime() -> None:
    result = matrix.measure(["fairness", "short_request"], 1, 0.5, quick=True)
    short = result["matrix"]["short_request"]
    for policy in ("wfq", "eevdf", "fifo"):
        v = short[policy]
        assert 0 < v["share"]["median"] < 1
        wake = v["wake_latency_ns"]
        assert 0 <= wake["p50"]["median"] <= wake["p99"]["median"]
    assert short["linux"]["oversleep_ns"]["count"]["median"] > 0
    fairness = result["matrix"]["fairness"]
    assert {"wfq", "eevdf", "fifo", "linux"} <= set(fairness)
    text = matrix.render_markdown(result)
    for row in ("| WFQ |", "| EEVDF |", "| FIFO |"):
        assert text.count(row) == 2, row  # in both tables
    assert "| Linux |" in text and "| Linux: sleeping process beside 2 hogs |" in text
    assert "### 6. Short requests at equal weight" in text


def test_a_case_module_joins_the_matrix(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    (tmp_path / "ext_case_mod.py").write_text(
        "from bench.matrix import Case, register\n\n"
        "register(Case('ext', lambda s: {p: {'x': 1.0} for p in s.policies},"
        " lambda c, r: ['### ext']))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(matrix, "CASES", list(matrix.CASES))
    monkeypatch.delitem(sys.modules, "ext_case_mod", raising=False)
    matrix.load_case_modules(["ext_case_mod"])
    assert matrix.case_names()[-1] == "ext"
    result = matrix.measure(["ext"], 1, 0.5, quick=True)
    assert result["matrix"]["ext"]["eevdf"]["x"]["median"] == 1.0
    assert "### ext" in matrix.render_markdown(result)
