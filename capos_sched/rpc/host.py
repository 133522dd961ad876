"""What the RPC layer needs from the scheduling host: this protocol, nothing more.

The owner operations (owner.py) and the grant table (grants.py) call only
these methods, in the trio thread. The wiring (``capos_sched/serve.py``)
adapts a concrete host (the trio Runtime, or a bare PlanHost) to it, so the
RPC layer never reaches through the host into the core.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from capos_sched.core import ThreadRef, ThreadSnapshot


class PlanChangeLike(Protocol):
    """What ``apply_plan`` reports: full thread names."""

    added: Sequence[str]
    removed: Sequence[str]
    kept: Sequence[str]


class CpuHoldingLike(Protocol):
    """One CPU a scheduler holds caps on (``CpuCap`` flags of core/delegation.py)."""

    cpu: int
    held: Any
    effective: Any


NotificationSink = Callable[[Sequence[Any]], None]
"""Called in the trio thread with the core's ``CpuNotification`` values
(``scheduler``, ``kind``, ``cpus``, ``cpu``, ``before``, ``after``)."""


class Host(Protocol):
    """A scheduling host as the RPC layer sees it (trio thread only).

    Invariant of implementations: every method is synchronous and raises
    CoreError (StaleThread for a dead ref) rather than anything else for bad
    input, so the bridge can type the answer.
    """

    def now_ns(self) -> int: ...

    def thread_ref(self, full_name: str) -> ThreadRef | None: ...

    def thread_refs(self) -> Mapping[str, ThreadRef]: ...

    def is_live(self, ref: ThreadRef) -> bool: ...

    def snapshot(self, ref: ThreadRef) -> ThreadSnapshot:
        """A live thread's snapshot (StaleThread otherwise)."""
        ...

    def snapshot_any(self, ref: ThreadRef) -> ThreadSnapshot:
        """Any known thread's snapshot, exited included (stats)."""
        ...

    def set_weight(self, ref: ThreadRef, weight: int) -> None: ...

    def set_latency_class(self, ref: ThreadRef, latency_class: object) -> None: ...

    def apply_plan(self, plan: Any, now_ns: int) -> PlanChangeLike: ...

    def set_policy(self, name: str, source: str) -> None:
        """Switch policy atomically: a built-in ``name`` (empty ``source``) or a
        user policy's module text; InvalidArgument (nothing changed) if bad."""
        ...

    def policy_status(self) -> Mapping[str, Any]:
        """``{"policy", "builtin", "bypass": dict | None, "exits": [dict]}``."""

    # ------------------------------------------------------ CPU delegation
    # Names are scheduler names ("root" first); bad input raises CoreError
    # (InvalidArgument for an unknown or non-child name or a bad CPU).

    def scheduler_names(self) -> list[str]: ...

    def scheduler_children(self, name: str) -> list[str]: ...

    def scheduler_alive(self, name: str) -> bool: ...

    def cpu_holdings(self, name: str) -> Sequence[CpuHoldingLike]: ...

    def grant_cpus(
        self, parent: str, child: str, cpus: Sequence[int], caps: Any, now_ns: int
    ) -> list[int]:
        """Grant and act on the effects; the denied CPUs."""
        ...

    def revoke_cpus(
        self, parent: str, child: str, cpus: Sequence[int], caps: Any, now_ns: int
    ) -> None: ...

    def kill_scheduler(self, parent: str, child: str, reason: str, now_ns: int) -> None: ...

    def scheduler_stats(self, name: str) -> Any: ...

    def add_notification_sink(self, sink: NotificationSink) -> None:
        """Every notification the core produces from now on goes to ``sink``."""
        ...

    # A plan applied in steps (runtime/host.py, PlanHost.stage_plan): nothing
    # a caller can name changes before commit_plan; abort_plan undoes the staging.

    def stage_plan(self, plan: Any) -> Any: ...

    def spawn_step(self, staged: Any, now_ns: int, limit: int) -> bool: ...

    def commit_plan(self, staged: Any) -> PlanChangeLike: ...

    def retire_step(self, staged: Any, now_ns: int, limit: int) -> bool: ...

    def abort_plan(self, staged: Any, now_ns: int) -> None: ...
