"""The Phase D weighted-fair scheduler as a sans-I/O state machine.

This module owns all scheduling state. It performs no I/O, reads no clock and
starts nothing: callers pass the current time (``now_ns``) and the measured
run time (``elapsed_ns``) in, and act on what the methods return. The same
engine drives the trio runtime (real time) and the simulator (virtual time).

The policy, in one page
-----------------------
* Every thread carries ``virtual_runtime_ns``; running ``elapsed`` ns advances
  it by ``elapsed * REFERENCE_WEIGHT / weight`` (``Thread.charge_runtime``).
* Each CPU owns a run queue ordered by ``virtual_finish_ns`` =
  ``vruntime + class_slice * REFERENCE_WEIGHT / weight`` (interactive slices are
  ``slice / INTERACTIVE_SLICE_DIVISOR``, batch ``slice * BATCH_SLICE_MULTIPLIER``),
  computed afresh at every enqueue; ties break by enqueue order.
* ``pick_next(cpu)`` takes, in order: the CPU's direct-IPC slot (a server woken
  by a call made on this CPU), else the front of its queue. A CPU whose queue
  is empty steals; a CPU whose front is at least ``balance_threshold_ns`` of
  virtual time behind a sibling's front pulls that sibling's front instead (so
  per-CPU queues approximate one global virtual-time order, which is what
  makes shares fair across CPUs). Either way one thread moves, chosen by
  walking the siblings once: lowest head ``virtual_finish_ns`` wins, ties go to
  the lower CPU id. Its finish is recomputed at the destination.
* ``virtual_runtime_ns`` travels with a migrating thread. Every cross-CPU
  enqueue (placement or steal) counts one migration.
* Placement: a new thread starts at its queue's virtual time (never at 0). A
  waking thread may bank at most ``slice_ns`` of virtual credit: its vruntime
  is raised to at least ``queue virtual time - slice_ns`` (the scx_simple
  rule; Linux clamps lag to about a slice likewise). So a long sleeper gets a
  prompt turn but cannot monopolise the CPU when it wakes.
* A queue's virtual time is monotonic: at each pick it becomes
  ``max(itself, min(vruntime of the picked thread, vruntime of the new front))``.
* FIFO fallback (``Policy.FIFO``): every CPU shares one FIFO queue, no weights
  in ordering, no stealing needed; accounting runs exactly as in WFQ.

Ownership invariant: a live runnable thread has exactly one owner, one CPU's
current slot, one run queue, or one CPU's IPC slot. Blocked and exited threads
have none; an exited thread is never picked. ``check_invariants`` verifies it.

Overload: when runnable threads far exceed CPUs, nothing grows but the queues,
and each queue is bounded by the live threads (a heap of at most
``2 * live + 1`` entries, see ``runqueue``). Every pick costs O(log n + CPUs):
at most one thread moves per pick, so stealing is bounded work that never
blocks a CPU. Wait time grows linearly with the runnable count per CPU (every
runnable thread is reached within about ``N * slice / CPUs``, weighted); the
runtime's watchdog reports waits past its threshold. The wake path allocates
one heap entry per wake of a blocked thread and nothing for a redundant wake.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable, Iterator

import attrs

from .constants import DEFAULT_WEIGHT, REFERENCE_WEIGHT, SLICE_NS
from .errors import InvalidArgument, InvalidState, StaleThread
from .runqueue import FifoQueue, RunQueue, VirtualFinishQueue
from .thread import LatencyClass, Thread, ThreadRef, ThreadState, class_slice_ns, validate_weight


class Policy(enum.Enum):
    """Which dispatcher orders the run queues."""

    WFQ = "wfq"
    FIFO = "fifo"

    @classmethod
    def parse(cls, value: str | Policy) -> Policy:
        if isinstance(value, Policy):
            return value
        for member in cls:
            if member.value == value:
                return member
        raise InvalidArgument(f"unknown policy {value!r}; expected one of wfq, fifo")


class WakeReason(enum.Enum):
    """Why a blocked thread became runnable (completions of Phase D)."""

    TIMER = "timer"
    IPC_REPLY = "ipcReply"
    IPC_CALL = "ipcCall"
    PARK = "park"
    PROCESS_WAIT = "processWait"
    THREAD_JOIN = "threadJoin"


@attrs.frozen
class QueueCpu:
    """Wake placement: queue on CPU ``cpu``."""

    cpu: int


@attrs.frozen
class LastCpu:
    """Wake placement: queue on the CPU the thread last ran on."""


@attrs.frozen
class LeastLoaded:
    """Placement: the CPU with the fewest runnable threads (ties: lower id)."""


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
    """``ipcSlot``, ``queue`` or ``steal``."""


@attrs.define
class Wake:
    """The outcome of making a thread runnable.

    ``kick`` is an idle CPU that should look for work now (the reschedule IPI),
    or None. ``preempt`` is a CPU whose running thread should be cut short
    because an interactive thread with an earlier virtual finish is waiting.
    """

    thread: ThreadRef
    cpu: int | None
    kick: int | None
    preempt: int | None


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


# Owner tags kept on each thread: (kind, cpu). Blocked and exited threads have None.
RUNNING, QUEUED, IPC_SLOT = "running", "queued", "ipcSlot"


@attrs.define(eq=False)
class Cpu:
    """Per-CPU state.

    Invariants: ``current`` is RUNNING and owned by this CPU; ``ipc_slot`` refers
    to a thread that may have gone stale (checked by generation when taken);
    ``virtual_time_ns`` never decreases.
    """

    id: int
    queue: RunQueue
    running_owner: tuple[str, int] = attrs.field(init=False)
    queued_owner: tuple[str, int] = attrs.field(init=False)
    current: Thread | None = None
    current_virtual_finish_ns: int = 0
    ipc_slot: ThreadRef | None = None
    virtual_time_ns: int = 0
    last_tid: int | None = None

    def __attrs_post_init__(self) -> None:
        # Owner tags are compared, never mutated: build them once per CPU.
        self.running_owner = (RUNNING, self.id)
        self.queued_owner = (QUEUED, self.id)


@attrs.define(eq=False)
class Endpoint:
    """An IPC rendezvous point: servers waiting for calls, callers waiting for servers.

    Invariant: a thread appears in at most one of the two deques, once, and only
    while BLOCKED on this endpoint.
    """

    name: str
    waiting_servers: collections.deque[ThreadRef] = attrs.Factory(collections.deque)
    pending_callers: collections.deque[ThreadRef] = attrs.Factory(collections.deque)


class Scheduler:
    """The scheduling state machine of a whole machine of ``cpus`` CPUs."""

    def __init__(
        self,
        cpus: int,
        policy: Policy | str = Policy.WFQ,
        slice_ns: int = SLICE_NS,
        balance_threshold_ns: int | None = None,
    ) -> None:
        if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
            raise InvalidArgument(f"cpus {cpus!r} must be a positive integer")
        if isinstance(slice_ns, bool) or not isinstance(slice_ns, int) or slice_ns < 1:
            raise InvalidArgument(f"slice_ns {slice_ns!r} must be a positive integer")
        self.slice_ns = slice_ns
        self.balance_threshold_ns = (
            slice_ns if balance_threshold_ns is None else balance_threshold_ns
        )
        self.policy = Policy.parse(policy)
        self.cpus: list[Cpu] = [
            Cpu(k, queue) for k, queue in enumerate(_new_queues(self.policy, cpus))
        ]
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
        self._released_callers: list[Wake] = []
        """Callers woken because their server exited mid-call, not yet taken."""

    # ------------------------------------------------------------------ lookup

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

    def is_live(self, ref: ThreadRef) -> bool:
        """True while ``ref`` names its thread and the thread has not exited."""
        return self._is_live(ref)

    # --------------------------------------------------------------- mutations

    def spawn(
        self,
        name: str,
        now_ns: int,
        weight: int = DEFAULT_WEIGHT,
        latency_class: LatencyClass | str | int = LatencyClass.NORMAL,
        placement: WakePolicy | None = None,
    ) -> Wake:
        """Create a runnable thread at its queue's current virtual time."""
        weight = validate_weight(weight)
        latency_class = LatencyClass.parse(latency_class)
        cpu = self._placement_cpu(None, placement or LeastLoaded())
        if self._free_tids:
            tid = self._free_tids.pop()
        else:
            tid, self._next_tid = self._next_tid, self._next_tid + 1
        generation = self._last_generation.get(tid, 0) + 1
        self._last_generation[tid] = generation
        thread = Thread(tid, generation, name, weight, latency_class)
        thread.virtual_runtime_ns = self.cpus[cpu].virtual_time_ns
        self._threads[tid] = thread
        return self._make_runnable(thread, cpu, now_ns)

    def set_weight(self, ref: ThreadRef, weight: int) -> None:
        """Validate, then change the weight; a queued thread is re-keyed at once."""
        weight = validate_weight(weight)
        thread = self.resolve(ref)
        thread.change_weight(weight)
        self._rekey_if_queued(thread)

    def set_latency_class(self, ref: ThreadRef, latency_class: LatencyClass | str | int) -> None:
        """Validate, then change the class; a queued thread is re-keyed at once."""
        latency_class = LatencyClass.parse(latency_class)
        thread = self.resolve(ref)
        thread.latency_class = latency_class
        self._rekey_if_queued(thread)

    def pick_next(self, cpu_id: int, now_ns: int) -> Dispatch | None:
        """Choose what ``cpu_id`` runs next: IPC slot, then own queue, then steal."""
        cpu = self._cpu(cpu_id)
        if cpu.current is not None:
            raise InvalidState(
                f"pick_next on CPU {cpu_id}: CPU is running {cpu.current.name}; stop it first"
            )
        thread = self._take_ipc_slot(cpu) if cpu.ipc_slot is not None else None
        if thread is not None:
            return self._dispatch(cpu, thread, now_ns, "ipcSlot")
        source = "steal" if self._steal_into(cpu) is not None else "queue"
        thread = cpu.queue.pop()
        if thread is None:
            return None
        return self._dispatch(cpu, thread, now_ns, source)

    def steal(self, cpu_id: int) -> ThreadRef | None:
        """Move one thread from a sibling's queue to ``cpu_id``'s, if warranted.

        Warranted when this queue is empty, or (WFQ) when a sibling's front is
        at least ``balance_threshold_ns`` of virtual finish behind ours. The
        walk visits each sibling once; the lowest head virtual finish wins and
        ties go to the lower CPU id.
        """
        return self._steal_into(self._cpu(cpu_id))

    def _steal_into(self, cpu: Cpu) -> ThreadRef | None:
        own = cpu.queue
        own_key = own.head_key()
        if own_key is not None and self.policy is Policy.FIFO:
            return None
        # Pull only from a sibling at least a threshold behind: "key <= limit".
        limit = None if own_key is None else own_key - self.balance_threshold_ns
        best_key, victim = None, None
        for sibling in self.cpus:
            if sibling.queue is own:
                continue
            key = sibling.queue.head_key()
            if key is None or (limit is not None and key > limit):
                continue
            if best_key is None or key < best_key:
                best_key, victim = key, sibling
        if victim is None:
            return None
        thread = victim.queue.pop()
        assert thread is not None  # head_key() just saw it
        self._enqueue(thread, cpu)
        return thread.ref

    def preempt_current(self, cpu_id: int, now_ns: int, elapsed_ns: int) -> ThreadRef:
        """The running thread's slice ended (expired or cut short): charge it and
        put it back at its ordered place on this CPU's queue."""
        cpu = self._cpu(cpu_id)
        thread = self._stop_current(cpu, elapsed_ns)
        thread.preemptions += 1
        if not self._kill_pending or not self._reap_if_killed(thread, now_ns):
            thread.runnable_since_ns = now_ns
            self._enqueue(thread, cpu)  # no kick: this CPU picks next anyway
        return thread.ref

    def block_current(self, cpu_id: int, now_ns: int, elapsed_ns: int) -> ThreadRef:
        """The running thread blocked voluntarily (sleep, wait): charge, then park it."""
        cpu = self._cpu(cpu_id)
        thread = self._stop_current(cpu, elapsed_ns)
        thread.voluntary_blocks += 1
        if not self._reap_if_killed(thread, now_ns):
            thread.state = ThreadState.BLOCKED
        return thread.ref

    def exit_current(self, cpu_id: int, now_ns: int, elapsed_ns: int) -> ThreadRef:
        """The running thread finished: charge it and mark it exited."""
        cpu = self._cpu(cpu_id)
        thread = self._stop_current(cpu, elapsed_ns)
        self._mark_exited(thread, now_ns)
        return thread.ref

    def charge_current(self, cpu_id: int, elapsed_ns: int) -> ThreadRef | None:
        """Charge the running thread mid-slice (a tick) without descheduling it."""
        cpu = self._cpu(cpu_id)
        if cpu.current is None:
            return None
        cpu.current.charge_runtime(elapsed_ns)
        return cpu.current.ref

    def wake(
        self,
        ref: ThreadRef,
        now_ns: int,
        policy: WakePolicy | None = None,
        reason: WakeReason = WakeReason.TIMER,
    ) -> Wake:
        """Make a blocked thread runnable where ``policy`` says (default: its last CPU).

        Waking a thread that is already runnable or running changes nothing.
        """
        thread = self.resolve(ref)
        if thread.state is not ThreadState.BLOCKED:
            return Wake(thread.ref, thread.cpu, None, None)
        self._leave_endpoints(thread)
        cpu = self._placement_cpu(thread, policy or LastCpu())
        self._clamp_lag(thread, self.cpus[cpu])
        return self._make_runnable(thread, cpu, now_ns)

    def kill(self, ref: ThreadRef, now_ns: int) -> int | None:
        """Terminate a thread from outside (plan reload). A running thread exits
        when its CPU next stops it, and that CPU is returned so the driver can
        cut the slice short; any other thread exits now (None is returned)."""
        thread = self.resolve(ref)
        if thread.state is ThreadState.RUNNING:
            self._kill_pending.add(thread.tid)
            return thread.cpu
        self._mark_exited(thread, now_ns)
        return None

    def reap(self, ref: ThreadRef) -> None:
        """Forget an exited thread so its id can be reused (with a new generation)."""
        thread = self._threads.get(ref.tid)
        if thread is None or thread.generation != ref.generation:
            raise StaleThread(f"thread {ref.tid} generation {ref.generation} is not reapable")
        if thread.state is not ThreadState.EXITED:
            raise InvalidState(f"reap of {thread.name}: thread is {thread.state.name}, not EXITED")
        del self._threads[ref.tid]
        self._free_tids.append(ref.tid)

    def set_policy(self, policy: Policy | str) -> None:
        """Switch dispatchers live (the watchdog's bypass). Queued threads keep
        their relative order; running threads are unaffected."""
        policy = Policy.parse(policy)
        if policy is self.policy:
            return
        queued = sorted(
            (t for t in self._threads.values() if t.owner is not None and t.owner[0] == QUEUED),
            key=lambda t: (t.virtual_finish_ns(self.slice_ns), t.tid),
        )
        self.policy = policy
        for cpu, queue in zip(self.cpus, _new_queues(policy, len(self.cpus)), strict=True):
            cpu.queue = queue
        for thread in queued:
            thread.owner = None
            self._enqueue(thread, self.cpus[thread.cpu or 0])

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

    def take_released_callers(self) -> list[Wake]:
        """The callers released (woken) since the last call because their server
        exited mid-call: the driver treats each as a call that ended unanswered.
        It grows only when a server exits while serving, so a driver that takes
        them after every stop and kill keeps it empty."""
        released, self._released_callers = self._released_callers, []
        return released

    def serving(self, server: ThreadRef) -> ThreadRef | None:
        """The caller a server is currently serving, if any."""
        return self._serving.get(server.tid)

    # -------------------------------------------------------------- invariants

    def check_invariants(self) -> None:
        """Raise AssertionError if any ownership or bookkeeping rule is broken."""
        owners: dict[int, list[tuple[str, int]]] = collections.defaultdict(list)
        for cpu in self.cpus:
            if cpu.current is not None:
                owners[cpu.current.tid].append((RUNNING, cpu.id))
                assert cpu.current.state is ThreadState.RUNNING, cpu.current
            if cpu.ipc_slot is not None and self._is_live(cpu.ipc_slot):
                slotted = self._threads[cpu.ipc_slot.tid]
                if slotted.owner == (IPC_SLOT, cpu.id):
                    owners[slotted.tid].append((IPC_SLOT, cpu.id))
        seen_queues: set[int] = set()
        for cpu in self.cpus:
            if id(cpu.queue) in seen_queues:
                continue
            seen_queues.add(id(cpu.queue))
            for thread in cpu.queue:
                owners[thread.tid].append((QUEUED, thread.owner[1] if thread.owner else -1))
        for thread in self._threads.values():
            found = owners.get(thread.tid, [])
            if thread.state in (ThreadState.RUNNABLE, ThreadState.RUNNING):
                assert len(found) == 1, f"{thread.name} {thread.state.name} owned by {found}"
                assert found[0] == thread.owner, f"{thread.name}: {found[0]} != {thread.owner}"
                kind = found[0][0]
                assert (kind == RUNNING) == (thread.state is ThreadState.RUNNING), thread
            else:
                assert not found, f"{thread.name} {thread.state.name} still owned by {found}"
                assert thread.owner is None, thread
            assert 0 <= thread._vruntime_remainder < thread.weight, thread
        for cpu in self.cpus:
            assert len(cpu.queue) <= len(self._threads)

    # ---------------------------------------------------------------- internals

    def _cpu(self, cpu_id: int) -> Cpu:
        if cpu_id >= 0:
            try:
                return self.cpus[cpu_id]
            except IndexError:
                pass
        raise InvalidArgument(f"CPU {cpu_id} outside [0, {len(self.cpus) - 1}]")

    def _placement_cpu(self, thread: Thread | None, policy: WakePolicy) -> int:
        match policy:
            case QueueCpu(cpu=cpu):
                return self._cpu(cpu).id
            case LastCpu() if thread is not None and thread.cpu is not None:
                return thread.cpu
            case _:
                load = [int(c.current is not None) + len(c.queue) for c in self.cpus]
                return min(range(len(self.cpus)), key=lambda k: (load[k], k))

    def _clamp_lag(self, thread: Thread, cpu: Cpu) -> None:
        floor = cpu.virtual_time_ns - self.slice_ns
        if thread.virtual_runtime_ns < floor:
            thread.virtual_runtime_ns = floor

    def _make_runnable(self, thread: Thread, cpu_id: int, now_ns: int) -> Wake:
        thread.state = ThreadState.RUNNABLE
        thread.runnable_since_ns = now_ns
        cpu = self.cpus[cpu_id]
        self._enqueue(thread, cpu)
        return Wake(thread.ref, cpu_id, self._kick_for(cpu), self._preempt_for(thread, cpu))

    def _enqueue(self, thread: Thread, cpu: Cpu) -> None:
        if self.policy is Policy.WFQ and thread.cpu != cpu.id:
            self._assign_cpu(thread, cpu.id)
        self._enqueue_seq += 1
        cpu.queue.push(thread, thread.virtual_finish_ns(self.slice_ns), self._enqueue_seq)
        thread.owner = cpu.queued_owner

    def _rekey_if_queued(self, thread: Thread) -> None:
        if thread.owner is not None and thread.owner[0] == QUEUED:
            self._enqueue(thread, self.cpus[thread.owner[1]])

    def _assign_cpu(self, thread: Thread, cpu_id: int) -> None:
        if thread.cpu is not None and thread.cpu != cpu_id:
            thread.migrations += 1
        thread.cpu = cpu_id

    def _kick_for(self, cpu: Cpu) -> int | None:
        if cpu.current is None:
            return cpu.id
        for other in self.cpus:
            if other.current is None:
                return other.id
        return None

    def _preempt_for(self, thread: Thread, cpu: Cpu) -> int | None:
        """Wake-up preemption: only the interactive class, only when earlier."""
        if thread.latency_class is not LatencyClass.INTERACTIVE or self.policy is Policy.FIFO:
            return None
        current = cpu.current
        if current is None:
            return None
        if thread.virtual_finish_ns(self.slice_ns) < cpu.current_virtual_finish_ns:
            return cpu.id
        return None

    def _dispatch(self, cpu: Cpu, thread: Thread, now_ns: int, source: str) -> Dispatch:
        if thread.cpu != cpu.id:
            self._assign_cpu(thread, cpu.id)
        if cpu.last_tid != thread.tid:
            thread.context_switches += 1
            cpu.last_tid = thread.tid
        thread.state = ThreadState.RUNNING
        thread.owner = cpu.running_owner
        thread.last_started_ns = now_ns
        cpu.current = thread
        budget = class_slice_ns(thread.latency_class, self.slice_ns)
        vruntime = thread.virtual_runtime_ns
        finish = vruntime + budget * REFERENCE_WEIGHT // thread.weight
        cpu.current_virtual_finish_ns = finish
        head = cpu.queue.head()
        if head is not None and head[1].virtual_runtime_ns < vruntime:
            vruntime = head[1].virtual_runtime_ns
        if vruntime > cpu.virtual_time_ns:
            cpu.virtual_time_ns = vruntime
        return Dispatch(cpu.id, thread.ref, thread.name, budget, finish, source)

    def _stop_current(self, cpu: Cpu, elapsed_ns: int) -> Thread:
        thread = cpu.current
        if thread is None:
            raise InvalidState(f"CPU {cpu.id} is idle: nothing to stop")
        thread.charge_runtime(elapsed_ns)
        cpu.current = None
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
        if thread.owner is not None:
            kind, cpu_id = thread.owner
            if kind == QUEUED:
                self.cpus[cpu_id].queue.discard(thread)
            elif kind == IPC_SLOT:
                self.cpus[cpu_id].ipc_slot = None
            elif kind == RUNNING:  # pragma: no cover - guarded by kill()
                raise InvalidState(f"{thread.name} is running on CPU {cpu_id}")
        thread.owner = None
        thread.state = ThreadState.EXITED
        self._leave_endpoints(thread)
        caller = self._serving.pop(thread.tid, None)
        if caller is not None and self._is_live(caller):
            # The server died mid-call: release the caller rather than strand it,
            # and tell the driver (its call ended without a real reply).
            self._released_callers.append(
                self.wake(caller, now_ns, LastCpu(), WakeReason.IPC_REPLY)
            )

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
        """
        cpu = self.cpus[cpu_id]
        if cpu.ipc_slot is not None and self._is_live(cpu.ipc_slot):
            # Occupied: fall back to ordinary placement on this CPU's queue.
            self._clamp_lag(server, cpu)
            return self._make_runnable(server, cpu_id, now_ns)
        self._clamp_lag(server, cpu)
        server.state = ThreadState.RUNNABLE
        server.runnable_since_ns = now_ns
        self._assign_cpu(server, cpu_id)
        server.owner = (IPC_SLOT, cpu_id)
        cpu.ipc_slot = server.ref
        return Wake(server.ref, cpu_id, self._kick_for(cpu), None)

    def _take_ipc_slot(self, cpu: Cpu) -> Thread | None:
        ref, cpu.ipc_slot = cpu.ipc_slot, None
        if ref is None or not self._is_live(ref):
            return None
        thread = self._threads[ref.tid]
        if thread.owner != (IPC_SLOT, cpu.id):
            return None
        thread.owner = None
        return thread


def _new_queues(policy: Policy, cpus: int) -> list[RunQueue]:
    """One virtual-finish queue per CPU (WFQ), or one FIFO shared by all."""
    if policy is Policy.FIFO:
        return [FifoQueue()] * cpus
    return [VirtualFinishQueue() for _ in range(cpus)]


def _snapshot(thread: Thread) -> ThreadSnapshot:
    return ThreadSnapshot(
        tid=thread.tid,
        generation=thread.generation,
        name=thread.name,
        weight=thread.weight,
        latency_class=thread.latency_class,
        state=thread.state,
        cpu=thread.cpu,
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
