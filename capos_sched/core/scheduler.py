"""The scheduling mechanism as a sans-I/O state machine; policies plug into it.

This module owns all scheduling state. It performs no I/O, reads no clock and
starts nothing: callers pass the current time (``now_ns``) and the measured
run time (``elapsed_ns``) in, and act on what the methods return. The same
engine drives the trio runtime (real time) and the simulator (virtual time).

What the mechanism owns (the policy owns only placement and order)
------------------------------------------------------------------
* Threads: ids, generations (a ``ThreadRef`` to an exited or reused id fails
  closed), state, counters, and ``charge_runtime`` (``Thread``).
* Dispatch queues: one local FIFO per CPU, the global FIFO, and the DSQs a
  policy creates. A CPU runs, in order: its direct-IPC slot, its local DSQ, the
  global DSQ, then whatever the policy's ``dispatch`` moves to its local DSQ.
* The ownership invariant: a live runnable thread has exactly one owner, one
  CPU's running slot, one DSQ, or one CPU's IPC slot. Blocked and exited threads
  have none; an exited thread is never picked. ``check_invariants`` verifies it.
* IPC endpoints and the generation-checked direct-IPC slot: a server woken by a
  call runs next on the caller's CPU, and no other CPU takes it.
* Kill and reap; the stall check (``stalls``).
* Enforcement (the safety net): a policy callback that raises, overruns the
  callback guard's bound, inserts into a DSQ or CPU that does not exist, or
  leaves a thread it was given in no DSQ, is *ejected*: an exit record is kept
  (``exits``) and every thread continues under the built-in ``fifo`` policy with
  its accounting intact. ``set_policy`` swaps policies atomically.

The built-in policies are in ``core/policies/`` (``wfq`` is Phase D); the
contract is ``core/policy.py`` and docs/policies.md.

Overload: when runnable threads far exceed CPUs, nothing grows but the queues,
and each DSQ is bounded by the live threads (see ``runqueue``). The watchdog's
stall measure excludes time in which the machine dispatched nothing at all
(see ``stalls``), so a starved daemon is not mistaken for a stalling policy.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from .constants import (
    BATCH_SLICE_MULTIPLIER,
    DEFAULT_WEIGHT,
    INTERACTIVE_SLICE_DIVISOR,
    REFERENCE_WEIGHT,
    SLICE_NS,
)
from .delegation import ROOT, CpuCap
from .errors import InvalidArgument, InvalidState, StaleThread
from .policy import (
    ENQ_NEW,
    ENQ_PREEMPTED,
    ENQ_SWITCH,
    ENQ_WAKEUP,
    GLOBAL_DSQ,
    LOCAL_ON,
    MAX_DSQ_ID,
    CallbackGuard,
    CallbackTimeout,
    ExitKind,
    PolicyExit,
    PolicyViolation,
)
from .runqueue import (
    IMPLEMENTATION,
    KEY_MAX,
    KEY_MIN,
    QUEUED,
    FifoQueue,
    RunQueue,
    VirtualFinishQueue,
    _accel,
)
from .thread import (
    LatencyClass,
    Thread,
    ThreadRef,
    ThreadState,
    WakeReason,
    class_slice_ns,
    validate_weight,
)

FALLBACK_POLICY = "fifo"
FastCycle: Any = _accel.WfqCycle if IMPLEMENTATION == "c" and _accel is not None else None
"""The C twin of the WFQ dispatch cycle (``_accel.WfqCycle``), None where the
accelerator was not built or CAPOS_SCHED_PURE is set (see ``_bind_fast_cycle``)."""
MAX_EXITS = 64
"""Exit records kept (the most recent ones)."""


class Policy(enum.StrEnum):
    """The built-in policies by name (a user policy is named by its file)."""

    WFQ = "wfq"
    FIFO = "fifo"
    EEVDF = "eevdf"

    @classmethod
    def parse(cls, value: str | Policy) -> Policy:
        if isinstance(value, Policy):
            return value
        for member in cls:
            if member.value == value:
                return member
        names = ", ".join(m.value for m in cls)
        raise InvalidArgument(f"unknown policy {value!r}; expected one of {names}")


@attrs.frozen
class QueueCpu:
    """Wake placement: queue on CPU ``cpu``."""

    cpu: int


@attrs.frozen
class LastCpu:
    """Wake placement: queue on the CPU the thread last ran on."""


@attrs.frozen
class LeastLoaded:
    """Placement: no preference (the policy's ``select_cpu`` gets -1; the
    built-in policies take the CPU with the fewest runnable threads)."""


WakePolicy = QueueCpu | LastCpu | LeastLoaded


@attrs.define  # not frozen: built on every dispatch, and frozen __init__ costs 3x
class Dispatch:
    """What ``pick_next`` chose: run ``thread`` on ``cpu`` for at most ``budget_ns``."""

    cpu: int
    thread: ThreadRef
    name: str
    budget_ns: int
    virtual_finish_ns: int
    source: str
    """``ipcSlot``, ``queue`` (own or global), ``steal`` (an idle CPU took
    work) or ``pull`` (a threshold pull), as the policy's move said."""


@attrs.define
class Wake:
    """The outcome of making a thread runnable.

    ``kick`` is an idle CPU that should look for work now (the reschedule IPI),
    or None. ``preempt`` is a CPU whose running thread should be cut short.
    """

    thread: ThreadRef
    cpu: int | None
    kick: int | None
    preempt: int | None


@attrs.define
class Effects:
    """Everything a call did that a driver must act on, in one value.

    - ``thread``: the thread the call was about (the one that stopped);
    - ``kicks``: idle CPUs that should pick now; ``preempts``: CPUs whose
      running slice should be cut short;
    - ``delivered``: servers that received a call (their program moves on);
    - ``replied``: callers whose call ended (a reply, or ``released``: their
      server exited mid-call, so the call ended unanswered) and that are
      runnable again;
    - ``exited``: the stopped thread exited (finished or killed);
    - ``ejections``: policies ejected during the call.
    """

    thread: ThreadRef | None = None
    kicks: list[int] = attrs.Factory(list)
    preempts: list[int] = attrs.Factory(list)
    delivered: list[ThreadRef] = attrs.Factory(list)
    replied: list[Wake] = attrs.Factory(list)
    released: list[Wake] = attrs.Factory(list)
    exited: bool = False
    ejections: list[PolicyExit] = attrs.Factory(list)
    notifications: list[Any] = attrs.Factory(list)
    """CPU delegation notices (``subsched.CpuNotification``) raised by the call."""


@attrs.frozen
class ThreadSnapshot:
    """A copy of one thread's public state and counters."""

    tid: int
    generation: int
    name: str
    weight: int
    latency_class: LatencyClass
    state: ThreadState
    cpu: int | None
    runtime_ns: int
    virtual_runtime_ns: int
    last_started_ns: int | None
    context_switches: int
    preemptions: int
    voluntary_blocks: int
    migrations: int


@attrs.frozen
class Stall:
    """A runnable thread the watchdog should hear about (see ``Scheduler.stalls``)."""

    thread: ThreadRef
    name: str
    waited_ns: int
    """Wall (driver) time since it became runnable."""
    judged_ns: int
    """The part of that wait the machine spent running other work or idle."""
    where: str
    """``queued``, ``ipcSlot`` or ``unowned``."""
    cpu: int | None
    weight: int
    latency_class: LatencyClass
    scheduler: str = "root"
    """The (sub-)scheduler whose policy runs the thread: the watchdog's verdict
    is on that policy (``eject`` for the root, ``eject_scheduler_policy``)."""


@attrs.define(eq=False, slots=True)
class _Tag:
    """An owner tag that is not a DSQ: a CPU's running slot or its IPC slot."""

    kind: str
    cpu: int


RUNNING, IPC_SLOT = "running", "ipcSlot"
RUNNING_STATE, RUNNABLE_STATE = ThreadState.RUNNING, ThreadState.RUNNABLE
BLOCKED_STATE, EXITED_STATE = ThreadState.BLOCKED, ThreadState.EXITED


@attrs.define(eq=False)
class Cpu:
    """Per-CPU state.

    Invariants: ``current`` is RUNNING and owned by ``running_tag``;
    ``ipc_slot`` refers to a thread that may have gone stale (checked by
    generation when taken); ``local`` holds only RUNNABLE threads.
    """

    id: int
    local: FifoQueue
    running_tag: _Tag = attrs.field(init=False)
    slot_tag: _Tag = attrs.field(init=False)
    current: Thread | None = None
    ipc_slot: ThreadRef | None = None
    last_tid: int | None = None
    running_finish: int = 0
    """The virtual finish of the running slice (vruntime + budget * REF / weight)."""
    idle: bool = False
    """The last pick found nothing (the CPU parks until kicked)."""

    def __attrs_post_init__(self) -> None:
        self.running_tag = _Tag(RUNNING, self.id)
        self.slot_tag = _Tag(IPC_SLOT, self.id)


