"""CoreHost's delegation half (capos_sched/serve.py): effects are acted on,
notifications reach the sinks exactly once, the trace marks grants and revokes."""

from __future__ import annotations

from typing import Any

from capos_sched.core import Scheduler
from capos_sched.core.delegation import CpuCap
from capos_sched.runtime.trace import TraceRecorder
from capos_sched.serve import CoreHost

from .fake_delegation import DEFAULT_TREE, FakeDelegationScheduler


class FakeRuntime:
    """What CoreHost uses of a Runtime: scheduler, _act, notification_sinks, trace."""

    def __init__(self) -> None:
        self.scheduler = FakeDelegationScheduler(Scheduler(4, "wfq", 4_000_000), DEFAULT_TREE)
        self.notification_sinks: list[Any] = []
        self.trace = TraceRecorder(4)
        self.acted: list[Any] = []

    def now_ns(self) -> int:
        return 5_000

    def _rel(self, now: int) -> int:
        return now

    def _act(self, effects: Any) -> None:
        self.acted.append(effects)
        for sink in self.notification_sinks:
            sink(effects.notifications)


def test_a_runtime_acts_on_the_effects_and_its_sinks_get_each_notification_once() -> None:
    runtime = FakeRuntime()
    host = CoreHost(runtime)
    got: list[Any] = []
    host.add_notification_sink(got.extend)
    assert host.grant_cpus("root", "web", [1, 2], CpuCap.ENQ, 0) == []
    assert len(runtime.acted) == 1
    assert [n.kind for n in got] == ["capsUpdated", "effectiveCapsUpdated", "effectiveCapsUpdated"]
    assert host.sinks == []  # registered with the runtime, not twice


def test_a_bare_plan_host_sends_the_notifications_to_its_sinks() -> None:
    class Bare:
        scheduler = FakeDelegationScheduler(Scheduler(2, "wfq", 4_000_000), DEFAULT_TREE)

    host = CoreHost(Bare())
    got: list[Any] = []
    host.add_notification_sink(got.extend)
    host.grant_cpus("root", "web", [0], CpuCap.ENQ_IMMED, 0)
    host.revoke_cpus("root", "web", [0], CpuCap.ENQ_IMMED, 0)
    assert [(n.kind, n.cpus) for n in got if n.kind == "capsUpdated"] == [
        ("capsUpdated", (0,)),
        ("capsUpdated", (0,)),
    ]


def test_the_trace_marks_grants_on_granted_cpus_and_revokes() -> None:
    runtime = FakeRuntime()
    host = CoreHost(runtime)
    host.grant_cpus("root", "web", [0, 1], CpuCap.ENQ, 0)
    web_holds = {h.cpu for h in host.cpu_holdings("web")}
    assert web_holds == {0, 1}
    # web holds enq literally, not enqImmed: cpu 0 is denied, cpu 3 too
    assert host.grant_cpus("web", "api", [0, 3], CpuCap.ENQ_IMMED, 0) == [0, 3]
    host.revoke_cpus("root", "web", [1], CpuCap.ENQ, 0)
    marks = [(e["name"], e["tid"], e["cat"]) for e in runtime.trace.events]
    assert marks == [
        ("grant web", 0, "delegation"),
        ("grant web", 1, "delegation"),
        ("revoke web", 1, "delegation"),
    ]
    assert runtime.trace.events[0]["args"]["caps"] == ["enq"]
