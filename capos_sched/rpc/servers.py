"""The Cap'n Proto servers: Restorer, CapSet, ThreadHandle, SchedulingPolicyCap, Admin.

They run in the RPC thread and hold no scheduling state: each method decodes
its parameters, hands an operation to the owner through the bridge, and
encodes the answer. Every method goes through ``rpc_method``, which enforces
the connection's concurrent-call bound and turns every failure into a typed
``WireError`` (unexpected ones become ``failed: internal error (ref ...)``,
details in the daemon log only).

Server objects are per connection (the bound and the handle registry are
per connection); a connection hands out one object per grant, so repeated
``get`` calls (also through CapSets restored again on the same connection)
return the same capability, its calls share one E-order, and what the daemon
keeps per connection is bounded by the grants, not by the calls made.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import capnp
import structlog

from capos_sched.core import CoreError
from capos_sched.wire import latch_kind

from .bridge import Bridge, Op, OrderedSubmitter, Refusal
from .errors import (
    WireError,
    from_core,
    internal_error,
    new_ref,
    parse_remote,
    scrub,
    wire_error,
)
from .grants import NONCE_BYTES, Grant, ProcessGrants
from .owner import Claim, Owner, ThreadArg
from .schema import capos
from .unwrap import HookRegistry

if TYPE_CHECKING:
    from .owner import LoadResult

LoadFn = Callable[[str, str], Awaitable["LoadResult"]]
"""``load(source, name)``: Admin.load, injected into admin connections."""

log = structlog.get_logger("capos_sched.rpc")

CLAIM_TIMEOUT_S = 5.0
"""How long a handle we cannot recognise directly may take to prove itself."""
MAX_TOKEN_BYTES = 1024
MAX_NAME_CHARS = 256
MAX_POLICY_SOURCE_CHARS = 256 * 1024
"""Admin.setPolicy's source bound (as ``policy_files.MAX_POLICY_SOURCE_CHARS``)."""
MAX_EXIT_MESSAGE_CHARS = 2000


class RpcCounters:
    """Counters kept by the RPC thread (read by Admin.stats in that thread)."""

    def __init__(self) -> None:
        self.connections = 0
        self.refused = 0
        self.overloaded = 0
        self.internal_errors = 0
        self.refused_connections = 0


class ConnContext:
    """Per-connection state (RPC thread only).

    Invariant: ``0 <= inflight <= max_calls``; a call that would exceed the
    bound is refused with ``overloaded`` before it does anything.
    """

    __slots__ = (
        "bridge",
        "caps",
        "counters",
        "id",
        "inflight",
        "kind",
        "load",
        "max_calls",
        "nodes",
        "registry",
        "restored",
        "sessions",
        "subscriptions",
    )

    def __init__(
        self,
        bridge: Bridge[Owner],
        counters: RpcCounters,
        load: LoadFn | None,
        conn_id: int,
        kind: str,
        max_calls: int,
    ) -> None:
        self.bridge = bridge
        self.counters = counters
        self.load = load
        """Admin.load's implementation (plan loads are the service's job), or None."""
        self.id = conn_id
        self.kind = kind
        self.max_calls = max_calls
        self.inflight = 0
        self.registry = HookRegistry()
        self.caps: dict[Grant, Any] = {}
        """The capability handed out for each grant on this connection."""
        self.sessions: dict[ProcessGrants, Any] = {}
        """The CapSet handed out for each process restored on this connection."""
        self.restored = False
        """A token was restored on this connection (it is no longer idle)."""
        self.nodes: dict[Any, Any] = {}
        """The CpuDelegation handed out for each scheduler node (rpc/delegation.py)."""
        self.subscriptions: set[int] = set()
        """CpuListener subscriptions open on this connection (bounded)."""

    def close(self) -> None:
        from .delegation_server import end_connection

        end_connection(self)
        self.nodes.clear()
        self.registry.clear()
        self.caps.clear()
        self.sessions.clear()


Method = Callable[[Any, Any], Awaitable[None]]


