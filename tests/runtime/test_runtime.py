"""The trio runtime on real worker processes (short runs, coarse assertions only)."""

from __future__ import annotations

import itertools
import os
import signal
import threading

import pytest
import trio

from capos_sched.core import Policy, ThreadState
from capos_sched.runtime.runtime import MAX_WORKER_CRASHES, Runtime, RuntimeConfig
from capos_sched.runtime.trace import TraceRecorder
from capos_sched.runtime.workers import Worker
from capos_sched.workload import Hash, IpcClient, IpcServer, Sleeper, Spin

from .helpers import MS, by_name, dispatches, expected_hash, plan, run_for, thread, wait_until


async def test_runtime_is_charged_exactly_the_worker_measured_time() -> None:
    p = plan(
        thread("s/sleeper", Sleeper(burst_ns=1 * MS, period_ns=10 * MS)),
        thread("h/hog", Spin()),
        cpus=1,
    )
    _runtime, report, doc = await run_for(p, 0.5, trace=True)
    threads = by_name(report)
    assert doc is not None
    for name in ("s/sleeper", "h/hog"):
        measured = sum(e["args"]["elapsed_ns"] for e in dispatches(doc, name))
        assert threads[name]["runtime_ns"] == measured > 0
    # The sleeper computes 1 ms per wake: its runtime follows its work, not the clock.
    sleeper = threads["s/sleeper"]
    blocks = sleeper["voluntary_blocks"]
    assert blocks >= 5
    # Up to 1 ms of overrun per block: a worker descheduled by a busy host
    # mid-burst is charged that wall-clock time (time is real).
    assert blocks * MS <= sleeper["runtime_ns"] <= (blocks + 1) * MS + blocks * MS
    assert sleeper["runtime_ns"] < report["elapsed_ns"] * 0.4


async def test_accounting_stops_while_blocked() -> None:
    p = plan(thread("s/sleeper", Sleeper(burst_ns=2 * MS, period_ns=15 * MS)), cpus=1)
    runtime = Runtime(p)
    ref = runtime.thread_ref("s/sleeper")
    assert ref is not None
    seen: dict[int, set[int]] = {}  # blocked episode -> runtimes observed during it
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        for _ in range(150):
            snap = runtime.scheduler.snapshot_any(ref)
            if snap.state is ThreadState.BLOCKED:
                seen.setdefault(snap.voluntary_blocks, set()).add(snap.runtime_ns)
            await trio.sleep(0.002)
        runtime.request_stop("test")
    episodes = [runtimes for runtimes in seen.values()]
    assert len(episodes) >= 5
    # Within each blocked episode, the runtime never moved.
    assert all(len(runtimes) == 1 for runtimes in episodes)
    # ...and it grew between episodes (the thread ran in between).
    ordered = [next(iter(seen[k])) for k in sorted(seen)]
    assert ordered == sorted(ordered) and ordered[-1] > ordered[0]


async def test_sleeper_wakes_are_queued_on_its_last_cpu() -> None:
    p = plan(
        thread("h/a", Spin()),
        thread("h/b", Spin()),
        thread("h/c", Spin()),
        thread("s/sleeper", Sleeper(burst_ns=500_000, period_ns=7 * MS)),
        cpus=2,
    )
    _, report, doc = await run_for(p, 0.6, trace=True)
    assert doc is not None
    runs = dispatches(doc, "s/sleeper")
    wakes = sorted(
        (e for e in doc["traceEvents"] if e["ph"] == "i" and e["name"] == "wake s/sleeper"),
        key=lambda e: e["ts"],
    )
    assert len(wakes) >= 10
    checked = 0
    for wake in wakes:
        before = [r for r in runs if r["ts"] <= wake["ts"]]
        if before:
            assert wake["tid"] == before[-1]["tid"], (wake, before[-1])
            assert wake["args"]["reason"] == "timer"
            checked += 1
    assert checked >= 10
    assert by_name(report)["s/sleeper"]["wake_latency_ns"]["count"] >= 10


