"""Sub-schedulers: CPU delegation enforced where work is delivered.

The mechanism half of ``docs/delegation.md``; the authority table is
``delegation.DelegationTree``. A ``Scheduler`` gets a ``Delegation`` when its
first sub-scheduler attaches; until then nothing here runs and the dispatch
path is the one of a single policy (one ``is None`` check in ``pick_next``).

Each scheduler (the root included) is a ``SchedState``: its own policy
instance, bound with a ``SubCtx`` scoped to it (the root's ctx stays the
``Scheduler`` itself, which holds every cap). Every thread carries its
scheduler's name (``Thread.scheduler``); the Scheduler's callback slots are
replaced by routers that call the thread's own scheduler.

Delivery and enforcement (checked against the live table):

* ``ctx.insert`` onto CPU k's local DSQ needs ``enq`` on k, or ``enqImmed``
  when k is idle with an empty local DSQ (an immediate insert). Otherwise the
  thread goes to the reject list and, once the callback returns, back to its
  policy's ``enqueue`` with ``ENQ_REJECTED`` and the missing caps in the flags
  (``missing_caps(flags)``). A thread rejected twice in one delivery cannot
  move by its policy's choice: it is admitted to its scheduler's own FIFO
  (``forced_admits``), which only CPUs the scheduler holds consume, so it
  still never runs on a CPU without caps.
* ``ctx.move_to_local(dsq, k)`` is a delivery too: ``enq`` on k, or
  ``enqImmed`` when k is the CPU dispatching (the thread runs at once).
* ``ctx.kick(k)`` without ``enqImmed`` is dropped (``denied_kicks``); a
  preempting kick without ``preempt`` against a thread of another subtree
  degrades to a plain kick (``denied_preempts``).
* Private DSQs (``create_dsq``, ``GLOBAL_DSQ``) are namespaced per scheduler;
  a CPU consumes them only through the schedulers holding ``enqImmed`` on it,
  deepest first (a delegate gets its CPU before its ancestors), the root last.

A revoke takes effect on CPU k at k's next dispatch, when k folds the
effective caps in: queued threads on k's local DSQ (and its IPC slot) whose
scheduler lost the CPU are handed back to their ``enqueue`` tagged
``ENQ_EVICTED`` (``evictions``); a running one had its slice ended at once
(a preempt in the revoke's Effects).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .delegation import (
    DEFAULT_POOL_ROTATION_NS,
    MIN_POOL_ROTATION_NS,
    ROOT,
    ROOT_SELF_WEIGHT,
    CpuCap,
    DelegationTree,
    KillRecord,
    implied,
    pool_holder,
    proportional_split,
)
from .errors import InvalidArgument, InvalidState, StaleScheduler
from .policy import ENQ_SWITCH, GLOBAL_DSQ, LOCAL_ON, MAX_DSQ_ID, PolicyViolation
from .runqueue import QUEUED, FifoQueue, RunQueue, VirtualFinishQueue

if TYPE_CHECKING:
    from .scheduler import Scheduler
    from .thread import Thread

ENQ_REJECTED = 16
"""enqueue flag: the thread's insert was refused (missing caps in the flags)."""
ENQ_EVICTED = 32
"""enqueue flag: a revoke evicted the thread from a CPU's local DSQ."""
ENQ_CAPS_SHIFT = 8
"""The missing caps of a rejected insert are ``(flags >> ENQ_CAPS_SHIFT) & 7``."""
MAX_REJECTS = 2
"""Rejects of one thread in one delivery before it is force-admitted."""
DELIVERY = CpuCap.ENQ | CpuCap.ENQ_IMMED
MAX_PENDING = 4096
"""Notifications kept for ``take_notifications`` (the oldest are dropped)."""


def missing_caps(flags: int) -> CpuCap:
    """The caps a rejected insert lacked, from its ``enqueue`` flags."""
    return CpuCap((flags >> ENQ_CAPS_SHIFT) & 7)


@attrs.frozen
class CpuHoldingView:
    """One CPU of a scheduler: caps held literally, and those in effect there
    (the implied caps, as the CPU last folded them in)."""

    cpu: int
    held: CpuCap
    effective: CpuCap


@attrs.frozen
class CpuNotification:
    """``capsUpdated`` (``cpus``), ``effectiveCapsUpdated`` (``cpu``,
    ``before``, ``after``) or ``idle`` (``cpu``), for ``scheduler``."""

    scheduler: str
    kind: str
    cpus: tuple[int, ...] = ()
    cpu: int | None = None
    before: CpuCap = CpuCap.NONE
    after: CpuCap = CpuCap.NONE


