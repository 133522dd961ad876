"""The command line: client commands, operator commands, serve's argument checks."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from .conftest import Daemon, assert_no_traceback, cli


def _client(d: Daemon, *args: str, process: str = "tuner") -> object:
    return cli(
        args[0],
        "--connect",
        d.listen,
        "--token-file",
        str(d.grants / f"{process}.token"),
        *args[1:],
    )


def test_client_and_operator_commands(daemon: Daemon) -> None:
    out = _client(daemon, "set-weight", "a", "3000")
    assert out.returncode == 0, out.stderr
    out = _client(daemon, "set-class", "a", "batch")
    assert out.returncode == 0, out.stderr
    out = _client(daemon, "snapshot", "a", "--json")
    assert out.returncode == 0, out.stderr
    snap = json.loads(out.stdout)
    assert (snap["weight"], snap["class"]) == (3000, "batch")

    out = _client(daemon, "set-weight", "a", "0")
    assert (out.returncode, out.stderr) == (1, "invalidArgument: weight 0 outside [1, 10000]\n")
    out = _client(daemon, "set-weight", "nope", "5")
    assert out.returncode == 1 and out.stderr.startswith("invalidArgument: ")
    out = _client(daemon, "set-weight", "a", "heavy")
    assert out.returncode == 2  # usage error: nothing sent
    out = _client(daemon, "set-class", "a", "realtime")
    assert out.returncode == 2
    out = _client(daemon, "set-weight", "a", "5", process="viewer")  # no policy granted
    assert out.returncode == 1 and out.stderr.startswith("invalidArgument: ")
    out = cli("set-weight", "--connect", daemon.listen, "--token-file", "/nonexistent", "a", "5")
    assert out.returncode == 1 and out.stderr.startswith("invalidArgument: cannot read token file")
    bad = daemon.dir / "bad.token"
    bad.write_text("not-a-token\n")
    out = cli("snapshot", "--connect", daemon.listen, "--token-file", str(bad), "a")
    assert (out.returncode, out.stderr) == (1, "disconnected: unknown or revoked token\n")
    out = cli(
        "snapshot",
        "--connect",
        f"unix:{daemon.dir / 'nobody.sock'}",
        "--token-file",
        str(daemon.grants / "tuner.token"),
        "a",
    )
    assert out.returncode == 1 and out.stderr.startswith("disconnected: ")

    out = cli("revoke", "--admin", daemon.admin, "tuner.a")
    assert out.returncode == 0 and "tuner.a" in out.stdout, out.stderr
    out = _client(daemon, "snapshot", "a")
    assert out.returncode == 1 and out.stderr.startswith("disconnected: revoked")
    out = cli("revoke", "--admin", daemon.admin, "nobody")
    assert out.returncode == 1 and out.stderr.startswith("invalidArgument: ")
    out = cli("grants", "--admin", daemon.admin)
    assert out.returncode == 0
    line = next(
        line for line in out.stdout.splitlines() if line.startswith("tuner") and " a " in line
    )
    assert "revoked" in line
    out = cli("stats", "--admin", daemon.admin, "--json")
    assert out.returncode == 0
    report = json.loads(out.stdout)
    a = next(t for t in report["threads"] if t["name"] == "fairness/a")
    assert (a["weight"], a["class"]) == (3000, "batch")
    assert report["rpc"]["calls_applied"] >= 2
    out = cli("stats", "--admin", daemon.admin)
    assert out.returncode == 0 and "fairness/a" in out.stdout
    for text in (out.stderr,):
        assert_no_traceback(text)


def test_serve_over_tcp_and_argument_checks(workdir: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d = Daemon(workdir, listen=f"tcp:127.0.0.1:{port}")
    try:
        deadline_ok = False
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    deadline_ok = True
                    break
        assert deadline_ok
        out = _client(d, "set-weight", "b", "555")
        assert out.returncode == 0, out.stderr
        out = _client(d, "snapshot", "b", "--json")
        assert json.loads(out.stdout)["weight"] == 555
        # a second daemon on the same admin socket refuses cleanly
        out = cli(
            "serve", str(d.manifest), "--admin", d.admin, "--listen", f"unix:{workdir}/x.sock"
        )
        assert out.returncode == 1
        assert "already serving" in out.stderr
        assert "Traceback" not in out.stderr
    finally:
        d.stop()
    out = cli("serve", str(d.manifest), "--admin", "tcp:127.0.0.1:1")
    assert out.returncode == 2 and "unix" in out.stderr
    out = cli("serve", str(d.manifest), "--listen", "carrier-pigeon")
    assert out.returncode == 2
    broken = workdir / "broken.cue"
    broken.write_text("package capos\nmachine: {cpus: 0}\n")
    out = cli("serve", str(broken), "--admin", f"unix:{workdir}/b.sock")
    assert out.returncode == 1
    assert out.stderr.startswith(f"{broken}:2:17: cpus 0 outside [1, 64]\n")  # as check says
    bad_exec = workdir / "bad-exec.cue"
    bad_exec.write_text(
        d.manifest.read_text().replace(
            "\tviewer: grants:", '\tviewer: exec: ["/nonexistent/prog"]\n\tviewer: grants:'
        )
    )
    out = cli("serve", str(bad_exec), "--admin", f"unix:{workdir}/c.sock")
    assert (out.returncode, out.stderr.splitlines()[-1]) == (  # after serve's no-grants-dir warning
        1,
        "invalidArgument: process viewer: exec program '/nonexistent/prog' not found",
    )
