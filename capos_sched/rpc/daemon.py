"""``capos-sched serve``: the trio owner thread plus the RPC thread.

Threads:

* the **trio thread** (the process's main thread) owns the scheduling host and
  the grant table (``Owner``); it runs the host (``host_runner``), answers
  signals, and drains the bridge;
* the **RPC thread** (``RpcService``) runs pycapnp on asyncio and hands every
  operation to the owner through the bridge.

The host is pluggable: ``host_factory(plan)`` builds it and
``host_runner(host, task_status=...)`` runs it until the daemon stops (calling
``task_status.started()`` once it is running). ``serve`` picks them in
``capos_sched.serve.host_plugin``: the trio ``Runtime`` run with
``stop_when_finished=False`` (threads execute on worker processes), or, with
``--no-execute``, a bare ``PlanHost`` with ``idle_runner`` (threads are held
in the core; grants and state changes work, nothing runs).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import structlog
import trio

from capos_sched import procguard

from . import grantsdir
from .addr import Address, AddressError, check_unix_free
from .bridge import Bridge
from .children import check_exec
from .gate import DEFAULT_MAX_ANSWERS, GateLimits
from .grants import GrantTable, HostLike
from .loads import PlanLoader
from .owner import Owner
from .service import RpcConfig, RpcService, ServeError, SocketLimits

log = structlog.get_logger("capos_sched.rpc")

HostFactory = Callable[[Any], HostLike]
"""``factory(plan) -> Host`` (rpc/host.py); capos_sched/serve.py adapts the real hosts."""
HostRunner = Callable[..., Awaitable[None]]


async def idle_runner(host: HostLike, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Keep a bare PlanHost alive: nothing executes, state changes only by RPC."""
    task_status.started()
    await trio.sleep_forever()


@attrs.define
class DaemonConfig:
    """Everything ``serve`` needs besides the plan and the host."""

    manifest_name: str
    listen: Address | None
    admin: Address | None
    grants_dir: Path | None = None
    base_dir: Path = attrs.field(factory=Path.cwd)
    max_calls: int = 1024
    max_connections: int = 128
    """Connections the listen socket accepts (the admin socket has its own 16)."""
    max_per_uid: int | None = 32
    idle_timeout_s: float | None = 10.0
    max_answers: int = DEFAULT_MAX_ANSWERS
    stall_timeout_s: float = 10.0
    exec_user: str | None = None
    refuse_descendants: bool = True
    """Refuse the daemon process's descendants on its sockets (rpc/peers.py); off
    only where the daemon is embedded in a process that starts its own clients."""


@attrs.define
class DaemonState:
    """What a running daemon exposes to in-process callers (tests, bench)."""

    owner: Owner
    bridge: Bridge[Owner]
    service: RpcService


def run_daemon(
    config: DaemonConfig,
    plan: Any,
    *,
    loader: PlanLoader | None,
    host_factory: HostFactory,
    host_runner: HostRunner = idle_runner,
) -> int:
    """Serve until SIGINT/SIGTERM (exit 0) or a failure of the host or RPC thread (exit 1)."""
    harden_daemon_process()
    return trio.run(serve_async, config, plan, loader, host_factory, host_runner)


def harden_daemon_process() -> None:
    """Process-wide, so only for a process that is the daemon (not in-process tests):
    a child subreaper (orphans of exec'd processes stay its descendants, so the
    peer check still refuses them) and not dumpable (its ``/proc`` entries and
    ptrace are closed to processes without CAP_SYS_PTRACE, even of its uid)."""
    procguard.become_child_subreaper()
    procguard.make_undumpable()


