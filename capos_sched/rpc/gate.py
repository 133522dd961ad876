"""Per-connection flow control between a peer and pycapnp.

pycapnp exposes none of Cap'n Proto's flow control (``RpcSystem::setFlowLimit``)
and reads from a peer as fast as it can. A peer that sends calls and never
reads the answers, or never sends ``Finish``, makes the daemon keep every
answer (and every queued outgoing message) in memory without limit.

So the daemon never hands a peer's socket to pycapnp. It hands pycapnp one end
of a socketpair, and a ``Gate`` relays bytes between the peer and the other end
on the RPC loop. The gate splits the peer's byte stream into Cap'n Proto
messages (only their framing and the ``Message`` union's discriminant are
read) and counts, per connection:

* **outstanding answers**: ``Call`` and ``Bootstrap`` messages received minus
  ``Finish`` messages received. The daemon keeps an answer until its Finish
  arrives, so this is what a peer makes the daemon hold. At ``max_answers``
  the gate stops reading from the peer; it resumes when the count is back
  under the bound. A peer that stays over its bound for ``stall_timeout_s``
  (it cannot send Finish: those are queued behind calls we do not read) is
  disconnected, which releases everything it held.
* **back-pressure both ways**: when the peer does not read, its socket's
  buffer fills; the gate then stops reading both what pycapnp writes (its
  writes wait) and what the peer sends (no new call, so no new answer to
  queue). When pycapnp does not keep up with the peer, the peer is not read.

Framing errors (a segment table larger than ``MAX_SEGMENTS``) end the
connection; everything else about a message is pycapnp's to judge (its
traversal limit refuses oversized ones).

Every method runs on the RPC loop; the gate holds no pycapnp object.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable

import attrs
import structlog

log = structlog.get_logger("capos_sched.rpc")

# rpc.capnp's Message union (its discriminant is the UInt16 at data offset 0);
# tests check these against the schema pycapnp ships.
MSG_CALL = 2
MSG_FINISH = 4
MSG_BOOTSTRAP = 8
MAX_SEGMENTS = 512
"""Cap'n Proto's own default segment limit for a message read from a stream."""

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")


@attrs.define
class GateLimits:
    """Bounds for one connection."""

    max_answers: int = 4096
    """Calls received and not yet finished by the peer before reading stops."""
    stall_timeout_s: float = 10.0
    """How long a peer may stay at ``max_answers`` before it is disconnected."""
    high_water: int = 256 * 1024
    """Bytes buffered towards either side before that side's source is paused."""


class Framer:
    """Splits a Cap'n Proto stream into messages and reports each one's union tag.

    Feeds may end anywhere. Only a message's segment table and the first 16
    bytes of its first segment are buffered; the rest is skipped unread.
    Stages: 0 wants the segment count, 1 the segment table, 2 the root's head.
    """

    def __init__(self, on_message: Callable[[int], None]) -> None:
        self._on_message = on_message
        self._buf = bytearray()
        self._need = 4
        self._stage = 0
        self._header = 0
        self._body = 0
        self._first_words = 0
        self._skip = 0

    def feed(self, data: bytes | memoryview) -> None:
        """Consume ``data``; raises ValueError on a framing error."""
        view = memoryview(data)
        while view:
            if self._skip:
                n = min(self._skip, len(view))
                self._skip -= n
                view = view[n:]
                continue
            n = self._need - len(self._buf)
            self._buf += view[:n]
            view = view[n:]
            while len(self._buf) == self._need:
                self._advance()

    def _advance(self) -> None:
        buf = self._buf
        if self._stage == 0:
            count = _U32.unpack_from(buf, 0)[0] + 1
            if count > MAX_SEGMENTS:
                raise ValueError(f"a message declares {count} segments (at most {MAX_SEGMENTS})")
            self._need = (4 + 4 * count + 7) & ~7
            self._stage = 1
        elif self._stage == 1:
            count = _U32.unpack_from(buf, 0)[0] + 1
            sizes = [_U32.unpack_from(buf, 4 + 4 * i)[0] for i in range(count)]
            self._first_words = min(sizes[0], 2)
            self._header = len(buf)
            self._body = 8 * sum(sizes) - 8 * self._first_words
            self._need = self._header + 8 * self._first_words
            self._stage = 2
        else:
            self._on_message(_tag(bytes(buf[self._header :]), self._first_words))
            self._skip = self._body
            self._buf = bytearray()
            self._need = 4
            self._stage = 0


def _tag(head: bytes, words: int) -> int:
    """The Message union's discriminant, or -1 when the root is not laid out
    the way every Cap'n Proto builder lays it out (the caller assumes the worst)."""
    if words < 1:
        return -1
    ptr = _U64.unpack_from(head, 0)[0]
    if ptr == 0:
        return 0  # a null root reads as the default: `unimplemented`
    offset = (ptr >> 2) & 0x3FFFFFFF
    data_words = (ptr >> 32) & 0xFFFF
    if ptr & 3 != 0 or offset != 0:
        return -1
    if data_words == 0:
        return 0
    if words < 2:
        return -1
    return int(_U16.unpack_from(head, 8)[0])


