"""Policies by name: the built-ins, or a user's Python file; and the callback guard.

A user policy is a Python module that exposes ``POLICY``: an object with the
callbacks of ``capos_sched.core.policy`` (or a class, instantiated for every
install). ``resolve_policy("wfq" | "fifo" | "eevdf" | "path/to/file.py")`` gives
a ``PolicySpec`` whose ``create()`` is what the core's ``Scheduler`` and
``set_policy`` accept. Errors (no such file, a syntax error, no ``POLICY``, no
``enqueue``, an import that raises or never ends) are ``PolicyLoadError`` with
a one-line message naming the file.

The guard (``AlarmGuard``) bounds every callback of a user policy (default 50
ms), because the core cannot read a clock. In the main thread, where the
daemon's trio loop and the simulator run, a ``SIGALRM`` interval timer is armed
for the bound around each callback; its handler raises ``CallbackTimeout``
inside the callback, so even ``while True: pass`` is interrupted and the core
ejects the policy. In any other thread it falls back to a ``sys.settrace``
budget (checked at every line of the callback). Neither can interrupt one
long call into C (``sum(range(10**12))``): that ends when the C call returns,
and the overrun is then reported as a timeout all the same.
"""

from __future__ import annotations

import importlib.util
import itertools
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from capos_sched.core import BUILTIN_NAMES, CallbackTimeout

DEFAULT_CALLBACK_BOUND_NS = 50_000_000
"""A callback running longer than this ejects its policy."""
LOAD_BOUND_NS = 2_000_000_000
"""Executing a policy file (its module body) may take this long."""
LIVE_LOAD_BOUND_NS = 250_000_000
"""The bound for a policy loaded into a running daemon (``Admin.setPolicy``):
its module body runs in the daemon's scheduling thread, which dispatches
nothing meanwhile."""

_module_ids = itertools.count(1)


class PolicyLoadError(Exception):
    """A policy name or file that cannot be used; the message says why."""


@attrs.frozen
class PolicySpec:
    """A policy named by the operator: a built-in, or a loaded file.

    ``policy`` is the module's ``POLICY`` (None for a built-in).
    """

    name: str
    path: Path | None = None
    policy: Any = None

    def create(self) -> Any:
        """What the core installs: the built-in name, or a policy object."""
        if self.policy is None:
            return self.name
        return self.policy() if isinstance(self.policy, type) else self.policy

    @property
    def builtin(self) -> bool:
        return self.policy is None


def is_policy_file(value: str) -> bool:
    return value.endswith(".py")


