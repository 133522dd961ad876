"""One check for every directory whose contents are authority (sockets, tokens).

Whoever can write into the daemon's runtime directory, or into
``--grants-dir``, can put their own socket where clients look for the daemon
(capturing tokens and manifests, answering falsely) or read and replace token
files. So the daemon and the clients refuse, with one clear line, a directory
that is not ours: owned by another uid, group- or other-writable (or, for the
grants directory, accessible to anyone else at all), not a directory, or a
symlink owned by another user. Used by ``serve`` (runtime directory,
``--grants-dir``) and by the client commands (runtime directory).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

NOT_WRITABLE_BY_OTHERS = 0o755
"""The runtime directory: others may look (sockets carry their own modes), not write."""
PRIVATE = 0o700
"""The grants directory: token files are for its owner only."""


class UnsafeDirError(ValueError):
    """A directory that must be ours is not, or cannot be made; ``str`` is one line."""


def check_private_dir(path: Path, *, allowed: int = PRIVATE, create: bool = False) -> Path:
    """Refuse ``path`` unless it is a directory owned by us with no mode bits
    beyond ``allowed``; with ``create``, make it (and missing parents) first,
    the last one with mode 0700. Returns ``path``."""
    uid = os.geteuid()
    if create:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir(mode=PRIVATE, exist_ok=True)
        except OSError as exc:
            raise UnsafeDirError(f"{path}: cannot create it: {exc.strerror or exc}") from None
    try:
        link = os.lstat(path)
        info = os.stat(path)
    except OSError as exc:
        raise UnsafeDirError(f"{path}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(link.st_mode) and link.st_uid not in (uid, 0):
        raise UnsafeDirError(f"{path} is a symlink owned by uid {link.st_uid}, not by us ({uid})")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirError(f"{path} is not a directory")
    if info.st_uid != uid:
        raise UnsafeDirError(f"{path} belongs to uid {info.st_uid}, not to us ({uid})")
    if stat.S_IMODE(info.st_mode) & ~allowed & 0o777:
        mode = stat.S_IMODE(info.st_mode)
        raise UnsafeDirError(
            f"{path} has mode {mode:04o}; it must not allow more than {allowed:04o} "
            f"(chmod {allowed:o} {path})"
        )
    return path
