"""A revoke over RPC under load, on the real runtime (worker processes): the
child scheduler's threads leave the revoked CPU, as the per-CPU CPU time
allocated to it shows, and the Perfetto trace marks the revoke.

The plan's threads of process ``webwork`` are spawned into sub-scheduler
``web`` (attached under the root: the default split on 4 CPUs gives the root
CPUs 0-1 and web CPUs 2-3), which is what ``processes: P: scheduler:`` will do
once manifests carry it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capos_sched import client as cl

from .conftest import InProcess, arun

MANIFEST = """\
package capos

machine: {cpus: 4, policy: "wfq", slice: "2ms"}

processes: {
	webwork: threads: {
		a: {workload: {kind: "spin"}}
		b: {workload: {kind: "spin"}}
		c: {workload: {kind: "spin"}}
	}
	rootwork: threads: r: {workload: {kind: "spin"}}
	ops: grants: cpus: {kind: "cpuDelegation", scheduler: "root"}
}
"""


def _runtime_factory(trace: Any) -> Any:
    from capos_sched.runtime.runtime import Runtime
    from capos_sched.serve import CoreHost

    class DelegRuntime(Runtime):
        def _spawn(self, thread_plan: Any, now_ns: int) -> Any:
            scheduler = "web" if thread_plan.process == "webwork" else "root"
            if scheduler != "root" and not self.scheduler.scheduler_alive(scheduler):
                self.scheduler.attach_scheduler(scheduler, "root", "wfq", 100, now_ns)
            wake = self.scheduler.spawn(
                thread_plan.full_name,
                now_ns,
                thread_plan.weight,
                thread_plan.latency_class,
                scheduler=scheduler,
            )
            self._refs[thread_plan.full_name] = wake.thread
            self.on_thread_added(thread_plan, wake.thread)
            return wake.thread

    def factory(plan: Any) -> Any:
        return CoreHost(DelegRuntime(plan, "wfq", trace=trace))

    return factory


async def _run_runtime(host: Any, *, task_status: Any) -> None:
    await host.inner.run(stop_when_finished=False, task_status=task_status)


@pytest.fixture
def loaded(workdir: Path) -> Iterator[tuple[InProcess, Any]]:
    from capos_sched.manifest import load_plan_text
    from capos_sched.runtime.trace import TraceRecorder

    trace = TraceRecorder(4)
    d = InProcess(
        workdir,
        load_plan_text(MANIFEST, "deleg-runtime.cue"),
        host_factory=_runtime_factory(trace),
        host_runner=_run_runtime,
    )
    try:
        yield d, trace
    finally:
        d.stop()


def _allocated(d: InProcess, name: str) -> dict[int, int]:
    return dict(d.call(lambda owner: owner.host.scheduler_stats(name)).allocated_ns)


@pytest.mark.slow
def test_a_revoke_under_load_moves_the_childs_threads_off_the_cpu(
    loaded: tuple[InProcess, Any],
) -> None:
    d, trace = loaded

    async def main() -> None:
        async with await cl.connect(d.listen, token=d.token("ops")) as s:
            root = await s.cpu_delegation("cpus")
            held = {h.cpu for h in await root.child_holdings("web")}
            assert held == {2, 3}
            await asyncio.sleep(0.5)  # web's three spinners keep CPUs 2 and 3 busy
            before = _allocated(d, "web")
            assert before.get(3, 0) > 0 and before.get(2, 0) > 0
            sub = await (await root.child("web")).subscribe()
            await root.revoke("web", [3], ["enqImmed"])
            caps = await sub.next_event(10)
            assert (caps.kind, caps.cpus) == ("capsUpdated", (3,))
            effective = await sub.next_event(10)  # raised by CPU 3's next dispatch
            assert (effective.kind, effective.cpu, effective.after) == (
                "effectiveCapsUpdated",
                3,
                (),
            )
            assert "enqImmed" in effective.before
            await asyncio.sleep(0.1)  # well beyond one dispatch (2 ms slices)
            settled = _allocated(d, "web")
            await asyncio.sleep(0.5)
            after = _allocated(d, "web")
            assert after.get(3, 0) == settled.get(3, 0), "web still ran on CPU 3"
            assert after.get(2, 0) > settled.get(2, 0), "web stopped running on CPU 2"
            assert {h.cpu for h in await root.child_holdings("web")} == {2}

    started = time.monotonic()
    arun(main)
    assert time.monotonic() - started < 30
    marks = [e for e in trace.events if e.get("cat") == "delegation"]
    # The revoke (marked by the host), then the eviction once it is in effect
    # on CPU 3 (marked by the runtime).
    assert [(e["name"], e["tid"]) for e in marks] == [("revoke web", 3), ("evict web", 3)]
