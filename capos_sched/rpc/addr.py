"""Addresses (``unix:PATH`` or ``tcp:HOST:PORT``), defaults, and Unix sockets
created with exact permissions."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile
from pathlib import Path

import attrs

from capos_sched.safedir import NOT_WRITABLE_BY_OTHERS, check_private_dir

ADMIN_SOCKET_MODE = 0o600
"""Whoever can open the admin socket is the operator."""

LISTEN_SOCKET_MODE = 0o666
"""The Restorer needs a token, so the listen socket itself grants nothing."""


class AddressError(ValueError):
    """An address that does not parse; the message says what was expected."""


@attrs.frozen
class Address:
    """A parsed address. Invariant: ``kind == "unix"`` iff ``path`` is set."""

    kind: str
    path: str | None = None
    host: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_address(text: str) -> Address:
    """``unix:PATH`` or ``tcp:HOST:PORT`` (IPv6 hosts in brackets)."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in ("unix", "tcp"):
        raise AddressError(f"address {text!r}: expected unix:PATH or tcp:HOST:PORT")
    if kind == "unix":
        if not rest:
            raise AddressError(f"address {text!r}: empty socket path")
        if "\x00" in rest:
            raise AddressError(f"address {text!r}: NUL in socket path")
        return Address("unix", path=rest)
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host:
        raise AddressError(f"address {text!r}: expected tcp:HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise AddressError(f"address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise AddressError(f"address {text!r}: port {port} outside [0, 65535]")
    return Address("tcp", host=host, port=port)


def run_dir() -> Path:
    """Where the default sockets live: ``$CAPOS_SCHED_RUN_DIR``, else
    ``$XDG_RUNTIME_DIR/capos-sched``, else ``/tmp/capos-sched-<uid>``."""
    explicit = os.environ.get("CAPOS_SCHED_RUN_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "capos-sched"
    return Path(tempfile.gettempdir()) / f"capos-sched-{os.getuid()}"


def default_listen() -> str:
    return f"unix:{run_dir() / 'listen.sock'}"


def default_admin() -> str:
    return f"unix:{run_dir() / 'admin.sock'}"


def ensure_private_dir(path: Path) -> None:
    """Create the runtime directory ``path`` (mode 0700) if missing; refuse one
    that is not ours or that others can write (``safedir.check_private_dir``)."""
    check_private_dir(path, allowed=NOT_WRITABLE_BY_OTHERS, create=True)


def checked_run_dir() -> Path:
    """``run_dir()`` for a client using a default address: refused unless ours."""
    return check_private_dir(run_dir(), allowed=NOT_WRITABLE_BY_OTHERS)


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
