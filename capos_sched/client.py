"""The asyncio client library for capos-sched.

Every failure surfaces as one exception hierarchy, whatever produced it (a
typed error from the daemon, the C++ RPC layer, or a lost connection)::

    CapOSError
    ├── InvalidArgument      invalidArgument: bad input, nothing changed
    ├── Disconnected         disconnected: the capability or connection is gone
    │   ├── Revoked              ... because the operator revoked the grant
    │   └── Stale                ... because the thread exited or was replaced
    ├── Overloaded           overloaded: too many calls in flight; retry later
    ├── Unimplemented        unimplemented: no such method on that object
    └── Failed               failed: anything else (internal errors carry a ref)

Usage::

    async with await connect("unix:/run/capos-sched/listen.sock", token=tok) as session:
        policy = await session.policy("policy")
        a = await session.thread("a")
        await policy.set_weight(a, 2048)
        snap = await policy.snapshot(a)

``connect_inherited()`` does the same for a process started by the daemon
(``exec`` in a manifest): its CapSet is the bootstrap of the socket whose fd
is in ``CAPOS_SCHED_FD``. Sessions start pycapnp's KJ loop when the running
asyncio loop has none, and stop it on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs
import capnp

from capos_sched.wire import (
    CPU_CAPS,
    FD_ENV,
    Address,
    LatencyClass,
    ThreadState,
    capos,
    latch_kind,
    parse_address,
    parse_remote,
)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 30.0


# ------------------------------------------------------------------ errors


class CapOSError(Exception):
    """Base class of every error this library raises. ``str()`` is ``code: message``."""

    code: ClassVar[str] = "failed"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(CapOSError):
    code = "invalidArgument"


class Disconnected(CapOSError):
    code = "disconnected"


class NotADaemon(Disconnected):
    """What the peer sent is not Cap'n Proto RPC (KJ refused it locally): the
    address names something other than a capos-sched daemon."""


class Revoked(Disconnected):
    """The grant behind this capability was revoked (it never works again)."""


class Stale(Disconnected):
    """The thread behind this handle exited or was removed (it never works again)."""


class Overloaded(CapOSError):
    code = "overloaded"


class Unimplemented(CapOSError):
    code = "unimplemented"


class Failed(CapOSError):
    code = "failed"


_BY_CODE: dict[str, type[CapOSError]] = {
    "invalidArgument": InvalidArgument,
    "disconnected": Disconnected,
    "overloaded": Overloaded,
    "unimplemented": Unimplemented,
    "failed": Failed,
}


def error_from_text(description: str, kj_type: str | None = None) -> CapOSError:
    """The typed error for a remote error description (see capos_sched.wire)."""
    parsed = parse_remote(description, kj_type)
    cls = _BY_CODE.get(parsed.code, Failed)
    if cls is Disconnected:
        cls = {"revoked": Revoked, "stale": Stale}.get(latch_kind(parsed.message) or "", cls)
    return cls(parsed.message)


PROTOCOL_REFUSALS = ("RPC message", "Peer did not implement", "root pointer", "Message ended")
"""Phrases of KJ's own refusals of bytes that are not Cap'n Proto RPC."""


def _not_cap_n_proto(description: str) -> bool:
    """Whether KJ refused, here, what the peer sent (rather than the peer
    answering with an error, or the connection dropping)."""
    if "remote exception" in description:
        return False
    text = description.removeprefix("message = ")
    return text.startswith("expected ") or any(p in text for p in PROTOCOL_REFUSALS)


def translate(exc: BaseException) -> CapOSError:
    """Map any transport or remote exception to the hierarchy."""
    if isinstance(exc, CapOSError):
        return exc
    if isinstance(exc, capnp.KjException):
        description = getattr(exc, "description", None) or str(exc)
        if _not_cap_n_proto(description):
            return NotADaemon(description)
        return error_from_text(
            getattr(exc, "description", None) or str(exc), getattr(exc, "type", None)
        )
    if isinstance(exc, ConnectionError | EOFError | BrokenPipeError):
        return Disconnected(f"connection lost: {exc}")
    if isinstance(exc, OSError):
        return Disconnected(f"cannot reach the daemon: {exc}")
    if isinstance(exc, TimeoutError):
        return Disconnected("no answer from the daemon in time")
    return Failed(f"{type(exc).__name__}: {exc}")


async def _call(awaitable: Awaitable[T], timeout: float | None = None) -> T:
    try:
        if timeout is None:
            return await awaitable
        return await asyncio.wait_for(_await(awaitable), timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        raise translate(exc) from None


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable


# ---------------------------------------------------------------- results


@attrs.frozen
class Snapshot:
    """``SchedulingPolicyCap.snapshot``: a thread's weight, class and run time."""

    weight: int
    latency_class: LatencyClass
    runtime_ns: int
    virtual_runtime_ns: int


