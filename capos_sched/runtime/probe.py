"""Where a slice's time goes: an optional per-dispatch breakdown (``bench slice``).

Off by default (``Runtime.probe is None``): the hot path then pays one ``is
None`` test per dispatch. When set, each dispatch of a ``spin``-kind program
(spin, sleeper, IPC) records its stamps, which give one sample per phase, in
nanoseconds, all read from
``CLOCK_MONOTONIC`` (``time.perf_counter_ns``), which the worker reads too, so
the daemon's and the worker's stamps are comparable:

- ``pick``: ``Scheduler.pick_next`` in the CPU task;
- ``prepare``: from the pick to the request (bookkeeping, encoding);
- ``send``: the request's system call(s) as the daemon sees them;
- ``to_worker``: from the send to the worker holding the request (the kernel
  wakes the worker); 0 when the worker got it before the daemon's ``send``
  returned (the daemon was descheduled right after waking it: then that time
  is in ``send``);
- ``worker_extra``: the worker's wall time for the slice minus the CPU time it
  is charged (its clock set-up, the reply's encoding, any time it was
  descheduled);
- ``from_worker``: from the worker's reply to the daemon holding the decoded
  reply (the kernel wakes the daemon's epoll, trio schedules the CPU task);
- ``after_run``: charging the core and acting on its effects (``step``, kicks);
- ``overhead``: the runtime's own dispatch overhead sample (round trip minus
  the charged CPU time), for cross-checking the sum.
"""

from __future__ import annotations

import collections
from typing import Any

import attrs

from capos_sched.runtime.stats import MAX_SAMPLES, Samples

PHASES = (
    "pick",
    "prepare",
    "send",
    "to_worker",
    "worker_extra",
    "from_worker",
    "after_run",
    "overhead",
)


@attrs.define
class SliceProbe:
    """Per-dispatch stamps, turned into per-phase samples when asked.

    Invariant: ``stamps`` holds the latest ``MAX_SAMPLES`` dispatches'
    ``(picking, picked, t0, sent, received, replied, t1, done, elapsed)`` and
    ``count`` all of them; every phase gets one sample per dispatch, so
    medians are comparable. Recording is one tuple append (0.3 us): eight
    ``Samples.add`` per dispatch cost 5 us, a tenth of a short IPC slice's
    daemon work, and the probe should disturb what it measures as little as
    it can."""

    stamps: collections.deque[tuple[int, ...]] = attrs.Factory(
        lambda: collections.deque(maxlen=MAX_SAMPLES)
    )
    count: int = 0

    def record(self, stamps: tuple[int, ...]) -> None:
        self.stamps.append(stamps)
        self.count += 1

    @property
    def phases(self) -> dict[str, Samples]:
        """The phases of the kept dispatches (``count``: of all of them)."""
        phases = {name: Samples() for name in PHASES}
        for picking, picked, t0, sent, received, replied, t1, done, elapsed in self.stamps:
            values = (
                picked - picking if picking else 0,
                t0 - picked,
                sent - t0,
                received - sent,
                replied - received - elapsed,
                t1 - replied,
                done - t1,
                t1 - t0 - elapsed,
            )
            for name, value in zip(PHASES, values, strict=True):
                phases[name].add(max(0, value))
        for samples in phases.values():
            samples.count = self.count
        return phases

    def summary(self) -> dict[str, Any]:
        return {name: samples.summary() for name, samples in self.phases.items()}
