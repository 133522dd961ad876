"""An exec'd process holds exactly its CapSet (issue 8, item 5).

A real exec'd process (exec_attacker.py) tries to read the daemon's
environment, connect to the admin socket, restore another process's token,
and, from a double-forked setsid'd descendant, the admin socket again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from capos_sched.rpc.children import EXEC_ENV_ALLOWED, exec_env
from capos_sched.rpc.peers import refusal

from .conftest import BASE_MANIFEST, Daemon

ATTACKER = Path(__file__).with_name("exec_attacker.py")


def _wait_for(predicate, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def _attack(workdir: Path, args: tuple[str, ...] = ()) -> tuple[dict, dict, Daemon]:  # type: ignore[type-arg]
    """Run exec_attacker.py under a daemon: (its result, its descendant's, the daemon)."""
    manifest = BASE_MANIFEST.replace(
        "\tviewer: grants:",
        f'\tctl: {{\n\t\texec: ["python", "{ATTACKER}"]\n'
        '\t\tgrants: a: {kind: "thread", thread: "fairness/a"}\n'
        "\t}\n\tviewer: grants:",
    )
    d = Daemon(workdir, manifest=manifest, args=args, env={"CAPOS_TEST_SECRET": "hunter2"})
    try:

        def result() -> dict | None:  # type: ignore[type-arg]
            for e in d.events():
                line = e.get("line", "")
                if e.get("event") == "process output" and line.startswith("RESULT "):
                    return json.loads(line[len("RESULT ") :])
            return None

        out = _wait_for(result)
        grand = json.loads(_wait_for(lambda: _read(workdir / "grandchild.json")))
        assert d.alive()
    finally:
        d.stop()
    return out, grand, d


def test_an_exec_process_reaches_nothing_but_its_capset(workdir: Path) -> None:
    out, grand, d = _attack(workdir)
    assert out["own"] == ["a"]  # its own CapSet works
    assert out["daemon"] == d.proc.pid
    assert "CAPOS_TEST_SECRET" not in out["env"]
    assert set(out["env"]) <= EXEC_ENV_ALLOWED | {
        "CAPOS_SCHED_FD",
        "CAPOS_SCHED_PROCESS",
        "PYTHONUNBUFFERED",
    } | {k for k in out["env"] if k.startswith("LC_")}
    assert out["daemon_environ"].startswith("refused PermissionError"), out
    assert out["admin"].startswith("refused Disconnected"), out
    # The token file may be readable (same uid), but restoring it is refused.
    assert out.get("restore", "refused").startswith("refused Disconnected"), out
    assert grand["ppid"] == d.proc.pid, grand  # still a descendant: the daemon is a subreaper
    assert grand["admin"].startswith("refused Disconnected"), grand
    refused = [e for e in d.events() if e.get("event") == "connection refused"]
    assert {e["socket"] for e in refused} == {"admin", "listen"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs a root daemon")
def test_with_exec_user_the_process_cannot_even_read_a_token(workdir: Path) -> None:
    # A shell, not Python: this machine's interpreter may live where nobody can run it.
    workdir.chmod(0o755)  # the exec'd process's working directory
    script = (
        f"id -u; cat {workdir}/grants/tuner.token >/dev/null && echo TOKEN-READ; "
        "cat /proc/$PPID/environ >/dev/null && echo ENV-READ; echo DONE; exec sleep 60"
    )
    manifest = BASE_MANIFEST.replace(
        "\tviewer: grants:",
        f'\tctl: {{\n\t\texec: ["sh", "-c", "{script}"]\n'
        '\t\tgrants: a: {kind: "thread", thread: "fairness/a"}\n'
        "\t}\n\tviewer: grants:",
    )
    d = Daemon(workdir, manifest=manifest, args=("--exec-user", "nobody"))
    try:

        def lines() -> list[str] | None:
            out = [e["line"] for e in d.events() if e.get("event") == "process output"]
            return out if "DONE" in out else None

        out = _wait_for(lines)
    finally:
        d.stop()
    assert out[0] == "65534", out
    assert "TOKEN-READ" not in out and "ENV-READ" not in out, out


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def test_exec_env_is_allow_listed() -> None:
    env = exec_env(
        {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "PYTHONPATH": "/evil", "SECRET": "x"},
        "ctl",
        7,
    )
    assert env["CAPOS_SCHED_FD"] == "7" and env["CAPOS_SCHED_PROCESS"] == "ctl"
    assert env["HOME"] == "/h" and env["LC_ALL"] == "C"
    assert "PYTHONPATH" not in env and "SECRET" not in env
    assert env["PATH"].endswith(os.pathsep + "/bin")


def test_refusal_is_for_descendants_only() -> None:
    me = os.getpid()
    assert refusal(me, me) is None  # in-process clients
    assert refusal(0, me) is None  # another PID namespace
    assert refusal(me, os.getppid()) is not None  # we descend from our parent
    assert refusal(os.getppid(), me) is None  # our parent does not descend from us
    assert "vanished" in (refusal(2**22 + 12345, me) or "")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_daemon_children_hold_no_capability(workdir: Path) -> None:
    import subprocess

    from capos_sched.rpc.children import shim_argv

    out = subprocess.run(
        shim_argv(
            ("sh", "-c", "grep -E '^Cap(Eff|Prm|Bnd|Amb)' /proc/self/status"), os.getpid(), None
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    caps = dict(line.split(":\t") for line in out.splitlines())
    assert set(caps.values()) == {"0000000000000000"}, caps


def test_the_daemon_process_is_not_dumpable_and_a_subreaper() -> None:
    import subprocess
    import sys

    code = (
        "from capos_sched import procguard; from capos_sched.rpc import daemon\n"
        "daemon.harden_daemon_process()\n"
        "import ctypes; libc = ctypes.CDLL(None)\n"
        "v = ctypes.c_int(); libc.prctl(37, ctypes.byref(v), 0, 0, 0)\n"  # PR_GET_CHILD_SUBREAPER
        "print(procguard.is_dumpable(), v.value)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "1"]