@attrs.frozen
class ThreadInfo:
    """``ThreadHandle.describe``."""

    name: str
    thread_id: int
    generation: int
    state: ThreadState


E = TypeVar("E", LatencyClass, ThreadState)


def _decode(enum_type: type[E], value: Any) -> E:
    """A schema enum from the wire, by ordinal (wire.py's copies of the schema's enums)."""
    ordinal = int(getattr(value, "raw", value))
    try:
        return enum_type(ordinal)
    except ValueError:
        raise Failed(f"the daemon sent an unknown {enum_type.__name__} {ordinal}") from None


# ------------------------------------------------------------ capabilities


class ThreadHandleClient:
    """A ThreadHandle: names one thread; needs a policy to change it."""

    def __init__(self, cap: Any, name: str = "") -> None:
        self.cap = cap
        self.name = name

    async def describe(self) -> ThreadInfo:
        r = await _call(self.cap.describe())
        return ThreadInfo(
            str(r.name), int(r.threadId), int(r.generation), _decode(ThreadState, r.state)
        )

    async def is_live(self) -> bool:
        r = await _call(self.cap.isLive())
        return bool(r.live)


def _wire_weight(weight: object) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise InvalidArgument(f"weight {weight!r} is not an integer")
    if not 0 <= weight <= 0xFFFF:  # cannot even be encoded; the daemon checks the domain
        s = capos()
        raise InvalidArgument(f"weight {weight} outside [{s.minWeight}, {s.maxWeight}]")
    return weight


def _wire_class(value: object) -> str:
    try:
        return LatencyClass.parse(value).wire_name
    except Exception as exc:
        raise InvalidArgument(str(exc)) from None


class SchedulingPolicyClient:
    """A SchedulingPolicyCap. Calls on one policy take effect in the order made."""

    def __init__(self, cap: Any, name: str = "") -> None:
        self.cap = cap
        self.name = name

    async def set_weight(self, thread: ThreadHandleClient, weight: int) -> None:
        await _call(self.cap.setWeight(thread.cap, _wire_weight(weight)))

    async def set_latency_class(
        self, thread: ThreadHandleClient, latency_class: LatencyClass | str | int
    ) -> None:
        request = self.cap.setLatencyClass_request()
        request.thread = thread.cap
        setattr(request, "class", _wire_class(latency_class))
        await _call(request.send())

    async def snapshot(self, thread: ThreadHandleClient) -> Snapshot:
        r = await _call(self.cap.snapshot(thread.cap))
        return Snapshot(
            int(r.weight),
            _decode(LatencyClass, getattr(r, "class")),
            int(r.runtimeNs),
            int(r.virtualRuntimeNs),
        )


# ---------------------------------------------------------- CPU delegation


@attrs.frozen
class CpuHolding:
    """One CPU of a scheduler node: the caps ``held`` literally (the ones it may
    grant on) and those ``effective`` there now (implied caps included)."""

    cpu: int
    held: tuple[str, ...]
    effective: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"cpu": self.cpu, "held": list(self.held), "effective": list(self.effective)}


@attrs.frozen
class CpuEvent:
    """One CpuListener call: ``kind`` is capsUpdated (``cpus``),
    effectiveCapsUpdated (``cpu``, ``before``, ``after``) or idle (``cpu``)."""

    kind: str
    cpus: tuple[int, ...] = ()
    cpu: int | None = None
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "capsUpdated":
            out["cpus"] = list(self.cpus)
        else:
            out["cpu"] = self.cpu
        if self.kind == "effectiveCapsUpdated":
            out["before"], out["after"] = list(self.before), list(self.after)
        return out


