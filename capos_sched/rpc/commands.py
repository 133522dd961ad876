"""Click commands of the capability surface.

Daemon: ``serve``. Operator (``--admin``): ``load``, ``revoke``, ``grants``,
``stats``. Clients (``--connect`` + ``--token-file``, or the inherited socket
of an exec'd process): ``set-weight``, ``set-class``, ``snapshot``. Benchmark:
``bench rpc`` (registered under the ``bench`` group).

Errors from the daemon are printed to stderr as ``<code>: <message>`` and exit
with status 1; malformed command lines are usage errors (status 2).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import structlog

from capos_sched.core import LatencyClass
from capos_sched.core.constants import MAX_CPUS
from capos_sched.runtime.commands import (
    trace_option,
    trace_recorder,
    watchdog_ns,
    watchdog_option,
    write_trace,
)
from capos_sched.wire import FD_ENV

from .addr import Address, AddressError, default_admin, default_listen, parse_address
from .errors import WireError
from .gate import DEFAULT_MAX_ANSWERS

log = structlog.get_logger("capos_sched.rpc")

T = TypeVar("T")
CLASS_NAMES = [c.wire_name for c in LatencyClass]


# ------------------------------------------------------------------ helpers


class AddressType(click.ParamType):
    """``unix:PATH`` or ``tcp:HOST:PORT``."""

    name = "ADDR"

    def convert(self, value: Any, param: Any, ctx: Any) -> Address:
        if isinstance(value, Address):
            return value
        try:
            return parse_address(str(value))
        except AddressError as exc:
            self.fail(str(exc), param, ctx)


ADDRESS = AddressType()


def _fail(exc: BaseException | str) -> None:
    click.echo(str(exc), err=True)
    sys.exit(1)


def _run(coro_fn: Callable[[], Awaitable[T]], peer: Address | str | None = None) -> T:
    """Run a client coroutine; typed errors become ``code: message`` + exit 1.

    ``peer`` is the address the coroutine talks to, named when what answers
    there is not a capos-sched daemon.
    """
    from capos_sched.client import CapOSError, NotADaemon

    async def main() -> T:
        return await coro_fn()

    try:
        return asyncio.run(main())
    except NotADaemon as exc:
        where = f"peer at {peer}" if peer is not None else "the peer"
        log.debug("the peer does not speak Cap'n Proto RPC", peer=str(peer), detail=exc.message)
        _fail(f"{exc.code}: {where} is not a capos-sched daemon")
    except CapOSError as exc:
        _fail(_wrong_socket(exc, peer) or exc)
    except KeyboardInterrupt:
        sys.exit(130)
    raise AssertionError("unreachable")


SOCKET_OF = {"Restorer": ("--listen", "--admin"), "Admin": ("--admin", "--listen")}
"""What each daemon socket bootstraps: (its option, the other socket's option)."""


def _wrong_socket(exc: BaseException, peer: Address | str | None) -> str | None:
    """A clear message for a daemon socket of the other kind (Restorer vs Admin)."""
    found = re.search(r"actualInterfaceName = capos\.capnp:(\w+)", str(exc))
    if peer is None or found is None or found.group(1) not in SOCKET_OF:
        return None
    this, other = SOCKET_OF[found.group(1)]
    return f"invalidArgument: {peer} is the daemon's {this} socket, not its {other} socket"


# -------------------------------------------------------------------- serve

SOCKETS_HELP = """\b
The default sockets live in RUN_DIR: $CAPOS_SCHED_RUN_DIR, else
$XDG_RUNTIME_DIR/capos-sched, else /tmp/capos-sched-<uid> (created mode 0700)."""

SERVE_EPILOG = f"""\b
Examples:
  capos-sched serve manifests/system-thread-fairness.cue --grants-dir /tmp/grants
  capos-sched serve manifests/tuner.cue --listen tcp:127.0.0.1:7070
  capos-sched serve manifests/system-thread-fairness.cue --no-execute --cpus 4
  capos-sched serve manifests/tuner.cue --trace serve.trace.json --watchdog-ms 50

{SOCKETS_HELP}

\b
CAPOS_SCHED_DISABLE_WFQ=1 runs every plan under the FIFO policy.

\b
Exit status: serve exits 0 on SIGINT or SIGTERM (a clean stop); 1 when the
manifest is invalid or a socket cannot be served; 2 on a usage error.
"""


@click.command(epilog=SERVE_EPILOG)
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "--listen",
    type=ADDRESS,
    default=None,
    help="Where the Restorer is served (unix:PATH or tcp:HOST:PORT).  "
    "[default: unix:RUN_DIR/listen.sock]",
)
@click.option(
    "--admin",
    type=ADDRESS,
    default=None,
    help="Unix socket (mode 0600) serving the Admin capability.  "
    "[default: unix:RUN_DIR/admin.sock]",
)
@click.option(
    "--grants-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write <process>.token (mode 0600) here for each process with grants.  "
    "[default: none; then no process can connect with a token]",
)
@click.option(
    "--cpus",
    type=click.IntRange(1, MAX_CPUS),
    default=None,
    help="Override the manifest's CPU count.  [default: the manifest's machine.cpus]",
)
@click.option(
    "--execute/--no-execute",
    default=True,
    show_default=True,
    help="Run the threads on the trio runtime, or only hold them in the core "
    "(grants and state changes work; nothing executes).",
)
@click.option(
    "--idle-workers/--nice-workers",
    default=True,
    show_default=True,
    help="Run the CPU worker processes under SCHED_IDLE, so the daemon's RPC always "
    "preempts them (loaded p99 in docs/benchmarks.md), or only reniced (+10).",
)
@click.option(
    "--max-calls",
    type=click.IntRange(1, 1_000_000),
    default=1024,
    show_default=True,
    help="Concurrent calls allowed per connection; more fail with `overloaded`.",
)
@trace_option
@watchdog_option
@click.option(
    "--max-answers",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULT_MAX_ANSWERS,
    show_default=True,
    help="Calls a peer may leave unfinished (no Finish sent) before the daemon stops "
    "reading its connection.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(0.1, 3600),
    default=10.0,
    show_default=True,
    help="Seconds a peer may stay at --max-answers before it is disconnected.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1, 100_000),
    default=128,
    show_default=True,
    help="Connections the --listen socket accepts (the admin socket has its own limit of 16).",
)
@click.option(
    "--max-connections-per-uid",
    type=click.IntRange(1, 100_000),
    default=32,
    show_default=True,
    help="Connections one local user (by SO_PEERCRED) may hold on a unix --listen socket.",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0.1, 3600),
    default=10.0,
    show_default=True,
    help="Seconds a --listen connection may stay open without restoring a token.",
)
@click.option(
    "--exec-user",
    default=None,
    metavar="USER",
    help="Run the manifest's exec'd processes as USER (the daemon must run as root); "
    "see docs/capabilities.md.  [default: the daemon's own user]",
)
@click.option(
    "--policy",
    metavar="wfq|fifo|eevdf|PATH.py",
    help="Override the manifest's policy (a built-in, or a policy file; docs/policies.md).  "
    "[default: the manifest's machine.policy]",
)
def serve(
    manifest: Path,
    listen: Address | None,
    admin: Address | None,
    grants_dir: Path | None,
    cpus: int | None,
    execute: bool,
    idle_workers: bool,
    max_calls: int,
    max_answers: int,
    stall_timeout: float,
    max_connections: int,
    max_connections_per_uid: int,
    idle_timeout: float,
    exec_user: str | None,
    trace_path: Path | None,
    watchdog_ms: float | None,
    policy: str | None,
) -> None:
    """Run MANIFEST's threads and serve its grants as Cap'n Proto capabilities.

    With --trace, the trace of every dispatch is written when the daemon stops
    (at most 2,000,000 events are kept).
    """
    from capos_sched.manifest.commands import plan_or_exit

    from .daemon import DaemonConfig, run_daemon
    from .grantsdir import GrantsDirError

    plan = plan_or_exit(manifest)  # printed as `check` prints it
    if not execute and (trace_path is not None or watchdog_ms is not None):
        flag = "--trace" if trace_path is not None else "--watchdog-ms"
        raise click.BadParameter("nothing runs with --no-execute", param_hint=flag)
    if exec_user is not None:
        _check_exec_user(exec_user)
    trace = trace_recorder(trace_path, cpus or plan.machine.cpus)
    if listen is None or admin is None:
        _check_run_dir(create=True)
    listen = listen or parse_address(default_listen())
    admin = admin or parse_address(default_admin())
    if admin.kind != "unix":
        raise click.BadParameter("--admin must be unix:PATH", param_hint="--admin")
    config = DaemonConfig(
        manifest_name=str(manifest.resolve()),
        listen=listen,
        admin=admin,
        grants_dir=grants_dir.absolute() if grants_dir else None,
        base_dir=manifest.resolve().parent,
        max_calls=max_calls,
        max_answers=max_answers,
        stall_timeout_s=stall_timeout,
        max_connections=max_connections,
        max_per_uid=max_connections_per_uid,
        idle_timeout_s=idle_timeout,
        exec_user=exec_user,
    )
    from capos_sched.runtime.commands import effective_policy
    from capos_sched.serve import host_plugin, plan_loader  # the wiring lives outside rpc/

    effective_policy(policy, plan)  # a bad policy is a usage error before anything starts
    factory, runner = host_plugin(
        cpus,
        execute,
        idle_workers,
        policy,
        trace=trace,
        watchdog_threshold_ns=watchdog_ns(watchdog_ms),
    )
    try:
        status = run_daemon(
            config, plan, loader=plan_loader, host_factory=factory, host_runner=runner
        )
    except WireError as exc:  # the plan was refused before anything started
        _fail(exc.wire_text)
    except GrantsDirError as exc:
        _fail(f"invalidArgument: {exc}")
    write_trace(trace, trace_path, say=False)
    sys.exit(status)


