"""Nothing the daemon started outlives it, and what a dead daemon left behind is
cleaned up on the next start, only when provably stale (issue 8, item 9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capos_sched.client import Disconnected, connect

from .conftest import BASE_MANIFEST, Daemon, arun

EXEC_SLEEPER = BASE_MANIFEST.replace(
    "\tviewer: grants:",
    '\tctl: {\n\t\texec: ["sh", "-c", "echo up; exec sleep 600"]\n'
    '\t\tgrants: a: {kind: "thread", thread: "fairness/a"}\n'
    "\t}\n\tviewer: grants:",
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _started_pids(d: Daemon) -> list[int]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        events = d.events()
        execd = [e["pid"] for e in events if e.get("event") == "process started"]
        workers = next((e["workers"] for e in events if e.get("event") == "runtime started"), [])
        up = any(e.get("line") == "up" for e in events)
        if execd and workers and up:
            return [*execd, *workers]
        time.sleep(0.05)
    raise AssertionError(d.log())


def test_nothing_outlives_a_sigkilled_daemon_and_the_next_start_cleans_up(
    workdir: Path,
) -> None:
    first = Daemon(workdir, manifest=EXEC_SLEEPER)
    pids = _started_pids(first)
    old_tuner = first.token("tuner")
    first.stop(signal.SIGKILL)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    assert [p for p in pids if _alive(p)] == [], "alive 3 s after kill -9 of the daemon"
    # Left behind: both sockets and every token file.
    assert first.admin_path.exists() and (workdir / "l.sock").exists()
    assert (first.grants / "viewer.token").exists()

    # The next daemon on the same paths drops the viewer: its stale token must go.
    second = Daemon(
        workdir, manifest=BASE_MANIFEST.replace("\tviewer: grants:", "\tviewer2: grants:")
    )
    try:
        names = sorted(p.name for p in second.grants.glob("*.token"))
        assert names == ["other.token", "tuner.token", "viewer2.token"], names
        assert second.token("tuner") != old_tuner

        async def stale_token() -> None:
            with pytest.raises(Disconnected):
                await connect(second.listen, token=old_tuner)

        arun(stale_token)
    finally:
        assert second.stop() == 0


def test_a_live_daemons_grants_dir_is_not_touched(workdir: Path) -> None:
    first = Daemon(workdir)
    try:
        before = {p.name: p.read_bytes() for p in first.grants.glob("*.token")}
        other = workdir / "b"
        other.mkdir()
        proc = subprocess.run(  # a second serve on other sockets, same grants dir
            [
                sys.executable,
                "-c",
                "from capos_sched.cli import main; main()",
                "serve",
                str(first.manifest),
                "--listen",
                f"unix:{other / 'l.sock'}",
                "--admin",
                f"unix:{other / 'a.sock'}",
                "--grants-dir",
                str(first.grants),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1
        assert "in use by another running daemon" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert {p.name: p.read_bytes() for p in first.grants.glob("*.token")} == before
    finally:
        assert first.stop() == 0
    assert os.listdir(first.grants) == []  # a clean stop removes its lock file too
