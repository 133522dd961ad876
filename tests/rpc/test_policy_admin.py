"""Admin.setPolicy and `capos-sched policy set|load|show` against a real daemon.

The operator switches the running daemon's policy (built-ins and user source),
a broken user policy loaded at run time is ejected with its exit record, a bad
source is a typed error that changes nothing, and `stats`/`grants` show the
policy in force, its bypass and the exit records.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from capos_sched.client import AdminSession, InvalidArgument, connect_admin

from .conftest import REPO, Daemon, arun, assert_no_traceback, cli

SIMPLE = REPO / "examples" / "policies" / "simple.py"

HOGS = """\
package capos

machine: {cpus: 2, policy: "wfq"}

processes: h: threads: {
	a: {weight: 2048, workload: kind: "spin"}
	b: {workload: kind: "spin"}
	c: {workload: kind: "spin"}
}
"""

STARVED = """\
package capos

machine: {cpus: 1, policy: "wfq"}

processes: h: threads: {
	heavy: {weight: 10000, workload: kind: "spin"}
	light: {weight: 1, workload: kind: "spin"}
}
"""


def broken_source(callback: str, how: str, after: int = 20) -> str:
    """The example policy, whose ``callback`` raises or loops after ``after`` calls."""
    action = "raise ValueError('broken on purpose')" if how == "raise" else "while True: pass"
    return SIMPLE.read_text() + (
        f"""

_Inner = POLICY


class Broken(_Inner):
    name = "broken"
    calls = 0

    def {callback}(self, ctx, *args):
        self.calls += 1
        if self.calls > {after}:
            {action}
        return super().{callback}(ctx, *args)