MAX_QUEUED_EVENTS = 4096


def wire_caps(caps: object) -> list[str]:
    """CpuCap names, checked (``enqImmed``, ``enq``, ``preempt``)."""
    names = [caps] if isinstance(caps, str) else list(caps)  # type: ignore[call-overload]
    for name in names:
        if name not in CPU_CAPS:
            raise InvalidArgument(
                f"unknown CPU cap {name!r}; expected one of {', '.join(CPU_CAPS)}"
            )
    if not names:
        raise InvalidArgument("no CPU caps named")
    return names


def wire_cpus(cpus: object) -> list[int]:
    """CPU numbers, checked to fit the wire (UInt16); the daemon checks the range."""
    out = []
    for cpu in cpus:  # type: ignore[attr-defined]
        if isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu <= 0xFFFF:
            raise InvalidArgument(f"CPU {cpu!r} is not a CPU number")
        out.append(cpu)
    return out


def _holdings(rows: Any) -> list[CpuHolding]:
    return [
        CpuHolding(int(h.cpu), tuple(str(c) for c in h.held), tuple(str(c) for c in h.effective))
        for h in rows
    ]


class _Listener(capos().CpuListener.Server):  # type: ignore[misc,name-defined]
    """Hosted by the client: queues every notification as a CpuEvent (bounded:
    beyond MAX_QUEUED_EVENTS the oldest are dropped and counted)."""

    def __init__(self, queue: asyncio.Queue[CpuEvent]) -> None:
        self.queue = queue
        self.dropped = 0

    def _put(self, event: CpuEvent) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def capsUpdated(self, cpus: Any, **_: Any) -> None:
        self._put(CpuEvent("capsUpdated", tuple(int(c) for c in cpus)))

    async def effectiveCapsUpdated(self, cpu: Any, before: Any, after: Any, **_: Any) -> None:
        self._put(
            CpuEvent(
                "effectiveCapsUpdated",
                cpu=int(cpu),
                before=tuple(str(c) for c in before),
                after=tuple(str(c) for c in after),
            )
        )

    async def idle(self, cpu: Any, **_: Any) -> None:
        self._put(CpuEvent("idle", cpu=int(cpu)))


class CpuSubscription:
    """An open ``subscribe``: ``await next_event()`` (or read ``events``);
    ``close()`` drops the Subscription, which ends it in the daemon."""

    def __init__(self, handle: Any, listener: _Listener) -> None:
        self.handle = handle
        self._listener = listener
        self.events = listener.queue

    @property
    def dropped(self) -> int:
        return self._listener.dropped

    async def next_event(self, timeout: float | None = None) -> CpuEvent:
        if timeout is None:
            return await self.events.get()
        try:
            return await asyncio.wait_for(self.events.get(), timeout)
        except TimeoutError:
            raise Disconnected(f"no notification in {timeout:g} s") from None

    def close(self) -> None:
        self.handle = None


class CpuDelegationClient:
    """A CpuDelegation: authority over one scheduler node and its direct children."""

    def __init__(self, cap: Any, name: str = "") -> None:
        self.cap = cap
        self.name = name

    async def holdings(self) -> list[CpuHolding]:
        r = await _call(self.cap.holdings())
        return _holdings(r.cpus)

    async def children(self) -> list[str]:
        r = await _call(self.cap.children())
        return [str(n) for n in r.names]

    async def grant(self, child: str, cpus: object, caps: object) -> list[int]:
        """Grant ``caps`` on ``cpus`` to direct child ``child``; the CPUs denied."""
        r = await _call(self.cap.grant(child, wire_cpus(cpus), wire_caps(caps)))
        return [int(c) for c in r.denied]

    async def revoke(self, child: str, cpus: object, caps: object) -> None:
        await _call(self.cap.revoke(child, wire_cpus(cpus), wire_caps(caps)))

    async def child_holdings(self, child: str) -> list[CpuHolding]:
        r = await _call(self.cap.childHoldings(child))
        return _holdings(r.cpus)

    async def kill(self, child: str, reason: str = "") -> None:
        await _call(self.cap.kill(child, reason))

    async def child(self, name: str) -> CpuDelegationClient:
        """The direct child's node (authority handed down one level)."""
        r = await _call(self.cap.child(name))
        return CpuDelegationClient(r.node, name)

    async def subscribe(self) -> CpuSubscription:
        listener = _Listener(asyncio.Queue(MAX_QUEUED_EVENTS))
        r = await _call(self.cap.subscribe(listener))
        return CpuSubscription(r.handle, listener)


