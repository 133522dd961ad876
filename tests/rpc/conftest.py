"""Harnesses for the capability-surface tests.

* ``Daemon``: a real ``capos-sched serve`` process (sockets under a short /tmp
  directory, token files, its log captured as JSON lines).
* ``InProcess``: the same daemon stack (trio owner + RPC thread) inside the
  test process, for tests that need to reach into the owner (kill a thread,
  inject a fault).

Tests are plain functions that drive the asyncio client with ``arun``
(pytest-trio is configured for the suite, and pycapnp needs asyncio).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

BASE_MANIFEST = """\
package capos

machine: {cpus: 2, policy: "wfq"}

processes: {
	fairness: threads: {
		a: {weight: 2048, workload: {kind: "sleeper", burst: "100us", period: "50ms"}}
		b: {workload: {kind: "sleeper", burst: "100us", period: "50ms"}}
	}
	tuner: grants: {
		policy: kind: "schedulingPolicy"
		a: {kind: "thread", thread: "fairness/a"}
		b: {kind: "thread", thread: "fairness/b"}
	}
	viewer: grants: a: {kind: "thread", thread: "fairness/a"}
	other: grants: {
		policy: kind: "schedulingPolicy"
		b: {kind: "thread", thread: "fairness/b"}
	}
}
"""

SLEEPER_B = '\t\tb: {workload: {kind: "sleeper", burst: "100us", period: "50ms"}}\n'
"""The line declaring thread fairness/b in BASE_MANIFEST (tests remove it)."""

TRACEBACK_MARKERS = ("Traceback", 'File "', ".py", "line ", "raise ", "capnp.lib")


def arun(fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
    """Run an asyncio coroutine function to completion (with a time limit)."""

    async def main() -> T:
        return await asyncio.wait_for(fn(), timeout)

    return asyncio.run(main())


def assert_no_traceback(text: str) -> None:
    for marker in TRACEBACK_MARKERS:
        assert marker not in text, f"{marker!r} in client-visible error {text!r}"


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> Any:
    """Run ``capos-sched ARGS`` in a subprocess."""
    return subprocess.run(
        [sys.executable, "-c", "from capos_sched.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def wait_connectable(path: str, proc: subprocess.Popen[Any] | None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {proc.returncode}")
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(path)
                return
            except OSError:
                time.sleep(0.05)
    raise TimeoutError(f"{path} not connectable")


class Daemon:
    """A ``capos-sched serve`` subprocess."""

    def __init__(
        self,
        workdir: Path,
        manifest: str | Path = BASE_MANIFEST,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        listen: str | None = None,
        program: list[str] | None = None,
    ) -> None:
        """``program`` replaces ``capos-sched serve`` (it gets MANIFEST LISTEN
        ADMIN GRANTS_DIR and then ``args`` as positional arguments)."""
        self.dir = workdir
        if isinstance(manifest, Path):
            self.manifest = manifest
        else:
            self.manifest = workdir / "m.cue"
            self.manifest.write_text(manifest)
        self.listen = listen or f"unix:{workdir / 'l.sock'}"
        self.admin_path = workdir / "a.sock"
        self.admin = f"unix:{self.admin_path}"
        self.grants = workdir / "grants"
        self.log_path = workdir / "daemon.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = dict(os.environ)
        full_env.update(env or {})
        argv = [
            sys.executable,
            "-c",
            "from capos_sched.cli import main; main()",
            "--log-level",
            "info",
            "serve",
            str(self.manifest),
            "--listen",
            self.listen,
            "--admin",
            self.admin,
            "--grants-dir",
            str(self.grants),
            *args,
        ]
        if program is not None:
            argv = [*program, str(self.manifest), self.listen, self.admin, str(self.grants), *args]
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
        )
        wait_connectable(str(self.admin_path), self.proc)
        if self.listen.startswith("unix:"):
            wait_connectable(self.listen[5:], self.proc)

    def token(self, process: str) -> bytes:
        return (self.grants / f"{process}.token").read_bytes().strip()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="capt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(workdir: Path) -> Iterator[Daemon]:
    d = Daemon(workdir)
    try:
        yield d
    finally:
        d.stop()


# ------------------------------------------------------------- in-process


class InProcess:
    """serve_async in a trio thread of this process (no signals, PlanHost)."""

    def __init__(
        self,
        workdir: Path,
        plan: Any,
        max_calls: int = 1024,
        host_factory: Any = None,
        host_runner: Any = None,
        max_answers: int = 1024,
        stall_timeout_s: float = 10.0,
    ) -> None:
        from capos_sched.rpc.addr import parse_address
        from capos_sched.rpc.daemon import DaemonConfig, idle_runner, serve_async
        from capos_sched.serve import plan_host, plan_loader

        factory = host_factory or plan_host
        runner = host_runner or idle_runner
        self.dir = workdir
        self.listen = f"unix:{workdir / 'l.sock'}"
        self.admin = f"unix:{workdir / 'a.sock'}"
        self.grants = workdir / "grants"
        config = DaemonConfig(
            "<test>",
            parse_address(self.listen),
            parse_address(self.admin),
            self.grants,
            max_calls=max_calls,
            max_answers=max_answers,
            stall_timeout_s=stall_timeout_s,
            refuse_descendants=False,  # the test process starts its own clients
        )
        self.state: Any = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self.status: int | None = None
        ready = threading.Event()

        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    self.state = await nursery.start(
                        lambda task_status: serve_async(
                            config,
                            plan,
                            plan_loader,
                            factory,
                            runner,
                            task_status=task_status,
                            handle_signals=False,
                        )
                    )
                    ready.set()

        def run() -> None:
            try:
                trio.run(main)
            finally:
                ready.set()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(30)
        if self.state is None:
            raise RuntimeError("in-process daemon did not start")

    @property
    def owner(self) -> Any:
        return self.state.owner

    def call(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(owner)`` in the trio thread and return its result."""
        assert self._token is not None
        return trio.from_thread.run_sync(fn, self.owner, trio_token=self._token)

    def token(self, process: str) -> bytes:
        return (self.grants / f"{process}.token").read_bytes().strip()

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._scope.cancel)
        self._thread.join(30)


