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

from . import peers, unwrap
from .addr import ADMIN_SOCKET_MODE, LISTEN_SOCKET_MODE, Address, bind_unix
from .bridge import Bridge
from .children import ChildSupervisor
from .errors import scrub
from .gate import Gate, GateLimits
from .grants import ProcessGrants
from .loads import PlanLoader, PlanLoads
from .owner import LoadResult, Owner
from .servers import AdminServer, ConnContext, RestorerServer, RpcCounters

log = structlog.get_logger("capos_sched.rpc")


@attrs.define
class SocketLimits:
    """Bounds for the connections of one socket (each socket has its own, so
    peers of the listen socket can never use up the admin socket's).

    ``max_per_uid`` counts connections by the peer's uid (SO_PEERCRED; Unix
    sockets only). ``idle_timeout_s`` closes a connection that has not
    restored a token by then (listen socket only: admin and exec'd processes
    hold their capability from the start).
    """

    max_connections: int
    max_per_uid: int | None = None
    idle_timeout_s: float | None = None
    gate: GateLimits = attrs.field(factory=GateLimits)


@attrs.define(eq=False)
class Conn:
    """One served connection (RPC thread only)."""

    ctx: ConnContext
    gate: Gate | None
    uid: int | None = None
    server: Any = None
    stream: Any = None


