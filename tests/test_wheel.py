"""A non-editable install works: build the wheel, install it into a fresh
venv and use the installed ``capos-sched`` away from the checkout.

The build runs offline and without build isolation (setuptools comes from the
test extras); the fresh venv gets only the wheel, and sees the dependencies
(trio, pycapnp, ...) through a ``.pth`` line naming this venv's site-packages,
so nothing is downloaded. The editable install of this venv is not visible
there: ``.pth`` files are read only in site directories, not in the folders
they add.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PIP = (sys.executable, "-m", "pip", "--quiet")
OFFLINE = ("--no-deps", "--no-index")
SOURCES = ("capos_sched", "bench", "schema", "manifests", "pyproject.toml", "README.md")


def _build_wheel(tmp_path: Path) -> Path:
    """Build from a copy of the sources, so no build/ appears in the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "results")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            # symlinks=True keeps capos_sched/_data's links pointing at the copies
            shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path / "dist"
    subprocess.run(
        [*PIP, "wheel", *OFFLINE, "--no-build-isolation", "--wheel-dir", str(dist), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("capos_sched-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh venv holding only the wheel."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [*PIP, "--python", str(python), "install", *OFFLINE, str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    fresh_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(fresh_site) / "deps-from-test-venv.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n"
    )
    return env_dir / "bin"


def _capos(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "capos-sched"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,  # away from the checkout: `python -m` (the workers) puts cwd on sys.path
    )


@pytest.mark.slow
def test_the_wheel_ships_the_schema_and_manifests_and_runs(installed: Path, tmp_path: Path) -> None:
    probe = (
        "import capnp, capos_sched.paths as p; capnp.load(str(p.CAPOS_SCHEMA)); print(p.DATA_DIR)"
    )
    where = subprocess.run(
        [str(installed / "python"), "-c", probe],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    data = Path(where)
    assert installed.parent in data.parents, f"capos_sched imported from {data}"
    assert not data.joinpath("schema").is_symlink()  # real copies, not links to a checkout
    assert {p.name for p in data.joinpath("schema").iterdir()} >= {"capos.capnp", "manifest.cue"}

    default = data / "manifests" / "default.cue"
    check = _capos(installed, tmp_path, "check", str(default))
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"{default}: OK (")

    export = _capos(installed, tmp_path, "export", "--json", str(default))
    assert export.returncode == 0, export.stderr
    assert json.loads(export.stdout)["machine"]["cpus"] == 2

    run = _capos(installed, tmp_path, "run", "--duration", "0.3", "--json")  # embedded default
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["manifest"] == "default.cue (default)"
    assert sum(t["runtime_ns"] for t in report["threads"]) > 0

    version = _capos(installed, tmp_path, "--version")
    assert version.returncode == 0 and "0.1.0" in version.stdout
