"""Dispatch queues (DSQs): an ordered heap (by a key the policy passes) and a FIFO.

The mechanism owns every DSQ: one local FIFO per CPU, the global FIFO, and the
ones a policy creates (``ctx.create_dsq``). A queued thread's ``owner`` is the
DSQ holding it.

Why a binary heap with lazy deletion: enqueue and pick are O(log n) with the C
``heapq`` primitives, and the rare removals of a queued thread (exit, a weight
change that re-keys it) only mark its entry dead instead of an O(n) search.
Dead entries are skipped at the front and the heap is compacted (by a discard
or a pop) whenever they outnumber the live ones, so its size stays below
``2 * live + 1``: a queue is
bounded by the live thread count however many changes are made.

Ties on the key break by ``enqueue_seq``, a scheduler-wide counter, so
equal keys leave the queue in enqueue order.

Two implementations of the ordered DSQ and of the steal/pull walk: the
pure-Python reference here (``PureVirtualFinishQueue``, ``pure_balance_victim``)
and an optional C accelerator (``_accel.c``, the same heap with its entries in a
C array), built at install time when a compiler is there. ``VirtualFinishQueue``
and ``balance_victim`` are the accelerated ones when the extension imports and
``CAPOS_SCHED_PURE`` is unset (or empty or 0), else the reference;
``IMPLEMENTATION`` says which ("c" or "python"). The same tests run against both
(tests/conftest.py, ``make test``).
"""

from __future__ import annotations

import collections
import heapq
import os
from collections.abc import Iterator
from typing import Protocol

from .thread import Thread

QUEUED = "queued"


class RunQueue(Protocol):
    """What the scheduler needs of a DSQ."""

    id: int
    cpu: int | None
    ordered: bool
    kind: str

    def push(self, thread: Thread, key: int, seq: int) -> None: ...
    def pop(self) -> Thread | None: ...
    def head(self) -> tuple[int, Thread] | None: ...
    def head_key(self) -> int | None: ...
    def discard(self, thread: Thread) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Thread]: ...


SEQ_BITS = 48
"""Enqueue sequence numbers occupy the low 48 bits of a heap entry: 2.8e14
enqueues, nine years at a million a second, before ties could misorder."""
_SEQ_MASK = (1 << SEQ_BITS) - 1


KEY_MIN = -(1 << 63)
KEY_MAX = (1 << 63) - 1
"""Ordered-DSQ keys are signed 64-bit (as sched_ext's dsq_vtime is 64-bit): the
scheduler refuses others, for both implementations alike."""


