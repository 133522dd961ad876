"""A plan load is applied in owner steps (issue 8, item 13) and stays atomic:
every other operation, answered between the steps, sees the old plan or the
new one, never a mix; a failure before the commit changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from capos_sched.core import InvalidArgument, LatencyClass, ThreadState
from capos_sched.manifest.plan import GrantPlan, MachinePlan, Plan, ProcessPlan, ThreadPlan
from capos_sched.rpc.bridge import Bridge
from capos_sched.rpc.errors import WireError
from capos_sched.rpc.grants import GrantTable
from capos_sched.rpc.loads import PlanLoads
from capos_sched.rpc.owner import Owner
from capos_sched.runtime.host import PlanHost
from capos_sched.serve import CoreHost
from capos_sched.workload import Sleeper

from .conftest import run_with_bridge

SLEEP = Sleeper(burst_ns=0, period_ns=10**9)


def _thread(process: str, name: str, weight: int = 1024) -> ThreadPlan:
    return ThreadPlan(process, name, weight, LatencyClass.NORMAL, SLEEP)


def _old_plan() -> Plan:
    old = ProcessPlan("old", (_thread("old", "a"), _thread("old", "b"), _thread("old", "c")))
    tuner = ProcessPlan(
        "tuner",
        (),
        grants=(
            GrantPlan("policy", "schedulingPolicy"),
            GrantPlan("a", "thread", "old/a"),
            GrantPlan("c", "thread", "old/c"),
        ),
    )
    return Plan("old.cue", MachinePlan(1, "wfq", 4_000_000), (old, tuner))


def _new_plan(threads: int) -> Plan:
    """old/c removed, old/a kept with a new weight, ``threads`` new ones."""
    old = ProcessPlan("old", (_thread("old", "a", 3000), _thread("old", "b")))
    big = ProcessPlan("big", tuple(_thread("big", f"t{i}") for i in range(threads)))
    tuner = ProcessPlan(
        "tuner",
        (),
        grants=(
            GrantPlan("policy", "schedulingPolicy"),
            GrantPlan("a", "thread", "old/a"),
            GrantPlan("t0", "thread", "big/t0"),
        ),
    )
    return Plan("new.cue", MachinePlan(1, "wfq", 4_000_000), (old, big, tuner))


def _owner() -> Owner:
    plan = _old_plan()
    host = CoreHost(PlanHost(plan))
    return Owner(host, GrantTable.from_plan(plan, host), "old.cue")


def _view(owner: Owner) -> dict[str, Any]:
    """Everything an RPC could observe of the plan (trio thread)."""
    refs = owner.host.thread_refs()
    return {
        "names": sorted(refs),
        "plan": owner.plan_name,
        "weights": {
            n: owner.host.snapshot(r).weight for n, r in refs.items() if n.startswith("old")
        },
        "grants": sorted((r.process, r.name, r.state) for r in owner.grant_rows()),
        "live_in_core": sum(
            1 for t in owner.host.inner.scheduler.threads() if t.state is not ThreadState.EXITED
        ),
    }


def _staging(owner: Owner) -> bool:
    staged = owner._staged
    return staged is not None and staged.state == "staging"


def _loads(bridge: Bridge[Owner], step_threads: int) -> PlanLoads:
    return PlanLoads(bridge, None, None, None, step_threads=step_threads)  # type: ignore[arg-type]


def test_a_load_takes_many_owner_steps_and_every_call_between_sees_one_whole_plan() -> None:
    owner = _owner()
    before = _view(owner)

    async def body(bridge: Bridge[Owner]) -> Any:
        observed: list[tuple[bool, dict[str, Any]]] = []
        load = asyncio.ensure_future(_loads(bridge, 100).apply_plan(_new_plan(2000), "new.cue"))
        while not load.done():
            observed.append(await bridge.submit(lambda o: (_staging(o), _view(o))))
        return await load, observed, await bridge.submit(_view)

    result, observed, after = run_with_bridge(owner, body)
    assert result.added[:1] == ("big/t0",) and result.removed == ("old/c",)
    assert owner.load_steps >= 2000 // 100 + 2  # stage, 20 spawn steps, commit, retire
    during = [view for staging, view in observed if staging]
    assert len(during) >= 10  # calls were answered while the plan was being applied
    assert after != before
    assert after["names"] == sorted(["old/a", "old/b", *(f"big/t{i}" for i in range(2000))])
    assert after["weights"]["old/a"] == 3000
    for view in during:  # the live count grows as threads are staged; nothing nameable does
        assert {k: v for k, v in view.items() if k != "live_in_core"} == {
            k: v for k, v in before.items() if k != "live_in_core"
        }
    for _, view in observed:
        assert view["names"] in (before["names"], after["names"])


def test_a_failure_mid_load_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    owner = _owner()
    before = _view(owner)
    scheduler = owner.host.inner.scheduler
    real_spawn = scheduler.spawn
    spawned = []

    def failing_spawn(*args: Any, **kwargs: Any) -> Any:
        if len(spawned) == 450:
            raise InvalidArgument("injected failure in the 451st spawn")
        spawned.append(args)
        return real_spawn(*args, **kwargs)

    monkeypatch.setattr(scheduler, "spawn", failing_spawn)

    async def body(bridge: Bridge[Owner]) -> Any:
        with pytest.raises(WireError, match="injected failure"):
            await _loads(bridge, 100).apply_plan(_new_plan(1000), "new.cue")
        failed = await bridge.submit(_view)
        monkeypatch.setattr(scheduler, "spawn", real_spawn)
        await _loads(bridge, 100).apply_plan(_new_plan(10), "new.cue")  # not left mid-load
        return failed, await bridge.submit(_view)

    failed, reloaded = run_with_bridge(owner, body)
    assert len(spawned) == 450 and owner.load_steps >= 5  # it failed in the fifth step
    assert failed == before
    assert reloaded["names"] == sorted(["old/a", "old/b", *(f"big/t{i}" for i in range(10))])
