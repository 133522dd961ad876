"""The command line as an operator and a client meet it: the snapshot after a
change, what a daemon logs about refused loads, what connecting errors say."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from .conftest import Daemon, cli


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
