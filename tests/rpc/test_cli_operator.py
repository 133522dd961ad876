"""The command line as an operator and a client meet it: the snapshot after a
change, what a daemon logs about refused loads, what connecting errors say."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import BASE_MANIFEST, Daemon, arun, cli

CLI = [sys.executable, "-c", "from capos_sched.cli import main; main()"]


def _client(d: Daemon, *args: str) -> object:
    token = str(d.grants / "tuner.token")
    return cli(args[0], "--connect", d.listen, "--token-file", token, *args[1:])


def test_set_weight_and_set_class_json_print_the_snapshot_after_the_change(
    daemon: Daemon,
) -> None:
    out = _client(daemon, "set-weight", "a", "3000", "--json")
    assert out.returncode == 0, out.stderr
    after_weight = json.loads(out.stdout)
    assert after_weight["thread"] == "a"
    assert (after_weight["weight"], after_weight["class"]) == (3000, "normal")
    assert set(after_weight) == {"thread", "weight", "class", "runtime_ns", "virtual_runtime_ns"}

    out = _client(daemon, "set-class", "a", "batch", "--json")
    assert out.returncode == 0, out.stderr
    assert (json.loads(out.stdout)["weight"], json.loads(out.stdout)["class"]) == (3000, "batch")

    snapshot = _client(daemon, "snapshot", "a", "--json")
    assert set(json.loads(snapshot.stdout)) == set(after_weight)  # one shape for all three
    quiet = _client(daemon, "set-weight", "a", "1024")
    assert (quiet.returncode, quiet.stdout) == (0, "")  # without --json: nothing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _junk_server(family: int, address: object) -> Iterator[None]:
    """A server that answers every connection with HTTP, not Cap'n Proto."""
    server = socket.socket(family)
    server.bind(address)
    server.listen()
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n" + b"x" * 100)
                time.sleep(0.3)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_no_daemon_names_the_address(workdir: Path) -> None:
    missing = f"unix:{workdir / 'nobody.sock'}"
    out = cli("stats", "--admin", missing)
    assert (out.returncode, out.stderr) == (
        1,
        f"disconnected: cannot reach the daemon at {missing}: No such file or directory\n",
    )
    port = _free_port()
    out = cli("stats", "--admin", f"tcp:127.0.0.1:{port}")
    assert (out.returncode, out.stderr) == (
        1,
        f"disconnected: cannot reach the daemon at tcp:127.0.0.1:{port}: Connection refused\n",
    )
    token = workdir / "t.token"
    token.write_text("x\n")
    out = cli("snapshot", "a", "--connect", f"tcp:127.0.0.1:{port}", "--token-file", str(token))
    assert out.stderr.startswith(f"disconnected: cannot reach the daemon at tcp:127.0.0.1:{port}:")


def test_a_peer_that_is_not_a_daemon_is_named(workdir: Path) -> None:
    path = workdir / "junk.sock"
    with _junk_server(socket.AF_UNIX, str(path)):
        out = cli("stats", "--admin", f"unix:{path}")
    assert (out.returncode, out.stderr) == (
        1,
        f"disconnected: peer at unix:{path} is not a capos-sched daemon\n",
    )
    port = _free_port()
    token = workdir / "t.token"
    token.write_text("x\n")
    with _junk_server(socket.AF_INET, ("127.0.0.1", port)):
        out = cli("snapshot", "a", "--connect", f"tcp:127.0.0.1:{port}", "--token-file", str(token))
    assert (out.returncode, out.stderr) == (
        1,
        f"disconnected: peer at tcp:127.0.0.1:{port} is not a capos-sched daemon\n",
    )


def test_the_wrong_daemon_socket_is_named(daemon: Daemon) -> None:
    out = cli("stats", "--admin", daemon.listen)
    assert (out.returncode, out.stderr) == (
        1,
        f"invalidArgument: {daemon.listen} is the daemon's --listen socket, "
        "not its --admin socket\n",
    )
    token = str(daemon.grants / "tuner.token")
    out = cli("snapshot", "a", "--connect", daemon.admin, "--token-file", token)
    assert (out.returncode, out.stderr) == (
        1,
        f"invalidArgument: {daemon.admin} is the daemon's --admin socket, "
        "not its --listen socket\n",
    )


