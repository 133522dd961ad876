"""Bad peers never crash or wedge the daemon: garbage, truncated and oversized
messages on both sockets, and clients that vanish mid-call."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from typing import Any

import capnp

from capos_sched.client import Disconnected, connect, connect_admin

from .conftest import Daemon, arun
from .test_daemon import GatedHandle, S, expect


def _frame_header(segment_words: list[int]) -> bytes:
    header = struct.pack("<I", len(segment_words) - 1)
    header += b"".join(struct.pack("<I", w) for w in segment_words)
    if len(header) % 8:
        header += b"\0" * (8 - len(header) % 8)
    return header


BAD_INPUTS: dict[str, bytes] = {
    "garbage": os.urandom(4096),
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4,
    "oversized-declared": _frame_header([0x0FFFFFFF]) + b"\0" * 64,
    "too-many-segments": struct.pack("<I", 0xFFFFFFFE) + b"\0" * 64,
    "truncated": _frame_header([100]) + b"\0" * 80,
    "zero-struct": _frame_header([1]) + b"\0" * 8,
}


def _send_and_close(path: str, payload: bytes, wait_for_close: bool) -> bool:
    """Send ``payload``; report whether the daemon closed the connection itself."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(path)
        try:
            sock.sendall(payload)
        except OSError:
            return True
        if not wait_for_close:
            return False
        try:
            while sock.recv(65536):
                pass
        except (TimeoutError, OSError):
            return False
        return True


def test_garbage_truncated_and_oversized_input_on_both_sockets(daemon: Daemon) -> None:
    listen, admin = daemon.listen[5:], str(daemon.admin_path)
    closed_by_daemon = {}
    for path in (listen, admin):
        for name, payload in BAD_INPUTS.items():
            closed = _send_and_close(path, payload, wait_for_close=name != "truncated")
            closed_by_daemon[(path, name)] = closed
    for key in ("garbage", "oversized-declared", "too-many-segments"):
        assert closed_by_daemon[(listen, key)], key
        assert closed_by_daemon[(admin, key)], key
    # many half-open connections that never finish a message
    idle = []
    for _ in range(20):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(listen)
        sock.sendall(_frame_header([10]))
        idle.append(sock)

    async def still_serving() -> None:
        async with await connect(daemon.listen, token=daemon.token("tuner")) as s:
            policy, a = await s.policy(), await s.thread("a")
            await policy.set_weight(a, 1234)
        async with await connect_admin(daemon.admin) as adm:
            stats = await adm.stats()
        assert next(t for t in stats["threads"] if t["name"] == "fairness/a")["weight"] == 1234

    arun(still_serving)
    for sock in idle:
        sock.close()
    assert daemon.alive()


def test_valid_but_oversized_messages_drop_only_that_connection(daemon: Daemon) -> None:
    async def go() -> None:
        async with await connect(daemon.listen, token=daemon.token("tuner")) as s:
            err = await expect(Disconnected, s.get("x" * 600_000))  # > 512 KiB limit
            assert_disconnected = err.code == "disconnected"
            assert assert_disconnected
        async with await connect_admin(daemon.admin) as adm:
            await expect(Disconnected, adm.load("x" * (17 * 1024 * 1024), "/huge.cue"))
        async with await connect(daemon.listen, token=daemon.token("tuner")) as s:
            assert await s.list() == ["a", "b", "policy"]
        async with await connect_admin(daemon.admin) as adm:
            assert len((await adm.stats())["threads"]) == 2

    arun(go, timeout=120)
    assert daemon.alive()


def test_clients_vanishing_mid_call(daemon: Daemon) -> None:
    """Calls held in flight (handle slow to describe itself) and plain calls
    in flight, then the client's socket is closed under them."""

    async def vanish() -> None:
        async with capnp.kj_loop():
            stream = await capnp.AsyncIoStream.create_unix_connection(daemon.listen[5:])
            client = capnp.TwoPartyClient(stream)
            caps = client.bootstrap().cast_as(S.Restorer).restore(daemon.token("tuner")).caps
            policy = caps.get("policy").cap.cast_as(S.SchedulingPolicyCap)
            handle = caps.get("a").cap.cast_as(S.ThreadHandle)
            info = await handle.describe()
            never = asyncio.Event()
            held = GatedHandle.client(info.threadId, info.generation, never, handle)
            pending: list[Any] = [policy.setWeight(held, 7) for _ in range(50)]
            pending += [policy.setWeight(handle, 1 + i) for i in range(500)]
            await asyncio.sleep(0.2)
            stream.close()  # vanish without a goodbye
            client.close()
            for p in pending:
                with contextlib.suppress(Exception):
                    p.cancel()
            del pending

    for _ in range(3):
        arun(vanish)

    async def after() -> None:
        async with await connect(daemon.listen, token=daemon.token("tuner")) as s:
            policy, a = await s.policy(), await s.thread("a")
            await policy.set_weight(a, 2222)
            assert (await policy.snapshot(a)).weight == 2222
        deadline = time.monotonic() + 10
        while True:
            async with await connect_admin(daemon.admin) as adm:
                rpc = (await adm.stats())["rpc"]
            if rpc["connections"] == 1 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert rpc["connections"] == 1  # only the admin connection asking
        assert rpc["internal_errors"] == 0

    arun(after)
    assert daemon.alive()
