"""Linux process attributes the daemon and its children set on themselves (prctl).

Standard library only (ctypes): the worker imports it and must start fast.
Every function is best effort on kernels or platforms without the call, and
says so by its return value rather than by raising.

- ``set_parent_death_signal(parent)``: the kernel signals us when the thread
  that forked us exits (whatever the death, ``kill -9`` included); if the
  parent is already gone, exit at once.
- ``become_child_subreaper()``: orphaned descendants are re-parented to us,
  not to init, so a double-forked descendant stays a descendant (the peer
  check in ``rpc/peers.py`` relies on it).
- ``make_undumpable()``: ``/proc/<pid>/environ``, ``fd``, ``mem`` and ptrace
  are closed to processes without CAP_SYS_PTRACE, even of the same uid.
- ``drop_all_capabilities()``: empty the bounding and ambient sets and set
  no_new_privs, so what we ``exec`` next runs with no capability at all, even
  as uid 0, and can never gain one (setuid binaries, file capabilities).
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, arg, arg3, 0, 0)) == 0
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        return False


def set_parent_death_signal(parent: int, sig: int = signal.SIGKILL) -> bool:
    """Get ``sig`` when the parent dies; ``os._exit(0)`` if ``parent`` is already gone."""
    ok = _prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:
        os._exit(0)
    return ok


def become_child_subreaper() -> bool:
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def make_undumpable() -> bool:
    return _prctl(PR_SET_DUMPABLE, 0)


def is_dumpable() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(3, 0, 0, 0, 0)) == 1  # PR_GET_DUMPABLE
    except (OSError, AttributeError):  # pragma: no cover - non-Linux
        return True


def _last_capability() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):  # pragma: no cover - very old kernels
        return 40


def drop_all_capabilities() -> bool:
    """Empty the bounding and ambient sets, then set no_new_privs.

    Dropping from the bounding set needs CAP_SETPCAP (a root daemon has it); an
    unprivileged process has no capability to lose, so failure there is fine.
    True when, after the next execve, no capability can be held.
    """
    dropped = all(_prctl(PR_CAPBSET_DROP, cap) for cap in range(_last_capability() + 1))
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    nnp = _prctl(PR_SET_NO_NEW_PRIVS, 1)
    return nnp and (dropped or os.geteuid() != 0)
