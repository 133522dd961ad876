"""``capos-sched check`` and ``capos-sched export``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from capos_sched.manifest import DEFAULT_MANIFEST, load_plan, load_plan_text
from capos_sched.manifest.commands import check, export

FAIRNESS = DEFAULT_MANIFEST.parent / "system-thread-fairness.cue"
BAD = 'machine: cpus: 0\nprocesses: p: threads: t: {wieght: 1, workload: kind: "spin"}\n'


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def bad_file(tmp_path):
    path = tmp_path / "bad.cue"
    path.write_text(BAD)
    return path


def test_check_valid_manifests(runner):
    result = runner.invoke(check, [str(FAIRNESS), str(DEFAULT_MANIFEST)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{FAIRNESS}: OK (2 processes, 3 threads, 2 CPUs, policy wfq)",
        f"{DEFAULT_MANIFEST}: OK ({_summary(DEFAULT_MANIFEST)})",
    ]
    assert result.stderr == ""


def _summary(path) -> str:
    plan = load_plan(path)
    return (
        f"{len(plan.processes)} processes, {len(plan.threads())} threads, "
        f"{plan.machine.cpus} CPUs, policy {plan.machine.policy}"
    )


def test_check_reports_every_error_on_stderr_and_exits_1(runner, bad_file):
    result = runner.invoke(check, [str(FAIRNESS), str(bad_file)])
    assert result.exit_code == 1
    assert result.stdout == f"{FAIRNESS}: OK (2 processes, 3 threads, 2 CPUs, policy wfq)\n"
    assert result.stderr == (
        f"{bad_file}:1:16: cpus 0 outside [1, 64]\n"
        "    machine: cpus: 0\n"
        "                   ^\n"
        f"{bad_file}:2:28: field `wieght` not allowed; did you mean `weight`?\n"
        '    processes: p: threads: t: {wieght: 1, workload: kind: "spin"}\n'
        "                               ^\n"
    )


def test_check_json_reports_every_file_and_error(runner, bad_file, tmp_path):
    missing = tmp_path / "missing.cue"
    result = runner.invoke(check, ["--json", str(FAIRNESS), str(bad_file), str(missing)])
    assert result.exit_code == 1
    assert result.stderr == ""
    assert json.loads(result.stdout) == {
        "files": [
            {"file": str(FAIRNESS), "ok": True, "errors": []},
            {
                "file": str(bad_file),
                "ok": False,
                "errors": [
                    {"line": 1, "col": 16, "message": "cpus 0 outside [1, 64]"},
                    {
                        "line": 2,
                        "col": 28,
                        "message": "field `wieght` not allowed; did you mean `weight`?",
                    },
                ],
            },
            {
                "file": str(missing),
                "ok": False,
                "errors": [{"line": 0, "col": 0, "message": "no such file"}],
            },
        ]
    }


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing.cue", "no such file"),
        (lambda tmp: tmp, "is a directory, not a manifest file"),
    ],
)
def test_check_unreadable_paths(runner, tmp_path, make, message):
    path = make(tmp_path)
    result = runner.invoke(check, [str(path)])
    assert result.exit_code == 1
    assert result.stderr == f"{path}: {message}\n"
    assert "Traceback" not in result.output


def test_check_binary_and_non_utf8_files(runner, tmp_path):
    binary = tmp_path / "binary.cue"
    binary.write_bytes(bytes(range(256)) * 4)
    latin = tmp_path / "latin.cue"
    latin.write_bytes(b"machine: cpus: 1 // \xff\n")
    result = runner.invoke(check, [str(binary), str(latin)])
    assert result.exit_code == 1
    # byte 10 is a newline, so byte 128 (the first invalid one) is line 2, column 118
    assert f"{binary}:2:118: the file is not valid UTF-8 (byte 0x80)" in result.stderr
    assert f"{latin}:1:21: the file is not valid UTF-8 (byte 0xff)" in result.stderr
    assert "Traceback" not in result.output


def test_check_needs_a_manifest(runner):
    result = runner.invoke(check, [])
    assert result.exit_code == 2
    assert "Missing argument" in result.output


def test_export_json_is_the_plan_export(runner):
    result = runner.invoke(export, [str(FAIRNESS), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == load_plan(FAIRNESS).to_json()
    assert json.loads(result.stdout)["processes"]["fairness"]["threads"]["a"] == {
        "weight": 2048,
        "class": "normal",
        "workload": {"kind": "spin"},
    }


def test_export_cue_is_a_manifest_that_loads_to_the_same_plan(runner):
    result = runner.invoke(export, [str(DEFAULT_MANIFEST)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("package capos\n\nmachine: {\n")
    again = load_plan_text(result.stdout)
    original = load_plan(DEFAULT_MANIFEST)
    assert (again.machine, again.processes) == (original.machine, original.processes)
    assert again.to_json() == original.to_json()


def test_export_of_an_invalid_manifest(runner, bad_file):
    result = runner.invoke(export, [str(bad_file), "--json"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith(f"{bad_file}:1:16: cpus 0 outside [1, 64]\n")


def test_help_texts(runner):
    check_help = runner.invoke(check, ["--help"]).output
    assert "Usage: check [OPTIONS] MANIFEST..." in check_help
    assert "file:line:col" in check_help
    export_help = runner.invoke(export, ["--help"]).output
    assert "--json" in export_help
    assert "defaults filled in" in export_help


def test_the_commands_are_registered_on_capos_sched():
    from capos_sched.cli import main

    assert main.commands["check"] is check
    assert main.commands["export"] is export


def test_the_real_command_line_never_shows_a_traceback(tmp_path):
    binary = tmp_path / "binary.cue"
    binary.write_bytes(b"\x00\xff\xfe garbage \x81")
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from capos_sched.cli import main; main()",
            "check",
            str(FAIRNESS),
            str(binary),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 1
    assert completed.stdout == f"{FAIRNESS}: OK (2 processes, 3 threads, 2 CPUs, policy wfq)\n"
    assert "Traceback" not in completed.stderr
    assert f"{binary}:1:2: the file is not valid UTF-8 (byte 0xff)" in completed.stderr
    assert f"{tmp_path}: is a directory, not a manifest file" in completed.stderr
