"""A worker process: executes compute kernels for one simulated CPU.

Started by the daemon as ``python -m capos_sched.runtime.worker --sock FD
--flag FD --parent PID [--nice N] [--core K]``. It imports only the standard
library (and ``protocol``), so it starts fast and never loads trio or capnp.

Lifecycle guarantees:
- ``PR_SET_PDEATHSIG`` (via ``prctl``) makes the kernel SIGKILL the worker when
  the daemon dies, whatever the death; if the daemon died before the call, the
  worker notices its parent changed and exits.
- EOF on the socket (the daemon closed it, or died) ends the worker at once.
- SIGINT is ignored: Ctrl-C on a terminal reaches the whole process group, and
  the daemon decides when its workers stop.

The worker keeps no scheduling state: everything a slice needs (the budget,
the hash position and accumulator) travels in the request, so any worker can
run any thread next (migration is free). Shared hash data is mapped once per
worker from a ``memfd`` the daemon passes with ``OP_ATTACH``.
"""

from __future__ import annotations

import argparse
import array
import hashlib
import mmap
import os
import signal
import socket
import sys
import time

from capos_sched.procguard import set_parent_death_signal
from capos_sched.runtime.protocol import (
    FLAG_BYTES,
    OP_ATTACH,
    OP_DETACH,
    OP_EXIT,
    OP_HASH,
    OP_SPIN,
    REPLY,
    REQUEST,
    ST_COMPLETE,
    ST_ERROR,
    ST_LIMIT,
    ST_PREEMPTED,
    ST_READY,
    U64_MASK,
)

WALL_SLACK_NS = 50_000_000
"""A slice ends after ``2 * limit + WALL_SLACK_NS`` of wall time even if it got
less CPU, so a long-starved or stopped worker gives its simulated CPU back; the
slack keeps ordinary scheduling hiccups from splitting short bursts."""


class SliceClock:
    """What a slice is measured in: the worker's own CPU time (thread CPU clock).

    Time the worker was descheduled or stopped (SIGSTOP) is not CPU time, so it
    is neither charged nor credited. The CPU clock (a system call) is read only
    once the cheap wall clock says the budget may be used up: CPU time never
    exceeds wall time.
    """

    __slots__ = ("cpu0", "limit", "wall_cap", "wall_end")

    def __init__(self, limit_ns: int) -> None:
        wall = time.perf_counter_ns()
        self.cpu0 = time.thread_time_ns()
        self.limit = limit_ns
        self.wall_end = wall + limit_ns
        self.wall_cap = wall + 2 * limit_ns + WALL_SLACK_NS

    def expired(self) -> bool:
        wall = time.perf_counter_ns()
        if wall < self.wall_end:
            return False
        return wall >= self.wall_cap or self.used() >= self.limit

    def used(self) -> int:
        return time.thread_time_ns() - self.cpu0


def spin(limit_ns: int, flag: mmap.mmap) -> tuple[int, int]:
    """Compute until ``limit_ns`` of CPU time is used or the flag is raised:
    (status, CPU time used)."""
    clock = SliceClock(limit_ns)
    x = 0
    while True:
        if clock.expired():
            return ST_LIMIT, clock.used()
        if flag[0]:
            return ST_PREEMPTED, clock.used()
        for i in range(32):  # a little arithmetic between clock reads
            x = (x + i * i) & 0xFFFF


def hash_blocks(
    data: memoryview,
    blocks: int,
    block_size: int,
    position: int,
    end: int,
    limit_ns: int,
    acc: int,
    flag: mmap.mmap,
) -> tuple[int, int, int, int]:
    """Hash blocks ``position..end`` for at most ``limit_ns`` of CPU time:
    (status, CPU time used, position, acc).

    The limit and the flag are checked after every block, so a slice
    overruns by at most one block's hashing time.
    """
    blake2b = hashlib.blake2b
    clock = SliceClock(limit_ns)
    while position < end:
        offset = (position % blocks) * block_size
        digest = blake2b(data[offset : offset + block_size], digest_size=8).digest()
        acc = ((acc * 31) ^ int.from_bytes(digest, "little")) & U64_MASK
        position += 1
        if position >= end:
            return ST_COMPLETE, clock.used(), position, acc
        if clock.expired():
            return ST_LIMIT, clock.used(), position, acc
        if flag[0]:
            return ST_PREEMPTED, clock.used(), position, acc
    return ST_COMPLETE, clock.used(), position, acc


