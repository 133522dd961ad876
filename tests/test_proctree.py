"""The /proc readers behind the peer check and the orphan reaper."""

from __future__ import annotations

import os
import time

from capos_sched.proctree import adopted_zombies, descends_from, stat_fields


def _zombie(own_group: bool) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        if own_group:
            os.setpgid(0, 0)
        os._exit(0)
    deadline = time.monotonic() + 10
    while (stat_fields(pid) or ["?"])[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.01)
    return pid


def test_adopted_zombies_are_the_dead_children_outside_our_group_only() -> None:
    outside, inside = _zombie(own_group=True), _zombie(own_group=False)
    try:
        found = adopted_zombies(os.getpid(), exclude=set())
        assert outside in found and inside not in found
        assert outside not in adopted_zombies(os.getpid(), exclude={outside})
    finally:
        for pid in (outside, inside):
            os.waitpid(pid, 0)
    assert outside not in adopted_zombies(os.getpid(), exclude=set())


def test_descends_from_walks_the_parent_chain() -> None:
    me = os.getpid()
    assert descends_from(me, os.getppid()) is True
    assert descends_from(me, me) is False  # strict
    assert descends_from(os.getppid(), me) is False
    assert descends_from(2**22 + 999, me) is None  # no such process