async def test_ipc_rendezvous_goes_through_the_callers_slot() -> None:
    p = plan(
        thread(
            "srv/server", IpcServer(endpoint="echo", service_ns=100_000), latency_class="ipcServer"
        ),
        thread("cli/client", IpcClient(endpoint="echo", burst_ns=100_000, count=150)),
        thread("bg/hog", Spin()),
        cpus=2,
    )
    _runtime, report, doc = await run_for(p, 10.0, trace=True)
    assert doc is not None
    assert report["stop_reason"] == "finished"
    client = by_name(report)["cli/client"]
    assert client["finished_ns"] is not None
    assert client["ipc_round_trip_ns"]["count"] == 150
    server_runs = dispatches(doc, "srv/server")
    client_runs = dispatches(doc, "cli/client")
    served = [e for e in server_runs if e["args"]["elapsed_ns"] > 0]
    assert len(served) == 150
    # Every service slice was taken from the direct-IPC slot of the CPU on
    # which the client had just made its call.
    for run in served:
        assert run["args"]["source"] == "ipcSlot"
        call = [c for c in client_runs if c["ts"] <= run["ts"]][-1]
        assert call["args"]["stop"] == "call"
        assert call["tid"] == run["tid"]
    assert by_name(report)["bg/hog"]["runtime_ns"] > 0


async def test_threads_migrate_between_worker_processes() -> None:
    p = plan(thread("h/a", Spin()), thread("h/b", Spin()), thread("h/c", Spin()), cpus=2)
    runtime, report, doc = await run_for(p, 0.8, trace=True)
    assert doc is not None
    assert len({w.pid for w in runtime.workers}) == 2
    cpus_of = {name: {e["tid"] for e in dispatches(doc, name)} for name in ("h/a", "h/b", "h/c")}
    # Three equal hogs on two CPUs: someone must move between the workers.
    assert any(cpus == {0, 1} for cpus in cpus_of.values()), cpus_of
    assert sum(t["migrations"] for t in report["threads"]) >= 1
    sources = {e["args"]["source"] for e in dispatches(doc)}
    assert "steal" in sources or sum(t["migrations"] for t in report["threads"]) >= 2
    migrations = [e for e in doc["traceEvents"] if e.get("cat") == "migration"]
    assert migrations
    # Coarse fairness: nobody is starved.
    runtimes = [t["runtime_ns"] for t in report["threads"]]
    assert min(runtimes) > 0.3 * max(runtimes)


async def test_weights_order_the_shares_under_wfq_and_not_under_fifo() -> None:
    threads = (thread("h/heavy", Spin(), 2048), thread("h/l1", Spin()), thread("h/l2", Spin()))
    _, wfq, _ = await run_for(plan(*threads, cpus=1), 0.6)
    _, fifo, _ = await run_for(plan(*threads, cpus=1, policy="fifo"), 0.6)
    w, f = by_name(wfq), by_name(fifo)
    assert wfq["policy"] == "wfq" and fifo["policy"] == "fifo"
    assert w["h/heavy"]["runtime_ns"] > 1.3 * max(w["h/l1"]["runtime_ns"], w["h/l2"]["runtime_ns"])
    assert f["h/heavy"]["runtime_ns"] < 1.3 * min(f["h/l1"]["runtime_ns"], f["h/l2"]["runtime_ns"])


async def test_watchdog_reports_a_stall_and_bypasses_to_fifo() -> None:
    # Weight 10000 against 1 on one CPU: WFQ legitimately gives the light thread
    # its first turn only after ~40 s. A tight watchdog must see that stall and
    # fall back to FIFO, after which the light thread runs.
    threads = (thread("h/heavy", Spin(), 10000), thread("h/light", Spin(), 1))
    runtime, report, _ = await run_for(
        plan(*threads, cpus=1),
        0.6,
        watchdog_threshold_ns=20 * MS,
        watchdog_bypass_ns=80 * MS,
    )
    assert report["watchdog"]["stalls"] >= 1
    bypass = report["watchdog"]["bypass"]
    assert bypass is not None and bypass["thread"] == "h/light"
    assert report["policy"] == "wfq" and report["policy_final"] == "fifo"
    assert runtime.scheduler.policy is Policy.FIFO
    assert by_name(report)["h/light"]["runtime_ns"] > 0


async def test_without_the_watchdog_the_light_thread_waits() -> None:
    threads = (thread("h/heavy", Spin(), 10000), thread("h/light", Spin(), 1))
    _, report, _ = await run_for(plan(*threads, cpus=1), 0.3)
    assert report["watchdog"]["bypass"] is None
    assert by_name(report)["h/light"]["runtime_ns"] == 0


async def _kill_worker_mid_slice(runtime: Runtime, k: int = 0) -> int:
    """SIGKILL CPU k's worker while it runs a slice; its pid (the restart is awaited)."""
    await wait_until(lambda: runtime.workers[k].busy)
    old_pid = runtime.workers[k].pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    await wait_until(lambda: runtime.workers[k].pid != old_pid)
    return old_pid


