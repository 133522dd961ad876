"""The plan: a validated manifest, as the runtime and the RPC layer consume it.

A Plan is immutable (frozen attrs, tuples). :func:`capos_sched.manifest.load_plan`
produces one only from a manifest that passed every check, so code holding a
Plan may rely on the invariants stated on each class. The classes validate
those invariants themselves too, so a Plan built by hand (in a test, say)
cannot be malformed either.
"""

from __future__ import annotations

import decimal
import json
from typing import Any

import attrs

from capos_sched.core.constants import MAX_WEIGHT, MIN_WEIGHT
from capos_sched.core.thread import LatencyClass
from capos_sched.workload import Hash, IpcClient, IpcServer, Sleeper, Spin, Workload

BUILTIN_POLICIES = ("wfq", "fifo", "eevdf")
POLICIES = BUILTIN_POLICIES
"""The built-in policies; ``machine.policy`` may also name a policy file (``.py``)."""


def _policy(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in BUILTIN_POLICIES and not value.endswith(".py"):
        raise ValueError(f"{attribute.name} {value!r} is neither a built-in policy nor a .py file")


GRANT_KINDS = ("schedulingPolicy", "thread", "cpuDelegation")
"""Grant kinds a manifest can express."""

ROOT_SCHEDULER = "root"
"""The machine's scheduler: always present, never declared under ``schedulers:``."""


def _positive(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


def _weight(_instance: object, _attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"weight {value!r} is not an integer")
    if not MIN_WEIGHT <= value <= MAX_WEIGHT:
        raise ValueError(f"weight {value} outside [{MIN_WEIGHT}, {MAX_WEIGHT}]")


def _name(_instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not value or "/" in value:
        raise ValueError(f"{attribute.name} {value!r} must be non-empty and contain no `/`")


@attrs.frozen
class MachinePlan:
    """The simulated machine.

    Invariants: ``cpus >= 1``; ``policy`` is "wfq", "fifo", "eevdf" or the
    path of a policy file (resolved relative to the manifest); ``slice_ns > 0``.
    """

    cpus: int = attrs.field(validator=_positive)
    policy: str = attrs.field(validator=_policy)
    slice_ns: int = attrs.field(validator=_positive)
    pool_rotation_ns: int | None = attrs.field(default=None, kw_only=True)
    """The root's pool period under sub-schedulers (None: the default, 200 ms)."""


@attrs.frozen
class ThreadPlan:
    """One thread to create: its owner process, name, scheduling parameters
    and workload.

    Invariants: ``process`` and ``name`` are non-empty and contain no ``/``,
    so ``full_name`` ("process/thread") is unambiguous; ``weight`` lies in
    ``[MIN_WEIGHT, MAX_WEIGHT]``.
    """

    process: str = attrs.field(validator=_name)
    name: str = attrs.field(validator=_name)
    weight: int = attrs.field(validator=_weight)
    latency_class: LatencyClass = attrs.field(validator=attrs.validators.instance_of(LatencyClass))
    workload: Workload = attrs.field(
        validator=attrs.validators.instance_of((Spin, Hash, Sleeper, IpcClient, IpcServer))
    )

    @property
    def full_name(self) -> str:
        return f"{self.process}/{self.name}"


@attrs.frozen
class GrantPlan:
    """A capability given to a process under ``name`` (how its client asks for it).

    Invariants: ``kind`` is one of GRANT_KINDS; ``target`` is the full name
    of an existing thread for kind "thread" and None otherwise; ``scheduler``
    names the scheduler node of a "cpuDelegation" grant ("root" or one of
    the plan's ``schedulers``) and is None otherwise. (That the thread or
    scheduler exists is checked against the whole Plan when loading.)
    """

    name: str = attrs.field(validator=attrs.validators.min_len(1))
    kind: str = attrs.field(validator=attrs.validators.in_(GRANT_KINDS))
    target: str | None = None
    scheduler: str | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if (self.kind == "thread") != (self.target is not None):
            raise ValueError(f"grant {self.name!r}: a target is required exactly for kind thread")
        if (self.kind == "cpuDelegation") != (self.scheduler is not None):
            raise ValueError(
                f"grant {self.name!r}: a scheduler is required exactly for kind cpuDelegation"
            )


def _tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value)


def _exec_tuple(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


MAX_SCHEDULER_DEPTH = 4
DELEGATION_ACTIONS = ("grant", "revoke", "kill")
CAP_NAMES = ("enqImmed", "enq", "preempt")


@attrs.frozen
class SchedulerPlan:
    """A sub-scheduler: ``parent`` is "root" or another SchedulerPlan's name,
    ``policy`` a built-in name, a policy file path, or None (the machine's),
    ``weight`` in 1..10000. (That the tree is a tree of depth at most 4 is
    checked by the Plan.)"""

    name: str = attrs.field(validator=_name)
    parent: str = ROOT_SCHEDULER
    policy: str | None = attrs.field(default=None)
    weight: int = attrs.field(default=100, validator=_weight)

    @policy.validator
    def _check_policy(self, attribute: attrs.Attribute, value: str | None) -> None:
        if value is not None:
            _policy(self, attribute, value)

    def __attrs_post_init__(self) -> None:
        if self.name == ROOT_SCHEDULER:
            raise ValueError('"root" is the machine\'s scheduler; it cannot be declared')


@attrs.frozen
class DelegationEventPlan:
    """A timed act: at ``at_ns`` the parent of ``child`` grants or revokes
    ``caps`` on ``cpus``, or kills ``child`` (with ``reason``)."""

    name: str
    at_ns: int
    action: str = attrs.field(validator=attrs.validators.in_(DELEGATION_ACTIONS))
    child: str = attrs.field(validator=_name)
    cpus: tuple[int, ...] = attrs.field(default=(), converter=_tuple)
    caps: tuple[str, ...] = attrs.field(default=(), converter=_tuple)
    reason: str = ""

    def __attrs_post_init__(self) -> None:
        if self.at_ns < 0:
            raise ValueError(f"event {self.name!r}: negative time")
        if any(cap not in CAP_NAMES for cap in self.caps):
            raise ValueError(f"event {self.name!r}: unknown cap in {self.caps!r}")
        if self.action != "kill" and not (self.cpus and self.caps):
            raise ValueError(f"event {self.name!r}: a {self.action} needs cpus and caps")


def scheduler_depths(schedulers: tuple[SchedulerPlan, ...]) -> dict[str, int]:
    """Depth of each scheduler (root = 0); ValueError naming an unknown
    parent or a cycle."""
    parents = {s.name: s.parent for s in schedulers}
    depths: dict[str, int] = {ROOT_SCHEDULER: 0}
    for name in parents:
        chain = []
        current = name
        while current not in depths:
            if current in chain:
                raise ValueError(f"schedulers form a cycle: {' -> '.join([*chain, current])}")
            if current not in parents:
                raise ValueError(f"scheduler {chain[-1]!r} names unknown parent {current!r}")
            chain.append(current)
            current = parents[current]
        for step in reversed(chain):
            depths[step] = depths[parents[step]] + 1
    return depths


@attrs.frozen
class ProcessPlan:
    """A process: its threads (manifest order), optional client command and grants.

    Invariants: thread names are unique and every thread's ``process`` is
    ``name``; grant names are unique; ``exec`` is None or a non-empty tuple
    of non-empty strings.
    """

    name: str = attrs.field(validator=_name)
    threads: tuple[ThreadPlan, ...] = attrs.field(converter=_tuple)
    exec: tuple[str, ...] | None = attrs.field(default=None, converter=_exec_tuple)
    grants: tuple[GrantPlan, ...] = attrs.field(default=(), converter=_tuple)
    scheduler: str = attrs.field(default=ROOT_SCHEDULER, kw_only=True)
    """The scheduler whose policy runs the threads ("root" or a SchedulerPlan)."""

    def __attrs_post_init__(self) -> None:
        names = [t.name for t in self.threads]
        if len(set(names)) != len(names):
            raise ValueError(f"process {self.name!r}: duplicate thread names")
        if any(t.process != self.name for t in self.threads):
            raise ValueError(f"process {self.name!r}: a thread belongs to another process")
        grant_names = [g.name for g in self.grants]
        if len(set(grant_names)) != len(grant_names):
            raise ValueError(f"process {self.name!r}: duplicate grant names")
        if self.exec is not None and (not self.exec or not all(self.exec)):
            raise ValueError(f"process {self.name!r}: exec must be non-empty strings")


@attrs.frozen
class Plan:
    """A whole validated manifest.

    ``source`` is where it was loaded from (a path, or "<string>").
    Invariants: process names are unique; every thread grant names a thread
    of this plan. ``exported`` is the evaluated manifest as JSON text, exactly
    as ``capos-sched export --json`` prints it (durations as written); it is
    None for a Plan built by hand, and then :meth:`to_json` renders the model
    (durations as integer nanoseconds).
    """

    source: str
    machine: MachinePlan
    processes: tuple[ProcessPlan, ...] = attrs.field(converter=_tuple)
    schedulers: tuple[SchedulerPlan, ...] = attrs.field(default=(), converter=_tuple, kw_only=True)
    """Sub-schedulers, parents before children (docs/delegation.md)."""
    events: tuple[DelegationEventPlan, ...] = attrs.field(
        default=(), converter=_tuple, kw_only=True
    )
    """Timed delegation acts, by time."""
    exported: str | None = attrs.field(default=None, kw_only=True, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        names = [p.name for p in self.processes]
        if len(set(names)) != len(names):
            raise ValueError("duplicate process names")
        declared = [s.name for s in self.schedulers]
        if len(set(declared)) != len(declared):
            raise ValueError("duplicate scheduler names")
        depths = scheduler_depths(self.schedulers)
        deep = [n for n, d in depths.items() if d > MAX_SCHEDULER_DEPTH]
        if deep:
            raise ValueError(f"scheduler {deep[0]!r} is deeper than {MAX_SCHEDULER_DEPTH}")
        order = [s.name for s in self.schedulers]
        if any(
            depths[s.parent] and order.index(s.parent) > i for i, s in enumerate(self.schedulers)
        ):
            raise ValueError("schedulers must list parents before children")
        for process in self.processes:
            if process.scheduler not in depths:
                raise ValueError(
                    f"process {process.name!r} names unknown scheduler {process.scheduler!r}"
                )
        for event in self.events:
            if event.child not in declared:
                raise ValueError(f"event {event.name!r} names unknown scheduler {event.child!r}")
        threads = {t.full_name for t in self.threads()}
        schedulers = {ROOT_SCHEDULER, *(s.name for s in getattr(self, "schedulers", ()))}
        for process in self.processes:
            for grant in process.grants:
                if grant.target is not None and grant.target not in threads:
                    raise ValueError(f"grant {grant.name!r} names unknown thread {grant.target!r}")
                if grant.scheduler is not None and grant.scheduler not in schedulers:
                    raise ValueError(
                        f"grant {grant.name!r} names unknown scheduler {grant.scheduler!r}"
                    )

    def threads(self) -> tuple[ThreadPlan, ...]:
        """Every thread, in manifest order (process by process)."""
        return tuple(t for p in self.processes for t in p.threads)

    def thread(self, full_name: str) -> ThreadPlan | None:
        """The thread called ``full_name`` ("process/thread"), if any."""
        return next((t for t in self.threads() if t.full_name == full_name), None)

    def process(self, name: str) -> ProcessPlan | None:
        return next((p for p in self.processes if p.name == name), None)

    def to_json(self) -> dict[str, Any]:
        """The evaluated manifest as JSON-compatible data (a fresh copy each
        call); floats are exact ``decimal.Decimal`` values, as CUE's numbers are."""
        if self.exported is not None:
            result: dict[str, Any] = json.loads(self.exported, parse_float=decimal.Decimal)
            return result
        return {
            "machine": {
                "cpus": self.machine.cpus,
                "policy": self.machine.policy,
                "slice": self.machine.slice_ns,
            },
            "processes": {p.name: _process_json(p) for p in self.processes},
        }


def _process_json(process: ProcessPlan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "threads": {
            t.name: {
                "weight": t.weight,
                "class": t.latency_class.wire_name,
                "workload": workload_json(t.workload),
            }
            for t in process.threads
        }
    }
    if process.exec is not None:
        out["exec"] = list(process.exec)
    out["grants"] = {g.name: _grant_json(g) for g in process.grants}
    return out


def _grant_json(grant: GrantPlan) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": grant.kind}
    if grant.target is not None:
        out["thread"] = grant.target
    if grant.scheduler is not None:
        out["scheduler"] = grant.scheduler
    return out


def workload_json(workload: Workload) -> dict[str, Any]:
    """A workload as the manifest writes it (durations in nanoseconds)."""
    match workload:
        case Spin(total_ns=total):
            return {"kind": "spin"} | ({} if total is None else {"total": total})
        case Hash(blocks=blocks, block_size=block_size, rounds=rounds):
            return {"kind": "hash", "blocks": blocks, "blockSize": block_size, "rounds": rounds}
        case Sleeper(burst_ns=burst, period_ns=period, count=count):
            out = {"kind": "sleeper", "burst": burst, "period": period}
            return out | ({} if count is None else {"count": count})
        case IpcClient(endpoint=endpoint, burst_ns=burst, count=count):
            out = {"kind": "ipcClient", "endpoint": endpoint, "burst": burst}
            return out | ({} if count is None else {"count": count})
        case IpcServer(endpoint=endpoint, service_ns=service):
            return {"kind": "ipcServer", "endpoint": endpoint, "service": service}
    raise TypeError(f"not a workload: {workload!r}")
