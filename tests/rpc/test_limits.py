"""The admin socket always answers its operator, whatever peers of the listen
socket do: separate connection limits, an idle timeout for connections that
never restore a token, and a per-uid limit (SO_PEERCRED)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from capos_sched.client import connect

from .conftest import Daemon, arun, cli


def _open_idle(path: str, n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        out.append(s)
    return out


def _closed_by_daemon(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_idle_listen_connections_never_lock_the_operator_out(workdir: Path) -> None:
    d = Daemon(workdir, args=("--max-connections-per-uid", "100000"))  # only the socket limits
    idle = _open_idle(d.listen[5:], 400)  # more than any shared limit allowed
    time.sleep(1)  # accepted (or refused) by now; top up what other closes freed
    idle += _open_idle(d.listen[5:], 50)
    time.sleep(1)
    try:
        out = cli("stats", "--admin", d.admin, "--json")
        assert out.returncode == 0, out.stderr
        out = cli("grants", "--admin", d.admin)
        assert out.returncode == 0, out.stderr
    finally:
        for s in idle:
            s.close()
        d.stop()


def test_connections_that_never_restore_are_closed_and_per_uid_limits_hold(
    workdir: Path,
) -> None:
    d = Daemon(
        workdir,
        args=("--max-connections", "50", "--max-connections-per-uid", "6", "--idle-timeout", "1"),
    )
    try:
        time.sleep(0.5)  # the harness's readiness probes are closed by now
        idle = _open_idle(d.listen[5:], 8)
        # the 7th and 8th connections of this uid are closed at once
        assert [_closed_by_daemon(s, 0.5) for s in idle[6:]] == [True, True]
        # the first six stay open until the idle timeout closes them
        assert not _closed_by_daemon(idle[0], 0.2)
        time.sleep(1.2)
        assert all(_closed_by_daemon(s, 2) for s in idle[:6])
        for s in idle:
            s.close()

        async def restored_stays_open() -> None:
            async with await connect(d.listen, token=d.token("tuner")) as s:
                await asyncio_sleep(1.5)  # past the idle timeout: restored, so kept
                assert await s.list() == ["a", "b", "policy"]

        arun(restored_stays_open)
        events = [e.get("event") for e in d.events()]
        assert events.count("connection refused") >= 2
        assert events.count("connection closed: no token restored in time") >= 6
    finally:
        d.stop()


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def test_a_second_serve_on_live_sockets_touches_nothing(daemon: Daemon) -> None:
    before = {p.name: p.read_bytes() for p in daemon.grants.iterdir()}
    other = daemon.dir / "grants-2"
    out = cli(
        "serve",
        str(daemon.manifest),
        "--listen",
        daemon.listen,
        "--admin",
        daemon.admin,
        "--grants-dir",
        str(other),
    )
    assert out.returncode == 1
    assert "another process is already serving" in out.stderr
    assert not other.exists()  # nothing written, not even the directory
    assert {p.name: p.read_bytes() for p in daemon.grants.iterdir()} == before

    async def still_works() -> None:
        async with await connect(daemon.listen, token=daemon.token("tuner")) as s:
            assert await s.list() == ["a", "b", "policy"]

    arun(still_works)
