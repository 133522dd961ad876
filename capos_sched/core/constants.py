"""Phase D constants, mirrored from ``schema/capos.capnp``.

The schema is the source of truth for clients; the core cannot import capnp, so
the values are repeated here and ``tests/test_schema.py`` checks that both agree.
The reasons for each value are written beside them in the schema.
"""

from typing import Final

REFERENCE_WEIGHT: Final = 1024
DEFAULT_WEIGHT: Final = 1024
MIN_WEIGHT: Final = 1
MAX_WEIGHT: Final = 10000
SLICE_NS: Final = 4_000_000
INTERACTIVE_SLICE_DIVISOR: Final = 4
BATCH_SLICE_MULTIPLIER: Final = 4

MAX_CPUS: Final = 64
"""The most simulated CPUs a plan may have (``#maxCpus`` in schema/manifest.cue;
not an ABI constant): every ``--cpus`` option uses this limit."""
