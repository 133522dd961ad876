"""Who may connect: the daemon refuses its own descendants on its Unix sockets.

A process the daemon starts with ``exec`` holds exactly its CapSet, which
arrives on an inherited socket. It never needs the ``--admin`` or the
``--listen`` socket, and must not use them: the admin socket would give it
the operator's authority, and a token it read would give it another
process's CapSet. So every connection accepted on those sockets is checked
with SO_PEERCRED: a peer whose pid descends from the daemon (exec'd
processes, their children, and, because the daemon is a child subreaper,
their double-forked orphans too) is closed before a byte is read. A peer
whose ancestry cannot be read (it vanished) is refused too: fail closed.

``guard(listening_socket)`` returns the same socket with this check in its
``accept()``, which is all the listener code needs to change.
"""

from __future__ import annotations

import os
import socket
import struct

import structlog

from capos_sched.proctree import descends_from

log = structlog.get_logger("capos_sched.rpc")

_UCRED = struct.Struct("3i")


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of a connected Unix socket's peer (at connect time)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def refusal(pid: int, daemon_pid: int) -> str | None:
    """Why a peer with ``pid`` is refused, or None when it may connect.

    pid 0 is a peer in a PID namespace we cannot see (not ours, so not one of
    our descendants); the daemon itself (in-process clients) may connect.
    """
    if pid == 0 or pid == daemon_pid:
        return None
    below = descends_from(pid, daemon_pid)
    if below is None:
        return f"peer pid {pid} vanished before its ancestry could be checked"
    if below:
        return f"peer pid {pid} is a process this daemon started (it holds only its CapSet)"
    return None


class GuardedSocket(socket.socket):
    """A listening Unix socket whose ``accept`` closes refused peers.

    A refused connection raises ConnectionAbortedError, which asyncio's
    accept loop treats as "nothing more to accept now"; the next readiness
    event accepts the connections still queued.
    """

    daemon_pid: int = 0
    kind: str = "?"

    def accept(self) -> tuple[socket.socket, object]:
        conn, addr = super().accept()
        try:
            pid, uid, _ = peer_credentials(conn)
            reason = refusal(pid, self.daemon_pid)
        except OSError as exc:
            pid, uid, reason = -1, -1, f"no peer credentials: {exc}"
        if reason is not None:
            conn.close()
            log.warning("connection refused", socket=self.kind, pid=pid, uid=uid, reason=reason)
            raise ConnectionAbortedError(reason)
        return conn, addr


def guard(sock: socket.socket, kind: str) -> socket.socket:
    """The same listening socket (the fd moves), refusing the daemon's descendants."""
    if sock.family != socket.AF_UNIX:
        return sock
    guarded = GuardedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    guarded.daemon_pid = os.getpid()
    guarded.kind = kind
    return guarded
