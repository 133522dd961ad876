"""The gate between a peer's transport and pycapnp's protocol (rpc/gate.py),
driven by fakes of both: the peer is read only when pycapnp asks for bytes
and the bounds allow, every byte pycapnp gets went through the framer first,
back-pressure reaches pycapnp, and pycapnp is told once when the peer goes."""

from __future__ import annotations

import asyncio
from typing import Any

from capos_sched.rpc.gate import Gate, GateLimits

from .test_bounds import message


class FakePeer(asyncio.Transport):
    """The peer's transport: records reading, writes and closing."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = True
        self.written: list[bytes] = []
        self.closing = ""

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return bool(self.closing)

    def close(self) -> None:
        self.closing = self.closing or "close"

    def abort(self) -> None:
        self.closing = "abort"

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class FakeCapnp(asyncio.BufferedProtocol):
    """pycapnp's protocol: a buffer it lends, what it received, what it was told."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.buffer = bytearray(4096)
        self.received = b""
        self.write_paused = False
        self.lost: list[object] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> Any:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.received += bytes(self.buffer[:nbytes])

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


def deliver(gate: Gate, data: bytes) -> None:
    """What the peer's transport does when ``data`` arrives: one read into the lent buffer."""
    buf = gate.get_buffer(len(data))
    buf[: len(data)] = data
    gate.buffer_updated(len(data))


def gated(limits: GateLimits | None = None) -> tuple[Gate, FakePeer, FakeCapnp]:
    gate = Gate(limits or GateLimits())
    peer, inner = FakePeer(), FakeCapnp()
    gate.connection_made(peer)
    assert not peer.reading  # nobody has asked for bytes yet
    gate.attach(inner)
    return gate, peer, inner


def run(body: Any) -> None:
    async def main() -> None:
        body()
        await asyncio.sleep(0)  # the loop's next turn: pycapnp learns of a close

    asyncio.run(main())


def test_the_peer_is_read_only_while_pycapnp_asks_and_under_the_bound() -> None:
    def body() -> None:
        gate, peer, inner = gated(GateLimits(max_answers=3))
        assert not peer.reading
        inner.transport.resume_reading()
        assert peer.reading
        inner.transport.pause_reading()
        assert not peer.reading
        inner.transport.resume_reading()
        for ident in range(3):
            deliver(gate, message("call", ident, interfaceId=1))
        assert gate.outstanding == 3
        assert not peer.reading  # pycapnp still asks; the bound says no
        assert gate.stalls == 1
        inner.transport.write(message("return", 1, noFinishNeeded=True))
        assert gate.outstanding == 2
        assert peer.reading  # an answer went: under the bound again
        gate.close()

    run(body)


def test_pycapnp_gets_exactly_the_peers_bytes_and_its_writes_reach_the_peer() -> None:
    def body() -> None:
        gate, peer, inner = gated()
        inner.transport.resume_reading()
        calls = [message("call", i, interfaceId=1) for i in range(5)]
        stream = b"".join(calls)
        for i in range(0, len(stream), 37):  # split anywhere
            deliver(gate, stream[i : i + 37])
        assert inner.received == stream
        assert gate.calls == 5
        answer = message("return", 2, noFinishNeeded=True)
        inner.transport.write(answer)
        assert peer.written == [answer]
        gate.close()

    run(body)


def test_a_framing_error_never_reaches_pycapnp_and_ends_the_connection() -> None:
    def body() -> None:
        gate, peer, inner = gated()
        inner.transport.resume_reading()
        deliver(gate, (100_000).to_bytes(4, "little") + b"\0" * 60)
        assert inner.received == b""
        assert gate.closed and "bad framing" in gate.close_reason
        assert peer.closing
        assert inner.transport.is_closing()

    run(body)


def test_a_peer_that_does_not_read_pauses_pycapnps_writes_and_is_not_read() -> None:
    def body() -> None:
        gate, peer, inner = gated()
        inner.transport.resume_reading()
        gate.pause_writing()
        assert inner.write_paused and not peer.reading
        gate.resume_writing()
        assert not inner.write_paused and peer.reading
        gate.close()

    run(body)


def test_pycapnp_is_told_once_when_the_peer_goes_and_then_dropped() -> None:
    async def main() -> None:
        gate, peer, inner = gated()
        gate.close("stalled", abort=True)
        assert peer.closing == "abort"
        assert inner.lost == []  # not inside whatever call closed it
        await asyncio.sleep(0)
        assert inner.lost == [None]
        gate.connection_lost(None)  # the transport reports it too
        assert inner.lost == [None]
        assert gate._inner is None

    asyncio.run(main())


def test_pycapnp_closing_its_transport_ends_the_connection() -> None:
    def body() -> None:
        gate, peer, inner = gated()
        inner.transport.close()
        assert gate.closed and gate.close_reason == "server closed"
        assert peer.closing == "close"  # what is buffered is still sent

    run(body)


def test_calls_are_counted_before_pycapnp_sees_them() -> None:
    def body() -> None:
        gate, _peer, inner = gated()
        seen: list[int] = []

        def updated(nbytes: int) -> None:
            seen.append(gate.calls)
            FakeCapnp.buffer_updated(inner, nbytes)

        inner.buffer_updated = updated  # type: ignore[method-assign]
        inner.transport.resume_reading()
        deliver(gate, message("call", 4, interfaceId=1))
        assert seen == [1]
        assert gate.outstanding == 1
        gate.close()

    run(body)
