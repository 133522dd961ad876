"""FIFO: one global queue, no weights in ordering (``CAPOS_SCHED_DISABLE_WFQ=1``).

It is also the fallback an ejected policy's threads continue under, so it uses
nothing but the mechanism's global DSQ: every CPU consumes it before asking
``dispatch``, so it needs no dispatch of its own. Accounting runs as under any
policy (the mechanism charges run time). Wakes never preempt.
"""

from __future__ import annotations

from typing import Any


class FifoPolicy:
    name = "fifo"
    builtin = True

    def select_cpu(self, ctx: Any, thread: Any, prev_cpu: int) -> int:
        return prev_cpu if prev_cpu >= 0 else max(ctx.pick_idle_cpu(), 0)

    def enqueue(self, ctx: Any, thread: Any, flags: int) -> None:
        ctx.insert(thread, ctx.GLOBAL_DSQ)
        idle = ctx.pick_idle_cpu(thread.last_cpu if thread.last_cpu is not None else -1)
        if idle >= 0:
            ctx.kick(idle)