def _check_exec_user(name: str) -> None:
    import pwd

    if os.geteuid() != 0:
        _fail("invalidArgument: --exec-user needs a daemon running as root")
    try:
        pwd.getpwnam(name)
    except KeyError:
        _fail(f"invalidArgument: --exec-user {name!r}: no such user")


# --------------------------------------------------------------- operators

admin_option = click.option(
    "--admin",
    "admin_addr",
    type=ADDRESS,
    default=None,
    help="The daemon's admin socket.  [default: unix:RUN_DIR/admin.sock, see serve --help]",
)


def _admin(addr: Address | None) -> Address:
    if addr is None:
        _check_run_dir()
    return addr or parse_address(default_admin())


def _check_run_dir(create: bool = False) -> None:
    """A default address lives in the runtime directory: refuse it unless it is
    ours (``serve`` creates it, mode 0700, when missing)."""
    from .addr import checked_run_dir, ensure_private_dir, run_dir

    try:
        if create:
            ensure_private_dir(run_dir())
        else:
            checked_run_dir()
    except (OSError, ValueError) as exc:  # safedir.UnsafeDirError is a ValueError
        _fail(f"failed: unsafe runtime directory: {exc}")


@click.command(
    epilog="""\b
Examples:
  capos-sched load manifests/default.cue
  capos-sched load --admin unix:/run/capos/admin.sock my.cue

\b
Exit status: 0 when the plan was replaced; 1 when the manifest is invalid
(nothing changed) or the daemon cannot be reached; 2 on a usage error.
"""
)
@admin_option
@click.argument("manifest", type=click.Path(path_type=Path))
def load(admin_addr: Address | None, manifest: Path) -> None:
    """Replace the running plan with MANIFEST, atomically (errors change nothing).

    MANIFEST is checked here first, as `capos-sched check` checks it; the
    daemon checks it again before anything changes.
    """
    from capos_sched.client import connect_admin
    from capos_sched.manifest.commands import source_or_exit

    source = source_or_exit(manifest)

    async def go() -> dict[str, list[str]]:
        async with await connect_admin(_admin(admin_addr)) as session:
            return await session.load(source, str(manifest.resolve()))

    result = _run(go, _admin(admin_addr))
    for key in ("added", "removed", "kept", "revoked"):
        click.echo(f"{key}: {' '.join(result[key]) or '-'}")


