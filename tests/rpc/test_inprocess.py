"""The daemon stack in this process, for what needs a hand inside the owner:
threads that exit (and ids reused), and internal faults."""

from __future__ import annotations

import pytest
import structlog

from capos_sched.client import Failed, InvalidArgument, Stale, connect, connect_admin
from capos_sched.rpc import servers
from capos_sched.rpc.owner import Owner
from capos_sched.rpc.schema import capos

from .conftest import BASE_MANIFEST, InProcess, arun, assert_no_traceback
from .test_daemon import expect


def test_handles_go_stale_when_their_thread_exits_even_if_the_id_is_reused(
    inproc: InProcess,
) -> None:
    async def grab() -> tuple[int, int]:
        async with await connect(inproc.listen, token=inproc.token("tuner")) as s:
            info = await (await s.thread("a")).describe()
            return info.thread_id, info.generation

    tid, generation = arun(grab)

    async def go() -> None:
        async with await connect(inproc.listen, token=inproc.token("tuner")) as s:
            policy, a = await s.policy(), await s.thread("a")
            await policy.set_weight(a, 3333)

            def exit_and_reuse(owner: Owner) -> tuple[int, int]:
                sched = owner.host.inner.scheduler
                ref = owner.host.thread_ref("fairness/a")
                sched.kill(ref, 0)
                sched.reap(ref)
                wake = sched.spawn("intruder", 0)  # takes the freed id
                return wake.thread.tid, wake.thread.generation

            new_tid, new_generation = inproc.call(exit_and_reuse)
            assert (new_tid, new_generation) == (tid, generation + 1)
            for call in (policy.set_weight(a, 5), policy.snapshot(a), a.describe()):
                err = await expect(Stale, call)
                assert str(err).startswith("disconnected: stale")
            assert await a.is_live() is False
            weights = inproc.call(lambda o: [t.weight for t in o.host.inner.scheduler.threads()])
            assert 5 not in weights  # the intruder was never reached
            rows = inproc.call(lambda o: o.grant_rows())
            states = {(r.process, r.name): r.state for r in rows}
            assert states[("tuner", "a")] == states[("viewer", "a")] == "stale"
            assert states[("tuner", "b")] == "granted"

    arun(go)


