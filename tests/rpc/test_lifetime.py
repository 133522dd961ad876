"""Nothing the daemon started outlives it, and what a dead daemon left behind is
cleaned up on the next start, only when provably stale (issue 8, item 9)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from capos_sched.client import Disconnected, connect, connect_admin

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
    assert os.listdir(first.grants) == []  # a clean stop removes the lock file too


SPINNERS = BASE_MANIFEST.replace(
    '{weight: 2048, workload: {kind: "sleeper", burst: "100us", period: "50ms"}}',
    '{weight: 2048, workload: {kind: "spin"}}',
).replace(
    '{workload: {kind: "sleeper", burst: "100us", period: "50ms"}}', '{workload: {kind: "spin"}}'
)


def test_a_killed_worker_loses_no_thread_and_a_reload_keeps_it_live(workdir: Path) -> None:
    d = Daemon(workdir, manifest=SPINNERS)
    try:
        workers = _wait_events(d, "runtime started")[0]["workers"]
        time.sleep(0.3)
        for pid in workers:  # both CPUs run a spinner: each kill is mid-slice
            os.kill(pid, signal.SIGKILL)
        _wait_events(d, "worker crashed: thread re-queued, its slice lost", count=2)

        async def go() -> None:
            async with await connect_admin(d.admin) as admin:
                result = await admin.load(SPINNERS, str(d.manifest))
                assert sorted(result["kept"]) == ["fairness/a", "fairness/b"], result
                states = {t["name"]: t["state"] for t in (await admin.stats())["threads"]}
                assert "exited" not in states.values(), states
            async with await connect(d.listen, token=d.token("tuner")) as s:
                policy, a = await s.policy(), await s.thread("a")
                before = (await policy.snapshot(a)).runtime_ns
                await policy.set_weight(a, 3000)  # its handle is still valid
                for _ in range(100):  # it runs on (CPU time: slow on a busy host)
                    after = await policy.snapshot(a)
                    if after.runtime_ns > before:
                        break
                    await asyncio.sleep(0.1)
                assert after.weight == 3000 and after.runtime_ns > before

        arun(go)
    finally:
        assert d.stop() == 0


def _wait_events(d: Daemon, name: str, count: int = 1) -> list[dict]:  # type: ignore[type-arg]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = [e for e in d.events() if e.get("event") == name]
        if len(found) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no {count} x {name!r} in the log:\n{d.log()[-3000:]}")


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_two_signals_50ms_apart_still_exit_cleanly_and_fast(workdir: Path, second: int) -> None:
    d = Daemon(workdir, manifest=EXEC_SLEEPER)
    pids = _started_pids(d)
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    d.proc.send_signal(second)
    code = d.proc.wait(20)
    took = time.monotonic() - started
    d.stop()
    assert code == 0, d.log()[-2000:]
    assert took < 5.0, took
    assert not d.admin_path.exists() and not (workdir / "l.sock").exists()
    assert os.listdir(d.grants) == []
    assert [p for p in pids if _alive(p)] == []
    assert "Traceback" not in d.log()
