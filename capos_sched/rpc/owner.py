"""The owner's side of the RPC layer: operations that run in the trio thread.

``Owner`` bundles what the trio thread owns for the capability surface: the
scheduling host, the grant table and a counter. Every method is an operation
the bridge runs in the trio thread; each one checks the revoked latches of the
grants it uses right before it reads or mutates scheduling state, so a
revocation applied earlier in the same thread is always seen.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

import attrs

from capos_sched.core import CoreError, StaleThread, ThreadRef, ThreadSnapshot

from .delegation import DelegationOwner
from .errors import wire_error
from .grants import Grant, GrantRow, GrantTable, PlanDiff, ProcessGrants, validate_plan_grants
from .host import Host


@attrs.frozen
class Claim:
    """What a ThreadHandle we could not recognise directly answered to
    ``prove(nonce)``: it identifies a grant only if the MAC is that grant's.

    Used when the handle's server object cannot be found directly (a promise,
    a handle relayed through another connection, a client-hosted one).
    """

    nonce: bytes
    mac: bytes


ThreadArg = Grant | Claim


@attrs.frozen
class LoadResult:
    """What ``Owner.load`` changed."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    kept: tuple[str, ...]
    revoked: tuple[str, ...]
    diff: PlanDiff
    start: tuple[tuple[str, tuple[str, ...], ProcessGrants], ...]
    """Processes to (re)start: name, argv, grants (for their CapSet)."""