def test_internal_faults_reach_clients_as_failed_with_a_ref_and_no_traceback(
    inproc: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_snapshot(self: Owner, **_: object) -> None:
        raise RuntimeError("owner secret detail")

    def broken_decode(value: object) -> int:
        raise KeyError("rpc secret detail")

    monkeypatch.setattr(Owner, "snapshot", broken_snapshot)
    monkeypatch.setattr(servers, "_enum_ordinal", broken_decode)

    async def go() -> list[Failed]:
        async with await connect(inproc.listen, token=inproc.token("tuner")) as s:
            policy, a = await s.policy(), await s.thread("a")
            errors = [
                await expect(Failed, policy.snapshot(a)),
                await expect(Failed, policy.set_latency_class(a, "batch")),
            ]
            await policy.set_weight(a, 42)  # the connection and the owner carry on
            await expect(InvalidArgument, policy.set_weight(a, 0))
            return errors  # type: ignore[return-value]

    with structlog.testing.capture_logs() as logs:
        errors = arun(go)
    refs = []
    for err in errors:
        text = str(err)
        assert text.startswith("failed: internal error (ref ")
        assert "secret" not in text
        assert_no_traceback(text)
        refs.append(text.rsplit("ref ", 1)[1].rstrip(")"))
    logged = {entry.get("ref"): entry for entry in logs if entry.get("ref")}
    assert set(refs) <= set(logged)
    assert all(logged[r]["log_level"] == "error" for r in refs)
    # the log (never the client) has the exception text under each ref
    details = sorted(logged[r]["error"] for r in refs)
    assert details == ["KeyError: 'rpc secret detail'", "RuntimeError: owner secret detail"]


def test_repeated_restore_and_get_on_one_connection_does_not_grow_its_state(
    inproc: InProcess,
) -> None:
    """A client looping restore + get on one connection must not make the
    daemon keep one more capability (and registry entry) per iteration."""

    def registry_sizes() -> list[int]:
        return [c["handles"] for c in inproc.state.service.report()]

    async def go() -> list[int]:
        async with await connect(inproc.listen, token=inproc.token("tuner")) as s:
            restorer = s._client.bootstrap().cast_as(capos().Restorer)
            token = inproc.token("tuner")
            sizes = []
            for _ in range(3):
                for _ in range(20):
                    caps = (await restorer.restore(token)).caps
                    await caps.get("a")
                    await caps.get("policy")
                    await s.thread("a")
                sizes.append(max(registry_sizes()))
            return sizes

    sizes = arun(go)
    assert sizes[0] <= 2  # at most one handle per thread grant ("a", "b")
    assert sizes[0] == sizes[1] == sizes[2]


def test_a_core_internal_error_is_logged_under_the_ref_the_client_gets(
    inproc: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capos_sched.core import InvalidState

    def broken_set_weight(self: Owner, **_: object) -> None:
        raise InvalidState("CPU 0 is idle (core detail)")

    monkeypatch.setattr(Owner, "set_weight", broken_set_weight)

    async def go() -> Failed:
        async with await connect(inproc.listen, token=inproc.token("tuner")) as s:
            policy, a = await s.policy(), await s.thread("a")
            return await expect(Failed, policy.set_weight(a, 42))  # type: ignore[return-value]

    with structlog.testing.capture_logs() as logs:
        err = arun(go)
    text = str(err)
    assert text.startswith("failed: internal error (ref ")
    assert "core detail" not in text
    ref = text.rsplit("ref ", 1)[1].rstrip(")")
    logged = [entry for entry in logs if entry.get("ref") == ref]
    assert logged and logged[0]["log_level"] == "error"


def test_admin_load_evaluates_the_manifest_outside_the_daemon_interpreter(
    inproc: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Evaluation is CPU-bound: it must not run in a thread of the daemon."""
    import capos_sched.manifest

    def not_here(source: str, name: str) -> None:
        raise AssertionError("manifest evaluated in the daemon interpreter")

    monkeypatch.setattr(capos_sched.manifest, "load_plan_text", not_here)

    async def go() -> tuple[dict[str, list[str]], InvalidArgument]:
        async with await connect_admin(inproc.admin) as admin:
            changed = await admin.load(BASE_MANIFEST.replace("weight: 2048", "weight: 512"), "m")
            bad = await expect(InvalidArgument, admin.load("machine: [", "bad.cue"))
            return changed, bad  # type: ignore[return-value]

    changed, bad = arun(go)
    assert "fairness/a" in changed["kept"]
    assert str(bad).startswith("invalidArgument: bad.cue:1:")
    assert_no_traceback(str(bad))
    weights = inproc.call(lambda o: {t.name: t.weight for t in o.host.inner.scheduler.threads()})
    assert weights["fairness/a"] == 512


def test_invalid_utf8_in_text_parameters_is_invalid_argument(inproc: InProcess) -> None:
    async def go() -> list[str]:
        texts = []
        async with await connect(inproc.listen, token=inproc.token("tuner")) as s:
            texts.append(str(await expect(InvalidArgument, s.caps.get(b"\xff\xfe"))))
            assert await s.list() == ["a", "b", "policy"]  # the session carries on
        async with await connect_admin(inproc.admin) as admin:
            texts.append(str(await expect(InvalidArgument, admin.admin.revoke(b"\xc3", b""))))
            texts.append(str(await expect(InvalidArgument, admin.admin.revoke("tuner", b"\xff"))))
            texts.append(str(await expect(InvalidArgument, admin.admin.load("x", b"\xff.cue"))))
            texts.append(str(await expect(InvalidArgument, admin.admin.load(b"\xff", "m.cue"))))
            assert {g.state for g in await admin.grants()} == {"granted"}  # nothing changed
        return texts

    texts = arun(go)
    assert all(t.startswith("invalidArgument: ") and "not valid UTF-8" in t for t in texts), texts


def test_json_logs_carry_the_exception_text_not_just_a_flag() -> None:
    import io
    import json

    from capos_sched.logs import configure_logging

    out = io.StringIO()
    configure_logging("info", "json", file=out)
    try:
        raise RuntimeError("the detail an operator needs")
    except RuntimeError as exc:
        structlog.get_logger("t").error("internal error", ref="abc", exc_info=exc)
    finally:
        structlog.reset_defaults()
    entry = json.loads(out.getvalue().splitlines()[-1])
    assert "the detail an operator needs" in entry["exception"]
    assert entry.get("exc_info") in (None, False)


def test_load_writes_token_files_off_the_owner_thread(
    inproc: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fsync'd token writes in the owner stalled every other call (2000 files:
    3.8 s of no answers); they happen in a worker thread now."""
    import threading

    from capos_sched.rpc import grants

    real = grants._write_private
    writers: list[int] = []

    def spy(path: object, text: str) -> None:
        writers.append(threading.get_ident())
        real(path, text)  # type: ignore[arg-type]

    monkeypatch.setattr(grants, "_write_private", spy)
    owner_thread = inproc.call(lambda _owner: threading.get_ident())

    async def go() -> None:
        async with await connect_admin(inproc.admin) as admin:
            await admin.load(BASE_MANIFEST.replace("weight: 2048", "weight: 600"), "m")

    arun(go)
    assert writers, "the load wrote no token file"
    assert owner_thread not in writers
    assert (inproc.grants / "tuner.token").read_bytes().strip() == inproc.token("tuner")