def rpc_method(fn: Method, *, bounded: bool = True) -> Method:
    """Bound, type and log one server method (see the module docstring).

    Whatever the method raised is turned into plain data (a Refusal) and its
    frames are cleared right here, in the RPC thread; the exception pycapnp
    gets is a fresh one that references nothing of the call. So no traceback
    of a call can keep its pycapnp objects alive in a reference cycle, to be
    finalized later by a garbage collection on another thread.
    """

    @functools.wraps(fn)
    async def wrapper(self: Any, context: Any) -> None:
        ctx: ConnContext = self._ctx
        if bounded and ctx.inflight >= ctx.max_calls:
            ctx.counters.overloaded += 1
            raise wire_error(
                "overloaded", f"{ctx.max_calls} calls already in flight on this connection"
            )
        ctx.inflight += 1
        try:
            refusal = await _guarded(fn, self, context)
        finally:
            ctx.inflight -= 1
        if refusal is not None:
            raise wire_error(refusal.code, refusal.message)

    return wrapper


async def _guarded(fn: Method, server: Any, context: Any) -> Refusal | None:
    """Run ``fn``; None, or its failure as plain data (frames cleared)."""
    try:
        await fn(server, context)
    except Exception as exc:
        refusal = _refusal(exc, server._ctx, fn.__name__)
        scrub(exc)
        return refusal
    except BaseException as exc:  # cancelled: the call's frames go now, not in a cycle
        with contextlib.suppress(Exception):
            traceback.clear_frames(exc.__traceback__)
        raise
    return None


def _refusal(exc: Exception, ctx: ConnContext, method: str) -> Refusal:
    if isinstance(exc, WireError):
        ctx.counters.refused += 1
        return Refusal(exc.code, exc.message)
    if isinstance(exc, CoreError):
        ctx.counters.refused += 1
        wire = from_core(exc)
    elif isinstance(exc, capnp.KjException):
        ctx.counters.refused += 1
        wire = _kj_to_wire(exc, method)
    else:
        ref = new_ref()
        ctx.counters.internal_errors += 1
        log.error(
            "internal error in RPC method",
            ref=ref,
            method=method,
            conn=ctx.id,
            error=f"{type(exc).__name__}: {exc}",
            exc_info=exc,
        )
        wire = internal_error(ref)
    return Refusal(wire.code, wire.message)


def _kj_to_wire(exc: capnp.KjException, method: str) -> WireError:
    """A KJ error while decoding parameters or encoding results."""
    text = getattr(exc, "description", None) or str(exc)
    if "out of range" in text or "Value type mismatch" in text or "parse" in text.lower():
        return wire_error("invalidArgument", f"malformed parameters for {method}")
    ref = new_ref()
    log.warning("capnp error in RPC method", ref=ref, method=method, error=text[:500])
    return internal_error(ref)


def _text(params: Any, field: str, what: str, limit: int = MAX_NAME_CHARS) -> str:
    """A Text parameter, checked: UTF-8 (pycapnp decodes on access), bounded."""
    try:
        value = getattr(params, field)
    except UnicodeDecodeError:
        raise wire_error("invalidArgument", f"{what} is not valid UTF-8") from None
    if not isinstance(value, str):
        raise wire_error("invalidArgument", f"{what} must be text")
    if len(value) > limit:
        raise wire_error("invalidArgument", f"{what} longer than {limit} characters")
    return value


class RestorerServer(capos().Restorer.Server):  # type: ignore[misc,name-defined]
    """The bootstrap of ``--listen``: a token in, that process's CapSet out."""

    def __init__(self, ctx: ConnContext) -> None:
        self._ctx = ctx

    @rpc_method
    async def restore_context(self, context: Any) -> None:
        token = bytes(context.params.token)
        if not 0 < len(token) <= MAX_TOKEN_BYTES:
            raise wire_error("disconnected", "unknown or revoked token")
        ctx = self._ctx
        pg = await ctx.bridge.submit(functools.partial(Owner.restore, token=token))
        ctx.restored = True
        client = ctx.sessions.get(pg)
        if client is None:  # one CapSet per process per connection, however often restored
            client = ctx.sessions[pg] = capos().CapSet._new_client(CapSetServer(ctx, pg))
        context.results.caps = client