@attrs.define(eq=False)
class Endpoint:
    """An IPC rendezvous point: servers waiting for calls, callers waiting for servers.

    Invariant: a thread appears in at most one of the two deques, once, and only
    while BLOCKED on this endpoint.
    """

    name: str
    waiting_servers: collections.deque[ThreadRef] = attrs.Factory(collections.deque)
    pending_callers: collections.deque[ThreadRef] = attrs.Factory(collections.deque)


def _is_builtin(policy: Any) -> bool:
    return getattr(policy, "builtin", False) is True


def new_builtin_policy(name: str, balance_threshold_ns: int | None = None) -> Any:
    """A fresh instance of the built-in policy ``name``."""
    from .policies import builtin_policy

    return builtin_policy(Policy.parse(name).value, balance_threshold_ns=balance_threshold_ns)


class Scheduler:
    """The scheduling mechanism of a whole machine of ``cpus`` CPUs, running
    ``policy`` (a built-in name, or a policy object; see ``core/policy.py``).

    The scheduler is also the ``ctx`` every policy callback receives: the
    public attributes and methods in the "policy context" section are the
    contract, nothing else is.
    """

    GLOBAL_DSQ = GLOBAL_DSQ
    # The counters every dispatch cycle changes are slots (the rest of the
    # state is in __dict__): the C twin of the cycle (_accel.WfqCycle) reads
    # and writes them as these member descriptors do, without a dict lookup.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_charged_ns",
        "_enqueue_seq",
        "_fx",
        "_idle_acc_ns",
        "_idle_changed_ns",
        "_nr_busy",
        "_nr_idle",
        "now_ns",
    )

    def __init__(
        self,
        cpus: int,
        policy: Any = Policy.WFQ,
        slice_ns: int = SLICE_NS,
        balance_threshold_ns: int | None = None,
        guard: CallbackGuard | None = None,
    ) -> None:
        if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
            raise InvalidArgument(f"cpus {cpus!r} must be a positive integer")
        if isinstance(slice_ns, bool) or not isinstance(slice_ns, int) or slice_ns < 1:
            raise InvalidArgument(f"slice_ns {slice_ns!r} must be a positive integer")
        self.slice_ns = slice_ns
        self.nr_cpus = cpus
        self.now_ns = 0
        self.balance_threshold_ns = balance_threshold_ns
        self.guard = guard
        self.cpus: list[Cpu] = [Cpu(k, FifoQueue(LOCAL_ON | k, k)) for k in range(cpus)]
        self._global = FifoQueue(GLOBAL_DSQ)
        self._dsqs: dict[int, RunQueue] = {GLOBAL_DSQ: self._global}
        for cpu in self.cpus:
            self._dsqs[cpu.local.id] = cpu.local
        self._builtin_dsq_ids = frozenset(self._dsqs)
        self._threads: dict[int, Thread] = {}
        self._free_tids: list[int] = []
        self._next_tid = 1
        self._last_generation: dict[int, int] = {}
        self._enqueue_seq = 0
        self._endpoints: dict[str, Endpoint] = {}
        self._serving: dict[int, ThreadRef] = {}
        """server tid -> the caller it is serving."""
        self._kill_pending: set[int] = set()
        self._waiting_on: dict[int, Endpoint] = {}
        """tid -> the endpoint a blocked thread waits in."""
        self._dispatching = -1
        """The CPU whose ``dispatch`` callback is running (-1: none)."""
        self._handoff: Thread | None = None
        """The thread that CPU's ``dispatch`` moved to its empty local DSQ."""
        self._fx: Effects | None = None
        """The effects being collected by the public call in progress."""
        self._kicks: list[int] = []
        self._preempts: list[int] = []
        self.exits: list[PolicyExit] = []
        """Exit records of ejected policies, oldest first (at most MAX_EXITS)."""
        self._epoch = 0
        """Incremented at every policy install: a call in progress notices a switch."""
        # The judged-time clock of the stall check: run time charged on every
        # CPU plus time CPUs spent idle (asked for work and got none).
        self._charged_ns = 0
        self._idle_acc_ns = 0
        self._nr_idle = 0
        self._idle_changed_ns = 0
        self._nr_busy = 0
        """CPUs with a running thread: ``pick_idle_cpu`` answers -1 without a scan."""
        self._policy: Any = None
        self._policy_name = ""
        self._cb_exit_thread: Any = None
        self._deleg: Any = None
        """The scheduler tree (``subsched.Delegation``), made on first use."""
        self._routed: Any = None
        """The same once a sub-scheduler attached: callbacks are routed per thread."""
        self._fast_cycle: Any = None
        """The C twin of ``preempt_current`` and ``pick_next`` in use, if any
        (``_bind_fast_cycle``; its ``calls`` and ``fallbacks`` count them)."""
        if isinstance(policy, str | Policy):
            policy = new_builtin_policy(policy, balance_threshold_ns)
        self._install(policy)

    # --------------------------------------------------------- policy context

    def local_dsq(self, cpu: int) -> int:
        """The id of ``cpu``'s local DSQ (an out-of-range CPU is a violation)."""
        if not 0 <= cpu < self.nr_cpus:
            raise PolicyViolation(f"local_dsq: CPU {cpu} outside [0, {self.nr_cpus - 1}]")
        return LOCAL_ON | cpu

    def create_dsq(self, dsq_id: int, ordered: bool) -> RunQueue:
        """Create a DSQ with a policy-chosen id: FIFO, or ordered by insert key."""
        if isinstance(dsq_id, bool) or not isinstance(dsq_id, int) or not 0 <= dsq_id <= MAX_DSQ_ID:
            raise PolicyViolation(f"create_dsq: id {dsq_id!r} outside [0, {MAX_DSQ_ID}]")
        if dsq_id in self._dsqs:
            raise PolicyViolation(f"create_dsq: DSQ {dsq_id} already exists")
        dsq: RunQueue = VirtualFinishQueue(dsq_id) if ordered else FifoQueue(dsq_id)
        self._dsqs[dsq_id] = dsq
        return dsq

    def insert(
        self, thread: Thread, dsq: int, key: int | None = None, slice_ns: int | None = None
    ) -> None:
        """Queue a runnable thread the policy was given on DSQ ``dsq``.

        An ordered DSQ needs an int ``key`` (ties: insertion order); ``slice_ns``
        is the budget of its next dispatch (default: its class slice). A thread
        already queued moves (a re-key). Queuing on another CPU's local DSQ
        places it there (one migration).
        """
        try:
            queue = self._dsqs[dsq]  # a subscript, not .get(): a method call less per insert
        except (KeyError, TypeError):
            raise PolicyViolation(f"insert of {thread.name}: no DSQ {dsq}") from None
        owner = thread.owner
        if (owner is not None and owner.kind != QUEUED) or thread.state is not RUNNABLE_STATE:
            raise PolicyViolation(
                f"insert of {thread.name}: thread is {thread.state.name}"
                + ("" if owner is None else f" and owned by {owner.kind} of CPU {owner.cpu}")
            )
        if queue.ordered and (type(key) is not int or not KEY_MIN <= key <= KEY_MAX):
            raise PolicyViolation(
                f"insert of {thread.name} into ordered DSQ {dsq}: key {key!r} (a signed 64-bit int)"
            )
        if owner is not None and owner is not queue:
            owner.discard(thread)
        local_cpu = queue.cpu
        if local_cpu is not None and thread.last_cpu != local_cpu:
            self._assign_cpu(thread, local_cpu)
            thread.dispatch_source = "queue"
        thread.slice_ns = slice_ns
        seq = self._enqueue_seq = self._enqueue_seq + 1
        queue.push(thread, key or 0, seq)
        thread.owner = queue

    def move_to_local(
        self, dsq: int, cpu: int, thread: Thread | None = None, source: str = "queue"
    ) -> bool:
        """Move the front of DSQ ``dsq`` (or ``thread``, which must be queued
        there) to ``cpu``'s local DSQ; False when there is nothing to move."""
        try:
            queue = self._dsqs[dsq]
        except (KeyError, TypeError):
            raise PolicyViolation(f"move_to_local: no DSQ {dsq}") from None
        if not 0 <= cpu < self.nr_cpus:
            raise PolicyViolation(f"move_to_local: CPU {cpu} outside [0, {self.nr_cpus - 1}]")
        if thread is None:
            thread = queue.pop()
            if thread is None:
                return False
            if cpu == self._dispatching and self._handoff is None:
                # The one thread the dispatching CPU runs next, handed over
                # without a round trip through its (empty) local DSQ.
                local = self.cpus[cpu].local
                if not local._entries:
                    if thread.last_cpu != cpu:
                        self._assign_cpu(thread, cpu)
                    thread.dispatch_source = source
                    thread.owner = local
                    self._handoff = thread
                    return True
        elif thread.owner is queue:
            queue.discard(thread)
        else:
            raise PolicyViolation(f"move_to_local: {thread.name} is not queued on DSQ {dsq}")
        local = self.cpus[cpu].local
        if thread.last_cpu != cpu:
            self._assign_cpu(thread, cpu)
        thread.dispatch_source = source
        thread.owner = local
        if cpu == self._dispatching and self._handoff is None and not local._entries:
            # The one thread the dispatching CPU runs next: hand it over
            # without a round trip through the local DSQ (it is owned by it).
            self._handoff = thread
            return True
        self._enqueue_seq += 1
        local.push(thread, 0, self._enqueue_seq)
        return True

    def kick(self, cpu: int, preempt: bool = False) -> None:
        """Ask ``cpu`` to pick now if idle; with ``preempt``, also cut its
        running slice short. A plain kick of a busy CPU does nothing."""
        if not 0 <= cpu < self.nr_cpus:
            raise PolicyViolation(f"kick: CPU {cpu} outside [0, {self.nr_cpus - 1}]")
        if self.cpus[cpu].current is None:
            self._kicks.append(cpu)
        elif preempt:
            self._preempts.append(cpu)

    def running_virtual_finish(self, cpu: int) -> int:
        """The virtual finish of the slice ``cpu`` runs (its ``Dispatch``'s), 0 when idle."""
        c = self.cpus[cpu]
        return c.running_finish if c.current is not None else 0

    def is_idle(self, cpu: int) -> bool:
        """True when ``cpu`` runs nothing."""
        return self.cpus[cpu].current is None

    def pick_idle_cpu(self, prefer: int = -1) -> int:
        """``prefer`` if it is idle, else the lowest idle CPU, else -1."""
        cpus = self.cpus
        if self._nr_busy == self.nr_cpus:
            return -1
        if 0 <= prefer < self.nr_cpus and cpus[prefer].current is None:
            return prefer
        for cpu in cpus:
            if cpu.current is None:
                return cpu.id
        return -1

    def nr_queued(self, dsq: int) -> int:
        queue = self._dsqs.get(dsq)
        if queue is None:
            raise PolicyViolation(f"nr_queued: no DSQ {dsq}")
        return len(queue)

    def iter_dsq(self, dsq: int) -> Iterator[Thread]:
        """The threads of ``dsq`` in queue order (lazily); do not change the
        DSQ while iterating, except by one move that ends the iteration."""
        queue = self._dsqs.get(dsq)
        if queue is None:
            raise PolicyViolation(f"iter_dsq: no DSQ {dsq}")
        return iter(queue)

    def queued_on(self, thread: Thread) -> int | None:
        """The id of the DSQ holding ``thread``, or None (running, blocked, slot)."""
        owner = thread.owner
        return owner.id if owner is not None and owner.kind == QUEUED else None

    def raise_vruntime(self, thread: Thread, floor_ns: int) -> None:
        """Raise ``thread.virtual_runtime_ns`` to at least ``floor_ns`` (the lag
        clamp); it is never lowered."""
        if thread.virtual_runtime_ns < floor_ns:
            thread.virtual_runtime_ns = floor_ns

    # ------------------------------------------------------------------ lookup

    @property
    def policy(self) -> Policy | str:
        """The active policy: a ``Policy`` for the built-ins, else its name."""
        try:
            return Policy(self._policy_name)
        except ValueError:
            return self._policy_name

    @property
    def policy_name(self) -> str:
        return self._policy_name

    @property
    def policy_object(self) -> Any:
        """The active policy object (for tests and ``policy show``)."""
        return self._policy

    def resolve(self, ref: ThreadRef) -> Thread:
        """The live thread ``ref`` names, or StaleThread; never an exited thread."""
        thread = self._threads.get(ref.tid)
        if thread is None or thread.generation != ref.generation:
            raise StaleThread(
                f"thread {ref.tid} generation {ref.generation} is stale: "
                + ("no such thread" if thread is None else f"now generation {thread.generation}")
            )
        if thread.state is ThreadState.EXITED:
            raise StaleThread(f"thread {thread.name} ({ref.tid}.{ref.generation}) is stale: exited")
        return thread

    def threads(self) -> Iterator[Thread]:
        """Every thread not yet reaped, exited ones included, in tid order."""
        return iter(sorted(self._threads.values(), key=lambda t: t.tid))

    def snapshot(self, ref: ThreadRef) -> ThreadSnapshot:
        """A copy of a live thread's state; StaleThread for stale references."""
        return _snapshot(self.resolve(ref))

    def snapshot_any(self, ref: ThreadRef) -> ThreadSnapshot:
        """Like snapshot, but also for exited (not yet reaped) threads."""
        thread = self._threads.get(ref.tid)
        if thread is None or thread.generation != ref.generation:
            return _snapshot(self.resolve(ref))  # raises the stale error
        return _snapshot(thread)

    def state_of(self, ref: ThreadRef) -> ThreadState:
        """The state of the thread ``ref`` names, exited included (no snapshot
        built: the simulator asks at every timer); StaleThread if reaped."""
        thread = self._threads.get(ref.tid)
        if thread is None or thread.generation != ref.generation:
            return self.resolve(ref).state  # raises the stale error
        return thread.state

    def is_live(self, ref: ThreadRef) -> bool:
        """True while ``ref`` names its thread and the thread has not exited."""
        return self._is_live(ref)

    def running_since(self, cpu_id: int) -> int | None:
        """When ``cpu_id``'s running thread was dispatched (None when idle)."""
        current = self._cpu(cpu_id).current
        return None if current is None else current.last_started_ns

    def running_thread(self, cpu_id: int) -> ThreadRef | None:
        current = self._cpu(cpu_id).current
        return None if current is None else current.ref

    def has_runnable_work(self) -> bool:
        """True when some thread is queued or waits in an IPC slot."""
        return any(len(q) for q in self._dsqs.values()) or any(
            cpu.ipc_slot is not None and self._is_live(cpu.ipc_slot) for cpu in self.cpus
        )

    def judged_time_ns(self, now_ns: int) -> int:
        """The stall clock: run time charged on all CPUs plus CPU idle time."""
        return (
            self._charged_ns
            + self._idle_acc_ns
            + self._nr_idle * max(0, now_ns - self._idle_changed_ns)
        )

    def stalls(self, now_ns: int, threshold_ns: int) -> list[Stall]:
        """Runnable threads whose *judged* wait exceeds ``threshold_ns``.

        The judged wait of a thread is the machine's judged time since it became
        runnable, per CPU: run time the CPUs charged to other threads, plus time
        CPUs were idle although it was runnable (a policy that never dispatches
        is caught). Time in which the driver dispatched nothing at all, because
        the host starved the daemon, does not count: host contention is not a
        policy stall. Worst first.
        """
        judged_now = self.judged_time_ns(now_ns)
        out = []
        for thread in self._threads.values():
            if thread.state is not ThreadState.RUNNABLE or thread.runnable_since_ns is None:
                continue
            judged = (judged_now - thread.wait_mark_ns) // self.nr_cpus
            if judged <= threshold_ns:
                continue
            owner = thread.owner
            out.append(
                Stall(
                    thread.ref,
                    thread.name,
                    now_ns - thread.runnable_since_ns,
                    judged,
                    "unowned" if owner is None else owner.kind,
                    thread.last_cpu,
                    thread.weight,
                    thread.latency_class,
                    thread.scheduler,
                )
            )
        out.sort(key=lambda s: -s.judged_ns)
        return out

    def queue_lengths(self) -> dict[int, int]:
        """DSQ id -> queued threads, for every non-empty DSQ."""
        return {dsq_id: len(q) for dsq_id, q in self._dsqs.items() if len(q)}

    # --------------------------------------------------------------- mutations

    def spawn(
        self,
        name: str,
        now_ns: int,
        weight: int = DEFAULT_WEIGHT,
        latency_class: LatencyClass | str | int = LatencyClass.NORMAL,
        placement: WakePolicy | None = None,
        scheduler: str = ROOT,
    ) -> Wake:
        """Create a runnable thread of ``scheduler`` (default: the root); its
        scheduler's policy places and queues it."""
        weight = validate_weight(weight)
        if scheduler != ROOT:
            self._delegation().check_live(scheduler)
        latency_class = LatencyClass.parse(latency_class)
        prev = self._placement_hint(None, placement or LeastLoaded())
        if self._free_tids:
            tid = self._free_tids.pop()
        else:
            tid, self._next_tid = self._next_tid, self._next_tid + 1
        generation = self._last_generation.get(tid, 0) + 1
        self._last_generation[tid] = generation
        thread = Thread(tid, generation, name, weight, latency_class)
        thread.scheduler = scheduler
        self._threads[tid] = thread
        self.now_ns = now_ns
        self._fresh_effects()
        self._call("init_thread", self._cb_init_thread, thread)
        return self._make_runnable(thread, prev, now_ns, ENQ_NEW)

    def set_weight(self, ref: ThreadRef, weight: int) -> None:
        """Validate, then change the weight; the policy hears of it at once."""
        weight = validate_weight(weight)
        thread = self.resolve(ref)
        thread.change_weight(weight)
        self._call("set_weight", self._cb_set_weight, thread, weight)
        self._requeue_if_dropped(thread, "set_weight")

    def set_latency_class(self, ref: ThreadRef, latency_class: LatencyClass | str | int) -> None:
        """Validate, then change the class; the policy's ``set_weight`` hears of it."""
        latency_class = LatencyClass.parse(latency_class)
        thread = self.resolve(ref)
        thread.latency_class = latency_class
        self._call("set_weight", self._cb_set_weight, thread, thread.weight)
        self._requeue_if_dropped(thread, "set_weight")

    def pick_next(self, cpu_id: int, now_ns: int) -> Dispatch | None:
        """Choose what ``cpu_id`` runs next: IPC slot, local DSQ, global DSQ,
        then what the policy's ``dispatch`` moves to the local DSQ.

        This and ``preempt_current`` are the dispatch cycle: written flat (no
        helper calls on the common path) because every call costs here.
        """
        cpu = self.cpus[cpu_id] if 0 <= cpu_id < self.nr_cpus else self._cpu(cpu_id)
        if cpu.current is not None:
            raise InvalidState(
                f"pick_next on CPU {cpu_id}: CPU is running {cpu.current.name}; stop it first"
            )
        self.now_ns = now_ns
        if self._fx is None and self._kicks:
            self._fresh_effects()
        thread = None
        if self._routed is not None:
            thread, source = self._routed.choose(cpu, now_ns)
            if thread is None:
                return None
        elif cpu.ipc_slot is not None:
            thread = self._take_ipc_slot(cpu)
            if thread is not None:
                thread.slice_ns = None
                source = "ipcSlot"
        if thread is None:
            local = cpu.local
            if local._entries:
                thread = local.pop()
            elif self._global._entries:
                thread = self._global.pop()
            else:
                epoch = self._epoch
                self._dispatching = cpu_id
                try:
                    self._cb_dispatch(self, cpu_id)
                except BaseException as exc:
                    self._fault("dispatch", exc)
                self._dispatching = -1
                thread, self._handoff = self._handoff, None
                if thread is None:
                    thread = local.pop() or self._global.pop()
                    if thread is None and self._epoch != epoch:
                        # Ejected: the fallback has every runnable thread now.
                        thread = local.pop() or self._global.pop()
                    if thread is None:
                        self._go_idle(cpu, now_ns)
                        return None
            source = thread.dispatch_source  # type: ignore[union-attr]
        assert thread is not None
        if cpu.idle:
            self._idle_acc_ns += self._nr_idle * max(0, now_ns - self._idle_changed_ns)
            self._idle_changed_ns = now_ns
            self._nr_idle -= 1
            cpu.idle = False
        if thread.last_cpu != cpu_id:
            self._assign_cpu(thread, cpu_id)
        if cpu.last_tid != thread.tid:
            thread.context_switches += 1
            cpu.last_tid = thread.tid
        thread.state = RUNNING_STATE
        thread.owner = cpu.running_tag
        thread.last_started_ns = now_ns
        cpu.current = thread
        self._nr_busy += 1
        budget = thread.slice_ns or class_slice_ns(thread.latency_class, self.slice_ns)
        cpu.running_finish = finish = (
            thread.virtual_runtime_ns + budget * REFERENCE_WEIGHT // thread.weight
        )
        if self._cb_running is not None:
            try:
                self._cb_running(self, thread)
            except BaseException as exc:
                self._fault("running", exc)
        return Dispatch(cpu_id, thread.ref, thread.name, budget, finish, source)

    def preempt_current(self, cpu_id: int, now_ns: int, elapsed_ns: int) -> ThreadRef:
        """The running thread's slice ended (expired or cut short): charge it and
        hand it back to the policy (``stopping`` then ``enqueue``)."""
        cpu = self.cpus[cpu_id] if 0 <= cpu_id < self.nr_cpus else self._cpu(cpu_id)
        thread = cpu.current
        if thread is None:
            raise InvalidState(f"CPU {cpu_id} is idle: nothing to stop")
        thread.charge_runtime(elapsed_ns)  # as _stop_current, written flat (hot path)
        self._charged_ns += elapsed_ns
        cpu.current = None
        self._nr_busy -= 1
        thread.owner = None
        thread.state = RUNNABLE_STATE
        thread.preemptions += 1
        self.now_ns = now_ns
        if self._cb_stopping is not None:
            self._call("stopping", self._cb_stopping, thread, True)
        if not self._kill_pending or not self._reap_if_killed(thread, now_ns):
            thread.runnable_since_ns = now_ns
            thread.wait_mark_ns = (
                self._charged_ns
                + self._idle_acc_ns
                + (self._nr_idle * (now_ns - self._idle_changed_ns) if self._nr_idle else 0)
            )
            epoch = self._epoch
            try:
                self._cb_enqueue(self, thread, ENQ_PREEMPTED)
            except BaseException as exc:
                self._fault("enqueue", exc)
            else:
                if thread.owner is None and self._epoch == epoch:
                    self._dropped(thread)
        return thread.ref

    def block_current(self, cpu_id: int, now_ns: int, elapsed_ns: int) -> ThreadRef:
        """The running thread blocked voluntarily (sleep, wait): charge, then park it."""
        cpu = self.cpus[cpu_id] if 0 <= cpu_id < self.nr_cpus else self._cpu(cpu_id)
        thread = cpu.current  # _stop_current, inline (a sleeper blocks once a period)
        if thread is None:
            raise InvalidState(f"CPU {cpu_id} is idle: nothing to stop")
        thread.charge_runtime(elapsed_ns)
        self._charged_ns += elapsed_ns
        cpu.current = None
        self._nr_busy -= 1
        thread.owner = None
        thread.voluntary_blocks += 1
        thread.state = BLOCKED_STATE
        self.now_ns = now_ns
        stopping = self._cb_stopping
        if stopping is not None:
            try:  # _call, inline
                stopping(self, thread, False)
            except BaseException as exc:
                self._fault("stopping", exc)
        if self._kill_pending:
            self._reap_if_killed(thread, now_ns)
        return thread.ref

    def exit_current(self, cpu_id: int, now_ns: int, elapsed_ns: int) -> ThreadRef:
        """The running thread finished: charge it and mark it exited."""
        cpu = self._cpu(cpu_id)
        thread = self._stop_current(cpu, elapsed_ns)
        thread.state = ThreadState.BLOCKED
        self.now_ns = now_ns
        if self._cb_stopping is not None:
            self._call("stopping", self._cb_stopping, thread, False)
        self._mark_exited(thread, now_ns)
        return thread.ref

    def charge_current(self, cpu_id: int, elapsed_ns: int) -> ThreadRef | None:
        """Charge the running thread mid-slice (a tick) without descheduling it."""
        cpu = self._cpu(cpu_id)
        if cpu.current is None:
            return None
        cpu.current.charge_runtime(elapsed_ns)
        self._charged_ns += elapsed_ns
        if self._cb_tick is not None:
            self._call("tick", self._cb_tick, cpu_id)
        return cpu.current.ref

    def wake(
        self,
        ref: ThreadRef,
        now_ns: int,
        policy: WakePolicy | None = None,
        reason: WakeReason = WakeReason.TIMER,
    ) -> Wake:
        """Make a blocked thread runnable; ``policy`` is the placement hint the
        policy's ``select_cpu`` receives (default: its last CPU).

        Waking a thread that is already runnable or running changes nothing.
        """
        thread = self._threads.get(ref.tid)  # resolve's common case, inline
        if thread is None or thread.generation != ref.generation or thread.state is EXITED_STATE:
            thread = self.resolve(ref)  # raises StaleThread
        if thread.state is not BLOCKED_STATE:
            return Wake(thread.ref, thread.last_cpu, None, None)
        if policy is None or type(policy) is LastCpu:  # the common hint, without the match
            last = thread.last_cpu
            prev = last if last is not None else -1
        else:
            prev = self._placement_hint(thread, policy)
        if self._waiting_on:
            self._leave_endpoints(thread)
        thread.wake_reason = reason
        self.now_ns = now_ns
        if self._fx is None:  # _fresh_effects, inline
            self._kicks.clear()
            self._preempts.clear()
        return self._make_runnable(thread, prev, now_ns, ENQ_WAKEUP)

    def kill(self, ref: ThreadRef, now_ns: int) -> int | None:
        """Terminate a thread from outside (plan reload). A running thread exits
        when its CPU next stops it, and that CPU is returned so the driver can
        cut the slice short; any other thread exits now (None is returned)."""
        thread = self.resolve(ref)
        if thread.state is ThreadState.RUNNING:
            self._kill_pending.add(thread.tid)
            return thread.last_cpu
        self.now_ns = now_ns
        self._mark_exited(thread, now_ns)
        return None

    def kill_effects(self, ref: ThreadRef, now_ns: int) -> tuple[int | None, Effects]:
        """``kill`` with its effects (callers released by a server that died)."""
        self._begin()
        running_on = self.kill(ref, now_ns)
        return running_on, self._end(ref)

    def reap(self, ref: ThreadRef) -> None:
        """Forget an exited thread so its id can be reused (with a new generation)."""
        thread = self._threads.get(ref.tid)
        if thread is None or thread.generation != ref.generation:
            raise StaleThread(f"thread {ref.tid} generation {ref.generation} is not reapable")
        if thread.state is not ThreadState.EXITED:
            raise InvalidState(f"reap of {thread.name}: thread is {thread.state.name}, not EXITED")
        del self._threads[ref.tid]
        self._free_tids.append(ref.tid)

    def set_policy(self, policy: Any, now_ns: int | None = None) -> Effects:
        """Switch policies atomically: every queued thread is handed to the new
        policy (in virtual-finish order), running threads keep running and are
        handed over when they stop, accounting is untouched. A policy that
        fails while taking over is ejected (to ``fifo``) like any other."""
        if isinstance(policy, str | Policy):
            policy = new_builtin_policy(policy, self.balance_threshold_ns)
        if now_ns is not None:
            self.now_ns = now_ns
        self._begin()
        self._install(policy)
        return self._end(None)

    def eject(self, kind: ExitKind | str, message: str, now_ns: int) -> PolicyExit | None:
        """Eject the active policy from outside (the watchdog's stall verdict);
        None if the fallback is already active."""
        if self._policy_name == FALLBACK_POLICY and _is_builtin(self._policy):
            return None
        self.now_ns = now_ns
        return self._eject(ExitKind(kind), None, message)

    def eject_scheduler_policy(
        self, name: str, kind: ExitKind | str, message: str, now_ns: int
    ) -> tuple[PolicyExit | None, Effects]:
        """Eject sub-scheduler ``name``'s policy to fifo from outside (the
        watchdog's stall verdict on one of its threads). The record is None
        when it already runs the fallback, or holds no CPU: a thread whose
        scheduler has no CPU is starved by its parent, not by its policy."""
        if self._deleg is None or name == "root":
            raise InvalidArgument(f"{name!r} is not a sub-scheduler")
        return self._collect(now_ns, self._deleg.eject_policy, name, ExitKind(kind), message)

    # --------------------------------------------------------------------- IPC

    def ipc_call(self, cpu_id: int, now_ns: int, elapsed_ns: int, endpoint: str) -> Wake | None:
        """The running thread calls ``endpoint`` and blocks until the reply.

        If a server is waiting, it is woken into this CPU's direct-IPC slot (it
        runs next here) and the Wake is returned; otherwise the call queues.
        """
        caller = self.block_current(cpu_id, now_ns, elapsed_ns)
        if self._threads[caller.tid].state is ThreadState.EXITED:
            return None
        ep = self._endpoint(endpoint)
        server = self._pop_live(ep.waiting_servers)
        if server is None:
            ep.pending_callers.append(caller)
            self._waiting_on[caller.tid] = ep
            return None
        self._serving[server.tid] = caller
        return self._wake_into_ipc_slot(server, cpu_id, now_ns)

    def ipc_wait(
        self, cpu_id: int, now_ns: int, elapsed_ns: int, endpoint: str
    ) -> ThreadRef | None:
        """The running server waits for the next call on ``endpoint``.

        With a call pending, the server keeps the CPU through the IPC slot and
        the caller's ref is returned; otherwise the server blocks.
        """
        cpu = self._cpu(cpu_id)
        ep = self._endpoint(endpoint)
        caller = self._pop_live(ep.pending_callers)
        if caller is None:
            server = self.block_current(cpu_id, now_ns, elapsed_ns)
            if self._threads[server.tid].state is ThreadState.BLOCKED:
                ep.waiting_servers.append(server)
                self._waiting_on[server.tid] = ep
            return None
        server_thread = self._stop_current(cpu, elapsed_ns)
        self.now_ns = now_ns
        if self._cb_stopping is not None:
            self._call("stopping", self._cb_stopping, server_thread, True)
        if self._reap_if_killed(server_thread, now_ns):
            ep.pending_callers.appendleft(caller.ref)
            self._waiting_on[caller.tid] = ep
            return None
        self._serving[server_thread.tid] = caller.ref
        self._wake_into_ipc_slot(server_thread, cpu_id, now_ns)
        return caller.ref

    def ipc_reply_and_wait(
        self, cpu_id: int, now_ns: int, elapsed_ns: int, endpoint: str
    ) -> tuple[Wake | None, ThreadRef | None]:
        """The running server replies to its caller (woken on the caller's last
        CPU) and waits for the next call, as seL4's ReplyRecv."""
        cpu = self._cpu(cpu_id)
        if cpu.current is None:
            raise InvalidState(f"ipc_reply_and_wait on CPU {cpu_id}: CPU is idle")
        caller = self._serving.pop(cpu.current.tid, None)
        woken = None
        if caller is not None and self._is_live(caller):
            woken = self.wake(caller, now_ns, LastCpu(), WakeReason.IPC_REPLY)
        return woken, self.ipc_wait(cpu_id, now_ns, elapsed_ns, endpoint)

    def stop(
        self, cpu_id: int, now_ns: int, elapsed_ns: int, how: str, endpoint: str | None = None
    ) -> Effects:
        """The running thread of ``cpu_id`` stopped after ``elapsed_ns``, and why:
        ``expired``, ``sleep``, ``finished``, ``call``, ``wait`` or ``reply``
        (the last three on ``endpoint``). Returns everything the driver must
        act on. This is the one entry the drivers use (``capos_sched.drive``)."""
        cpu = self.cpus[cpu_id] if 0 <= cpu_id < self.nr_cpus else self._cpu(cpu_id)
        current = cpu.current
        if current is None:
            raise InvalidState(f"CPU {cpu_id} is idle: nothing to stop")
        ref = current.ref
        fx = self._fx = Effects()  # _begin, inline
        self._kicks.clear()
        self._preempts.clear()
        if how == "expired":
            self.preempt_current(cpu_id, now_ns, elapsed_ns)
        elif how == "sleep":
            self.block_current(cpu_id, now_ns, elapsed_ns)
        elif how == "finished":
            self.exit_current(cpu_id, now_ns, elapsed_ns)
        elif how == "call":
            woken = self.ipc_call(cpu_id, now_ns, elapsed_ns, _need(endpoint, how))
            if woken is not None:
                fx.delivered.append(woken.thread)
        elif how == "wait":
            if self.ipc_wait(cpu_id, now_ns, elapsed_ns, _need(endpoint, how)) is not None:
                fx.delivered.append(ref)
        elif how == "reply":
            woken, caller = self.ipc_reply_and_wait(
                cpu_id, now_ns, elapsed_ns, _need(endpoint, how)
            )
            if woken is not None:
                fx.replied.append(woken)
            if caller is not None:
                fx.delivered.append(ref)
        else:
            self._fx = None
            raise InvalidArgument(f"stop on CPU {cpu_id}: unknown stop {how!r}")
        return self._end(ref)

    def serving(self, server: ThreadRef) -> ThreadRef | None:
        """The caller a server is currently serving, if any."""
        return self._serving.get(server.tid)

    # -------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """Raise AssertionError if any ownership or bookkeeping rule is broken."""
        owners: dict[int, list[Any]] = collections.defaultdict(list)
        busy = sum(cpu.current is not None for cpu in self.cpus)
        assert self._nr_busy == busy, f"busy count {self._nr_busy} != {busy} running CPUs"
        for cpu in self.cpus:
            if cpu.current is not None:
                owners[cpu.current.tid].append(cpu.running_tag)
                assert cpu.current.state is ThreadState.RUNNING, cpu.current
            if cpu.ipc_slot is not None and self._is_live(cpu.ipc_slot):
                slotted = self._threads[cpu.ipc_slot.tid]
                if slotted.owner is cpu.slot_tag:
                    owners[slotted.tid].append(cpu.slot_tag)
        for queue in self._dsqs.values():
            for thread in queue:
                owners[thread.tid].append(queue)
                assert thread.state is ThreadState.RUNNABLE, thread
            assert len(queue) <= len(self._threads)
        for thread in self._threads.values():
            found = owners.get(thread.tid, [])
            if thread.state in (ThreadState.RUNNABLE, ThreadState.RUNNING):
                assert len(found) == 1, f"{thread.name} {thread.state.name} owned by {found}"
                assert found[0] is thread.owner, f"{thread.name}: {found[0]} != {thread.owner}"
                kind = found[0].kind
                assert (kind == RUNNING) == (thread.state is ThreadState.RUNNING), thread
            else:
                assert not found, f"{thread.name} {thread.state.name} still owned by {found}"
                assert thread.owner is None, thread
            assert 0 <= thread._vruntime_remainder < thread.weight, thread
        check = getattr(self._policy, "check_invariants", None)
        if check is not None:
            check(self if self._routed is None else self._routed.root_ctx)
        if self._routed is not None:
            self._routed.check_invariants()

    # ------------------------------------------------------- CPU delegation

    def _delegation(self) -> Any:
        if self._deleg is None:
            from .subsched import Delegation

            self._deleg = Delegation(self)
        return self._deleg

    def _policy_threads(self) -> list[Thread]:
        """The threads the root policy runs (all of them without sub-schedulers)."""
        if self._routed is None:
            return list(self._threads.values())
        return [t for t in self._threads.values() if t.scheduler == ROOT]

    def set_pool_rotation(self, rotation_ns: int) -> None:
        """The default delegation's pool period (at least 10 ms; before any attach)."""
        from .delegation import MIN_POOL_ROTATION_NS

        if isinstance(rotation_ns, bool) or not isinstance(rotation_ns, int):
            raise InvalidArgument(f"pool rotation {rotation_ns!r} is not an integer")
        if rotation_ns < MIN_POOL_ROTATION_NS:
            raise InvalidArgument(
                f"pool rotation {rotation_ns} ns is below the minimum {MIN_POOL_ROTATION_NS} ns"
            )
        self._delegation().rotation_ns = rotation_ns

    def scheduler_names(self) -> list[str]:
        """Live schedulers, the root first, then preorder."""
        return self._delegation().tree.subtree(ROOT)

    def scheduler_children(self, name: str) -> list[str]:
        deleg = self._delegation()
        deleg.check_live(name)
        return list(deleg.tree.nodes[name].children)

    def scheduler_alive(self, name: str) -> bool:
        return self._delegation().alive(name)

    def scheduler_parent(self, name: str) -> str | None:
        """The parent of a live scheduler (None for the root)."""
        deleg = self._delegation()
        deleg.check_live(name)
        return deleg.tree.nodes[name].parent

    def scheduler_weight(self, name: str) -> int:
        deleg = self._delegation()
        deleg.check_live(name)
        return deleg.tree.nodes[name].weight

    def killed_schedulers(self) -> list[str]:
        """Schedulers removed by a kill (their stats and exit record remain)."""
        return [] if self._deleg is None else list(self._deleg.dead)

    def scheduler_of(self, ref: ThreadRef) -> str:
        """The scheduler a live thread belongs to."""
        return self.resolve(ref).scheduler

    def cpu_holdings(self, name: str) -> list[Any]:
        """``name``'s CPUs: caps held literally and in effect (``CpuHoldingView``)."""
        from .subsched import CpuHoldingView

        deleg = self._delegation()
        deleg.check_live(name)
        held = deleg.tree.nodes[name].held
        out = []
        in_effect = {c for c in range(self.nr_cpus) if name in deleg.effective[c]}
        for cpu in sorted(set(held) | in_effect):
            out.append(
                CpuHoldingView(
                    cpu, held.get(cpu, CpuCap.NONE), deleg.effective[cpu].get(name, CpuCap.NONE)
                )
            )
        return out

    def attach_scheduler(
        self, name: str, parent: str, policy: Any, weight: int, now_ns: int
    ) -> Effects:
        """Attach sub-scheduler ``name`` under ``parent`` running ``policy`` (a
        built-in name, a policy object, or None for ``wfq``). The parent's
        default split gives it CPUs at once; one that would get none is refused."""
        return self._collect(
            now_ns, self._delegation().attach, name, parent, policy, weight, now_ns
        )[1]

    def set_scheduler_weight(self, name: str, weight: int, now_ns: int) -> Effects:
        return self._collect(now_ns, self._delegation().set_weight, name, weight, now_ns)[1]

    def grant_cpus(
        self, parent: str, child: str, cpus: Iterable[int], caps: CpuCap, now_ns: int
    ) -> tuple[list[int], Effects]:
        """Grant ``caps`` on ``cpus`` to a direct child; returns the denied CPUs."""
        return self._collect(
            now_ns, self._delegation().grant, parent, child, list(cpus), CpuCap(caps)
        )

    def revoke_cpus(
        self, parent: str, child: str, cpus: Iterable[int], caps: CpuCap, now_ns: int
    ) -> Effects:
        """Revoke ``caps`` on ``cpus`` from a direct child's subtree; running
        threads that lost the CPU are in ``preempts`` (their slice ends now)."""
        return self._collect(
            now_ns, self._delegation().revoke, parent, child, list(cpus), CpuCap(caps)
        )[1]

    def kill_scheduler(self, parent: str, child: str, reason: str, now_ns: int) -> Effects:
        """Tear down a direct child's subtree; its threads re-home to ``parent``."""
        return self._collect(now_ns, self._delegation().kill, parent, child, reason, now_ns)[1]

    def delegation_tick(self, now_ns: int) -> Effects:
        """Advance the default delegation's pool rotation to ``now_ns``."""
        if self._routed is None:
            return self._collect(now_ns, lambda: None)[1]
        return self._collect(now_ns, self._routed.rotate, now_ns)[1]

    def next_delegation_event_ns(self) -> int | None:
        """When ``delegation_tick`` next changes something (None: never)."""
        return None if self._routed is None else self._routed.next_rotation_ns()

    def take_notifications(self) -> list[Any]:
        """Notifications raised outside a call returning Effects (at dispatch)."""
        return [] if self._deleg is None else self._deleg.take_notifications()

    def scheduler_stats(self, name: str) -> Any:
        """A copy of ``name``'s counters (``SchedulerStats``), killed ones included.
        CPU time is allocated from the first attach on (before it, nothing is split)."""
        deleg = self._delegation()
        if name in deleg.states:
            return deleg.states[name].stats(True)
        if name in deleg.dead:
            return deleg.dead[name].stats(False)
        raise InvalidArgument(f"no scheduler named {name!r}")

    # ---------------------------------------------------------------- internals

    def _cpu(self, cpu_id: int) -> Cpu:
        if cpu_id >= 0:
            try:
                return self.cpus[cpu_id]
            except IndexError:
                pass
        raise InvalidArgument(f"CPU {cpu_id} outside [0, {len(self.cpus) - 1}]")

    def _placement_hint(self, thread: Thread | None, policy: WakePolicy) -> int:
        match policy:
            case QueueCpu(cpu=cpu):
                return self._cpu(cpu).id
            case LastCpu() if thread is not None and thread.last_cpu is not None:
                return thread.last_cpu
            case _:
                return -1

    def _fresh_effects(self) -> None:
        """Outside ``stop``/``set_policy``, each public call reports only its own kicks."""
        if self._fx is None:
            self._kicks.clear()
            self._preempts.clear()

    def _collect(self, now_ns: int, call: Any, *args: Any) -> tuple[Any, Effects]:
        """``call(*args)`` at ``now_ns`` as one public call: its result and the
        effects it produced (the delegation operations, which name no thread)."""
        self.now_ns = now_ns
        self._begin()
        try:
            result = call(*args)
        finally:
            fx = self._end(None)
        return result, fx

    def _begin(self) -> None:
        self._fx = Effects()
        self._kicks.clear()
        self._preempts.clear()

    def _end(self, ref: ThreadRef | None) -> Effects:
        fx, self._fx = self._fx, None
        assert fx is not None
        fx.thread = ref
        kicks, preempts = self._kicks, self._preempts
        if kicks:
            fx.kicks.extend(k for k in kicks if k not in fx.kicks)
        if preempts:
            fx.preempts.extend(p for p in preempts if p not in fx.preempts)
        if self._deleg is not None and self._deleg.pending:
            fx.notifications.extend(self._deleg.take_notifications())
        kicks.clear()
        preempts.clear()
        if ref is not None:
            thread = self._threads.get(ref.tid)
            fx.exited = (
                thread is None
                or thread.generation != ref.generation
                or thread.state is EXITED_STATE
            )
        return fx

    def _call(self, name: str, callback: Any, *args: Any) -> Any:
        if callback is None:
            return None
        try:
            return callback(self, *args)
        except BaseException as exc:
            self._fault(name, exc)
            return None

    def _fault(self, callback: str, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt | GeneratorExit):
            raise exc
        if isinstance(exc, CallbackTimeout):
            kind = ExitKind.TIMEOUT
        elif isinstance(exc, PolicyViolation):
            kind = ExitKind.INVALID
        else:
            kind = ExitKind.ERROR
        message = f"{type(exc).__name__}: {exc}" if kind is ExitKind.ERROR else str(exc)
        if _is_builtin(self._policy) and self._policy_name == FALLBACK_POLICY:
            raise InvalidState(f"the fallback policy failed in {callback}: {message}") from exc
        self._eject(kind, callback, message)

    def _eject(self, kind: ExitKind, callback: str | None, message: str) -> PolicyExit:
        record = PolicyExit(kind, self._policy_name, callback, message, self.now_ns)
        self.exits.append(record)
        del self.exits[:-MAX_EXITS]
        if self._fx is not None:
            self._fx.ejections.append(record)
        self._install(new_builtin_policy(FALLBACK_POLICY))
        return record

    def _install(self, policy: Any) -> None:
        """Hand every thread to ``policy``: queued ones (and one a faulting
        policy was given) are taken out of the old DSQs and re-enqueued."""
        if not callable(getattr(policy, "enqueue", None)):
            raise InvalidArgument(f"policy {policy!r} has no enqueue callback")
        self._unbind_fast_cycle()
        old = self._policy
        self._handoff = None  # a dispatch in progress is abandoned: re-enqueued below
        queued = sorted(
            (
                t
                for t in self._policy_threads()
                if t.state is ThreadState.RUNNABLE and (t.owner is None or t.owner.kind == QUEUED)
            ),
            key=lambda t: (t.virtual_finish_ns(self.slice_ns), t.tid),
        )
        for thread in queued:
            if thread.owner is not None:
                thread.owner.discard(thread)
                thread.owner = None
        if old is not None and self._cb_exit_thread is not None:
            for thread in self._policy_threads():
                if thread.state is not ThreadState.EXITED:
                    try:
                        self._cb_exit_thread(self, thread)
                    except Exception:
                        break
        for dsq_id in [
            d for d in self._dsqs if isinstance(d, int) and d not in self._builtin_dsq_ids
        ]:
            del self._dsqs[dsq_id]
        self._epoch += 1
        epoch = self._epoch
        self._policy = policy
        self._policy_name = str(getattr(policy, "name", type(policy).__name__))
        self._bind(policy)
        if self._routed is not None:
            self._routed.rebind_root()
        for thread in self._policy_threads():
            thread.policy_data = None
        self._call("init", self._cb_init)
        if self._epoch != epoch:
            return
        self._bind_fast_cycle(policy)
        for thread in self._policy_threads():
            if thread.state is not ThreadState.EXITED:
                self._call("init_thread", self._cb_init_thread, thread)
                if self._epoch != epoch:
                    return
        for thread in queued:
            self._enqueue(thread, ENQ_SWITCH)
            if self._epoch != epoch:
                return
        for cpu in self.cpus:
            if cpu.current is None:
                self.kick(cpu.id)

    def _bind(self, policy: Any) -> None:
        guard = None if _is_builtin(policy) else self.guard

        def bind(name: str) -> Any:
            fn = getattr(policy, name, None)
            if fn is None or guard is None:
                return fn
            call = guard.call
            return lambda *args: call(fn, *args)

        self._cb_select_cpu = bind("select_cpu")
        self._cb_enqueue = bind("enqueue")
        self._cb_dispatch = bind("dispatch") or _no_dispatch
        self._cb_running = bind("running")
        self._cb_stopping = bind("stopping")
        self._cb_set_weight = bind("set_weight")
        self._cb_init_thread = bind("init_thread")
        self._cb_tick = bind("tick")
        self._cb_init = bind("init")
        self._cb_exit_thread = bind("exit_thread")

    def _unbind_fast_cycle(self) -> None:
        """Back to the Python ``preempt_current`` and ``pick_next``: before a
        policy install, and for good once a sub-scheduler routes the callbacks
        (``subsched``), the two changes the C twin does not check for."""
        self.__dict__.pop("preempt_current", None)
        self.__dict__.pop("pick_next", None)
        self._fast_cycle = None

    def _bind_fast_cycle(self, policy: Any) -> None:
        """Run ``preempt_current`` and ``pick_next`` through the C accelerator's
        twin of the cycle (``_accel.WfqCycle``) when the policy is the built-in
        WFQ on accelerated queues and no sub-scheduler routes the callbacks;
        otherwise (and under CAPOS_SCHED_PURE) the methods below run. The twin
        checks the rest of the common case at every call and calls these
        methods outside it, so both stay interchangeable. Called by ``_install``
        only, after its ``_unbind_fast_cycle``."""
        from .policies.wfq import WfqPolicy

        if (
            FastCycle is None
            or self._routed is not None
            or type(self) is not Scheduler
            or type(policy) is not WfqPolicy
            or not all(isinstance(q, _accel.HeapQueue) for q in policy.queues)
            or any(self._dsqs.get(k) is not q or q.id != k for k, q in enumerate(policy.queues))
        ):
            return
        fast = FastCycle(
            self,
            policy,
            Thread,
            Cpu,
            Dispatch,
            FifoQueue,
            RUNNING_STATE,
            RUNNABLE_STATE,
            LatencyClass.INTERACTIVE,
            LatencyClass.BATCH,
            Scheduler.preempt_current,
            Scheduler.pick_next,
            REFERENCE_WEIGHT,
            INTERACTIVE_SLICE_DIVISOR,
            BATCH_SLICE_MULTIPLIER,
        )
        self._fast_cycle = fast
        self.preempt_current = fast.preempt_current  # type: ignore[method-assign]
        self.pick_next = fast.pick_next  # type: ignore[method-assign]

    def _make_runnable(self, thread: Thread, prev: int, now_ns: int, flags: int) -> Wake:
        """Wake and spawn's common end; written flat (one wake per sleeper period)."""
        thread.state = RUNNABLE_STATE
        thread.runnable_since_ns = now_ns
        thread.wait_mark_ns = (  # judged_time_ns, inline
            self._charged_ns
            + self._idle_acc_ns
            + self._nr_idle * max(0, now_ns - self._idle_changed_ns)
        )
        cpu = prev
        select_cpu = self._cb_select_cpu
        if select_cpu is not None:
            epoch = self._epoch
            try:
                chosen = select_cpu(self, thread, prev)
            except BaseException as exc:  # as _call
                self._fault("select_cpu", exc)
                chosen = None
            if self._epoch == epoch:
                if isinstance(chosen, int) and 0 <= chosen < self.nr_cpus:
                    cpu = chosen
                else:
                    self._fault(
                        "select_cpu",
                        PolicyViolation(f"select_cpu for {thread.name} returned CPU {chosen!r}"),
                    )
                    return self._wake_result(thread)
            else:
                return self._wake_result(thread)
        if cpu < 0:
            cpu = thread.last_cpu if thread.last_cpu is not None else 0
        if thread.last_cpu != cpu:
            self._assign_cpu(thread, cpu)
        all_kicks, all_preempts = self._kicks, self._preempts
        kicks, preempts = len(all_kicks), len(all_preempts)
        epoch = self._epoch
        try:  # _enqueue, inline
            self._cb_enqueue(self, thread, flags)
        except BaseException as exc:
            self._fault("enqueue", exc)
        else:
            if thread.owner is None and self._epoch == epoch:
                self._dropped(thread)
        return Wake(
            thread.ref,
            thread.last_cpu,
            all_kicks[kicks] if len(all_kicks) > kicks else None,
            all_preempts[preempts] if len(all_preempts) > preempts else None,
        )

    def _wake_result(self, thread: Thread) -> Wake:
        """The Wake of a thread whose placement ejected the policy (the fallback
        has queued it and kicked every idle CPU)."""
        return Wake(
            thread.ref,
            thread.last_cpu,
            self._kicks[0] if self._kicks else None,
            None,
        )

    def _enqueue(self, thread: Thread, flags: int) -> None:
        epoch = self._epoch
        try:
            self._cb_enqueue(self, thread, flags)
        except BaseException as exc:
            self._fault("enqueue", exc)
            return
        if thread.owner is None and self._epoch == epoch:
            self._dropped(thread)

    def _dropped(self, thread: Thread) -> None:
        self._fault(
            "enqueue",
            PolicyViolation(f"enqueue left {thread.name} in no DSQ (a dropped thread)"),
        )

    def _requeue_if_dropped(self, thread: Thread, callback: str) -> None:
        if thread.state is ThreadState.RUNNABLE and thread.owner is None:
            self._fault(
                callback, PolicyViolation(f"{callback} took {thread.name} out of every DSQ")
            )

    def _assign_cpu(self, thread: Thread, cpu_id: int) -> None:
        if thread.last_cpu is not None and thread.last_cpu != cpu_id:
            thread.migrations += 1
        thread.last_cpu = cpu_id

    def _go_idle(self, cpu: Cpu, now_ns: int) -> None:
        if not cpu.idle:
            self._idle_acc_ns += self._nr_idle * max(0, now_ns - self._idle_changed_ns)
            self._idle_changed_ns = now_ns
            self._nr_idle += 1
            cpu.idle = True

    def _stop_current(self, cpu: Cpu, elapsed_ns: int) -> Thread:
        thread = cpu.current
        if thread is None:
            raise InvalidState(f"CPU {cpu.id} is idle: nothing to stop")
        thread.charge_runtime(elapsed_ns)
        self._charged_ns += elapsed_ns
        cpu.current = None
        self._nr_busy -= 1
        thread.owner = None
        thread.state = ThreadState.RUNNABLE
        return thread

    def _reap_if_killed(self, thread: Thread, now_ns: int) -> bool:
        if thread.tid in self._kill_pending:
            self._mark_exited(thread, now_ns)
            return True
        return False

    def _mark_exited(self, thread: Thread, now_ns: int) -> None:
        self._kill_pending.discard(thread.tid)
        owner = thread.owner
        if owner is not None:
            if owner.kind == QUEUED:
                owner.discard(thread)
            elif owner.kind == IPC_SLOT:
                self.cpus[owner.cpu].ipc_slot = None
            elif owner.kind == RUNNING:  # pragma: no cover - guarded by kill()
                raise InvalidState(f"{thread.name} is running on CPU {owner.cpu}")
        thread.owner = None
        thread.state = ThreadState.EXITED
        if self._cb_exit_thread is not None:
            self._call("exit_thread", self._cb_exit_thread, thread)
        self._leave_endpoints(thread)
        caller = self._serving.pop(thread.tid, None)
        if caller is not None and self._is_live(caller):
            # The server died mid-call: release the caller rather than strand it,
            # and tell the driver (its call ended without a real reply).
            woken = self.wake(caller, now_ns, LastCpu(), WakeReason.IPC_REPLY)
            if self._fx is not None:
                self._fx.released.append(woken)

    def _leave_endpoints(self, thread: Thread) -> None:
        ep = self._waiting_on.pop(thread.tid, None)
        if ep is not None:
            ref = thread.ref
            for waiting in (ep.waiting_servers, ep.pending_callers):
                if ref in waiting:
                    waiting.remove(ref)

    def _endpoint(self, name: str) -> Endpoint:
        ep = self._endpoints.get(name)
        if ep is None:
            ep = self._endpoints[name] = Endpoint(name)
        return ep

    def _is_live(self, ref: ThreadRef) -> bool:
        thread = self._threads.get(ref.tid)
        return (
            thread is not None
            and thread.generation == ref.generation
            and thread.state is not ThreadState.EXITED
        )

    def _pop_live(self, waiting: collections.deque[ThreadRef]) -> Thread | None:
        while waiting:
            ref = waiting.popleft()
            if self._is_live(ref) and self._threads[ref.tid].state is ThreadState.BLOCKED:
                self._waiting_on.pop(ref.tid, None)
                return self._threads[ref.tid]
        return None

    def _wake_into_ipc_slot(self, server: Thread, cpu_id: int, now_ns: int) -> Wake:
        """Direct IPC: the woken server runs next on the caller's CPU.

        The slot belongs to that CPU alone (no sibling takes from it), so the
        preference never bypasses per-CPU ownership; it holds a
        generation-checked reference, so a stale entry is dropped, not run.
        The slot is the mechanism's: the policy hears of the server when it
        runs (``running``), not by ``enqueue``.
        """
        cpu = self.cpus[cpu_id]
        server.wake_reason = WakeReason.IPC_CALL
        if (cpu.ipc_slot is not None and self._is_live(cpu.ipc_slot)) or (
            self._routed is not None
            and not self._routed.tree.effective(server.scheduler, cpu_id) & CpuCap.ENQ_IMMED
        ):
            # Occupied: fall back to ordinary placement on this CPU.
            server.state = ThreadState.BLOCKED
            return self._make_runnable(server, cpu_id, now_ns, ENQ_WAKEUP)
        server.state = ThreadState.RUNNABLE
        server.runnable_since_ns = now_ns
        server.wait_mark_ns = self.judged_time_ns(now_ns)
        self._assign_cpu(server, cpu_id)
        server.owner = cpu.slot_tag
        cpu.ipc_slot = server.ref
        kick = cpu_id if cpu.current is None else None
        if kick is not None:
            self.kick(kick)
        return Wake(server.ref, cpu_id, kick, None)

    def _take_ipc_slot(self, cpu: Cpu) -> Thread | None:
        ref, cpu.ipc_slot = cpu.ipc_slot, None
        if ref is None or not self._is_live(ref):
            return None
        thread = self._threads[ref.tid]
        if thread.owner is not cpu.slot_tag:
            return None
        thread.owner = None
        return thread


