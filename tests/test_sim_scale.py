"""The simulator at scale (issue 12, section 1): determinism, work per event
counted by operations (never wall time), the progress line, and `bench sim`.

The cost tests count accesses with counting containers swapped in for the
structures a scan would walk: the simulator's threads, and WFQ's list of
per-CPU queues (a walk over the siblings, or a least-loaded scan over the
CPUs, reads every element of it).
"""

from __future__ import annotations

import hashlib
import heapq
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from bench.sim import heapq_baseline, manifest_text
from capos_sched.cli import main
from capos_sched.core import Scheduler
from capos_sched.manifest import load_plan_text
from capos_sched.runtime.progress import SimProgress
from capos_sched.runtime.simulate import simulate_plan
from capos_sched.sim import Simulator
from capos_sched.workload import Hash, IpcClient, IpcServer, Sleeper, Spin

MS = 1_000_000


class CountingList(list):
    """A list that counts the elements read from it (index or iteration)."""

    reads = 0

    def __getitem__(self, index):  # type: ignore[override]
        CountingList.reads += 1
        return super().__getitem__(index)

    def __iter__(self):  # type: ignore[override]
        for item in super().__iter__():
            CountingList.reads += 1
            yield item


class CountingDict(dict):
    """A dict that counts whole-dict walks (values, items, keys, iteration)."""

    walks = 0

    def values(self):  # type: ignore[override]
        CountingDict.walks += 1
        return super().values()

    def items(self):  # type: ignore[override]
        CountingDict.walks += 1
        return super().items()

    def __iter__(self):  # type: ignore[override]
        CountingDict.walks += 1
        return super().__iter__()


def mixed_plan(threads: int, cpus: int, seed: int = 0):
    return load_plan_text(manifest_text("mixed", threads, cpus, seed), "mixed.cue")


# ------------------------------------------------------------- determinism


def test_same_seed_same_report_at_moderate_scale() -> None:
    plan = mixed_plan(600, 16, seed=4)
    first = simulate_plan(plan, duration_ns=150 * MS, seed=9, jitter=0.05)
    second = simulate_plan(plan, duration_ns=150 * MS, seed=9, jitter=0.05)
    assert first == second
    assert sum(t["voluntary_blocks"] for t in first["threads"]) > 1000  # sleepers ran
    other = simulate_plan(plan, duration_ns=150 * MS, seed=10, jitter=0.05)
    assert other != first  # the seed matters: the test can tell runs apart


PINNED_REPORT_SHA256 = "964c047675a0ed8fd4cfd69e7fde6e19672e5e8302bb2032dbda2e5844a9f936"
"""The sha256 of the sorted-key JSON report of ``pinned_run()``, as the
simulator computed it before it was made faster (main at 6a53e57). A change
of the simulated outcome, even of one nanosecond of one thread, changes it:
update it only for a change of the model that is meant (and say so)."""


def pinned_run() -> dict:
    """Every stop kind and both timer paths: hogs, sleepers of three periods
    (three timer queues), IPC pairs, finite spins and hashes, with jitter."""
    sim = Simulator(16, "wfq", seed=7, jitter=0.05)
    rng = random.Random(3)
    for k in range(120):
        sim.add_thread(f"hog{k}", Spin(), rng.randint(1, 4096))
    for k in range(200):
        period = (5 * MS, 2 * MS, 7 * MS)[k % 3]
        sleeper = Sleeper(burst_ns=200_000, period_ns=period)
        sim.add_thread(f"sleeper{k}", sleeper, rng.randint(1, 4096), "interactive")
    for k in range(4):
        sim.add_thread(f"server{k}", IpcServer(endpoint=f"e{k}", service_ns=50_000))
        sim.add_thread(f"client{k}", IpcClient(endpoint=f"e{k}", burst_ns=100_000, count=300))
    for k in range(6):
        sim.add_thread(f"finite{k}", Spin(total_ns=(k + 1) * 20 * MS))
        sim.add_thread(f"hash{k}", Hash(blocks=4, block_size=65536, rounds=k + 1))
    return sim.run(300 * MS)


