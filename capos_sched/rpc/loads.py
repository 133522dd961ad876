"""Admin.load: the RPC thread's plan loads, one at a time.

A load parses the manifest in a child interpreter (offload.py), checks every
``exec`` program, applies plan and grants in owner steps (the new threads are
spawned a batch per step, then one step swaps plan and grants: other calls,
answered between the steps, see the old plan or the new one, never a mix),
writes the token files off the owner thread, then stops and starts exec'd processes
(children.py). Any error before the owner operation changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import structlog

from . import offload
from .bridge import Bridge
from .children import ChildSupervisor, base_dir, check_exec
from .errors import WireError, wire_error
from .owner import LoadResult, Owner

log = structlog.get_logger("capos_sched.rpc")

LOAD_STEP_THREADS = 500
"""Threads per owner step of a plan load: about 25 ms of core spawns on the 2-core
VMs (docs/benchmarks.md, "Plan loads"), well under the 100 ms an owner step may take."""

PlanLoader = Callable[[str, str], Any]
"""``loader(source_text, name) -> Plan``; raises an exception whose str is the diagnostics.
A module-level function: it runs in a child interpreter (see offload.py)."""


@attrs.define(eq=False)
class PlanLoads:
    """Plan loads (RPC thread only). Invariant: at most one load runs at a time
    (``_lock``); ``base_dir`` is the directory of the manifest in force, where
    relative ``exec`` paths are resolved."""

    bridge: Bridge[Owner]
    loader: PlanLoader | None
    children: ChildSupervisor
    base_dir: Path
    step_threads: int = LOAD_STEP_THREADS
    """Threads spawned (or killed) per owner step of a load."""
    _lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    async def load(self, source: str, name: str) -> LoadResult:
        """Admin.load: parse (in a child interpreter), check exec paths, apply in the owner, then
        start/stop exec'd processes. Any error before the apply changes nothing."""
        if self.loader is None:
            raise wire_error("unimplemented", "this daemon was started without a manifest loader")
        async with self._lock:
            try:
                plan = await offload.run_loader(self.loader, source, name)
            except offload.OffloadError as exc:
                _log_refused(name, str(exc))
                raise wire_error("invalidArgument", str(exc)) from None
            base = base_dir(name, self.base_dir)
            try:
                for proc in plan.processes:
                    argv = getattr(proc, "exec", None)
                    if argv:
                        check_exec(proc.name, tuple(argv), base)
                result = await self.apply_plan(plan, name)
            except WireError as exc:
                _log_refused(name, str(exc))
                raise
            files = result.diff.token_files
            await asyncio.to_thread(files.apply)  # fsync'd writes: never in the owner
            await self.bridge.submit(
                functools.partial(Owner.prune_token_files, names=tuple(n for n, _ in files.write))
            )
            log.info(
                "plan loaded",
                manifest=name,
                added=result.added,
                removed=result.removed,
                revoked=result.revoked,
            )
            stop = [*result.diff.removed_processes, *result.diff.restarted_processes]
            await self.children.stop_many(stop)
            self.base_dir = base
            for pname, argv, pg in result.start:
                await self.children.start(pname, argv, pg, base)
            return result

    async def apply_plan(self, plan: Any, name: str) -> LoadResult:
        """Apply ``plan`` in owner steps of at most ``step_threads`` threads each, so the
        owner answers other calls between them; they see the old plan until the commit.
        A failure (or cancellation) before the commit undoes the staging."""
        submit = self.bridge.submit
        await submit(functools.partial(Owner.stage_load, plan=plan))
        try:
            while not await submit(functools.partial(Owner.load_step, limit=self.step_threads)):
                pass
            result: LoadResult = await submit(functools.partial(Owner.commit_load, name=name))
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(submit(Owner.abort_load))
            raise
        try:
            while not await submit(functools.partial(Owner.retire_step, limit=self.step_threads)):
                pass
        finally:  # committed whatever happens here: never leave the owner mid-load
            with contextlib.suppress(Exception):
                await asyncio.shield(submit(Owner.abort_load))
        return result


def _log_refused(name: str, diagnostics: str) -> None:
    """A refused Admin.load, with its first problem (the caller gets them all)."""
    lines = diagnostics.splitlines()
    log.warning(
        "plan refused",
        manifest=name,
        error=lines[0] if lines else "",
        problems=max(1, sum(1 for line in lines if line.startswith(f"{name}:"))),
    )