def _no_dispatch(ctx: Any, cpu: int) -> None:
    """A policy without ``dispatch`` uses only the local and global DSQs."""


def _need(endpoint: str | None, how: str) -> str:
    if endpoint is None:
        raise InvalidArgument(f"stop {how!r} needs an endpoint")
    return endpoint


def _snapshot(thread: Thread) -> ThreadSnapshot:
    return ThreadSnapshot(
        tid=thread.tid,
        generation=thread.generation,
        name=thread.name,
        weight=thread.weight,
        latency_class=thread.latency_class,
        state=thread.state,
        cpu=thread.last_cpu,
        runtime_ns=thread.runtime_ns,
        virtual_runtime_ns=thread.virtual_runtime_ns,
        last_started_ns=thread.last_started_ns,
        context_switches=thread.context_switches,
        preemptions=thread.preemptions,
        voluntary_blocks=thread.voluntary_blocks,
        migrations=thread.migrations,
    )


def ideal_shares(weights: Iterable[int], cpus: int) -> list[float]:
    """Water-filled ideal CPU shares (in CPUs) for always-runnable threads.

    A thread can use at most one CPU: threads whose weighted share would exceed
    one CPU are capped at 1 and the rest is redistributed by weight.
    """
    weights = list(weights)
    shares = [0.0] * len(weights)
    uncapped = set(range(len(weights)))
    capacity = float(min(cpus, len(weights)))
    while uncapped:
        total = sum(weights[i] for i in uncapped)
        over = {i for i in uncapped if capacity * weights[i] / total > 1.0}
        if not over:
            for i in uncapped:
                shares[i] = capacity * weights[i] / total
            break
        for i in over:
            shares[i] = 1.0
        capacity -= len(over)
        uncapped -= over
    return shares
