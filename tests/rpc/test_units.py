"""Unit tests of the RPC layer's pieces: wire errors, addresses, bridge, grant table."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
import structlog

from capos_sched.client import (
    Disconnected,
    Failed,
    InvalidArgument,
    Overloaded,
    Revoked,
    Stale,
    Unimplemented,
    error_from_text,
)
from capos_sched.core import InvalidArgument as CoreInvalid
from capos_sched.core import InvalidState, StaleThread
from capos_sched.manifest import load_plan_text
from capos_sched.rpc.addr import AddressError, bind_unix, parse_address
from capos_sched.rpc.bridge import Bridge, OrderedSubmitter
from capos_sched.rpc.commands import split_target
from capos_sched.rpc.errors import CODES, WireError, from_core, parse_remote, wire_error
from capos_sched.rpc.grants import GrantTable
from capos_sched.runtime.host import PlanHost
from capos_sched.serve import CoreHost

from .conftest import BASE_MANIFEST, SLEEPER_B, run_with_bridge

# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("code", CODES)
def test_wire_error_formats_as_code_and_message_only(code: str) -> None:
    try:
        try:
            raise ValueError("inner detail that must not leak")
        except ValueError:
            raise wire_error(code, "the message") from None
    except WireError as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert text == f"{code}: the message\n"


def test_wire_error_hides_implicit_context_too() -> None:
    try:
        try:
            raise KeyError("secret")
        except KeyError:
            raise wire_error("failed", "x")  # noqa: B904 - implicit context on purpose
    except WireError as exc:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert text == "failed: x\n"
    assert "secret" not in text


def test_core_errors_map_to_codes() -> None:
    assert from_core(CoreInvalid("weight 0 outside [1, 10000]")).wire_text == (
        "invalidArgument: weight 0 outside [1, 10000]"
    )
    stale = from_core(StaleThread("thread 3 generation 1 is stale: exited"))
    assert stale.wire_text.startswith("disconnected: stale: ")
    internal = from_core(InvalidState("CPU 0 is idle"))
    assert internal.wire_text.startswith("failed: internal error (ref ")
    assert "CPU 0" not in internal.wire_text


@pytest.mark.parametrize(
    ("description", "kj_type", "cls", "message"),
    [
        (
            "remote exception: message = invalidArgument: weight 0 outside [1, 10000]\n",
            "FAILED",
            InvalidArgument,
            "weight 0 outside [1, 10000]",
        ),
        (
            "remote exception: message = disconnected: revoked: t.a",
            "FAILED",
            Revoked,
            "revoked: t.a",
        ),
        ("remote exception: message = disconnected: stale: x", "FAILED", Stale, "stale: x"),
        ("remote exception: message = overloaded: 8 calls", "FAILED", Overloaded, "8 calls"),
        ("remote exception: Method not implemented.", "UNIMPLEMENTED", Unimplemented, None),
        ("Peer disconnected.", "DISCONNECTED", Disconnected, None),
        ("remote exception: something odd", "FAILED", Failed, None),
        ("remote exception: message = failed: internal error (ref ab12)", "FAILED", Failed, None),
    ],
)
def test_client_maps_remote_errors(
    description: str, kj_type: str, cls: type, message: str | None
) -> None:
    err = error_from_text(description, kj_type)
    assert type(err) is cls
    assert str(err).startswith(f"{err.code}: ")
    if message is not None:
        assert err.message == message


def test_parse_remote_ignores_unknown_leading_words() -> None:
    assert parse_remote("remote exception: message = bogus: x", "FAILED").code == "failed"


# --------------------------------------------------------------- addresses


def test_parse_addresses() -> None:
    assert parse_address("unix:/tmp/x.sock").path == "/tmp/x.sock"
    tcp = parse_address("tcp:127.0.0.1:7070")
    assert (tcp.host, tcp.port) == ("127.0.0.1", 7070)
    v6 = parse_address("tcp:[::1]:80")
    assert (v6.host, v6.port, str(v6)) == ("::1", 80, "tcp:[::1]:80")
    for bad in ["", "x", "http://a", "unix:", "tcp:host", "tcp:h:99999", "tcp:h:port", "tcp::80"]:
        with pytest.raises(AddressError):
            parse_address(bad)


def test_bind_unix_sets_mode_and_refuses_live_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    sock = bind_unix(path, 0o600)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        sock.listen()
        with pytest.raises(AddressError, match="already serving"):
            bind_unix(path, 0o600)
    finally:
        sock.close()
    again = bind_unix(path, 0o600)  # stale socket file: replaced
    again.close()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(AddressError, match="not a socket"):
        bind_unix(str(tmp_path / "plain"), 0o600)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".capos-bind")] == []


def test_split_revoke_target_prefers_known_processes() -> None:
    assert split_target("tuner", {"tuner"}) == ("tuner", None)
    assert split_target("tuner.policy", {"tuner"}) == ("tuner", "policy")
    assert split_target("a.b.fairness/a", {"a", "a.b"}) == ("a.b", "fairness/a")
    with pytest.raises(InvalidArgument):
        split_target("nobody.x", {"tuner"})


# ------------------------------------------------------------------ bridge


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[Any] = []


def _with_bridge(body: Any) -> Any:
    """Run ``body(bridge, owner)`` on an asyncio loop in a thread, with trio owning."""
    owner = _Recorder()
    return run_with_bridge(owner, lambda bridge: body(bridge, owner)), owner


def test_bridge_runs_ops_in_order_in_the_trio_thread_and_coalesces() -> None:
    main_ident = threading.get_ident()

    async def body(bridge: Bridge[Any], owner: _Recorder) -> Any:
        def op(i: int) -> Any:
            def run(o: _Recorder) -> int:
                assert threading.get_ident() == main_ident
                o.seen.append(i)
                return i * 2

            return run

        futs = [bridge.submit(op(i)) for i in range(500)]
        return await asyncio.gather(*futs), bridge.drains

    (answers, drains), owner = _with_bridge(body)
    assert answers == [i * 2 for i in range(500)]
    assert owner.seen == list(range(500))
    assert drains < 50, "500 submissions in one burst should need few drains"


def test_bridge_maps_errors_and_never_leaks_internal_ones() -> None:
    async def body(bridge: Bridge[Any], owner: _Recorder) -> Any:
        def core_err(o: Any) -> None:
            raise CoreInvalid("weight 0 outside [1, 10000]")

        def bug(o: Any) -> None:
            raise ZeroDivisionError("secret internals")

        out = []
        for op in (core_err, bug):
            try:
                await bridge.submit(op)
            except WireError as exc:
                out.append(exc.wire_text)
        return out

    texts, _ = _with_bridge(body)
    assert texts[0] == "invalidArgument: weight 0 outside [1, 10000]"
    assert texts[1].startswith("failed: internal error (ref ")
    assert "secret" not in texts[1]


def test_bridge_survives_cancelled_callers() -> None:
    async def body(bridge: Bridge[Any], owner: _Recorder) -> Any:
        fut = bridge.submit(lambda o: o.seen.append("ran"))
        fut.cancel()
        return await bridge.submit(lambda o: "after")

    answer, owner = _with_bridge(body)
    assert answer == "after"
    assert owner.seen == ["ran"]  # applied even though nobody waited


def test_ordered_submitter_keeps_ticket_order() -> None:
    async def body(bridge: Bridge[Any], owner: _Recorder) -> Any:
        seq = OrderedSubmitter(bridge)
        t0, t1, t2 = seq.reserve(), seq.reserve(), seq.reserve()
        f2 = seq.fill(t2, lambda o: o.seen.append(2))
        f_now = seq.submit(lambda o: o.seen.append(3))  # must wait for t0..t2
        await asyncio.sleep(0.05)
        assert owner.seen == []
        seq.cancel(t1)
        f0 = seq.fill(t0, lambda o: o.seen.append(0))
        await asyncio.gather(f0, f2, f_now)
        return seq.waiting

    waiting, owner = _with_bridge(body)
    assert owner.seen == [0, 2, 3]
    assert waiting == 0


def test_bridge_close_fails_new_and_queued_calls() -> None:
    async def body(bridge: Bridge[Any], owner: _Recorder) -> Any:
        bridge.close()
        try:
            await bridge.submit(lambda o: None)
        except WireError as exc:
            return exc.wire_text
        return None

    text, _ = _with_bridge(body)
    assert text == "disconnected: daemon is shutting down"


# ------------------------------------------------------------- grant table


def _table(tmp_path: Path | None = None) -> tuple[GrantTable, CoreHost, Any]:
    plan = load_plan_text(BASE_MANIFEST, "base.cue")
    host = CoreHost(PlanHost(plan))
    return GrantTable.from_plan(plan, host, tmp_path), host, plan


def test_tokens_only_for_processes_with_grants_and_files_private(tmp_path: Path) -> None:
    table, _, _ = _table(tmp_path / "g")
    written = table.write_token_files()
    assert sorted(p.name for p in written) == ["other.token", "tuner.token", "viewer.token"]
    assert stat.S_IMODE((tmp_path / "g").stat().st_mode) == 0o700
    tokens = set()
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        text = path.read_text().strip()
        assert len(text) >= 43  # 32 random bytes as URL-safe base64
        tokens.add(text)
    assert len(tokens) == 3


def test_restore_accepts_only_exact_live_tokens() -> None:
    table, _, _ = _table()
    token = table.processes["tuner"].token
    assert token is not None
    assert table.restore(token.encode()).name == "tuner"
    for bad in [b"", token[:-1].encode(), (token + "x").encode(), b"\x00" * 43]:
        with pytest.raises(WireError, match="unknown or revoked token"):
            table.restore(bad)
    table.revoke("tuner", None)
    with pytest.raises(WireError, match="unknown or revoked token"):
        table.restore(token.encode())


def test_revoking_every_grant_one_by_one_kills_the_token() -> None:
    table, _, _ = _table()
    pg = table.processes["viewer"]
    token = pg.token
    assert token is not None
    assert table.revoke("viewer", "a") == ["viewer.a"]
    assert table.revoke("viewer", "a") == []  # idempotent
    with pytest.raises(WireError):
        table.restore(token.encode())


def test_revoke_unknown_names_change_nothing() -> None:
    table, _, _ = _table()
    with pytest.raises(WireError, match="no process"):
        table.revoke("nobody", None)
    with pytest.raises(WireError, match="no grant"):
        table.revoke("tuner", "nope")
    assert all(g.closed is None for pg in table.processes.values() for g in pg.grants.values())


def test_load_keeps_same_grants_latches_dropped_and_keeps_revocations_sticky() -> None:
    table, host, _ = _table()
    tuner = table.processes["tuner"]
    kept_policy, dropped_b = tuner.grants["policy"], tuner.grants["b"]
    table.revoke("tuner", "a")
    revoked_a = tuner.grants["a"]
    new_text = BASE_MANIFEST.replace(
        '\t\tb: {kind: "thread", thread: "fairness/b"}\n\t}\n\tviewer', "\t}\n\tviewer", 1
    )
    plan2 = load_plan_text(new_text, "m2.cue")
    change = host.apply_plan(plan2, 0)
    diff = table.apply_plan(plan2, host, change.removed)
    assert diff.revoked == ("tuner.b",)
    assert tuner.grants["policy"] is kept_policy and kept_policy.closed is None
    assert tuner.grants["a"] is revoked_a and revoked_a.closed is not None  # sticky
    assert "b" not in tuner.grants
    assert dropped_b.closed is not None and dropped_b.closed.kind == "revoked"


def test_load_that_removes_a_thread_marks_its_grants_stale() -> None:
    table, host, _ = _table()
    b_grant = table.processes["other"].grants["b"]
    text = (
        BASE_MANIFEST.replace(SLEEPER_B, "")
        .replace('\t\tb: {kind: "thread", thread: "fairness/b"}\n', "")
        .replace('\tother: grants: {\n\t\tpolicy: kind: "schedulingPolicy"\n\t}\n', "")
    )
    plan2 = load_plan_text(text, "m2.cue")
    change = host.apply_plan(plan2, 0)
    diff = table.apply_plan(plan2, host, change.removed)
    assert "fairness/b" in change.removed
    assert b_grant.closed is not None and b_grant.closed.kind == "stale"
    assert "other" not in table.processes or "b" not in table.processes["other"].grants
    assert "other.b" in diff.revoked


def test_load_with_an_unwritable_grants_dir_still_applies_the_whole_plan(tmp_path: Path) -> None:
    grants_dir = tmp_path / "g"
    table, host, _ = _table(grants_dir)
    table.write_token_files()
    tuner = table.processes["tuner"]
    new_text = BASE_MANIFEST.replace(
        '\t\tb: {kind: "thread", thread: "fairness/b"}\n\t}\n\tviewer', "\t}\n\tviewer", 1
    )
    plan2 = load_plan_text(new_text, "m2.cue")
    shutil.rmtree(grants_dir)
    grants_dir.write_text("not a directory")  # token files can no longer be written
    change = host.apply_plan(plan2, 0)
    diff = table.apply_plan(plan2, host, change.removed)  # no disk I/O in the owner
    with structlog.testing.capture_logs() as logs:
        assert diff.token_files.apply() == []
    assert diff.revoked == ("tuner.b",)  # the grant table followed the host all the way
    assert "b" not in tuner.grants
    assert any(e["event"] == "token files not updated after load" for e in logs)


@pytest.mark.parametrize("env", ["1", "0", None])
def test_serve_honours_disable_wfq(monkeypatch: pytest.MonkeyPatch, env: str | None) -> None:
    from capos_sched.core import Policy
    from capos_sched.serve import host_plugin

    if env is None:
        monkeypatch.delenv("CAPOS_SCHED_DISABLE_WFQ", raising=False)
    else:
        monkeypatch.setenv("CAPOS_SCHED_DISABLE_WFQ", env)
    plan = load_plan_text(BASE_MANIFEST, "base.cue")
    assert plan.machine.policy == "wfq"
    factory, _runner = host_plugin(None, execute=False)
    expected = Policy.FIFO if env == "1" else Policy.WFQ
    assert factory(plan).inner.scheduler.policy is expected


def test_operator_revocations_are_sticky_by_name_across_drop_and_re_add() -> None:
    """revoke P, a load without P, a load with P again: P stays revoked (and so
    does a single revoked grant dropped and re-added); grants a load dropped
    come back fresh."""
    table, host, _ = _table()
    without = BASE_MANIFEST.replace(
        '\ttuner: grants: {\n\t\tpolicy: kind: "schedulingPolicy"\n'
        '\t\ta: {kind: "thread", thread: "fairness/a"}\n'
        '\t\tb: {kind: "thread", thread: "fairness/b"}\n\t}\n',
        "",
    ).replace('\t\tb: {kind: "thread", thread: "fairness/b"}\n\t}\n}', "\t}\n}")
    assert "tuner" not in without and "other: grants: {\n\t\tpolicy" in without
    table.revoke("tuner", None)
    table.revoke("other", "b")
    viewer_token = table.processes["viewer"].token
    for text in (without, BASE_MANIFEST):
        p = load_plan_text(text, "m.cue")
        change = host.apply_plan(p, 0)
        table.apply_plan(p, host, change.removed)
    tuner = table.processes["tuner"]
    assert tuner.revoked and not tuner.restorable
    assert all(g.closed and g.closed.kind == "revoked" for g in tuner.grants.values())
    assert table.processes["other"].grants["b"].closed.kind == "revoked"  # type: ignore[union-attr]
    assert table.processes["other"].grants["policy"].closed is None
    with pytest.raises(WireError):
        table.restore(tuner.token.encode())  # type: ignore[union-attr]
    assert table.restore(viewer_token.encode()).name == "viewer"  # type: ignore[union-attr]


def test_the_client_shares_only_the_wire_module_with_the_server() -> None:
    import subprocess
    import sys

    code = (
        "import sys, capos_sched.client;"
        "print(sorted(m for m in sys.modules if m.startswith('capos_sched.rpc')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_one_function_writes_latch_text_and_the_client_reads_it_back() -> None:
    from capos_sched.client import Revoked, Stale, error_from_text
    from capos_sched.rpc.grants import revoked_latch, stale_latch

    for latch, cls in ((revoked_latch("t.p was revoked"), Revoked), (stale_latch("gone"), Stale)):
        err = error_from_text(f"remote exception: disconnected: {latch.text}")
        assert type(err) is cls and err.message == latch.text
    with pytest.raises(ValueError):
        from capos_sched.rpc.grants import Latch

        Latch("closed", "not a kind")
