"""Daemon side of a worker process: spawn, one request at a time, preempt, stop.

A ``Worker`` is owned by exactly one CPU task of the trio runtime; only that
task sends on its socket, so requests never interleave. ``preempt()`` may be
called from any trio task (it only writes the shared flag byte). The flag is
lowered only by ``clear_preempt()``, which the owner calls when it starts a
dispatch: a preempt raised for that dispatch before its request is sent (or
while the process is being replaced) still cuts it short.
"""

from __future__ import annotations

import array
import contextlib
import mmap
import os
import select
import signal
import socket
import subprocess
import threading
import time
from typing import IO, Any

import attrs
import structlog
import trio

from capos_sched.interpreter import python_module_argv
from capos_sched.runtime.protocol import (
    FLAG_BYTES,
    OP_ATTACH,
    OP_DETACH,
    OP_EXIT,
    REPLY,
    ST_READY,
    decode_reply,
    encode_request,
)

log = structlog.get_logger("capos_sched.runtime")

try:  # trio's per-thread run loop (private): see trio_idle_wakeup_fd
    from trio._core._run import GLOBAL_RUN_CONTEXT as _TRIO_RUN_CONTEXT
except ImportError:  # pragma: no cover - another trio layout
    _TRIO_RUN_CONTEXT = None

START_TIMEOUT_S = 20.0
"""How long a new worker may take to say READY (Python start-up on a loaded machine)."""

FD_SETSIZE = 1024
"""``select`` takes descriptors below this only (a direct wait needs them all there)."""

DIRECT_RUN_NS = 1_000_000
"""A worker's requests go through trio at least this often: trio runs a batch
of woken tasks one after the other, and the ones after this worker's task in
its batch are in no queue a direct wait can see, so they run only once it
yields."""


def trio_idle_wakeup_fd(within_s: float) -> int | None:
    """trio's wake-up descriptor, when nothing else in trio is due within
    ``within_s`` (no other task runnable, no deadline): then blocking the
    trio thread that long in a system call that also watches this descriptor
    delays nothing. trio's own wait watches it too: another thread's
    ``run_sync_soon`` (the RPC thread's hand-offs) and a signal write to it,
    and it stays readable until trio has taken the queued callbacks.

    None otherwise, and when trio's run loop (private) is not laid out as
    known here: a direct wait that could not see a hand-off is not made.
    Reading the run loop costs 0.6 us (``current_statistics`` 5 us, and it
    does not give the descriptor)."""
    runner = getattr(_TRIO_RUN_CONTEXT, "runner", None)
    try:
        if runner.runq or runner.deadlines.next_deadline() - runner.current_time() <= within_s:
            return None
        return int(runner.entry_queue.wakeup.wakeup_sock.fileno())
    except AttributeError:
        return None


class WorkerDied(Exception):
    """The worker process went away (EOF or a socket error).

    ``ran`` is False when the request could not even be sent (the worker was
    already dead, so the thread did not run), True when it died mid-request.
    """

    def __init__(self, message: str, *, ran: bool = True) -> None:
        super().__init__(message)
        self.ran = ran


def pinned_cores(cpus: int) -> list[int] | None:
    """The core each CPU's worker is pinned to, or None when there are fewer
    usable cores than simulated CPUs (then workers float)."""
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return None
    if len(allowed) < cpus:
        return None
    return allowed[:cpus]


WORKER_PREFIX = "capos-sched worker: "


def relay_stderr(pipe: IO[bytes], cpu: int, pid: int) -> threading.Thread:
    """Forward a worker's stderr (its set-up warnings, a dying traceback) to the
    structured log, one ``worker stderr`` warning per line, until EOF.

    A thread, not a trio task: the pipe must drain whoever owns the worker, and
    the thread ends by itself when the process exits (EOF).
    """

    def pump() -> None:
        with pipe:
            for raw in pipe:
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    log.warning(
                        "worker stderr", cpu=cpu, pid=pid, line=line.removeprefix(WORKER_PREFIX)
                    )

    thread = threading.Thread(target=pump, name=f"capos-sched-worker-stderr-{cpu}", daemon=True)
    thread.start()
    return thread