class ServeError(Exception):
    """The RPC thread could not start serving (the text says why)."""


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
    listen_limits: SocketLimits = attrs.field(factory=lambda: SocketLimits(128, 32, 10.0))
    admin_limits: SocketLimits = attrs.field(factory=lambda: SocketLimits(16))
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
        self._error: str | None = None
        """Why the thread failed, as text: an exception would carry RPC-thread frames."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._conns: dict[int, Conn] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.children = ChildSupervisor(
            new_ctx=self._new_ctx,
            serve=self._serve,
            words=config.listen_words,
            stop_grace_s=config.stop_grace_s,
            exec_user=config.exec_user,
        )
        self.loads = PlanLoads(bridge, loader, self.children, config.base_dir)
        self._next_conn = 0
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
            raise ServeError(self._error)

    def request_stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)

    def hurry(self) -> None:
        """Thread-safe: stop exec'd processes now (SIGKILL), not after their grace."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.children.kill_all)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def failed(self) -> str | None:
        """Why the RPC thread failed (None while it runs or after a clean stop)."""
        return self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            log.error("RPC thread failed", error=_short(exc), exc_info=exc)
            self._error = self._error or _short(exc)
            scrub(exc)
        finally:
            self._ready.set()
            self.finished.set()

    async def _main(self) -> None:
        async with capnp.kj_loop():
            loop = asyncio.get_running_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            loop.set_exception_handler(_loop_exception)
            self.bridge.attach(loop)
            await unwrap.probe()
            try:
                await self._open_listeners()
                for name, argv, pg in self._initial:
                    await self.children.start(name, argv, pg, self.config.base_dir)
            except Exception as exc:
                self._error = _short(exc)
                scrub(exc)
                await self._shutdown()
                return
            self._ready.set()
            await self._stop.wait()
            await self._shutdown()

    async def _shutdown(self) -> None:
        for srv in self._servers:
            srv.close()
        await self.children.stop_all()
        for conn in list(self._conns.values()):
            _close_conn(conn)
        self._conns.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._servers.clear()
        self.bridge.detach()  # unanswered futures are failed and dropped in this thread
        for path in self.addresses.values():
            if path.startswith("unix:"):
                with contextlib.suppress(OSError):
                    os.unlink(path[5:])

    # ------------------------------------------------------------- listening

    async def _open_listeners(self) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        if cfg.admin is not None:
            if cfg.admin.kind != "unix":
                raise ValueError("--admin must be a unix: address (its mode is the authority)")
            sock = self._guard(bind_unix(str(cfg.admin.path), ADMIN_SOCKET_MODE), "admin")
            srv = await loop.create_unix_server(self._gates("admin"), sock=sock)
            self._servers.append(srv)
            self.addresses["admin"] = str(cfg.admin)
        if cfg.listen is not None:
            if cfg.listen.kind == "unix":
                sock = self._guard(bind_unix(str(cfg.listen.path), LISTEN_SOCKET_MODE), "listen")
                srv = await loop.create_unix_server(self._gates("listen"), sock=sock)
                self.addresses["listen"] = str(cfg.listen)
            else:
                srv = await loop.create_server(
                    self._gates("listen"), cfg.listen.host, cfg.listen.port, reuse_address=True
                )
                host, port = srv.sockets[0].getsockname()[:2]
                self.addresses["listen"] = str(Address("tcp", host=host, port=port))
            self._servers.append(srv)

    def _guard(self, sock: socket.socket, kind: str) -> socket.socket:
        return peers.guard(sock, kind) if self.config.refuse_descendants else sock

    def _limits(self, kind: str) -> SocketLimits:
        return self.config.admin_limits if kind == "admin" else self.config.listen_limits

    def _gates(self, kind: str) -> Callable[[], asyncio.Protocol]:
        """The protocol factory of a listening socket: every peer gets a Gate."""
        limits = self._limits(kind).gate
        on_peer = functools.partial(self._accepted, kind)
        return lambda: Gate(limits, on_peer)

    def _accepted(self, kind: str, gate: Gate) -> None:
        """A peer connected: admit it within its socket's limits, or close it now."""
        limits = self._limits(kind)
        cred = gate.peer_credentials()
        uid = None if cred is None else cred[1]
        same_kind = [c for c in self._conns.values() if c.ctx.kind == kind]
        refusal = None
        if len(same_kind) >= limits.max_connections:
            refusal = f"{limits.max_connections} connections already open on this socket"
        elif (
            uid is not None
            and limits.max_per_uid is not None
            and sum(c.uid == uid for c in same_kind) >= limits.max_per_uid
        ):
            refusal = f"{limits.max_per_uid} connections already open for uid {uid}"
        if refusal is not None:
            self.counters.refused_connections += 1
            log.warning("connection refused", kind=kind, reason=refusal, peer_uid=uid)
            gate.close(refusal)
            return
        ctx = self._new_ctx(kind)
        conn = Conn(ctx, gate, uid)
        self._conns[ctx.id] = conn  # counted from now on, before any await
        bootstrap = AdminServer(ctx) if kind == "admin" else RestorerServer(ctx)
        words = self.config.admin_words if kind == "admin" else self.config.listen_words
        if limits.idle_timeout_s is not None:
            asyncio.get_running_loop().call_later(limits.idle_timeout_s, self._idle_check, conn)
        try:
            conn.stream = gated_stream(gate)
        except Exception as exc:
            log.info("connection dropped before serving", conn=ctx.id, reason=_short(exc))
            scrub(exc)
            self._conns.pop(ctx.id, None)
            _close_conn(conn)
            return
        self._spawn(self._serve_conn(conn, bootstrap, words))

    def _idle_check(self, conn: Conn) -> None:
        if not conn.ctx.restored and conn.gate is not None and not conn.gate.closed:
            log.info("connection closed: no token restored in time", conn=conn.ctx.id)
            conn.gate.close("idle: no token restored")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _new_ctx(self, kind: str) -> ConnContext:
        self._next_conn += 1
        load = self.load if kind == "admin" else None  # only the operator loads plans
        return ConnContext(
            self.bridge, self.counters, load, self._next_conn, kind, self.config.max_calls
        )

    async def _serve(self, ctx: ConnContext, stream: Any, bootstrap: Any, words: int) -> None:
        """Serve an already connected pycapnp stream (an exec'd process's socketpair)."""
        conn = Conn(ctx, None, stream=stream)
        self._conns[ctx.id] = conn
        await self._serve_conn(conn, bootstrap, words)

    async def _serve_conn(self, conn: Conn, bootstrap: Any, words: int) -> None:
        ctx = conn.ctx
        conn.server = capnp.TwoPartyServer(
            conn.stream, bootstrap=bootstrap, traversal_limit_in_words=words
        )
        self.counters.connections += 1
        log.debug("connection opened", conn=ctx.id, kind=ctx.kind)
        try:
            await conn.server.on_disconnect()
            log.debug("connection closed", conn=ctx.id, kind=ctx.kind, reason=_gate_reason(conn))
        except Exception as exc:  # a bad peer: garbage, oversized, truncated
            log.info("connection dropped", conn=ctx.id, kind=ctx.kind, reason=_short(exc))
            scrub(exc)
        finally:
            self.counters.connections -= 1
            if self._conns.pop(ctx.id, None) is not None:
                _close_conn(conn)

    async def connection_report(self) -> list[dict[str, Any]]:
        """Plain data about every open connection (run on the RPC loop)."""
        return [
            {
                "id": c.ctx.id,
                "kind": c.ctx.kind,
                "uid": c.uid,
                "restored": c.ctx.restored,
                "handles": len(c.ctx.registry),
                "caps": len(c.ctx.caps),
                "sessions": len(c.ctx.sessions),
                "outstanding": None if c.gate is None else c.gate.outstanding,
                "peak_outstanding": None if c.gate is None else c.gate.peak,
            }
            for c in self._conns.values()
        ]

    def report(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """``connection_report`` from any other thread."""
        assert self._loop is not None
        fut = asyncio.run_coroutine_threadsafe(self.connection_report(), self._loop)
        return fut.result(timeout)

    # ------------------------------------------------------------------ load

    async def load(self, source: str, name: str) -> LoadResult:
        """Admin.load (see loads.py); injected into admin connections."""
        return await self.loads.load(source, name)


def gated_stream(gate: Gate) -> Any:
    """A pycapnp stream that reads and writes the peer of ``gate`` through it.

    ``AsyncIoStream._connect`` is how pycapnp's own ``create_server`` makes a
    stream for an accepted transport: it returns pycapnp's protocol, and
    calls back with the stream once the protocol has a transport. Here the
    gate gives it one (rpc/gate.py), instead of the peer's own.
    """
    streams: list[Any] = []
    gate.attach(capnp.AsyncIoStream._connect(streams.append))
    return streams[0]


def _close_quietly(server: Any, stream: Any) -> None:
    for obj in (server, stream):
        if obj is not None:
            with contextlib.suppress(Exception):
                obj.close()


def _close_conn(conn: Conn) -> None:
    """Close a connection and drop every pycapnp object it holds (RPC thread)."""
    if conn.gate is not None:
        conn.gate.close("daemon closed the connection")
    _close_quietly(conn.server, conn.stream)
    conn.server = conn.stream = None
    conn.ctx.close()


def _gate_reason(conn: Conn) -> str | None:
    return None if conn.gate is None else conn.gate.close_reason or None


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