# ---------------------------------------------------------------- sessions


class Session:
    """A connection to the daemon holding one process's CapSet.

    Invariant: after ``close()`` no capnp object of this session is used
    again, and the socket is closed.
    """

    def __init__(self, client: Any, stream: Any, caps: Any, owns_loop: Any) -> None:
        self._client = client
        self._stream = stream
        self.caps = caps
        self._owns_loop = owns_loop
        self._closed = False

    async def list(self) -> list[str]:
        r = await _call(self.caps.list())
        return [str(n) for n in r.names]

    async def get(self, name: str) -> Any:
        r = await _call(self.caps.get(name))
        return r.cap

    async def policy(self, name: str = "policy") -> SchedulingPolicyClient:
        cap = await self.get(name)
        return SchedulingPolicyClient(cap.as_interface(capos().SchedulingPolicyCap), name)

    async def thread(self, name: str) -> ThreadHandleClient:
        cap = await self.get(name)
        return ThreadHandleClient(cap.as_interface(capos().ThreadHandle), name)

    async def cpu_delegation(self, name: str) -> CpuDelegationClient:
        """The ``cpuDelegation`` grant ``name`` (a scheduler node)."""
        cap = await self.get(name)
        return CpuDelegationClient(cap.as_interface(capos().CpuDelegation), name)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.caps = None
        with contextlib.suppress(Exception):
            self._client.close()
        with contextlib.suppress(Exception):
            self._stream.close()
        if self._owns_loop is not None:
            loop_cm, self._owns_loop = self._owns_loop, None
            await loop_cm.__aexit__(None, None, None)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _enter_kj_loop() -> Any:
    """Start pycapnp's KJ loop on this asyncio loop unless one is running."""
    if getattr(asyncio.get_running_loop(), "_kj_loop", None) is not None:
        return None
    cm = capnp.kj_loop()
    await cm.__aenter__()
    return cm


async def _open_stream(address: Address | str, timeout: float) -> Any:
    """A connected stream, or a typed error (bad address, unreachable, timeout)."""

    async def open_() -> Any:
        addr = parse_address(address) if isinstance(address, str) else address
        if addr.kind == "unix":
            return await capnp.AsyncIoStream.create_unix_connection(addr.path)
        return await capnp.AsyncIoStream.create_connection(addr.host, addr.port)

    try:
        return await asyncio.wait_for(open_(), timeout)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    except TimeoutError:
        raise Disconnected(f"no answer from {address} in {timeout:g} s") from None
    except OSError as exc:  # refused, no such socket, unreachable host...
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise Disconnected(f"cannot reach the daemon at {address}: {reason}") from None
    except Exception as exc:
        raise translate(exc) from None


async def connect(
    address: Address | str, *, token: str | bytes, timeout: float = DEFAULT_TIMEOUT_S
) -> Session:
    """Connect to ``--listen`` (``unix:PATH`` / ``tcp:HOST:PORT``) and restore ``token``."""
    raw = token.encode() if isinstance(token, str) else bytes(token)
    raw = raw.strip()
    loop_cm = await _enter_kj_loop()
    stream = client = None
    try:
        stream = await _open_stream(address, timeout)
        client = capnp.TwoPartyClient(stream)
        restorer = client.bootstrap().cast_as(capos().Restorer)
        r = await _call(restorer.restore(raw), timeout)
        return Session(client, stream, r.caps, loop_cm)
    except BaseException:
        await _abandon(client, stream, loop_cm)
        raise