@attrs.define(eq=False)
class Worker:
    """One worker process serving CPU ``cpu``.

    Invariants: ``sock`` is the daemon's end of a SEQPACKET socketpair whose
    other end only ``process`` holds; ``flag`` maps the same page the worker
    polls; ``attached`` lists the data ids this process has mapped (reset when
    the process is replaced).
    """

    cpu: int
    nice: int
    core: int | None
    flag_fd: int
    flag: mmap.mmap
    sched_idle: bool = False
    """Run the process under SCHED_IDLE instead of only reniced (see RuntimeConfig)."""
    process: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    """Non-blocking; read and written with trio's wait_readable/wait_writable."""
    pid: int | None = None
    attached: set[int] = attrs.Factory(set)
    pending_detach: list[int] = attrs.Factory(list)
    busy: bool = False
    sent_ns: int = 0
    """CLOCK_MONOTONIC when the last request's send returned (for the probe)."""
    trio_waited_ns: int = 0
    """CLOCK_MONOTONIC when a reply was last waited for through trio."""
    send_waits: int = 0
    """Sends that found the socket full and waited through trio (never so far)."""
    direct_run_ns: int = DIRECT_RUN_NS
    """Direct waits stop once no reply was waited for through trio this long."""

    @classmethod
    def create(cls, cpu: int, nice: int, core: int | None, sched_idle: bool = False) -> Worker:
        flag_fd = os.memfd_create(f"capos-sched-preempt-{cpu}", os.MFD_CLOEXEC)
        os.ftruncate(flag_fd, FLAG_BYTES)
        flag = mmap.mmap(flag_fd, FLAG_BYTES)
        return cls(cpu=cpu, nice=nice, core=core, flag_fd=flag_fd, flag=flag, sched_idle=sched_idle)

    async def start(self) -> None:
        """Spawn the process (replacing any previous one) and wait for its READY."""
        self._close_socket()
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            cmd = python_module_argv(
                "capos_sched.runtime.worker",
                "--sock",
                str(child_end.fileno()),
                "--flag",
                str(self.flag_fd),
                "--parent",
                str(os.getpid()),
                "--nice",
                str(self.nice),
                "--core",
                str(-1 if self.core is None else self.core),
                *(["--sched-idle"] if self.sched_idle else []),
            )
            # Spawned synchronously from the trio thread, on purpose: the worker's
            # PR_SET_PDEATHSIG fires when the *thread* that forked it exits, and
            # trio.lowlevel.open_process forks from a cached helper thread that
            # retires after 10 s idle (which would SIGKILL every worker).
            self.process = subprocess.Popen(
                cmd,
                pass_fds=(child_end.fileno(), self.flag_fd),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,  # into the structured log, not raw on ours
            )
            assert self.process.stderr is not None
            relay_stderr(self.process.stderr, self.cpu, self.process.pid)
        except OSError as exc:  # out of processes or descriptors (EAGAIN, EMFILE)
            parent_end.close()
            raise WorkerDied(f"cannot start the worker for CPU {self.cpu}: {exc}") from exc
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        parent_end.setblocking(False)
        self.sock = parent_end
        self.attached = set()
        self.pending_detach = []
        try:
            with trio.move_on_after(START_TIMEOUT_S) as scope:
                data = await self._recv()
        except OSError as exc:  # e.g. ECONNRESET from a child that died at once
            await self.kill()
            raise WorkerDied(f"worker for CPU {self.cpu} did not start: {exc}") from exc
        if scope.cancelled_caught or not data:
            await self.kill()
            raise WorkerDied(f"worker for CPU {self.cpu} did not start")
        status, _, pid, _, _ = decode_reply(data)
        if status != ST_READY:
            await self.kill()
            raise WorkerDied(f"worker for CPU {self.cpu} sent status {status} instead of READY")
        self.pid = pid
        log.debug("worker started", cpu=self.cpu, pid=pid, nice=self.nice, core=self.core)

    async def request(
        self, payload: bytes, direct_wait_ns: int = 0, watch: Any = ()
    ) -> tuple[int, int, int, int, int]:
        """Send one run request and wait for its reply; WorkerDied if the process is gone.

        ``direct_wait_ns`` > 0 allows a direct wait (``_recv_direct``) of at
        most that long, with ``watch`` the other descriptors trio waits on
        that must end it (the other CPUs' busy workers, armed timers)."""
        assert self.sock is not None
        self.busy = True
        try:
            # Decided before the send: after it, the worker (often on this
            # core) runs only once the trio thread blocks.
            watched = self._direct_wait_set(direct_wait_ns, watch) if direct_wait_ns > 0 else None
            send_waits = self.send_waits
            try:
                await self._flush_detaches()
                await self._send(payload)
                self.sent_ns = time.perf_counter_ns()
            except OSError as exc:
                raise WorkerDied(f"send failed: {exc}", ran=False) from exc
            if self.send_waits != send_waits:
                watched = None  # other tasks ran meanwhile: the set may be stale
            try:
                data = None
                if watched is not None:
                    data = self._recv_direct(direct_wait_ns, watched)
                if data is None:
                    data = await self._recv()
                    self.trio_waited_ns = time.perf_counter_ns()
            except OSError as exc:
                raise WorkerDied(f"socket error: {exc}") from exc
        finally:
            self.busy = False
        if not data:
            raise WorkerDied("EOF on the worker socket")
        return decode_reply(data)

    async def attach(self, data_id: int, fd: int, blocks: int, block_size: int) -> None:
        """Map shared data ``data_id`` in the worker (sent with SCM_RIGHTS; no reply)."""
        assert self.sock is not None
        try:
            await self._send(
                encode_request(OP_ATTACH, a1=data_id, a2=blocks, a3=block_size),
                [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))],
            )
        except OSError as exc:
            raise WorkerDied(f"send failed: {exc}", ran=False) from exc
        self.attached.add(data_id)

    def detach_later(self, data_id: int) -> None:
        """Unmap ``data_id`` before the next request (never concurrently with one)."""
        if data_id in self.attached:
            self.attached.discard(data_id)
            self.pending_detach.append(data_id)

    async def _flush_detaches(self) -> None:
        assert self.sock is not None
        while self.pending_detach:
            data_id = self.pending_detach.pop()
            await self._send(encode_request(OP_DETACH, a1=data_id))

    async def _send(self, message: bytes, ancdata: list[Any] | None = None) -> None:
        """Send one record, no trio checkpoint when the socket has room (it
        always has: one request at a time, tiny records). The reply's wait that
        follows every request is the dispatch's checkpoint; a checkpoint here
        would hand the trio thread to other tasks between the send and that
        wait, and the worker's reply would wait for them."""
        assert self.sock is not None
        while True:
            try:
                if ancdata is None:
                    self.sock.send(message)
                else:
                    self.sock.sendmsg([message], ancdata)
                return
            except BlockingIOError:
                self.send_waits += 1
                await trio.lowlevel.wait_writable(self.sock)

    async def _recv(self) -> bytes:
        """Wait for one record and read it: the epoll wait first (a reply is
        never there yet right after a request), the ``recv`` once it is
        readable, and no second checkpoint after it (``trio.socket`` adds one)."""
        assert self.sock is not None
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                return self.sock.recv(REPLY.size)
            except BlockingIOError:
                continue

    def _direct_wait_set(self, wait_ns: int, watch: Any) -> list[int] | None:
        """The descriptors a direct wait of ``wait_ns`` selects on (this
        worker's first, then trio's wake-up, readable while callbacks are
        queued), or None when such a wait could delay anything trio knows of:
        another task runnable, a deadline within ``wait_ns``, a descriptor
        ``select`` cannot take, or no wait through trio for ``direct_run_ns``."""
        assert self.sock is not None
        if time.perf_counter_ns() - self.trio_waited_ns > self.direct_run_ns:
            return None
        wakeup = trio_idle_wakeup_fd(wait_ns / 1e9)
        if wakeup is None:
            return None
        watched = [self.sock.fileno(), wakeup, *watch]
        return None if max(watched) >= FD_SETSIZE else watched

    def _recv_direct(self, wait_ns: int, watched: list[int]) -> bytes | None:
        """The reply, waited for in a blocking ``select`` on the trio thread,
        or None (then the caller waits through trio) when another descriptor
        of ``watched`` is ready first (another CPU's reply, a timer, a
        hand-off from another thread) or no reply came within ``wait_ns``.

        Why: through trio, a reply costs the trio thread about 28 us around its
        ``epoll_wait`` (docs/benchmarks.md, "Runtime per-slice cost"), more than
        the kernel's whole round trip, and a short IPC slice pays it at every
        hop. ``select`` has a microsecond timeout (``epoll_wait``'s is a
        millisecond), so the wait stays as short as asked."""
        assert self.sock is not None
        ready, _, _ = select.select(watched, (), (), wait_ns / 1e9)
        if watched[0] not in ready:
            return None
        try:
            return self.sock.recv(REPLY.size)
        except BlockingIOError:  # pragma: no cover - readable means a record or EOF
            return None

    def _close_socket(self) -> None:
        if self.sock is not None:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
            self.sock = None

    def preempt(self) -> None:
        """Raise the flag: the running (or next) kernel stops at its next poll."""
        self.flag[0] = 1

    def clear_preempt(self) -> None:
        """Lower the flag (a new dispatch starts; earlier preempts are stale)."""
        self.flag[0] = 0

    def exit_status(self) -> str:
        """How the process ended, for crash reports (call after it exited)."""
        code = None if self.process is None else self.process.poll()
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exited with status {code}"

    async def reap(self, timeout_s: float = 2.0) -> None:
        """Wait for an already dying process, then SIGKILL it if it lingers."""
        if self.process is None:
            return
        with trio.move_on_after(timeout_s):
            await self._wait()
        if self.process.poll() is None:
            await self.kill()

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Ask the worker to exit (OP_EXIT, then EOF); SIGKILL after ``timeout_s``."""
        if self.sock is not None:
            try:
                with trio.move_on_after(0.2):
                    await self._send(encode_request(OP_EXIT))
            except OSError:
                pass
            self._close_socket()
        await self.reap(timeout_s)

    async def kill(self) -> None:
        self._close_socket()
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._wait()

    async def _wait(self) -> None:
        """Wait for the process to exit and reap it (pidfd readiness, else polling)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        try:
            pidfd = os.pidfd_open(process.pid)
        except (AttributeError, OSError):
            pidfd = -1
        try:
            while process.poll() is None:
                if pidfd >= 0:
                    await trio.lowlevel.wait_readable(pidfd)
                else:  # pragma: no cover - kernels without pidfd
                    await trio.sleep(0.005)
        finally:
            if pidfd >= 0:
                os.close(pidfd)

    def close(self) -> None:
        """Release the flag page (after the process is gone)."""
        try:
            self.flag.close()
        finally:
            with contextlib.suppress(OSError):
                os.close(self.flag_fd)
