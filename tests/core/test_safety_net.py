"""The safety net on the simulator: a broken policy is ejected with its exit
record, and every thread continues under fifo with its accounting intact."""

from __future__ import annotations

import pytest

from capos_sched.core import FALLBACK_POLICY, ExitKind, Scheduler
from capos_sched.policy_files import AlarmGuard, resolve_policy
from capos_sched.sim import Simulator
from capos_sched.workload import IpcClient, IpcServer, Sleeper, Spin

MS = 1_000_000
SIMPLE = "examples/policies/simple.py"


class Broken:
    """The example policy, broken in one way."""

    def __init__(self, how: str, callback: str = "") -> None:
        self.inner = resolve_policy(SIMPLE).create()
        self.name = f"broken-{how}-{callback}"
        self.how, self.callback, self.calls = how, callback, 0
        for name in ("init", "select_cpu", "enqueue", "dispatch", "running", "stopping",
                     "set_weight", "init_thread", "exit_thread", "tick"):  # fmt: skip
            if hasattr(self.inner, name) or name == callback:
                setattr(self, name, self._wrap(name))

    def _wrap(self, name: str):
        inner = getattr(self.inner, name, None)

        def callback(ctx, *args):
            self.calls += 1
            if name == self.callback and self.calls > 20:  # break only once running
                if self.how == "raise":
                    raise RuntimeError(f"boom in {name}")
                if self.how == "loop":
                    while True:
                        pass
            if self.how == "bad-cpu" and name == "dispatch" and self.calls > 20:
                return ctx.move_to_local(0, ctx.nr_cpus + 3)
            if self.how == "bad-dsq" and name == "enqueue" and self.calls > 20:
                return ctx.insert(args[0], 4242, key=0)
            if self.how == "drop" and name == "enqueue" and self.calls > 20:
                return None
            if self.how == "never" and name == "dispatch":
                return None
            return inner(ctx, *args) if inner is not None else None

        return callback


def machine(policy, cpus: int = 2, watchdog_ns: int | None = None) -> Simulator:
    sim = Simulator(
        cpus, policy, seed=1, jitter=0.1, guard=AlarmGuard(20 * MS), watchdog_ns=watchdog_ns
    )
    sim.add_thread("hog-a", Spin(), weight=2048)
    sim.add_thread("hog-b", Spin())
    sim.add_thread("sleeper", Sleeper(300_000, 2 * MS), latency_class="interactive")
    sim.add_thread("client", IpcClient("echo", burst_ns=50_000))
    sim.add_thread("server", IpcServer("echo", service_ns=20_000), latency_class="ipcServer")
    return sim


def assert_ejected(sim: Simulator, report: dict, kind: ExitKind, callback: str | None) -> dict:
    assert report["policy_final"] == FALLBACK_POLICY
    (record,) = report["policy_exits"]
    assert record["kind"] == kind.value and record["callback"] == callback, record
    assert record["policy"] == sim._initial_policy and record["message"]
    assert 0 < record["at_ns"] < report["elapsed_ns"]
    # No thread lost: every one is still there, and the machine kept busy.
    assert [t["name"] for t in report["threads"]][:5] == [
        "hog-a", "hog-b", "sleeper", "client", "server"
    ]  # fmt: skip
    for thread in report["threads"]:
        assert thread["runtime_ns"] > 0, thread
    sim.core.check_invariants()
    return record


CALLBACKS = ["select_cpu", "enqueue", "dispatch", "running", "stopping", "init_thread"]


@pytest.mark.parametrize("callback", CALLBACKS)
def test_a_raising_callback_is_ejected(callback):
    sim = machine(Broken("raise", callback))
    if callback == "init_thread":  # only called for new threads: add one later
        sim.at(50 * MS, lambda: sim.add_thread("late", Spin()))
    report = sim.run(400 * MS)
    record = assert_ejected(sim, report, ExitKind.ERROR, callback)
    assert f"RuntimeError: boom in {callback}" in record["message"]
    busy = sum(t["runtime_ns"] for t in report["threads"])
    assert busy >= 0.95 * 2 * report["elapsed_ns"]  # both CPUs kept working under fifo


def test_a_raising_set_weight_is_ejected():
    sim = machine(Broken("raise", "set_weight"))
    refs = [t.ref for t in sim.core.threads()]
    for k in range(30):
        sim.at((k + 1) * MS, lambda k=k: sim.core.set_weight(refs[k % 2], 100 + k))
    report = sim.run(200 * MS)
    assert_ejected(sim, report, ExitKind.ERROR, "set_weight")


