"""Integration tests against a real ``capos-sched serve`` process.

Authority, typed errors, revocation with calls in flight, E-order, stale
handles, atomic load, exec'd clients, overload.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import stat
import time
from pathlib import Path
from typing import Any

import capnp
import pytest

from capos_sched.client import (
    CapOSError,
    Disconnected,
    InvalidArgument,
    Overloaded,
    Revoked,
    Stale,
    Unimplemented,
    connect,
    connect_admin,
    translate,
)
from capos_sched.rpc.schema import capos

from .conftest import BASE_MANIFEST, REPO, SLEEPER_B, Daemon, arun, assert_no_traceback, cli

S = capos()


# ---------------------------------------------------------------- helpers


class Raw:
    """A raw pycapnp connection to --listen (for pipelining and forged handles)."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def __aenter__(self) -> Raw:
        self._loop = capnp.kj_loop()
        await self._loop.__aenter__()
        self.stream = await capnp.AsyncIoStream.create_unix_connection(self.path)
        self.client = capnp.TwoPartyClient(self.stream)
        self.restorer = self.client.bootstrap().cast_as(S.Restorer)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.restorer = None
        self.client.close()
        self.stream.close()
        await self._loop.__aexit__(None, None, None)


class GatedHandle(S.ThreadHandle.Server):  # type: ignore[misc,name-defined]
    """A client-hosted ThreadHandle that answers once ``gate`` opens.

    With ``real`` (a handle the daemon gave us) it relays ``prove`` to it, as a
    proxy would; without, it is a forgery: it claims (tid, generation) but
    cannot prove anything.
    """

    def __init__(self, tid: int, generation: int, gate: asyncio.Event, real: Any = None) -> None:
        self.tid, self.generation, self.gate, self.real = tid, generation, gate, real
        self.asked = 0

    @classmethod
    def client(cls, tid: int, generation: int, gate: asyncio.Event, real: Any = None) -> Any:
        """The capability a test passes to the daemon (served by a new GatedHandle)."""
        return S.ThreadHandle._new_client(cls(tid, generation, gate, real))

    async def describe(self, **_: Any) -> Any:
        self.asked += 1
        await self.gate.wait()
        return ("forged", self.tid, self.generation, "runnable")

    async def isLive(self, **_: Any) -> bool:
        return True

    async def prove(self, nonce: bytes, **_: Any) -> bytes:
        self.asked += 1
        await self.gate.wait()
        if self.real is None:
            return bytes(32)  # a guess: the secret never left the daemon
        return bytes((await self.real.prove(nonce)).mac)


class DelayedHandle(S.ThreadHandle.Server):  # type: ignore[misc,name-defined]
    """A client-hosted proxy of a real handle that answers after 0-20 ms."""

    def __init__(self, tid: int, generation: int, real: Any) -> None:
        self.tid, self.generation, self.real = tid, generation, real
        self.rng = random.Random(7)

    async def describe(self, **_: Any) -> Any:
        await asyncio.sleep(self.rng.random() * 0.02)
        return ("delayed", self.tid, self.generation, "runnable")

    async def isLive(self, **_: Any) -> bool:
        return True

    async def prove(self, nonce: bytes, **_: Any) -> bytes:
        await asyncio.sleep(self.rng.random() * 0.02)
        return bytes((await self.real.prove(nonce)).mac)


async def weight_of(admin_addr: str, thread: str) -> int:
    async with await connect_admin(admin_addr) as admin:
        stats = await admin.stats()
    return next(t["weight"] for t in stats["threads"] if t["name"] == thread)


async def expect(cls: type[CapOSError], awaitable: Any) -> CapOSError:
    try:
        await awaitable
    except CapOSError as exc:
        assert isinstance(exc, cls), f"expected {cls.__name__}, got {exc!r}"
        assert_no_traceback(str(exc))
        return exc
    except capnp.KjException as exc:
        err = translate(exc)
        assert isinstance(err, cls), f"expected {cls.__name__}, got {err!r}"
        assert_no_traceback(str(exc))
        return err
    raise AssertionError(f"expected {cls.__name__}, the call succeeded")


