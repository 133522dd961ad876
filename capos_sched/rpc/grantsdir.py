"""``--grants-dir``: checked, locked for one daemon, and cleared of stale tokens.

``claim(path)`` makes sure the directory is ours and private (mode 0700,
``safedir.check_private_dir``), then takes an exclusive ``flock`` on
``path/.lock`` for the daemon's lifetime. The kernel drops the lock when the
daemon dies, however it dies, so holding it proves that no live daemon uses
the directory: every ``*.token`` file left in it belongs to a dead daemon
and is removed. A second daemon pointed at the same directory is refused
before it touches anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

import attrs

from capos_sched.safedir import PRIVATE, UnsafeDirError, check_private_dir

LOCK_NAME = ".lock"


class GrantsDirError(UnsafeDirError):
    """The grants directory cannot be used; ``str`` is one line."""


@attrs.define
class GrantsDirClaim:
    """The daemon's hold on its grants directory. Invariant: ``fd`` holds the lock until
    ``release``."""

    path: Path
    fd: int
    removed: list[Path]

    def release(self) -> None:
        """Leave the directory as a clean stop should: no lock file, lock dropped.

        The lock file is unlinked while still locked, so a daemon starting now
        either fails to lock the old file or creates a fresh one."""
        if self.fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                (self.path / LOCK_NAME).unlink()
            os.close(self.fd)
            self.fd = -1


def claim(path: Path) -> GrantsDirClaim:
    try:
        check_private_dir(path, allowed=PRIVATE, create=True)
    except UnsafeDirError as exc:
        raise GrantsDirError(f"--grants-dir {exc}") from None
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise GrantsDirError(f"--grants-dir {path}: cannot open its lock: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise GrantsDirError(f"--grants-dir {path} is in use by another running daemon") from None
    removed = []
    for stale in sorted(path.glob("*.token")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    return GrantsDirClaim(path, fd, removed)
