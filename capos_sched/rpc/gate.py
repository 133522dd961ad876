"""Per-connection flow control between a peer and pycapnp.

pycapnp exposes none of Cap'n Proto's flow control (``RpcSystem::setFlowLimit``)
and reads from a peer as fast as it can. A peer that sends calls and never
reads the answers, or never sends ``Finish``, makes the daemon keep every
answer (and every queued outgoing message) in memory without limit.

So a ``Gate`` stands between the peer's transport and pycapnp's protocol: the
peer's transport drives the gate (an asyncio ``BufferedProtocol``), the gate
lends that transport pycapnp's own read buffer (``get_buffer``) and, before
pycapnp sees the bytes (``buffer_updated``), splits them into Cap'n Proto
messages (only their framing and the ``Message`` union's discriminant are
read). pycapnp is given a thin transport whose writes go straight to the
peer and whose ``pause_reading``/``resume_reading`` say what pycapnp wants;
the peer is read only when pycapnp wants bytes *and* the gate's bounds allow.
No byte is copied or relayed on the way (an earlier gate relayed the bytes
through a socketpair: two more socket hops per message, about 200 us per
call on a slow VM). The gate counts, per connection:

* **outstanding answers**: the ids of the ``Call`` and ``Bootstrap``
  messages received, less those whose ``Finish`` was received and those the
  daemon answered with a ``Return`` marked ``noFinishNeeded`` (Cap'n Proto
  1.x marks every answer without capabilities so, and its callers then send
  no Finish: counting calls minus Finishes, an earlier gate saw an ordinary
  client's 4097th ``setWeight`` as over the bound and disconnected it). This
  is what a peer makes the daemon hold. At ``max_answers`` the gate stops
  reading from the peer; it resumes when the count is back under the bound
  (an answer returned). A peer that stays over its bound for
  ``stall_timeout_s`` (it cannot send Finish: those are queued behind calls
  we do not read) is disconnected, which releases everything it held.
* **back-pressure both ways**: when the peer does not read, its socket's
  buffer fills; the gate then pauses pycapnp's writes (they wait) and stops
  reading what the peer sends (no new call, so no new answer to queue). When
  pycapnp does not keep up with the peer, it does not ask for bytes, so the
  peer is not read.

Only the framing, the union's tag and the first data word of the struct it
holds are read of a message, in both directions. Framing errors (a segment
table larger than ``MAX_SEGMENTS``) end the connection; everything else
about a message is pycapnp's to judge (its traversal limit refuses
oversized ones).

Every method runs on the RPC loop. The gate holds pycapnp's protocol only
while the connection lives and drops it (after telling it the connection was
lost) on the loop, so no pycapnp object is left in a reference cycle that a
garbage collection in another thread could finalize.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import Any

import attrs
import structlog

log = structlog.get_logger("capos_sched.rpc")

# rpc.capnp's Message union (its discriminant is the UInt16 at data offset 0);
# tests check these against the schema pycapnp ships.
MSG_CALL = 2
MSG_RETURN = 3
MSG_FINISH = 4
MSG_BOOTSTRAP = 8
MAX_SEGMENTS = 512
"""Cap'n Proto's own default segment limit for a message read from a stream."""

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_U16 = struct.Struct("<H")


DEFAULT_MAX_ANSWERS = 1024
"""A held answer costs the daemon about 12.7 KB (docs/benchmarks.md, "Gate"), so
the default bound is about 13 MB per connection; at 4,096 it was 52 MB."""


@attrs.define
class GateLimits:
    """Bounds for one connection."""

    max_answers: int = DEFAULT_MAX_ANSWERS
    """Answers held for the peer (calls not yet finished) before reading stops."""
    stall_timeout_s: float = 10.0
    """How long a peer may stay at ``max_answers`` before it is disconnected."""
    high_water: int = 256 * 1024
    """Bytes buffered towards either side before that side's source is paused."""


HEAD_WORDS = 8
"""Words of a message's first segment the framer reads: the root pointer, the
``Message`` struct and the first data word of the struct its union points to,
where every Cap'n Proto builder puts them."""