class CapSetServer(capos().CapSet.Server):  # type: ignore[misc,name-defined]
    """One process's grants, by name (restored by token, or an exec'd child's bootstrap)."""

    def __init__(self, ctx: ConnContext, pg: ProcessGrants) -> None:
        self._ctx = ctx
        self._pg = pg

    @rpc_method
    async def get_context(self, context: Any) -> None:
        name = _text(context.params, "name", "grant name")
        grant: Grant = await self._ctx.bridge.submit(
            functools.partial(Owner.capset_get, pg=self._pg, name=name)
        )
        if grant.kind == "cpuDelegation":
            context.results.cap = await self._node_client_for(grant)
            return
        context.results.cap = self._client_for(grant)

    async def _node_client_for(self, grant: Grant) -> Any:
        from .delegation import op_node_for
        from .delegation_server import node_client

        ctx = self._ctx
        client = ctx.caps.get(grant)
        if client is None:
            node = await ctx.bridge.submit(functools.partial(op_node_for, grant=grant))
            client = ctx.caps[grant] = node_client(ctx, node)
        return client

    @rpc_method
    async def list_context(self, context: Any) -> None:
        names = await self._ctx.bridge.submit(functools.partial(Owner.capset_list, pg=self._pg))
        context.results.names = names

    def _client_for(self, grant: Grant) -> Any:
        ctx = self._ctx
        client = ctx.caps.get(grant)
        if client is None:
            s = capos()
            if grant.kind == "thread":
                handle = ThreadHandleServer(ctx, grant)
                client = s.ThreadHandle._new_client(handle)
                ctx.registry.register(client, handle)
            else:
                client = s.SchedulingPolicyCap._new_client(PolicyServer(ctx, grant))
            ctx.caps[grant] = client
        return client


class ThreadHandleServer(capos().ThreadHandle.Server):  # type: ignore[misc,name-defined]
    """A handle to one thread (tid, generation); no authority by itself."""

    def __init__(self, ctx: ConnContext, grant: Grant) -> None:
        self._ctx = ctx
        self.grant = grant

    @rpc_method
    async def describe_context(self, context: Any) -> None:
        snap = await self._ctx.bridge.submit(functools.partial(Owner.describe, grant=self.grant))
        r = context.results
        r.name = snap.name
        r.threadId = snap.tid
        r.generation = snap.generation
        r.state = snap.state.name.lower()

    # Not under --max-calls: it never waits (so it is never in flight), and a
    # connection at its bound may be exactly the one whose held calls wait
    # for their handles to prove themselves through it.
    @functools.partial(rpc_method, bounded=False)
    async def prove_context(self, context: Any) -> None:
        nonce = bytes(context.params.nonce)
        if len(nonce) > 1024:
            raise wire_error("invalidArgument", "nonce longer than 1024 bytes")
        context.results.mac = self.grant.prove_mac(nonce)  # immutable: no owner needed

    @rpc_method
    async def isLive_context(self, context: Any) -> None:
        context.results.live = await self._ctx.bridge.submit(
            functools.partial(Owner.is_live, grant=self.grant)
        )