def test_the_simulated_outcome_is_pinned() -> None:
    # Kills: any change of what the simulator computes (an event order, a
    # jitter draw, a wake placement) made while making it faster.
    report = pinned_run()
    threads = report["threads"]
    totals = (
        sum(t["runtime_ns"] for t in threads),
        sum(t["context_switches"] for t in threads),
        sum(t["voluntary_blocks"] for t in threads),
        sum(t["preemptions"] for t in threads),
        sum(t["migrations"] for t in threads),
        sum((t["ipc_round_trip_ns"] or {}).get("count", 0) for t in threads),
        sum((t["wake_latency_ns"] or {}).get("count", 0) for t in threads),
    )
    assert totals == (4_800_000_000, 17935, 12503, 5410, 1134, 282, 11741)  # readable first
    digest = hashlib.sha256(json.dumps(report, sort_keys=True).encode()).hexdigest()
    assert digest == PINNED_REPORT_SHA256


def test_the_generated_manifests_are_a_function_of_the_seed() -> None:
    assert manifest_text("mixed", 300, 8, 1) == manifest_text("mixed", 300, 8, 1)
    assert manifest_text("mixed", 300, 8, 1) != manifest_text("mixed", 300, 8, 2)
    plan = mixed_plan(1000, 8)
    sleepers = sum(isinstance(t.workload, Sleeper) for t in plan.threads())
    assert 250 <= sleepers <= 350  # 30% interactive
    assert all(
        t.latency_class.wire_name == "interactive"
        for t in plan.threads()
        if isinstance(t.workload, Sleeper)
    )


# ------------------------------------------------------------ work per event


def hog_sim(threads: int, cpus: int, *, count_queues: bool = False) -> Simulator:
    sim = Simulator(cpus, "wfq", seed=1, jitter=0.02)
    if count_queues:
        policy = sim.core.policy_object
        policy.queues = CountingList(policy.queues)
    rng = random.Random(threads)
    for k in range(threads):
        sim.add_thread(f"t{k}", Spin(), rng.randint(1, 4096))
    return sim


def test_per_event_work_does_not_walk_the_threads() -> None:
    walks = {}
    for threads in (200, 2000):
        sim = hog_sim(threads, 8)
        sim._threads = CountingDict(sim._threads)  # white-box: the walk a scan would do
        sim.core._threads = CountingDict(sim.core._threads)
        CountingDict.walks = 0
        sim.run(100 * MS)
        walks[threads] = CountingDict.walks
        assert sim.events > 150
    # the report walks the threads once; nothing walks them per event
    assert walks[200] == walks[2000] <= 4, walks


def test_the_event_heap_follows_the_cpus_not_the_sleepers() -> None:
    # Kills: a timer per sleeper in the heap (its cost per event would grow
    # with the log of the sleeper count); one per period stands there instead.
    sizes = {}
    for sleepers in (100, 2000):
        sim = Simulator(8, "wfq", seed=2, jitter=0.02)
        for k in range(sleepers):
            period = (5 * MS, 3 * MS)[k % 2]
            sim.add_thread(f"s{k}", Sleeper(burst_ns=20_000, period_ns=period), None, "interactive")
        largest = [0]

        def progress(
            _now: int, _end: int, _events: int, sim: Simulator = sim, largest: list = largest
        ) -> None:
            largest[0] = max(largest[0], len(sim._events))  # white-box: the heap

        report = sim.run(60 * MS, progress, progress_every=1)
        assert sum(t["voluntary_blocks"] for t in report["threads"]) > sleepers  # they slept
        sizes[sleepers] = largest[0]
    # a stop and a kick per CPU, the first timer of each of the two periods
    assert sizes[2000] <= 2 * 8 + 2 + 1, sizes