class Gate:
    """Relays one peer connection to pycapnp, with the bounds of ``GateLimits``.

    Invariants: ``outstanding`` is calls and bootstraps received minus
    finishes received (a peer finishing what it never asked for gets its
    connection aborted by the RPC system, so the count cannot be gamed); the
    peer is read only while ``outstanding < max_answers`` and pycapnp's side
    keeps up; ``closed`` is set once, when either side ends, and then both
    sides are closed and ``on_close`` has been called.
    """

    def __init__(self, limits: GateLimits, on_peer: Callable[[Gate], None] | None = None) -> None:
        self.limits = limits
        self.outstanding = 0
        self.calls = 0
        self.peak = 0
        self.stalls = 0
        self.closed = False
        self.close_reason = ""
        self.on_close: Callable[[str], None] | None = None
        self._on_peer = on_peer
        self._framer = Framer(self._count)
        self._peer: asyncio.Transport | None = None
        self._inner: asyncio.Transport | None = None
        self._over_bound = False
        self._inner_full = False
        self._peer_full = False
        self._stall: asyncio.TimerHandle | None = None

    def protocol(self) -> asyncio.Protocol:
        """The peer side's protocol (for ``create_server`` / ``connect_accepted_socket``)."""
        return _Side(self, "peer")

    def peer_credentials(self) -> tuple[int, int, int] | None:
        """``(pid, uid, gid)`` of a Unix-socket peer (SO_PEERCRED), else None."""
        sock = None if self._peer is None else self._peer.get_extra_info("socket")
        if sock is None or sock.family != socket.AF_UNIX:
            return None
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except OSError:
            return None
        pid, uid, gid = struct.unpack("3i", raw)
        return pid, uid, gid

    def _peer_made(self, transport: asyncio.Transport) -> None:
        self._peer = transport
        transport.pause_reading()  # until pycapnp's side exists (open())
        transport.set_write_buffer_limits(high=self.limits.high_water)
        if self._on_peer is not None:
            callback, self._on_peer = self._on_peer, None
            callback(self)

    async def open(self) -> socket.socket:
        """Start relaying; returns the socket end to give pycapnp (the caller owns it)."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        try:
            inner, _ = await loop.connect_accepted_socket(lambda: _Side(self, "inner"), ours)
        except BaseException:
            ours.close()
            theirs.close()
            raise
        self._inner = inner  # type: ignore[assignment]
        inner.set_write_buffer_limits(high=self.limits.high_water)  # type: ignore[attr-defined]
        if self.closed:
            inner.close()
        else:
            self._update_reading()
        return theirs

    # --------------------------------------------------------------- counting

    def _count(self, tag: int) -> None:
        if tag in (MSG_CALL, MSG_BOOTSTRAP, -1):  # -1: unreadable, so assume a call
            self.outstanding += 1
            self.calls += 1
            self.peak = max(self.peak, self.outstanding)
        elif tag == MSG_FINISH:
            self.outstanding -= 1

    def _from_peer(self, data: bytes) -> None:
        try:
            self._framer.feed(data)
        except ValueError as exc:
            self.close(f"bad framing: {exc}")
            return
        assert self._inner is not None
        self._inner.write(data)
        self._update_reading()

    def _from_inner(self, data: bytes) -> None:
        assert self._peer is not None
        self._peer.write(data)

    def _update_reading(self) -> None:
        if self.closed or self._peer is None:
            return
        over = self.outstanding >= self.limits.max_answers
        if over and not self._over_bound:
            self.stalls += 1
            loop = asyncio.get_running_loop()
            self._stall = loop.call_later(self.limits.stall_timeout_s, self._stalled)
        elif not over and self._stall is not None:
            self._stall.cancel()
            self._stall = None
        self._over_bound = over
        if over or self._inner_full or self._peer_full:
            self._peer.pause_reading()
        else:
            self._peer.resume_reading()

    def _stalled(self) -> None:
        self._stall = None
        if self._over_bound:
            reason = (
                f"{self.outstanding} calls unfinished for {self.limits.stall_timeout_s:g} s "
                f"(bound {self.limits.max_answers})"
            )
            log.info("connection closed: a peer stayed over its bound", reason=reason)
            self.close(reason)

    # -------------------------------------------------------- side callbacks

    def _paused(self, side: str, paused: bool) -> None:
        """``side``'s outgoing buffer is full (or drained again)."""
        if side == "inner":  # pycapnp is not keeping up with the peer
            self._inner_full = paused
            self._update_reading()
        else:  # the peer is not reading what we send: read neither its calls nor our answers
            self._peer_full = paused
            if self._inner is not None:
                if paused:
                    self._inner.pause_reading()
                else:
                    self._inner.resume_reading()
            self._update_reading()

    def _lost(self, side: str) -> None:
        self.close("peer closed" if side == "peer" else "server closed")

    def close(self, reason: str = "closed") -> None:
        """End both sides (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        for t in (self._peer, self._inner):
            if t is not None:
                t.close()
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback(reason)


class _Side(asyncio.Protocol):
    """One side of a gate: the peer, or the socketpair end pycapnp reads."""

    def __init__(self, gate: Gate, side: str) -> None:
        self._gate = gate
        self._side = side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._side == "peer":
            self._gate._peer_made(transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self._side == "peer":
            self._gate._from_peer(data)
        else:
            self._gate._from_inner(data)

    def pause_writing(self) -> None:
        self._gate._paused(self._side, True)

    def resume_writing(self) -> None:
        self._gate._paused(self._side, False)

    def eof_received(self) -> bool:
        self._gate._lost(self._side)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gate._lost(self._side)
