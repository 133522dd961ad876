"""services/tuner: its control law, and the service steering a live daemon."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .conftest import REPO, Daemon, InProcess

TUNER = REPO / "services" / "tuner"


def _policy_module() -> Any:
    spec = importlib.util.spec_from_file_location("tuner_policy", TUNER / "tuner_policy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_control_law_moves_weights_toward_target_shares() -> None:
    law = _policy_module()
    weights = {"a": 2048, "b": 1024, "c": 1024}
    ran = {"a": 500, "b": 250, "c": 250}  # 2:1:1, target equal
    new = law.next_weights(weights, ran)
    assert new["a"] < 2048 and new["b"] > 1024 and new["c"] > 1024
    assert law.next_weights(weights, {"a": 0, "b": 0, "c": 0}) == {}  # nothing ran
    starving = law.next_weights({"a": 9000, "b": 9000}, {"a": 100, "b": 0})
    assert starving["b"] == 10000  # doubled, clamped to the schema's maximum
    # equal shares but unequal weights: already at target, nothing to do
    assert law.next_weights(weights, {"a": 1, "b": 1, "c": 1}) == {}
    tiny = law.next_weights({"a": 1, "b": 1}, {"a": 1000, "b": 1})
    assert tiny == {"b": round((0.5 / (1 / 1001)) ** 0.5)}  # a cannot go below 1
    # at the fixed point nothing changes
    assert law.next_weights({"a": 1000, "b": 1000}, {"a": 50, "b": 50}) == {}
    targets = law.next_weights({"a": 1000, "b": 1000}, {"a": 50, "b": 50}, {"a": 3, "b": 1})
    assert targets["a"] > 1000 > targets["b"]


def test_tuner_converges_a_simulated_fair_scheduler(workdir: Path) -> None:
    """The tuner (a real subprocess, over --listen with its token) against an
    in-process daemon whose threads are charged run time in proportion to
    their weights, like an ideal weighted-fair scheduler: it must bring the
    2:1:1 start to equal weights."""
    from capos_sched.manifest import load_plan_text

    plan = load_plan_text((REPO / "manifests" / "tuner.cue").read_text(), "tuner.cue")
    # run it over --listen instead of exec: drop the exec line
    plan = type(plan)(
        plan.source,
        plan.machine,
        tuple(type(p)(p.name, p.threads, None, p.grants) if p.exec else p for p in plan.processes),
    )
    d = InProcess(workdir, plan)
    tuner = subprocess.Popen(
        [
            sys.executable,
            str(TUNER),
            "--connect",
            d.listen,
            "--token-file",
            str(d.grants / "tuner.token"),
            "--period",
            "100ms",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def charge(owner: Any) -> dict[str, int]:
        sched = owner.host.inner.scheduler
        refs = owner.host.thread_refs()
        threads = {name: sched.resolve(ref) for name, ref in refs.items()}
        total = sum(t.weight for t in threads.values())
        for t in threads.values():
            t.charge_runtime(20_000_000 * t.weight // total)
        return {name.split("/")[1]: t.weight for name, t in threads.items()}

    try:
        deadline = time.monotonic() + 20
        weights = d.call(charge)
        while time.monotonic() < deadline:
            time.sleep(0.02)
            weights = d.call(charge)
            if max(weights.values()) <= 1.1 * min(weights.values()):
                break
        assert max(weights.values()) <= 1.1 * min(weights.values()), weights
    finally:
        tuner.terminate()
        out, _ = tuner.communicate(timeout=10)
        d.stop()
    assert "tuner: holding policy and 3 threads: a b c" in out
    assert "tuner: a share" in out


def test_tuner_cue_runs_the_tuner_through_exec(workdir: Path) -> None:
    # --no-execute: the hogs need not burn both CPUs for this check
    d = Daemon(workdir, manifest=REPO / "manifests" / "tuner.cue", args=("--no-execute",))
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            lines = [e.get("line", "") for e in d.events() if e.get("process") == "tuner"]
            if any(line.startswith("tuner: holding") for line in lines):
                break
            time.sleep(0.1)
        assert "tuner: holding policy and 3 threads: a b c" in lines
        assert d.stop() == 0
        assert any(
            e.get("event") == "process stopped" and e.get("process") == "tuner" for e in d.events()
        )
    finally:
        if d.alive():
            d.stop()
