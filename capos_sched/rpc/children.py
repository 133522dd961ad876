"""Supervision of the processes a manifest runs with ``exec``.

Each exec'd process gets its CapSet as the bootstrap of an inherited
socketpair (fd number in ``CAPOS_SCHED_FD``); its stdout/stderr are pumped
into the log line by line. The supervisor runs on the RPC thread's asyncio
loop; the connection serving each child's CapSet is served by the caller's
``serve`` coroutine (the same path as any accepted connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
import capnp
import structlog

from capos_sched.interpreter import python_module_argv
from capos_sched.procguard import is_child_subreaper
from capos_sched.proctree import adopted_zombies, foreign_children
from capos_sched.wire import FD_ENV, PROCESS_ENV

from .errors import wire_error
from .grants import ProcessGrants
from .servers import CapSetServer, ConnContext

log = structlog.get_logger("capos_sched.rpc")


EXEC_ENV_ALLOWED = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR"}
)
"""The daemon's variables an exec'd process sees (besides ``LC_*``); nothing
else of the daemon's environment (addresses, secrets, ``PYTHONPATH``) passes."""
REAP_PERIOD_S = 1.0

NewContext = Callable[[str], ConnContext]
"""``new_ctx(kind) -> ConnContext`` for a child's connection."""
Serve = Callable[[ConnContext, Any, Any, int], Awaitable[None]]
"""``serve(ctx, stream, bootstrap, traversal_words)``: serve one connection until it ends."""


@attrs.define(eq=False)
class Child:
    """A process the manifest runs with ``exec``.

    Invariant: ``process`` is None only while starting or after a failed start.
    """

    name: str
    argv: tuple[str, ...]
    process: asyncio.subprocess.Process | None = None
    stream: Any = None
    server: Any = None
    tasks: list[asyncio.Task[Any]] = attrs.Factory(list)


@attrs.define(eq=False)
class ChildSupervisor:
    """Starts, watches and stops exec'd processes, on the RPC thread's loop.

    Invariant: ``children`` maps a process name to its one live (or starting)
    Child; a stopped or failed child is removed.
    """

    new_ctx: NewContext
    serve: Serve
    words: int
    stop_grace_s: float = 3.0
    exec_user: str | None = None
    """Run exec'd processes as this user (the daemon must be root)."""
    children: dict[str, Child] = attrs.Factory(dict)
    _reaper: asyncio.Task[None] | None = None

    async def start(self, name: str, argv: tuple[str, ...], pg: ProcessGrants, cwd: Path) -> None:
        """Start one process; a failed start is logged, not raised."""
        child = Child(name, argv)
        self.children[name] = child
        ours, theirs = socket.socketpair()
        try:
            ctx = self.new_ctx(f"exec:{name}")
            child.stream = await capnp.AsyncIoStream.create_connection(sock=ours)
            cap_set = CapSetServer(ctx, pg)
            env = exec_env(os.environ, name, theirs.fileno())
            child.process = await asyncio.create_subprocess_exec(
                *shim_argv(argv, os.getpid(), self.exec_user),
                pass_fds=(theirs.fileno(),),
                env=env,
                cwd=str(cwd),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except Exception as exc:
            log.error("process failed to start", process=name, argv=list(argv), error=str(exc))
            if child.stream is not None:
                child.stream.close()
            ours.close()
            self.children.pop(name, None)
            return
        finally:
            theirs.close()
        log.info("process started", process=name, pid=child.process.pid, argv=list(argv))
        if self._reaper is None and is_child_subreaper():
            self._reaper = asyncio.create_task(self._reap_adopted())
        child.tasks = [
            asyncio.create_task(self.serve(ctx, child.stream, cap_set, self.words)),
            asyncio.create_task(_pump(name, "stdout", child.process.stdout)),
            asyncio.create_task(_pump(name, "stderr", child.process.stderr)),
            asyncio.create_task(_watch(child)),
        ]

    async def stop(self, name: str) -> None:
        """Stop the named process if it runs (SIGTERM, then SIGKILL after the grace)."""
        child = self.children.get(name)
        if child is not None:
            await self._stop(child)

    async def stop_many(self, names: list[str]) -> None:
        await asyncio.gather(*(self.stop(n) for n in names))

    def kill_all(self) -> None:
        """SIGKILL every running process's group now (a hurried shutdown)."""
        for child in self.children.values():
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self._stop(c) for c in list(self.children.values())))
        if self._reaper is not None:
            self._reaper.cancel()
            await asyncio.gather(self._reaper, return_exceptions=True)
            self._reaper = None
            await _kill_adopted()

    async def _reap_adopted(self) -> None:
        """Reap orphans re-parented to the daemon (a child subreaper, see procguard.py).

        Only zombies outside the daemon's process group (workers and the load
        evaluator stay in it) that are not a supervised child, and that were
        zombies one period ago too (their own waiter had time), are reaped.
        """
        seen: set[int] = set()
        while True:
            await asyncio.sleep(REAP_PERIOD_S)
            ours = {c.process.pid for c in self.children.values() if c.process is not None}
            zombies = set(adopted_zombies(os.getpid(), exclude=ours))
            for pid in zombies & seen:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            seen = zombies

    async def _stop(self, child: Child) -> None:
        proc = child.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
            log.info("process stopped", process=child.name, returncode=proc.returncode)
        for task in child.tasks:
            task.cancel()
        await asyncio.gather(*child.tasks, return_exceptions=True)
        if child.stream is not None:
            child.stream.close()
        if self.children.get(child.name) is child:
            del self.children[child.name]


