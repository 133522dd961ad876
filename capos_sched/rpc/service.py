"""The RPC thread: an asyncio loop running pycapnp, its sockets and exec'd children.

pycapnp speaks asyncio only, so the capability surface lives on its own
asyncio loop in a dedicated thread, while the trio thread owns scheduling
state (see bridge.py). This thread owns: the ``--listen`` socket (bootstrap:
Restorer), the ``--admin`` socket (bootstrap: Admin), per-connection state,
and the processes a manifest runs with ``exec`` (supervised by children.py).

Bad peers are contained per connection: a message larger than the
connection's traversal limit, garbage, a truncated message or a vanished
client ends that connection only; the loop's exception handler logs anything
that escapes instead of letting it kill the thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import capnp
import structlog

from . import offload, peers, unwrap
from .addr import ADMIN_SOCKET_MODE, LISTEN_SOCKET_MODE, Address, bind_unix
from .bridge import Bridge
from .children import ChildSupervisor, base_dir, check_exec
from .errors import WireError, wire_error
from .grants import ProcessGrants
from .owner import LoadResult, Owner
from .servers import AdminServer, ConnContext, RestorerServer, RpcCounters

log = structlog.get_logger("capos_sched.rpc")

PlanLoader = Callable[[str, str], Any]
"""``loader(source_text, name) -> Plan``; raises an exception whose str is the diagnostics.
A module-level function: it runs in a child interpreter (see offload.py)."""


@attrs.define
class RpcConfig:
    """How the RPC thread serves.

    ``listen_words``/``admin_words`` are Cap'n Proto traversal limits in
    8-byte words: a message declaring more is refused and its connection
    closed (the oversized-message defence).
    """

    listen: Address | None
    admin: Address | None
    max_calls: int = 1024
    max_connections: int = 256
    listen_words: int = 64 * 1024
    admin_words: int = 2 * 1024 * 1024
    base_dir: Path = attrs.field(factory=Path.cwd)
    stop_grace_s: float = 3.0
    exec_user: str | None = None
    """Exec'd processes run as this user (see children.py)."""
    refuse_descendants: bool = True
    """Close connections from the daemon's descendants (see peers.py)."""


