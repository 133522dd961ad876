"""Golden tests: manifests and the JSON ``capos-sched export --json`` prints.

The corpus is ``tests/manifest/golden/*.cue`` plus the shipped manifest that
issue 3 specifies exactly (``manifests/system-thread-fairness.cue``); each has
``golden/<name>.json``. The JSON is the data ``cue export
schema/manifest.cue <manifest>`` gives for the same files; it was produced by
capos-sched and checked by hand against the CUE spec.

To regenerate after an intended change: ``CAPOS_UPDATE_GOLDEN=1 pytest
tests/manifest/test_golden.py``, then review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from capos_sched.manifest import load_plan, load_plan_text
from capos_sched.manifest.loader import DEFAULT_MANIFEST
from capos_sched.manifest.render import to_cue

GOLDEN = Path(__file__).parent / "golden"
SHIPPED = DEFAULT_MANIFEST.parent
# Of the shipped manifests only the one issue 3 specifies exactly is pinned;
# the others' sizes are tuned by the runtime's benchmarks, so they are only
# required to load (here) and to keep their shape (test_shipped.py).
PINNED = ("system-thread-fairness",)
CASES = sorted(GOLDEN.glob("*.cue")) + [SHIPPED / f"{name}.cue" for name in PINNED]
UPDATE = os.environ.get("CAPOS_UPDATE_GOLDEN") == "1"


def test_every_golden_json_has_its_manifest():
    names = {case.stem for case in CASES}
    assert len(names) == len(CASES), "a golden manifest shadows a shipped one"
    assert {path.stem for path in GOLDEN.glob("*.json")} == names


@pytest.mark.parametrize("manifest", sorted(SHIPPED.glob("*.cue")), ids=lambda path: path.stem)
def test_every_shipped_manifest_loads(manifest: Path):
    assert load_plan(manifest).source == str(manifest)


@pytest.mark.parametrize("manifest", CASES, ids=lambda path: path.stem)
def test_export_matches_golden_json(manifest: Path):
    exported = load_plan(manifest).to_json()
    expected_path = GOLDEN / f"{manifest.stem}.json"
    if UPDATE:
        expected_path.write_text(json.dumps(exported, indent=2, ensure_ascii=False) + "\n")
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    assert exported == expected
    # Field order is part of the output too (it follows the schema, then the manifest).
    assert json.dumps(exported) == json.dumps(expected)


@pytest.mark.parametrize("manifest", CASES, ids=lambda path: path.stem)
def test_exported_cue_loads_back_to_the_same_plan(manifest: Path):
    plan = load_plan(manifest)
    again = load_plan_text(to_cue(plan.to_json()), "exported.cue")
    assert again.to_json() == plan.to_json()
    assert again.machine == plan.machine
    assert again.processes == plan.processes


def test_the_examples_in_the_documentation_are_valid():
    docs = Path(__file__).resolve().parents[2] / "docs" / "manifests.md"
    blocks = docs.read_text(encoding="utf-8").split("```cue\n")[1:]
    examples = [block.split("```")[0] for block in blocks]
    assert len(examples) == 2
    complete, template = examples
    plan = load_plan_text(complete, "example.cue")
    assert [t.full_name for t in plan.threads()] == [
        "hogs/heavy",
        "hogs/light",
        "shell/typist",
        "echo/server",
        "echo/client",
    ]
    assert [g.name for g in plan.process("tuner").grants] == ["policy", "hogs/heavy", "hogs/light"]
    hogs = load_plan_text("machine: cpus: 1\n" + template, "template.cue").threads()
    assert [(t.name, t.weight, t.workload.total_ns) for t in hogs] == [
        ("a", 1024, 250_000_000),
        ("b", 512, 250_000_000),
    ]
