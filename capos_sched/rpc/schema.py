"""The compiled ``schema/capos.capnp`` (loaded once, shared by server, client and bench)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import capnp

from capos_sched.paths import CAPOS_SCHEMA


def schema_path() -> Path:
    """Where ``capos.capnp`` lives (the repository's ``schema/``)."""
    if not CAPOS_SCHEMA.is_file():
        raise FileNotFoundError(f"capos.capnp not found at {CAPOS_SCHEMA}")
    return CAPOS_SCHEMA


@functools.cache
def capos() -> Any:
    """The loaded schema module (``capos().SchedulingPolicyCap`` ...)."""
    return capnp.load(str(schema_path()))
