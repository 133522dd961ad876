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
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import structlog
import trio

from capos_sched.core import CoreError

from .errors import WireError, from_core, internal_error, new_ref, wire_error

log = structlog.get_logger("capos_sched.rpc")

OwnerT = TypeVar("OwnerT")
Op = Callable[[Any], Any]
"""An operation: called in the trio thread with the owner; returns the answer
or raises WireError / CoreError (anything else becomes an internal error)."""


class Bridge(Generic[OwnerT]):
    """Hands operations from the RPC loop to the owner in the trio thread.

    Invariants: operations run in the trio thread, one at a time, in
    submission order; every submitted future is resolved exactly once (result,
    typed error, or ``disconnected`` at shutdown) unless its caller cancelled
    it first; at most one drain is scheduled in trio at any time.
    """

    def __init__(self, owner: OwnerT, trio_token: trio.lowlevel.TrioToken) -> None:
        self._owner = owner
        self._token = trio_token
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._queue: collections.deque[tuple[Op, asyncio.Future[Any]]] = collections.deque()
        self._drain_pending = False
        self._closed = False
        self.drains = 0
        """Drains run so far (for tests of coalescing)."""
        self.applied = 0
        """Operations run so far."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the RPC loop (once, from the RPC thread)."""
        self._loop = loop

    # ------------------------------------------------------------ RPC thread

    def submit(self, op: Op) -> asyncio.Future[Any]:
        """Queue ``op`` for the owner; the future resolves with its answer."""
        assert self._loop is not None, "attach() the RPC loop first"
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.submit_into(op, fut)
        return fut

    def submit_into(self, op: Op, fut: asyncio.Future[Any]) -> None:
        with self._lock:
            if self._closed:
                fut.set_exception(wire_error("disconnected", "daemon is shutting down"))
                return
            self._queue.append((op, fut))
            if self._drain_pending:
                return
            self._drain_pending = True
        try:
            self._token.run_sync_soon(self._drain)
        except trio.RunFinishedError:
            self.close()

    def close(self) -> None:
        """Refuse new operations and fail the queued ones (any thread)."""
        with self._lock:
            self._closed = True
            pending, self._queue = self._queue, collections.deque()
        if pending and self._loop is not None and not self._loop.is_closed():
            answers = [
                (fut, False, wire_error("disconnected", "daemon is shutting down"))
                for _, fut in pending
            ]
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                self._loop.call_soon_threadsafe(_answer, answers)

    # ----------------------------------------------------------- trio thread

    def _drain(self) -> None:
        with self._lock:
            self._drain_pending = False
            batch, self._queue = self._queue, collections.deque()
        if not batch:
            return
        self.drains += 1
        answers: list[tuple[asyncio.Future[Any], bool, Any]] = []
        owner = self._owner
        for op, fut in batch:
            try:
                answers.append((fut, True, op(owner)))
            except WireError as exc:
                answers.append((fut, False, exc))
            except CoreError as exc:
                answers.append((fut, False, from_core(exc)))
            except Exception:
                ref = new_ref()
                log.exception("internal error in owner operation", ref=ref, op=_op_name(op))
                answers.append((fut, False, internal_error(ref)))
        self.applied += len(batch)
        loop = self._loop
        assert loop is not None
        with contextlib.suppress(RuntimeError):  # the RPC loop is gone: nobody waits
            loop.call_soon_threadsafe(_answer, answers)


def _answer(answers: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in answers:
        if fut.done():  # the caller went away (client disconnected mid-call)
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


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
