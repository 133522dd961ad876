"""A stand-in for the core's delegation API, for the RPC layer's tests.

``FakeDelegationScheduler`` wraps a real core Scheduler and adds the methods
of the delegation contract (``scheduler_names``, ``grant_cpus``...) over the
authority table of ``capos_sched.core.delegation``. Each mutation returns an
Effects-like value whose ``notifications`` are what the contract promises:
``capsUpdated`` for every scheduler whose holdings changed, and
``effectiveCapsUpdated`` per CPU (at once: nothing runs on a PlanHost).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from capos_sched.core import CpuHoldingView as Holding
from capos_sched.core import CpuNotification as Notification
from capos_sched.core.delegation import CpuCap, DelegationTree, implied


@attrs.define
class FakeEffects:
    notifications: list[Notification] = attrs.Factory(list)
    kicks: list[int] = attrs.Factory(list)
    preempts: list[int] = attrs.Factory(list)


@attrs.define
class Stats:
    rejected_inserts: int = 0
    forced_admits: int = 0
    denied_kicks: int = 0
    denied_preempts: int = 0
    evictions: int = 0
    allocated_ns: dict[int, int] = attrs.Factory(dict)
    exit: Any = None


class FakeDelegationScheduler:
    """The real Scheduler (attribute access falls through) plus the contract."""

    def __init__(self, inner: Any, tree: Sequence[tuple[str, str]]) -> None:
        self._inner = inner
        self.tree = DelegationTree(len(inner.cpus))
        for name, parent in tree:
            self.tree.attach(name, parent, 100)
        self.stats: dict[str, Stats] = {n: Stats() for n in self.tree.nodes}
        self.killed: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def scheduler_names(self) -> list[str]:
        return list(self.tree.nodes)

    def scheduler_children(self, name: str) -> list[str]:
        return list(self.tree._node(name).children)

    def scheduler_alive(self, name: str) -> bool:
        return name in self.tree.nodes

    def cpu_holdings(self, name: str) -> list[Holding]:
        node = self.tree._node(name)
        return [Holding(c, caps, implied(caps)) for c, caps in sorted(node.held.items())]

    def _snapshot(self) -> dict[str, dict[int, CpuCap]]:
        return {n: dict(node.held) for n, node in self.tree.nodes.items()}

    def _diff(self, before: dict[str, dict[int, CpuCap]]) -> FakeEffects:
        effects = FakeEffects()
        for name, node in self.tree.nodes.items():
            old = before.get(name, {})
            cpus = sorted(c for c in set(old) | set(node.held) if old.get(c) != node.held.get(c))
            if not cpus:
                continue
            effects.notifications.append(Notification(name, "capsUpdated", tuple(cpus)))
            for c in cpus:
                effects.notifications.append(
                    Notification(
                        name,
                        "effectiveCapsUpdated",
                        cpu=c,
                        before=implied(old.get(c, CpuCap.NONE)),
                        after=implied(node.held.get(c, CpuCap.NONE)),
                    )
                )
        return effects

    def grant_cpus(
        self, parent: str, child: str, cpus: Sequence[int], caps: CpuCap, now_ns: int
    ) -> tuple[list[int], FakeEffects]:
        before = self._snapshot()
        denied = self.tree.grant(parent, child, cpus, caps)
        return denied, self._diff(before)

    def revoke_cpus(
        self, parent: str, child: str, cpus: Sequence[int], caps: CpuCap, now_ns: int
    ) -> FakeEffects:
        before = self._snapshot()
        self.tree.revoke(parent, child, cpus, caps)
        return self._diff(before)

    def kill_scheduler(self, parent: str, child: str, reason: str, now_ns: int) -> FakeEffects:
        record = self.tree.kill(parent, child, reason)
        self.killed.update(record.removed)
        self.stats[child].exit = record
        return FakeEffects()

    def scheduler_stats(self, name: str) -> Stats:
        if name not in self.stats:
            raise KeyError(name)
        return self.stats[name]


DEFAULT_TREE = (("web", "root"), ("batch", "root"), ("api", "web"))


def fake_plan_host(tree: Sequence[tuple[str, str]] = DEFAULT_TREE) -> Any:
    """A ``host_factory`` for serve_async: a PlanHost whose scheduler has the contract."""
    from capos_sched.serve import plan_host

    def factory(plan: Any) -> Any:
        host = plan_host(plan)
        host.inner.scheduler = FakeDelegationScheduler(host.inner.scheduler, tree)
        return host

    return factory