@attrs.frozen
class SchedulerStats:
    """A copy of one scheduler's counters (``exit`` is its kill record)."""

    name: str
    alive: bool
    rejected_inserts: int
    forced_admits: int
    denied_kicks: int
    denied_preempts: int
    evictions: int
    allocated_ns: dict[int, int]
    exit: KillRecord | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "alive": self.alive,
            "rejected_inserts": self.rejected_inserts,
            "forced_admits": self.forced_admits,
            "denied_kicks": self.denied_kicks,
            "denied_preempts": self.denied_preempts,
            "evictions": self.evictions,
            "allocated_ns": {str(k): v for k, v in sorted(self.allocated_ns.items())},
            "exit": None
            if self.exit is None
            else {
                "kind": self.exit.kind,
                "parent": self.exit.parent,
                "message": self.exit.message,
                "removed": list(self.exit.removed),
            },
        }


_CALLBACKS = (
    "select_cpu",
    "enqueue",
    "dispatch",
    "running",
    "stopping",
    "set_weight",
    "init_thread",
    "tick",
    "init",
    "exit_thread",
    "caps_updated",
    "effective_caps_updated",
    "idle",
)


@attrs.define(eq=False)
class SchedState:
    """One scheduler's runtime state. Invariant: ``dsqs`` are registered in the
    Scheduler's DSQ table under ``(name, id)`` keys (the root's under its ids)."""

    name: str
    depth: int
    policy: Any
    ctx: Any
    cb: dict[str, Any] = attrs.Factory(dict)
    rejected_inserts: int = 0
    forced_admits: int = 0
    denied_kicks: int = 0
    denied_preempts: int = 0
    evictions: int = 0
    allocated_ns: dict[int, int] = attrs.Factory(dict)
    exit: KillRecord | None = None
    policy_exits: list[Any] = attrs.Factory(list)

    def stats(self, alive: bool) -> SchedulerStats:
        return SchedulerStats(
            self.name,
            alive,
            self.rejected_inserts,
            self.forced_admits,
            self.denied_kicks,
            self.denied_preempts,
            self.evictions,
            dict(self.allocated_ns),
            self.exit,
        )


class SubCtx:
    """The ctx of a sub-scheduler's policy: the contract of ``core/policy.py``
    over its own DSQ namespace, with every delivery checked against its caps."""

    GLOBAL_DSQ = GLOBAL_DSQ

    def __init__(self, deleg: Delegation, name: str) -> None:
        self._d = deleg
        self._s = deleg.sched
        self.name = name
        self.nr_cpus = self._s.nr_cpus
        self.slice_ns = self._s.slice_ns

    @property
    def now_ns(self) -> int:
        return self._s.now_ns

    def _key(self, dsq: int) -> Any:
        if dsq >= LOCAL_ON:
            return dsq
        return (self.name, dsq)

    def local_dsq(self, cpu: int) -> int:
        return self._s.local_dsq(cpu)

    def create_dsq(self, dsq_id: int, ordered: bool) -> RunQueue:
        if isinstance(dsq_id, bool) or not isinstance(dsq_id, int) or not 0 <= dsq_id <= MAX_DSQ_ID:
            raise PolicyViolation(f"create_dsq: id {dsq_id!r} outside [0, {MAX_DSQ_ID}]")
        key = (self.name, dsq_id)
        if key in self._s._dsqs:
            raise PolicyViolation(f"create_dsq: DSQ {dsq_id} already exists")
        dsq: RunQueue = VirtualFinishQueue(dsq_id) if ordered else FifoQueue(dsq_id)
        self._s._dsqs[key] = dsq
        return dsq

    def insert(
        self, thread: Thread, dsq: int, key: int | None = None, slice_ns: int | None = None
    ) -> None:
        self._own(thread, "insert")
        if isinstance(dsq, int) and dsq >= LOCAL_ON:
            cpu = dsq & ~LOCAL_ON
            if not 0 <= cpu < self.nr_cpus:
                raise PolicyViolation(f"insert of {thread.name}: no DSQ {dsq}")
            missing = self._d.delivery_missing(self.name, cpu, immediate=self._s.is_idle(cpu))
            if missing:
                self._d.reject(thread, missing)
                return
        self._s.insert(thread, self._key(dsq), key, slice_ns)

    def move_to_local(
        self, dsq: int, cpu: int, thread: Thread | None = None, source: str = "queue"
    ) -> bool:
        if not 0 <= cpu < self.nr_cpus:
            raise PolicyViolation(f"move_to_local: CPU {cpu} outside [0, {self.nr_cpus - 1}]")
        missing = self._d.delivery_missing(self.name, cpu, immediate=cpu == self._s._dispatching)
        if not missing:
            return self._s.move_to_local(self._key(dsq), cpu, thread, source)
        queue = self._s._dsqs.get(self._key(dsq))
        if queue is None:
            raise PolicyViolation(f"move_to_local: no DSQ {dsq}")
        if thread is None:
            thread = queue.pop()
            if thread is None:
                return False
        elif thread.owner is queue:
            queue.discard(thread)
        else:
            raise PolicyViolation(f"move_to_local: {thread.name} is not queued on DSQ {dsq}")
        thread.owner = None
        self._d.reject(thread, missing)
        return False

    def kick(self, cpu: int, preempt: bool = False) -> None:
        if not 0 <= cpu < self.nr_cpus:
            raise PolicyViolation(f"kick: CPU {cpu} outside [0, {self.nr_cpus - 1}]")
        tree, st = self._d.tree, self._d.states[self.name]
        caps = tree.effective(self.name, cpu)
        if not caps & CpuCap.ENQ_IMMED:
            st.denied_kicks += 1
            return
        if preempt:
            current = self._s.cpus[cpu].current
            foreign = current is not None and not tree.in_subtree(current.scheduler, self.name)
            if foreign and not caps & CpuCap.PREEMPT:
                st.denied_preempts += 1
                preempt = False
        self._s.kick(cpu, preempt)

    def is_idle(self, cpu: int) -> bool:
        """Runs no thread of this scheduler (see ``RootCtx.is_idle``)."""
        current = self._s.cpus[cpu].current
        return current is None or current.scheduler != self.name

    def pick_idle_cpu(self, prefer: int = -1) -> int:
        """``prefer`` if idle and held, else the lowest idle CPU held, else -1."""
        cpus = self._s.cpus
        held = self._d.tree.nodes[self.name].held
        if prefer in held and cpus[prefer].current is None:
            return prefer
        for cpu in sorted(held):
            if cpus[cpu].current is None:
                return cpu
        return -1

    def held_cpus(self) -> list[int]:
        """The CPUs this scheduler may use (holds ``enqImmed`` on, by implication)."""
        return sorted(self._d.tree.nodes[self.name].held)

    def nr_queued(self, dsq: int) -> int:
        queue = self._s._dsqs.get(self._key(dsq))
        if queue is None:
            raise PolicyViolation(f"nr_queued: no DSQ {dsq}")
        return len(queue)

    def iter_dsq(self, dsq: int) -> Iterator[Thread]:
        queue = self._s._dsqs.get(self._key(dsq))
        if queue is None:
            raise PolicyViolation(f"iter_dsq: no DSQ {dsq}")
        return iter(queue)

    def queued_on(self, thread: Thread) -> int | None:
        return self._s.queued_on(thread)

    def raise_vruntime(self, thread: Thread, floor_ns: int) -> None:
        self._s.raise_vruntime(thread, floor_ns)

    def running_virtual_finish(self, cpu: int) -> int:
        return self._s.running_virtual_finish(cpu)

    def _own(self, thread: Thread, what: str) -> None:
        if thread.scheduler != self.name:
            raise PolicyViolation(
                f"{what} of {thread.name}: it belongs to scheduler {thread.scheduler!r}"
            )


