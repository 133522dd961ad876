"""The grant table: which process holds which capability, and revocation.

Owned by the trio thread (the owner): every method here runs there, so the
revoked latches are read at the very moment a mutation is applied. The RPC
thread holds references to ``Grant`` and ``ProcessGrants`` objects but reads
only their immutable fields (names, kind, target) and never writes any.

Lifecycle of a grant (see docs/capabilities.md):

    granted --revoke / load drops it--> revoked
    granted --its thread exits--------> stale (the core's generation check)
    granted --load removes its thread-> stale (latched like a revocation)

Operator revocations are sticky by name for the daemon's lifetime: a load
that still lists a revoked grant does not revive it, a process revoked as a
whole keeps a dead token, and a load that drops the process (or grant) and a
later load that adds it back bring back nothing (``operator_revoked``). Grants
a load dropped are not remembered: a later load may grant them afresh.
Grants are matched across loads by (process, name, kind, target);
anything else is a new grant with a new latch, so capabilities handed out
before can never reach it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import structlog

from capos_sched.core import ThreadRef
from capos_sched.wire import LATCH_KINDS, latch_text

from .errors import WireError, revoked, stale, wire_error
from .host import Host

TOKEN_BYTES = 32
"""Random bytes per token: 256 bits, written as URL-safe base64 text (43 chars)."""

SECRET_BYTES = 32
NONCE_BYTES = 16
KINDS = ("schedulingPolicy", "thread", "cpuDelegation")
ROOT_SCHEDULER = "root"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


HostLike = Host
"""The grant table needs ``thread_ref`` and ``is_live`` of the host (rpc/host.py)."""


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


@attrs.frozen
class Latch:
    """Why a grant closed: ``kind`` is one of ``wire.LATCH_KINDS``, ``reason`` says why.
    ``text`` is the one place the wire message is written."""

    kind: str = attrs.field(validator=attrs.validators.in_(LATCH_KINDS))
    reason: str

    @property
    def text(self) -> str:
        return latch_text(self.kind, self.reason)


def revoked_latch(reason: str) -> Latch:
    return Latch("revoked", reason)


def stale_latch(reason: str) -> Latch:
    return Latch("stale", reason)


@attrs.define(eq=False)
class Grant:
    """One named capability the manifest grants to one process.

    Invariants: ``closed`` goes from None to a Latch once and never back,
    written only by the owner thread. ``ref`` is set iff ``kind == "thread"`` and is the target
    thread as it was when the grant was made: a grant never retargets, it
    goes stale instead.
    """

    process: str
    name: str
    kind: str
    target: str | None
    ref: ThreadRef | None
    closed: Latch | None = None
    secret: bytes = attrs.field(factory=lambda: secrets.token_bytes(SECRET_BYTES), repr=False)
    """Never leaves the daemon: a handle of this grant proves itself with
    ``prove_mac`` (HMAC over a fresh nonce), so a handle cannot be forged by
    naming a thread, and a handle of another daemon proves nothing here."""

    def prove_mac(self, nonce: bytes) -> bytes:
        return hmac.new(self.secret, nonce, hashlib.sha256).digest()

    @property
    def key(self) -> str:
        return f"{self.process}.{self.name}"

    @property
    def signature(self) -> tuple[str, str, str | None]:
        return (self.name, self.kind, self.target)

    def close(self, latch: Latch) -> None:
        if self.closed is None:
            self.closed = latch

    def check(self) -> None:
        """Fail closed if the latch is set (owner thread, at apply time)."""
        if self.closed is not None:
            raise wire_error("disconnected", self.closed.text)


@attrs.define(eq=False)
class ProcessGrants:
    """A process's grants and its restore token.

    Invariants: ``token`` is None iff the process never had a grant; once
    ``revoked`` is True the token restores nothing, for good; ``grants`` maps
    grant names to the current Grant objects (revoked ones included, so their
    holders get "revoked" rather than "unknown").
    """

    name: str
    exec: tuple[str, ...] | None
    grants: dict[str, Grant] = attrs.Factory(dict)
    token: str | None = None
    revoked: bool = False
    sessions: int = 0

    def live_grants(self) -> list[Grant]:
        return [g for g in self.grants.values() if g.closed is None]

    @property
    def restorable(self) -> bool:
        return self.token is not None and not self.revoked and bool(self.live_grants())


@attrs.frozen
class GrantRow:
    """One line of ``capos-sched grants``."""

    process: str
    name: str
    kind: str
    target: str
    state: str  # granted | revoked | stale
    sessions: int
    reason: str


@attrs.frozen
class TokenFiles:
    """Token-file changes a load implies, as plain data: written to disk by
    ``apply`` *off* the owner thread (2000 fsync'd files took 3.6 s, during
    which the owner answered nothing)."""

    directory: Path | None
    write: tuple[tuple[str, str], ...] = ()
    """``(process, token)`` to write as ``<directory>/<process>.token``."""
    remove: tuple[str, ...] = ()

    def apply(self) -> list[Path]:
        """Write and remove the files (any thread). A failure is logged, not raised:
        the plan is in force already, in memory."""
        if self.directory is None:
            return []
        written = []
        try:
            if self.write:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name, token in self.write:
                path = self.directory / f"{name}.token"
                _write_private(path, token + "\n")
                written.append(path)
            for name in self.remove:
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{name}.token").unlink()
        except OSError as exc:
            structlog.get_logger("capos_sched.rpc").error(
                "token files not updated after load",
                grants_dir=str(self.directory),
                error=str(exc),
            )
        return written


@attrs.frozen
class PlanDiff:
    """What a load changes in the grant table (computed before anything changes)."""

    revoked: tuple[str, ...]
    added_processes: tuple[str, ...]
    removed_processes: tuple[str, ...]
    restarted_processes: tuple[str, ...]
    token_files: TokenFiles = TokenFiles(None)
    """Set by ``apply_plan``: the disk side of the load, for the caller to apply."""


class GrantTable:
    """Every process's grants; see the module docstring for the lifecycle."""

    def __init__(self, grants_dir: Path | None = None) -> None:
        self.processes: dict[str, ProcessGrants] = {}
        self.operator_revoked: set[tuple[str, str | None]] = set()
        """Operator revocations by name, sticky for the daemon's lifetime:
        ``(process, None)`` for a whole process, ``(process, grant)`` for one
        grant. A load that drops the process or grant and a later load that
        adds it back does not revive it."""
        self.grants_dir = grants_dir

    # ------------------------------------------------------------- building

    @classmethod
    def from_plan(cls, plan: Any, host: HostLike, grants_dir: Path | None = None) -> GrantTable:
        validate_plan_grants(plan)
        table = cls(grants_dir)
        for proc in plan.processes:
            table.processes[proc.name] = table._new_process(proc, host)
        return table

    def _new_process(self, proc: Any, host: HostLike) -> ProcessGrants:
        pg = ProcessGrants(proc.name, _exec_of(proc))
        for gp in proc.grants:
            pg.grants[gp.name] = self._new_grant(proc.name, gp, host)
        if pg.grants:
            pg.token = new_token()
        if (proc.name, None) in self.operator_revoked:
            pg.revoked = True  # sticky: its token restores nothing
        return pg

    def _new_grant(self, process: str, gp: Any, host: HostLike) -> Grant:
        grant = _new_grant(process, gp, host)
        if (process, None) in self.operator_revoked:
            grant.close(revoked_latch(f"{grant.key} was revoked by the operator (whole process)"))
        elif (process, gp.name) in self.operator_revoked:
            grant.close(revoked_latch(f"{grant.key} was revoked by the operator"))
        return grant

    # --------------------------------------------------------------- tokens

    def restore(self, token: bytes) -> ProcessGrants:
        """The process whose token this is; constant-time over every token.

        Every candidate is compared (no early exit), so the time taken does
        not depend on which token, if any, matched.
        """
        found: ProcessGrants | None = None
        for pg in self.processes.values():
            if pg.token is None:
                continue
            if hmac.compare_digest(token, pg.token.encode()) and found is None:
                found = pg
        if found is None or not found.restorable:
            raise wire_error("disconnected", "unknown or revoked token")
        found.sessions += 1
        return found

    def write_token_files(self, names: Iterable[str] | None = None) -> list[Path]:
        """Write ``<dir>/<process>.token`` (mode 0600) for restorable processes."""
        if self.grants_dir is None:
            return []
        written = []
        self.grants_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in self.processes if names is None else names:
            pg = self.processes[name]
            if pg.token is None or not pg.restorable:
                continue
            path = self.grants_dir / f"{name}.token"
            _write_private(path, pg.token + "\n")
            written.append(path)
        return written

    def remove_token_file(self, name: str) -> None:
        if self.grants_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.grants_dir / f"{name}.token").unlink()

    def remove_all_token_files(self) -> None:
        for name in self.processes:
            self.remove_token_file(name)

    # ---------------------------------------------------------------- lookup

    def process(self, name: str) -> ProcessGrants:
        pg = self.processes.get(name)
        if pg is None:
            raise wire_error("invalidArgument", f"no process {name!r} in the plan")
        return pg

    def get(self, pg: ProcessGrants, name: str) -> Grant:
        """``CapSet.get``: the live grant ``name`` of ``pg``."""
        check_session(pg)
        grant = pg.grants.get(name)
        if grant is None:
            raise wire_error("invalidArgument", f"process {pg.name} holds no grant named {name!r}")
        grant.check()
        return grant

    def names(self, pg: ProcessGrants) -> list[str]:
        """``CapSet.list``: the names of live grants, sorted."""
        check_session(pg)
        return sorted(g.name for g in pg.live_grants())

    def rows(self, host: HostLike) -> list[GrantRow]:
        out = []
        for pg in self.processes.values():
            for g in pg.grants.values():
                state, reason = "granted", ""
                if g.closed is not None:
                    state, reason = g.closed.kind, g.closed.text
                elif g.ref is not None and not host.is_live(g.ref):
                    state, reason = "stale", latch_text("stale", f"thread {g.target} exited")
                out.append(
                    GrantRow(pg.name, g.name, g.kind, g.target or "", state, pg.sessions, reason)
                )
        return out

    # ----------------------------------------------------------- revocation

    def revoke(self, process: str, grant: str | None) -> list[str]:
        """Latch one grant, or every grant and the token of ``process``.

        Returns the keys that changed state (already-closed grants are not
        listed). Unknown names are invalidArgument and change nothing.
        """
        pg = self.process(process)
        if grant is not None:
            g = pg.grants.get(grant)
            if g is None:
                raise wire_error("invalidArgument", f"process {process} holds no grant {grant!r}")
            changed = [g.key] if g.closed is None else []
            g.close(revoked_latch(f"{g.key} was revoked by the operator"))
            self.operator_revoked.add((process, grant))
            if not pg.live_grants():
                self._kill_token(pg)
            return changed
        changed = [g.key for g in pg.grants.values() if g.closed is None]
        self.operator_revoked.add((process, None))
        for g in pg.grants.values():
            g.close(revoked_latch(f"{g.key} was revoked by the operator (whole process)"))
        self._kill_token(pg)
        return changed

    def _kill_token(self, pg: ProcessGrants) -> None:
        pg.revoked = True
        self.remove_token_file(pg.name)

    # ------------------------------------------------------------------ load

    def diff(self, plan: Any, *, validated: bool = False) -> PlanDiff:
        """What ``apply_plan`` would change; validates (unless the caller already
        did, with ``validate_plan_grants``) and changes nothing."""
        if not validated:
            validate_plan_grants(plan)
        new = {p.name: p for p in plan.processes}
        revoked_keys: list[str] = []
        for name, pg in self.processes.items():
            proc = new.get(name)
            wanted = {} if proc is None else {gp.name: _sig(gp) for gp in proc.grants}
            for g in pg.grants.values():
                if g.closed is None and wanted.get(g.name) != g.signature:
                    revoked_keys.append(g.key)
        added = tuple(n for n in new if n not in self.processes)
        removed = tuple(n for n in self.processes if n not in new)
        restarted = tuple(
            n for n in new if n in self.processes and _exec_of(new[n]) != self.processes[n].exec
        )
        return PlanDiff(tuple(revoked_keys), added, removed, restarted)

    def apply_plan(
        self,
        plan: Any,
        host: HostLike,
        removed_threads: Iterable[str],
        *,
        validated: bool = False,
    ) -> PlanDiff:
        """Make the table match ``plan`` (called right after the host applied it).

        Grants whose (name, kind, target) is unchanged and whose thread was
        kept stay the same objects (capabilities held stay valid); everything
        else dropped is latched: ``stale`` when its thread was removed,
        ``revoked`` otherwise. Token files follow.
        """
        diff = self.diff(plan, validated=validated)
        gone_threads = set(removed_threads)
        new = {p.name: p for p in plan.processes}
        for name in diff.removed_processes:
            pg = self.processes.pop(name)
            for g in pg.grants.values():
                g.close(_drop_reason(g, gone_threads, f"process {name} left the plan"))
            self._kill_token(pg)  # sessions hold pg: they now fail as revoked
        for name, proc in new.items():
            pg = self.processes.get(name)
            if pg is None:
                self.processes[name] = self._new_process(proc, host)
                continue
            pg.exec = _exec_of(proc)
            wanted = {gp.name: gp for gp in proc.grants}
            for gname, g in list(pg.grants.items()):
                gp = wanted.get(gname)
                if gp is not None and _sig(gp) == g.signature:
                    continue  # the same grant: kept, live or (sticky) revoked
                g.close(_drop_reason(g, gone_threads, "the manifest no longer grants it"))
                del pg.grants[gname]
            for gname, gp in wanted.items():
                if gname not in pg.grants:
                    pg.grants[gname] = self._new_grant(name, gp, host)
            if pg.grants and pg.token is None:
                pg.token = new_token()
        # The plan is applied by now (in memory, all of it). Token files are a
        # side effect on disk: returned as data, written by the caller off the
        # owner thread (and a failure is reported, never raised half-way).
        writes = tuple(
            (n, pg.token)
            for n, pg in self.processes.items()
            if pg.token is not None and pg.restorable and n not in diff.removed_processes
        )
        files = TokenFiles(self.grants_dir, writes, diff.removed_processes)
        return attrs.evolve(diff, token_files=files)

    def prune_token_files(self, names: Iterable[str]) -> None:
        """Remove the files of ``names`` no longer restorable (a revoke that ran
        while a load's files were being written off the owner thread)."""
        for name in names:
            pg = self.processes.get(name)
            if pg is None or not pg.restorable:
                self.remove_token_file(name)


