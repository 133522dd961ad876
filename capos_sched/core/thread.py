"""Scheduler threads: identity, weight, class, accounting and counters."""

from __future__ import annotations

import enum
from typing import Any

import attrs

from .constants import (
    BATCH_SLICE_MULTIPLIER,
    DEFAULT_WEIGHT,
    INTERACTIVE_SLICE_DIVISOR,
    MAX_WEIGHT,
    MIN_WEIGHT,
    REFERENCE_WEIGHT,
)
from .errors import InvalidArgument


class LatencyClass(enum.Enum):
    """Latency classes; values are the schema's ordinals."""

    INTERACTIVE = 0
    NORMAL = 1
    BATCH = 2
    IPC_SERVER = 3

    @property
    def wire_name(self) -> str:
        """The schema / manifest spelling (``ipcServer``, ``interactive`` ...)."""
        return _WIRE_NAMES[self]

    @classmethod
    def parse(cls, value: object) -> LatencyClass:
        """Accept a LatencyClass, its schema ordinal or its wire name.

        Raises InvalidArgument naming the value and the accepted set otherwise.
        """
        if isinstance(value, LatencyClass):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            for member in cls:
                if member.value == value:
                    return member
        if isinstance(value, str):
            for member, name in _WIRE_NAMES.items():
                if name == value:
                    return member
        accepted = ", ".join(_WIRE_NAMES.values())
        raise InvalidArgument(f"unknown latency class {value!r}; expected one of {accepted}")


_WIRE_NAMES = {
    LatencyClass.INTERACTIVE: "interactive",
    LatencyClass.NORMAL: "normal",
    LatencyClass.BATCH: "batch",
    LatencyClass.IPC_SERVER: "ipcServer",
}


class WakeReason(enum.Enum):
    """Why a blocked thread became runnable (completions of Phase D)."""

    TIMER = "timer"
    IPC_REPLY = "ipcReply"
    IPC_CALL = "ipcCall"
    PARK = "park"
    PROCESS_WAIT = "processWait"
    THREAD_JOIN = "threadJoin"


class ThreadState(enum.Enum):
    """Lifecycle states; values are the schema's ``ThreadState`` ordinals."""

    RUNNABLE = 0
    RUNNING = 1
    BLOCKED = 2
    EXITED = 3


def validate_weight(weight: object) -> int:
    """Return ``weight`` if it is an int in [MIN_WEIGHT, MAX_WEIGHT]; never clamps."""
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise InvalidArgument(f"weight {weight!r} is not an integer")
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise InvalidArgument(f"weight {weight} outside [{MIN_WEIGHT}, {MAX_WEIGHT}]")
    return weight


def class_slice_ns(latency_class: LatencyClass, slice_ns: int) -> int:
    """The real-time slice a thread of this class receives per dispatch."""
    if latency_class is LatencyClass.INTERACTIVE:
        return slice_ns // INTERACTIVE_SLICE_DIVISOR
    if latency_class is LatencyClass.BATCH:
        return slice_ns * BATCH_SLICE_MULTIPLIER
    return slice_ns


@attrs.frozen
class ThreadRef:
    """A generation-checked reference to a thread.

    Invariant: a ThreadRef resolves only while the thread with ``tid`` still has
    ``generation`` and has not exited; an id reused by a new thread gets a new
    generation, so an old reference can never reach it.
    """

    tid: int
    generation: int


@attrs.define(eq=False)
class Thread:
    """One scheduler thread.

    Invariants:
    - ``runtime_ns`` and ``virtual_runtime_ns`` never decrease;
    - ``0 <= _vruntime_remainder < weight``: the part of ``elapsed * REF`` that
      did not yet make a whole virtual nanosecond, carried so that no time is
      lost however many small charges are made;
    - ``virtual_finish_ns`` is not stored: it is derived at every enqueue from
      the current weight and class (see ``virtual_finish_ns``).
    """

    tid: int
    generation: int
    name: str
    weight: int = DEFAULT_WEIGHT
    latency_class: LatencyClass = LatencyClass.NORMAL
    runtime_ns: int = 0
    virtual_runtime_ns: int = 0
    last_started_ns: int | None = None
    state: ThreadState = ThreadState.RUNNABLE
    last_cpu: int | None = None
    """The CPU the thread runs on, is placed or queued on, or last ran on."""
    runnable_since_ns: int | None = None
    """When the thread last became runnable (for watchdog and wake latency)."""
    context_switches: int = 0
    preemptions: int = 0
    voluntary_blocks: int = 0
    migrations: int = 0
    owner: Any = None
    """Who holds the thread while it is runnable: a CPU's running tag, a DSQ,
    or a CPU's IPC-slot tag (each has ``kind`` and ``cpu``); None otherwise."""
    queue_seq: int = -1
    """Enqueue sequence number of the thread's live DSQ entry, if any."""
    slice_ns: int | None = None
    """The budget of the thread's next dispatch, as its last ``ctx.insert`` set it."""
    wake_reason: WakeReason | None = None
    """Why the thread last woke (None for a new thread)."""
    policy_data: Any = None
    """The policy's own per-thread state (reset when a policy is installed)."""
    dispatch_source: str = "queue"
    """How the thread reached its CPU's local DSQ (``queue``, ``steal``, ``pull`` ...)."""
    wait_mark_ns: int = 0
    """The machine's judged-time counter when the thread last became runnable
    (the watchdog's measure of wait that excludes host contention)."""
    ref: ThreadRef = attrs.field(init=False)
    """This thread's generation-checked reference (fixed at creation)."""
    _vruntime_remainder: int = 0
    scheduler: str = "root"
    """The (sub-)scheduler whose policy runs this thread (see ``core/subsched``)."""
    accounted_ns: int = 0
    """The part of ``runtime_ns`` already added to its scheduler's allocation."""

    def __attrs_post_init__(self) -> None:
        self.ref = ThreadRef(self.tid, self.generation)

    @property
    def cpu(self) -> int | None:
        """The same as ``last_cpu`` (the snapshot's name)."""
        return self.last_cpu

    def charge_runtime(self, elapsed_ns: int) -> None:
        """Charge ``elapsed_ns`` of wall-clock time run.

        ``runtime_ns`` advances 1:1; ``virtual_runtime_ns`` by
        ``elapsed * REFERENCE_WEIGHT / weight``. Python integers cannot overflow,
        and the division remainder is carried to the next charge, so the sum of
        many small charges equals one large charge exactly.
        """
        if elapsed_ns < 0:
            raise InvalidArgument(f"thread {self.name}: elapsed_ns {elapsed_ns} is negative")
        self.runtime_ns += elapsed_ns
        scaled = elapsed_ns * REFERENCE_WEIGHT + self._vruntime_remainder
        whole, self._vruntime_remainder = divmod(scaled, self.weight)
        self.virtual_runtime_ns += whole

    def change_weight(self, weight: int) -> None:
        """Set a validated weight, rescaling the carried remainder.

        The remainder is a fraction of a virtual nanosecond in units of
        1/weight; rescaling keeps it below the new weight (at most one virtual
        nanosecond is rounded away per change, never per charge).
        """
        self._vruntime_remainder = self._vruntime_remainder * weight // self.weight
        self.weight = weight

    def virtual_finish_ns(self, slice_ns: int) -> int:
        """Virtual finish of the next slice, from the current weight and class."""
        return (
            self.virtual_runtime_ns
            + class_slice_ns(self.latency_class, slice_ns) * REFERENCE_WEIGHT // self.weight
        )
