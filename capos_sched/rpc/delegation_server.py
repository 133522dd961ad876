"""The RPC thread's half of CpuDelegation (the trio half: ``delegation.py``).

``CpuDelegationServer`` decodes parameters, submits the ``op_*`` operations
through the bridge and encodes answers; ``SubscriptionHub`` queues each
subscription's notifications (bounded) and sends them to its listener, one
call at a time; ``SubscriptionServer`` ends its subscription when released.
Only plain data (``Node`` references, ``Note`` and ``Holding`` values, ids)
crosses to or from the trio thread; every pycapnp object stays here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import Callable
from typing import Any

import attrs
import structlog

from .delegation import (
    Holding,
    Node,
    Note,
    SchedulerRow,
    op_child,
    op_child_holdings,
    op_children,
    op_grant,
    op_holdings,
    op_kill,
    op_revoke,
    op_root,
    op_schedulers,
    op_subscribe,
    op_unsubscribe,
)
from .errors import wire_error
from .schema import capos
from .servers import _text, rpc_method

log = structlog.get_logger("capos_sched.rpc")

MAX_SUBSCRIPTIONS_PER_CONNECTION = 64
MAX_QUEUED_NOTES = 1024
"""Notifications queued for one listener; more and the subscription ends."""
LISTENER_CALL_TIMEOUT_S = 10.0
MAX_CPUS_PER_CALL = 1 << 16
MAX_REASON_CHARS = 1024


# -------------------------------------------------------------- RPC side


def _cpus(params: Any) -> tuple[int, ...]:
    cpus = tuple(int(c) for c in params.cpus)
    if len(cpus) > MAX_CPUS_PER_CALL:
        raise wire_error("invalidArgument", f"more than {MAX_CPUS_PER_CALL} CPUs in one call")
    return cpus


def _caps(params: Any) -> tuple[str, ...]:
    names = []
    for value in params.caps:
        raw = int(getattr(value, "raw", value))
        if raw not in (0, 1, 2):
            raise wire_error("invalidArgument", f"unknown CPU cap ordinal {raw}")
        names.append(("enqImmed", "enq", "preempt")[raw])
    return tuple(names)


def _fill_holdings(results: Any, rows: list[Holding], field: str = "cpus") -> None:
    out = results.init(field, len(rows))
    for item, row in zip(out, rows, strict=True):
        item.cpu = row.cpu
        item.held = list(row.held)
        item.effective = list(row.effective)


def node_client(ctx: Any, node: Node) -> Any:
    """The capability for ``node`` on this connection (one per node)."""
    cache: dict[Node, Any] = ctx.nodes
    client = cache.get(node)
    if client is None:
        client = cache[node] = capos().CpuDelegation._new_client(CpuDelegationServer(ctx, node))
    return client


class SubscriptionHub:
    """Every subscription of the daemon's RPC thread (RPC thread only).

    Invariants: a subscription has at most ``MAX_QUEUED_NOTES`` notifications
    queued and one sender task; ``end`` is idempotent and tells the owner to
    forget the subscription.
    """

    def __init__(self, bridge: Any) -> None:
        self.bridge = bridge
        self._ids = itertools.count(1)
        self._subs: dict[int, _Sub] = {}
        self.ended = 0
        """Subscriptions ended for a slow or failed listener (tests read it)."""

    def new_id(self) -> int:
        return next(self._ids)

    def add(self, sub_id: int, listener: Any, conn: Any) -> None:
        queue: asyncio.Queue[Note] = asyncio.Queue(MAX_QUEUED_NOTES)
        sub = _Sub(listener, queue, conn)
        self._subs[sub_id] = sub
        conn.subscriptions.add(sub_id)
        sub.task = asyncio.ensure_future(self._send(sub_id, sub))

    def deliver(self, items: list[tuple[int, Note | None]]) -> None:
        for sub_id, note in items:
            sub = self._subs.get(sub_id)
            if sub is None:
                continue
            if note is None:
                self.end(sub_id, "its node was revoked or killed")
                continue
            try:
                sub.queue.put_nowait(note)
            except asyncio.QueueFull:
                self.ended += 1
                self.end(sub_id, f"listener too slow ({MAX_QUEUED_NOTES} notifications queued)")

    def end(self, sub_id: int, why: str) -> None:
        sub = self._subs.pop(sub_id, None)
        if sub is None:
            return
        sub.conn.subscriptions.discard(sub_id)
        if sub.task is not None and not sub.task.done():
            sub.task.cancel()
        sub.listener = None
        log.info("subscription ended", subscription=sub_id, why=why)
        with contextlib.suppress(Exception):
            fut = self.bridge.submit(functools.partial(op_unsubscribe, sub_id=sub_id))
            fut.add_done_callback(_ignore)

    async def _send(self, sub_id: int, sub: _Sub) -> None:
        try:
            while True:
                note = await sub.queue.get()
                if sub.listener is None:
                    return
                await asyncio.wait_for(_call_listener(sub.listener, note), LISTENER_CALL_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the listener failed or is too slow: its subscription only
            self.ended += 1
            self.end(sub_id, f"listener failed: {type(exc).__name__}")


def _ignore(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


@attrs.define(eq=False)
class _Sub:
    listener: Any
    queue: asyncio.Queue[Note]
    conn: Any
    task: asyncio.Future[Any] | None = None


async def _call_listener(listener: Any, note: Note) -> None:
    if note.kind == "capsUpdated":
        await listener.capsUpdated(list(note.cpus))
    elif note.kind == "effectiveCapsUpdated":
        await listener.effectiveCapsUpdated(note.cpu, list(note.before), list(note.after))
    else:
        await listener.idle(note.cpu)


def hub_for(bridge: Any) -> SubscriptionHub:
    """The daemon's hub (made on first use, in the RPC thread)."""
    hub = getattr(bridge, "delegation_hub", None)
    if hub is None:
        hub = bridge.delegation_hub = SubscriptionHub(bridge)
        bridge.on_publish = hub.deliver
    return hub  # type: ignore[no-any-return]


