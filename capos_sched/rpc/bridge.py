"""The bridge between the RPC thread (asyncio + pycapnp) and the owner (trio).

The trio thread owns every piece of scheduling and grant state; the RPC thread
owns the sockets. An RPC method hands the owner an *operation* (a callable
taking the owner) and awaits an asyncio future; the owner runs operations in
the order they were submitted and answers through the RPC loop.

Wake-ups are coalesced both ways: a submission schedules a drain in the trio
thread only when none is pending, a drain runs every queued operation, and
all of its answers travel back in one ``call_soon_threadsafe``. (Waking trio
per call costs about 20% of throughput; see shared/notes/measurements.md.)

``OrderedSubmitter`` keeps Cap'n Proto's E-order for one capability even when
some calls must await something (a handle's identity) before their operation
exists: each call takes a ticket synchronously, in delivery order, and
operations reach the bridge in ticket order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs
import structlog
import trio

from capos_sched.core import CoreError

from .errors import WireError, from_core, internal_error, new_ref, scrub, wire_error

log = structlog.get_logger("capos_sched.rpc")

OwnerT = TypeVar("OwnerT")
Op = Callable[[Any], Any]
"""An operation: called in the trio thread with the owner; returns the answer
or raises WireError / CoreError (anything else becomes an internal error).
An operation and its answer are plain data: they cross threads."""


@attrs.frozen
class Refusal:
    """A typed error as plain data: what crosses from the owner to the RPC thread
    instead of an exception (an exception carries frames of the thread that raised it)."""

    code: str
    message: str


Answer = tuple[int, bool, Any]
"""``(call id, ok, value or Refusal)``: one operation's outcome, plain data."""

SHUTTING_DOWN = Refusal("disconnected", "daemon is shutting down")