@click.command(
    epilog="""\b
Examples:
  capos-sched revoke tuner.policy     # one grant
  capos-sched revoke tuner            # every grant of the process, and its token
"""
)
@admin_option
@click.argument("target", metavar="PROCESS[.GRANT]")
def revoke(admin_addr: Address | None, target: str) -> None:
    """Revoke one grant, or every grant (and the token) of a process."""
    from capos_sched.client import InvalidArgument, connect_admin

    async def go() -> list[str]:
        async with await connect_admin(_admin(admin_addr)) as session:
            known = {g.process for g in await session.grants()}
            process, grant = split_target(target, known)
            return await session.revoke(process, grant)

    try:
        changed = _run(go, _admin(admin_addr))
    except InvalidArgument as exc:  # pragma: no cover - raised inside _run
        _fail(exc)
    click.echo(f"revoked: {' '.join(changed) or '- (already revoked)'}")


def split_target(target: str, processes: set[str]) -> tuple[str, str | None]:
    """``PROCESS`` or ``PROCESS.GRANT``; process names may contain dots, so the
    longest known process prefix wins."""
    from capos_sched.client import InvalidArgument

    if target in processes:
        return target, None
    best: tuple[str, str] | None = None
    for i, ch in enumerate(target):
        if ch == "." and target[:i] in processes and i + 1 < len(target):
            best = (target[:i], target[i + 1 :])
    if best is None:
        raise InvalidArgument(f"{target!r} names no process with grants (see `capos-sched grants`)")
    return best


