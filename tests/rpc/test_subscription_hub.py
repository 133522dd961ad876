"""The RPC thread's subscription queues (rpc/delegation_server.py): bounded per
listener, and a slow or failing listener costs only its own subscription."""

from __future__ import annotations

import asyncio
from typing import Any

from capos_sched.rpc.delegation import Note
from capos_sched.rpc.delegation_server import MAX_QUEUED_NOTES, SubscriptionHub

from .conftest import arun


class Bridge:
    def __init__(self) -> None:
        self.submitted: list[Any] = []

    def submit(self, op: Any) -> asyncio.Future[Any]:
        self.submitted.append(op)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class Conn:
    def __init__(self) -> None:
        self.subscriptions: set[int] = set()


class Listener:
    def __init__(self, block: bool = False, fail: bool = False) -> None:
        self.got: list[tuple[int, ...]] = []
        self.block = block
        self.fail = fail

    async def capsUpdated(self, cpus: list[int]) -> None:
        if self.fail:
            raise RuntimeError("listener broke")
        if self.block:
            await asyncio.Event().wait()
        self.got.append(tuple(cpus))


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_stuck_listener_overflows_and_loses_only_its_own_subscription() -> None:
    async def main() -> None:
        bridge, conn = Bridge(), Conn()
        hub = SubscriptionHub(bridge)
        slow, fast = Listener(block=True), Listener()
        hub.add(1, slow, conn)
        hub.add(2, fast, conn)
        try:
            for i in range(MAX_QUEUED_NOTES + 2):
                hub.deliver([(1, Note("capsUpdated", (i,))), (2, Note("capsUpdated", (i,)))])
                await asyncio.sleep(0)
            await _settle()
            assert hub.ended == 1 and conn.subscriptions == {2}
            for _ in range(100):  # the other listener gets everything, in order
                if len(fast.got) == MAX_QUEUED_NOTES + 2:
                    break
                await asyncio.sleep(0.01)
            assert fast.got == [(i,) for i in range(MAX_QUEUED_NOTES + 2)]
            assert len(bridge.submitted) == 1  # the owner is told to forget subscription 1
        finally:  # a failed check must not leave a blocked sender behind
            hub.end(1, "test over")
            hub.end(2, "test over")
            await _settle()

    arun(main)


def test_a_failing_listener_ends_its_subscription() -> None:
    async def main() -> None:
        bridge, conn = Bridge(), Conn()
        hub = SubscriptionHub(bridge)
        hub.add(7, Listener(fail=True), conn)
        hub.deliver([(7, Note("capsUpdated", (0,)))])
        await _settle()
        assert hub.ended == 1 and conn.subscriptions == set()
        hub.deliver([(7, Note("capsUpdated", (1,)))])  # delivered to nobody, no error

    arun(main)


def test_a_none_note_ends_the_subscription() -> None:
    async def main() -> None:
        bridge, conn = Bridge(), Conn()
        hub = SubscriptionHub(bridge)
        listener = Listener()
        hub.add(3, listener, conn)
        hub.deliver([(3, None)])
        await _settle()
        assert conn.subscriptions == set() and listener.got == []

    arun(main)
