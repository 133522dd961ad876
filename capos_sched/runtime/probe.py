"""Where a slice's time goes: an optional per-dispatch breakdown (``bench slice``).

Off by default (``Runtime.probe is None``): the hot path then pays one ``is
None`` test per dispatch. When set, each dispatch of a ``spin``-kind program
(spin, sleeper, IPC) adds one sample per phase, in nanoseconds, all read from
``CLOCK_MONOTONIC`` (``time.perf_counter_ns``), which the worker reads too, so
the daemon's and the worker's stamps are comparable:

- ``pick``: ``Scheduler.pick_next`` in the CPU task;
- ``prepare``: from the pick to the request (bookkeeping, encoding);
- ``send``: the request's system call(s) as the daemon sees them;
- ``to_worker``: from the send to the worker holding the request (the kernel
  wakes the worker);
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

from typing import Any

import attrs

from capos_sched.runtime.stats import Samples

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
    """Per-phase samples. Invariant: every phase got the same number of
    samples (one per probed dispatch), so medians are comparable."""

    phases: dict[str, Samples] = attrs.Factory(lambda: {name: Samples() for name in PHASES})

    def add(self, **values: int) -> None:
        for name, value in values.items():
            self.phases[name].add(max(0, value))

    def summary(self) -> dict[str, Any]:
        return {name: samples.summary() for name, samples in self.phases.items()}
