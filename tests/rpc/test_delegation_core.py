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


SERVE_MANIFEST = """\
package capos

machine: {cpus: 2, policy: "wfq"}

processes: {
	work: threads: a: {workload: {kind: "sleeper", burst: "100us", period: "50ms"}}
	ops: grants: cpus: {kind: "cpuDelegation", scheduler: "root"}
}
"""


def test_the_real_daemon_serves_the_root_node_and_fails_closed(workdir: Path) -> None:
    import json

    from .conftest import Daemon, assert_no_traceback, cli

    d = Daemon(workdir, SERVE_MANIFEST)
    try:

        async def main() -> None:
            async with await cl.connect(d.listen, token=d.token("ops")) as s:
                root = await s.cpu_delegation("cpus")
                rows = await root.holdings()
                assert [(h.cpu, h.held) for h in rows] == [
                    (0, ("enqImmed", "enq", "preempt")),
                    (1, ("enqImmed", "enq", "preempt")),
                ]
                assert await root.children() == []
                with pytest.raises(cl.InvalidArgument, match="not a direct child"):
                    await root.grant("web", [0], ["enq"])
                out = cli("revoke", "--admin", d.admin, "ops.cpus")
                assert out.returncode == 0, out.stderr
                with pytest.raises(cl.Revoked):
                    await root.holdings()

        arun(main)
        shown = cli("cpus", "show", "--admin", d.admin, "--json")
        assert shown.returncode == 0, shown.stderr
        assert [r["name"] for r in json.loads(shown.stdout)] == ["root"]
        out = cli("cpus", "kill", "web", "--admin", d.admin)
        assert out.returncode == 1 and out.stderr.startswith("invalidArgument:"), out.stderr
        assert_no_traceback(out.stderr)
    finally:
        assert d.stop() == 0


TREE_MANIFEST = """\
package capos

machine: {cpus: 4, policy: "wfq"}
schedulers: {
	web: {weight: 200}
	api: {parent: "web", weight: 100}
	batch: {weight: 100}
}
processes: {
	front: {
		scheduler: "web"
		threads: w: {workload: {kind: "sleeper", burst: "100us", period: "50ms"}}
	}
	webops: grants: node: {kind: "cpuDelegation", scheduler: "web"}
}
"""


def test_a_sub_scheduler_grant_reaches_its_subtree_only(workdir: Path) -> None:
    from .conftest import Daemon, cli

    d = Daemon(workdir, TREE_MANIFEST, args=("--no-execute",))
    try:

        async def main() -> None:
            async with await cl.connect(d.listen, token=d.token("webops")) as s:
                web = await s.cpu_delegation("node")
                assert await web.children() == ["api"]
                held = [h.cpu for h in await web.holdings() if "enq" in h.held]
                assert held, "the default split gives web exclusive CPUs"
                assert await web.grant("api", held[:1], ["enq"]) == []
                for call in (web.grant("batch", held[:1], ["enq"]), web.child("root")):
                    with pytest.raises(cl.InvalidArgument):
                        await call
                api = await web.child("api")
                assert held[0] in [h.cpu for h in await api.holdings()]
                out = cli("cpus", "kill", "api", "--admin", d.admin, "--reason", "drill")
                assert out.returncode == 0, out.stderr
                with pytest.raises(cl.Stale):
                    await api.holdings()
                assert await web.children() == []

        arun(main)
    finally:
        assert d.stop() == 0
