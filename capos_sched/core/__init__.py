"""The sans-I/O scheduling engine: the mechanism, and policies plugged into it.

Pure, synchronous and deterministic: no I/O, no clock, no framework imports.
Time is passed in by the caller. ``scheduler`` is the mechanism, ``policy`` the
contract between it and a policy, ``policies/`` the built-in policies (``wfq``
is Phase D).
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
from .delegation import ROOT, CpuCap, KillRecord
from .errors import CoreError, InvalidArgument, InvalidState, StaleScheduler, StaleThread
from .policies import BUILTIN_NAMES
from .policy import (
    ENQ_NEW,
    ENQ_PREEMPTED,
    ENQ_SWITCH,
    ENQ_WAKEUP,
    GLOBAL_DSQ,
    CallbackGuard,
    CallbackTimeout,
    ExitKind,
    PolicyExit,
    PolicyViolation,
    local_dsq,
)
from .scheduler import (
    FALLBACK_POLICY,
    Dispatch,
    Effects,
    LastCpu,
    LeastLoaded,
    Policy,
    QueueCpu,
    Scheduler,
    Stall,
    ThreadSnapshot,
    Wake,
    WakePolicy,
    ideal_shares,
)
from .subsched import (
    ENQ_CAPS_SHIFT,
    ENQ_EVICTED,
    ENQ_REJECTED,
    CpuHoldingView,
    CpuNotification,
    SchedulerStats,
    missing_caps,
)
from .thread import (
    LatencyClass,
    Thread,
    ThreadRef,
    ThreadState,
    WakeReason,
    class_slice_ns,
    validate_weight,
)

__all__ = [
    "BATCH_SLICE_MULTIPLIER",
    "BUILTIN_NAMES",
    "DEFAULT_WEIGHT",
    "ENQ_CAPS_SHIFT",
    "ENQ_EVICTED",
    "ENQ_NEW",
    "ENQ_PREEMPTED",
    "ENQ_REJECTED",
    "ENQ_SWITCH",
    "ENQ_WAKEUP",
    "FALLBACK_POLICY",
    "GLOBAL_DSQ",
    "INTERACTIVE_SLICE_DIVISOR",
    "MAX_WEIGHT",
    "MIN_WEIGHT",
    "REFERENCE_WEIGHT",
    "ROOT",
    "SLICE_NS",
    "CallbackGuard",
    "CallbackTimeout",
    "CoreError",
    "CpuCap",
    "CpuHoldingView",
    "CpuNotification",
    "Dispatch",
    "Effects",
    "ExitKind",
    "InvalidArgument",
    "InvalidState",
    "KillRecord",
    "LastCpu",
    "LatencyClass",
    "LeastLoaded",
    "Policy",
    "PolicyExit",
    "PolicyViolation",
    "QueueCpu",
    "Scheduler",
    "SchedulerStats",
    "StaleScheduler",
    "StaleThread",
    "Stall",
    "Thread",
    "ThreadRef",
    "ThreadSnapshot",
    "ThreadState",
    "Wake",
    "WakePolicy",
    "WakeReason",
    "class_slice_ns",
    "ideal_shares",
    "local_dsq",
    "missing_caps",
    "validate_weight",
]
