"""How the daemon starts its own Python children (workers, the load evaluator).

Every child interpreter runs isolated (``python -I``): no current directory
or script directory on ``sys.path``, no ``PYTHON*`` variables (``PYTHONPATH``,
``PYTHONSTARTUP``, ...), no user site-packages. Otherwise ``python -m`` puts
the working directory first on ``sys.path``, and a daemon started from a
world-writable directory imports whatever ``argparse.py`` someone left there,
with the daemon's uid. The package itself is found through the installed
distribution (site-packages), which isolation keeps.
"""

from __future__ import annotations

import sys

ISOLATED = "-I"


def python_module_argv(module: str, *args: str) -> list[str]:
    """``argv`` running ``python -I -m module args...`` with this interpreter."""
    return [sys.executable, ISOLATED, "-m", module, *args]