class PureVirtualFinishQueue:
    """A min-heap of runnable threads ordered by (virtual finish, enqueue order).

    Each heap entry is one integer, ``virtual_finish << SEQ_BITS | seq``: Python
    compares small integers much faster than tuples, which is most of the cost
    of a heap operation at 100,000 threads.

    Invariants:
    - ``_entries`` maps the seq of each live entry to its thread; an entry in
      ``_heap`` whose seq is absent is dead and skipped;
    - a thread has at most one live entry (its ``queue_seq``);
    - ``len(_heap) <= 2 * len(_entries) + 1`` after every operation.
    """

    __slots__ = ("_entries", "_heap", "cpu", "id")
    kind = QUEUED
    ordered = True

    def __init__(self, dsq_id: int = 0, cpu: int | None = None) -> None:
        self.id = dsq_id
        self.cpu = cpu
        """The CPU whose local DSQ this is (None for other DSQs)."""
        self._heap: list[int] = []
        self._entries: dict[int, Thread] = {}

    def push(self, thread: Thread, key: int, seq: int) -> None:
        if thread.queue_seq in self._entries:
            self.discard(thread)
        thread.queue_seq = seq
        self._entries[seq] = thread
        heapq.heappush(self._heap, key << SEQ_BITS | seq)

    def pop(self) -> Thread | None:
        heap, entries = self._heap, self._entries
        while heap:
            thread = entries.pop(heapq.heappop(heap) & _SEQ_MASK, None)
            if thread is not None:
                if len(heap) > 2 * len(entries) + 1:
                    self._compact()  # dead entries left behind by discards
                return thread
        return None

    def _compact(self) -> None:
        entries = self._entries
        self._heap = [e for e in self._heap if (e & _SEQ_MASK) in entries]
        heapq.heapify(self._heap)

    def head(self) -> tuple[int, Thread] | None:
        heap, entries = self._heap, self._entries
        while heap:
            thread = entries.get(heap[0] & _SEQ_MASK)
            if thread is not None:
                return heap[0] >> SEQ_BITS, thread
            heapq.heappop(heap)
        return None

    def front(self) -> Thread | None:
        """The front thread (None when empty), without building a tuple."""
        heap, entries = self._heap, self._entries
        while heap:
            thread = entries.get(heap[0] & _SEQ_MASK)
            if thread is not None:
                return thread
            heapq.heappop(heap)
        return None

    def head_key(self) -> int | None:
        """The front's virtual finish (None when empty), without building a tuple."""
        heap, entries = self._heap, self._entries
        while heap:
            if heap[0] & _SEQ_MASK in entries:
                return heap[0] >> SEQ_BITS
            heapq.heappop(heap)
        return None

    def discard(self, thread: Thread) -> None:
        entries = self._entries
        if entries.get(thread.queue_seq) is not thread:
            return
        del entries[thread.queue_seq]
        if len(self._heap) > 2 * len(entries) + 1:
            self._compact()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Thread]:
        """Live threads in key order, lazily: O(log k) per thread taken, so a
        policy scanning for its first eligible thread pays only for what it
        looks at. The queue must not change while the iterator is in use."""
        heap, entries = self._heap, self._entries
        if not heap:
            return
        frontier = [(heap[0], 0)]
        size = len(heap)
        while frontier:
            entry, index = heapq.heappop(frontier)
            thread = entries.get(entry & _SEQ_MASK)
            if thread is not None:
                yield thread
            for child in (2 * index + 1, 2 * index + 2):
                if child < size:
                    heapq.heappush(frontier, (heap[child], child))

    def remove(self, thread: Thread) -> Thread:
        """Take ``thread`` out of the queue (it must be live in it)."""
        self.discard(thread)
        return thread


class FifoQueue:
    """First in, first out, with the same lazy deletion (no weights in ordering).

    The key is ignored. Invariants: as for VirtualFinishQueue, with a deque of
    seqs in place of the heap.
    """

    __slots__ = ("_entries", "_order", "cpu", "id")
    kind = QUEUED
    ordered = False

    def __init__(self, dsq_id: int = 0, cpu: int | None = None) -> None:
        self.id = dsq_id
        self.cpu = cpu
        self._order: collections.deque[int] = collections.deque()
        self._entries: dict[int, Thread] = {}

    def push(self, thread: Thread, key: int, seq: int) -> None:
        if thread.queue_seq in self._entries:
            self.discard(thread)
        thread.queue_seq = seq
        self._entries[seq] = thread
        self._order.append(seq)

    def pop(self) -> Thread | None:
        order, entries = self._order, self._entries
        while order:
            thread = entries.pop(order.popleft(), None)
            if thread is not None:
                return thread
        return None

    def head(self) -> tuple[int, Thread] | None:
        order, entries = self._order, self._entries
        while order:
            thread = entries.get(order[0])
            if thread is not None:
                return order[0], thread
            order.popleft()
        return None

    def head_key(self) -> int | None:
        head = self.head()
        return None if head is None else head[0]

    def discard(self, thread: Thread) -> None:
        entries = self._entries
        if entries.get(thread.queue_seq) is not thread:
            return
        del entries[thread.queue_seq]
        if len(self._order) > 2 * len(entries) + 1:
            self._order = collections.deque(seq for seq in self._order if seq in entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Thread]:
        entries = self._entries
        return (entries[seq] for seq in self._order if seq in entries)

    def remove(self, thread: Thread) -> Thread:
        """Take ``thread`` out of the queue (it must be live in it)."""
        self.discard(thread)
        return thread


