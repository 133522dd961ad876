"""Workload specifications: what a thread does, as the manifest declares it.

These are plain immutable values. The manifest layer produces them, the
deterministic simulator models them on virtual time, and the runtime's worker
processes execute them for real. Durations are integer nanoseconds.
"""

from __future__ import annotations

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
