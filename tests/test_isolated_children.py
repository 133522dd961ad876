"""Child interpreters start isolated: nothing in the working directory or in
``PYTHONPATH`` is imported by a worker or by the load evaluator (issue 8, item 4)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from capos_sched.rpc import offload
from capos_sched.runtime.runtime import Runtime
from capos_sched.serve import plan_loader
from capos_sched.workload import Spin

from .runtime.helpers import plan, thread

TRAP = """\
import pathlib
pathlib.Path({marker!r}).write_text("imported from " + __file__)
raise SystemExit("trap module imported")
"""

MANIFEST = (
    'package capos\n\nmachine: {cpus: 1, policy: "wfq"}\n'
    'processes: p: threads: t: {workload: {kind: "spin"}}\n'
)


def _plant(directory: Path, modules: tuple[str, ...], marker: Path) -> None:
    directory.mkdir(exist_ok=True)
    for module in modules:
        (directory / f"{module}.py").write_text(TRAP.format(marker=str(marker)))


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory and a PYTHONPATH entry full of trap modules; the marker path."""
    marker = tmp_path / "marker"
    modules = ("argparse", "pickle", "ctypes", "hashlib", "mmap")
    _plant(tmp_path / "cwd", modules, marker)
    _plant(tmp_path / "pythonpath", modules, marker)
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pythonpath"))
    return marker


async def test_workers_import_nothing_from_the_cwd_or_pythonpath(hostile: Path) -> None:
    runtime = Runtime(plan(thread("p/t", Spin()), cpus=1))
    await runtime.run(duration_s=0.3)
    assert not hostile.exists(), hostile.read_text()
    assert runtime.report()["workers"]["restarts"] == 0
    assert runtime.report()["threads"][0]["runtime_ns"] > 0


def test_the_load_evaluator_imports_nothing_from_the_cwd_or_pythonpath(hostile: Path) -> None:
    try:
        result = asyncio.run(offload.run_loader(plan_loader, MANIFEST, "m.cue"))
    finally:
        assert not hostile.exists(), hostile.read_text()
    assert [p.name for p in result.processes] == ["p"]