def _front_key(queue: PureVirtualFinishQueue) -> int | None:
    heap = queue._heap
    if heap and (heap[0] & _SEQ_MASK) in queue._entries:
        return heap[0] >> SEQ_BITS
    return queue.head_key()  # skips dead entries at the front


def pure_balance_victim(
    queues: list[PureVirtualFinishQueue], own: PureVirtualFinishQueue, threshold: int
) -> tuple[int | None, PureVirtualFinishQueue | None]:
    """The steal/pull walk over ordered queues, in one call: ``(own front key,
    victim)``. The victim is the sibling with the lowest front key (ties: the
    earlier in ``queues``), if ``own`` is empty (a steal) or that key is at
    least ``threshold`` below own's front (a pull); else None.

    One function instead of a method call per sibling: this walk runs at every
    pick of a CPU whose local DSQ is empty.
    """
    own_key = _front_key(own)
    limit = None if own_key is None else own_key - threshold
    best_key, victim = None, None
    for sibling in queues:
        if sibling is own:
            continue
        heap = sibling._heap
        if not heap:
            continue
        key = heap[0] >> SEQ_BITS if (heap[0] & _SEQ_MASK) in sibling._entries else None
        if key is None:
            key = sibling.head_key()
            if key is None:
                continue
        if (limit is None or key <= limit) and (best_key is None or key < best_key):
            best_key, victim = key, sibling
    return own_key, victim


def _load_accelerator():  # type: ignore[no-untyped-def]
    """The C extension module, or None where it was not built."""
    try:
        from . import _accel  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _accel


def pure_requested() -> bool:
    """CAPOS_SCHED_PURE set (not empty, not 0): use the reference even where
    the accelerator was built."""
    return os.environ.get("CAPOS_SCHED_PURE", "") not in ("", "0")


_accel = _load_accelerator()
AcceleratedVirtualFinishQueue: type | None = None
if _accel is not None:

    class _AcceleratedVirtualFinishQueue(_accel.HeapQueue):  # type: ignore[misc,name-defined]
        """PureVirtualFinishQueue with its heap in C (``_accel.HeapQueue``):
        same order, same lazy deletion, same bound ``heap <= 2 * live + 1``.
        ``push``, ``pop``, ``head``, ``front``, ``head_key``, ``discard`` and
        ``len`` are C; ``_entries`` is the live seq -> thread dict."""

        __slots__ = ("cpu", "id")
        kind = QUEUED
        ordered = True

        def __init__(self, dsq_id: int = 0, cpu: int | None = None) -> None:
            self.id = dsq_id
            self.cpu = cpu

        @property
        def _heap(self) -> list[int]:
            """The heap slots as the reference stores them (a copy; white-box tests)."""
            at = self._heap_at
            return [key << SEQ_BITS | seq for key, seq in map(at, range(self._heap_size()))]

        def __iter__(self) -> Iterator[Thread]:
            """As PureVirtualFinishQueue.__iter__: lazy, O(log k) per thread taken."""
            size, at, entries = self._heap_size(), self._heap_at, self._entries
            if not size:
                return
            frontier = [(at(0), 0)]
            while frontier:
                (_, seq), index = heapq.heappop(frontier)
                thread = entries.get(seq)
                if thread is not None:
                    yield thread
                for child in (2 * index + 1, 2 * index + 2):
                    if child < size:
                        heapq.heappush(frontier, (at(child), child))

        def remove(self, thread: Thread) -> Thread:
            """Take ``thread`` out of the queue (it must be live in it)."""
            self.discard(thread)
            return thread

    AcceleratedVirtualFinishQueue = _AcceleratedVirtualFinishQueue


if AcceleratedVirtualFinishQueue is not None and not pure_requested():
    VirtualFinishQueue: type = AcceleratedVirtualFinishQueue
    balance_victim = _accel.balance_victim
    IMPLEMENTATION = "c"
else:
    VirtualFinishQueue = PureVirtualFinishQueue
    balance_victim = pure_balance_victim
    IMPLEMENTATION = "python"