def resolve_policy(value: str, base: Path | None = None) -> PolicySpec:
    """A built-in name, or a ``.py`` file (relative to ``base`` if given)."""
    if value in BUILTIN_NAMES:
        return PolicySpec(value)
    if not is_policy_file(value):
        names = ", ".join(BUILTIN_NAMES)
        raise PolicyLoadError(f"unknown policy {value!r}: expected one of {names}, or a .py file")
    path = Path(value)
    if base is not None and not path.is_absolute():
        path = base / path
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyLoadError(f"cannot read policy {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise PolicyLoadError(f"policy {path} is not UTF-8 text") from None
    return load_policy_source(source, str(path), path)


def load_policy_source(
    source: str, filename: str, path: Path | None = None, bound_ns: int = LOAD_BOUND_NS
) -> PolicySpec:
    """Execute a policy module's ``source`` (under ``bound_ns``) and take its ``POLICY``."""
    try:
        code = compile(source, filename, "exec")
    except SyntaxError as error:
        raise PolicyLoadError(
            f"{filename}:{error.lineno}:{error.offset or 0}: syntax error: {error.msg}"
        ) from None
    stem = Path(filename).stem or "policy"
    module_name = f"capos_sched_user_policy_{next(_module_ids)}_{stem}".replace("-", "_")
    spec = importlib.util.spec_from_loader(module_name, loader=None, origin=filename)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = filename
    try:
        AlarmGuard(bound_ns).call(exec, code, module.__dict__)
    except CallbackTimeout:
        limit = f"{bound_ns / 1e9:g} s"
        raise PolicyLoadError(f"{filename}: loading took longer than {limit}") from None
    except Exception as error:
        raise PolicyLoadError(f"{filename}: {type(error).__name__}: {error}") from None
    policy = getattr(module, "POLICY", None)
    if policy is None:
        raise PolicyLoadError(f"{filename}: defines no POLICY")
    if not callable(getattr(policy, "enqueue", None)):
        raise PolicyLoadError(f"{filename}: POLICY has no enqueue(ctx, thread, flags)")
    name = getattr(policy, "name", None)
    if not isinstance(name, str) or not name:
        name = Path(filename).name
    if name in BUILTIN_NAMES:
        raise PolicyLoadError(f"{filename}: POLICY.name {name!r} is a built-in policy's name")
    return PolicySpec(name, path, policy)


class AlarmGuard:
    """Runs a callback under a time bound (the core's ``CallbackGuard``).

    Invariant: the interval timer is armed only while a guarded callback runs
    (``_armed_guard`` is set); the SIGALRM handler is installed once, in the
    main thread, and raises only while armed.
    """

    def __init__(
        self,
        bound_ns: int = DEFAULT_CALLBACK_BOUND_NS,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        self.bound_ns = bound_ns
        self._clock = clock_ns
        self._alarm = threading.current_thread() is threading.main_thread()
        if self._alarm:
            previous = signal.getsignal(signal.SIGALRM)
            if previous not in (signal.SIG_DFL, signal.SIG_IGN, None) and not getattr(
                previous, "_capos_guard", False
            ):
                self._alarm = False  # someone else's SIGALRM: do not steal it
            else:
                signal.signal(signal.SIGALRM, _on_alarm)

    def call(self, fn: Any, *args: Any) -> Any:
        if self._alarm and threading.current_thread() is threading.main_thread():
            return self._call_with_alarm(fn, args)
        return self._call_with_trace(fn, args)

    def _overrun(self, elapsed_ns: int) -> CallbackTimeout:
        return CallbackTimeout(
            f"callback ran {elapsed_ns / 1e6:.1f} ms, over its bound of {self.bound_ns / 1e6:g} ms"
        )

    def _call_with_alarm(self, fn: Any, args: tuple[Any, ...]) -> Any:
        global _armed_guard
        outer = _armed_guard
        start = self._clock()
        _armed_guard = self
        signal.setitimer(signal.ITIMER_REAL, self.bound_ns / 1e9)
        try:
            result = fn(*args)
        except _Alarm:
            raise self._overrun(self._clock() - start) from None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            _armed_guard = outer
        elapsed = self._clock() - start
        if elapsed > self.bound_ns:
            raise self._overrun(elapsed)
        return result

    def _call_with_trace(self, fn: Any, args: tuple[Any, ...]) -> Any:
        start = self._clock()
        deadline = start + self.bound_ns
        clock = self._clock

        def tracer(frame: Any, event: str, arg: Any) -> Any:
            if clock() > deadline:
                raise _Alarm()
            return tracer

        previous = sys.gettrace()
        sys.settrace(tracer)
        try:
            result = fn(*args)
        except _Alarm:
            raise self._overrun(clock() - start) from None
        finally:
            sys.settrace(previous)
        elapsed = clock() - start
        if elapsed > self.bound_ns:
            raise self._overrun(elapsed)
        return result


class _Alarm(BaseException):
    """Raised inside an overrunning callback (a BaseException, so that a
    policy's ``except Exception`` cannot swallow it)."""


_armed_guard: AlarmGuard | None = None


def _on_alarm(signum: int, frame: Any) -> None:
    if _armed_guard is not None:
        raise _Alarm()


_on_alarm._capos_guard = True  # type: ignore[attr-defined]


def policy_and_guard(value: Any, base: Path | None = None) -> tuple[Any, AlarmGuard | None]:
    """What a host passes to the core for ``value`` (a built-in name, a
    ``.py`` path, or a policy object): the policy, and the guard that bounds a
    user policy's callbacks (None for a built-in)."""
    if isinstance(value, str) and is_policy_file(value):
        return resolve_policy(value, base).create(), AlarmGuard()
    if isinstance(value, PolicySpec):
        return value.create(), None if value.builtin else AlarmGuard()
    if isinstance(value, str) or getattr(value, "builtin", False) is True:
        return value, None
    return value, AlarmGuard()