def test_a_refused_load_is_logged_with_its_first_problem(daemon: Daemon) -> None:
    from capos_sched.client import InvalidArgument, connect_admin

    name = str(daemon.dir / "broken.cue")
    source = "package capos\nmachine: {cpus: 0}\nprocesses: p: threads: t: {wieght: 1}\n"

    async def go() -> None:
        async with await connect_admin(daemon.admin) as session:
            with pytest.raises(InvalidArgument):
                await session.load(source, name)

    arun(go)
    deadline = time.monotonic() + 10
    while not (refused := [e for e in daemon.events() if e.get("event") == "plan refused"]):
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    (event,) = refused
    assert event["level"] == "warning" and event["manifest"] == name
    assert event["error"] == f"{name}:2:17: cpus 0 outside [1, 64]"
    from capos_sched.manifest import ManifestError, load_plan_text

    with pytest.raises(ManifestError) as local:
        load_plan_text(source, name)
    assert event["problems"] == len(local.value.diagnostics) >= 2


def _serve_log(workdir: Path, manifest: Path, *args: str) -> list[dict]:
    """The log of a ``serve --no-execute`` started and stopped at once."""
    run = workdir / f"{manifest.stem}-{len(list(workdir.glob('*.log')))}"
    log_file = run.with_suffix(".log")
    sockets = ["--listen", f"unix:{run}-l.sock", "--admin", f"unix:{run}-a.sock"]
    proc = subprocess.Popen(
        [
            *CLI,
            "--log-file",
            str(log_file),
            "serve",
            str(manifest),
            "--no-execute",
            *sockets,
            *args,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while '"serving"' not in (log_file.read_text() if log_file.exists() else ""):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return [json.loads(line) for line in log_file.read_text().splitlines()]


def test_serve_warns_when_granted_tokens_cannot_be_restored(workdir: Path) -> None:
    granted = workdir / "granted.cue"
    granted.write_text(BASE_MANIFEST)
    warnings = [e for e in _serve_log(workdir, granted) if e["level"] == "warning"]
    (warning,) = [e for e in warnings if e["event"].startswith("no --grants-dir")]
    assert "nobody can restore" in warning["event"]
    assert warning["processes"] == ["tuner", "viewer", "other"]
    # with --grants-dir, or with no grants at all, there is nothing to warn about
    quiet = _serve_log(workdir, granted, "--grants-dir", str(workdir / "g"))
    assert not [e for e in quiet if e["event"].startswith("no --grants-dir")]
    plain = workdir / "plain.cue"
    plain.write_text(
        'machine: cpus: 1\nprocesses: p: threads: t: workload: {kind: "sleeper", '
        'burst: "1ms", period: "10ms"}\n'
    )
    assert not [e for e in _serve_log(workdir, plain) if e["level"] == "warning"]


def test_serve_passes_trace_and_watchdog_to_the_runtime(
    monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    from click.testing import CliRunner

    from capos_sched.cli import main
    from capos_sched.manifest import load_plan_text
    from capos_sched.rpc import daemon as daemon_module

    built = []

    def fake_run_daemon(config: object, plan: object, **kwargs: Any) -> int:
        built.append(kwargs["host_factory"](plan).inner)  # the Runtime behind the Host adapter
        return 0

    monkeypatch.setattr(daemon_module, "run_daemon", fake_run_daemon)
    manifest = workdir / "m.cue"
    manifest.write_text(BASE_MANIFEST)
    trace = workdir / "serve.trace.json"
    sockets = ["--listen", f"unix:{workdir}/l.sock", "--admin", f"unix:{workdir}/a.sock"]
    args = ["serve", str(manifest), *sockets, "--trace", str(trace), "--watchdog-ms", "40"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (runtime,) = built
    assert runtime.watchdog_threshold_ns == 40_000_000
    assert runtime.trace is not None
    assert json.loads(trace.read_text())["traceEvents"] is not None  # written at the stop
    assert load_plan_text(BASE_MANIFEST).machine.cpus == runtime.cpus

    refused = CliRunner().invoke(main, [*args[:-4], "--no-execute", "--trace", str(trace)])
    assert refused.exit_code == 2 and "--trace" in refused.stderr


def test_serve_trace_records_the_dispatches(workdir: Path) -> None:
    trace = workdir / "serve.trace.json"
    d = Daemon(workdir, args=("--trace", str(trace)))
    time.sleep(1.0)  # the sleepers run a few times
    assert d.stop() == 0
    names = {e["name"] for e in json.loads(trace.read_text())["traceEvents"] if e["ph"] == "X"}
    assert names == {"fairness/a", "fairness/b"}
