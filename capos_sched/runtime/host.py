"""The scheduling host: who owns the core and the plan's thread names.

Exactly one thread (the trio thread in the daemon) owns a host and calls its
methods; the RPC layer hands every mutation to that thread instead of taking
locks. ``PlanHost`` is the bookkeeping every host shares: it spawns a plan's
threads into a core ``Scheduler``, maps full names (``process/thread``) to
generation-checked references, and swaps plans atomically. The trio runtime
extends it with CPUs and workers; tests of the capability layer use it alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from capos_sched.core import Effects, InvalidArgument, Policy, Scheduler, ThreadRef

if TYPE_CHECKING:
    from capos_sched.manifest import Plan, ThreadPlan


@attrs.frozen
class PlanChange:
    """What ``apply_plan`` did, by thread full name."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    kept: tuple[str, ...]


@attrs.define(eq=False)
class StagedPlan:
    """A plan being applied in steps (``PlanHost.stage_plan``).

    Invariants: while ``state`` is "staging", nothing a caller of the host can
    name has changed: the threads in ``spawned`` are live in the core but no
    name resolves to them; ``commit_plan`` publishes them and retires the old
    plan's names in one step ("committed"); ``abort_plan`` kills them
    ("aborted"). ``steps`` counts the steps taken.
    """

    plan: Plan
    added: tuple[str, ...]
    removed: tuple[str, ...]
    kept: tuple[str, ...]
    pending: list[ThreadPlan]
    """New threads not spawned yet (plan order)."""
    kept_plans: dict[str, ThreadPlan]
    """The new plan's entries for kept threads (their weight and class)."""
    retiring: dict[str, ThreadRef]
    """Removed threads not killed yet (killed only after the commit)."""
    spawned: dict[str, ThreadRef] = attrs.field(factory=dict)
    state: str = "staging"
    steps: int = 0