def end_connection(ctx: Any) -> None:
    """End every subscription of a closing connection (RPC thread)."""
    subs = getattr(ctx, "subscriptions", None)
    if not subs:
        return
    hub = hub_for(ctx.bridge)
    for sub_id in list(subs):
        hub.end(sub_id, "connection closed")


class CpuDelegationServer(capos().CpuDelegation.Server):  # type: ignore[misc,name-defined]
    """One node's CpuDelegation on one connection (RPC thread; holds no state)."""

    def __init__(self, ctx: Any, node: Node) -> None:
        self._ctx = ctx
        self._node = node

    def _submit(self, op: Callable[..., Any], **kwargs: Any) -> Any:
        return self._ctx.bridge.submit(functools.partial(op, node=self._node, **kwargs))

    @rpc_method
    async def holdings_context(self, context: Any) -> None:
        _fill_holdings(context.results, await self._submit(op_holdings))

    @rpc_method
    async def children_context(self, context: Any) -> None:
        context.results.names = await self._submit(op_children)

    @rpc_method
    async def grant_context(self, context: Any) -> None:
        p = context.params
        child = _name(p, "child")
        denied = await self._submit(op_grant, child=child, cpus=_cpus(p), caps=_caps(p))
        context.results.denied = denied

    @rpc_method
    async def revoke_context(self, context: Any) -> None:
        p = context.params
        child = _name(p, "child")
        await self._submit(op_revoke, child=child, cpus=_cpus(p), caps=_caps(p))

    @rpc_method
    async def childHoldings_context(self, context: Any) -> None:
        child = _name(context.params, "child")
        _fill_holdings(context.results, await self._submit(op_child_holdings, child=child))

    @rpc_method
    async def subscribe_context(self, context: Any) -> None:
        ctx = self._ctx
        if len(ctx.subscriptions) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
            raise wire_error(
                "overloaded",
                f"{MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions already open on this connection",
            )
        listener = context.params.listener
        hub = hub_for(ctx.bridge)
        sub_id = hub.new_id()
        await self._submit(op_subscribe, sub_id=sub_id)
        hub.add(sub_id, listener, ctx)
        context.results.handle = capos().Subscription._new_client(SubscriptionServer(hub, sub_id))

    @rpc_method
    async def kill_context(self, context: Any) -> None:
        p = context.params
        child = _name(p, "child")
        reason = _name(p, "reason", limit=MAX_REASON_CHARS)
        await self._submit(op_kill, child=child, reason=reason)

    @rpc_method
    async def child_context(self, context: Any) -> None:
        name = _name(context.params, "name")
        node = await self._submit(op_child, name=name)
        context.results.node = node_client(self._ctx, node)


def _name(params: Any, field: str, limit: int = 256) -> str:
    return _text(params, field, field, limit)


class SubscriptionServer(capos().Subscription.Server):  # type: ignore[misc,name-defined]
    """Holds a subscription open; released (dropped by the client) it ends it.

    Finalized in the RPC thread (pycapnp releases it there), never elsewhere:
    the hub holds no reference to it.
    """

    def __init__(self, hub: SubscriptionHub, sub_id: int) -> None:
        self._hub = hub
        self._sub_id = sub_id

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self._hub.end(self._sub_id, "the Subscription was dropped")


async def admin_cpu_delegation(ctx: Any, context: Any) -> None:
    """``Admin.cpuDelegation``: the root node (the operator's)."""
    node = await ctx.bridge.submit(op_root)
    context.results.node = node_client(ctx, node)


async def admin_schedulers(ctx: Any, context: Any) -> None:
    """``Admin.schedulers``: every scheduler's holdings, counters and exit record."""
    rows: list[SchedulerRow] = await ctx.bridge.submit(op_schedulers)
    out = context.results.init("schedulers", len(rows))
    for item, row in zip(out, rows, strict=True):
        item.name = row.name
        item.parent = row.parent
        item.alive = row.alive
        _fill_holdings(item, list(row.holdings), "holdings")
        item.rejectedInserts = row.rejected_inserts
        item.forcedAdmits = row.forced_admits
        item.deniedKicks = row.denied_kicks
        item.deniedPreempts = row.denied_preempts
        item.evictions = row.evictions
        times = item.init("allocated", len(row.allocated))
        for slot, (cpu, ns) in zip(times, row.allocated, strict=True):
            slot.cpu = cpu
            slot.ns = ns
        item.exitKind = row.exit_kind
        item.exitMessage = row.exit_message
