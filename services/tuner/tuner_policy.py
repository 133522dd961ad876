"""The tuner's control law, free of I/O (unit-tested on its own).

Each round the tuner sees how much CPU time every granted thread received
since the last round and moves each weight multiplicatively toward its
target share::

    w_i <- w_i * (target_i / actual_i) ** gain

A thread that got less than its target gains weight, one that got more loses
some. Weights stay inside [1, 10000] (the daemon refuses anything else, and
this law never asks), and a change smaller than ``deadband`` is skipped so
the tuner does not chatter around the fixed point.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

MIN_WEIGHT = 1
MAX_WEIGHT = 10000


def next_weights(
    weights: Mapping[str, int],
    ran_ns: Mapping[str, int],
    targets: Mapping[str, float] | None = None,
    gain: float = 0.5,
    deadband: float = 0.02,
) -> dict[str, int]:
    """The weights to set this round (only those that change).

    ``ran_ns`` is each thread's run time since the previous round; ``targets``
    are relative shares (default: equal). Threads that did not run at all
    while others did get their weight doubled (they may be starved); if
    nothing ran, nothing changes.
    """
    names = [n for n in weights if n in ran_ns]
    total = sum(max(0, ran_ns[n]) for n in names)
    if not names or total <= 0:
        return {}
    raw_targets = {n: (targets or {}).get(n, 1.0) for n in names}
    target_sum = sum(raw_targets.values())
    changes: dict[str, int] = {}
    for name in names:
        old = weights[name]
        actual = max(0, ran_ns[name]) / total
        target = raw_targets[name] / target_sum
        factor = 2.0 if actual == 0 else math.pow(target / actual, gain)
        new = min(MAX_WEIGHT, max(MIN_WEIGHT, round(old * factor)))
        if abs(new - old) > deadband * old:
            changes[name] = new
    return changes
