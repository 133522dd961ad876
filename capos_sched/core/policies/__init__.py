"""The built-in policies, each one page in the style of ``scx_simple.bpf.c``.

- ``wfq``: Phase D weighted-fair queueing by virtual finish (the default);
- ``fifo``: the global FIFO fallback, and where an ejected policy's threads go;
- ``eevdf``: earliest eligible virtual deadline first (the Phase D follow-on).
"""

from __future__ import annotations

from typing import Any

BUILTIN_NAMES = ("wfq", "fifo", "eevdf")


def builtin_policy(name: str, balance_threshold_ns: int | None = None) -> Any:
    """A fresh instance of a built-in policy (policies keep per-machine state)."""
    if name == "wfq":
        from .wfq import WfqPolicy

        return WfqPolicy(balance_threshold_ns)
    if name == "fifo":
        from .fifo import FifoPolicy

        return FifoPolicy()
    if name == "eevdf":
        from .eevdf import EevdfPolicy

        return EevdfPolicy()
    raise KeyError(name)
