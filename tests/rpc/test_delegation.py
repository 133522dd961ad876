"""CpuDelegation over RPC: grants, revokes, kills, subscriptions and every
fail-closed rule, against an in-process daemon whose scheduler implements
the core's delegation contract (``fake_delegation.py``: the tree
web, batch under root; api under web)."""

from __future__ import annotations

from typing import Any

import pytest

from capos_sched import client as cl

from .conftest import InProcess, arun, assert_no_traceback


async def _root(d: InProcess) -> tuple[cl.Session, cl.CpuDelegationClient]:
    s = await cl.connect(d.listen, token=d.token("ops"))
    return s, await s.cpu_delegation("cpus")


def _held(rows: list[cl.CpuHolding]) -> dict[int, tuple[str, ...]]:
    return {h.cpu: h.held for h in rows}


def test_grant_child_holdings_and_implied_caps_cannot_be_redelegated(deleg: InProcess) -> None:
    async def main() -> None:
        s, root = await _root(deleg)
        async with s:
            assert await root.children() == ["web", "batch"]
            assert len(await root.holdings()) == 4
            assert await root.grant("web", [1, 2], ["enq"]) == []
            rows = await root.child_holdings("web")
            assert _held(rows) == {1: ("enq",), 2: ("enq",)}
            assert {h.cpu: h.effective for h in rows}[1] == ("enqImmed", "enq")
            web = await root.child("web")
            assert _held(await web.holdings()) == _held(rows)
            # implied caps can be used, never re-delegated: denied, nothing changes
            assert await web.grant("api", [1], ["enqImmed"]) == [1]
            assert await web.grant("api", [1, 3], ["enq"]) == [3]  # all-or-nothing per CPU
            assert _held(await web.child_holdings("api")) == {1: ("enq",)}

    arun(main)


def test_revoke_clears_the_whole_subtree(deleg: InProcess) -> None:
    async def main() -> None:
        s, root = await _root(deleg)
        async with s:
            await root.grant("web", [1, 2], ["enq"])
            web = await root.child("web")
            await web.grant("api", [1, 2], ["enq"])
            await root.revoke("web", [1], ["enqImmed"])
            assert _held(await root.child_holdings("web")) == {2: ("enq",)}
            assert _held(await web.child_holdings("api")) == {2: ("enq",)}

    arun(main)


def test_naming_a_non_child_is_invalid_argument_and_changes_nothing(deleg: InProcess) -> None:
    async def main() -> None:
        s, root = await _root(deleg)
        async with s:
            for call in (
                root.grant("api", [0], ["enq"]),  # a grandchild, not a direct child
                root.revoke("nobody", [0], ["enq"]),
                root.child_holdings("api"),
                root.kill("api", "no"),
                root.child("root"),
            ):
                with pytest.raises(cl.InvalidArgument) as info:
                    await call
                assert_no_traceback(str(info.value))
            with pytest.raises(cl.InvalidArgument, match="out of range"):
                await root.grant("web", [9], ["enq"])
            with pytest.raises(cl.InvalidArgument):
                await root.grant("web", [0], ["bogus"])  # refused in the client already
            web = await root.child("web")
            with pytest.raises(cl.InvalidArgument, match="not a direct child"):
                await web.grant("batch", [0], ["enq"])  # a sibling
            assert await root.child_holdings("web") == []

    arun(main)


def test_operator_revoke_of_the_grant_disconnects_the_node_and_its_children(
    deleg: InProcess,
) -> None:
    async def main() -> None:
        s, root = await _root(deleg)
        async with s:
            web = await root.child("web")
            deleg.call(lambda owner: owner.revoke("ops", "cpus"))
            for call in (root.holdings(), web.holdings(), root.grant("web", [0], ["enq"])):
                with pytest.raises(cl.Revoked) as info:
                    await call
                assert str(info.value).startswith("disconnected: revoked: ")
            rows = await _holdings_of(deleg, "web")
            assert rows == []  # the refused grant changed nothing

    arun(main)


async def _holdings_of(d: InProcess, name: str) -> list[Any]:
    return list(d.call(lambda owner: owner.host.cpu_holdings(name)))


def test_kill_makes_the_childs_node_stale_and_rehomes_nothing_else(deleg: InProcess) -> None:
    async def main() -> None:
        s, root = await _root(deleg)
        async with s:
            web = await root.child("web")
            api = await web.child("api")
            await root.kill("web", "misbehaved")
            assert await root.children() == ["batch"]
            for node in (web, api):
                with pytest.raises(cl.Stale) as info:
                    await node.holdings()
                assert "stale: scheduler" in str(info.value)
            with pytest.raises(cl.InvalidArgument):
                await root.child("web")  # gone: no longer a child
            record = deleg.call(lambda owner: owner.host.scheduler_stats("web")).exit
            assert (record.kind, record.message, record.removed) == (
                "parentKill",
                "misbehaved",
                ("web", "api"),
            )

    arun(main)


