"""No pycapnp object is ever finalized outside the RPC thread.

The daemon under test (``gc_daemon.py``) runs a full ``gc.collect()`` on its
trio thread every few milliseconds. Any pycapnp object left in cyclic garbage
(for instance in the frames of a traceback that crossed threads) is then
destroyed on the trio thread, away from its KJ event loop, and the process
aborts. The traffic is what used to do it: policy calls whose handle is
client-hosted (the describe() claim path), typed errors, and a revoke with
such calls in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import capnp

from capos_sched.client import InvalidArgument, Revoked, connect, connect_admin

from .conftest import Daemon, arun
from .test_daemon import GatedHandle, S, _settle


class FailingHandle(S.ThreadHandle.Server):  # type: ignore[misc,name-defined]
    """A client-hosted handle whose describe() fails (the daemon's claim errors)."""

    async def describe(self, **_: Any) -> Any:
        raise ValueError("no identity here")

    async def prove(self, **_: Any) -> Any:
        raise ValueError("no identity here")

    async def isLive(self, **_: Any) -> bool:
        return True


GC_DAEMON = [sys.executable, str(Path(__file__).with_name("gc_daemon.py"))]


def _claim_traffic(d: Daemon, rounds: int = 4) -> None:
    async def go() -> None:
        async with await connect(d.listen, token=d.token("tuner")) as s:
            policy, a = await s.policy(), await s.thread("a")
            info = await a.describe()
            opened = asyncio.Event()
            opened.set()
            for r in range(rounds):
                claimed = GatedHandle.client(info.thread_id, info.generation, opened, a.cap)
                forged = GatedHandle.client(9999, 1, opened)
                failing = S.ThreadHandle._new_client(FailingHandle())
                calls = [policy.cap.setWeight(claimed, 1 + (i % 9000)) for i in range(150)]
                calls += [policy.cap.setWeight(claimed, 0) for _ in range(50)]  # invalidArgument
                calls += [policy.cap.setWeight(forged, 5) for _ in range(50)]  # refused claim
                calls += [policy.cap.setWeight(failing, 5) for _ in range(50)]  # describe fails
                outcomes = await asyncio.gather(*(_settle(c) for c in calls))
                assert outcomes[:150] == [None] * 150, (r, outcomes[:3])
                bad = [o for o in outcomes[150:] if not isinstance(o, InvalidArgument)]
                assert not bad, bad[:3]

    arun(go, timeout=120)


def _revoke_with_claims_in_flight(d: Daemon) -> None:
    async def go() -> None:
        async with await connect(d.listen, token=d.token("other")) as s:
            policy, b = await s.policy(), await s.thread("b")
            info = await b.describe()
            gate = asyncio.Event()
            held = GatedHandle.client(info.thread_id, info.generation, gate, b.cap)
            calls = [
                asyncio.ensure_future(_settle(policy.cap.setWeight(held, 7))) for _ in range(300)
            ]
            await asyncio.sleep(0.3)
            async with await connect_admin(d.admin) as admin:
                await admin.revoke("other")
            gate.set()
            outcomes = await asyncio.gather(*calls)
            assert all(isinstance(o, Revoked) for o in outcomes), outcomes[:3]

    arun(go, timeout=120)


def _vanish_mid_call(d: Daemon) -> None:
    """Calls held in flight, then the client's socket closes under them (cancellation)."""

    async def go() -> None:
        async with capnp.kj_loop():
            stream = await capnp.AsyncIoStream.create_unix_connection(d.listen[5:])
            client = capnp.TwoPartyClient(stream)
            caps = client.bootstrap().cast_as(S.Restorer).restore(d.token("tuner")).caps
            policy = caps.get("policy").cap.cast_as(S.SchedulingPolicyCap)
            handle = caps.get("a").cap.cast_as(S.ThreadHandle)
            info = await handle.describe()
            held = S.ThreadHandle._new_client(
                GatedHandle(info.threadId, info.generation, asyncio.Event(), handle)
            )
            pending = [policy.setWeight(held, 7) for _ in range(100)]
            pending += [policy.setWeight(handle, 1 + i) for i in range(200)]
            await asyncio.sleep(0.2)
            stream.close()
            client.close()
            for p in pending:
                with contextlib.suppress(Exception):
                    p.cancel()
            del pending

    for _ in range(3):
        arun(go)


def test_gc_on_the_owner_thread_during_claims_and_revoke_never_aborts(workdir: Path) -> None:
    d = Daemon(workdir, program=GC_DAEMON)
    try:
        for traffic in (_claim_traffic, _vanish_mid_call, _revoke_with_claims_in_flight):
            try:
                traffic(d)
            finally:
                assert d.alive(), f"daemon died ({d.proc.poll()}): {d.log()[-1500:]}"
    finally:
        code = d.stop()
    assert code != -signal.SIGABRT
    assert "No event loop is running" not in d.log()
