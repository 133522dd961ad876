"""The ``capos-sched`` command as a user meets it: no traceback whatever the
terminal or the disk, one message and one exit status per kind of problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAIRNESS = str(ROOT / "manifests" / "system-thread-fairness.cue")
CLI = str(Path(sys.executable).with_name("capos-sched"))


def capos(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


# ---------------------------------------------------------------- tracebacks


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_trace_that_cannot_be_written_keeps_the_report() -> None:
    result = capos("run", FAIRNESS, "--duration", "0.2", "--json", "--trace", "/dev/full")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    report = json.loads(result.stdout)  # the report came out first
    assert sum(t["runtime_ns"] for t in report["threads"]) > 0
    assert result.stderr.splitlines()[-1] == (
        "error: cannot write the trace to /dev/full: No space left on device"
    )


ASCII_RUNS = [
    (["simulate"], 0),
    (["simulate", FAIRNESS, "--duration", "1"], 0),
    (["run", FAIRNESS, "--duration", "0.2"], 0),
    (["check", FAIRNESS, "/no/such/file.cue"], 1),
    (["export", FAIRNESS], 0),
    (["--help"], 0),
    (["set-class", "--help"], 0),
]


@pytest.mark.parametrize(("args", "status"), ASCII_RUNS, ids=lambda v: str(v))
def test_an_ascii_terminal_never_gets_a_unicode_error(args: list[str], status: int) -> None:
    result = capos(*args, env={"PYTHONIOENCODING": "ascii"})
    assert "UnicodeEncodeError" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == status, result.stderr
    assert result.stdout.strip()


def test_an_ascii_report_is_readable_ascii() -> None:
    result = capos("simulate", FAIRNESS, "--duration", "1", env={"PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()
    assert "system-thread-fairness.cue | policy wfq | 2 CPUs" in result.stdout


def test_an_ascii_terminal_shows_a_non_ascii_file_name(tmp_path: Path) -> None:
    manifest = tmp_path / "fär.cue"
    manifest.write_text(Path(FAIRNESS).read_text())
    result = capos("simulate", str(manifest), "--duration", "1", env={"PYTHONIOENCODING": "ascii"})
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 0
    assert "f?r.cue | policy wfq" in result.stdout


# ------------------------------------------------------- unreadable manifests

BAD_MANIFESTS = {
    "missing": lambda d: d / "missing.cue",
    "directory": lambda d: d,
    "not-utf8": lambda d: _write(d / "latin.cue", b"machine: cpus: 1 // \xff\n"),
    "invalid": lambda d: _write(d / "bad.cue", b"machine: {cpus: 0}\n"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _invoke(args: list[str]) -> tuple[int, str]:
    from click.testing import CliRunner

    from capos_sched.cli import main

    result = CliRunner().invoke(main, args)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    return result.exit_code, result.stderr


@pytest.mark.parametrize("kind", sorted(BAD_MANIFESTS))
def test_every_command_reports_a_bad_manifest_as_check_does(kind: str, tmp_path: Path) -> None:
    path = str(BAD_MANIFESTS[kind](tmp_path))
    check_status, check_text = _invoke(["check", path])
    assert check_status == 1 and check_text.startswith(f"{path}:")
    sockets = ["--listen", f"unix:{tmp_path}/l.sock", "--admin", f"unix:{tmp_path}/a.sock"]
    for args in (
        ["export", path],
        ["export", "--json", path],
        ["run", path],
        ["simulate", path],
        ["serve", path, *sockets],
        ["load", "--admin", f"unix:{tmp_path}/a.sock", path],  # no daemon needed
    ):
        assert _invoke(args) == (1, check_text), args
