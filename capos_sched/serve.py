"""The wiring of ``capos-sched serve``: joins the scheduling host (runtime/,
core/) to the capability surface (rpc/), from outside both.

``rpc`` depends only on its small ``Host`` protocol (``rpc/host.py``);
``CoreHost`` adapts a PlanHost or a trio Runtime to it, which is the one
place that reaches into the core's scheduler. ``host_plugin`` picks the host
``serve`` runs and ``plan_loader`` is Admin.load's parser (it runs in a child
interpreter, so it is a module-level function).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

from capos_sched.core import ThreadRef, ThreadSnapshot


@attrs.define(eq=False)
class CoreHost:
    """``rpc.host.Host`` over a PlanHost or a Runtime (``inner``); trio thread only.

    Invariant: the effects of every delegation mutation are acted on before
    the call returns: by the runtime (kicks, preempts, and its notification
    sinks) when ``inner`` has one, else its notifications go to ``sinks``.
    """

    inner: Any
    sinks: list[Callable[[Any], None]] = attrs.Factory(list)

    def now_ns(self) -> int:
        clock = getattr(self.inner, "now_ns", None)
        return clock() if callable(clock) else time.monotonic_ns()

    def thread_ref(self, full_name: str) -> ThreadRef | None:
        return self.inner.thread_ref(full_name)  # type: ignore[no-any-return]

    def thread_refs(self) -> Mapping[str, ThreadRef]:
        return self.inner.thread_refs()  # type: ignore[no-any-return]

    def is_live(self, ref: ThreadRef) -> bool:
        return bool(self.inner.scheduler.is_live(ref))

    def snapshot(self, ref: ThreadRef) -> ThreadSnapshot:
        return self.inner.scheduler.snapshot(ref)  # type: ignore[no-any-return]

    def snapshot_any(self, ref: ThreadRef) -> ThreadSnapshot:
        return self.inner.scheduler.snapshot_any(ref)  # type: ignore[no-any-return]

    def set_weight(self, ref: ThreadRef, weight: int) -> None:
        self.inner.scheduler.set_weight(ref, weight)

    def set_latency_class(self, ref: ThreadRef, latency_class: object) -> None:
        self.inner.scheduler.set_latency_class(ref, latency_class)

    def apply_plan(self, plan: Any, now_ns: int) -> Any:
        return self.inner.apply_plan(plan, now_ns)

    def stage_plan(self, plan: Any) -> Any:
        return self.inner.stage_plan(plan)

    def spawn_step(self, staged: Any, now_ns: int, limit: int) -> bool:
        return self.inner.spawn_step(staged, now_ns, limit)  # type: ignore[no-any-return]

    def commit_plan(self, staged: Any) -> Any:
        return self.inner.commit_plan(staged)

    def retire_step(self, staged: Any, now_ns: int, limit: int) -> bool:
        return self.inner.retire_step(staged, now_ns, limit)  # type: ignore[no-any-return]

    def abort_plan(self, staged: Any, now_ns: int) -> None:
        self.inner.abort_plan(staged, now_ns)

    def set_policy(self, name: str, source: str) -> None:
        self.inner.set_policy_source(name, source)

    def policy_status(self) -> Mapping[str, Any]:
        return self.inner.policy_status()  # type: ignore[no-any-return]

    # ------------------------------------------------------ CPU delegation

    def scheduler_names(self) -> list[str]:
        return list(self._delegation().scheduler_names())

    def scheduler_children(self, name: str) -> list[str]:
        return list(self._delegation().scheduler_children(name))

    def scheduler_alive(self, name: str) -> bool:
        return bool(self._delegation().scheduler_alive(name))

    def cpu_holdings(self, name: str) -> list[Any]:
        return list(self._delegation().cpu_holdings(name))

    def grant_cpus(self, parent: str, child: str, cpus: Any, caps: Any, now_ns: int) -> list[int]:
        denied, effects = self._delegation().grant_cpus(parent, child, cpus, caps, now_ns)
        granted = [c for c in cpus if c not in denied]
        self._mark("grant", granted, {"parent": parent, "child": child, "caps": _names(caps)})
        self._act(effects)
        return list(denied)

    def revoke_cpus(self, parent: str, child: str, cpus: Any, caps: Any, now_ns: int) -> None:
        effects = self._delegation().revoke_cpus(parent, child, cpus, caps, now_ns)
        self._mark("revoke", cpus, {"parent": parent, "child": child, "caps": _names(caps)})
        self._act(effects)

    def kill_scheduler(self, parent: str, child: str, reason: str, now_ns: int) -> None:
        effects = self._delegation().kill_scheduler(parent, child, reason, now_ns)
        self._mark("kill", [0], {"parent": parent, "child": child, "reason": reason})
        self._act(effects)

    def _delegation(self) -> Any:
        """The core scheduler, when it implements CPU delegation (else unimplemented)."""
        scheduler = self.inner.scheduler
        if not callable(getattr(scheduler, "grant_cpus", None)):
            from capos_sched.rpc.errors import wire_error

            raise wire_error("unimplemented", "this scheduling host has no CPU delegation")
        return scheduler

    def _mark(self, what: str, cpus: Any, args: dict[str, Any]) -> None:
        """A Perfetto instant per CPU (``--trace``): ``grant web`` / ``revoke web``."""
        trace = getattr(self.inner, "trace", None)
        if trace is None:
            return
        at = self.inner._rel(self.inner.now_ns())
        for cpu in dict.fromkeys(cpus):
            trace.instant(int(cpu), f"{what} {args['child']}", at, "delegation", args)

    def scheduler_stats(self, name: str) -> Any:
        return self._delegation().scheduler_stats(name)

    def add_notification_sink(self, sink: Callable[[Any], None]) -> None:
        runtime_sinks = getattr(self.inner, "notification_sinks", None)
        if isinstance(runtime_sinks, list):
            runtime_sinks.append(sink)  # the runtime calls them for every effect it acts on
        else:
            self.sinks.append(sink)

    def _act(self, effects: Any) -> None:
        """The runtime acts on effects itself (kicks, preempts, its sinks);
        a bare PlanHost runs nothing, so only the notifications go out."""
        if isinstance(getattr(self.inner, "notification_sinks", None), list):
            self.inner._act(effects)
            return
        notes = list(getattr(effects, "notifications", ()) or ())
        for sink in self.sinks:
            sink(notes)


def _names(caps: Any) -> list[str]:
    names = getattr(caps, "names", None)
    return list(names) if names is not None else [str(caps)]


def plan_host(plan: Any, *args: Any, **kwargs: Any) -> CoreHost:
    """A bare PlanHost (threads held in the core, nothing executes) as a Host."""
    from capos_sched.runtime.host import PlanHost

    return CoreHost(PlanHost(plan, *args, **kwargs))


def host_plugin(
    cpus: int | None,
    execute: bool = True,
    sched_idle: bool = True,
    policy: str | None = None,
    *,
    trace: Any = None,
    watchdog_threshold_ns: int | None = None,
) -> tuple[Callable[[Any], Any], Callable[..., Awaitable[None]]]:
    """The scheduling host ``serve`` runs: (factory(plan) -> host, runner).

    By default the trio runtime executes the plan's threads on worker
    processes. With ``execute=False`` a bare PlanHost keeps the threads in the
    core without running them (grants and state changes only).
    """
    from capos_sched.rpc.daemon import idle_runner
    from capos_sched.runtime.commands import effective_policy  # CAPOS_SCHED_DISABLE_WFQ

    if not execute:
        return (
            lambda plan: plan_host(plan, effective_policy(policy, plan), cpus=cpus)
        ), idle_runner
    from capos_sched.runtime.runtime import Runtime, RuntimeConfig

    config = RuntimeConfig(sched_idle=sched_idle, watchdog_threshold_ns=watchdog_threshold_ns)

    async def run_runtime(host: CoreHost, *, task_status: Any) -> None:
        await host.inner.run(stop_when_finished=False, task_status=task_status)

    def make_runtime(plan: Any) -> CoreHost:
        return CoreHost(
            Runtime(
                plan,
                effective_policy(policy, plan),
                cpus=cpus,
                config=config,
                trace=trace,
                manifest_name=plan.source,
            )
        )

    return make_runtime, run_runtime


def plan_loader(source: str, name: str) -> Any:
    """Admin.load's parser: the manifest text, diagnostics under ``name``."""
    from capos_sched.manifest import load_plan_text

    return load_plan_text(source, name)