def test_an_endless_loop_is_cut_by_the_guard():
    sim = machine(Broken("loop", "dispatch"))
    report = sim.run(200 * MS)
    record = assert_ejected(sim, report, ExitKind.TIMEOUT, "dispatch")
    assert "over its bound of 20 ms" in record["message"]


@pytest.mark.parametrize(("how", "callback"), [("bad-cpu", "dispatch"), ("bad-dsq", "enqueue")])
def test_an_invalid_insert_is_ejected(how, callback):
    sim = machine(Broken(how))
    report = sim.run(200 * MS)
    record = assert_ejected(sim, report, ExitKind.INVALID, callback)
    assert ("outside" in record["message"]) if how == "bad-cpu" else ("no DSQ" in record["message"])


def test_a_dropped_thread_is_ejected():
    sim = machine(Broken("drop"))
    report = sim.run(200 * MS)
    record = assert_ejected(sim, report, ExitKind.INVALID, "enqueue")
    assert "dropped" in record["message"]


def test_a_policy_that_never_dispatches_is_ejected_for_stalling():
    sim = machine(Broken("never"), watchdog_ns=50 * MS)
    report = sim.run(400 * MS)
    record = assert_ejected(sim, report, ExitKind.STALL, None)
    assert 50 * MS < record["at_ns"] <= 80 * MS  # caught within a watchdog period


def test_the_watchdog_leaves_a_working_policy_alone():
    sim = machine("wfq", watchdog_ns=50 * MS)
    report = sim.run(400 * MS)
    assert report["policy_final"] == "wfq" and report["policy_exits"] == []


def test_the_operator_can_set_a_policy_again_after_an_ejection():
    sim = machine(Broken("raise", "enqueue"))
    sim.at(200 * MS, lambda: sim.set_policy(resolve_policy(SIMPLE).create()))
    report = sim.run(400 * MS)
    assert report["policy_final"] == "simple"
    assert [e["kind"] for e in report["policy_exits"]] == ["error"]


def test_hot_swap_under_load_conserves_runtime():
    sim = machine("wfq")
    seen = []

    def switch(policy):
        before = {t.name: (t.runtime_ns, t.virtual_runtime_ns) for t in sim.core.threads()}
        sim.set_policy(policy)
        after = {t.name: (t.runtime_ns, t.virtual_runtime_ns) for t in sim.core.threads()}
        assert after == before  # a switch changes no thread's accounting
        sim.core.check_invariants()
        seen.append(sim.core.policy_name)

    for k, policy in enumerate(["eevdf", resolve_policy(SIMPLE).create(), "fifo", "wfq"]):
        sim.at((k + 1) * 100 * MS, lambda p=policy: switch(p))
    report = sim.run(500 * MS)
    assert seen == ["eevdf", "simple", "fifo", "wfq"] and report["policy_exits"] == []
    busy = sum(t["runtime_ns"] for t in report["threads"])
    assert busy >= 0.95 * 2 * report["elapsed_ns"]  # no CPU left idle by a switch
    hogs = {t["name"]: t["runtime_ns"] for t in report["threads"] if t["name"].startswith("hog")}
    assert hogs["hog-a"] > hogs["hog-b"]  # weights were honoured (fifo's 100 ms aside)


def test_a_broken_policy_object_is_refused_at_install():
    with pytest.raises(Exception, match="no enqueue"):
        Scheduler(1, object())


def test_host_contention_is_not_a_stall():
    # One CPU: a is dispatched at 0, but the driver (a starved daemon) only
    # gets to stop it 10 s later; the worker measured 4 ms. b waited 10 s of
    # wall time, yet the machine ran other work for only 4 ms: no stall.
    s = Scheduler(1)
    a = s.spawn("a", 0).thread
    b = s.spawn("b", 0).thread
    assert s.pick_next(0, 0).thread == a
    s.preempt_current(0, 10_000 * MS, 4 * MS)
    assert s.stalls(10_000 * MS, 1_000 * MS) == []
    # Real waits do count: b waits behind 300 slices of a's run time.
    assert s.pick_next(0, 10_000 * MS).thread == b
    s.preempt_current(0, 10_000 * MS, 0)
    s.set_weight(b, 1)  # b now waits ~1024 slices per turn
    now = 10_000 * MS
    for _ in range(300):
        if s.pick_next(0, now).thread == b:
            break
        now += 4 * MS
        s.preempt_current(0, now, 4 * MS)
    (stall,) = s.stalls(now, 1_000 * MS)
    assert stall.name == "b" and stall.judged_ns == stall.waited_ns > 1_000 * MS
