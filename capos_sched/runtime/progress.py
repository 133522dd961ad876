"""Progress of long simulations on stderr: virtual time, events per second, ETA.

The simulator calls a ``progress(now_ns, end_ns, events)`` callback every few
thousand events (``capos_sched.sim``); this module turns those calls into a
rich progress line on stderr, redrawn at most ``REFRESH_S`` apart, and
removed when the run ends (transient), so a report printed afterwards, or a
``--json`` document on stdout, is untouched.

``auto`` shows it only when stderr is a terminal; ``always`` forces it (for
tests and logs that want it), ``never`` turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

PROGRESS_MODES = ("auto", "always", "never")
REFRESH_S = 0.2
"""Least wall time between two redraws (a redraw costs far more than an event)."""


class SimProgress:
    """A callable for ``Simulator.run(progress=...)`` that draws one progress line.

    Invariants: the task's total is the run's virtual end (seconds) and its
    completed part the virtual time reached; ``events_per_s`` is events over
    wall time since the first call; redraws are at least ``refresh_s`` apart,
    except the last one (the virtual end reached).
    """

    def __init__(
        self,
        label: str,
        console: Console,
        clock: Callable[[], float] = time.monotonic,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._clock = clock
        self._refresh_s = refresh_s
        self._first: tuple[float, int] | None = None
        """(wall time, events) at the first call: the rate excludes set-up."""
        self._last_draw = float("-inf")
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=16),
            TextColumn("{task.fields[virtual]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            auto_refresh=False,
            get_time=clock,
        )
        self._task = self.progress.add_task(label, total=None, virtual="", rate="")

    def __call__(self, now_ns: int, end_ns: int, events: int) -> None:
        wall = self._clock()
        if self._first is None:
            self._first = wall, events
        done = now_ns >= end_ns
        if not done and wall - self._last_draw < self._refresh_s:
            return
        self._last_draw = wall
        elapsed, counted = wall - self._first[0], events - self._first[1]
        rate = f"{counted / elapsed:,.0f} events/s" if elapsed > 0 else f"{events:,} events"
        self.progress.update(
            self._task,
            total=end_ns / 1e9,
            completed=min(now_ns, end_ns) / 1e9,
            virtual=f"virtual {min(now_ns, end_ns) / 1e9:.2f}/{end_ns / 1e9:.2f} s",
            rate=rate,
        )
        self.progress.refresh()

    def __enter__(self) -> SimProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


def stderr_console(mode: str) -> Console | None:
    """The console progress is drawn on for ``mode``, or None for no progress."""
    if mode == "never":
        return None
    console = Console(stderr=True, force_terminal=True if mode == "always" else None)
    return console if console.is_terminal else None


@contextmanager
def sim_progress(
    mode: str, label: str, console: Console | None = None
) -> Iterator[SimProgress | None]:
    """A ``SimProgress`` on stderr (or ``console``) while the block runs, or
    None when ``mode`` says no (``auto`` and stderr is not a terminal)."""
    console = console if console is not None else stderr_console(mode)
    if console is None:
        yield None
        return
    with SimProgress(label, console) as progress:
        yield progress