def run_with_bridge(owner: Any, body: Any) -> Any:
    """``await body(bridge)`` on an asyncio loop in a thread, while trio (this
    thread) owns ``owner`` through a real Bridge; its value (or its error)."""
    from capos_sched.rpc.bridge import Bridge

    result: dict[str, Any] = {}

    async def trio_main() -> None:
        bridge = Bridge(owner, trio.lowlevel.current_trio_token())

        def rpc_thread() -> None:
            async def go() -> None:
                bridge.attach(asyncio.get_running_loop())
                result["value"] = await body(bridge)

            try:
                asyncio.run(go())
            except BaseException as exc:
                result["error"] = exc

        t = threading.Thread(target=rpc_thread)
        t.start()
        await trio.to_thread.run_sync(t.join)
        bridge.close()

    trio.run(trio_main)
    if "error" in result:
        raise result["error"]
    return result["value"]


def base_plan() -> Any:
    from capos_sched.manifest import load_plan_text

    return load_plan_text(BASE_MANIFEST, "base.cue")


@pytest.fixture
def inproc(workdir: Path) -> Iterator[InProcess]:
    d = InProcess(workdir, base_plan())
    try:
        yield d
    finally:
        d.stop()


# ------------------------------------------------------ CPU delegation

DELEG_MANIFEST = """\
package capos

machine: {cpus: 4, policy: "wfq"}

processes: {
	work: threads: a: {workload: {kind: "sleeper", burst: "100us", period: "50ms"}}
	ops: grants: cpus: {kind: "cpuDelegation", scheduler: "root"}
	nothing: grants: policy: kind: "schedulingPolicy"
}
"""


@pytest.fixture
def deleg(workdir: Path) -> Iterator[InProcess]:
    from capos_sched.manifest import load_plan_text

    from .fake_delegation import fake_plan_host

    d = InProcess(
        workdir, load_plan_text(DELEG_MANIFEST, "deleg.cue"), host_factory=fake_plan_host()
    )
    try:
        yield d
    finally:
        d.stop()
