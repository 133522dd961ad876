"""An exec'd process that tries to reach beyond its CapSet (tests).

Started by the daemon through a manifest's ``exec``. It reads what it can of
the daemon (environment, command line), tries the admin socket, reads another
process's token and tries to restore it, forks a double-forked, setsid'd
descendant that tries the admin socket too, and finally uses its own CapSet.
It prints one line ``RESULT {json}``; the descendant writes ``grandchild.json``.
"""

import asyncio
import json
import os
import sys
import time

from capos_sched.client import connect, connect_admin, connect_inherited


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


async def try_admin(admin: str) -> str:
    try:
        async with await connect_admin(admin, timeout=10) as session:
            await asyncio.wait_for(session.grants(), 10)
            return "reached"
    except Exception as exc:
        return "refused " + _error(exc)


def grandchild(admin: str) -> None:
    """Double fork + setsid: ends up re-parented (to the daemon, a subreaper)."""
    if os.fork() != 0:
        os._exit(0)
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    time.sleep(0.3)  # the middle process has exited: we are an orphan now
    result = {"ppid": os.getppid(), "admin": asyncio.run(try_admin(admin))}
    with open("grandchild.json.tmp", "w") as f:
        json.dump(result, f)
    os.rename("grandchild.json.tmp", "grandchild.json")
    os._exit(0)


async def main() -> None:
    out: dict[str, object] = {"env": sorted(os.environ), "uid": os.geteuid()}
    daemon = os.getppid()
    out["daemon"] = daemon
    try:
        with open(f"/proc/{daemon}/environ", "rb") as f:
            out["daemon_environ"] = "read: " + str(b"CAPOS_TEST_SECRET" in f.read())
    except OSError as exc:
        out["daemon_environ"] = "refused " + _error(exc)
    with open(f"/proc/{daemon}/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0")]
    admin = argv[argv.index("--admin") + 1]
    listen = argv[argv.index("--listen") + 1]
    grants = argv[argv.index("--grants-dir") + 1]
    out["admin"] = await try_admin(admin)
    try:
        with open(os.path.join(grants, "tuner.token"), "rb") as f:
            token = f.read().strip()
        out["token_file"] = "read"
    except OSError as exc:
        token = b""
        out["token_file"] = "refused " + _error(exc)
    if token:
        try:
            async with await connect(listen, token=token, timeout=10) as session:
                await asyncio.wait_for(session.list(), 10)
                out["restore"] = "reached"
        except Exception as exc:
            out["restore"] = "refused " + _error(exc)
    async with await connect_inherited() as session:
        out["own"] = await session.list()
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        daemon_argv = f.read().decode().split("\0")
    if os.fork() == 0:
        grandchild(daemon_argv[daemon_argv.index("--admin") + 1])
    asyncio.run(main())
    sys.stdout.flush()
    asyncio.run(asyncio.Event().wait())