class Bridge(Generic[OwnerT]):
    """Hands operations from the RPC loop to the owner in the trio thread.

    Invariants: operations run in the trio thread, one at a time, in
    submission order; every submitted future is resolved exactly once (result,
    typed error, or ``disconnected`` at shutdown) unless its caller cancelled
    it first; at most one drain is scheduled in trio at any time.

    Only plain data crosses threads: the trio thread sees ``(call id,
    operation)`` and sends back ``(call id, ok, value or Refusal)``. Futures,
    exceptions and everything else of asyncio or pycapnp stay in the RPC
    thread (``_futures`` is read and written there only), so a garbage
    collection in the trio thread can never finalize an RPC-thread object.
    """

    def __init__(self, owner: OwnerT, trio_token: trio.lowlevel.TrioToken) -> None:
        self._owner = owner
        self._token = trio_token
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[int, Op]] = collections.deque()
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._drain_pending = False
        self._closed = False
        self.drains = 0
        """Drains run so far (for tests of coalescing)."""
        self.applied = 0
        """Operations run so far."""
        self.on_publish: Callable[[list[Any]], None] | None = None
        """Where published items go, in the RPC thread (set there)."""
        self._published: list[Any] = []
        self._publish_pending = False

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the RPC loop (once, from the RPC thread)."""
        self._loop = loop

    # ------------------------------------------------------------ RPC thread

    @property
    def outstanding(self) -> int:
        """Operations submitted and not answered yet (RPC thread)."""
        return len(self._futures)

    def submit(self, op: Op) -> asyncio.Future[Any]:
        """Queue ``op`` for the owner; the future resolves with its answer."""
        assert self._loop is not None, "attach() the RPC loop first"
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.submit_into(op, fut)
        return fut

    def submit_into(self, op: Op, fut: asyncio.Future[Any]) -> None:
        call_id = next(self._ids)
        with self._lock:
            if self._closed:
                _resolve(fut, False, SHUTTING_DOWN)
                return
            self._futures[call_id] = fut
            self._queue.append((call_id, op))
            if self._drain_pending:
                return
            self._drain_pending = True
        try:
            self._token.run_sync_soon(self._drain)
        except trio.RunFinishedError:
            self.close()

    def detach(self) -> None:
        """Fail every unanswered future and forget them (RPC thread, at its end)."""
        self.close()
        futures, self._futures = self._futures, {}
        for fut in futures.values():
            _resolve(fut, False, SHUTTING_DOWN)

    def close(self) -> None:
        """Refuse new operations and fail the queued ones (any thread)."""
        with self._lock:
            self._closed = True
            pending, self._queue = self._queue, collections.deque()
        if pending:
            self._send([(call_id, False, SHUTTING_DOWN) for call_id, _ in pending])

    def _answer(self, answers: list[Answer]) -> None:
        futures = self._futures
        for call_id, ok, value in answers:
            fut = futures.pop(call_id, None)
            if fut is not None:
                _resolve(fut, ok, value)

    # ----------------------------------------------------------- trio thread

    def _drain(self) -> None:
        with self._lock:
            self._drain_pending = False
            batch, self._queue = self._queue, collections.deque()
        if not batch:
            return
        self.drains += 1
        owner = self._owner
        answers = [(call_id, *_apply(op, owner)) for call_id, op in batch]
        self.applied += len(batch)
        self._send(answers)

    def publish(self, items: list[Any]) -> None:
        """Send plain-data ``items`` to ``on_publish`` in the RPC thread (trio
        thread). Coalesced: one wake-up of the RPC loop carries every item
        published until it runs."""
        loop = self._loop
        if loop is None or loop.is_closed() or not items:
            return
        with self._lock:
            self._published.extend(items)
            if self._publish_pending:
                return
            self._publish_pending = True
        with contextlib.suppress(RuntimeError):  # the RPC loop is gone: nobody listens
            loop.call_soon_threadsafe(self._deliver_published)

    def _deliver_published(self) -> None:
        with self._lock:
            items, self._published = self._published, []
            self._publish_pending = False
        if items and self.on_publish is not None:
            self.on_publish(items)

    def _send(self, answers: list[Answer]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the RPC loop is gone: nobody waits
            loop.call_soon_threadsafe(self._answer, answers)


def _apply(op: Op, owner: Any) -> tuple[bool, Any]:
    """Run one operation; its outcome as plain data (trio thread)."""
    try:
        return True, op(owner)
    except WireError as exc:
        refusal = Refusal(exc.code, exc.message)
    except CoreError as exc:
        wire = from_core(exc)
        refusal = Refusal(wire.code, wire.message)
    except Exception as exc:
        ref = new_ref()
        log.error(
            "internal error in owner operation",
            ref=ref,
            op=_op_name(op),
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
        )
        wire = internal_error(ref)
        refusal = Refusal(wire.code, wire.message)
        scrub(exc)
    return False, refusal


def _resolve(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    """Settle ``fut`` (RPC thread); a refusal becomes a fresh exception here."""
    if fut.done():  # the caller went away (client disconnected mid-call)
        return
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(wire_error(value.code, value.message))


def _op_name(op: Op) -> str:
    func = getattr(op, "func", op)
    return getattr(func, "__qualname__", repr(func))


class OrderedSubmitter:
    """Submits one capability's operations in the order its calls arrived.

    Invariants: tickets are handed out in call-delivery order (``reserve`` is
    called before the call's first ``await``); an operation reaches the
    bridge only after every earlier ticket was filled or cancelled; a ticket
    is filled or cancelled exactly once.
    """

    def __init__(self, bridge: Bridge[Any]) -> None:
        self._bridge = bridge
        self._next = 0
        self._head = 0
        self._waiting: dict[int, tuple[Op, asyncio.Future[Any]] | None] = {}

    def reserve(self) -> int:
        ticket = self._next
        self._next += 1
        return ticket

    def submit(self, op: Op) -> asyncio.Future[Any]:
        """Reserve and fill at once (a call with nothing to wait for)."""
        return self.fill(self.reserve(), op)

    def fill(self, ticket: int, op: Op) -> asyncio.Future[Any]:
        if ticket == self._head and not self._waiting:
            self._head += 1
            return self._bridge.submit(op)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[ticket] = (op, fut)
        self._flush()
        return fut

    def cancel(self, ticket: int) -> None:
        """Give up a reserved ticket (its call failed before it had an operation)."""
        if ticket >= self._head and ticket not in self._waiting:
            self._waiting[ticket] = None
            self._flush()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _flush(self) -> None:
        while self._head in self._waiting:
            entry = self._waiting.pop(self._head)
            self._head += 1
            if entry is not None:
                op, fut = entry
                if not fut.done():
                    self._bridge.submit_into(op, fut)