@click.command(
    epilog="""\b
Examples:
  capos-sched grants
  capos-sched grants --json --admin unix:/run/capos/admin.sock
"""
)
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def grants(admin_addr: Address | None, as_json: bool) -> None:
    """List every grant with its state (granted, revoked, stale), and the policy in force.

    --json prints {"grants": [...], "policy": {...}} (the policy as `policy show --json`).
    """
    from capos_sched.client import connect_admin

    from .policy_commands import policy_lines

    async def go() -> tuple[list[Any], dict[str, Any]]:
        async with await connect_admin(_admin(admin_addr)) as session:
            return await session.grants_and_policy()

    rows, policy = _run(go, _admin(admin_addr))
    if as_json:
        click.echo(json.dumps({"grants": [_row_dict(r) for r in rows], "policy": policy}, indent=2))
        return
    table = [("PROCESS", "GRANT", "KIND", "TARGET", "STATE", "SESSIONS")]
    table += [(r.process, r.name, r.kind, r.target or "-", r.state, str(r.sessions)) for r in rows]
    _print_table(table)
    for line in policy_lines(policy):
        click.echo(line)


def _row_dict(row: Any) -> dict[str, Any]:
    return {
        "process": row.process,
        "grant": row.name,
        "kind": row.kind,
        "target": row.target or None,
        "state": row.state,
        "sessions": row.sessions,
    }


@click.command(
    epilog="""\b
Examples:
  capos-sched stats
  capos-sched stats --json | jq '.threads[] | {name, runtime_ns}'
"""
)
@admin_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(admin_addr: Address | None, as_json: bool) -> None:
    """Every thread with its counters, the RPC counters, and the policy in force
    (its watchdog bypass and ejection records, as `policy show`)."""
    from capos_sched.client import connect_admin

    async def go() -> dict[str, Any]:
        async with await connect_admin(_admin(admin_addr)) as session:
            report = await session.stats()
            report["schedulers"] = await _schedulers_or_none(session)
            return report

    report = _run(go, _admin(admin_addr))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from .cpus_commands import scheduler_lines
    from .policy_commands import policy_lines

    click.echo(f"plan: {report['plan']}")
    for line in policy_lines(report["policy"]):
        click.echo(line)
    table = [("THREAD", "ID", "STATE", "WEIGHT", "CLASS", "CPU", "RUNTIME_MS", "SWITCHES")]
    for t in report["threads"]:
        table.append(
            (
                t["name"],
                f"{t['thread_id']}.{t['generation']}",
                t["state"],
                str(t["weight"]),
                t["class"],
                "-" if t["cpu"] is None else str(t["cpu"]),
                f"{t['runtime_ns'] / 1e6:.1f}",
                str(t["context_switches"]),
            )
        )
    _print_table(table)
    rpc = report["rpc"]
    click.echo("rpc: " + ", ".join(f"{k}={v}" for k, v in rpc.items()))
    for line in scheduler_lines(report["schedulers"] or []):
        click.echo(line)


async def _schedulers_or_none(session: Any) -> list[dict[str, Any]] | None:
    """Admin.schedulers, or None from a daemon whose host has no CPU delegation."""
    from capos_sched.client import Unimplemented

    try:
        return await session.schedulers()  # type: ignore[no-any-return]
    except Unimplemented:
        return None


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


# ----------------------------------------------------------------- clients


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--policy",
        default="policy",
        show_default=True,
        help="Grant name of the SchedulingPolicyCap.",
    )(fn)
    fn = click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="The process's token file (from serve --grants-dir).  "
        "[default: the socket inherited through $CAPOS_SCHED_FD]",
    )(fn)
    fn = click.option(
        "--connect",
        "connect_addr",
        type=ADDRESS,
        default=None,
        help="The daemon's --listen address.  "
        "[default: unix:RUN_DIR/listen.sock, see serve --help]",
    )(fn)
    return fn


