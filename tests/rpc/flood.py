"""Raw Cap'n Proto traffic from a peer that never reads its answers.

``record_calls`` captures the exact bytes a pycapnp client sends for N
pipelined calls (nobody answers, so every question id is distinct); tests
replay them on a plain socket and never read, which is what a hostile or
wedged client does.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import capnp


def record_calls(make_calls: Callable[[Any], None], bootstrap_iface: Any) -> bytes:
    """The bytes a client writes for ``make_calls(bootstrap)`` (answers never come)."""

    async def go() -> bytes:
        async with capnp.kj_loop():
            ours, theirs = socket.socketpair()
            theirs.setblocking(False)
            stream = await capnp.AsyncIoStream.create_connection(sock=ours)
            client = capnp.TwoPartyClient(stream)
            boot = client.bootstrap().cast_as(bootstrap_iface)
            loop = asyncio.get_running_loop()
            chunks: list[bytes] = []
            make_calls(boot)
            idle = 0
            while idle < 20:
                try:
                    data = theirs.recv(1 << 20)
                except BlockingIOError:
                    idle += 1
                    await asyncio.sleep(0.01)
                    continue
                idle = 0
                chunks.append(data)
            del boot
            client.close()
            stream.close()
            theirs.close()
            await loop.shutdown_asyncgens()
            return b"".join(chunks)

    return asyncio.run(go())


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def send_without_reading(
    path: str, payload: bytes, timeout: float = 5.0
) -> tuple[socket.socket, int]:
    """Connect and send ``payload``; stop when the daemon stops reading. Returns
    the socket (still open) and how many bytes went out."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    sock.settimeout(timeout)
    sent = 0
    view = memoryview(payload)
    try:
        while sent < len(payload):
            sent += sock.send(view[sent : sent + 65536])
    except (TimeoutError, OSError):
        pass
    return sock, sent