Head = tuple[int, int | None, bool]
"""What the gate reads of one message: the ``Message`` union's tag (-1 when the
root is not laid out the way every builder lays it out: the caller assumes
the worst), the question or answer id of the struct the union holds (its
first UInt32; None when unreadable) and that struct's bit 33 (``Return``'s
``noFinishNeeded``)."""


class Framer:
    """Splits a Cap'n Proto stream into messages and reports each one's ``Head``.

    Feeds may end anywhere. Only a message's segment table and the first
    ``HEAD_WORDS`` words of its first segment are buffered; the rest is skipped
    unread. Stages: 0 wants the segment count, 1 the segment table, 2 the head.
    """

    def __init__(self, on_message: Callable[[int, int | None, bool], None]) -> None:
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
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                n = min(self._skip, end - pos)
                self._skip -= n
                pos += n
            elif not self._buf and end - pos >= 8:
                pos = self._in_place(data, pos, end)
            else:
                n = min(self._need - len(self._buf), end - pos)
                self._buf += data[pos : pos + n]
                pos += n
                while len(self._buf) == self._need:
                    self._advance()

    def _in_place(self, data: bytes | memoryview, pos: int, end: int) -> int:
        """A message starts at ``pos``: read its head where it lies if ``data``
        holds it whole (the usual case), else start buffering it."""
        count = _segment_count(data, pos)
        header = _table_bytes(count)
        if end - pos >= header:
            if count == 1:
                first = total = _U32.unpack_from(data, pos + 4)[0]
            else:
                sizes = struct.unpack_from(f"<{count}I", data, pos + 4)
                first, total = sizes[0], sum(sizes)
            words = min(first, HEAD_WORDS)
            if end - pos >= header + 8 * words:
                self._on_message(*read_head(data, pos + header, words))
                self._skip = 8 * total
                return pos + header
        self._buf += data[pos : pos + 4]
        self._advance()
        return pos + 4

    def _advance(self) -> None:
        buf = self._buf
        if self._stage == 0:
            self._need = _table_bytes(_segment_count(buf, 0))
            self._stage = 1
        elif self._stage == 1:
            count = _U32.unpack_from(buf, 0)[0] + 1
            sizes = [_U32.unpack_from(buf, 4 + 4 * i)[0] for i in range(count)]
            self._first_words = min(sizes[0], HEAD_WORDS)
            self._header = len(buf)
            self._body = 8 * sum(sizes) - 8 * self._first_words
            self._need = self._header + 8 * self._first_words
            self._stage = 2
        else:
            self._on_message(*read_head(buf, self._header, self._first_words))
            self._skip = self._body
            self._buf = bytearray()
            self._need = 4
            self._stage = 0


def _segment_count(data: bytes | bytearray | memoryview, at: int) -> int:
    """The segment count a message starting at ``data[at]`` declares; raises
    ValueError beyond ``MAX_SEGMENTS``."""
    count = _U32.unpack_from(data, at)[0] + 1
    if count > MAX_SEGMENTS:
        raise ValueError(f"a message declares {count} segments (at most {MAX_SEGMENTS})")
    return count


def _table_bytes(count: int) -> int:
    """Bytes of the segment table of a ``count``-segment message (its count
    word included, padded to a word)."""
    return (4 + 4 * count + 7) & ~7


def read_head(data: bytes | bytearray | memoryview, at: int, words: int) -> Head:
    """The ``Head`` of a message whose first segment starts at ``data[at]``
    with ``words`` words available there."""
    if words < 1:
        return -1, None, False
    root = _U64.unpack_from(data, at)[0]
    if root == 0:
        return 0, None, False  # a null root reads as the default: `unimplemented`
    if root & 3 != 0 or (root >> 2) & 0x3FFFFFFF != 0:
        return -1, None, False
    data_words = (root >> 32) & 0xFFFF
    if data_words == 0:
        return 0, None, False
    if words < 2:
        return -1, None, False
    tag = int(_U16.unpack_from(data, at + 8)[0])
    pointers = 1 + data_words  # the Message's pointer section: the union's struct
    if (root >> 48) == 0 or words <= pointers:
        return tag, None, False
    ptr = _U64.unpack_from(data, at + 8 * pointers)[0]
    if ptr == 0:
        return tag, 0, False  # a null struct reads as its defaults
    target = pointers + 1 + ((ptr >> 2) & 0x3FFFFFFF)  # a negative offset lands beyond
    if ptr & 3 != 0 or target >= words:
        return tag, None, False
    if (ptr >> 32) & 0xFFFF == 0:
        return tag, 0, False
    first = _U64.unpack_from(data, at + 8 * target)[0]
    return tag, first & 0xFFFFFFFF, bool(first >> 33 & 1)