async def test_a_worker_crash_costs_only_the_slice_in_progress() -> None:
    p = plan(thread("h/a", Spin()), thread("h/b", Spin()), cpus=1)
    runtime = Runtime(p)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        await trio.sleep(0.15)
        before = {t["name"]: t["runtime_ns"] for t in runtime.report()["threads"]}
        old_pid = await _kill_worker_mid_slice(runtime)
        await trio.sleep(0.4)
        runtime.request_stop("test")
    report = runtime.report()
    assert [t for t in report["threads"] if t["failed"]] == []
    crashed = [t for t in report["threads"] if t["worker_crashes"]]
    assert len(crashed) == 1 and crashed[0]["worker_crashes"] == 1
    for t in report["threads"]:  # both went on running, the crashed one included
        assert t["runtime_ns"] - before[t["name"]] > 50 * MS, t
        ref = runtime.thread_ref(t["name"])
        assert ref is not None and runtime.scheduler.is_live(ref)
    assert report["workers"]["restarts"] == 1
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)


async def test_a_hash_thread_keeps_its_progress_across_a_worker_crash() -> None:
    p = plan(thread("h/h", Hash(blocks=64, block_size=64 * 1024, rounds=40)), cpus=1)
    runtime = Runtime(p)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        await trio.sleep(0.1)
        await _kill_worker_mid_slice(runtime)
    report = runtime.report()
    rt = runtime.thread("h/h")
    assert rt is not None and rt.hash is not None
    assert report["threads"][0]["failed"] is None
    assert report["threads"][0]["worker_crashes"] == 1
    assert rt.hash.position == rt.hash.end
    assert rt.hash.acc == expected_hash(rt.hash.data_id, 64, 64 * 1024, 40)


async def test_crashes_separated_by_completed_slices_do_not_fail_a_thread() -> None:
    runtime = Runtime(plan(thread("h/a", Spin()), cpus=1))
    rt = runtime.thread("h/a")
    assert rt is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        for _ in range(MAX_WORKER_CRASHES):
            await _kill_worker_mid_slice(runtime)
            target = rt.dispatches + 2
            await wait_until(lambda target=target: rt.dispatches > target)
        runtime.request_stop("test")
    t = runtime.report()["threads"][0]
    assert t["worker_crashes"] == MAX_WORKER_CRASHES and t["failed"] is None, t


async def test_repeated_worker_crashes_under_one_thread_fail_it() -> None:
    # 1 s slices: no slice completes between a restart and the next kill.
    p = plan(thread("h/a", Spin()), cpus=1, slice_ns=1000 * MS)
    runtime = Runtime(p)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        for _ in range(MAX_WORKER_CRASHES):
            await _kill_worker_mid_slice(runtime)
        runtime.request_stop("test")
    t = runtime.report()["threads"][0]
    assert t["worker_crashes"] == MAX_WORKER_CRASHES
    assert f"{MAX_WORKER_CRASHES} worker crashes in a row" in t["failed"]
    assert "SIGKILL" in t["failed"]


async def test_interactive_wakes_preempt_the_running_slice() -> None:
    threads = (
        thread("h/hog", Spin()),
        thread(
            "t/typist", Sleeper(burst_ns=200_000, period_ns=5 * MS), latency_class="interactive"
        ),
    )
    _, on, doc = await run_for(plan(*threads, cpus=1), 0.6, trace=True)
    _, off, off_doc = await run_for(plan(*threads, cpus=1), 0.6, trace=True, wake_preemption=False)
    assert doc is not None and off_doc is not None
    # On a loaded machine a starved worker may see its deadline before the flag,
    # so only a few of the raised flags are required to have cut a slice.
    assert on["wake_preemptions"] >= 5, on["wake_preemptions"]
    cut = [e for e in dispatches(doc, "h/hog") if e["args"]["preempted"]]
    assert len(cut) >= 2, len(cut)
    assert all(e["args"]["elapsed_ns"] < e["args"]["budget_ns"] for e in cut)
    # Without wake-up preemption only the final stop cuts a slice short.
    assert off["wake_preemptions"] == 0
    assert len([e for e in dispatches(off_doc, "h/hog") if e["args"]["preempted"]]) <= 1


