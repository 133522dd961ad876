"""The trio runtime: simulated CPUs driving worker processes on real time.

The package stays import-light (worker processes import it on start-up);
``Runtime`` and ``RuntimeConfig`` are loaded on first access.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Runtime", "RuntimeConfig"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from capos_sched.runtime import runtime

        return getattr(runtime, name)
    raise AttributeError(name)
