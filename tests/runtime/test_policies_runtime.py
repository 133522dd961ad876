"""Policies on the real runtime: user files run, broken ones are ejected with
their record and lose no thread, and a live switch conserves accounting."""

from __future__ import annotations

import pytest
import trio

from capos_sched.policy_files import AlarmGuard, resolve_policy
from capos_sched.runtime.runtime import Runtime, RuntimeConfig
from capos_sched.workload import Sleeper, Spin

from .helpers import MS, by_name, plan, thread

SIMPLE = "examples/policies/simple.py"


class Breaks:
    """The example policy; after ``after`` calls ``callback`` raises or loops."""

    def __init__(self, how: str, callback: str, after: int = 30) -> None:
        self.inner = resolve_policy(SIMPLE).create()
        self.name, self.how, self.callback, self.after, self.calls = (
            f"b-{how}",
            how,
            callback,
            after,
            0,
        )
        for name in ("init", "select_cpu", "enqueue", "dispatch", "running"):
            setattr(self, name, self._wrap(name))

    def _wrap(self, name):
        inner = getattr(self.inner, name)

        def callback(ctx, *args):
            self.calls += 1
            if name == self.callback and self.calls > self.after:
                if self.how == "raise":
                    raise ValueError("broken on purpose")
                while True:  # "loop"
                    pass
            return inner(ctx, *args)

        return callback


def machine():
    return plan(
        thread("h/a", Spin(), 2048),
        thread("h/b", Spin()),
        thread("s/sleeper", Sleeper(burst_ns=MS, period_ns=5 * MS)),
        cpus=2,
    )


@pytest.mark.parametrize(("how", "callback", "kind"), [
    ("raise", "enqueue", "error"), ("loop", "dispatch", "timeout"),
])  # fmt: skip
async def test_a_broken_user_policy_is_ejected_on_the_runtime(how, callback, kind) -> None:
    runtime = Runtime(
        machine(), Breaks(how, callback), config=RuntimeConfig(), guard=AlarmGuard(20 * MS)
    )
    await runtime.run(duration_s=0.6)
    report = runtime.report()
    assert report["policy"] == f"b-{how}" and report["policy_final"] == "fifo"
    (record,) = report["policy_exits"]
    assert (record["kind"], record["callback"]) == (kind, callback)
    threads = by_name(report)
    assert set(threads) == {"h/a", "h/b", "s/sleeper"}
    assert all(t["runtime_ns"] > 0 for t in threads.values())  # none lost
    runtime.scheduler.check_invariants()


async def test_hot_swap_on_the_runtime_conserves_accounting() -> None:
    runtime = Runtime(machine(), "wfq", guard=AlarmGuard())
    switches = ["eevdf", resolve_policy(SIMPLE).create(), "fifo", "wfq"]
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        for policy in switches:
            await trio.sleep(0.15)
            before = {
                t.name: (t.runtime_ns, t.virtual_runtime_ns) for t in runtime.scheduler.threads()
            }
            runtime.set_policy(policy)
            after = {
                t.name: (t.runtime_ns, t.virtual_runtime_ns) for t in runtime.scheduler.threads()
            }
            assert after == before
            runtime.scheduler.check_invariants()
        await trio.sleep(0.15)
        runtime.request_stop("test")
    report = runtime.report()
    assert report["policy_final"] == "wfq" and report["policy_exits"] == []
    threads = by_name(report)
    assert all(t["runtime_ns"] > 0 for t in threads.values())
    busy = threads["h/a"]["runtime_ns"] + threads["h/b"]["runtime_ns"]
    assert busy >= 0.6 * report["elapsed_ns"]  # the hogs kept both CPUs mostly busy
