"""The compiled ``schema/capos.capnp`` (loaded once, shared by server, client and bench)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import capnp

_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "schema" / "capos.capnp",
    Path(__file__).resolve().parents[1] / "schema" / "capos.capnp",
)


def schema_path() -> Path:
    """Where ``capos.capnp`` lives: the repository's ``schema/`` (editable
    install) or ``capos_sched/schema/`` (installed package data)."""
    for path in _CANDIDATES:
        if path.is_file():
            return path
    raise FileNotFoundError(
        "capos.capnp not found; looked in " + ", ".join(str(p) for p in _CANDIDATES)
    )


@functools.cache
def capos() -> Any:
    """The loaded schema module (``capos().SchedulingPolicyCap`` ...)."""
    return capnp.load(str(schema_path()))