async def test_hash_threads_hash_their_data_across_workers() -> None:
    spec = Hash(blocks=8, block_size=64 * 1024, rounds=40)
    p = plan(thread("x/h0", spec), thread("x/h1", spec), thread("x/h2", spec), cpus=2)
    runtime, report, _ = await run_for(p, 20.0)
    assert report["stop_reason"] == "finished"
    for data_id, name in enumerate(("x/h0", "x/h1", "x/h2"), start=1):
        rt = runtime.thread(name)
        assert rt is not None and rt.hash is not None
        assert rt.hash.position == 8 * 40
        assert rt.hash.acc == expected_hash(data_id, 8, 64 * 1024, 40)
        assert by_name(report)[name]["finished_ns"] is not None


async def test_plan_swap_starts_new_threads_and_stops_removed_ones() -> None:
    first = plan(thread("h/a", Spin()), thread("h/b", Spin()), cpus=1)
    second = plan(thread("h/a", Spin(), 2048), thread("h/c", Spin()), cpus=1)
    runtime = Runtime(first)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        await trio.sleep(0.2)
        change = runtime.apply_plan(second)
        assert change.added == ("h/c",) and change.removed == ("h/b",)
        await trio.sleep(0.02)
        b_at_swap = runtime.report()["threads"][1]["runtime_ns"]
        await trio.sleep(0.3)
        runtime.request_stop("test")
    report = runtime.report()
    threads = {(t["name"], t["removed"]): t for t in report["threads"]}
    assert threads[("h/b", True)]["runtime_ns"] == b_at_swap
    # It ran (charged CPU time, which a loaded host may give it little of).
    assert threads[("h/c", False)]["runtime_ns"] > 0
    assert threads[("h/a", False)]["weight"] == 2048