async def serve_async(
    config: DaemonConfig,
    plan: Any,
    loader: PlanLoader | None,
    host_factory: HostFactory,
    host_runner: HostRunner = idle_runner,
    task_status: Any = trio.TASK_STATUS_IGNORED,
    *,
    handle_signals: bool = True,
) -> int:
    for address in (config.listen, config.admin):
        if address is not None and address.kind == "unix":
            try:
                check_unix_free(str(address.path))
            except AddressError as exc:  # before any file is touched
                log.error("cannot serve", error=str(exc))
                return 1
    for proc in plan.processes:
        argv = getattr(proc, "exec", None)
        if argv:
            check_exec(proc.name, tuple(argv), config.base_dir)
    host = host_factory(plan)
    grants = GrantTable.from_plan(plan, host, config.grants_dir)
    owner = Owner(host, grants, config.manifest_name)
    bridge: Bridge[Owner] = Bridge(owner, trio.lowlevel.current_trio_token())
    owner.delegation.publish = bridge.publish  # CpuListener notifications, trio -> RPC
    gate = GateLimits(max_answers=config.max_answers, stall_timeout_s=config.stall_timeout_s)
    rpc_config = RpcConfig(
        listen=config.listen,
        admin=config.admin,
        max_calls=config.max_calls,
        listen_limits=SocketLimits(
            config.max_connections,
            config.max_per_uid,
            config.idle_timeout_s,
            gate,
        ),
        admin_limits=SocketLimits(16, gate=gate),
        base_dir=config.base_dir,
        exec_user=config.exec_user,
        refuse_descendants=config.refuse_descendants,
    )
    service = RpcService(rpc_config, bridge, loader, owner.processes_to_start())
    status = 0
    # Signals are ours from here to the very end: a second SIGTERM/SIGINT during
    # the shutdown must not kill the process half-way (sockets and tokens left).
    # Once stopped, the process is exiting: the receiver then restores SIG_IGN,
    # not the default action, so a signal arriving after "stopped" cannot kill
    # the exit half-way either (set first, so no window has the default action).
    stack = contextlib.ExitStack()
    signals = None
    if handle_signals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        signals = stack.enter_context(trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))
    claimed = grantsdir.claim(config.grants_dir) if config.grants_dir is not None else None
    if claimed is not None and claimed.removed:
        log.info("stale token files removed", files=[str(p) for p in claimed.removed])
    written = grants.write_token_files()
    try:
        async with trio.open_nursery() as nursery:
            if signals is not None:
                nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
            await nursery.start(_run_host, host_runner, host, nursery.cancel_scope)
            try:
                await trio.to_thread.run_sync(service.start)
            except ServeError as exc:
                log.error("cannot serve", error=str(exc))
                status = 1
                nursery.cancel_scope.cancel()
                return status
            log.info(
                "serving",
                manifest=config.manifest_name,
                threads=len(host.thread_refs()),  # type: ignore[attr-defined]
                token_files=[str(p) for p in written],
                **service.addresses,
            )
            if config.grants_dir is None:
                warn_unrestorable(plan)
            task_status.started(DaemonState(owner, bridge, service))
            await trio.to_thread.run_sync(service.finished.wait, abandon_on_cancel=True)
            if service.failed is not None:
                status = 1
            nursery.cancel_scope.cancel()
    except Exception:
        log.exception("daemon failed")
        status = 1
    finally:
        with trio.CancelScope(shield=True):
            service.request_stop()
            async with trio.open_nursery() as stopping:
                if signals is not None:
                    stopping.start_soon(_hurry_on_signal, signals, service)
                await trio.to_thread.run_sync(service.join)
                stopping.cancel_scope.cancel()
            bridge.close()
            grants.remove_all_token_files()
            if claimed is not None:
                claimed.release()
        stack.close()
        log.info("stopped", status=status)
    return status


async def _run_host(
    host_runner: HostRunner,
    host: HostLike,
    scope: trio.CancelScope,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    try:
        await host_runner(host, task_status=task_status)
    finally:
        scope.cancel()  # the host stopped: so does the daemon


async def _stop_on_signal(signals: Any, scope: trio.CancelScope) -> None:
    async for signum in signals:
        log.info("stopping", signal=signal.Signals(signum).name)
        scope.cancel()
        return


async def _hurry_on_signal(signals: Any, service: RpcService) -> None:
    """Another signal while stopping: still a clean exit, only faster (exec'd
    processes get SIGKILL now instead of after their grace)."""
    async for signum in signals:
        log.info("stopping now", signal=signal.Signals(signum).name)
        service.hurry()


def warn_unrestorable(plan: Any) -> None:
    """Processes that hold grants but that the daemon does not start reach them
    only with their token, which only --grants-dir hands out: say so."""
    waiting = [p.name for p in plan.processes if p.grants and not p.exec]
    if waiting:
        log.warning(
            "no --grants-dir: no token file is written, so nobody can restore these "
            "processes' grants",
            processes=waiting,
        )
