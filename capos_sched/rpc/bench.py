"""``capos-sched bench rpc``: setWeight through the daemon against raw pycapnp.

Measured in one run, over the same socket kind, client in this process and
servers in child processes:

* **echo**: a raw pycapnp server (this module's ``echo_server``) for the same
  schema whose ``setWeight`` returns at once: the same message, the same
  capability parameter, no bridge, no trio, no checks;
* **idle**: ``capos-sched serve`` on a manifest whose only thread sleeps;
* **loaded**: ``capos-sched serve`` on manifests/system-thread-fairness.cue,
  whose three hogs saturate every CPU once the scheduling runtime executes
  threads (if the threads do not accumulate run time, the phase is reported
  as skipped, with the reason).

Each phase measures sequential calls (calls/s, p50, p99) and the same with
500 calls in flight. Echo and idle phases alternate for ``--rounds`` rounds
and the medians are reported, because these machines are noisy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from capos_sched.interpreter import ISOLATED
from capos_sched.paths import MANIFESTS_DIR

from .gate import DEFAULT_MAX_ANSWERS

IDLE_MANIFEST = """\
// bench rpc, idle phase: one sleeping thread and a client holding grants for it.
package capos

machine: {cpus: 1, policy: "wfq"}

processes: {
	idle: threads: sleepy: {workload: {kind: "sleeper", burst: 0, period: "1s"}}
	client: grants: {
		policy: kind: "schedulingPolicy"
		t: {kind: "thread", thread: "idle/sleepy"}
	}
}
"""

GOAL_RATIO = 0.80
GOAL_LOADED_P99_MS = 2.0
LOADED_DURING_MIN_CPU_S_PER_S = 0.5
"""The loaded verdict needs the workers to get at least this much CPU during the
sequential calls themselves: SCHED_IDLE workers get none while other processes
want the CPUs, and a p99 measured then is an idle figure."""


# ------------------------------------------------------------ echo server


def echo_server(address: str, gated: bool = False) -> None:
    """A raw pycapnp server: CapSet.get hands out a handle and a policy whose
    methods return at once (the baseline). ``gated``: every connection goes
    through the daemon's Gate (rpc/gate.py) exactly as in ``serve``, so echo
    vs gated echo is the gate's cost alone."""
    import capnp

    from .addr import parse_address
    from .gate import Gate, GateLimits
    from .schema import capos
    from .service import gated_stream

    s = capos()

    class Handle(s.ThreadHandle.Server):  # type: ignore[misc,name-defined]
        async def describe(self, **_: Any) -> Any:
            return ("echo", 1, 1, "runnable")

        async def isLive(self, **_: Any) -> bool:
            return True

    class Policy(s.SchedulingPolicyCap.Server):  # type: ignore[misc,name-defined]
        async def setWeight(self, thread: Any, weight: int, **_: Any) -> None:
            return None

        async def setLatencyClass(self, **_: Any) -> None:
            return None

        async def snapshot(self, **_: Any) -> Any:
            return (1024, "normal", 0, 0)

    class Caps(s.CapSet.Server):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            self.handle = s.ThreadHandle._new_client(Handle())
            self.policy = s.SchedulingPolicyCap._new_client(Policy())

        async def get(self, name: str, **_: Any) -> Any:
            return self.policy if name == "policy" else self.handle

        async def list(self, **_: Any) -> list[str]:
            return ["policy", "t"]

    class Restorer(s.Restorer.Server):  # type: ignore[misc,name-defined]
        async def restore(self, token: bytes, **_: Any) -> Any:
            return Caps()

    async def main() -> None:
        async with capnp.kj_loop():

            async def serve(stream: Any) -> None:
                await capnp.TwoPartyServer(stream, bootstrap=Restorer()).on_disconnect()

            addr = parse_address(address)
            if gated:
                loop = asyncio.get_running_loop()
                tasks: set[asyncio.Task[None]] = set()

                def on_peer(gate: Gate) -> None:
                    task = asyncio.ensure_future(serve(gated_stream(gate)))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

                def factory() -> asyncio.Protocol:
                    return Gate(GateLimits(), on_peer)

                if addr.kind == "unix":
                    server = await loop.create_unix_server(factory, addr.path)
                else:
                    server = await loop.create_server(factory, addr.host, addr.port)
            elif addr.kind == "unix":
                server = await capnp.AsyncIoStream.create_unix_server(serve, addr.path)
            else:
                server = await capnp.AsyncIoStream.create_server(serve, addr.host, addr.port)
            async with server:
                await asyncio.Event().wait()

    asyncio.run(main())