def _client_peer(connect_addr: Address | None, token_file: Path | None) -> str:
    """Where a client command connects, as its messages name it."""
    if token_file is None and os.environ.get(FD_ENV):
        return f"the inherited socket (fd {os.environ[FD_ENV]})"
    return str(connect_addr or parse_address(default_listen()))


async def _session(connect_addr: Address | None, token_file: Path | None) -> Any:
    from capos_sched.client import connect, connect_inherited, read_token

    if token_file is None:
        if os.environ.get(FD_ENV):
            return await connect_inherited()
        from capos_sched.client import InvalidArgument

        raise InvalidArgument("--token-file is required (or run under the daemon with exec)")
    token = read_token(token_file)
    if connect_addr is None:
        _check_run_dir()
    return await connect(connect_addr or parse_address(default_listen()), token=token)


@click.command(
    "set-weight",
    epilog="""\b
Examples:
  capos-sched set-weight fairness/b 2048 --token-file /tmp/grants/tuner.token
  capos-sched set-weight fairness/b 512   # inside a process serve started
  capos-sched set-weight fairness/b 2048 --json   # prints the snapshot after the change
""",
)
@client_options
@click.argument("thread")
@click.argument("weight", type=int)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the thread's snapshot after the change."
)
def set_weight(
    connect_addr: Address | None,
    token_file: Path | None,
    policy: str,
    thread: str,
    weight: int,
    as_json: bool,
) -> None:
    """Set the weight of the thread granted as THREAD (prints nothing without --json)."""

    async def go() -> Any:
        async with await _session(connect_addr, token_file) as s:
            pol = await s.policy(policy)
            handle = await s.thread(thread)
            await pol.set_weight(handle, weight)
            return await pol.snapshot(handle) if as_json else None

    snap = _run(go, _client_peer(connect_addr, token_file))
    if as_json:
        click.echo(json.dumps(_snapshot_data(thread, snap)))


@click.command(
    "set-class",
    epilog="""\b
Examples:
  capos-sched set-class shell/typist interactive --token-file /tmp/grants/tuner.token
  capos-sched set-class fairness/c batch --json   # prints the snapshot after the change
""",
)
@client_options
@click.argument("thread")
@click.argument("latency_class", metavar="CLASS", type=click.Choice(CLASS_NAMES))
@click.option(
    "--json", "as_json", is_flag=True, help="Print the thread's snapshot after the change."
)
def set_class(
    connect_addr: Address | None,
    token_file: Path | None,
    policy: str,
    thread: str,
    latency_class: str,
    as_json: bool,
) -> None:
    """Set the latency class of the thread granted as THREAD.

    CLASS is one of: interactive (a quarter slice), normal, batch (four
    slices) and ipcServer (a normal slice, for threads serving IPC). Prints
    nothing without --json.
    """

    async def go() -> Any:
        async with await _session(connect_addr, token_file) as s:
            pol = await s.policy(policy)
            handle = await s.thread(thread)
            await pol.set_latency_class(handle, latency_class)
            return await pol.snapshot(handle) if as_json else None

    snap = _run(go, _client_peer(connect_addr, token_file))
    if as_json:
        click.echo(json.dumps(_snapshot_data(thread, snap)))


@click.command(
    epilog="""\b
Examples:
  capos-sched snapshot fairness/b --token-file /tmp/grants/tuner.token
  capos-sched snapshot fairness/b --json
"""
)
@client_options
@click.argument("thread")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def snapshot(
    connect_addr: Address | None, token_file: Path | None, policy: str, thread: str, as_json: bool
) -> None:
    """Weight, class and run time of the thread granted as THREAD."""

    async def go() -> Any:
        async with await _session(connect_addr, token_file) as s:
            pol = await s.policy(policy)
            handle = await s.thread(thread)
            return await pol.snapshot(handle)

    data = _snapshot_data(thread, _run(go, _client_peer(connect_addr, token_file)))
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in data.items()))


def _snapshot_data(thread: str, snap: Any) -> dict[str, Any]:
    """What ``snapshot --json`` (and ``set-weight``/``set-class --json``) print."""
    return {
        "thread": thread,
        "weight": snap.weight,
        "class": snap.latency_class.wire_name,
        "runtime_ns": snap.runtime_ns,
        "virtual_runtime_ns": snap.virtual_runtime_ns,
    }


COMMANDS = [serve, load, revoke, grants, stats, set_weight, set_class, snapshot]

from .cpus_commands import cpus  # noqa: E402 - it builds on the helpers above

COMMANDS.append(cpus)