class RpcService:
    """Runs the RPC thread; ``start``/``request_stop``/``join`` are thread-safe."""

    def __init__(
        self,
        config: RpcConfig,
        bridge: Bridge[Owner],
        loader: PlanLoader | None,
        processes: list[tuple[str, tuple[str, ...], ProcessGrants]],
    ) -> None:
        self.config = config
        self.bridge = bridge
        self.loader = loader
        self.counters = RpcCounters()
        self._initial = processes
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: dict[int, tuple[ConnContext, Any, Any]] = {}
        self.children = ChildSupervisor(
            new_ctx=self._new_ctx,
            serve=self._serve,
            words=config.listen_words,
            stop_grace_s=config.stop_grace_s,
            exec_user=config.exec_user,
        )
        self._next_conn = 0
        self._load_lock: asyncio.Lock | None = None
        self.addresses: dict[str, str] = {}
        self.finished = threading.Event()

    # ------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """Start the thread and wait until it listens (re-raises its start error)."""
        self._thread = threading.Thread(target=self._run, name="capos-rpc", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("RPC thread did not start in time")
        if self._error is not None:
            raise self._error

    def request_stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def failed(self) -> BaseException | None:
        return self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            log.exception("RPC thread failed")
            self._error = exc
        finally:
            self._ready.set()
            self.finished.set()

    async def _main(self) -> None:
        async with capnp.kj_loop():
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            self._load_lock = asyncio.Lock()
            loop.set_exception_handler(_loop_exception)
            self.bridge.attach(loop)
            await unwrap.probe()
            try:
                await self._open_listeners()
                for name, argv, pg in self._initial:
                    await self.children.start(name, argv, pg, self.config.base_dir)
            except BaseException as exc:
                self._error = exc
                await self._shutdown()
                return
            self._ready.set()
            await self._stop.wait()
            await self._shutdown()

    async def _shutdown(self) -> None:
        for srv in self._servers:
            srv.close()
        await self.children.stop_all()
        for ctx, server, stream in list(self._conns.values()):
            _close_quietly(server, stream)
            ctx.close()
        self._conns.clear()
        for path in self.addresses.values():
            if path.startswith("unix:"):
                with contextlib.suppress(OSError):
                    os.unlink(path[5:])

    # ------------------------------------------------------------- listening

    async def _open_listeners(self) -> None:
        cfg = self.config
        if cfg.admin is not None:
            if cfg.admin.kind != "unix":
                raise ValueError("--admin must be a unix: address (its mode is the authority)")
            sock = self._guard(bind_unix(str(cfg.admin.path), ADMIN_SOCKET_MODE), "admin")
            srv = await capnp.AsyncIoStream.create_unix_server(
                functools.partial(self._accept, "admin"), sock=sock
            )
            self._servers.append(srv)
            self.addresses["admin"] = str(cfg.admin)
        if cfg.listen is not None:
            if cfg.listen.kind == "unix":
                sock = self._guard(bind_unix(str(cfg.listen.path), LISTEN_SOCKET_MODE), "listen")
                srv = await capnp.AsyncIoStream.create_unix_server(
                    functools.partial(self._accept, "listen"), sock=sock
                )
                self.addresses["listen"] = str(cfg.listen)
            else:
                srv = await capnp.AsyncIoStream.create_server(
                    functools.partial(self._accept, "listen"),
                    cfg.listen.host,
                    cfg.listen.port,
                    reuse_address=True,
                )
                host, port = srv.sockets[0].getsockname()[:2]
                self.addresses["listen"] = str(Address("tcp", host=host, port=port))
            self._servers.append(srv)

    def _guard(self, sock: socket.socket, kind: str) -> socket.socket:
        return peers.guard(sock, kind) if self.config.refuse_descendants else sock

    async def _accept(self, kind: str, stream: Any) -> None:
        if len(self._conns) >= self.config.max_connections:
            log.warning("connection refused: too many connections", kind=kind)
            stream.close()
            return
        ctx = self._new_ctx(kind)
        bootstrap = AdminServer(ctx) if kind == "admin" else RestorerServer(ctx)
        words = self.config.admin_words if kind == "admin" else self.config.listen_words
        await self._serve(ctx, stream, bootstrap, words)

    def _new_ctx(self, kind: str) -> ConnContext:
        self._next_conn += 1
        return ConnContext(self, self.bridge, self._next_conn, kind, self.config.max_calls)

    async def _serve(self, ctx: ConnContext, stream: Any, bootstrap: Any, words: int) -> None:
        server = capnp.TwoPartyServer(stream, bootstrap=bootstrap, traversal_limit_in_words=words)
        self._conns[ctx.id] = (ctx, server, stream)
        self.counters.connections += 1
        log.debug("connection opened", conn=ctx.id, kind=ctx.kind)
        try:
            await server.on_disconnect()
            log.debug("connection closed", conn=ctx.id, kind=ctx.kind)
        except Exception as exc:  # a bad peer: garbage, oversized, truncated
            log.info("connection dropped", conn=ctx.id, kind=ctx.kind, reason=_short(exc))
        finally:
            self.counters.connections -= 1
            if self._conns.pop(ctx.id, None) is not None:
                _close_quietly(server, stream)
                ctx.close()

    # ------------------------------------------------------------------ load

    async def load(self, source: str, name: str) -> LoadResult:
        """Admin.load: parse (in a child interpreter), check exec paths, apply in the owner, then
        start/stop exec'd processes. Any error before the apply changes nothing."""
        if self.loader is None:
            raise wire_error("unimplemented", "this daemon was started without a manifest loader")
        assert self._load_lock is not None
        async with self._load_lock:
            try:
                plan = await offload.run_loader(self.loader, source, name)
            except offload.OffloadError as exc:
                _log_refused(name, str(exc))
                raise wire_error("invalidArgument", str(exc)) from None
            base = base_dir(name, self.config.base_dir)
            try:
                for proc in plan.processes:
                    argv = getattr(proc, "exec", None)
                    if argv:
                        check_exec(proc.name, tuple(argv), base)
                result: LoadResult = await self.bridge.submit(
                    functools.partial(Owner.load, plan=plan, name=name)
                )
            except WireError as exc:
                _log_refused(name, str(exc))
                raise
            log.info(
                "plan loaded",
                manifest=name,
                added=result.added,
                removed=result.removed,
                revoked=result.revoked,
            )
            stop = [*result.diff.removed_processes, *result.diff.restarted_processes]
            await self.children.stop_many(stop)
            self.config.base_dir = base
            for pname, argv, pg in result.start:
                await self.children.start(pname, argv, pg, base)
            return result


def _close_quietly(server: Any, stream: Any) -> None:
    for obj in (server, stream):
        with contextlib.suppress(Exception):
            obj.close()


def _short(exc: BaseException) -> str:
    text = getattr(exc, "description", None) or str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def _loop_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    log.warning(
        "RPC loop error",
        message=context.get("message"),
        error=None if exc is None else _short(exc),
    )


def _log_refused(name: str, diagnostics: str) -> None:
    """A refused Admin.load, with its first problem (the caller gets them all)."""
    lines = diagnostics.splitlines()
    log.warning(
        "plan refused",
        manifest=name,
        error=lines[0] if lines else "",
        problems=max(1, sum(1 for line in lines if line.startswith(f"{name}:"))),
    )