class Gate(asyncio.BufferedProtocol):
    """The protocol of one peer's transport, wrapping pycapnp's, with the bounds
    of ``GateLimits``.

    Invariants: ``outstanding`` is the number of answers the daemon holds for
    the peer: ids of the calls and bootstraps received, less those the peer
    sent ``Finish`` for and those the daemon returned with ``noFinishNeeded``
    (a Finish for an id the peer never used changes nothing, so the count
    cannot be gamed; an unreadable message counts as a call that never
    ends); the peer is read only while pycapnp has asked for bytes,
    ``outstanding < max_answers`` and the peer reads what it is sent; every
    byte pycapnp receives or sends went through a framer first; ``closed`` is set once, and then
    the peer's transport is closed and ``on_close`` has been called; the gate
    drops pycapnp's protocol when the peer's transport is lost.
    """

    def __init__(self, limits: GateLimits, on_peer: Callable[[Gate], None] | None = None) -> None:
        self.limits = limits
        self.calls = 0
        self.peak = 0
        self.stalls = 0
        self.closed = False
        self.close_reason = ""
        self.on_close: Callable[[str], None] | None = None
        self._on_peer = on_peer
        self._answers: set[int] = set()
        self._unreadable = 0
        self._framer = Framer(self._received)
        self._sent = Framer(self._returned)
        self._peer: asyncio.Transport | None = None
        self._inner: asyncio.BufferedProtocol | None = None
        self._buffer: Any = None
        """What the last ``get_buffer`` handed the transport (pycapnp's memory)."""
        self._inner_wants = False
        self._over_bound = False
        self._peer_full = False
        self._stall: asyncio.TimerHandle | None = None

    @property
    def outstanding(self) -> int:
        """Answers the daemon holds for the peer (see the invariants)."""
        return len(self._answers)

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

    def attach(self, inner: asyncio.BufferedProtocol) -> None:
        """Hand pycapnp's protocol (``capnp.AsyncIoStream._connect``'s) its
        transport: from now on it reads and writes the peer through the gate."""
        assert self._inner is None, "a gate serves one protocol"
        self._inner = inner
        inner.connection_made(_InnerTransport(self))
        self._update_reading()

    # ----------------------------------------------- the peer's transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._peer = transport  # type: ignore[assignment]
        transport.pause_reading()  # type: ignore[attr-defined]  # until pycapnp asks
        transport.set_write_buffer_limits(high=self.limits.high_water)  # type: ignore[attr-defined]
        if self._on_peer is not None:
            callback, self._on_peer = self._on_peer, None
            callback(self)

    def get_buffer(self, sizehint: int) -> Any:
        if self._inner is None or self.closed:  # not read while paused: bytes to drop
            self._buffer = bytearray(max(sizehint, 4096))
        else:
            self._buffer = self._inner.get_buffer(sizehint)
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        buffer, self._buffer = self._buffer, None
        inner = self._inner
        if inner is None or self.closed:
            return
        try:
            with memoryview(buffer) as view:
                self._framer.feed(view[:nbytes])
        except ValueError as exc:
            self.close(f"bad framing: {exc}")  # pycapnp never sees these bytes
            return
        inner.buffer_updated(nbytes)
        self._update_reading()

    def pause_writing(self) -> None:
        """The peer is not reading what we send: pycapnp's writes wait, and no
        new call is read (so no new answer is queued)."""
        self._peer_full = True
        if self._inner is not None:
            self._inner.pause_writing()
        self._update_reading()

    def resume_writing(self) -> None:
        self._peer_full = False
        if self._inner is not None:
            self._inner.resume_writing()
        self._update_reading()

    def eof_received(self) -> bool:
        self.close("peer closed")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.close("peer closed")
        self._lose_inner(exc)

    def _lose_inner(self, exc: Exception | None) -> None:
        """Tell pycapnp its connection is gone (once) and drop its protocol."""
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)

    # --------------------------------------------------------------- counting

    def _received(self, tag: int, ident: int | None, _flag: bool) -> None:
        """One message from the peer: its calls make answers, its Finishes end them."""
        if tag in (MSG_CALL, MSG_BOOTSTRAP, -1):
            if ident is None or tag == -1:  # unreadable: a call that never ends
                self._unreadable -= 1
                ident = self._unreadable
            self._answers.add(ident)
            self.calls += 1
            self.peak = max(self.peak, len(self._answers))
        elif tag == MSG_FINISH and ident is not None:
            self._answers.discard(ident)

    def _returned(self, tag: int, ident: int | None, no_finish_needed: bool) -> None:
        """One message from pycapnp: a Return that needs no Finish ends its answer
        (Cap'n Proto 1.x sends these for results without capabilities, and its
        caller then never sends Finish)."""
        if tag == MSG_RETURN and no_finish_needed and ident is not None:
            self._answers.discard(ident)

    def _sending(self, data: Any) -> None:
        peer = None if self.closed else self._peer
        if peer is None:
            return
        try:
            self._sent.feed(data)
        except ValueError as exc:  # pycapnp wrote something that is no message
            log.error("connection closed: the server sent a malformed message", error=str(exc))
            self.close(f"bad framing from the server: {exc}")
            return
        peer.write(data)
        if self._over_bound:
            self._update_reading()

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
        if self._inner_wants and not (over or self._peer_full):
            self._peer.resume_reading()
        else:
            self._peer.pause_reading()

    def _stalled(self) -> None:
        self._stall = None
        if self._over_bound:
            reason = (
                f"{self.outstanding} calls unfinished for {self.limits.stall_timeout_s:g} s "
                f"(bound {self.limits.max_answers})"
            )
            log.info("connection closed: a peer stayed over its bound", reason=reason)
            self.close(reason, abort=True)

    def _inner_reading(self, wants: bool) -> None:
        self._inner_wants = wants
        self._update_reading()

    def close(self, reason: str = "closed", *, abort: bool = False) -> None:
        """End the connection (idempotent). ``abort`` drops what is buffered
        towards the peer (one that does not read would keep it forever).
        pycapnp learns of the end on the next turn of the loop, outside
        whatever pycapnp call may have led here, so it releases what the
        connection held even while the peer's transport is still flushing."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._peer is not None:
            if abort:
                self._peer.abort()
            else:
                self._peer.close()
        if self._inner is not None:
            asyncio.get_running_loop().call_soon(self._lose_inner, None)
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback(reason)


class _InnerTransport(asyncio.Transport):
    """The transport pycapnp's protocol is given: writes go to the peer;
    reading is paused and resumed through the gate, which combines pycapnp's
    wish with its own bounds."""

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self._gate = gate

    def _peer(self) -> asyncio.Transport | None:
        return None if self._gate.closed else self._gate._peer

    def write(self, data: Any) -> None:
        self._gate._sending(data)

    def pause_reading(self) -> None:
        self._gate._inner_reading(False)

    def resume_reading(self) -> None:
        self._gate._inner_reading(True)

    def is_reading(self) -> bool:
        return self._gate._inner_wants

    def is_closing(self) -> bool:
        peer = self._peer()
        return peer is None or peer.is_closing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """pycapnp has nothing more to send: the gate ends the connection
        (what is buffered towards the peer is still sent)."""
        self._gate.close("server closed")

    def close(self) -> None:
        self._gate.close("server closed")

    def abort(self) -> None:
        self._gate.close("server aborted", abort=True)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        peer = self._gate._peer
        return default if peer is None else peer.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        peer = self._peer()
        return 0 if peer is None else peer.get_write_buffer_size()
