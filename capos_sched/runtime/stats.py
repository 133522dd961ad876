"""Bounded latency samples and their summaries (the report's ``{count, p50, p99, max}``)."""

from __future__ import annotations

import collections

import attrs

MAX_SAMPLES = 200_000
"""Samples kept per series: a long run keeps its most recent ones (count stays exact)."""


def percentile(ordered: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an already sorted, non-empty list."""
    index = min(len(ordered) - 1, max(0, int(len(ordered) * fraction + 0.999999999) - 1))
    return ordered[index]


@attrs.define
class Samples:
    """A series of integer samples (nanoseconds).

    Invariants: ``count`` is the number of samples ever added; ``recent`` holds
    at most ``MAX_SAMPLES`` of the latest ones; ``maximum`` is over all of them.
    """

    recent: collections.deque[int] = attrs.Factory(lambda: collections.deque(maxlen=MAX_SAMPLES))
    count: int = 0
    maximum: int | None = None

    def add(self, value: int) -> None:
        self.recent.append(value)
        self.count += 1
        maximum = self.maximum
        if maximum is None or value > maximum:
            self.maximum = value

    def summary(self) -> dict[str, int] | None:
        """``{"count", "p50", "p99", "max"}``, or None without samples."""
        if not self.count:
            return None
        ordered = sorted(self.recent)
        return {
            "count": self.count,
            "p50": percentile(ordered, 0.50),
            "p99": percentile(ordered, 0.99),
            "max": self.maximum if self.maximum is not None else ordered[-1],
        }