class PlanHost:
    """A core Scheduler populated from a manifest plan.

    Invariants: ``_refs`` maps every thread of the current plan to a live or
    exited (never reaped) thread of ``scheduler``; a name removed by
    ``apply_plan`` no longer resolves, and its old ref is stale in the core.
    """

    def __init__(
        self,
        plan: Plan,
        policy: Policy | str | Any | None = None,
        cpus: int | None = None,
        guard: Any = None,
    ):
        from capos_sched.policy_files import policy_and_guard

        self._plan = plan
        policy, file_guard = policy_and_guard(policy or plan.machine.policy)
        self.scheduler = Scheduler(
            cpus or plan.machine.cpus,
            policy,
            plan.machine.slice_ns,
            guard=guard or file_guard,
        )
        from capos_sched.drive import attach_schedulers

        attach_schedulers(self.scheduler, plan)
        self._refs: dict[str, ThreadRef] = {}
        for thread_plan in plan.threads():
            self._spawn(thread_plan, 0)

    @property
    def plan(self) -> Plan:
        return self._plan

    def thread_ref(self, full_name: str) -> ThreadRef | None:
        """The reference of the plan's thread ``full_name`` (None if not in the plan)."""
        return self._refs.get(full_name)

    def thread_refs(self) -> dict[str, ThreadRef]:
        return dict(self._refs)

    def apply_plan(self, plan: Plan, now_ns: int) -> PlanChange:
        """Replace the plan in one go (stage, every step, commit). The plan is
        already validated, so every step here succeeds or nothing is changed."""
        staged = self.stage_plan(plan)
        try:
            while not self.spawn_step(staged, now_ns, len(staged.pending)):
                pass
        except BaseException:
            self.abort_plan(staged, now_ns)
            raise
        change = self.commit_plan(staged)
        while not self.retire_step(staged, now_ns, len(staged.retiring)):
            pass
        return change

    # A plan applied in steps (the daemon's loads): stage, spawn_step until it
    # says done, commit_plan, retire_step until done; abort_plan before commit.

    def stage_plan(self, plan: Plan) -> StagedPlan:
        """What replacing the plan by ``plan`` will do; changes nothing. The
        scheduler tree is fixed for a run: a plan with other ``schedulers``
        is refused (InvalidArgument)."""
        if plan.schedulers != self._plan.schedulers:
            raise InvalidArgument(
                "a loaded plan must declare the same schedulers as the running one "
                "(the scheduler tree is fixed for a run)"
            )
        old = {t.full_name for t in self._plan.threads()}
        new = {t.full_name: t for t in plan.threads()}
        for thread_plan in new.values():  # validate before the first mutation
            _ = thread_plan.weight, thread_plan.latency_class
        removed = tuple(n for n in old if n not in new)
        return StagedPlan(
            plan=plan,
            added=tuple(n for n in new if n not in old),
            removed=removed,
            kept=tuple(n for n in new if n in old),
            pending=[t for n, t in new.items() if n not in old],
            kept_plans={n: t for n, t in new.items() if n in old},
            # A dict, not pairs: 50k new tuples would set off a full GC pass (200+ ms).
            retiring={n: self._refs[n] for n in removed},  # names change only by loads
        )

    def spawn_step(self, staged: StagedPlan, now_ns: int, limit: int) -> bool:
        """Spawn up to ``limit`` of the staged plan's new threads into the core;
        True once all are. They get no name here (``thread_ref`` does not
        resolve them) until ``commit_plan``."""
        assert staged.state == "staging", staged.state
        batch = staged.pending[:limit]
        del staged.pending[:limit]
        staged.steps += 1
        for thread_plan in batch:
            staged.spawned[thread_plan.full_name] = self._spawn_unnamed(
                thread_plan, now_ns, staged.plan
            )
        if batch:
            self.on_threads_spawned()
        return not staged.pending

    def commit_plan(self, staged: StagedPlan) -> PlanChange:
        """Make the staged plan the plan, in one step: the new threads get their
        names, removed names stop resolving (their threads are killed by
        ``retire_step``), kept threads whose weight or class changed get the new one."""
        assert staged.state == "staging" and not staged.pending, staged.state
        for name, wanted in staged.kept_plans.items():
            ref = self._refs[name]
            if self.scheduler.is_live(ref):
                snap = self.scheduler.snapshot(ref)
                if snap.weight != wanted.weight:
                    self.scheduler.set_weight(ref, wanted.weight)
                if snap.latency_class is not wanted.latency_class:
                    self.scheduler.set_latency_class(ref, wanted.latency_class)
        refs = self._refs
        for name in staged.removed:  # no allocation here: a GC pass would cost more than this
            del refs[name]
        refs.update(staged.spawned)
        self._plan = staged.plan
        staged.state = "committed"
        staged.steps += 1
        return PlanChange(staged.added, staged.removed, staged.kept)

    def retire_step(self, staged: StagedPlan, now_ns: int, limit: int) -> bool:
        """Kill up to ``limit`` threads the committed plan removed; True once all are."""
        assert staged.state == "committed", staged.state
        retiring = staged.retiring
        if retiring:
            staged.steps += 1
        for _ in range(min(limit, len(retiring))):
            name, ref = retiring.popitem()
            self._kill(name, ref, now_ns)
        return not retiring

    def abort_plan(self, staged: StagedPlan, now_ns: int) -> None:
        """Undo a staged plan before its commit: kill the threads it spawned."""
        assert staged.state == "staging", staged.state
        staged.state = "aborted"
        spawned, staged.spawned = staged.spawned, {}
        for name, ref in spawned.items():
            self._kill(name, ref, now_ns)

    def on_threads_spawned(self) -> None:
        """Hook for subclasses: a step spawned threads (the runtime kicks idle CPUs)."""

    # ----------------------------------------------------------------- policy

    def set_policy(self, policy: Any, reason: str = "operator") -> None:
        """Switch the policy now (a bare host runs no CPUs: no effects to act on)."""
        self.scheduler.set_policy(policy, self.scheduler.now_ns)

    def set_policy_source(self, name: str, source: str) -> None:
        """``Admin.setPolicy``: the built-in ``name`` when ``source`` is empty,
        else the user policy whose module text is ``source`` (``name`` is its
        file name, for diagnostics). It is loaded and instantiated under the
        same guard as a policy file, and its callbacks are bounded like one's.
        A bad name or source raises InvalidArgument and changes nothing."""
        from capos_sched.core import BUILTIN_NAMES, InvalidArgument
        from capos_sched.policy_files import (
            LIVE_LOAD_BOUND_NS,
            AlarmGuard,
            PolicyLoadError,
            load_policy_source,
        )

        if not source:
            if name not in BUILTIN_NAMES:
                raise InvalidArgument(
                    f"unknown built-in policy {name!r}: expected one of "
                    f"{', '.join(BUILTIN_NAMES)} (or a user policy's source)"
                )
            self.set_policy(name)
            return
        if not name:
            raise InvalidArgument("a user policy needs a name (its file name)")
        try:
            spec = load_policy_source(source, name, bound_ns=LIVE_LOAD_BOUND_NS)
            policy = AlarmGuard(LIVE_LOAD_BOUND_NS).call(spec.create)
        except PolicyLoadError as exc:
            raise InvalidArgument(str(exc)) from None
        except Exception as exc:  # POLICY() raised or overran: nothing changed yet
            raise InvalidArgument(f"{name}: creating POLICY failed: {exc}") from None
        if self.scheduler.guard is None:
            self.scheduler.guard = AlarmGuard()  # made here, in the owner's thread
        self.set_policy(policy)

    def policy_status(self) -> dict[str, Any]:
        """The policy in force, the last stall bypass (None: never) and the
        exit records, oldest first; times as ``rel_ns`` makes them."""
        core = self.scheduler
        return {
            "policy": core.policy_name,
            "builtin": isinstance(core.policy, Policy),
            "bypass": None,
            "exits": [
                {**record.as_dict(), "at_ns": self.rel_ns(record.at_ns)} for record in core.exits
            ],
        }

    def rel_ns(self, now_ns: int) -> int:
        """A core time as reported (a bare host: as is)."""
        return now_ns

    def on_thread_added(self, thread_plan: ThreadPlan, ref: ThreadRef) -> None:
        """Hook for subclasses (the runtime attaches a workload here)."""

    def on_thread_removed(
        self, full_name: str, ref: ThreadRef, running_on: int | None, effects: Effects
    ) -> None:
        """Hook for subclasses (the runtime drops the workload here, stops the
        slice on ``running_on``, the CPU still running the killed thread, and
        acts on ``effects``: callers released by a server killed mid-call)."""

    def _spawn(self, thread_plan: ThreadPlan, now_ns: int) -> ThreadRef:
        ref = self._spawn_unnamed(thread_plan, now_ns)
        self._refs[thread_plan.full_name] = ref
        return ref

    def _spawn_unnamed(
        self, thread_plan: ThreadPlan, now_ns: int, plan: Plan | None = None
    ) -> ThreadRef:
        from capos_sched.drive import scheduler_of_thread

        wake = self.scheduler.spawn(
            thread_plan.full_name,
            now_ns,
            thread_plan.weight,
            thread_plan.latency_class,
            scheduler=scheduler_of_thread(plan or self._plan, thread_plan),
        )
        self.on_thread_added(thread_plan, wake.thread)
        return wake.thread

    def _kill(self, name: str, ref: ThreadRef, now_ns: int) -> None:
        running_on, effects = None, Effects()
        if self.scheduler.is_live(ref):
            running_on, effects = self.scheduler.kill_effects(ref, now_ns)
        self.on_thread_removed(name, ref, running_on, effects)