async def connect_inherited(fd: int | None = None) -> Session:
    """Connect through the socket the daemon passed (``$CAPOS_SCHED_FD``)."""
    if fd is None:
        text = os.environ.get(FD_ENV)
        if not text:
            raise Disconnected(f"${FD_ENV} is not set: this process was not started by the daemon")
        try:
            fd = int(text)
        except ValueError:
            raise InvalidArgument(f"${FD_ENV}={text!r} is not a file descriptor number") from None
    loop_cm = await _enter_kj_loop()
    stream = client = None
    try:
        try:
            sock = socket.socket(fileno=fd)
            stream = await capnp.AsyncIoStream.create_connection(sock=sock)
        except OSError as exc:
            raise Disconnected(f"inherited fd {fd} is not a usable socket: {exc}") from None
        client = capnp.TwoPartyClient(stream)
        caps = client.bootstrap().cast_as(capos().CapSet)
        return Session(client, stream, caps, loop_cm)
    except BaseException:
        await _abandon(client, stream, loop_cm)
        raise


async def _abandon(client: Any, stream: Any, loop_cm: Any) -> None:
    for obj in (client, stream):
        if obj is not None:
            with contextlib.suppress(Exception):
                obj.close()
    if loop_cm is not None:
        await loop_cm.__aexit__(None, None, None)