async def _kill_adopted(rounds: int = 40) -> None:
    """At the end: SIGKILL (and reap) every orphan an exec'd process left to us,
    its own children included (they are re-parented to us in turn)."""
    for _ in range(rounds):
        left = foreign_children(os.getpid(), exclude=set())
        if not left:
            return
        for pid, state in left:
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                if state != "Z":
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, os.WNOHANG)
        await asyncio.sleep(0.02)
    log.warning("orphans of exec'd processes still alive at stop", pids=[p for p, _ in left])


async def _watch(child: Child) -> None:
    assert child.process is not None
    code = await child.process.wait()
    log.info("process exited", process=child.name, pid=child.process.pid, returncode=code)


async def _pump(name: str, stream_name: str, reader: asyncio.StreamReader | None) -> None:
    if reader is None:
        return
    while True:
        try:
            line = await reader.readline()
        except ValueError:  # a line longer than the reader's limit
            line = await reader.read(64 * 1024)
        if not line:
            return
        log.info(
            "process output",
            process=name,
            stream=stream_name,
            line=line.decode(errors="replace").rstrip("\n"),
        )


def exec_env(environ: Mapping[str, str], name: str, fd: int) -> dict[str, str]:
    """An exec'd process's environment: the allow-listed variables, its inherited
    socket's fd and name, and PATH with the daemon's interpreter first."""
    env = {k: v for k, v in environ.items() if k in EXEC_ENV_ALLOWED or k.startswith("LC_")}
    env[FD_ENV] = str(fd)
    env[PROCESS_ENV] = name
    env["PATH"] = child_path(env.get("PATH", ""))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def shim_argv(argv: tuple[str, ...], parent: int, user: str | None) -> list[str]:
    """The command that confines itself (exec_shim.py), then becomes ``argv``."""
    extra = [] if user is None else ["--user", user]
    return python_module_argv(
        "capos_sched.rpc.exec_shim", "--parent", str(parent), *extra, "--", *argv
    )


def child_path(path: str) -> str:
    """PATH for children: the daemon's interpreter directory first, so
    ``python`` in a manifest's ``exec`` is the daemon's own (with capos_sched)."""
    bindir = os.path.dirname(sys.executable)
    parts = [p for p in path.split(os.pathsep) if p and p != bindir]
    return os.pathsep.join([bindir, *parts])


def base_dir(name: str, default: Path) -> Path:
    """The directory exec paths are relative to: an absolute manifest's own directory."""
    path = Path(name)
    return path.parent if path.is_absolute() and path.parent.is_dir() else default


def check_exec(process: str, argv: tuple[str, ...], base: Path) -> None:
    """Refuse (before anything changes) an exec whose program cannot be found."""
    prog = argv[0]
    if "/" in prog:
        full = prog if os.path.isabs(prog) else str(base / prog)
        ok = os.path.isfile(full) and os.access(full, os.X_OK)
    else:
        ok = shutil.which(prog, path=child_path(os.environ.get("PATH", ""))) is not None
    if not ok:
        raise wire_error("invalidArgument", f"process {process}: exec program {prog!r} not found")
