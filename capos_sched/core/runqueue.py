"""Run queues: a virtual-finish heap for WFQ and a FIFO for the fallback policy.

Why a binary heap with lazy deletion: enqueue and pick are O(log n) with the C
``heapq`` primitives, and the rare removals of a queued thread (exit, a weight
change that re-keys it) only mark its entry dead instead of an O(n) search.
Dead entries are skipped at the front and the heap is compacted whenever they
outnumber the live ones, so its size stays below ``2 * live + 1``: a queue is
bounded by the live thread count however many changes are made.

Entries are ``(virtual_finish_ns, enqueue_seq, thread)``. ``enqueue_seq`` is a
scheduler-wide counter, so ties on virtual finish break by enqueue order and
the thread object itself is never compared.
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Iterator
from typing import Protocol

from .thread import Thread


class RunQueue(Protocol):
    """What the scheduler needs of a run queue."""

    def push(self, thread: Thread, key: int, seq: int) -> None: ...
    def pop(self) -> Thread | None: ...
    def head(self) -> tuple[int, Thread] | None: ...
    def discard(self, thread: Thread) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Thread]: ...


class VirtualFinishQueue:
    """A min-heap of runnable threads ordered by (virtual finish, enqueue order).

    Invariants:
    - ``_live`` maps each queued thread's tid to the seq of its one live entry;
      every other entry in ``_heap`` is dead and skipped;
    - ``len(_heap) <= 2 * len(_live) + 1`` after every operation.
    """

    __slots__ = ("_heap", "_live")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Thread]] = []
        self._live: dict[int, int] = {}

    def push(self, thread: Thread, key: int, seq: int) -> None:
        if thread.tid in self._live:
            self.discard(thread)
        self._live[thread.tid] = seq
        heapq.heappush(self._heap, (key, seq, thread))

    def pop(self) -> Thread | None:
        heap, live = self._heap, self._live
        while heap:
            _, seq, thread = heapq.heappop(heap)
            if live.get(thread.tid) == seq:
                del live[thread.tid]
                return thread
        return None

    def head(self) -> tuple[int, Thread] | None:
        heap, live = self._heap, self._live
        while heap:
            key, seq, thread = heap[0]
            if live.get(thread.tid) == seq:
                return key, thread
            heapq.heappop(heap)
        return None

    def discard(self, thread: Thread) -> None:
        if self._live.pop(thread.tid, None) is None:
            return
        if len(self._heap) > 2 * len(self._live) + 1:
            live = self._live
            self._heap = [e for e in self._heap if live.get(e[2].tid) == e[1]]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Thread]:
        live = self._live
        return (t for _, seq, t in sorted(self._heap) if live.get(t.tid) == seq)


class FifoQueue:
    """First in, first out, with the same lazy deletion (no weights in ordering).

    The key is ignored. Invariant: as for VirtualFinishQueue, with ``_entries``
    in place of the heap.
    """

    __slots__ = ("_entries", "_live")

    def __init__(self) -> None:
        self._entries: collections.deque[tuple[int, Thread]] = collections.deque()
        self._live: dict[int, int] = {}

    def push(self, thread: Thread, key: int, seq: int) -> None:
        if thread.tid in self._live:
            self.discard(thread)
        self._live[thread.tid] = seq
        self._entries.append((seq, thread))

    def pop(self) -> Thread | None:
        entries, live = self._entries, self._live
        while entries:
            seq, thread = entries.popleft()
            if live.get(thread.tid) == seq:
                del live[thread.tid]
                return thread
        return None

    def head(self) -> tuple[int, Thread] | None:
        entries, live = self._entries, self._live
        while entries:
            seq, thread = entries[0]
            if live.get(thread.tid) == seq:
                return seq, thread
            entries.popleft()
        return None

    def discard(self, thread: Thread) -> None:
        if self._live.pop(thread.tid, None) is None:
            return
        if len(self._entries) > 2 * len(self._live) + 1:
            live = self._live
            self._entries = collections.deque(
                e for e in self._entries if live.get(e[1].tid) == e[0]
            )

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Thread]:
        live = self._live
        return (t for seq, t in self._entries if live.get(t.tid) == seq)