class PolicyServer(capos().SchedulingPolicyCap.Server):  # type: ignore[misc,name-defined]
    """Scheduling authority; every call also needs a ThreadHandle of the same process.

    Calls are applied in arrival order (``OrderedSubmitter``), including calls
    whose handle must first describe itself.
    """

    def __init__(self, ctx: ConnContext, grant: Grant) -> None:
        self._ctx = ctx
        self.grant = grant
        self._seq = OrderedSubmitter(ctx.bridge)

    def _apply(self, thread_cap: Any, make_op: Callable[[ThreadArg], Op]) -> Awaitable[Any]:
        """Submit now when the handle is one of ours; else ticket, prove, submit."""
        handle = self._ctx.registry.lookup(thread_cap)
        if handle is not None:
            return self._seq.submit(make_op(handle.grant))
        return self._slow(thread_cap, make_op)

    async def _slow(self, thread_cap: Any, make_op: Callable[[ThreadArg], Op]) -> Any:
        ticket = self._seq.reserve()
        try:
            claim = await _claim(thread_cap)
        except BaseException:
            self._seq.cancel(ticket)
            raise
        return await self._seq.fill(ticket, make_op(claim))

    @rpc_method
    async def setWeight_context(self, context: Any) -> None:
        params = context.params
        weight = params.weight
        grant = self.grant
        await self._apply(
            params.thread,
            lambda t: functools.partial(Owner.set_weight, policy=grant, thread=t, weight=weight),
        )

    @rpc_method
    async def setLatencyClass_context(self, context: Any) -> None:
        params = context.params
        cls = _enum_ordinal(getattr(params, "class"))
        grant = self.grant
        await self._apply(
            params.thread,
            lambda t: functools.partial(
                Owner.set_latency_class, policy=grant, thread=t, latency_class=cls
            ),
        )

    @rpc_method
    async def snapshot_context(self, context: Any) -> None:
        params = context.params
        grant = self.grant
        snap = await self._apply(
            params.thread,
            lambda t: functools.partial(Owner.snapshot, policy=grant, thread=t),
        )
        r = context.results
        r.weight = snap.weight
        setattr(r, "class", snap.latency_class.wire_name)
        r.runtimeNs = snap.runtime_ns
        r.virtualRuntimeNs = snap.virtual_runtime_ns


def _enum_ordinal(value: Any) -> int:
    """An enum parameter as its ordinal (pycapnp cannot name unknown enumerants)."""
    return int(getattr(value, "raw", value))