async def test_stop_from_another_thread() -> None:
    runtime = Runtime(plan(thread("h/a", Spin()), cpus=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        assert runtime.trio_token is not None
        stopper = threading.Timer(0.2, runtime.request_stop_threadsafe, args=("elsewhere",))
        stopper.start()
        with trio.fail_after(10):
            while runtime.running:
                await trio.sleep(0.01)
    assert runtime.report()["stop_reason"] == "elsewhere"
    assert all(w.process is not None and w.process.returncode is not None for w in runtime.workers)


async def test_trace_document_structure() -> None:
    p = plan(
        thread("h/a", Spin()),
        thread("h/b", Spin()),
        thread("h/c", Spin()),
        thread("s/sleeper", Sleeper(burst_ns=300_000, period_ns=5 * MS)),
        cpus=2,
    )
    recorder = TraceRecorder(2)
    runtime = Runtime(p, config=RuntimeConfig(), trace=recorder)
    await runtime.run(duration_s=0.5)
    doc = recorder.document()
    events = doc["traceEvents"]
    names = {(e["tid"], e["args"]["name"]) for e in events if e["name"] == "thread_name"}
    assert names == {(0, "CPU 0"), (1, "CPU 1")}
    slices = [e for e in events if e["ph"] == "X"]
    assert {e["name"] for e in slices} == {"h/a", "h/b", "h/c", "s/sleeper"}
    for e in slices:
        assert e["tid"] in (0, 1) and e["pid"] == 1
        assert e["ts"] >= 0 and e["dur"] >= 0
    for cpu in (0, 1):  # slices on one CPU track never overlap
        track = sorted((e for e in slices if e["tid"] == cpu), key=lambda e: e["ts"])
        for a, b in itertools.pairwise(track):
            assert a["ts"] + a["dur"] <= b["ts"] + 1e-3
    instants = [e for e in events if e["ph"] == "i"]
    assert any(e["cat"] == "wake" for e in instants)
    assert any(e["cat"] == "migration" for e in instants)
    assert all(e["s"] == "t" for e in instants)


@pytest.mark.slow
async def test_workers_outlive_trios_thread_cache() -> None:
    # Regression: workers forked from trio's cached helper thread were SIGKILLed
    # by their PR_SET_PDEATHSIG when that thread retired (10 s idle).
    _, report, _ = await run_for(plan(thread("h/a", Spin()), cpus=1), 12.5)
    assert report["workers"]["restarts"] == 0
    assert not [t for t in report["threads"] if t["failed"]]
    assert by_name(report)["h/a"]["runtime_ns"] > 10e9 * 0.5


@pytest.mark.parametrize("sched_idle", [True, False])
async def test_worker_scheduling_class_follows_the_config(sched_idle: bool) -> None:
    config = RuntimeConfig(sched_idle=sched_idle)
    runtime = Runtime(plan(thread("h/a", Spin()), cpus=1), config=config)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        pid = runtime.workers[0].pid
        assert pid is not None
        policy = os.sched_getscheduler(pid)
        niceness = os.getpriority(os.PRIO_PROCESS, pid) - os.getpriority(os.PRIO_PROCESS, 0)
        runtime.request_stop("checked")
    assert policy == (os.SCHED_IDLE if sched_idle else os.SCHED_OTHER)
    assert niceness == config.nice  # reniced either way
    assert runtime.report()["workers"]["sched_idle"] is sched_idle


async def test_a_thread_removed_while_running_is_cut_short() -> None:
    # A 400 ms batch budget: the removed thread must not run it out.
    slice_ns = 100 * MS
    first = plan(thread("h/a", Spin()), thread("h/b", Spin(), 1024, "batch"), slice_ns=slice_ns)
    recorder = TraceRecorder(1)
    runtime = Runtime(first, trace=recorder)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        b = runtime.thread_ref("h/b")
        assert b is not None
        await wait_until(
            lambda: (
                runtime.scheduler.snapshot(b).state is ThreadState.RUNNING
                and runtime.workers[0].busy
            )
        )
        runtime.apply_plan(plan(thread("h/a", Spin()), slice_ns=slice_ns))
        await wait_until(lambda: not runtime.scheduler.is_live(b))
        runtime.request_stop("test")
    last = dispatches(recorder.document(), "h/b")[-1]["args"]
    assert last["budget_ns"] == 4 * slice_ns
    assert last["preempted"] and last["elapsed_ns"] < last["budget_ns"]


async def test_a_stop_raised_before_the_request_is_sent_still_cuts_the_slice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stop arrives while the CPU task maps the hash data (before it sends
    # the request): the flag raised then must survive until the kernel polls it.
    slice_ns = 100 * MS
    spec = Hash(blocks=4, block_size=4096, rounds=1_000_000)
    recorder = TraceRecorder(1)
    runtime = Runtime(plan(thread("x/h", spec, 1024, "batch"), slice_ns=slice_ns), trace=recorder)
    attach = Worker.attach

    async def attach_then_stop(self: Worker, *args: int) -> None:
        await attach(self, *args)
        runtime.request_stop("during attach")
        await trio.sleep(0.05)  # the run task raises every flag meanwhile

    monkeypatch.setattr(Worker, "attach", attach_then_stop)
    await runtime.run(duration_s=10)
    [only] = dispatches(recorder.document(), "x/h")
    assert only["args"]["budget_ns"] == 4 * slice_ns
    assert only["args"]["preempted"] and only["args"]["elapsed_ns"] < 4 * slice_ns


async def test_a_server_removed_mid_call_releases_its_client() -> None:
    client = thread("c/client", IpcClient("e", burst_ns=0, count=1))
    server = thread("s/server", IpcServer("e", service_ns=10**12), latency_class="ipcServer")
    runtime = Runtime(plan(client, server, cpus=1))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            await wait_until(lambda: runtime.scheduler.serving(runtime.thread_ref("s/server")))
            runtime.apply_plan(plan(client, cpus=1))  # the server leaves mid-call
    # The client's only call ended unanswered, so it finished and so did the run.
    report = runtime.report()
    assert report["stop_reason"] == "finished"
    assert by_name(report)["c/client"]["finished_ns"] is not None


async def test_a_plan_staged_in_steps_runs_nameless_until_commit_and_abort_kills_it() -> None:
    """Stepped loads (rpc/loads.py): staged threads run, but no name reaches them
    before the commit; an abort kills them; a commit names them."""
    sleepy = thread("s/sleepy", Sleeper(burst_ns=0, period_ns=60 * 10**9))  # parks the CPU
    first, second = plan(sleepy, cpus=1), plan(sleepy, thread("h/c", Spin()), cpus=1)
    runtime = Runtime(first)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        await trio.sleep(0.05)  # the CPU parks: nothing to run
        staged = runtime.stage_plan(second)
        assert runtime.spawn_step(staged, runtime.now_ns(), 1) is True
        (ref,) = staged.spawned.values()
        await wait_until(lambda: runtime.scheduler.snapshot(ref).runtime_ns > 0)
        assert runtime.thread_ref("h/c") is None  # staged: running, but nameless
        runtime.abort_plan(staged, runtime.now_ns())
        await wait_until(lambda: not runtime.scheduler.is_live(ref))
        again = runtime.stage_plan(second)
        runtime.spawn_step(again, runtime.now_ns(), 10)
        change = runtime.commit_plan(again)
        assert change.added == ("h/c",)
        assert runtime.thread_ref("h/c") == again.spawned["h/c"]
        runtime.request_stop("test")
