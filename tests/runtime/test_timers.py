"""The timerfd-based precise sleep: never early, and leaks nothing on cancel."""

from __future__ import annotations

import os
import time

import trio

from capos_sched.runtime.timers import precise_timers_available, sleep_until_monotonic_ns


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_precise_timers_are_available_on_linux() -> None:
    assert precise_timers_available()


async def test_never_wakes_before_the_deadline() -> None:
    for delay_ns in (1, 200_000, 2_000_000, 7_300_000):
        deadline = time.monotonic_ns() + delay_ns
        with trio.fail_after(5):
            await sleep_until_monotonic_ns(deadline)
        assert time.monotonic_ns() >= deadline


async def test_a_past_deadline_returns() -> None:
    with trio.fail_after(5):
        await sleep_until_monotonic_ns(time.monotonic_ns() - 10**9)
        await sleep_until_monotonic_ns(0)


async def test_cancellation_closes_the_timer() -> None:
    before = open_fds()
    for _ in range(50):
        with trio.move_on_after(0.001):
            await sleep_until_monotonic_ns(time.monotonic_ns() + 10**10)
    assert open_fds() == before
