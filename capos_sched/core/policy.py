"""The policy contract: the callbacks a policy implements and what the mechanism offers it.

This is the sched_ext shape (``include/linux/sched/ext.h``): the mechanism owns
threads, dispatch queues (DSQs), accounting and enforcement; a policy only
decides placement and order, through callbacks named as in sched_ext. A policy
is any object with some of these methods (``enqueue`` is the only one required):

- ``select_cpu(ctx, thread, prev_cpu) -> int``: the CPU a waking or new thread is
  placed on. ``prev_cpu`` is the placement the driver asked for (the CPU it last
  ran on, or a CPU named by the caller), or -1 for "no preference".
- ``enqueue(ctx, thread, flags)``: the thread is runnable; insert it into a DSQ
  with ``ctx.insert``. A thread left in no DSQ ejects the policy.
- ``dispatch(ctx, cpu)``: ``cpu``'s local DSQ and the global DSQ are empty;
  move work to it with ``ctx.move_to_local`` (or leave it idle).
- ``running(ctx, thread)`` / ``stopping(ctx, thread, runnable)``: a thread starts
  / stops running (stopping comes after the mechanism charged its run time).
- ``set_weight(ctx, thread, weight)``: the weight or the latency class changed
  (the thread already carries the new values).
- ``init_thread(ctx, thread)`` / ``exit_thread(ctx, thread)``: a thread enters
  the policy (spawned, or present when the policy is installed) / leaves it.
- ``tick(ctx, cpu)``: optional, a mid-slice charge of ``cpu``'s running thread.

The ``thread`` a callback receives is read-only for the policy except for
``thread.policy_data`` (its own per-thread state): ``name``, ``weight``,
``latency_class``, ``runtime_ns``, ``virtual_runtime_ns``, ``last_cpu`` and
``wake_reason``. The one write a policy may make to accounting is
``ctx.raise_vruntime`` (virtual runtime never decreases).

docs/policies.md is the reference, with the table from each Phase D rule to the
callback that implements it.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

import attrs

ENQ_WAKEUP = 1
"""enqueue flag: the thread was blocked and woke up (``thread.wake_reason`` says why)."""
ENQ_NEW = 2
"""enqueue flag: a new thread (spawned), or one handed over by a policy switch."""
ENQ_PREEMPTED = 4
"""enqueue flag: the thread's slice ended (expired or cut short); it is still runnable."""
ENQ_SWITCH = 8
"""enqueue flag: the thread was queued under the previous policy (a policy switch)."""

GLOBAL_DSQ = -1
"""The id of the one global FIFO DSQ every CPU consumes (sched_ext's SCX_DSQ_GLOBAL)."""
LOCAL_ON = 1 << 62
"""``LOCAL_ON | cpu`` is the id of ``cpu``'s local DSQ (sched_ext's SCX_DSQ_LOCAL_ON)."""
MAX_DSQ_ID = LOCAL_ON - 1
"""Policy-created DSQ ids are ints in ``[0, MAX_DSQ_ID]``."""


def local_dsq(cpu: int) -> int:
    """The id of ``cpu``'s local DSQ."""
    return LOCAL_ON | cpu


class ExitKind(enum.Enum):
    """Why a policy was ejected."""

    ERROR = "error"
    """A callback raised."""
    TIMEOUT = "timeout"
    """A callback ran longer than its time bound."""
    STALL = "stall"
    """A runnable thread waited longer than the watchdog allows."""
    INVALID = "invalid"
    """The policy broke the contract: a bad DSQ or CPU, or a dropped thread."""


@attrs.frozen
class PolicyExit:
    """The record an ejection leaves (in logs, reports and ``policy show``)."""

    kind: ExitKind
    policy: str
    callback: str | None
    message: str
    at_ns: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "policy": self.policy,
            "callback": self.callback,
            "message": self.message,
            "at_ns": self.at_ns,
        }


class PolicyViolation(Exception):
    """Raised by a ctx method when the policy breaks the contract (kind ``invalid``)."""


class CallbackTimeout(Exception):
    """Raised by a callback guard when a callback overran its bound (kind ``timeout``)."""


class CallbackGuard(Protocol):
    """Runs one policy callback under a time bound (supplied by the driver: the
    core reads no clock). It returns the callback's result, or raises
    ``CallbackTimeout`` when the callback ran (or would run) past the bound."""

    def call(self, fn: Any, *args: Any) -> Any: ...


class Dsq(Protocol):
    """What a policy may read of a DSQ it created (``ctx.create_dsq`` returns it)."""

    id: int

    def head_key(self) -> int | None: ...
    def __len__(self) -> int: ...


class Ctx(Protocol):
    """What the mechanism offers a policy (see ``Scheduler`` for the implementation).

    Core of the contract: ``now_ns``, ``nr_cpus``, ``GLOBAL_DSQ``,
    ``local_dsq(cpu)``, ``create_dsq(id, ordered)``, ``insert(thread, dsq,
    key=None, slice_ns=None)``, ``move_to_local(dsq, cpu) -> bool`` and
    ``kick(cpu, preempt=False)``. Also offered: ``is_idle(cpu)``,
    ``pick_idle_cpu()``, ``iter_dsq(dsq)`` (in queue order), ``move_to_local(dsq,
    cpu, thread=t)`` (a chosen thread, as sched_ext's ``scx_bpf_dsq_move``),
    ``nr_queued(dsq)``, ``raise_vruntime(thread, floor_ns)``, ``slice_ns``.
    """

    now_ns: int
    nr_cpus: int
    slice_ns: int
    GLOBAL_DSQ: int

    def local_dsq(self, cpu: int) -> int: ...
    def create_dsq(self, dsq_id: int, ordered: bool) -> Dsq: ...
    def insert(
        self, thread: Any, dsq: int, key: int | None = None, slice_ns: int | None = None
    ) -> None: ...
    def move_to_local(
        self, dsq: int, cpu: int, thread: Any = None, source: str = "queue"
    ) -> bool: ...
    def kick(self, cpu: int, preempt: bool = False) -> None: ...
