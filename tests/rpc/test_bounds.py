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
from typing import Any

import capnp
import pytest

from capos_sched.client import connect
from capos_sched.rpc import gate as gate_mod
from capos_sched.rpc.gate import MSG_BOOTSTRAP, MSG_CALL, MSG_FINISH, MSG_RETURN, Framer

from .conftest import Daemon, InProcess, arun, base_plan
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
    assert (tags["call"], tags["return"], tags["finish"], tags["bootstrap"]) == (
        MSG_CALL,
        MSG_RETURN,
        MSG_FINISH,
        MSG_BOOTSTRAP,
    )
    ret = {f.name: f for f in rpc.Return.schema.node.struct.fields}
    assert ret["answerId"].slot.offset == 0  # the first UInt32 the framer reads
    assert ret["noFinishNeeded"].slot.offset == 33  # the bit it reads
    for struct in (rpc.Call, rpc.Finish, rpc.Bootstrap):
        fields = {f.name: f for f in struct.schema.node.struct.fields}
        assert fields["questionId"].slot.offset == 0


def test_a_client_may_make_more_calls_than_the_bound_one_after_another(workdir: Path) -> None:
    """Cap'n Proto 1.x returns a capability-free result with ``noFinishNeeded``
    and its caller sends no Finish: the gate counted calls minus Finishes and
    took an ordinary client's 65th sequential call (bound 64) for a flood,
    stopped reading it and disconnected it after the stall timeout."""
    d = InProcess(workdir, base_plan(), max_answers=64, stall_timeout_s=1.0)
    try:

        async def go() -> list[object]:
            async with await connect(d.listen, token=d.token("tuner")) as s:
                policy, thread = await s.policy(), await s.thread("a")
                for i in range(300):  # over the bound, the 65th would wait, then fail
                    await policy.set_weight(thread, 100 + i)
                report = await asyncio.to_thread(d.state.service.report)
            return report  # type: ignore[no-any-return]

        report = arun(go)
        listen = [c for c in report if c["kind"] == "listen"]
        assert listen[0]["outstanding"] < 16, listen
        assert d.call(lambda owner: owner.applied) == 300
    finally:
        d.stop()


@pytest.mark.parametrize("chunk", [1, 3, 8, 61, 4096])
def test_framer_finds_every_message_whatever_the_chunking(chunk: int) -> None:
    def calls(boot: object) -> None:
        for i in range(20):
            boot.restore(os.urandom(1 + i * 50))  # type: ignore[attr-defined]

    payload = record_calls(calls, S.Restorer)
    seen: list[tuple[int, int | None, bool]] = []
    framer = Framer(lambda *head: seen.append(head))
    for i in range(0, len(payload), chunk):
        framer.feed(payload[i : i + chunk])
    tags = [tag for tag, _, _ in seen]
    assert tags.count(MSG_BOOTSTRAP) == 1
    assert tags.count(MSG_CALL) == 20
    assert -1 not in tags
    ids = [ident for tag, ident, _ in seen if tag in (MSG_CALL, MSG_BOOTSTRAP)]
    assert sorted(ids) == list(range(21))  # every question's own id


def test_framer_refuses_absurd_segment_tables() -> None:
    framer = Framer(lambda *head: None)
    with pytest.raises(ValueError, match="segments"):
        framer.feed((gate_mod.MAX_SEGMENTS).to_bytes(4, "little") + b"\0" * 4)


def _rpc() -> Any:
    root = Path(capnp.__file__).parent
    return capnp.load(str(root / "rpc.capnp"), imports=[str(root.parent)])


def message(which: str, ident: int, **fields: Any) -> bytes:
    """One framed rpc.capnp Message whose union holds ``which`` with id ``ident``."""
    msg = _rpc().Message.new_message()
    body = msg.init(which)
    setattr(body, "answerId" if which == "return" else "questionId", ident)
    for name, value in fields.items():
        setattr(body, name, value)
    return msg.to_bytes()  # type: ignore[no-any-return]


def test_the_framer_reads_the_ids_and_no_finish_needed_where_builders_put_them() -> None:
    seen: list[tuple[int, int | None, bool]] = []
    framer = Framer(lambda *head: seen.append(head))
    framer.feed(message("call", 7, interfaceId=5, methodId=1))
    framer.feed(message("return", 9, noFinishNeeded=True))
    framer.feed(message("return", 10))
    framer.feed(message("finish", 3, releaseResultCaps=False))
    assert seen == [
        (MSG_CALL, 7, False),
        (MSG_RETURN, 9, True),
        (MSG_RETURN, 10, False),
        (MSG_FINISH, 3, False),
    ]


def test_answers_end_with_their_finish_or_a_return_needing_none() -> None:
    g = gate_mod.Gate(gate_mod.GateLimits())
    g._received(MSG_BOOTSTRAP, 0, False)
    for ident in (1, 2, 3):
        g._received(MSG_CALL, ident, False)
    assert g.outstanding == 4
    g._received(MSG_FINISH, 1, False)
    g._returned(MSG_RETURN, 2, True)  # noFinishNeeded: its caller sends no Finish
    g._returned(MSG_RETURN, 3, False)  # a Finish is still to come
    assert g.outstanding == 2
    g._received(MSG_FINISH, 2, False)  # allowed after noFinishNeeded, and ignored
    g._returned(MSG_CALL, 0, True)  # the daemon's own questions are not answers
    assert g.outstanding == 2


def test_finishing_what_was_never_asked_does_not_lower_the_count() -> None:
    g = gate_mod.Gate(gate_mod.GateLimits())
    g._received(MSG_CALL, 1, False)
    for ident in range(2, 50):
        g._received(MSG_FINISH, ident, False)
    g._received(MSG_FINISH, None, False)
    assert g.outstanding == 1


def test_unreadable_messages_count_as_calls_that_never_end() -> None:
    g = gate_mod.Gate(gate_mod.GateLimits())
    g._received(-1, None, False)
    g._received(MSG_CALL, None, False)
    g._received(MSG_CALL, 5, False)
    g._received(MSG_FINISH, 5, False)
    g._received(MSG_FINISH, 0, False)
    assert g.outstanding == 2
