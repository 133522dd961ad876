"""Run Admin.load's manifest evaluation in a child interpreter.

Parsing and evaluating a manifest is CPU-bound (up to an 8 MiB source), and
CPU-bound work never runs in the daemon's interpreter: in a thread it would
hold the GIL against the trio thread's dispatch and the RPC loop. The
daemon starts ``python -I -m capos_sched.rpc.offload`` (isolated, see
interpreter.py), writes the pickled ``(loader, source, name)`` to its stdin
and reads back a pickled ``(True, plan)`` or ``(False, diagnostics_text)``.
The loader must be a module-level function (pickled by reference). The child
is killed if the call is cancelled or takes longer than its time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import sys
from collections.abc import Callable
from typing import Any

from capos_sched.interpreter import python_module_argv
from capos_sched.procguard import set_parent_death_signal

LOAD_TIMEOUT_S = 100.0
"""How long a manifest may take to evaluate (the client waits 120 s for load)."""


class OffloadError(Exception):
    """The loader refused the source (``str`` is its diagnostics)."""


async def run_loader(
    loader: Callable[[str, str], Any],
    source: str,
    name: str,
    timeout_s: float = LOAD_TIMEOUT_S,
) -> Any:
    """``loader(source, name)`` in a child interpreter: its plan, or OffloadError."""
    request = pickle.dumps((loader, source, name), protocol=pickle.HIGHEST_PROTOCOL)
    proc = await asyncio.create_subprocess_exec(
        *python_module_argv("capos_sched.rpc.offload", "--parent", str(os.getpid())),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        try:
            out, err = await asyncio.wait_for(proc.communicate(request), timeout_s)
        except TimeoutError:
            raise OffloadError(f"{name}: evaluation took longer than {timeout_s:g} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    if proc.returncode != 0 or not out:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise RuntimeError(f"manifest loader process exited {proc.returncode}: {detail[0]}")
    ok, value = pickle.loads(out)
    if not ok:
        raise OffloadError(value)
    return value


def main() -> None:
    if sys.argv[1:2] == ["--parent"]:
        set_parent_death_signal(int(sys.argv[2]))  # a daemon killed mid-load takes us along
    loader, source, name = pickle.loads(sys.stdin.buffer.read())
    try:
        answer = (True, loader(source, name))
    except Exception as exc:
        answer = (False, str(exc) or type(exc).__name__)
    sys.stdout.buffer.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