def test_a_kill_made_elsewhere_also_makes_the_node_stale(deleg: InProcess) -> None:
    """Not only kills through this node: the node checks that its scheduler lives."""

    async def main() -> None:
        s, root = await _root(deleg)
        async with s:
            web = await root.child("web")
            api = await web.child("api")
            deleg.call(lambda owner: owner.host.kill_scheduler("web", "api", "by the core", 0))
            with pytest.raises(cl.Stale, match="scheduler api was killed"):
                await api.holdings()
            assert await web.children() == []  # web itself lives on

    arun(main)


def test_subscribe_receives_caps_updates_and_ends_when_dropped(deleg: InProcess) -> None:
    async def main() -> None:
        s, root = await _root(deleg)
        async with s:
            web = await root.child("web")
            sub = await web.subscribe()
            await root.grant("web", [1, 2], ["enq"])
            first = await sub.next_event(10)
            assert (first.kind, first.cpus) == ("capsUpdated", (1, 2))
            second = await sub.next_event(10)
            assert (second.kind, second.cpu, second.before, second.after) == (
                "effectiveCapsUpdated",
                1,
                (),
                ("enqImmed", "enq"),
            )
            await sub.next_event(10)  # cpu 2
            # the root's own subscription sees nothing about web
            root_sub = await root.subscribe()
            await root.revoke("web", [2], ["enq"])
            event = await sub.next_event(10)
            assert (event.kind, event.cpus) == ("capsUpdated", (2,))
            assert root_sub.events.empty()
            subs = deleg.call(lambda owner: dict(owner.delegation.subscriptions))
            assert len(subs) == 2
            sub.close()
            root_sub.close()
            del sub, root_sub
            await _until(lambda: not deleg.call(lambda o: dict(o.delegation.subscriptions)))

    arun(main)


def test_a_revoked_nodes_subscription_ends_and_receives_nothing(deleg: InProcess) -> None:
    async def main() -> None:
        s, root = await _root(deleg)
        async with s:
            sub = await root.subscribe()
            deleg.call(lambda owner: owner.revoke("ops", "cpus"))
            admin = deleg.call(lambda owner: owner.delegation.root)
            deleg.call(lambda owner: owner.host.grant_cpus(admin.scheduler, "web", [0], _enq(), 0))
            await _until(lambda: not deleg.call(lambda o: dict(o.delegation.subscriptions)))
            assert sub.events.empty()

    arun(main)


def test_subscriptions_per_connection_are_bounded(deleg: InProcess) -> None:
    from capos_sched.rpc.delegation_server import MAX_SUBSCRIPTIONS_PER_CONNECTION

    async def main() -> None:
        s, root = await _root(deleg)
        async with s:
            subs = [await root.subscribe() for _ in range(MAX_SUBSCRIPTIONS_PER_CONNECTION)]
            with pytest.raises(cl.Overloaded):
                await root.subscribe()
            subs[0].close()
            del subs[0]
            await _until(
                lambda: (
                    len(deleg.call(lambda o: o.delegation.subscriptions))
                    < MAX_SUBSCRIPTIONS_PER_CONNECTION
                )
            )
            subs.append(await root.subscribe())  # a dropped one frees its slot

    arun(main)


def test_the_default_manifest_grants_no_cpu_delegation() -> None:
    from capos_sched.manifest import load_plan
    from capos_sched.paths import DEFAULT_MANIFEST

    plan = load_plan(DEFAULT_MANIFEST)
    assert not [g for p in plan.processes for g in p.grants if g.kind == "cpuDelegation"]


def test_a_cpu_delegation_grant_is_listed_with_its_scheduler(deleg: InProcess) -> None:
    rows = deleg.call(lambda owner: owner.grant_rows())
    (row,) = [r for r in rows if r.kind == "cpuDelegation"]
    assert (row.process, row.name, row.target, row.state) == ("ops", "cpus", "root", "granted")


def _enq() -> Any:
    from capos_sched.core.delegation import CpuCap

    return CpuCap.ENQ


async def _until(predicate: Any, timeout: float = 10) -> None:
    import asyncio
    import gc

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        gc.collect()
        await asyncio.sleep(0.05)


def test_a_load_that_drops_the_grant_revokes_the_node(deleg: InProcess) -> None:
    from .conftest import DELEG_MANIFEST

    dropped = DELEG_MANIFEST.replace(
        '\tops: grants: cpus: {kind: "cpuDelegation", scheduler: "root"}\n',
        '\tops: grants: policy: kind: "schedulingPolicy"\n',
    )
    assert dropped != DELEG_MANIFEST

    async def main() -> None:
        s, root = await _root(deleg)
        async with s:
            web = await root.child("web")
            async with await cl.connect_admin(deleg.admin) as admin:
                result = await admin.load(dropped, "dropped.cue")
            assert "ops.cpus" in result["revoked"]
            for node in (root, web):
                with pytest.raises(cl.Revoked):
                    await node.children()

    arun(main)