class Owner:
    """Operations on the host and the grant table (trio thread only).

    Invariant: a mutation is applied only after the latches of the policy
    grant and of the thread grant were checked in the same operation.
    """

    def __init__(self, host: Host, grants: GrantTable, plan_name: str) -> None:
        self.host = host
        self.grants = grants
        self.plan_name = plan_name
        self.applied = 0
        """Mutations applied through capabilities."""
        self.delegation = DelegationOwner(host)
        """CPU delegation nodes and subscriptions (rpc/delegation.py)."""

        self._staged: Any = None
        """The plan being loaded in steps (``stage_load`` .. ``commit_load``), if any."""
        self.load_steps = 0
        """Owner operations taken by stepped loads so far (for tests of the stepping)."""

    def now_ns(self) -> int:
        return self.host.now_ns()

    # --------------------------------------------------------- restore/caps

    def restore(self, token: bytes) -> ProcessGrants:
        return self.grants.restore(token)

    def capset_get(self, pg: ProcessGrants, name: str) -> Grant:
        return self.grants.get(pg, name)

    def capset_list(self, pg: ProcessGrants) -> list[str]:
        return self.grants.names(pg)

    # --------------------------------------------------------- thread handle

    def describe(self, grant: Grant) -> ThreadSnapshot:
        grant.check()
        assert grant.ref is not None
        return self.host.snapshot(grant.ref)

    def is_live(self, grant: Grant) -> bool:
        """False for a stale handle (never an error); revoked still fails."""
        if grant.closed is not None and grant.closed.kind == "stale":
            return False
        grant.check()
        assert grant.ref is not None
        return bool(self.host.is_live(grant.ref))

    # ------------------------------------------------------- policy methods

    def _thread(self, policy: Grant, thread: ThreadArg) -> ThreadRef:
        policy.check()
        if isinstance(thread, Claim):
            thread = self._claimed(policy, thread)
        elif thread.process != policy.process:
            raise wire_error(
                "invalidArgument",
                f"thread handle {thread.key} was not granted to process {policy.process}",
            )
        thread.check()
        assert thread.ref is not None
        return thread.ref

    def _claimed(self, policy: Grant, claim: Claim) -> Grant:
        """The thread grant of the policy's own process whose secret made the
        MAC. Every candidate is compared in constant time, with no early exit."""
        pg = self.grants.processes.get(policy.process)
        candidates = [] if pg is None else [g for g in pg.grants.values() if g.kind == "thread"]
        found: Grant | None = None
        for g in candidates:
            if hmac.compare_digest(g.prove_mac(claim.nonce), claim.mac) and found is None:
                found = g
        if found is None:
            raise wire_error(
                "invalidArgument",
                f"the thread handle is not one granted to process {policy.process}",
            )
        return found

    def set_weight(self, policy: Grant, thread: ThreadArg, weight: int) -> None:
        ref = self._thread(policy, thread)
        self.host.set_weight(ref, weight)
        self.applied += 1

    def set_latency_class(self, policy: Grant, thread: ThreadArg, latency_class: object) -> None:
        ref = self._thread(policy, thread)
        self.host.set_latency_class(ref, latency_class)
        self.applied += 1

    def snapshot(self, policy: Grant, thread: ThreadArg) -> ThreadSnapshot:
        ref = self._thread(policy, thread)
        return self.host.snapshot(ref)

    # ----------------------------------------------------------------- admin

    def revoke(self, process: str, grant: str | None) -> list[str]:
        return self.grants.revoke(process, grant)

    def grant_rows(self) -> list[GrantRow]:
        return self.grants.rows(self.host)

    def load(self, plan: Any, name: str) -> LoadResult:
        """Swap plans atomically in one operation: validate, then apply host and grants."""
        self.grants.diff(plan)  # raises invalidArgument before anything changes
        change = self.host.apply_plan(plan, self.now_ns())
        return self._loaded(plan, name, change, self.grants.apply_plan)

    # A stepped load (rpc/loads.py): stage_load, load_step until True, commit_load,
    # retire_step until True; abort_load if anything before the commit failed.
    # Between these operations the bridge runs everyone else's: they see the old
    # plan until commit_load, which swaps host names and grants in one operation.

    def stage_load(self, plan: Any) -> int:
        """Validate ``plan`` and stage it; changes nothing. Returns the threads to spawn."""
        if self._staged is not None:
            raise wire_error("failed", "a plan load is already in progress")
        validate_plan_grants(plan)  # invalidArgument before anything changes
        self._staged = self.host.stage_plan(plan)
        self.load_steps += 1
        return len(self._staged.pending)

    def load_step(self, limit: int) -> bool:
        """Spawn up to ``limit`` of the staged threads (no RPC can name them yet)."""
        self.load_steps += 1
        return self.host.spawn_step(self._staging(), self.now_ns(), limit)

    def commit_load(self, name: str) -> LoadResult:
        """Make the staged plan the plan: host names and grants, in this one operation."""
        staged = self._staging()
        self.load_steps += 1
        change = self.host.commit_plan(staged)
        return self._loaded(
            staged.plan,
            name,
            change,
            lambda plan, host, removed: self.grants.apply_plan(plan, host, removed, validated=True),
        )

    def retire_step(self, limit: int) -> bool:
        """Kill up to ``limit`` threads the committed plan removed (no name reaches them)."""
        staged = self._staged
        if staged is None:
            return True
        self.load_steps += 1
        done = self.host.retire_step(staged, self.now_ns(), limit)
        if done:
            self._staged = None
        return done

    def abort_load(self) -> None:
        """Undo a staged load before its commit (kill what it spawned); after the commit,
        only forget it (a removed thread not killed yet stays nameless)."""
        staged, self._staged = self._staged, None
        if staged is not None and staged.state == "staging":
            self.host.abort_plan(staged, self.now_ns())

    def _staging(self) -> Any:
        if self._staged is None or self._staged.state != "staging":
            raise wire_error("failed", "no plan load is being staged")
        return self._staged

    def _loaded(self, plan: Any, name: str, change: Any, apply_grants: Any) -> LoadResult:
        diff = apply_grants(plan, self.host, change.removed)
        self.plan_name = name
        start = tuple(
            (pname, pg.exec, pg)
            for pname, pg in self.grants.processes.items()
            if pg.exec and (pname in diff.added_processes or pname in diff.restarted_processes)
        )
        return LoadResult(
            tuple(change.added),
            tuple(change.removed),
            tuple(change.kept),
            diff.revoked,
            diff,
            start,
        )

    def set_policy(self, name: str, source: str) -> Mapping[str, Any]:
        """Admin.setPolicy: one operation, so the switch is atomic for every
        other call; the state after it (an ejection while taking over shows)."""
        self.host.set_policy(name, source)
        self.applied += 1
        return self.policy_status()

    def policy_status(self) -> Mapping[str, Any]:
        return self.host.policy_status()

    def prune_token_files(self, names: tuple[str, ...]) -> None:
        self.grants.prune_token_files(names)

    def thread_stats(self) -> list[ThreadSnapshot]:
        out = []
        for ref in self.host.thread_refs().values():
            try:
                out.append(self.host.snapshot_any(ref))
            except StaleThread:
                continue
        return out

    def processes_to_start(self) -> list[tuple[str, tuple[str, ...], ProcessGrants]]:
        return [(n, pg.exec, pg) for n, pg in self.grants.processes.items() if pg.exec]


__all__ = ["Claim", "CoreError", "LoadResult", "Owner", "ThreadArg"]
