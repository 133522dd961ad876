"""The process tree as Linux's ``/proc`` shows it: pure reads, no signals.

Used by the peer check (``rpc/peers.py``: is a peer one of our descendants?)
and by the reaper of orphans re-parented to the daemon.
"""

from __future__ import annotations

import contextlib
import os

MAX_DEPTH = 4096
"""Ancestor walks stop here (pid_max bounds real trees far below it)."""


def stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name: [state, ppid, pgrp, session, ...];
    None when the process is gone (or /proc is unreadable)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def parent_of(pid: int) -> int | None:
    fields = stat_fields(pid)
    return None if fields is None else int(fields[1])


def descends_from(pid: int, ancestor: int) -> bool | None:
    """True when ``ancestor`` is a strict ancestor of ``pid``; None when unknown
    (``pid`` or one of its ancestors vanished mid-walk)."""
    current = pid
    for _ in range(MAX_DEPTH):
        parent = parent_of(current)
        if parent is None:
            return None
        if parent == ancestor:
            return True
        if parent <= 1:
            return False
        current = parent
    return None


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's, as the kernel lists them)."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as f:
                pids.extend(int(p) for p in f.read().split())
    return pids


def adopted_zombies(me: int, exclude: set[int]) -> list[int]:
    """Zombie children of ``me`` outside its process group, minus ``exclude``."""
    group = os.getpgid(me)
    out = []
    for pid in children_of(me):
        if pid in exclude:
            continue
        fields = stat_fields(pid)
        if fields is not None and fields[0] == "Z" and int(fields[2]) != group:
            out.append(pid)
    return out
