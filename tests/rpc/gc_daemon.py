"""A daemon whose trio (owner) thread forces ``gc.collect()`` all the time.

``python gc_daemon.py MANIFEST LISTEN ADMIN GRANTS_DIR [INTERVAL_S]`` serves
MANIFEST like ``capos-sched serve --no-execute`` and, beside the owner's work,
runs a full collection on the trio thread every INTERVAL_S. If any pycapnp
object ever sits in cyclic garbage, that collection finalizes it away from the
RPC thread's event loop and the process aborts (SIGABRT), which the test sees.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import trio

from capos_sched.manifest import load_plan
from capos_sched.rpc.addr import parse_address
from capos_sched.rpc.daemon import DaemonConfig, serve_async
from capos_sched.serve import plan_host, plan_loader


async def collect_forever(interval: float) -> None:
    while True:
        gc.collect()
        await trio.sleep(interval)


async def main(argv: list[str]) -> int:
    manifest, listen, admin, grants = argv[:4]
    interval = float(argv[4]) if len(argv) > 4 else 0.002
    plan = load_plan(Path(manifest))
    config = DaemonConfig(
        str(Path(manifest).resolve()),
        parse_address(listen),
        parse_address(admin),
        Path(grants),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect_forever, interval)
        status = await serve_async(config, plan, plan_loader, plan_host)
        nursery.cancel_scope.cancel()
    return status


if __name__ == "__main__":
    sys.exit(trio.run(main, sys.argv[1:]))