# ------------------------------------------------------------------ client


@contextlib.asynccontextmanager
async def _policy_caps(address: str, token: bytes, thread: str) -> Any:
    """Within a ``capnp.kj_loop``: a raw pycapnp connection that restores
    ``token``; yields its ``policy``, the handle of ``thread`` and the CapSet,
    and closes the connection at the end."""
    import capnp

    from .addr import parse_address
    from .schema import capos

    s = capos()
    addr = parse_address(address)
    if addr.kind == "unix":
        stream = await capnp.AsyncIoStream.create_unix_connection(addr.path)
    else:
        stream = await capnp.AsyncIoStream.create_connection(addr.host, addr.port)
    client = capnp.TwoPartyClient(stream)
    try:
        restorer = client.bootstrap().cast_as(s.Restorer)
        caps = (await restorer.restore(token)).caps
        policy = (await caps.get("policy")).cap.as_interface(s.SchedulingPolicyCap)
        handle = (await caps.get(thread)).cap.as_interface(s.ThreadHandle)
        yield policy, handle, caps
    finally:
        client.close()
        stream.close()


async def _measure(
    address: str, token: bytes, calls: int, inflight: int, thread: str = "t", pid: int = 0
) -> dict[str, Any]:
    """Sequential then concurrent setWeight calls with raw pycapnp; with the
    server's ``pid``, also its CPU use and its children's (a daemon's workers)
    during the sequential calls alone (``host_sequential``)."""
    import capnp

    async with capnp.kj_loop(), _policy_caps(address, token, thread) as (policy, handle, _):
        for i in range(min(200, calls)):  # warm-up
            await policy.setWeight(handle, 1 + i % 100)
        lat: list[float] = []
        cpu0 = _tree_cpu_s(pid) if pid else (0.0, 0.0)
        start = time.perf_counter()
        for i in range(calls):
            t0 = time.perf_counter()
            await policy.setWeight(handle, 1 + i % 100)
            lat.append(time.perf_counter() - t0)
        seq_elapsed = time.perf_counter() - start
        cpu1 = _tree_cpu_s(pid) if pid else (0.0, 0.0)

        conc_calls = calls * 4
        conc_lat: list[float] = []
        counter = iter(range(conc_calls))

        async def worker() -> None:
            for i in counter:
                t0 = time.perf_counter()
                await policy.setWeight(handle, 1 + i % 100)
                conc_lat.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(inflight)))
        conc_elapsed = time.perf_counter() - start
    result: dict[str, Any] = {
        "sequential": _summary(lat, seq_elapsed),
        "inflight": _summary(conc_lat, conc_elapsed),
    }
    if pid:
        result["host_sequential"] = {
            "server_cpu_s_per_s": round((cpu1[0] - cpu0[0]) / seq_elapsed, 2),
            "server_children_cpu_s_per_s": round((cpu1[1] - cpu0[1]) / seq_elapsed, 2),
        }
    return result


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def _held_answers(address: str, token: bytes, pid: int, limit: int) -> dict[str, Any]:
    """The server's RSS growth while this client holds answers: it keeps every
    response of ``CapSet.get`` (a result holding a capability, so the server
    keeps the answer until its Finish; a capability-free result such as
    setWeight's is returned with ``noFinishNeeded`` and not kept) and calls
    until a call waits for 1 s (the gate's ``--max-answers`` bound) or
    ``limit`` calls."""
    import capnp

    async with capnp.kj_loop(), _policy_caps(address, token, "t") as (_, _, caps):
        held: list[Any] = []
        try:
            await asyncio.sleep(0.2)
            before = _rss_bytes(pid)
            bounded = False
            try:
                for _ in range(limit):
                    async with asyncio.timeout(1.0):
                        held.append(await caps.get("policy"))
            except TimeoutError:
                bounded = True
            await asyncio.sleep(0.2)
            during = _rss_bytes(pid)
            count = len(held)
        finally:
            held.clear()  # the answers go before the connection closes
    answers = count + 3  # + restore and the two gets (the bootstrap is no call here)
    return {
        "answers_held": answers,
        "stopped_at_bound": bounded,
        "rss_before_bytes": before,
        "rss_growth_bytes": during - before,
        "bytes_per_answer": round((during - before) / answers),
    }