def _drop_reason(g: Grant, gone_threads: set[str], why: str) -> Latch:
    if g.kind == "thread" and g.target in gone_threads:
        return stale_latch(f"thread {g.target} was removed by load")
    return revoked_latch(f"{g.key} was revoked because {why}")


def check_session(pg: ProcessGrants) -> None:
    if pg.revoked:
        raise revoked(f"process {pg.name} was revoked")


def _sig(gp: Any) -> tuple[str, str, str | None]:
    return (gp.name, gp.kind, _target_of(gp))


def _target_of(gp: Any) -> str | None:
    if gp.kind == "thread":
        return str(gp.target)
    if gp.kind == "cpuDelegation":
        return str(gp.scheduler)
    return None


def _exec_of(proc: Any) -> tuple[str, ...] | None:
    argv = getattr(proc, "exec", None)
    return tuple(argv) if argv else None


def _new_grant(process: str, gp: Any, host: HostLike) -> Grant:
    ref = None
    target = _target_of(gp)
    if gp.kind == "thread":
        ref = host.thread_ref(gp.target)
        if ref is None:  # validate_plan_grants rules this out
            raise stale(f"thread {gp.target} is not in the plan")
    return Grant(process, gp.name, gp.kind, target, ref)


def validate_plan_grants(plan: Any) -> None:
    """Every grant names a known kind and, for threads, a thread of the plan;
    process and grant names are safe as file names. Raises invalidArgument."""
    threads = {t.full_name for t in plan.threads()}
    schedulers = plan_schedulers(plan)
    seen: set[str] = set()
    for proc in plan.processes:
        if not _SAFE_NAME.fullmatch(proc.name) or proc.name in seen:
            raise wire_error("invalidArgument", f"process name {proc.name!r} is not usable")
        seen.add(proc.name)
        names: set[str] = set()
        for gp in proc.grants:
            if gp.kind not in KINDS:
                raise wire_error(
                    "invalidArgument", f"grant {proc.name}.{gp.name}: unknown kind {gp.kind!r}"
                )
            if gp.name in names or not _grant_name_ok(gp.name):
                raise wire_error(
                    "invalidArgument", f"grant name {proc.name}.{gp.name} is not usable"
                )
            names.add(gp.name)
            if gp.kind == "thread" and gp.target not in threads:
                raise wire_error(
                    "invalidArgument",
                    f"grant {proc.name}.{gp.name} targets {gp.target!r}, not a thread of the plan",
                )
            if gp.kind == "cpuDelegation" and gp.scheduler not in schedulers:
                raise wire_error(
                    "invalidArgument",
                    f"grant {proc.name}.{gp.name} names scheduler {gp.scheduler!r}, "
                    "not a scheduler of the plan",
                )


def plan_schedulers(plan: Any) -> set[str]:
    """The scheduler names of ``plan``: "root" and its ``schedulers`` section."""
    return {ROOT_SCHEDULER, *(s.name for s in getattr(plan, "schedulers", ()))}


def _grant_name_ok(name: str) -> bool:
    return 0 < len(name) <= 256 and name.isprintable()


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically with mode 0600 from the start."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


__all__ = [
    "KINDS",
    "TOKEN_BYTES",
    "Grant",
    "GrantRow",
    "GrantTable",
    "PlanDiff",
    "ProcessGrants",
    "WireError",
    "validate_plan_grants",
]
