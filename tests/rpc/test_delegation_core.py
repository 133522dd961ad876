"""CpuDelegation over RPC against the real core (core/subsched.py): an
in-process daemon whose PlanHost's Scheduler has sub-schedulers web and batch
attached under the root (the default qmap split on 4 CPUs: root 0, web 1,
batch 2, CPU 3 the shared pool)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capos_sched import client as cl

from .conftest import DELEG_MANIFEST, InProcess, arun


def core_host(plan: Any) -> Any:
    from capos_sched.serve import plan_host

    host = plan_host(plan)
    for name in ("web", "batch"):
        host.inner.scheduler.attach_scheduler(name, "root", "wfq", 100, 0)
    return host


@pytest.fixture
def real(workdir: Path) -> Iterator[InProcess]:
    from capos_sched.manifest import load_plan_text

    d = InProcess(workdir, load_plan_text(DELEG_MANIFEST, "deleg.cue"), host_factory=core_host)
    try:
        yield d
    finally:
        d.stop()


def _held(rows: list[cl.CpuHolding]) -> dict[int, tuple[str, ...]]:
    return {h.cpu: h.held for h in rows}


def test_grant_revoke_and_the_default_split_through_the_real_core(real: InProcess) -> None:
    async def main() -> None:
        async with await cl.connect(real.listen, token=real.token("ops")) as s:
            root = await s.cpu_delegation("cpus")
            assert await root.children() == ["web", "batch"]
            # its exclusive CPU, and the pool (enqImmed only) in the first rotation
            assert _held(await root.child_holdings("web")) == {
                1: ("enqImmed", "enq"),
                3: ("enqImmed",),
            }
            sub = await (await root.child("web")).subscribe()
            assert await root.grant("web", [3], ["enq", "preempt"]) == []
            event = await sub.next_event(10)
            assert (event.kind, event.cpus) == ("capsUpdated", (3,))
            await root.revoke("web", [1, 3], ["enqImmed"])
            assert await root.child_holdings("web") == []
            event = await sub.next_event(10)
            assert event.kind == "capsUpdated" and set(event.cpus) == {1, 3}
            web = await root.child("web")
            with pytest.raises(cl.InvalidArgument, match="not a direct child"):
                await web.grant("batch", [1], ["enq"])

    arun(main)


def test_kill_through_the_real_core_leaves_a_parent_kill_record(real: InProcess) -> None:
    async def main() -> None:
        async with await cl.connect(real.listen, token=real.token("ops")) as s:
            root = await s.cpu_delegation("cpus")
            batch = await root.child("batch")
            await root.kill("batch", "drill")
            with pytest.raises(cl.Stale):
                await batch.holdings()
        async with await cl.connect_admin(real.admin) as admin:
            rows = {r["name"]: r for r in await admin.schedulers()}
            assert rows["batch"]["alive"] is False
            assert rows["batch"]["exit"] == {"kind": "parentKill", "message": "drill"}
            assert rows["root"]["parent"] is None and rows["web"]["alive"] is True

    arun(main)
