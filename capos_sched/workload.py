"""Workload specifications: what a thread does, as the manifest declares it.

These are plain immutable values. The manifest layer produces them, the
deterministic simulator models them on virtual time, and the runtime's worker
processes execute them for real. Durations are integer nanoseconds.

``Program`` is a thread's progress through its workload: how much CPU it needs
before its next voluntary stop, and what that stop is. The simulator and the
runtime both step threads with it, so a workload means the same in both.
"""

from __future__ import annotations

import enum

import attrs


def _positive(_instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be positive, got {value}")


def _non_negative(_instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must not be negative, got {value}")


@attrs.frozen
class Spin:
    """A CPU hog: computes forever, or until it has run ``total_ns``."""

    total_ns: int | None = attrs.field(default=None, validator=_positive)

    kind = "spin"


@attrs.frozen
class Hash:
    """Finite CPU work: ``rounds`` passes of hashing over ``blocks`` blocks of
    ``block_size`` bytes (the thread-scale shape)."""

    blocks: int = attrs.field(validator=_positive)
    block_size: int = attrs.field(validator=_positive)
    rounds: int = attrs.field(default=1, validator=_positive)

    kind = "hash"


@attrs.frozen
class Sleeper:
    """Runs ``burst_ns`` of CPU, then sleeps ``period_ns``; ``count`` times or forever."""

    burst_ns: int = attrs.field(validator=_non_negative)
    period_ns: int = attrs.field(validator=_positive)
    count: int | None = attrs.field(default=None, validator=_positive)

    kind = "sleeper"


@attrs.frozen
class IpcClient:
    """Computes ``burst_ns``, then calls ``endpoint`` and waits for the reply;
    ``count`` calls or forever."""

    endpoint: str
    burst_ns: int = attrs.field(validator=_non_negative)
    count: int | None = attrs.field(default=None, validator=_positive)

    kind = "ipcClient"


@attrs.frozen
class IpcServer:
    """Serves ``endpoint``: waits for a call, spends ``service_ns`` of CPU, replies."""

    endpoint: str
    service_ns: int = attrs.field(validator=_non_negative)

    kind = "ipcServer"


Workload = Spin | Hash | Sleeper | IpcClient | IpcServer


def is_finite(workload: Workload) -> bool:
    """True when the workload ends by itself (servers end when their clients do)."""
    match workload:
        case Spin(total_ns=total):
            return total is not None
        case Hash():
            return True
        case Sleeper(count=count) | IpcClient(count=count):
            return count is not None
        case IpcServer():
            return False
    raise TypeError(f"not a workload: {workload!r}")


HASH_NS_PER_BYTE = 1
"""Modelled cost of hashing one byte, for hash work stepped on virtual time (the
simulator); the runtime hashes real data instead (order of hashlib's blake2b)."""


class Stop(enum.Enum):
    """Why a modelled run segment ended."""

    EXPIRED = "expired"
    SLEEP = "sleep"
    CALL = "call"
    WAIT = "wait"
    REPLY = "reply"
    FINISHED = "finished"


_EXPIRED, _SLEEP, _FINISHED = Stop.EXPIRED, Stop.SLEEP, Stop.FINISHED


@attrs.define
class Program:
    """A thread's progress through its workload.

    Invariant: ``burst_left_ns`` is the CPU time still needed before the next
    stop that is not a slice expiry (None: never, a hog without total).
    """

    spec: Workload
    burst_left_ns: int | None
    completed: int = 0
    done: bool = False

    @classmethod
    def start(cls, spec: Workload) -> Program:
        match spec:
            case Spin(total_ns=total):
                return cls(spec, total)
            case Hash(blocks=b, block_size=size, rounds=r):
                return cls(spec, b * size * r * HASH_NS_PER_BYTE)
            case Sleeper(burst_ns=burst) | IpcClient(burst_ns=burst):
                return cls(spec, burst)
            case IpcServer():
                return cls(spec, 0)
        raise TypeError(f"not a workload: {spec!r}")

    def run(self, budget_ns: int) -> tuple[int, Stop]:
        """Run for at most ``budget_ns``: how long it ran and why it stopped."""
        if self.done:
            return 0, _FINISHED
        left = self.burst_left_ns
        if left is None:
            return budget_ns, _EXPIRED
        if left > budget_ns:
            self.burst_left_ns = left - budget_ns
            return budget_ns, _EXPIRED
        self.burst_left_ns = 0
        return left, self._burst_done()

    def _burst_done(self) -> Stop:
        match self.spec:
            case Sleeper(count=count):  # first: the simulator's most frequent stop
                self.completed += 1
                return _FINISHED if count is not None and self.completed >= count else _SLEEP
            case Spin() | Hash():
                return Stop.FINISHED
            case IpcClient():
                return Stop.CALL
            case IpcServer():
                return Stop.REPLY if self.completed else Stop.WAIT
        raise TypeError(self.spec)

    def resume(self) -> Stop | None:
        """Called when the thread is woken (timer, reply, call delivered).

        Returns FINISHED when the workload is over, else None.
        """
        match self.spec:
            case Sleeper(burst_ns=burst):  # first: the common wake (a timer)
                self.burst_left_ns = burst
            case IpcClient(burst_ns=burst, count=count):
                self.completed += 1
                if count is not None and self.completed >= count:
                    self.done = True
                    return Stop.FINISHED
                self.burst_left_ns = burst
            case IpcServer(service_ns=service):
                self.completed += 1
                self.burst_left_ns = service
        return None