async def _claim(thread_cap: Any) -> Claim:
    """Ask a handle we do not recognise to prove which grant it is (a fresh nonce)."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    try:
        answer = await asyncio.wait_for(_prove(thread_cap, nonce), CLAIM_TIMEOUT_S)
    except TimeoutError:
        raise wire_error(
            "invalidArgument",
            f"the thread handle did not prove itself within {CLAIM_TIMEOUT_S} s",
        ) from None
    except capnp.KjException as exc:
        err = parse_remote(getattr(exc, "description", "") or "", getattr(exc, "type", None))
        if err.code == "disconnected" and latch_kind(err.message) is None:
            raise wire_error("disconnected", err.message[:300]) from None
        raise wire_error(
            "invalidArgument", f"the thread handle failed to prove itself ({err.code})"
        ) from None
    return Claim(nonce, bytes(answer.mac)[:64])


async def _prove(thread_cap: Any, nonce: bytes) -> Any:
    return await thread_cap.prove(nonce)


class AdminServer(capos().Admin.Server):  # type: ignore[misc,name-defined]
    """The operator's capability (bootstrap of the 0600 admin socket)."""

    def __init__(self, ctx: ConnContext) -> None:
        self._ctx = ctx

    @rpc_method
    async def load_context(self, context: Any) -> None:
        params = context.params
        source = _text(params, "source", "manifest source", limit=8 * 1024 * 1024)
        name = _text(params, "name", "manifest name", limit=4096)
        load = self._ctx.load
        if load is None:
            raise wire_error("unimplemented", "this connection cannot load manifests")
        result = await load(source, name)
        r = context.results
        r.added = list(result.added)
        r.removed = list(result.removed)
        r.kept = list(result.kept)
        r.revoked = list(result.revoked)

    @rpc_method
    async def revoke_context(self, context: Any) -> None:
        params = context.params
        process = _text(params, "process", "process")
        grant = _text(params, "grant", "grant") or None
        changed = await self._ctx.bridge.submit(
            functools.partial(Owner.revoke, process=process, grant=grant)
        )
        log.info("revoked", process=process, grant=grant, changed=changed)
        context.results.revoked = changed

    @rpc_method
    async def grants_context(self, context: Any) -> None:
        rows, policy = await self._ctx.bridge.submit(_grants_op)
        _fill_policy_state(context.results.init("policy"), policy)
        out = context.results.init("grants", len(rows))
        for item, row in zip(out, rows, strict=True):
            item.process = row.process
            item.name = row.name
            item.kind = row.kind
            item.target = row.target
            item.state = row.state
            item.sessions = min(row.sessions, 2**32 - 1)

    @rpc_method
    async def stats_context(self, context: Any) -> None:
        threads, applied, plan_name, policy = await self._ctx.bridge.submit(_stats_op)
        r = context.results
        _fill_policy_state(r.init("policy"), policy)
        out = r.init("threads", len(threads))
        for item, snap in zip(out, threads, strict=True):
            item.name = snap.name
            item.threadId = snap.tid
            item.generation = snap.generation
            item.state = snap.state.name.lower()
            item.weight = snap.weight
            setattr(item, "class", snap.latency_class.wire_name)
            item.cpu = -1 if snap.cpu is None else snap.cpu
            item.runtimeNs = snap.runtime_ns
            item.virtualRuntimeNs = snap.virtual_runtime_ns
            item.contextSwitches = snap.context_switches
            item.preemptions = snap.preemptions
            item.voluntaryBlocks = snap.voluntary_blocks
            item.migrations = snap.migrations
        counters = self._ctx.counters
        rpc = r.init("rpc")
        rpc.connections = counters.connections
        rpc.callsApplied = applied
        rpc.callsRefused = counters.refused
        rpc.overloaded = counters.overloaded
        rpc.internalErrors = counters.internal_errors
        r.plan = plan_name

    @rpc_method
    async def setPolicy_context(self, context: Any) -> None:
        params = context.params
        name = _text(params, "name", "policy name")
        source = _text(params, "source", "policy source", limit=MAX_POLICY_SOURCE_CHARS)
        state = await self._ctx.bridge.submit(
            functools.partial(Owner.set_policy, name=name, source=source)
        )
        log.info(
            "policy set by the operator",
            requested=name,
            user_source=bool(source),
            active=state["policy"],
        )
        _fill_policy_state(context.results.init("state"), state)

    @rpc_method
    async def cpuDelegation_context(self, context: Any) -> None:
        from .delegation_server import admin_cpu_delegation

        await admin_cpu_delegation(self._ctx, context)

    @rpc_method
    async def schedulers_context(self, context: Any) -> None:
        from .delegation_server import admin_schedulers

        await admin_schedulers(self._ctx, context)


def _stats_op(owner: Owner) -> tuple[list[Any], int, str, Any]:
    return owner.thread_stats(), owner.applied, owner.plan_name, owner.policy_status()


def _grants_op(owner: Owner) -> tuple[list[Any], Any]:
    return owner.grant_rows(), owner.policy_status()


def _fill_policy_state(out: Any, state: Any) -> None:
    """An Admin.PolicyState from ``Host.policy_status()`` (RPC thread)."""
    out.active = state["policy"]
    out.builtin = bool(state["builtin"])
    bypass = state.get("bypass")
    out.hasBypass = bypass is not None
    if bypass is not None:
        b = out.init("bypass")
        b.policy = bypass["policy"] or ""
        b.thread = bypass["thread"] or ""
        b.waitedNs = max(0, int(bypass["waited_ns"]))
        b.atNs = max(0, int(bypass["at_ns"]))
        b.active = bool(bypass["active"])
        b.endedNs = max(0, int(bypass["ended_ns"] or 0))
    exits = state["exits"]
    items = out.init("exits", len(exits))
    for item, record in zip(items, exits, strict=True):
        item.kind = record["kind"]
        item.policy = record["policy"]
        item.callback = record["callback"] or ""
        item.message = record["message"][:MAX_EXIT_MESSAGE_CHARS]
        item.atNs = max(0, int(record["at_ns"]))
