"""Recognise this daemon's own ThreadHandle objects when clients pass them back.

pycapnp cannot map a capability received as a parameter back to the local
server object behind it (capnproto/pycapnp#370; C++ has CapabilityServerSet
for this). Two ways remain, and the daemon uses both:

* **Fast path (this module).** A capability a client passes back on the
  connection it got it from resolves, on our side, to the very ``ClientHook``
  we exported. pycapnp's ``_DynamicCapabilityClient`` stores that hook
  pointer at a fixed offset; ``HookRegistry`` records the pointer of every
  ThreadHandle it hands out (holding a strong reference, so the hook stays
  alive and its address cannot be reused) and looks parameters up by it. A
  hit is proof of identity. The offset is not assumed: ``probe()`` finds it,
  then checks it over a real two-party connection (a handle passed back must
  hit, a client-hosted look-alike must miss). If anything disagrees the fast
  path stays off.
* **Slow path (always available).** Anything not found is asked for its
  identity with ``describe()`` and that answer is trusted only as a claim: the
  owner accepts it only if the policy grant's own process holds a live grant
  for exactly that thread and generation (``Owner._claimed``). A forged handle
  therefore reaches nothing its process was not granted anyway.

Reading 8 bytes inside a live object of an exactly known type is all this
does; it never writes, and a miss only means the slow path.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
from typing import Any

import capnp
import structlog

from .schema import capos

log = structlog.get_logger("capos_sched.rpc")

_CLIENT_TYPE: type = capnp.lib.capnp._DynamicCapabilityClient
_OFFSET: int | None = None
_PROBED = False
ENV_SWITCH = "CAPOS_SCHED_UNWRAP"
"""Set to 0 to force the slow path (diagnostics and tests)."""


def _word(obj: object, offset: int) -> int:
    return int(ctypes.c_size_t.from_address(id(obj) + offset).value)


def hook_address(cap: object) -> int | None:
    """The ClientHook address of a pycapnp capability client (None if unknown)."""
    if _OFFSET is None or type(cap) is not _CLIENT_TYPE:
        return None
    return _word(cap, _OFFSET)


class HookRegistry:
    """Hook address -> our server object, for one connection.

    Invariant: every key is the hook address of a client object held in
    ``_clients``, so the hook is alive and the address unique.
    """

    def __init__(self) -> None:
        self._servers: dict[int, Any] = {}
        self._clients: list[Any] = []

    def register(self, client: object, server: object) -> None:
        addr = hook_address(client)
        if addr is not None:
            self._servers[addr] = server
            self._clients.append(client)

    def lookup(self, cap: object) -> Any | None:
        addr = hook_address(cap)
        return None if addr is None else self._servers.get(addr)

    def clear(self) -> None:
        self._servers.clear()
        self._clients.clear()

    def __len__(self) -> int:
        return len(self._servers)


def enabled() -> bool:
    return _OFFSET is not None


async def probe() -> bool:
    """Find and verify the hook offset (once per process; needs the KJ loop)."""
    global _OFFSET, _PROBED
    if _PROBED:
        return _OFFSET is not None
    _PROBED = True
    if os.environ.get(ENV_SWITCH, "1") == "0":
        log.info("handle unwrap probe", fast_path=False, disabled_by=ENV_SWITCH)
        return False
    try:
        offset = _candidate_offset()
        if offset is not None and await _round_trip(offset):
            _OFFSET = offset
    except Exception:
        log.warning("handle unwrap probe failed; using describe() claims", exc_info=True)
        _OFFSET = None
    log.info("handle unwrap probe", fast_path=_OFFSET is not None, offset=_OFFSET)
    return _OFFSET is not None


def _candidate_offset() -> int | None:
    s = capos()

    class _Handle(s.ThreadHandle.Server):  # type: ignore[misc,name-defined]
        async def describe(self, **_: Any) -> None: ...
        async def isLive(self, **_: Any) -> None: ...

    a = s.ThreadHandle._new_client(_Handle())
    a_copy = a.cast_as(s.ThreadHandle)
    b = s.ThreadHandle._new_client(_Handle())
    size = type(a).__basicsize__
    for offset in range(16, size - 7, 8):
        va, vc, vb = _word(a, offset), _word(a_copy, offset), _word(b, offset)
        if (
            va
            and va == vc
            and va != vb
            and _word(b, offset) == _word(b.cast_as(s.ThreadHandle), offset)
        ):
            return offset
    return None


async def _round_trip(offset: int) -> bool:
    """Hand a handle out over a real connection, get it back as a parameter."""
    global _OFFSET
    s = capos()
    seen: list[int | None] = []
    registry = HookRegistry()

    class _Handle(s.ThreadHandle.Server):  # type: ignore[misc,name-defined]
        async def describe(self, **_: Any) -> None: ...
        async def isLive(self, **_: Any) -> bool:
            return True

    class _Policy(s.SchedulingPolicyCap.Server):  # type: ignore[misc,name-defined]
        async def setWeight(self, thread: Any, weight: int, **_: Any) -> None:
            seen.append(registry.lookup(thread))

        async def setLatencyClass(self, **_: Any) -> None: ...
        async def snapshot(self, **_: Any) -> None: ...

    real = _Handle()
    handle_client = s.ThreadHandle._new_client(real)
    policy_client = s.SchedulingPolicyCap._new_client(_Policy())

    class _Caps(s.CapSet.Server):  # type: ignore[misc,name-defined]
        async def get(self, name: str, **_: Any) -> Any:
            return handle_client if name == "h" else policy_client

        async def list(self, **_: Any) -> list[str]:
            return []

    previous, _OFFSET = _OFFSET, offset
    ours, theirs = socket.socketpair()
    server_stream = client_stream = None
    try:
        registry.register(handle_client, real)
        server_stream = await capnp.AsyncIoStream.create_connection(sock=ours)
        server = capnp.TwoPartyServer(server_stream, bootstrap=_Caps())
        client_stream = await capnp.AsyncIoStream.create_connection(sock=theirs)
        client = capnp.TwoPartyClient(client_stream)
        caps = client.bootstrap().cast_as(s.CapSet)
        handle = (await caps.get("h")).cap.as_interface(s.ThreadHandle)
        policy = (await caps.get("p")).cap.as_interface(s.SchedulingPolicyCap)
        await asyncio.wait_for(policy.setWeight(handle, 1), 5)
        await asyncio.wait_for(policy.setWeight(s.ThreadHandle._new_client(_Handle()), 1), 5)
        await asyncio.wait_for(policy.setWeight(handle, 1), 5)
        client.close()
        server.close()
        return seen == [real, None, real]
    finally:
        _OFFSET = previous
        for stream in (client_stream, server_stream):
            if stream is not None:
                stream.close()
        ours.close()
        theirs.close()
