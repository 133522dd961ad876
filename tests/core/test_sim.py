"""The simulator's workload models: sleepers, IPC pairs, finite work, report shape."""

from __future__ import annotations

from capos_sched.sim import Simulator
from capos_sched.workload import Hash, IpcClient, IpcServer, Sleeper, Spin

MS = 1_000_000


def by_name(report):
    return {t["name"]: t for t in report["threads"]}


def test_ipc_pair_round_trips_use_the_direct_slot():
    sim = Simulator(2)
    sim.add_thread("hog", Spin())
    sim.add_thread("client", IpcClient("echo", burst_ns=50_000, count=200))
    sim.add_thread("server", IpcServer("echo", service_ns=30_000), latency_class="ipcServer")
    report = by_name(sim.run(10**9))
    client, server = report["client"], report["server"]
    assert client["finished_ns"] is not None
    rtt = client["ipc_round_trip_ns"]
    assert rtt["count"] == 200  # the 200th reply ends the client
    # Call -> server runs next on the caller's CPU via the slot: the round trip
    # is the service time exactly, never a hog's slice.
    assert rtt["max"] == 30_000
    assert server["runtime_ns"] == 200 * 30_000
    assert client["runtime_ns"] == 200 * 50_000


def test_sleeper_count_and_accounting_only_while_running():
    sim = Simulator(1)
    sim.add_thread("sleeper", Sleeper(burst_ns=MS, period_ns=9 * MS, count=10))
    report = by_name(sim.run(10**9))["sleeper"]
    assert report["runtime_ns"] == 10 * MS  # nothing charged while asleep
    assert report["voluntary_blocks"] == 9
    assert report["finished_ns"] == 10 * MS + 9 * 9 * MS
    assert report["wake_latency_ns"]["max"] == 0  # alone on its CPU


def test_finite_work_ends_the_run_early():
    sim = Simulator(2)
    sim.add_thread("a", Hash(blocks=10, block_size=1000, rounds=100))  # 1 ms modelled
    sim.add_thread("b", Spin(total_ns=3 * MS))
    report = sim.run(10**9)
    assert report["elapsed_ns"] == 3 * MS
    assert {t["name"]: t["runtime_ns"] for t in report["threads"]} == {"a": MS, "b": 3 * MS}


def test_report_has_the_run_keys():
    sim = Simulator(1)
    sim.add_thread("a", Spin())
    report = sim.run(10 * MS)
    assert set(report) >= {"policy", "cpus", "slice_ns", "elapsed_ns", "threads"}
    assert set(report["threads"][0]) == {
        "name", "weight", "class", "runtime_ns", "virtual_runtime_ns", "context_switches",
        "preemptions", "voluntary_blocks", "migrations", "wake_latency_ns",
        "ipc_round_trip_ns", "finished_ns", "scheduler", "cpu_runtime_ns",
    }  # fmt: skip
    assert report["threads"][0]["runtime_ns"] == 10 * MS
    assert report["threads"][0]["cpu_runtime_ns"] == {"0": 10 * MS}
    assert report["threads"][0]["scheduler"] == "root"
    assert report["schedulers"] == []  # no sub-schedulers: no rows


def test_round_trip_ends_when_the_client_runs_again():
    # One CPU shared with a hog: after the reply the client may wait its turn,
    # and that wait is part of the round trip (as in the runtime's report).
    sim = Simulator(1)
    sim.add_thread("hog", Spin())
    # Weight 1: each 50 us burst costs the client 50 ms of virtual time.
    sim.add_thread("client", IpcClient("echo", burst_ns=50_000, count=50), weight=1)
    sim.add_thread("server", IpcServer("echo", service_ns=30_000), latency_class="ipcServer")
    rtt = by_name(sim.run(10**10))["client"]["ipc_round_trip_ns"]
    assert rtt["count"] == 50
    assert rtt["p50"] >= 30_000
    assert rtt["max"] > 30_000  # some replies found the hog's slice ahead of the client