def read_token(path: str | Path) -> bytes:
    """A token file's content, stripped (what ``restore`` expects)."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise InvalidArgument(f"cannot read token file {path}: {exc.strerror}") from None
    if not data:
        raise InvalidArgument(f"token file {path} is empty")
    return data


# ------------------------------------------------------------------- admin


@attrs.frozen
class GrantInfo:
    """One row of ``Admin.grants``; ``state`` is granted, revoked or stale."""

    process: str
    name: str
    kind: str
    target: str
    state: str
    sessions: int


class AdminSession:
    """A connection to ``--admin`` (the operator's capability)."""

    def __init__(self, client: Any, stream: Any, admin: Any, owns_loop: Any) -> None:
        self._client = client
        self._stream = stream
        self.admin = admin
        self._owns_loop = owns_loop

    async def load(self, source: str, name: str) -> dict[str, list[str]]:
        r = await _call(self.admin.load(source, name), timeout=120)
        return {k: [str(x) for x in getattr(r, k)] for k in ("added", "removed", "kept", "revoked")}

    async def revoke(self, process: str, grant: str | None = None) -> list[str]:
        r = await _call(self.admin.revoke(process, grant or ""))
        return [str(x) for x in r.revoked]

    async def grants(self) -> list[GrantInfo]:
        return (await self.grants_and_policy())[0]

    async def grants_and_policy(self) -> tuple[list[GrantInfo], dict[str, Any]]:
        """``Admin.grants``: the rows, and the policy in force (as ``policy()``)."""
        r = await _call(self.admin.grants())
        rows = [
            GrantInfo(g.process, g.name, g.kind, g.target, str(g.state), int(g.sessions))
            for g in r.grants
        ]
        return rows, _policy_state(r.policy)

    async def policy(self) -> dict[str, Any]:
        """The scheduling policy in force: ``{"policy", "builtin", "bypass"
        (None, or its last stall bypass), "exits": [ejection records]}``."""
        return (await self.grants_and_policy())[1]

    async def set_policy(self, name: str, source: str = "") -> dict[str, Any]:
        """``Admin.setPolicy``: a built-in ``name`` (``source`` empty), or a user
        policy's module text named ``name``; the state after the switch.
        InvalidArgument (nothing changed) for a bad name or source."""
        r = await _call(self.admin.setPolicy(name, source), timeout=30)
        return _policy_state(r.state)

    async def stats(self) -> dict[str, Any]:
        r = await _call(self.admin.stats())
        threads = [
            {
                "name": t.name,
                "thread_id": t.threadId,
                "generation": t.generation,
                "state": str(t.state),
                "weight": t.weight,
                "class": str(getattr(t, "class")),
                "cpu": None if t.cpu < 0 else t.cpu,
                "runtime_ns": t.runtimeNs,
                "virtual_runtime_ns": t.virtualRuntimeNs,
                "context_switches": t.contextSwitches,
                "preemptions": t.preemptions,
                "voluntary_blocks": t.voluntaryBlocks,
                "migrations": t.migrations,
            }
            for t in r.threads
        ]
        rpc = r.rpc
        return {
            "plan": r.plan,
            "policy": _policy_state(r.policy),
            "threads": threads,
            "rpc": {
                "connections": rpc.connections,
                "calls_applied": rpc.callsApplied,
                "calls_refused": rpc.callsRefused,
                "overloaded": rpc.overloaded,
                "internal_errors": rpc.internalErrors,
            },
        }

    async def cpu_delegation(self) -> CpuDelegationClient:
        """The root scheduler's node (all CPUs, every cap)."""
        r = await _call(self.admin.cpuDelegation())
        return CpuDelegationClient(r.node, "root")

    async def schedulers(self) -> list[dict[str, Any]]:
        """Every scheduler: holdings, counters, CPU time allocated, exit record."""
        r = await _call(self.admin.schedulers())
        return [
            {
                "name": str(s.name),
                "parent": str(s.parent) or None,
                "alive": bool(s.alive),
                "holdings": [h.as_dict() for h in _holdings(s.holdings)],
                "rejected_inserts": int(s.rejectedInserts),
                "forced_admits": int(s.forcedAdmits),
                "denied_kicks": int(s.deniedKicks),
                "denied_preempts": int(s.deniedPreempts),
                "evictions": int(s.evictions),
                "allocated_ns": {str(t.cpu): int(t.ns) for t in s.allocated},
                "exit": {"kind": str(s.exitKind), "message": str(s.exitMessage)}
                if str(s.exitKind)
                else None,
            }
            for s in r.schedulers
        ]

    async def close(self) -> None:
        self.admin = None
        for obj in (self._client, self._stream):
            with contextlib.suppress(Exception):
                obj.close()
        if self._owns_loop is not None:
            loop_cm, self._owns_loop = self._owns_loop, None
            await loop_cm.__aexit__(None, None, None)

    async def __aenter__(self) -> AdminSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _policy_state(state: Any) -> dict[str, Any]:
    """An ``Admin.PolicyState`` as plain data (the ``--json`` shape)."""
    bypass = None
    if state.hasBypass:
        b = state.bypass
        bypass = {
            "policy": b.policy,
            "thread": b.thread,
            "waited_ns": b.waitedNs,
            "at_ns": b.atNs,
            "active": b.active,
            "ended_ns": None if b.active else b.endedNs,
        }
    return {
        "policy": state.active,
        "builtin": state.builtin,
        "bypass": bypass,
        "exits": [
            {
                "kind": e.kind,
                "policy": e.policy,
                "callback": e.callback or None,
                "message": e.message,
                "at_ns": e.atNs,
            }
            for e in state.exits
        ],
    }


async def connect_admin(address: Address | str, timeout: float = DEFAULT_TIMEOUT_S) -> AdminSession:
    """Connect to the daemon's ``--admin`` socket."""
    loop_cm = await _enter_kj_loop()
    stream = client = None
    try:
        stream = await _open_stream(address, timeout)
        client = capnp.TwoPartyClient(stream)
        admin = client.bootstrap().cast_as(capos().Admin)
        return AdminSession(client, stream, admin, loop_cm)
    except BaseException:
        await _abandon(client, stream, loop_cm)
        raise


@contextlib.asynccontextmanager
async def session(address: Address | str, *, token: str | bytes) -> AsyncIterator[Session]:
    """``async with session(addr, token=...) as s:`` (connect + close)."""
    s = await connect(address, token=token)
    try:
        yield s
    finally:
        await s.close()


__all__ = [
    "AdminSession",
    "CapOSError",
    "CpuDelegationClient",
    "CpuEvent",
    "CpuHolding",
    "CpuSubscription",
    "Disconnected",
    "Failed",
    "GrantInfo",
    "InvalidArgument",
    "NotADaemon",
    "Overloaded",
    "Revoked",
    "SchedulingPolicyClient",
    "Session",
    "Snapshot",
    "Stale",
    "ThreadHandleClient",
    "ThreadInfo",
    "Unimplemented",
    "connect",
    "connect_admin",
    "connect_inherited",
    "read_token",
    "session",
]
