"""The structured log: --log-format, --log-file, workers' stderr routed through
it, and one level for the same event whichever command logs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner

from capos_sched.cli import main
from capos_sched.runtime.workers import relay_stderr

from .test_cli_behaviour import CLI, FAIRNESS, ROOT, capos


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_log_file_gets_json_lines_and_stderr_stays_clean(tmp_path: Path) -> None:
    log_file = tmp_path / "capos.log"
    args = ["--log-level", "info", "--log-file", str(log_file)]
    result = capos(*args, "run", FAIRNESS, "--duration", "0.2", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    events = [e["event"] for e in json_lines(log_file.read_text())]
    assert events[0] == "runtime started" and "runtime stopped" in events
    again = capos(*args, "run", FAIRNESS, "--duration", "0.2", "--json")
    assert again.returncode == 0, again.stderr
    assert len(json_lines(log_file.read_text())) > len(events)  # appended, not replaced


@pytest.mark.parametrize(
    ("log_format", "is_json"), [("json", True), ("console", False), ("auto", True)]
)
def test_log_format_chooses_the_rendering(log_format: str, is_json: bool) -> None:
    args = ["--log-level", "info", "--log-format", log_format]
    result = capos(*args, "run", FAIRNESS, "--duration", "0.2", "--json")
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    if is_json:  # auto: stderr is a pipe here
        assert json.loads(first)["event"] == "runtime started"
    else:
        assert "runtime started" in first and not first.startswith("{")
        assert "\x1b[" not in first  # no colour codes into a pipe


def test_an_unwritable_log_file_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["--log-file", str(tmp_path / "no" / "dir" / "x.log"), "check", FAIRNESS]
    )
    assert result.exit_code == 2
    assert "--log-file" in result.stderr and "No such file or directory" in result.stderr


def test_worker_stderr_lines_become_log_events() -> None:
    read_end, write_end = os.pipe()
    with structlog.testing.capture_logs() as logs:
        thread = relay_stderr(os.fdopen(read_end, "rb"), cpu=3, pid=42)
        os.write(write_end, b"capos-sched worker: SCHED_IDLE refused: nope\n\nTraceback \xff\n")
        os.close(write_end)
        thread.join(timeout=10)
    assert not thread.is_alive(), "the relay ends at EOF"
    assert logs == [
        {"event": "worker stderr", "log_level": "warning", "cpu": 3, "pid": 42, "line": line}
        for line in ("SCHED_IDLE refused: nope", "Traceback \ufffd")
    ]


async def test_a_real_worker_s_stderr_becomes_log_events() -> None:
    import trio

    from capos_sched.runtime.workers import Worker

    worker = Worker.create(cpu=0, nice=0, core=None)
    read_end, write_end = os.pipe()
    try:
        with structlog.testing.capture_logs() as logs:
            await worker.start()
            # a pipe cannot be mapped: the worker says so on its stderr and goes on
            await worker.attach(7, read_end, blocks=1, block_size=4096)
            with trio.move_on_after(20):
                while not [e for e in logs if e["event"] == "worker stderr"]:
                    await trio.sleep(0.02)
            await worker.stop()
    finally:
        worker.close()
        os.close(read_end)
        os.close(write_end)
    (event,) = [e for e in logs if e["event"] == "worker stderr"]
    assert event["log_level"] == "warning" and event["cpu"] == 0 and event["pid"] == worker.pid
    assert event["line"].startswith("attach 7 failed:")


def _stopping_level(argv: list[str], ready: str, tmp_path: Path) -> tuple[str, int]:
    tmp_path.mkdir()
    log_file = tmp_path / "stop.log"
    proc = subprocess.Popen(
        [CLI, "--log-level", "debug", "--log-file", str(log_file), *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while ready not in (log_file.read_text() if log_file.exists() else ""):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    (event,) = [e for e in json_lines(log_file.read_text()) if e["event"] == "stopping"]
    assert event["signal"] == "SIGTERM"
    return event["level"], proc.returncode


def test_stopping_has_one_level_for_run_and_serve(tmp_path: Path) -> None:
    run = _stopping_level(
        ["run", FAIRNESS, "--duration", "60", "--json"], "runtime started", tmp_path / "run"
    )
    sockets = tmp_path / "s"
    sockets.mkdir()
    serve_args = ["serve", FAIRNESS, "--no-execute"]
    serve_args += ["--listen", f"unix:{sockets}/l.sock", "--admin", f"unix:{sockets}/a.sock"]
    serve = _stopping_level(serve_args, '"serving"', tmp_path / "serve")
    assert run[0] == serve[0] == "info"
    assert (run[1], serve[1]) == (143, 0)  # as their --help says


def test_benchmarks_run_as_modules_log_to_stderr_not_into_their_json() -> None:
    # `python -m bench.matrix --json` once printed structlog lines on stdout,
    # before the JSON: a bench module logs with structlog's default unless
    # bench/__init__ configures it.
    script = (
        "import bench, structlog; "
        "structlog.get_logger('capos_sched.bench').warning('a warning from a benchmark')"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "a warning from a benchmark" in done.stderr