def _summary(lat: list[float], elapsed: float) -> dict[str, float]:
    ordered = sorted(lat)
    n = len(ordered)
    return {
        "calls": n,
        "calls_per_s": round(n / elapsed, 1),
        "p50_ms": round(ordered[n // 2] * 1e3, 3),
        "p99_ms": round(ordered[min(n - 1, int(n * 0.99))] * 1e3, 3),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in ("sequential", "inflight"):
        out[part] = {
            key: round(statistics.median(r[part][key] for r in runs), 3)
            for key in ("calls", "calls_per_s", "p50_ms", "p99_ms")
        }
    out["rounds"] = len(runs)
    out["host_per_round"] = [
        {**r["host"], "sequential": r["host_sequential"]} if "host_sequential" in r else r["host"]
        for r in runs
        if "host" in r
    ]
    return out


# ------------------------------------------------------------------- helpers


def _tree_cpu_s(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of ``pid`` itself and of its live children
    (the daemon's workers), from /proc; (0, 0) where /proc cannot tell."""
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(stat: list[str]) -> float:
        return (int(stat[11]) + int(stat[12])) / tick  # utime, stime (fields 14, 15)

    own = children = 0.0
    try:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "
            if int(entry.name) == pid:
                own = cpu(fields)
            elif int(fields[1]) == pid:  # ppid
                children += cpu(fields)
    except OSError:
        pass
    return own, children


class _Probe:
    """CPU use of a server process (and its children) and the machine's load over a phase."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.load_before = os.getloadavg()
        self.t0 = time.monotonic()
        self.cpu0 = _tree_cpu_s(pid)

    def figures(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        own, children = _tree_cpu_s(self.pid)
        return {
            "server_cpu_s_per_s": round((own - self.cpu0[0]) / elapsed, 2),
            "server_children_cpu_s_per_s": round((children - self.cpu0[1]) / elapsed, 2),
            "loadavg_before": [round(x, 2) for x in self.load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "cpus_online": os.cpu_count(),
        }


def _measured(pid: int, coro: Any) -> dict[str, Any]:
    """Run one measurement with the server's CPU use and the load recorded beside it."""
    probe = _Probe(pid)
    result: dict[str, Any] = asyncio.run(coro)
    result["host"] = probe.figures()
    return result


def _address(kind: str, workdir: Path, name: str) -> str:
    if kind == "unix":
        return f"unix:{workdir / (name + '.sock')}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp:127.0.0.1:{port}"


def _wait_connectable(address: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    from .addr import parse_address

    addr = parse_address(address)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"server exited early with status {proc.returncode}")
        fam = socket.AF_UNIX if addr.kind == "unix" else socket.AF_INET
        with socket.socket(fam) as sock:
            try:
                sock.connect(addr.path if addr.kind == "unix" else (addr.host, addr.port))
                return
            except OSError:
                time.sleep(0.05)
    raise click.ClickException(f"{address} not reachable after {timeout} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def _daemon(manifest: Path, workdir: Path, kind: str, tag: str, extra: tuple[str, ...] = ()) -> Any:
    listen = _address(kind, workdir, f"{tag}-listen")
    admin = f"unix:{workdir / (tag + '-admin.sock')}"
    grants = workdir / f"{tag}-grants"
    log = open(workdir / f"{tag}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            ISOLATED,
            "-c",
            "from capos_sched.cli import main; main()",
            "--log-level",
            "warning",
            "serve",
            str(manifest),
            "--listen",
            listen,
            "--admin",
            admin,
            "--grants-dir",
            str(grants),
            *extra,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_connectable(admin, proc)
        _wait_connectable(listen, proc)
        yield listen, admin, grants, proc.pid
    finally:
        _stop(proc)
        log.close()


async def _runtime_ns(admin: str) -> int:
    from capos_sched.client import connect_admin

    async with await connect_admin(admin) as session:
        report = await session.stats()
    return sum(t["runtime_ns"] for t in report["threads"])


def _loaded_phase(
    workdir: Path, kind: str, calls: int, inflight: int, manifest: Path, workers: str
) -> dict[str, Any]:
    extra = ("--idle-workers",) if workers == "idle" else ("--nice-workers",)
    with _daemon(manifest, workdir, kind, f"loaded-{workers}", extra) as (
        listen,
        admin,
        grants,
        pid,
    ):
        before = asyncio.run(_runtime_ns(admin))
        time.sleep(1.0)
        after = asyncio.run(_runtime_ns(admin))
        if after - before < 0.5e9:  # less than half a CPU-second per second
            return {
                "skipped": "the daemon's threads accumulated "
                f"{(after - before) / 1e6:.0f} ms of run time in 1 s: the scheduling "
                "runtime is not executing threads, so nothing loads the CPUs"
            }
        token = (grants / "tuner.token").read_bytes().strip()
        result = _measured(pid, _measure(listen, token, calls, inflight, "fairness/a", pid))
        result["cpu_seconds_per_second"] = round((after - before) / 1e9, 2)
        return result


# ------------------------------------------------------------------ command


@click.command(
    "rpc",
    epilog="""\b
Examples:
  capos-sched bench rpc --json
  capos-sched bench rpc --quick --json
  capos-sched bench rpc --transport tcp --calls 1000 --rounds 1 --no-loaded
""",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--calls",
    type=click.IntRange(100, 1_000_000),
    default=3000,
    show_default=True,
    help="Sequential calls per measurement (the concurrent one makes four times as many).",
)
@click.option(
    "--inflight",
    type=click.IntRange(1, 1000),
    default=500,
    show_default=True,
    help="Calls in flight at once in the concurrent measurement.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Echo and idle measurements alternate this many times; medians are reported.",
)
@click.option(
    "--transport",
    type=click.Choice(["unix", "tcp"]),
    default="unix",
    show_default=True,
    help="Socket kind for every server, the daemon's and the echo baseline's.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A fast run (under a minute): 500 calls, 100 in flight, one round.",
)
@click.option(
    "--loaded/--no-loaded",
    default=True,
    show_default=True,
    help="Also measure with the daemon's workers saturating every CPU.",
)
def rpc(
    as_json: bool,
    calls: int,
    inflight: int,
    rounds: int,
    transport: str,
    quick: bool,
    loaded: bool,
) -> None:
    """setWeight through the daemon vs a raw pycapnp echo (same run, same socket kind).

    Every figure carries the server's CPU use and the machine's load average
    (``host``); echo behind the daemon's gate measures the gate's relay cost;
    a client holding answers up to ``--max-answers`` measures their memory."""
    if quick:
        calls, inflight, rounds = 500, 100, 1
    workdir = Path(tempfile.mkdtemp(prefix="capos-bench-", dir="/tmp"))
    try:
        report = _run_bench(workdir, transport, calls, inflight, rounds, loaded)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report)


def _run_bench(
    workdir: Path, kind: str, calls: int, inflight: int, rounds: int, loaded: bool
) -> dict[str, Any]:
    manifest = workdir / "bench-idle.cue"
    manifest.write_text(IDLE_MANIFEST)
    servers = {}
    for name, gated in (("echo", False), ("echo_gated", True)):
        addr = _address(kind, workdir, name)
        servers[name] = (
            addr,
            subprocess.Popen(
                [
                    sys.executable,
                    ISOLATED,
                    "-c",
                    "from capos_sched.rpc.bench import echo_server; "
                    f"echo_server({addr!r}, {gated!r})",
                ],
            ),
        )
    runs: dict[str, list[dict[str, Any]]] = {"echo": [], "echo_gated": [], "idle": []}
    memory: dict[str, Any] = {}
    try:
        for addr, proc in servers.values():
            _wait_connectable(addr, proc)
        with _daemon(manifest, workdir, kind, "idle") as (listen, _admin, grants, pid):
            token = (grants / "client.token").read_bytes().strip()
            # Memory first, on fresh servers (later the heap has room left by the in-flight runs).
            memory["daemon"] = asyncio.run(
                _held_answers(listen, token, pid, DEFAULT_MAX_ANSWERS + 100)
            )
            gated_addr, gated_proc = servers["echo_gated"]
            memory["echo_gated"] = asyncio.run(
                _held_answers(gated_addr, b"x", gated_proc.pid, DEFAULT_MAX_ANSWERS + 100)
            )
            for _ in range(rounds):  # interleaved, so a change in the host's load hits all alike
                for name, (addr, proc) in servers.items():
                    runs[name].append(
                        _measured(proc.pid, _measure(addr, b"x", calls, inflight, pid=proc.pid))
                    )
                runs["idle"].append(
                    _measured(pid, _measure(listen, token, calls, inflight, pid=pid))
                )
    finally:
        for _, proc in servers.values():
            _stop(proc)
    report: dict[str, Any] = {
        "transport": kind,
        "cpus_online": os.cpu_count(),
        "inflight": inflight,
        "echo": _median(runs["echo"]),
        "echo_gated": _median(runs["echo_gated"]),
        "idle": _median(runs["idle"]),
        "max_answers_memory": memory,
    }
    fairness = MANIFESTS_DIR / "system-thread-fairness.cue"
    if loaded and fairness.is_file():
        # serve's default (SCHED_IDLE workers), then plain reniced workers for comparison.
        report["loaded"] = _loaded_phase(workdir, kind, calls, inflight, fairness, "idle")
        report["loaded_nice_workers"] = _loaded_phase(
            workdir, kind, calls, inflight, fairness, "nice"
        )
    elif loaded:
        report["loaded"] = {"skipped": f"{fairness} not found"}
    seq = {name: report[name]["sequential"]["calls_per_s"] for name in runs}
    ratio = seq["idle"] / seq["echo"]
    report["idle_vs_echo_sequential"] = round(ratio, 3)
    report["gate_relay"] = {
        "echo_gated_vs_echo_sequential": round(seq["echo_gated"] / seq["echo"], 3),
        "added_us_per_call_sequential": round((1 / seq["echo_gated"] - 1 / seq["echo"]) * 1e6, 1),
        "idle_vs_echo_gated_sequential": round(seq["idle"] / seq["echo_gated"], 3),
    }
    verdict, note = loaded_verdict(report.get("loaded", {}))
    report["goals"] = {
        "idle_sequential_at_least_80pct_of_echo": ratio >= GOAL_RATIO,
        "loaded_p99_at_most_2ms": verdict,
    }
    if note is not None:
        report["goal_notes"] = {"loaded_p99_at_most_2ms": note}
    return report


def loaded_verdict(loaded: dict[str, Any]) -> tuple[bool | None, str | None]:
    """Goal 2 from a loaded phase: p99 <= 2 ms, or None (with the reason) when
    the phase was skipped or its workers got under
    ``LOADED_DURING_MIN_CPU_S_PER_S`` while the sequential calls ran."""
    if "sequential" not in loaded:
        return None, None
    during = loaded.get("host_sequential", {}).get("server_children_cpu_s_per_s")
    if during is not None and during < LOADED_DURING_MIN_CPU_S_PER_S:
        return None, (
            f"no verdict: during the sequential calls the daemon's workers got {during} "
            "CPU-s/s (other processes took the CPUs first), under "
            f"{LOADED_DURING_MIN_CPU_S_PER_S}: the phase was not loaded"
        )
    return bool(loaded["sequential"]["p99_ms"] <= GOAL_LOADED_P99_MS), None


def _print(report: dict[str, Any]) -> None:
    click.echo(
        f"transport {report['transport']}, {report['inflight']} in flight for the concurrent runs"
    )
    click.echo(f"{'phase':<20} {'mode':<11} {'calls/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for phase in ("echo", "echo_gated", "idle", "loaded", "loaded_nice_workers"):
        data = report.get(phase)
        if data is None:
            continue
        if "skipped" in data:
            click.echo(f"{phase:<20} skipped: {data['skipped']}")
            continue
        for mode in ("sequential", "inflight"):
            d = data[mode]
            rate, p50, p99 = d["calls_per_s"], d["p50_ms"], d["p99_ms"]
            click.echo(f"{phase:<20} {mode:<11} {rate:>10.0f} {p50:>8.3f} {p99:>8.3f}")
        during = data.get("host_sequential")
        if during is not None:  # a loaded phase: was it loaded while the calls ran?
            click.echo(
                f"{phase:<20} during the sequential calls: workers "
                f"{during['server_children_cpu_s_per_s']} CPU-s/s, daemon "
                f"{during['server_cpu_s_per_s']} CPU-s/s"
            )
    click.echo(f"idle/echo sequential throughput: {report['idle_vs_echo_sequential']:.0%}")
    relay = report["gate_relay"]
    click.echo(
        f"gate relay: gated echo {relay['echo_gated_vs_echo_sequential']:.0%} of echo, "
        f"+{relay['added_us_per_call_sequential']} us per sequential call"
    )
    for name, mem in report["max_answers_memory"].items():
        click.echo(
            f"{name}: {mem['answers_held']} answers held (bound reached: "
            f"{mem['stopped_at_bound']}), RSS +{mem['rss_growth_bytes']} bytes, "
            f"{mem['bytes_per_answer']} bytes per answer"
        )
    click.echo(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    click.echo("goals: " + ", ".join(f"{k}={v}" for k, v in report["goals"].items()))
    for name, note in report.get("goal_notes", {}).items():
        click.echo(f"{name}: {note}")
