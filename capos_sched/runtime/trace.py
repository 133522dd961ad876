"""Chrome / Perfetto trace of a run, in the JSON trace-event format.

One process ("capos-sched CPUs", pid 1) with one track (tid) per simulated
CPU. Every dispatch is a complete event (``ph: "X"``) named after the thread
it ran, with its stop reason and measured times in ``args``; wakes and
migrations are thread-scoped instant events (``ph: "i"``) on the track of the
CPU concerned. Timestamps are microseconds since the start of the run, as the
format requires. Opens in ui.perfetto.dev and chrome://tracing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

TRACE_PID = 1
MAX_EVENTS = 2_000_000
"""Beyond this many events the trace stops growing (and says so in its metadata)."""


@attrs.define
class TraceRecorder:
    """Collects trace events in memory; ``write`` dumps them.

    Invariant: ``events`` holds at most ``MAX_EVENTS`` events; ``dropped``
    counts the rest.
    """

    cpus: int
    events: list[dict[str, Any]] = attrs.Factory(list)
    dropped: int = 0

    def _add(self, event: dict[str, Any]) -> None:
        if len(self.events) < MAX_EVENTS:
            self.events.append(event)
        else:
            self.dropped += 1

    def dispatch(
        self, cpu: int, name: str, start_ns: int, duration_ns: int, args: dict[str, Any]
    ) -> None:
        self._add(
            {
                "ph": "X",
                "name": name,
                "cat": "dispatch",
                "pid": TRACE_PID,
                "tid": cpu,
                "ts": start_ns / 1000,
                "dur": max(duration_ns, 0) / 1000,
                "args": args,
            }
        )

    def instant(self, cpu: int, name: str, at_ns: int, category: str, args: dict[str, Any]) -> None:
        self._add(
            {
                "ph": "i",
                "s": "t",
                "name": name,
                "cat": category,
                "pid": TRACE_PID,
                "tid": cpu,
                "ts": at_ns / 1000,
                "args": args,
            }
        )

    def document(self) -> dict[str, Any]:
        meta: list[dict[str, Any]] = [
            {
                "ph": "M",
                "name": "process_name",
                "pid": TRACE_PID,
                "tid": 0,
                "args": {"name": "capos-sched CPUs"},
            }
        ]
        for cpu in range(self.cpus):
            meta.append(
                {
                    "ph": "M",
                    "name": "thread_name",
                    "pid": TRACE_PID,
                    "tid": cpu,
                    "args": {"name": f"CPU {cpu}"},
                }
            )
            meta.append(
                {
                    "ph": "M",
                    "name": "thread_sort_index",
                    "pid": TRACE_PID,
                    "tid": cpu,
                    "args": {"sort_index": cpu},
                }
            )
        return {
            "traceEvents": meta + self.events,
            "displayTimeUnit": "ns",
            "otherData": {"producer": "capos-sched", "dropped_events": self.dropped},
        }

    def write(self, path: str | Path) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.document(), fh, separators=(",", ":"))