POLICY = Broken
"""
    )


@pytest.fixture
def hogs(workdir: Path) -> Any:
    d = Daemon(workdir, HOGS)
    try:
        yield d
    finally:
        d.stop()


def admin(d: Daemon, fn: Any) -> Any:
    async def go() -> Any:
        async with await connect_admin(d.admin) as session:
            return await fn(session)

    return arun(go)


def wait_for(d: Daemon, predicate: Any, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = admin(d, AdminSession.policy)
        if predicate(state) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


def one_line_error(text: str) -> bool:
    """One line, no traceback (a policy's file name ends in .py, so the suite's
    marker list does not apply here)."""
    return text.count("\n") == 1 and "Traceback" not in text and 'File "' not in text


def runtimes(session_stats: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {t["name"]: (t["runtime_ns"], t["virtual_runtime_ns"]) for t in session_stats["threads"]}


def test_the_operator_switches_policies_and_accounting_carries_over(hogs: Daemon) -> None:
    out = cli("policy", "show", "--admin", hogs.admin)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["policy: wfq (built-in)", "bypass: none", "exits: none"]

    async def go() -> list[tuple[str, dict[str, Any]]]:
        phases = []
        async with await connect_admin(hogs.admin) as session:
            for name, source in [
                ("eevdf", ""),
                (str(SIMPLE), SIMPLE.read_text()),
                ("fifo", ""),
                ("wfq", ""),
            ]:
                await asyncio.sleep(0.3)
                before = runtimes(await session.stats())
                state = await session.set_policy(name, source)
                after = await session.stats()
                phases.append((state["policy"], after))
                assert after["policy"] == state
                for thread, (runtime, vruntime) in runtimes(after).items():
                    # carried over: never reset, never lowered
                    assert runtime >= before[thread][0] and vruntime >= before[thread][1]
            # No thread was lost: each one runs again after the last switch (a
            # thread whose virtual time ran ahead under FIFO may wait its turn).
            last = runtimes(phases[-1][1])
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                await asyncio.sleep(0.2)
                end = await session.stats()
                if all(runtimes(end)[n][0] > last[n][0] for n in last):
                    break
                assert asyncio.get_running_loop().time() < deadline, (last, runtimes(end))
            phases.append(("end", end))
        return phases

    phases = arun(go)
    assert [p for p, _ in phases] == ["eevdf", "simple", "fifo", "wfq", "end"]
    assert all(s["policy"]["exits"] == [] for _, s in phases)
    totals = [sum(r for r, _ in runtimes(s).values()) for _, s in phases]
    assert totals == sorted(set(totals)), totals  # the machine kept running through each
    assert {t["name"] for _, s in phases for t in s["threads"]} == {"h/a", "h/b", "h/c"}
    assert {t["state"] for _, s in phases for t in s["threads"]} <= {"running", "runnable"}


@pytest.mark.parametrize(
    ("callback", "how", "kind"), [("dispatch", "raise", "error"), ("enqueue", "loop", "timeout")]
)
def test_a_broken_policy_loaded_at_run_time_is_ejected_then_replaced(
    hogs: Daemon, workdir: Path, callback: str, how: str, kind: str
) -> None:
    path = workdir / "broken.py"
    path.write_text(broken_source(callback, how))
    out = cli("policy", "load", str(path), "--admin", hogs.admin)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("policy: broken (user policy)")

    state = wait_for(hogs, lambda s: s["exits"])
    assert state["policy"] == "fifo" and state["builtin"]
    (record,) = state["exits"]
    assert (record["kind"], record["policy"], record["callback"]) == (kind, "broken", callback)
    if how == "raise":
        assert record["message"] == "ValueError: broken on purpose"
    else:
        assert "over its bound of 50 ms" in record["message"]

    out = cli("policy", "show", "--admin", hogs.admin)
    assert out.returncode == 0 and "policy: fifo (built-in)" in out.stdout
    assert f"{kind}  broken  {callback}: " in out.stdout
    stats = json.loads(cli("stats", "--json", "--admin", hogs.admin).stdout)
    assert stats["policy"]["exits"] == [record]
    assert {t["name"] for t in stats["threads"]} == {"h/a", "h/b", "h/c"}  # none lost
    before = runtimes(stats)
    grants = cli("grants", "--admin", hogs.admin)
    assert grants.returncode == 0 and f"{kind}  broken  {callback}" in grants.stdout

    out = cli("policy", "set", "wfq", "--json", "--admin", hogs.admin)
    assert out.returncode == 0, out.stderr
    state = json.loads(out.stdout)
    assert (state["requested"], state["policy"], state["exits"]) == ("wfq", "wfq", [record])
    time.sleep(0.4)
    stats = json.loads(cli("stats", "--json", "--admin", hogs.admin).stdout)
    assert stats["policy"]["policy"] == "wfq"
    after = runtimes(stats)
    assert all(after[n][0] > before[n][0] for n in before), (before, after)  # all still run
    assert hogs.alive()
    ejected = [e for e in hogs.events() if e.get("event", "").startswith("policy ejected")]
    assert ejected and ejected[0]["kind"] == kind and ejected[0]["policy"] == "broken"


BAD_SOURCES = {
    "syntax": ("def (:\n", "syntax error"),
    "no POLICY": ("X = 1\n", "defines no POLICY"),
    "no enqueue": ("class P:\n    name = 'p'\nPOLICY = P()\n", "POLICY has no enqueue"),
    "raises": ("raise RuntimeError('nope')\n", "RuntimeError: nope"),
    "endless": ("while True:\n    pass\n", "loading took longer than 0.25 s"),
    "builtin name": ("class P:\n    name = 'wfq'\n    def enqueue(self, c, t, f): pass\n"
                     "POLICY = P()\n", "is a built-in policy's name"),
    "init raises": ("class P:\n    def __init__(self): raise OSError('no')\n"
                    "    def enqueue(self, c, t, f): pass\nPOLICY = P\n", "creating POLICY failed"),
}  # fmt: skip


def test_a_bad_policy_source_is_a_typed_error_and_changes_nothing(
    hogs: Daemon, workdir: Path
) -> None:
    admin(hogs, lambda s: s.set_policy("eevdf"))
    for label, (source, expected) in BAD_SOURCES.items():
        path = workdir / "bad.py"
        path.write_text(source)
        out = cli("policy", "load", str(path), "--admin", hogs.admin)
        assert out.returncode == 1, (label, out.stdout)
        assert out.stderr.startswith("invalidArgument: "), (label, out.stderr)
        assert expected in out.stderr, (label, out.stderr)
        assert one_line_error(out.stderr)
        state = admin(hogs, AdminSession.policy)
        assert (state["policy"], state["exits"]) == ("eevdf", []), label

    async def refused(session: AdminSession) -> list[str]:
        messages = []
        for name, source in [("bogus", ""), ("simple.py", ""), ("", SIMPLE.read_text()),
                             ("big.py", "#" * (256 * 1024 + 1))]:  # fmt: skip
            with pytest.raises(InvalidArgument) as info:
                await session.set_policy(name, source)
            messages.append(str(info.value))
        return messages

    messages = admin(hogs, refused)
    assert "unknown built-in policy 'bogus'" in messages[0]
    assert "unknown built-in policy 'simple.py'" in messages[1]
    assert "needs a name" in messages[2]
    assert "longer than 262144 characters" in messages[3]
    assert admin(hogs, AdminSession.policy)["policy"] == "eevdf"
    assert cli("policy", "load", str(workdir / "missing.py"), "--admin", hogs.admin).returncode == 1
    assert hogs.alive()


def test_a_policy_ejected_while_taking_over_fails_the_load(hogs: Daemon, workdir: Path) -> None:
    path = workdir / "bad_init.py"
    path.write_text(
        "class P:\n    name = 'badinit'\n    def init(self, ctx): raise KeyError('x')\n"
        "    def enqueue(self, ctx, t, f): pass\nPOLICY = P()\n"
    )
    out = cli("policy", "load", str(path), "--admin", hogs.admin)
    assert out.returncode == 1
    assert "policy: fifo (built-in)" in out.stdout
    assert "was ejected while taking over: error in init: KeyError: 'x'" in out.stderr
    assert one_line_error(out.stderr)


def test_stats_and_grants_show_a_watchdog_bypass_until_the_operator_ends_it(
    workdir: Path,
) -> None:
    # Weight 10000 against 1 on one CPU: after its first slice the light thread
    # legitimately waits ~40 s under a vtime policy, so a 20 ms watchdog
    # bypasses to the fallback. A user policy's bypass lasts until the operator
    # sets a policy (a built-in's ends by itself once stalls clear).
    d = Daemon(workdir, STARVED, args=("--watchdog-ms", "20", "--policy", str(SIMPLE)))
    try:
        state = wait_for(d, lambda s: s["bypass"] is not None)
        bypass = state["bypass"]
        assert state["policy"] == "fifo"
        assert (bypass["policy"], bypass["thread"], bypass["active"]) == ("simple", "h/light", True)
        assert bypass["waited_ns"] > 60_000_000 and bypass["ended_ns"] is None
        (record,) = state["exits"]
        assert (record["kind"], record["policy"], record["callback"]) == ("stall", "simple", None)
        for command in ("stats", "grants"):
            text = cli(command, "--admin", d.admin)
            assert text.returncode == 0, text.stderr
            assert "bypass: ACTIVE (h/light waited" in text.stdout, command
            doc = json.loads(cli(command, "--json", "--admin", d.admin).stdout)
            assert doc["policy"]["bypass"]["active"] is True, command
        # fifo, not a vtime policy: under eevdf the light thread would stall
        # again and a new bypass begin before the next command ran.
        out = cli("policy", "set", "fifo", "--json", "--admin", d.admin)
        state = json.loads(out.stdout)
        assert state["policy"] == "fifo" and state["bypass"]["active"] is False
        assert state["bypass"]["ended_ns"] >= bypass["at_ns"]
        assert "bypass: ended at" in cli("policy", "show", "--admin", d.admin).stdout
    finally:
        d.stop()


def test_policy_commands_refuse_usage_errors_without_a_daemon(workdir: Path) -> None:
    out = cli("policy", "set", "bogus", "--admin", f"unix:{workdir / 'none.sock'}")
    assert out.returncode == 2 and "'bogus' is not one of 'wfq', 'fifo', 'eevdf'" in out.stderr
    out = cli("policy", "show", "--admin", f"unix:{workdir / 'none.sock'}")
    assert out.returncode == 1 and out.stderr.startswith("disconnected: ")
    assert_no_traceback(out.stderr)
    for args in (("policy", "--help"), ("policy", "load", "--help")):
        out = cli(*args)
        assert out.returncode == 0 and "Examples:" in out.stdout


def test_a_bare_host_switches_too_and_bounds_a_source_off_the_main_thread(inproc: Any) -> None:
    # The in-process daemon runs trio off the main thread: the load guard is
    # the sys.settrace budget there, and it still ends an endless module body.
    async def go(session: AdminSession) -> list[Any]:
        states = [await session.set_policy("eevdf")]
        states.append(await session.set_policy("simple.py", SIMPLE.read_text()))
        with pytest.raises(InvalidArgument, match=r"loading took longer than 0\.25 s"):
            await session.set_policy("endless.py", "while True:\n    x = 1\n")
        states.append(await session.policy())
        return states

    async def main() -> list[Any]:
        async with await connect_admin(inproc.admin) as session:
            return await go(session)

    states = arun(main)
    assert [(s["policy"], s["builtin"]) for s in states] == [
        ("eevdf", True),
        ("simple", False),
        ("simple", False),
    ]
    assert inproc.call(lambda owner: owner.host.policy_status()["policy"]) == "simple"