class RootCtx:
    """The root policy's ctx under delegation: the Scheduler itself, except
    that ``is_idle(cpu)`` means "runs no thread of the root" (each policy
    sees only its own threads' load; another scheduler's running thread
    leaves a CPU idle to it, as the policy's own callbacks saw it)."""

    GLOBAL_DSQ = GLOBAL_DSQ

    def __init__(self, sched: Scheduler) -> None:
        self._s = sched
        self.nr_cpus = sched.nr_cpus
        self.slice_ns = sched.slice_ns
        self.insert = sched.insert
        self.move_to_local = sched.move_to_local
        self.kick = sched.kick
        self.local_dsq = sched.local_dsq
        self.create_dsq = sched.create_dsq
        self.pick_idle_cpu = sched.pick_idle_cpu
        self.nr_queued = sched.nr_queued
        self.iter_dsq = sched.iter_dsq
        self.queued_on = sched.queued_on
        self.raise_vruntime = sched.raise_vruntime
        self.running_virtual_finish = sched.running_virtual_finish

    @property
    def now_ns(self) -> int:
        return self._s.now_ns

    def is_idle(self, cpu: int) -> bool:
        current = self._s.cpus[cpu].current
        return current is None or current.scheduler != ROOT

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s, name)


class Delegation:
    """The scheduler tree of one Scheduler: per-scheduler policies, enforcement,
    eviction, kill and the default (qmap) split. See the module docstring."""

    def __init__(self, sched: Scheduler, rotation_ns: int = DEFAULT_POOL_ROTATION_NS) -> None:
        if rotation_ns < MIN_POOL_ROTATION_NS:
            raise InvalidArgument(
                f"pool rotation {rotation_ns} ns is below the minimum {MIN_POOL_ROTATION_NS} ns"
            )
        self.sched = sched
        self.rotation_ns = rotation_ns
        self.tree = DelegationTree(sched.nr_cpus)
        self.root_ctx = RootCtx(sched)
        self.states: dict[str, SchedState] = {ROOT: SchedState(ROOT, 0, None, self.root_ctx)}
        self.dead: dict[str, SchedState] = {}
        self.effective: list[dict[str, CpuCap]] = [
            {ROOT: implied(CpuCap.ENQ_IMMED | CpuCap.ENQ | CpuCap.PREEMPT)}
            for _ in range(sched.nr_cpus)
        ]
        """Per CPU: the caps in effect there per scheduler (folded at dispatch)."""
        self.holders: list[list[SchedState]] = [[self.states[ROOT]] for _ in range(sched.nr_cpus)]
        self.dirty: set[int] = set()
        self.pending: list[CpuNotification] = []
        self.routed = False
        self._rejects: list[tuple[Thread, CpuCap]] = []
        self._pool_period = -1
        self.manual: set[str] = set()
        """Parents that granted or revoked by hand: their default split is off."""

    # ----------------------------------------------------------- structure

    def alive(self, name: str) -> bool:
        return name in self.tree.nodes

    def check_live(self, name: str) -> None:
        if name in self.tree.nodes:
            return
        if name in self.dead:
            raise StaleScheduler(f"scheduler {name!r} is stale: it was killed")
        raise InvalidArgument(f"no scheduler named {name!r}")

    def attach(self, name: str, parent: str, policy: Any, weight: int, now_ns: int) -> None:
        self.check_live(parent)
        if name in self.tree.nodes:
            raise InvalidArgument(f"cannot attach scheduler {name!r}: the name is taken")
        # Refuse before any change: the parent's split must give the child a CPU.
        if parent not in self.manual:
            try:
                self._check_split(parent, self._enq_count(parent), (name, weight))
            except InvalidArgument as exc:
                raise InvalidArgument(
                    f"cannot attach scheduler {name!r} under {parent!r}: {exc}"
                ) from None
        self.tree.attach(name, parent, weight)
        self.dead.pop(name, None)
        st = SchedState(name, self.tree.nodes[name].depth, None, SubCtx(self, name))
        self.states[name] = st
        self._route()
        self._install(st, policy)
        self.rebalance(parent, now_ns)

    def _install(self, st: SchedState, policy: Any) -> None:
        from .scheduler import new_builtin_policy

        if policy is None or isinstance(policy, str):
            policy = new_builtin_policy(policy or "wfq")
        if not callable(getattr(policy, "enqueue", None)):
            raise InvalidArgument(f"policy {policy!r} has no enqueue callback")
        guard = None if getattr(policy, "builtin", False) is True else self.sched.guard
        self.sched._dsqs[(st.name, GLOBAL_DSQ)] = FifoQueue(GLOBAL_DSQ)
        st.policy = policy
        st.cb = {}
        for cb in _CALLBACKS:
            fn = getattr(policy, cb, None)
            if fn is not None and guard is not None:
                fn = (lambda f: lambda *a: guard.call(f, *a))(fn)
            st.cb[cb] = fn
        self.call(st, "init")

    def set_weight(self, name: str, weight: int, now_ns: int) -> None:
        self.check_live(name)
        node = self.tree.nodes[name]
        if node.parent is None:
            raise InvalidArgument("the root's self weight is fixed")
        old = node.weight
        self.tree.set_weight(name, weight)
        try:
            self._check_split(node.parent, self._enq_count(node.parent))
        except InvalidArgument:
            self.tree.set_weight(name, old)
            raise
        self.rebalance(node.parent, now_ns)

    # ------------------------------------------------------------- routing

    def _route(self) -> None:
        """Replace the Scheduler's callback slots by routers (once)."""
        if self.routed:
            return
        self.routed = True
        for thread in self.sched._threads.values():
            thread.scheduler = ROOT
            thread.accounted_ns = thread.runtime_ns
        self.rebind_root()
        self.sched._routed = self
        self.sched._unbind_fast_cycle()  # its C twin serves only the unrouted scheduler

    def rebind_root(self) -> None:
        """Take the root policy's bound callbacks and put the routers in their
        place (called again after every root policy install)."""
        s = self.sched
        root = self.states[ROOT]
        root.policy = s._policy
        root.cb = {
            "select_cpu": s._cb_select_cpu,
            "enqueue": s._cb_enqueue,
            "dispatch": s._cb_dispatch,
            "running": s._cb_running,
            "stopping": s._cb_stopping,
            "set_weight": s._cb_set_weight,
            "init_thread": s._cb_init_thread,
            "tick": s._cb_tick,
            "exit_thread": s._cb_exit_thread,
        }
        for cb in ("caps_updated", "effective_caps_updated", "idle"):
            root.cb[cb] = getattr(s._policy, cb, None)
        s._cb_select_cpu = self._r_select_cpu
        s._cb_enqueue = self._r_enqueue
        s._cb_running = self._r_running
        s._cb_stopping = self._r_stopping
        s._cb_set_weight = self._r_set_weight
        s._cb_init_thread = self._r_init_thread
        s._cb_tick = self._r_tick
        s._cb_exit_thread = self._r_exit_thread

    def call(self, st: SchedState, name: str, *args: Any) -> Any:
        """Call ``st``'s callback ``name``: the root's raise into the Scheduler's
        own safety net; a sub-scheduler's fault ejects only its policy."""
        fn = st.cb.get(name)
        if fn is None:
            return None
        if st.name == ROOT:
            return fn(self.root_ctx, *args)
        try:
            return fn(st.ctx, *args)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | GeneratorExit):
                raise
            self._eject(st, name, exc)
            return None

    def eject_policy(self, name: str, kind: Any, message: str) -> Any:
        """Eject ``name``'s policy to fifo from outside (a stall verdict), with
        a ``kind`` record; None if fifo runs already or ``name`` holds no CPU."""
        self.check_live(name)
        st = self.states[name]
        if getattr(st.policy, "name", None) == "fifo" and getattr(st.policy, "builtin", False):
            return None
        if not any(caps & CpuCap.ENQ_IMMED for caps in self.tree.nodes[name].held.values()):
            return None
        self._eject(st, None, None, kind=kind, message=message)
        return st.policy_exits[-1]

    def _eject(
        self,
        st: SchedState,
        callback: str | None,
        exc: BaseException | None,
        kind: Any = None,
        message: str = "",
    ) -> None:
        from .policy import ExitKind, PolicyExit

        if exc is not None:
            kind = ExitKind.INVALID if isinstance(exc, PolicyViolation) else ExitKind.ERROR
            message = f"{type(exc).__name__}: {exc}"
        name = str(getattr(st.policy, "name", type(st.policy).__name__))
        record = PolicyExit(kind, name, callback, message, self.sched.now_ns)
        st.policy_exits.append(record)
        if getattr(st.policy, "name", None) == "fifo" and getattr(st.policy, "builtin", False):
            raise InvalidState(f"the fallback policy of {st.name!r} failed: {exc}") from exc
        # Continue under fifo: every queued thread of ``st`` is handed over.
        queued = [t for t in self.threads_of(st.name) if self._queued_privately(t)]
        for thread in queued:
            thread.owner.discard(thread)
            thread.owner = None
        for key in [k for k in self.sched._dsqs if isinstance(k, tuple) and k[0] == st.name]:
            del self.sched._dsqs[key]
        self._install(st, "fifo")
        for thread in self.threads_of(st.name):
            thread.policy_data = None
        for thread in queued:
            self._enqueue(st, thread, ENQ_SWITCH)

    def _queued_privately(self, thread: Thread) -> bool:
        owner = thread.owner
        return owner is not None and owner.kind == QUEUED and owner.cpu is None

    def threads_of(self, name: str) -> list[Thread]:
        from .thread import ThreadState

        return [
            t
            for t in self.sched._threads.values()
            if t.scheduler == name and t.state is not ThreadState.EXITED
        ]

    def _r_select_cpu(self, _ctx: Any, thread: Thread, prev: int) -> int:
        st = self.states[thread.scheduler]
        if st.cb.get("select_cpu") is None:
            chosen = prev if prev >= 0 else (thread.last_cpu or 0)
        else:
            chosen = self.call(st, "select_cpu", thread, prev)
        if st.name == ROOT or not isinstance(chosen, int):
            return chosen
        return self._steer(st, chosen)

    def _steer(self, st: SchedState, cpu: int) -> int:
        """A sub-scheduler's thread is placed on a CPU it holds (an idle one,
        else the lowest); with none held, the placement stands."""
        held = self.tree.nodes[st.name].held
        if cpu in held:
            return cpu
        if not held:
            return max(cpu, 0)
        idle = st.ctx.pick_idle_cpu()
        return idle if idle >= 0 else min(held)

    def _r_enqueue(self, _ctx: Any, thread: Thread, flags: int) -> None:
        st = self.states[thread.scheduler]
        if st.name == ROOT:
            st.cb["enqueue"](self.root_ctx, thread, flags)
            return
        if thread.last_cpu is not None:
            steered = self._steer(st, thread.last_cpu)
            if steered != thread.last_cpu:
                self.sched._assign_cpu(thread, steered)
        self._enqueue(st, thread, flags)

    def _enqueue(self, st: SchedState, thread: Thread, flags: int) -> None:
        """A sub-scheduler's enqueue, then its rejects (each back to its
        enqueue, force-admitted at the second); a thread left in no DSQ ejects
        the policy and goes to its fallback."""
        exits = len(st.policy_exits)
        self.call(st, "enqueue", thread, flags)
        self.drain_rejects()
        if self._stranded(st, thread):
            if len(st.policy_exits) == exits:
                self._eject(st, "enqueue", PolicyViolation(f"enqueue left {thread.name} in no DSQ"))
            self.call(st, "enqueue", thread, flags)
            self.drain_rejects()
            if self._stranded(st, thread):
                self.force_admit(st, thread)

    def _stranded(self, st: SchedState, thread: Thread) -> bool:
        from .thread import ThreadState

        return (
            thread.owner is None
            and thread.state is ThreadState.RUNNABLE
            and thread.scheduler == st.name
            and st.name in self.states
        )

    def reject(self, thread: Thread, missing: CpuCap) -> None:
        owner = thread.owner
        if owner is not None and owner.kind == QUEUED:
            owner.discard(thread)
            thread.owner = None
        self.states[thread.scheduler].rejected_inserts += 1
        self._rejects.append((thread, missing))

    def drain_rejects(self) -> None:
        """Hand each rejected thread back to its policy's enqueue with the
        reason and missing caps; a second reject in one delivery force-admits."""
        bounces: dict[int, int] = {}
        while self._rejects:
            thread, missing = self._rejects.pop(0)
            if thread.owner is not None or thread.scheduler not in self.states:
                continue
            st = self.states[thread.scheduler]
            bounces[thread.tid] = bounces.get(thread.tid, 0) + 1
            if bounces[thread.tid] >= MAX_REJECTS:
                self.force_admit(st, thread)
                continue
            self.call(st, "enqueue", thread, ENQ_REJECTED | int(missing) << ENQ_CAPS_SHIFT)
            if self._stranded(st, thread) and not any(t is thread for t, _ in self._rejects):
                self.force_admit(st, thread)

    def force_admit(self, st: SchedState, thread: Thread) -> None:
        """Admit a thread that cannot move into its scheduler's own FIFO (only
        CPUs it holds consume it), counted."""
        st.forced_admits += 1
        self.sched.insert(thread, (st.name, GLOBAL_DSQ) if st.name != ROOT else GLOBAL_DSQ)

    def _r_running(self, _ctx: Any, thread: Thread) -> None:
        self.call(self.states[thread.scheduler], "running", thread)

    def _account(self, thread: Thread) -> None:
        delta = thread.runtime_ns - thread.accounted_ns
        if delta and thread.last_cpu is not None:
            alloc = self.states[thread.scheduler].allocated_ns
            alloc[thread.last_cpu] = alloc.get(thread.last_cpu, 0) + delta
            thread.accounted_ns = thread.runtime_ns

    def _r_stopping(self, _ctx: Any, thread: Thread, runnable: bool) -> None:
        self._account(thread)
        self.call(self.states[thread.scheduler], "stopping", thread, runnable)

    def _r_set_weight(self, _ctx: Any, thread: Thread, weight: int) -> None:
        self.call(self.states[thread.scheduler], "set_weight", thread, weight)
        self.drain_rejects()

    def _r_init_thread(self, _ctx: Any, thread: Thread) -> None:
        self.call(self.states[thread.scheduler], "init_thread", thread)

    def _r_tick(self, _ctx: Any, cpu: int) -> None:
        current = self.sched.cpus[cpu].current
        if current is not None:
            self._account(current)
            self.call(self.states[current.scheduler], "tick", cpu)

    def _r_exit_thread(self, _ctx: Any, thread: Thread) -> None:
        self.call(self.states[thread.scheduler], "exit_thread", thread)

    # ------------------------------------------------------------ delivery

    def delivery_missing(self, name: str, cpu: int, immediate: bool) -> CpuCap:
        """The caps ``name`` lacks to deliver a thread to ``cpu`` (NONE: allowed)."""
        caps = self.tree.effective(name, cpu)
        if caps & CpuCap.ENQ:
            return CpuCap.NONE
        if immediate and caps & CpuCap.ENQ_IMMED and not self.sched.cpus[cpu].local._entries:
            return CpuCap.NONE
        return (CpuCap.ENQ_IMMED if immediate else DELIVERY) & ~caps

    def choose(self, cpu: Any, now_ns: int) -> tuple[Thread | None, str]:
        """What ``cpu`` runs next under delegation: its IPC slot, its local DSQ,
        then each holder's own FIFO and ``dispatch``, deepest holder first."""
        s = self.sched
        if cpu.id in self.dirty:
            self.fold(cpu.id)
        if cpu.ipc_slot is not None:
            thread = s._take_ipc_slot(cpu)
            if thread is not None:
                thread.slice_ns = None
                return thread, "ipcSlot"
        local = cpu.local
        if local._entries:
            thread = local.pop()
            return thread, thread.dispatch_source
        for st in self.holders[cpu.id]:
            own = s._dsqs.get(GLOBAL_DSQ if st.name == ROOT else (st.name, GLOBAL_DSQ))
            if own is not None and len(own):
                thread = own.pop()
                if thread is not None:
                    return thread, thread.dispatch_source
            epoch = s._epoch
            s._dispatching = cpu.id
            if st.name == ROOT:
                try:
                    s._cb_dispatch(self.root_ctx, cpu.id)
                except BaseException as exc:
                    s._fault("dispatch", exc)
            else:
                self.call(st, "dispatch", cpu.id)
            s._dispatching = -1
            thread, s._handoff = s._handoff, None
            self.drain_rejects()
            if thread is None:
                thread = local.pop()
            if thread is None and st.name == ROOT and s._epoch != epoch:
                thread = local.pop() or s._global.pop()
            if thread is not None:
                return thread, thread.dispatch_source
        if not cpu.idle:
            for st in self.holders[cpu.id]:
                self.notify(CpuNotification(st.name, "idle", cpu=cpu.id))
        s._go_idle(cpu, now_ns)
        return None, ""

    def fold(self, cpu_id: int) -> None:
        """Bring ``cpu_id``'s effective caps up to the table: notify each change,
        evict what no longer may be there, recompute the holder order."""
        self.dirty.discard(cpu_id)
        s = self.sched
        eff = self.effective[cpu_id]
        for name in list(eff):
            if name not in self.tree.nodes:
                del eff[name]
        for name in self.tree.nodes:
            before = eff.get(name, CpuCap.NONE)
            after = self.tree.effective(name, cpu_id)
            if after != before:
                if after:
                    eff[name] = after
                else:
                    eff.pop(name, None)
                note = CpuNotification(name, "effectiveCapsUpdated", (), cpu_id, before, after)
                self.notify(note)
        holders = [self.states[n] for n in eff if eff[n] & CpuCap.ENQ_IMMED]
        holders.sort(key=lambda st: -st.depth)
        self.holders[cpu_id] = holders
        cpu = s.cpus[cpu_id]
        evicted = [t for t in cpu.local if not eff.get(t.scheduler, CpuCap.NONE) & CpuCap.ENQ_IMMED]
        if cpu.ipc_slot is not None and s._is_live(cpu.ipc_slot):
            server = s._threads[cpu.ipc_slot.tid]
            if server.owner is cpu.slot_tag and not eff.get(server.scheduler):
                cpu.ipc_slot = None
                server.owner = None
                evicted.append(server)
        for thread in evicted:
            if thread.owner is not None:
                thread.owner.discard(thread)
                thread.owner = None
            st = self.states[thread.scheduler]
            st.evictions += 1
            self.sched._assign_cpu(thread, self._steer(st, cpu_id))
            self._enqueue(st, thread, ENQ_EVICTED)

    def notify(self, note: CpuNotification) -> None:
        """Record a notification for the Effects, and tell the policy."""
        self.pending.append(note)
        if len(self.pending) > MAX_PENDING:  # a driver that never drains stays bounded
            del self.pending[:-MAX_PENDING]
        st = self.states.get(note.scheduler)
        if st is None:
            return
        if note.kind == "capsUpdated":
            self.call(st, "caps_updated", list(note.cpus))
        elif note.kind == "effectiveCapsUpdated":
            self.call(st, "effective_caps_updated", note.cpu, note.before, note.after)
        else:
            self.call(st, "idle", note.cpu)

    def take_notifications(self) -> list[CpuNotification]:
        out, self.pending = self.pending, []
        return out

    # ------------------------------------------------------------ authority

    def grant(self, parent: str, child: str, cpus: Sequence[int], caps: CpuCap) -> list[int]:
        self.check_live(parent)
        self.check_live(child)
        before = self._held_snapshot()
        denied = self.tree.grant(parent, child, cpus, caps)
        self.manual.add(parent)
        self._changed(before)
        return denied

    def revoke(self, parent: str, child: str, cpus: Sequence[int], caps: CpuCap) -> None:
        self.check_live(parent)
        self.check_live(child)
        before = self._held_snapshot()
        self.tree.revoke(parent, child, cpus, caps)
        self.manual.add(parent)
        self._changed(before)

    def _held_snapshot(self) -> dict[str, dict[int, CpuCap]]:
        return {n: dict(node.held) for n, node in self.tree.nodes.items()}

    def _changed(self, before: dict[str, dict[int, CpuCap]]) -> None:
        """After a table change: coalesced capsUpdated, CPUs to fold, running
        threads that lost their CPU preempted, idle CPUs kicked."""
        s = self.sched
        touched: set[int] = set()
        for name, node in self.tree.nodes.items():
            old = before.get(name, {})
            cpus = sorted(c for c in set(old) | set(node.held) if old.get(c) != node.held.get(c))
            if cpus:
                touched.update(cpus)
                self.notify(CpuNotification(name, "capsUpdated", tuple(cpus)))
        for cpu_id in sorted(touched):
            self.dirty.add(cpu_id)
            cpu = s.cpus[cpu_id]
            current = cpu.current
            if current is not None:
                if not self.tree.effective(current.scheduler, cpu_id) & CpuCap.ENQ_IMMED:
                    s._preempts.append(cpu_id)
            else:
                s._kicks.append(cpu_id)

    def kill(self, parent: str, child: str, reason: str, now_ns: int) -> None:
        from .thread import ThreadState

        self.check_live(parent)
        self.check_live(child)
        before = self._held_snapshot()
        record = self.tree.kill(parent, child, reason)
        removed = set(record.removed)
        for name in record.removed:
            st = self.states.pop(name)
            st.exit = record
            self.dead[name] = st
        for key in [k for k in self.sched._dsqs if isinstance(k, tuple) and k[0] in removed]:
            del self.sched._dsqs[key]
        moved = []
        for thread in self.sched._threads.values():
            if thread.scheduler not in removed or thread.state is ThreadState.EXITED:
                continue
            if thread.state is ThreadState.RUNNING:
                self._account(thread)
            owner = thread.owner
            if owner is not None and owner.kind == QUEUED:
                owner.discard(thread)
                thread.owner = None
            thread.scheduler = parent
            thread.policy_data = None
            moved.append(thread)
        s = self.sched
        for thread in moved:
            s._call("init_thread", s._cb_init_thread, thread)
            if thread.state is ThreadState.RUNNING:  # it runs under the parent now
                s._call("running", s._cb_running, thread)
        for thread in moved:
            if thread.state is ThreadState.RUNNABLE and thread.owner is None:
                s._enqueue(thread, ENQ_SWITCH)
        self._changed(before)
        for cpu_id in range(self.sched.nr_cpus):
            self.dirty.add(cpu_id)
        self.rebalance(parent, now_ns)

    # ------------------------------------------------- default delegation

    def _split(self, parent: str, extra: tuple[str, int] | None = None) -> Any:
        node = self.tree.nodes[parent]
        cpus = sorted(c for c, caps in node.held.items() if caps & CpuCap.ENQ)
        participants = [(parent, ROOT_SELF_WEIGHT)]
        participants += [(c, self.tree.nodes[c].weight) for c in node.children]
        if extra is not None:
            participants.append(extra)
        return proportional_split(cpus, participants)

    def _enq_count(self, name: str) -> int:
        return sum(1 for caps in self.tree.nodes[name].held.values() if caps & CpuCap.ENQ)

    def _check_split(self, parent: str, n: int, extra: tuple[str, int] | None = None) -> None:
        """Raise unless the default split under ``parent`` with ``n`` enq CPUs
        (and ``extra`` attached) gives every scheduler below a CPU, all the way
        down: an attach or weight change is refused before anything changes."""
        node = self.tree.nodes[parent]
        participants = [(parent, ROOT_SELF_WEIGHT)]
        participants += [(c, self.tree.nodes[c].weight) for c in node.children]
        if extra is not None:
            participants.append(extra)
        if parent in self.manual or len(participants) == 1:
            return
        split = proportional_split(list(range(n)), participants)
        for child in node.children:
            if self.tree.nodes[child].children:
                self._check_split(child, len(split.exclusive[child]))

    def rebalance(self, parent: str, now_ns: int) -> None:
        """The qmap split under ``parent``: exclusive ``enq`` ranges by weight,
        the pool with ``enqImmed`` to one child at a time; then below."""
        node = self.tree.nodes[parent]
        if not node.children or parent in self.manual:
            return
        split = self._split(parent)
        self._pool_period = now_ns // self.rotation_ns
        holder = pool_holder(node.children, now_ns, self.rotation_ns)
        before = self._held_snapshot()
        for child in node.children:
            want = dict.fromkeys(split.exclusive[child], CpuCap.ENQ_IMMED | CpuCap.ENQ)
            if child == holder:
                want.update(dict.fromkeys(split.pool, CpuCap.ENQ_IMMED))
            have = dict(self.tree.nodes[child].held)
            for cpu in range(self.sched.nr_cpus):
                cur, new = have.get(cpu, CpuCap.NONE), want.get(cpu, CpuCap.NONE)
                if cur & ~new:
                    self.tree.revoke(parent, child, [cpu], cur & ~new)
                if new & ~cur:
                    self.tree.grant(parent, child, [cpu], new & ~cur)
        self._changed(before)
        for child in node.children:
            self.rebalance(child, now_ns)

    def next_rotation_ns(self) -> int | None:
        """When the pool next changes hands (None: no pool anywhere)."""
        if not self._has_pool():
            return None
        return (self._pool_period + 1) * self.rotation_ns

    def _has_pool(self) -> bool:
        for node in self.tree.nodes.values():
            if node.children and node.name not in self.manual and self._split(node.name).pool:
                return True
        return False

    def rotate(self, now_ns: int) -> None:
        if now_ns // self.rotation_ns != self._pool_period:
            self.rebalance(ROOT, now_ns)

    # ----------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """The subset invariant; every live thread in a live scheduler; on every
        CPU that folded its caps, nothing queued or running without them."""
        from .thread import ThreadState

        self.tree.check_invariants()
        for thread in self.sched._threads.values():
            if thread.state is not ThreadState.EXITED:
                assert thread.scheduler in self.tree.nodes, f"{thread.name} in a dead scheduler"
        for cpu in self.sched.cpus:
            if cpu.id in self.dirty:
                continue
            for thread in cpu.local:
                assert self.tree.effective(thread.scheduler, cpu.id) & CpuCap.ENQ_IMMED, (
                    f"{thread.name} of {thread.scheduler} queued on CPU {cpu.id} without caps"
                )
            if cpu.current is not None:
                assert self.tree.effective(cpu.current.scheduler, cpu.id) & CpuCap.ENQ_IMMED, (
                    f"{cpu.current.name} of {cpu.current.scheduler} runs on CPU {cpu.id} uncapped"
                )
        for st in self.states.values():
            check = getattr(st.policy, "check_invariants", None)
            if st.name != ROOT and check is not None:
                check(st.ctx)
