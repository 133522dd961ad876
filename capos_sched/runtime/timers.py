"""Nanosecond-precise timer waits for trio, through a Linux timerfd.

Why: trio sleeps in ``epoll_wait``, whose timeout has millisecond resolution
(Python rounds it up), so ``trio.sleep`` wakes a sleeper 0-1 ms after its
deadline (docs/benchmarks.md measured the runtime's oversleep at p50 276 us).
A timerfd armed at an absolute CLOCK_MONOTONIC deadline becomes readable at
the kernel's hrtimer precision, and trio wakes on readability at once.

Python 3.11 has no ``os.timerfd_*`` (added in 3.13), so the two libc calls go
through ctypes. Where they are unavailable, ``sleep_until`` falls back to
``trio.sleep``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time

import trio

_CLOCK_MONOTONIC = 1
_TFD_CLOEXEC = 0o2000000
_TFD_NONBLOCK = 0o4000
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.timerfd_settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        ]
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _load_libc()


def precise_timers_available() -> bool:
    return _LIBC is not None


async def sleep_until_monotonic_ns(deadline_ns: int, armed: set[int] | None = None) -> None:
    """Sleep until CLOCK_MONOTONIC (``time.monotonic_ns``) reaches ``deadline_ns``.

    Never returns early; cancellation closes the timer like a normal return.
    ``armed``, if given, holds the timer's descriptor while it is armed (the
    runtime's direct waits watch them: ``Worker.request``).
    """
    if _LIBC is None:
        await trio.sleep(max(0, deadline_ns - time.monotonic_ns()) / 1e9)
        return
    fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_CLOEXEC | _TFD_NONBLOCK)
    if fd < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"timerfd_create: {os.strerror(errno)}")
    try:
        deadline_ns = max(deadline_ns, 1)  # an all-zero it_value would disarm the timer
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(*divmod(deadline_ns, 1_000_000_000)))
        if _LIBC.timerfd_settime(fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"timerfd_settime: {os.strerror(errno)}")
        if armed is not None:
            armed.add(fd)
        await trio.lowlevel.wait_readable(fd)
    finally:
        if armed is not None:
            armed.discard(fd)
        trio.lowlevel.notify_closing(fd)
        os.close(fd)
