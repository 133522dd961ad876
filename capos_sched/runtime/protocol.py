"""The per-slice wire protocol between the daemon and a worker process.

Why not Cap'n Proto: a slice round trip over capnp measured 3-5x slower than a
plain socketpair (``docs`` / ``shared/notes/measurements.md``); capnp stays on
the control plane. Here every message is one fixed-size ``struct`` record on
an ``AF_UNIX``/``SOCK_SEQPACKET`` socketpair, so a ``recv`` returns exactly one
message, and a closed peer reads as an empty record (EOF).

Requests (daemon -> worker), ``REQUEST``: ``op, tid, limit_ns, a1, a2, a3, acc``

- ``OP_SPIN``: compute for ``limit_ns`` of the worker's CPU time (or until
  the preempt flag is raised, or ``2 * limit_ns`` + 50 ms of wall time
  has passed).
- ``OP_HASH``: hash blocks of the shared data ``a1`` from global block index
  ``a2`` up to ``a3`` (exclusive; block ``g`` is data block ``g % blocks``),
  folding each digest into ``acc``, for at most ``limit_ns`` (checked after
  every block) or until the preempt flag is raised.
- ``OP_ATTACH``: map data ``a1`` (``a2`` blocks of ``a3`` bytes) from the file
  descriptor sent with the message (``SCM_RIGHTS``). No reply.
- ``OP_DETACH``: unmap data ``a1``. No reply.
- ``OP_EXIT``: exit now. No reply.

Replies (worker -> daemon), ``REPLY``: ``status, tid, elapsed_ns, position, acc``

- ``elapsed_ns`` is the CPU time the worker's thread used in the kernel
  (``time.thread_time_ns()``): what the core is charged, and what the
  thread's workload is credited. Time it was descheduled or stopped is in
  neither.
- ``status``: ``ST_LIMIT`` (ran to ``limit_ns``), ``ST_PREEMPTED`` (stopped
  early by the flag), ``ST_COMPLETE`` (hash reached ``a3``), ``ST_ERROR``
  (unknown data id or op; nothing ran), ``ST_READY`` (sent once at start-up,
  ``elapsed_ns`` holds the worker's pid).
- An ``OP_SPIN`` reply has no position or accumulator: it carries instead the
  worker's ``CLOCK_MONOTONIC`` (``time.perf_counter_ns``) when it received the
  request (``position``) and when it sent the reply (``acc``), for the
  per-slice breakdown (``capos_sched.runtime.probe``).

The preempt flag is byte 0 of a small shared-memory page per CPU (an inherited
``memfd``): the daemon writes 1 to cut the running slice short and 0 when it
starts a dispatch (before the request, so a preempt raised between the two
still counts); the worker only reads it.
"""

from __future__ import annotations

import struct
from typing import Final

REQUEST: Final = struct.Struct("<BxxxIqqqqQ")
REPLY: Final = struct.Struct("<BxxxIqqQ")

OP_SPIN: Final = 1
OP_HASH: Final = 2
OP_ATTACH: Final = 3
OP_DETACH: Final = 4
OP_EXIT: Final = 5

ST_LIMIT: Final = 0
ST_PREEMPTED: Final = 1
ST_COMPLETE: Final = 2
ST_ERROR: Final = 3
ST_READY: Final = 4

FLAG_BYTES: Final = 64
"""Size of each CPU's preempt-flag page (one cache line; byte 0 is the flag)."""

U64_MASK: Final = (1 << 64) - 1


def encode_request(
    op: int, tid: int = 0, limit_ns: int = 0, a1: int = 0, a2: int = 0, a3: int = 0, acc: int = 0
) -> bytes:
    return REQUEST.pack(op, tid, limit_ns, a1, a2, a3, acc & U64_MASK)


def decode_reply(data: bytes) -> tuple[int, int, int, int, int]:
    """``(status, tid, elapsed_ns, position, acc)``; ValueError if malformed."""
    if len(data) != REPLY.size:
        raise ValueError(f"reply of {len(data)} bytes, expected {REPLY.size}")
    return REPLY.unpack(data)
