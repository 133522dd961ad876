"""The optional C accelerator (capos_sched/core/_accel.c); everything else is in pyproject.toml.

``optional=True``: a machine without a working C compiler (or without Python's
headers) still installs, with a warning, and runs the pure-Python reference
(capos_sched/core/runqueue.py). Set CAPOS_SCHED_PURE=1 at run time to use the
reference even where the accelerator was built.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "capos_sched.core._accel",
            sources=["capos_sched/core/_accel.c"],
            optional=True,
        )
    ]
)
