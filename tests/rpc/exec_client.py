"""A client the daemon starts through a manifest's ``exec`` (tests).

Connects through the inherited socket, reports its grants, sets the weight of
the thread granted as ``a`` to argv[1], then waits until it is stopped.
"""

import asyncio
import sys

from capos_sched.client import connect_inherited


async def main() -> None:
    async with await connect_inherited() as session:
        print("caps " + ",".join(await session.list()), flush=True)
        policy = await session.policy("policy")
        thread = await session.thread("a")
        await policy.set_weight(thread, int(sys.argv[1]))
        print(f"set weight {sys.argv[1]}", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        await asyncio.Event().wait()


asyncio.run(main())
