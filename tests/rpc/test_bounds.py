"""Every per-connection resource is bounded; a hostile peer costs only its own
connection, and everything it held is released when it goes.

A peer that never reads its answers (and so never sends Finish) used to grow
the daemon without limit: 100k ``restore(bad token)`` calls on one connection
cost +440 MiB, never returned. Now the daemon stops reading such a peer at
``--max-answers`` unfinished calls and disconnects it after ``--stall-timeout``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import capnp
import pytest

from capos_sched.client import connect
from capos_sched.rpc import gate as gate_mod
from capos_sched.rpc.gate import MSG_BOOTSTRAP, MSG_CALL, MSG_FINISH, Framer

from .conftest import Daemon, InProcess, arun
from .flood import record_calls, rss_kib, send_without_reading
from .test_daemon import S, weight_of

FLOOD_CALLS = 100_000


def _bad_restores(n: int) -> bytes:
    return record_calls(lambda boot: [boot.restore(b"bad-token") for _ in range(n)], S.Restorer)


def test_a_peer_that_never_reads_is_bounded_and_released(workdir: Path) -> None:
    d = Daemon(workdir, args=("--max-answers", "1024", "--stall-timeout", "2"))
    try:
        payload = _bad_restores(FLOOD_CALLS)
        assert len(payload) > 10_000_000  # ~200 bytes per call
        time.sleep(0.5)
        start = rss_kib(d.proc.pid)
        growth = []
        for _ in range(2):
            sock, sent = send_without_reading(d.listen[5:], payload, timeout=3)
            # the daemon stopped reading long before the end (a few calls past 1024)
            assert sent < len(payload) // 10, sent
            growth.append(rss_kib(d.proc.pid) - start)

            async def others_still_served() -> None:
                async with await connect(d.listen, token=d.token("tuner")) as s:
                    await (await s.policy()).set_weight(await s.thread("a"), 1500)
                assert await weight_of(d.admin, "fairness/a") == 1500

            arun(others_still_served)
            # the peer stays over its bound: after --stall-timeout it is disconnected
            sock.settimeout(10)
            eof = False
            try:
                while sock.recv(1 << 16):
                    pass
                eof = True
            except OSError:
                eof = True  # reset by the daemon
            finally:
                sock.close()
            assert eof
        assert d.alive()
        # +440 MiB on the unbounded daemon; bounded here, and the second flood
        # reuses what the first one's connection released
        assert growth[0] < 40 * 1024, f"RSS grew {growth[0]} KiB"
        assert growth[1] < growth[0] + 8 * 1024, growth
        stalls = [e for e in d.events() if "over its bound" in str(e.get("event"))]
        assert len(stalls) == 2
    finally:
        d.stop()


def test_a_peer_that_reads_nothing_but_finishes_its_calls_is_not_read_either(
    workdir: Path,
) -> None:
    """Finish sent (answers dropped) but the answers never read: the daemon's
    outgoing queue would grow; it stops reading the peer instead."""
    d = Daemon(workdir)
    try:

        def lists(boot: object) -> None:
            caps = boot.restore(d.token("tuner")).caps  # type: ignore[attr-defined]
            for _ in range(50_000):
                caps.list()  # dropped at once: the client sends Finish

        payload = record_calls(lists, S.Restorer)
        start = rss_kib(d.proc.pid)
        sock, sent = send_without_reading(d.listen[5:], payload, timeout=3)
        try:
            assert sent < len(payload) // 2, (sent, len(payload))
            assert rss_kib(d.proc.pid) - start < 20 * 1024
        finally:
            sock.close()
        assert d.alive()
    finally:
        d.stop()


def test_restoring_again_on_one_connection_keeps_one_session(inproc: InProcess) -> None:
    """50k restores used to make 50k CapSets (+660 MiB); a connection keeps one
    CapSet per process however often it restores."""

    async def go() -> list[object]:
        async with capnp.kj_loop():
            stream = await capnp.AsyncIoStream.create_unix_connection(inproc.listen[5:])
            client = capnp.TwoPartyClient(stream)
            restorer = client.bootstrap().cast_as(S.Restorer)
            token = inproc.token("tuner")
            for _ in range(5):
                await asyncio.gather(*(restorer.restore(token) for _ in range(200)))
            report = await asyncio.to_thread(inproc.state.service.report)
            client.close()
            stream.close()
            return report  # type: ignore[no-any-return]

    report = arun(go)
    listen = [c for c in report if c["kind"] == "listen"]
    assert len(listen) == 1
    assert listen[0]["sessions"] == 1
    assert listen[0]["outstanding"] <= 201  # earlier rounds were finished by the client


# ------------------------------------------------------------------ framer


def test_message_tags_match_the_rpc_schema_pycapnp_ships() -> None:
    root = Path(capnp.__file__).parent
    rpc = capnp.load(str(root / "rpc.capnp"), imports=[str(root.parent)])
    node = rpc.Message.schema.node
    assert node.struct.discriminantOffset == 0  # the UInt16 at data offset 0
    tags = {f.name: f.discriminantValue for f in node.struct.fields}
    assert (tags["call"], tags["finish"], tags["bootstrap"]) == (
        MSG_CALL,
        MSG_FINISH,
        MSG_BOOTSTRAP,
    )


@pytest.mark.parametrize("chunk", [1, 3, 8, 61, 4096])
def test_framer_finds_every_message_whatever_the_chunking(chunk: int) -> None:
    def calls(boot: object) -> None:
        for i in range(20):
            boot.restore(os.urandom(1 + i * 50))  # type: ignore[attr-defined]

    payload = record_calls(calls, S.Restorer)
    seen: list[int] = []
    framer = Framer(seen.append)
    for i in range(0, len(payload), chunk):
        framer.feed(payload[i : i + chunk])
    assert seen.count(MSG_BOOTSTRAP) == 1
    assert seen.count(MSG_CALL) == 20
    assert -1 not in seen


def test_framer_refuses_absurd_segment_tables() -> None:
    framer = Framer(lambda tag: None)
    with pytest.raises(ValueError, match="segments"):
        framer.feed((gate_mod.MAX_SEGMENTS).to_bytes(4, "little") + b"\0" * 4)


def test_unreadable_roots_count_as_calls() -> None:
    g = gate_mod.Gate(gate_mod.GateLimits())
    g._count(-1)
    g._count(MSG_CALL)
    g._count(MSG_FINISH)
    assert g.outstanding == 1