# ------------------------------------------------------------- authority


def test_token_files_admin_socket_and_grants(daemon: Daemon) -> None:
    files = sorted(p.name for p in daemon.grants.glob("*.token"))
    assert files == ["other.token", "tuner.token", "viewer.token"]
    assert stat.S_IMODE(daemon.grants.stat().st_mode) == 0o700
    for name in files:
        path = daemon.grants / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_text().strip()) >= 43  # >= 256 bits
    assert stat.S_IMODE(daemon.admin_path.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(daemon.admin_path.stat().st_mode)
    out = cli("grants", "--admin", daemon.admin, "--json")
    assert out.returncode == 0, out.stderr
    rows = {(r["process"], r["grant"]): r for r in json.loads(out.stdout)["grants"]}
    assert set(rows) == {
        ("tuner", "policy"),
        ("tuner", "a"),
        ("tuner", "b"),
        ("viewer", "a"),
        ("other", "policy"),
        ("other", "b"),
    }
    assert {r["state"] for r in rows.values()} == {"granted"}


def test_restorer_without_a_valid_token_reaches_nothing(daemon: Daemon) -> None:
    real = daemon.token("tuner")

    async def go() -> list[str]:
        texts = []
        async with Raw(daemon.listen[5:]) as raw:
            for bad in [b"", b"x", real[:-1], real + b"x", os.urandom(32), b"\x00" * 2000]:
                err = await expect(Disconnected, raw.restorer.restore(bad))
                assert err.message == "unknown or revoked token"
                texts.append(str(err))
            boot = raw.client.bootstrap()
            for iface, call in [
                (S.CapSet, lambda c: c.list()),
                (S.Admin, lambda c: c.grants()),
                (S.SchedulingPolicyCap, lambda c: c.snapshot()),
                (S.ThreadHandle, lambda c: c.describe()),
            ]:
                await expect(Unimplemented, call(boot.cast_as(iface)))
        return texts

    texts = arun(go)
    assert len(set(texts)) == 1  # the same answer whatever was wrong


def test_capabilities_work_and_bad_input_changes_nothing(daemon: Daemon) -> None:
    async def go() -> None:
        async with await connect(daemon.listen, token=daemon.token("tuner")) as s:
            assert await s.list() == ["a", "b", "policy"]
            await expect(InvalidArgument, s.get("nope"))
            policy, a = await s.policy(), await s.thread("a")
            info = await a.describe()
            assert info.name == "fairness/a"
            assert info.state.name in ("RUNNABLE", "RUNNING", "BLOCKED")
            assert await a.is_live()
            await policy.set_weight(a, 3000)
            await policy.set_latency_class(a, "interactive")
            snap = await policy.snapshot(a)
            assert (snap.weight, snap.latency_class.wire_name) == (3000, "interactive")
            for bad in (0, 10001, 65535):
                err = await expect(InvalidArgument, policy.set_weight(a, bad))
                assert str(err) == f"invalidArgument: weight {bad} outside [1, 10000]"
            err = await expect(InvalidArgument, policy.set_weight(a, 70000))  # caught client-side
            assert str(err) == "invalidArgument: weight 70000 outside [1, 10000]"
            # an enumerant the daemon does not know (a newer client, or a hostile one)
            req = policy.cap.setLatencyClass_request()
            req.thread = a.cap
            setattr(req, "class", 7)
            err = await expect(InvalidArgument, req.send())
            assert "unknown latency class 7" in str(err)
            # no thread at all (a null capability)
            err = await expect(InvalidArgument, policy.cap.setWeight(weight=5))
            assert "thread handle" in err.message
            snap = await policy.snapshot(a)
            assert (snap.weight, snap.latency_class.wire_name) == (3000, "interactive")
        async with await connect(daemon.listen, token=daemon.token("viewer")) as s:
            assert await s.list() == ["a"]
            await expect(InvalidArgument, s.policy())  # no policy granted to viewer

    arun(go)


def test_handles_of_another_process_or_forged_reach_nothing(daemon: Daemon) -> None:
    async def go() -> None:
        async with (
            await connect(daemon.listen, token=daemon.token("tuner")) as tuner,
            await connect(daemon.listen, token=daemon.token("other")) as other,
        ):
            a = await tuner.thread("a")
            info = await a.describe()
            other_policy = await other.policy()
            # tuner's real handle to a, passed to other's policy: a is not other's
            err = await expect(InvalidArgument, other_policy.set_weight(a, 5))
            assert "not" in err.message and "other" in err.message
            # a forged handle claiming to be a
            gate = asyncio.Event()
            gate.set()
            forged = GatedHandle.client(info.thread_id, info.generation, gate)
            err = await expect(InvalidArgument, other_policy.cap.setWeight(forged, 5))
            assert "not one granted to process other" in err.message
            # a forged handle naming other's own thread b is refused too: naming a
            # thread is not holding a handle to it
            b = await other.thread("b")
            binfo = await b.describe()
            forged_b = GatedHandle.client(binfo.thread_id, binfo.generation, gate)
            err = await expect(InvalidArgument, other_policy.cap.setWeight(forged_b, 77))
            assert "not one granted to process other" in err.message
        assert await weight_of(daemon.admin, "fairness/a") == 2048
        assert await weight_of(daemon.admin, "fairness/b") == 1024

    arun(go)


# ----------------------------------------------------------- E-order


@pytest.mark.parametrize("unwrap", ["1", "0"], ids=["fast-path", "describe-claims"])
def test_calls_take_effect_in_send_order_pipelining_included(workdir: Path, unwrap: str) -> None:
    d = Daemon(workdir, env={"CAPOS_SCHED_UNWRAP": unwrap})
    try:

        async def go() -> None:
            async with await connect(d.listen, token=d.token("tuner")) as s:
                info = await (await s.thread("a")).describe()
            async with Raw(d.listen[5:]) as raw:
                # Nothing is awaited before every call is sent: the CapSet, the
                # policy and the handle are all promises (pipelined). Every
                # third call uses a client-hosted handle that takes a random
                # while to say who it is, so later calls are ready first.
                caps = raw.restorer.restore(d.token("tuner")).caps
                policy = caps.get("policy").cap.cast_as(S.SchedulingPolicyCap)
                handle = caps.get("a").cap.cast_as(S.ThreadHandle)
                slow = S.ThreadHandle._new_client(
                    DelayedHandle(info.thread_id, info.generation, handle)
                )
                sent: list[tuple[str, int, Any]] = []
                for i in range(300):
                    weight = 1 + (i * 37) % 9999
                    which = slow if i % 3 == 0 else handle
                    sent.append(("set", weight, policy.setWeight(which, weight)))
                    if i % 7 == 0:
                        sent.append(("snap", weight, policy.snapshot(handle)))
                results = await asyncio.gather(*(p for _, _, p in sent))
                for (kind, weight, _), result in zip(sent, results, strict=True):
                    if kind == "snap":
                        assert result.weight == weight
            assert await weight_of(d.admin, "fairness/a") == 1 + (299 * 37) % 9999

        arun(go)
        fast = [e for e in d.events() if e.get("event") == "handle unwrap probe"]
        assert fast and fast[0]["fast_path"] is (unwrap == "1")
    finally:
        d.stop()


# ----------------------------------------------------------- revocation


def test_revocation_fails_closed_with_1000_calls_in_flight(daemon: Daemon) -> None:
    """300 calls are applied, 700 are held in flight (their handle is slow to
    say who it is), then the policy is revoked: all 700 must fail as revoked
    and the weight must stay at the 300th value."""

    async def go() -> None:
        async with await connect(daemon.listen, token=daemon.token("tuner")) as s:
            policy, a = await s.policy(), await s.thread("a")
            info = await a.describe()
            gate = asyncio.Event()
            slow = GatedHandle.client(info.thread_id, info.generation, gate, a.cap)
            weights = [1 + (i * 13) % 9999 for i in range(1000)]
            calls = [
                asyncio.ensure_future(_settle(policy.cap.setWeight(a.cap if i < 300 else slow, w)))
                for i, w in enumerate(weights)
            ]
            while sum(c.done() for c in calls) < 300:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            assert sum(c.done() for c in calls) == 300  # 700 still in flight
            async with await connect_admin(daemon.admin) as admin:
                assert sorted(await admin.revoke("tuner", "policy")) == ["tuner.policy"]
                gate.set()  # the held calls now reach the owner, after the revoke
                outcomes = await asyncio.gather(*calls)
                assert outcomes[:300] == [None] * 300
                for out in outcomes[300:]:
                    assert isinstance(out, Revoked), out
                    assert str(out).startswith("disconnected: revoked")
                await expect(Revoked, policy.set_weight(a, 5))
                await expect(Revoked, policy.snapshot(a))
                assert await a.is_live()  # the handle grant itself was not revoked
                assert sorted(await s.list()) == ["a", "b"]
                stats = await admin.stats()
            weight = next(t["weight"] for t in stats["threads"] if t["name"] == "fairness/a")
            assert weight == weights[299]

    arun(go)


def test_revocation_cut_is_a_prefix_of_the_send_order(daemon: Daemon) -> None:
    """1000 calls in flight, the whole process revoked after the first answers:
    successes form a prefix of the send order, the weight is the last
    success's, and nothing the process holds works afterwards."""

    token = daemon.token("other")

    async def go() -> None:
        async with await connect(daemon.listen, token=token) as s:
            policy, b = await s.policy(), await s.thread("b")
            weights = [1 + (i * 7) % 9999 for i in range(1000)]
            calls = [
                asyncio.ensure_future(_settle(policy.cap.setWeight(b.cap, w))) for w in weights
            ]
            while not any(c.done() for c in calls):
                await asyncio.sleep(0)
            async with await connect_admin(daemon.admin) as admin:
                await admin.revoke("other")
                outcomes = await asyncio.gather(*calls)
                ok = [o is None for o in outcomes]
                cut = ok.index(False) if False in ok else len(ok)
                assert all(ok[:cut]) and not any(ok[cut:])
                assert all(isinstance(o, Revoked) for o in outcomes[cut:])
                stats = await admin.stats()
                weight = next(t["weight"] for t in stats["threads"] if t["name"] == "fairness/b")
                assert weight == (weights[cut - 1] if cut else 1024)
                await expect(Revoked, b.describe())
                await expect(Revoked, b.is_live())
                await expect(Revoked, s.list())
                await expect(Revoked, s.get("b"))
                grants = {(g.process, g.name): g.state for g in await admin.grants()}
                assert grants[("other", "policy")] == grants[("other", "b")] == "revoked"
        with pytest.raises(Disconnected, match="unknown or revoked token"):
            await connect(daemon.listen, token=token)

    arun(go)
    assert not (daemon.grants / "other.token").exists()


async def _settle(awaitable: Any) -> CapOSError | None:
    try:
        await awaitable
    except Exception as exc:
        return translate(exc)
    return None


# ----------------------------------------------------------- load, stale


def test_load_is_atomic_and_removed_threads_leave_stale_handles(daemon: Daemon) -> None:
    broken = daemon.dir / "broken.cue"
    broken.write_text(BASE_MANIFEST.replace("weight: 2048", "weight: 0"))
    bad_exec = daemon.dir / "bad-exec.cue"
    bad_exec.write_text(
        BASE_MANIFEST.replace(
            "viewer: grants:", 'viewer: exec: ["/nonexistent/prog"]\n\tviewer: grants:'
        )
    )
    smaller = daemon.dir / "smaller.cue"
    smaller.write_text(
        BASE_MANIFEST.replace(SLEEPER_B, "")
        .replace('\t\tb: {kind: "thread", thread: "fairness/b"}\n', "")
        .replace("\t\tc:", "\t\tc:")
        + "\n"
    )
    tuner_token = daemon.token("tuner")

    async def before() -> Any:
        s = await connect(daemon.listen, token=tuner_token)
        return s, await s.policy(), await s.thread("a"), await s.thread("b")

    async def go() -> None:
        s, policy, a, b = await before()
        try:
            await policy.set_weight(b, 4321)
            # a broken manifest is refused here, as `check` refuses it; a bad exec path
            # (found by the daemon) is the daemon's invalidArgument
            for path, start in ((broken, f"{broken}:"), (bad_exec, "invalidArgument: ")):
                out = await asyncio.to_thread(cli, "load", "--admin", daemon.admin, str(path))
                assert out.returncode == 1
                assert out.stderr.startswith(start), out.stderr
                assert_no_traceback(out.stderr.replace(str(path), "<manifest>"))
            # nothing changed
            assert await weight_of(daemon.admin, "fairness/b") == 4321
            assert daemon.token("tuner") == tuner_token
            await policy.set_weight(b, 4322)
            # a valid smaller plan: fairness/b goes, so do the grants on it
            out = await asyncio.to_thread(cli, "load", "--admin", daemon.admin, str(smaller))
            assert out.returncode == 0, out.stderr
            assert "removed: fairness/b" in out.stdout
            assert "tuner.b" in out.stdout and "other.b" in out.stdout
            for call in (policy.set_weight(b, 5), b.describe(), policy.snapshot(b)):
                err = await expect(Stale, call)
                assert str(err).startswith("disconnected: stale")
            assert await b.is_live() is False  # never an error on a stale handle
            await policy.set_weight(a, 999)  # untouched grants keep working
            assert await s.list() == ["a", "policy"]
            assert daemon.token("tuner") == tuner_token
            async with await connect_admin(daemon.admin) as admin:
                names = {t["name"] for t in (await admin.stats())["threads"]}
                assert names == {"fairness/a"}
                states = {(g.process, g.name): g.state for g in await admin.grants()}
                assert ("tuner", "b") not in states
        finally:
            await s.close()

    arun(go)


def test_default_manifest_grants_nothing(workdir: Path) -> None:
    d = Daemon(workdir, manifest=REPO / "manifests" / "default.cue")
    try:
        assert not d.grants.exists() or list(d.grants.glob("*.token")) == []
        out = cli("grants", "--admin", d.admin, "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["grants"] == []

        async def go() -> None:
            with pytest.raises(Disconnected):
                await connect(d.listen, token=b"A" * 43)

        arun(go)
    finally:
        d.stop()


# ------------------------------------------------------------ exec'd client


def test_exec_client_gets_its_capset_on_an_inherited_socket(workdir: Path) -> None:
    script = Path(__file__).with_name("exec_client.py")
    manifest = BASE_MANIFEST.replace(
        "\tviewer: grants:",
        f'\tctl: {{\n\t\texec: ["python", "{script}", "777"]\n'
        '\t\tgrants: policy: kind: "schedulingPolicy"\n'
        '\t\tgrants: a: {kind: "thread", thread: "fairness/a"}\n'
        "\t}\n\tviewer: grants:",
    )
    d = Daemon(workdir, manifest=manifest)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if arun(lambda: weight_of(d.admin, "fairness/a")) == 777:
                break
            time.sleep(0.1)
        assert arun(lambda: weight_of(d.admin, "fairness/a")) == 777
        time.sleep(0.2)
        lines = [e for e in d.events() if e.get("event") == "process output"]
        assert {"process": "ctl", "stream": "stdout", "line": "caps a,policy"}.items() <= lines[
            0
        ].items()
        assert any(e["line"] == "to stderr" and e["stream"] == "stderr" for e in lines)
        pid = next(e["pid"] for e in d.events() if e.get("event") == "process started")
        assert d.stop() == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert any(e.get("event") == "process stopped" for e in d.events())
    finally:
        if d.alive():
            d.stop()


# ------------------------------------------------------------- overload


def test_overload_refuses_calls_past_the_bound_without_queueing(workdir: Path) -> None:
    d = Daemon(workdir, args=("--max-calls", "8"))
    try:

        async def go() -> None:
            async with await connect(d.listen, token=d.token("tuner")) as s:
                policy, a = await s.policy(), await s.thread("a")
                info = await a.describe()
                gate = asyncio.Event()
                slow = GatedHandle.client(info.thread_id, info.generation, gate, a.cap)
                held = [
                    asyncio.ensure_future(_settle(policy.cap.setWeight(slow, 100 + i)))
                    for i in range(8)
                ]
                await asyncio.sleep(0.3)
                extra = await asyncio.gather(
                    *(_settle(policy.cap.setWeight(a.cap, 5)) for _ in range(20))
                )
                assert all(isinstance(e, Overloaded) for e in extra), extra
                assert str(extra[0]).startswith("overloaded: ")
                gate.set()
                assert await asyncio.gather(*held) == [None] * 8
                await policy.set_weight(a, 4444)  # the bound frees up again
            assert await weight_of(d.admin, "fairness/a") == 4444
            async with await connect_admin(d.admin) as admin:
                assert (await admin.stats())["rpc"]["overloaded"] == 20

        arun(go)
    finally:
        d.stop()


# ---------------------------------------------------------- shutdown


def test_sigterm_stops_cleanly_and_removes_tokens_and_sockets(workdir: Path) -> None:
    d = Daemon(workdir)
    assert d.stop(signal.SIGTERM) == 0
    assert not d.admin_path.exists()
    assert not Path(d.listen[5:]).exists()
    assert list(d.grants.iterdir()) == []


def test_handles_go_stale_when_the_runtime_finishes_their_thread(workdir: Path) -> None:
    manifest = (
        BASE_MANIFEST.replace(
            SLEEPER_B, SLEEPER_B + '\t\tshort: {workload: {kind: "spin", total: "30ms"}}\n'
        )
        .replace(
            "\tviewer: grants:",
            '\tviewer: grants: s: {kind: "thread", thread: "fairness/short"}\n\tviewer: grants:',
        )
        .replace(
            "\ttuner: grants: {\n",
            '\ttuner: grants: {\n\t\ts: {kind: "thread", thread: "fairness/short"}\n',
        )
    )
    d = Daemon(workdir, manifest=manifest)
    try:

        async def go() -> None:
            async with await connect(d.listen, token=d.token("tuner")) as s:
                policy, short = await s.policy(), await s.thread("s")
                deadline = time.monotonic() + 20
                while await short.is_live() and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                assert await short.is_live() is False
                for call in (policy.set_weight(short, 5), short.describe(), policy.snapshot(short)):
                    err = await expect(Stale, call)
                    assert str(err).startswith("disconnected: stale")
                await policy.set_weight(await s.thread("a"), 6)  # the rest still works
            async with await connect_admin(d.admin) as admin:
                states = {(g.process, g.name): g.state for g in await admin.grants()}
                stats = await admin.stats()
            assert states[("tuner", "s")] == states[("viewer", "s")] == "stale"
            short_row = next(t for t in stats["threads"] if t["name"] == "fairness/short")
            assert short_row["state"] == "exited" and short_row["runtime_ns"] >= 30_000_000

        arun(go)
    finally:
        d.stop()


def test_a_lost_daemon_surfaces_as_disconnected(workdir: Path) -> None:
    d = Daemon(workdir)
    token = d.token("tuner")

    async def go() -> None:
        s = await connect(d.listen, token=token)
        try:
            policy, a = await s.policy(), await s.thread("a")
            await policy.set_weight(a, 10)
            pending = [asyncio.ensure_future(_settle(policy.set_weight(a, 11))) for _ in range(50)]
            d.proc.kill()  # no goodbye at all
            await asyncio.to_thread(d.proc.wait)
            for out in await asyncio.gather(*pending):
                assert out is None or type(out) is Disconnected, repr(out)
            for call in (policy.set_weight(a, 12), a.describe(), s.list()):
                err = await expect(Disconnected, call)
                assert type(err) is Disconnected
        finally:
            await s.close()
        with pytest.raises(Disconnected):
            await connect(d.listen, token=token)

    try:
        arun(go)
    finally:
        d.stop()
