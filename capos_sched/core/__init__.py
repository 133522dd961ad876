"""The sans-I/O Phase D weighted-fair scheduling engine.

Pure, synchronous and deterministic: no I/O, no clock, no framework imports.
Time is passed in by the caller. See ``scheduler`` for the policy in one page.
"""

from .constants import (
    BATCH_SLICE_MULTIPLIER,
    DEFAULT_WEIGHT,
    INTERACTIVE_SLICE_DIVISOR,
    MAX_WEIGHT,
    MIN_WEIGHT,
    REFERENCE_WEIGHT,
    SLICE_NS,
)
from .errors import CoreError, InvalidArgument, InvalidState, StaleThread
from .scheduler import (
    Dispatch,
    LastCpu,
    LeastLoaded,
    Policy,
    QueueCpu,
    Scheduler,
    ThreadSnapshot,
    Wake,
    WakePolicy,
    WakeReason,
    ideal_shares,
)
from .thread import LatencyClass, Thread, ThreadRef, ThreadState, class_slice_ns, validate_weight

__all__ = [
    "BATCH_SLICE_MULTIPLIER",
    "DEFAULT_WEIGHT",
    "INTERACTIVE_SLICE_DIVISOR",
    "MAX_WEIGHT",
    "MIN_WEIGHT",
    "REFERENCE_WEIGHT",
    "SLICE_NS",
    "CoreError",
    "Dispatch",
    "InvalidArgument",
    "InvalidState",
    "LastCpu",
    "LatencyClass",
    "LeastLoaded",
    "Policy",
    "QueueCpu",
    "Scheduler",
    "StaleThread",
    "Thread",
    "ThreadRef",
    "ThreadSnapshot",
    "ThreadState",
    "Wake",
    "WakePolicy",
    "WakeReason",
    "class_slice_ns",
    "ideal_shares",
    "validate_weight",
]