def test_finite_threads_end_the_run_without_a_scan() -> None:
    sim = Simulator(2, "wfq")
    for k in range(4):
        sim.add_thread(f"f{k}", Spin(total_ns=(k + 1) * MS))
    sim.add_thread("sleeper", Sleeper(burst_ns=MS // 10, period_ns=MS))
    sim._threads = CountingDict(sim._threads)
    CountingDict.walks = 0
    report = sim.run(10_000 * MS)
    assert report["elapsed_ns"] < 20 * MS  # ended when the last finite thread finished
    assert all(t["finished_ns"] for t in report["threads"] if t["name"].startswith("f"))
    assert CountingDict.walks <= 1  # the report


def test_picks_do_not_walk_the_sibling_queues() -> None:
    per_event = {}
    for cpus in (8, 64):
        sim = hog_sim(8 * cpus, cpus, count_queues=True)
        CountingList.reads = 0
        sim.run(200 * MS)
        per_event[cpus] = CountingList.reads / sim.events
    # a walk over the siblings reads every queue at every pick: >= 63 reads at 64 CPUs
    assert per_event[64] < 8, per_event
    assert per_event[64] < 2 * per_event[8] + 1, per_event


def test_least_loaded_spawns_do_not_scan_the_cpus() -> None:
    s = Scheduler(64)
    policy = s.policy_object
    policy.queues = CountingList(policy.queues)
    CountingList.reads = 0
    cpus = [s.snapshot(s.spawn(f"t{k}", 0).thread).cpu for k in range(640)]
    assert CountingList.reads / 640 < 8  # a scan reads all 64 queues per spawn
    assert cpus[:64] == list(range(64))  # least loaded, ties to the lowest CPU
    assert sorted(cpus) == sorted(list(range(64)) * 10)  # evenly spread
    s.check_invariants()


def test_least_loaded_follows_the_running_and_queued_counts() -> None:
    # Kills: a load tree that misses a change (running, a steal, an exit).
    s = Scheduler(3)
    a = s.spawn("a", 0).thread  # CPU 0
    b = s.spawn("b", 0).thread  # CPU 1
    s.spawn("c", 0)  # CPU 2
    s.pick_next(0, 0)  # a runs on 0: loads 1, 1, 1
    assert s.pick_next(1, 0).thread == b  # b runs on 1
    s.kill(a, 0)  # running: exits when CPU 0 stops it
    s.preempt_current(0, MS, MS)  # a exits: CPU 0 is idle, loads 0, 1, 1
    s.check_invariants()
    assert s.snapshot(s.spawn("d", MS).thread).cpu == 0
    s.block_current(1, 2 * MS, MS)  # b blocks: loads 1, 0, 1
    assert s.snapshot(s.spawn("e", 2 * MS).thread).cpu == 1
    s.check_invariants()


def test_least_loaded_sees_a_queued_thread_exit() -> None:
    # Kills: exit_thread not marking the CPU of a killed queued thread.
    s = Scheduler(3)
    refs = [s.spawn(name, 0).thread for name in "abcde"]  # CPUs 0 1 2 0 1: loads 2, 2, 1
    assert [s.snapshot(r).cpu for r in refs] == [0, 1, 2, 0, 1]
    assert s.snapshot(s.spawn("f", 0).thread).cpu == 2  # loads 2, 2, 2
    s.kill(refs[1], MS)  # b, queued on CPU 1, exits now: loads 2, 1, 2
    assert s.snapshot(s.spawn("g", MS).thread).cpu == 1
    s.check_invariants()


def test_steal_and_pull_choose_as_the_walk_did() -> None:
    # The lowest sibling front wins, ties to the lowest CPU, after pops and
    # re-keys left stale entries behind (compared with a walk over the queues).
    rng = random.Random(5)
    s = Scheduler(6)
    policy = s.policy_object
    refs = [s.spawn(f"t{k}", 0, weight=rng.randint(1, 4096)).thread for k in range(60)]
    now = 0
    for step in range(400):
        cpu = rng.randrange(6)
        if s.running_thread(cpu) is not None:
            s.preempt_current(cpu, now, rng.randrange(1, 4 * MS))
        fronts = [(q.head_key(), k) for k, q in enumerate(policy.queues) if len(q) and k != cpu]
        expected = min(fronts) if fronts else None
        assert policy._lowest_sibling(cpu) == expected, step
        s.pick_next(cpu, now)
        if step % 7 == 0:
            s.set_weight(refs[rng.randrange(60)], rng.randint(1, 4096))
        now += MS
        s.check_invariants()


# ---------------------------------------------------------------- progress


def test_progress_line_shows_virtual_time_rate_and_eta() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    wall = [0.0]
    with SimProgress("sim", console, clock=lambda: wall[0]) as progress:
        for at, now_s, events in ((1.0, 1, 10_000), (1.05, 1.2, 11_000), (2.0, 2, 60_000)):
            wall[0] = at  # 1.05: too soon after the draw at 1.0, not drawn
            progress(int(now_s * 1e9), 4_000_000_000, events)
        wall[0] = 3.0
        progress(4_000_000_000, 4_000_000_000, 90_000)  # the end, always drawn
    text = out.getvalue()
    assert "virtual 1.00/4.00 s" in text
    assert "virtual 1.20/4.00 s" not in text
    assert "virtual 2.00/4.00 s" in text and "50,000 events/s" in text
    assert "virtual 4.00/4.00 s" in text and "40,000 events/s" in text
    assert "ETA" in text


def write_manifest(tmp_path: Path) -> Path:
    path = tmp_path / "mixed.cue"
    path.write_text(manifest_text("mixed", 300, 8, 0))
    return path


def test_simulate_json_stays_clean_with_progress_forced(tmp_path: Path) -> None:
    path = write_manifest(tmp_path)
    args = ["simulate", str(path), "--duration", "0.5", "--json"]
    forced = CliRunner().invoke(main, [*args, "--progress", "always"])
    assert forced.exit_code == 0, forced.output
    report = json.loads(forced.stdout)  # one JSON document, nothing else
    assert len(report["threads"]) == 300
    assert "virtual 0.50/0.50 s" in forced.stderr and "events/s" in forced.stderr
    plain = CliRunner().invoke(main, [*args, "--progress", "never"])
    assert json.loads(plain.stdout) == report  # progress changes nothing in the run
    assert plain.stderr == ""
    auto = CliRunner().invoke(main, args)  # auto: stderr is not a terminal here
    assert auto.stderr == "" and json.loads(auto.stdout) == report


# ---------------------------------------------------------------- bench sim


def test_bench_sim_reports_both_scenarios_against_heapq() -> None:
    result = CliRunner().invoke(
        main,
        ["bench", "sim", "--threads", "200", "--cpus", "4", "--duration", "0.2", "--json"],
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [s["scenario"] for s in document["scenarios"]] == ["hogs", "mixed"]
    for s in document["scenarios"]:
        assert s["threads"] == 200 and s["cpus"] == 4 and s["virtual_s"] == 0.2
        assert s["events"] > 100 and s["events_per_s"] > 0 and s["peak_rss_mib"] > 1
        assert s["heapq_baseline_s"] > 0 and s["ratio_to_heapq"] > 0
        assert s["process_s"] >= s["load_s"] + s["simulate_s"]
        assert 0 < s["process_cpu_s"] <= 2 * s["process_s"]  # the child's, not the parent's
        assert s["goal_met"] is None  # not the goal's size: not judged
    assert document["scenarios"][1]["sleepers"] > 30
    assert len(document["load_average"]) == 3
    assert document["policy"] == "wfq" and document["scenarios"][0]["policy"] == "wfq"


def test_bench_sim_runs_the_policy_asked_for() -> None:
    args = ["bench", "sim", "--scenario", "mixed", "--threads", "100", "--cpus", "2"]
    result = CliRunner().invoke(main, [*args, "--duration", "0.1", "--policy", "eevdf", "--json"])
    assert result.exit_code == 0, result.output
    (scenario,) = json.loads(result.stdout)["scenarios"]
    assert scenario["policy"] == "eevdf" and scenario["events"] > 50


def test_heapq_baseline_runs_the_events_it_is_asked_for() -> None:
    small, large = heapq_baseline(1000, 10), heapq_baseline(100_000, 10)
    assert 0 < small < large


def test_eevdf_picks_the_earliest_eligible_deadline_as_the_scan_did() -> None:
    # The two heaps against the definition (a walk of the DSQ in deadline
    # order for the first eligible thread), through sleeps, re-weights, kills.
    rng = random.Random(11)
    s = Scheduler(4, "eevdf")
    policy = s.policy_object
    refs = [s.spawn(f"t{k}", 0, weight=rng.randint(1, 4096)).thread for k in range(80)]
    blocked: list = []
    now, picks = 0, 0
    for step in range(1500):
        now += rng.randrange(1, MS)
        cpu = rng.randrange(4)
        if s.running_thread(cpu) is not None:
            ran = rng.randrange(1, 3 * MS)
            if rng.random() < 0.3:
                blocked.append(s.block_current(cpu, now, ran))
            else:
                s.preempt_current(cpu, now, ran)
        if blocked and rng.random() < 0.4:
            woken = blocked.pop(rng.randrange(len(blocked)))
            if s.is_live(woken):
                s.wake(woken, now)
        live = [r for r in refs if s.is_live(r)]
        if step % 13 == 0:
            s.set_weight(rng.choice(live), rng.randint(1, 4096))
        if step % 97 == 0:
            victim = rng.choice(live)
            if s.running_thread(s.snapshot(victim).cpu) != victim:
                s.kill(victim, now)
        queued = list(s.iter_dsq(0))
        eligible = [t for t in queued if policy.eligible(t)]
        expected = (eligible or queued or [None])[0]
        dispatch = s.pick_next(cpu, now)
        if expected is None:
            assert dispatch is None or dispatch.source == "ipcSlot", step
        else:
            picks += 1
            assert dispatch.thread == expected.ref, step
        s.check_invariants()
    assert picks > 500
    assert len(policy._later) + len(policy._now) <= 2 * len(policy.queue) + 64 + 1


def test_eevdf_sends_back_a_thread_that_v_left_behind() -> None:
    # Kills: taking the front of the eligible heap without re-checking it (V
    # can go down after a thread was promoted). White-box: the heaps and the
    # sums are set by hand around three queued threads (v, deadline).
    s = Scheduler(1, "eevdf")
    policy = s.policy_object
    a, b, c = (s._threads[s.spawn(n, 0).thread.tid] for n in "abc")
    policy._later.clear()
    for order, (thread, v, deadline) in enumerate(((a, 5, 10), (b, 8, 20), (c, 1, 30)), 1):
        st = thread.policy_data
        st.offset, st.deadline, st.entry = v - thread.virtual_runtime_ns, deadline, order
        heapq.heappush(policy._later, (v, order, thread))
    policy.sum_w, policy.sum_wv = 1, 9  # V = 9: all three eligible
    assert policy._earliest_eligible(s) is a  # the earliest deadline
    s.move_to_local(0, 0, a)
    policy.sum_wv = 3  # V = 3: b (v 8) is no longer eligible, c (v 1) is
    assert policy._earliest_eligible(s) is c
    assert [e[2] for e in policy._later] == [b]  # b waits for V again
    policy.sum_wv = 8  # V = 8: b is eligible again, at equality (v <= V)
    assert policy._earliest_eligible(s) is b


def test_eevdf_heaps_stay_bounded_under_re_keys() -> None:
    # Kills: dropping the compaction (each re-key leaves a dead entry).
    s = Scheduler(1, "eevdf")
    refs = [s.spawn(f"t{i}", 0).thread for i in range(50)]
    for round_ in range(100):
        for r in refs:
            s.set_weight(r, 1 + (round_ * 37 + r.tid) % 4096)
    policy = s.policy_object
    assert len(policy._later) + len(policy._now) <= 2 * 50 + 64 + 1
    s.check_invariants()


@pytest.mark.slow
def test_bench_sim_stops_cleanly_on_ctrl_c() -> None:
    # Ctrl-C reaches the parent and the scenario's child (one process group):
    # no traceback, no child left behind.
    command = [sys.executable, "-c", "from capos_sched.cli import main; main()", "bench", "sim"]
    process = subprocess.Popen(
        [*command, "--scenario", "mixed", "--quick", "--progress", "never"],
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(3)
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1 and "Aborted!" in err, err
    assert "Traceback" not in err and out == ""
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # the whole group is gone
