"""Addresses (``unix:PATH`` or ``tcp:HOST:PORT``), defaults, and Unix sockets
created with exact permissions."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile
from pathlib import Path

from capos_sched.safedir import NOT_WRITABLE_BY_OTHERS, check_private_dir
from capos_sched.wire import (
    Address,
    AddressError,
    default_admin,
    default_listen,
    parse_address,
    run_dir,
)

__all__ = [
    "ADMIN_SOCKET_MODE",
    "LISTEN_SOCKET_MODE",
    "Address",
    "AddressError",
    "bind_unix",
    "check_unix_free",
    "checked_run_dir",
    "default_admin",
    "default_listen",
    "ensure_private_dir",
    "parse_address",
    "run_dir",
]

ADMIN_SOCKET_MODE = 0o600
"""Whoever can open the admin socket is the operator."""

LISTEN_SOCKET_MODE = 0o666
"""The Restorer needs a token, so the listen socket itself grants nothing."""


def ensure_private_dir(path: Path) -> None:
    """Create the runtime directory ``path`` (mode 0700) if missing; refuse one
    that is not ours or that others can write (``safedir.check_private_dir``)."""
    check_private_dir(path, allowed=NOT_WRITABLE_BY_OTHERS, create=True)


def checked_run_dir() -> Path:
    """``run_dir()`` for a client using a default address: refused unless ours."""
    return check_private_dir(run_dir(), allowed=NOT_WRITABLE_BY_OTHERS)


def check_unix_free(path: str) -> None:
    """Refuse (AddressError) when a live process serves on the Unix socket ``path``.

    A daemon calls this for its sockets before it touches anything else (token
    files, the grants directory), so a second ``serve`` on the same sockets
    leaves the running daemon's files alone. ``bind_unix`` checks again.
    """
    target = Path(path)
    if not (target.exists() or target.is_symlink()):
        return
    if not stat.S_ISSOCK(target.lstat().st_mode):
        raise AddressError(f"{target} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(target))
    except OSError:
        return  # stale: bind_unix replaces it
    finally:
        probe.close()
    raise AddressError(f"{target}: another process is already serving there")


def bind_unix(path: str, mode: int) -> socket.socket:
    """A listening-ready Unix socket at ``path`` whose file has exactly ``mode``.

    The socket is bound under a fresh 0700 directory beside ``path``, given its
    mode, then renamed into place, so it is never reachable with looser
    permissions. A stale socket file nobody listens on is replaced; a live
    one is an error (another daemon serves there).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        if not stat.S_ISSOCK(target.lstat().st_mode):
            raise AddressError(f"{target} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(target))
        except OSError:
            target.unlink()
        else:
            raise AddressError(f"{target}: another process is already serving there")
        finally:
            probe.close()
    staging = Path(tempfile.mkdtemp(prefix=".capos-bind-", dir=target.parent))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        staged = staging / "s"
        sock.bind(str(staged))
        os.chmod(staged, mode)
        os.rename(staged, target)
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(OSError):
            for leftover in staging.iterdir():
                leftover.unlink()
            staging.rmdir()
    return sock