def serve(sock: socket.socket, flag: mmap.mmap) -> None:
    """Answer requests until EOF, OP_EXIT or a dead socket (all mean: exit quietly)."""
    try:
        _serve(sock, flag)
    except OSError:
        return  # the daemon went away mid-reply


def _serve(sock: socket.socket, flag: mmap.mmap) -> None:
    datasets: dict[int, tuple[mmap.mmap, memoryview, int, int]] = {}
    perf_counter_ns = time.perf_counter_ns
    fd_space = socket.CMSG_SPACE(array.array("i").itemsize)
    sock.send(REPLY.pack(ST_READY, 0, os.getpid(), 0, 0))
    while True:
        msg, ancdata, _flags, _addr = sock.recvmsg(REQUEST.size, fd_space)
        if not msg:
            return  # EOF: the daemon is gone or closed us
        received_ns = perf_counter_ns()
        op, tid, limit_ns, a1, a2, a3, acc = REQUEST.unpack(msg)
        if op == OP_SPIN:
            status, elapsed = spin(limit_ns, flag)
            sock.send(REPLY.pack(status, tid, elapsed, received_ns, perf_counter_ns()))
        elif op == OP_HASH:
            entry = datasets.get(a1)
            if entry is None:
                sock.send(REPLY.pack(ST_ERROR, tid, 0, a2, acc))
                continue
            _, view, blocks, block_size = entry
            status, elapsed, position, acc = hash_blocks(
                view, blocks, block_size, a2, a3, limit_ns, acc, flag
            )
            sock.send(REPLY.pack(status, tid, elapsed, position, acc))
        elif op == OP_ATTACH:
            fds = array.array("i")
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            if not fds:
                continue
            try:
                mapped = mmap.mmap(fds[0], a2 * a3, prot=mmap.PROT_READ)
                datasets[a1] = (mapped, memoryview(mapped), a2, a3)
            except (OSError, ValueError) as exc:
                print(f"capos-sched worker: attach {a1} failed: {exc}", file=sys.stderr)
            finally:
                for fd in fds:
                    os.close(fd)
        elif op == OP_DETACH:
            entry = datasets.pop(a1, None)
            if entry is not None:
                entry[1].release()
                entry[0].close()
        elif op == OP_EXIT:
            return
        else:
            sock.send(REPLY.pack(ST_ERROR, tid, 0, 0, 0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="capos-sched-worker")
    parser.add_argument("--sock", type=int, required=True)
    parser.add_argument("--flag", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--nice", type=int, default=0)
    parser.add_argument("--core", type=int, default=-1)
    parser.add_argument("--sched-idle", action="store_true")
    args = parser.parse_args(argv)
    set_parent_death_signal(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.nice:
        try:
            os.nice(args.nice)
        except OSError as exc:
            print(f"capos-sched worker: nice {args.nice} refused: {exc}", file=sys.stderr)
    if args.sched_idle:
        # Below every normal task: the daemon (RPC, dispatch) always runs first.
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            print(f"capos-sched worker: SCHED_IDLE refused: {exc}", file=sys.stderr)
    if args.core >= 0:
        try:
            os.sched_setaffinity(0, {args.core})
        except OSError as exc:
            print(f"capos-sched worker: pin to core {args.core}: {exc}", file=sys.stderr)
    flag = mmap.mmap(args.flag, FLAG_BYTES)
    os.close(args.flag)
    sock = socket.socket(fileno=args.sock)
    try:
        serve(sock, flag)
    finally:
        sock.close()


if __name__ == "__main__":
    main()
