"""CPU delegation: a tree of schedulers holding per-CPU capabilities.

The sched_ext sub-scheduler model (``kernel/sched/ext/sub.c``), sans-I/O. This
module owns only the authority table: who holds which caps on which CPU, and the
rules that change it. Enforcement at delivery (reject lists, forced admits,
evictions) reads it through :meth:`DelegationTree.effective`; the default
qmap-style split is the pure function :func:`proportional_split`.

Caps, per (scheduler, CPU):

* ``ENQ_IMMED`` is the baseline: needed to use the CPU at all;
* ``ENQ`` lets the scheduler queue any of its threads there (implies ENQ_IMMED);
* ``PREEMPT`` lets it cut short a thread of a foreign subtree (implies ENQ).

Invariants (``check_invariants``), after every operation:

1. The root literally holds every cap on every CPU.
2. A child's literal caps on a CPU are a subset of its parent's literal caps
   there. Grants copy only literal caps, so implied caps can be used but never
   re-delegated.
3. Depth (root = 0) is at most :data:`MAX_DEPTH`.

Failing closed: every refused operation raises a typed error and changes
nothing; a grant refuses per CPU, all-or-nothing, and reports the refused CPUs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import attrs

from .constants import MAX_WEIGHT, MIN_WEIGHT
from .errors import InvalidArgument

ROOT = "root"
MAX_DEPTH = 4
ROOT_SELF_WEIGHT = 100
MIN_POOL_ROTATION_NS = 10_000_000
DEFAULT_POOL_ROTATION_NS = 200_000_000


class CpuCap(enum.IntFlag):
    """One CPU's caps; values match ``enum CpuCap`` ordinals as bit positions."""

    NONE = 0
    ENQ_IMMED = 1 << 0
    ENQ = 1 << 1
    PREEMPT = 1 << 2

    @property
    def names(self) -> list[str]:
        """Wire names, lowest cap first (``enqImmed``, ``enq``, ``preempt``)."""
        return [_WIRE_NAMES[cap] for cap in _ALL_CAPS if cap & self]


_ALL_CAPS = (CpuCap.ENQ_IMMED, CpuCap.ENQ, CpuCap.PREEMPT)
ALL = CpuCap.ENQ_IMMED | CpuCap.ENQ | CpuCap.PREEMPT
_WIRE_NAMES = {CpuCap.ENQ_IMMED: "enqImmed", CpuCap.ENQ: "enq", CpuCap.PREEMPT: "preempt"}


def implied(caps: CpuCap) -> CpuCap:
    """The caps usable with ``caps`` held: PREEMPT implies ENQ implies ENQ_IMMED."""
    if caps & CpuCap.PREEMPT:
        caps |= CpuCap.ENQ
    if caps & CpuCap.ENQ:
        caps |= CpuCap.ENQ_IMMED
    return caps


def implying(caps: CpuCap) -> CpuCap:
    """The caps that imply any of ``caps`` (themselves included).

    Revoking a cap clears these too, so a revoke of ``enqImmed`` really takes the
    CPU away instead of leaving it usable through a literal ``enq``.
    """
    if caps & CpuCap.ENQ_IMMED:
        caps |= CpuCap.ENQ
    if caps & CpuCap.ENQ:
        caps |= CpuCap.PREEMPT
    return caps


def parse_caps(names: Iterable[str]) -> CpuCap:
    """The caps named on the wire; an unknown name is ``InvalidArgument``."""
    by_name = {name: cap for cap, name in _WIRE_NAMES.items()}
    caps = CpuCap.NONE
    for name in names:
        if name not in by_name:
            raise InvalidArgument(f"unknown CPU cap {name!r}; expected enqImmed, enq or preempt")
        caps |= by_name[name]
    return caps


@attrs.define
class SchedulerNode:
    """One scheduler in the tree.

    Invariant: ``held`` maps only CPUs with a non-empty cap set (a CPU whose
    last cap is revoked is removed), so ``held.keys()`` is where it may run.
    """

    name: str
    parent: str | None
    weight: int
    depth: int
    held: dict[int, CpuCap] = attrs.field(factory=dict)
    children: list[str] = attrs.field(factory=list)


@attrs.frozen
class KillRecord:
    """What a parent kill leaves behind: the ``parentKill`` exit record."""

    scheduler: str
    parent: str
    message: str
    removed: tuple[str, ...]  # the killed node and its whole subtree, preorder
    kind: str = "parentKill"


@attrs.define
class DelegationTree:
    """The schedulers of one machine and what each holds; see the module doc."""

    nr_cpus: int
    nodes: dict[str, SchedulerNode] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.nr_cpus <= 1 << 16:
            raise InvalidArgument(f"nr_cpus {self.nr_cpus} outside 1..65536")
        held = dict.fromkeys(range(self.nr_cpus), ALL)
        self.nodes[ROOT] = SchedulerNode(ROOT, None, ROOT_SELF_WEIGHT, 0, held)

    # -- structure ----------------------------------------------------------

    def attach(self, name: str, parent: str, weight: int) -> SchedulerNode:
        """Add ``name`` under ``parent``, holding nothing until its parent grants."""
        if not name or name in self.nodes:
            raise InvalidArgument(f"cannot attach scheduler {name!r}: the name is taken or empty")
        _check_weight(name, weight)
        up = self._node(parent)
        if up.depth + 1 > MAX_DEPTH:
            raise InvalidArgument(
                f"cannot attach scheduler {name!r} under {parent!r}: depth would exceed {MAX_DEPTH}"
            )
        node = SchedulerNode(name, parent, weight, up.depth + 1)
        self.nodes[name] = node
        up.children.append(name)
        return node

    def set_weight(self, name: str, weight: int) -> None:
        _check_weight(name, weight)
        if name == ROOT:
            raise InvalidArgument("the root's self weight is fixed")
        self._node(name).weight = weight

    def subtree(self, name: str) -> list[str]:
        """``name`` and all its descendants, preorder."""
        order, stack = [], [name]
        while stack:
            current = stack.pop()
            order.append(current)
            stack.extend(reversed(self.nodes[current].children))
        return order

    def in_subtree(self, name: str, ancestor: str) -> bool:
        """Whether ``name`` is ``ancestor`` or below it."""
        current: str | None = name
        while current is not None:
            if current == ancestor:
                return True
            current = self.nodes[current].parent
        return False

    # -- authority ----------------------------------------------------------

    def grant(self, parent: str, child: str, cpus: Sequence[int], caps: CpuCap) -> list[int]:
        """Give ``caps`` on ``cpus`` to a direct child; returns the refused CPUs.

        Per CPU, all or nothing: a CPU is refused unless ``parent`` literally
        holds every cap asked for there.
        """
        self._direct_child(parent, child)
        self._check_cpus(cpus)
        if not caps:
            raise InvalidArgument("a grant names no caps")
        up, down = self.nodes[parent], self.nodes[child]
        denied = []
        for cpu in dict.fromkeys(cpus):
            if caps & ~up.held.get(cpu, CpuCap.NONE):
                denied.append(cpu)
            else:
                down.held[cpu] = down.held.get(cpu, CpuCap.NONE) | caps
        return denied

    def revoke(self, parent: str, child: str, cpus: Sequence[int], caps: CpuCap) -> list[str]:
        """Clear ``caps`` (and the caps implying them) on ``cpus`` from ``child``'s
        whole subtree; returns the schedulers whose holdings changed."""
        self._direct_child(parent, child)
        self._check_cpus(cpus)
        cleared = implying(caps)
        changed = []
        for name in self.subtree(child):
            held = self.nodes[name].held
            touched = False
            for cpu in dict.fromkeys(cpus):
                before = held.get(cpu, CpuCap.NONE)
                after = before & ~cleared
                if after != before:
                    touched = True
                    if after:
                        held[cpu] = after
                    else:
                        del held[cpu]
            if touched:
                changed.append(name)
        return changed

    def kill(self, parent: str, child: str, message: str) -> KillRecord:
        """Tear down a direct child's subtree; its threads re-home to ``parent``."""
        self._direct_child(parent, child)
        removed = self.subtree(child)
        self.nodes[parent].children.remove(child)
        for name in removed:
            del self.nodes[name]
        return KillRecord(child, parent, message, tuple(removed))

    # -- queries ------------------------------------------------------------

    def held(self, name: str, cpu: int) -> CpuCap:
        """The caps ``name`` holds literally on ``cpu`` (the ones it may grant)."""
        return self._node(name).held.get(cpu, CpuCap.NONE)

    def effective(self, name: str, cpu: int) -> CpuCap:
        """The caps ``name`` may use on ``cpu``: its literal caps and their implications."""
        return implied(self.held(name, cpu))

    def check_invariants(self) -> None:
        root = self.nodes[ROOT]
        assert root.held == dict.fromkeys(range(self.nr_cpus), ALL), "root lost a cap"
        for node in self.nodes.values():
            assert node.depth <= MAX_DEPTH, f"{node.name} too deep"
            assert all(node.held.values()), f"{node.name} maps a CPU with no caps"
            if node.parent is None:
                continue
            up = self.nodes[node.parent]
            assert node.name in up.children and node.depth == up.depth + 1
            for cpu, caps in node.held.items():
                assert not caps & ~up.held.get(cpu, CpuCap.NONE), (
                    f"{node.name} holds {caps!r} on cpu {cpu} beyond its parent {up.name}"
                )

    # -- helpers ------------------------------------------------------------

    def _node(self, name: str) -> SchedulerNode:
        node = self.nodes.get(name)
        if node is None:
            raise InvalidArgument(f"no scheduler named {name!r}")
        return node

    def _direct_child(self, parent: str, child: str) -> None:
        if child not in self._node(parent).children:
            raise InvalidArgument(f"{child!r} is not a direct child of scheduler {parent!r}")

    def _check_cpus(self, cpus: Sequence[int]) -> None:
        bad = [cpu for cpu in cpus if not 0 <= cpu < self.nr_cpus]
        if bad:
            raise InvalidArgument(f"CPU {bad[0]} out of range 0..{self.nr_cpus - 1}")


def _check_weight(name: str, weight: int) -> None:
    if not MIN_WEIGHT <= weight <= MAX_WEIGHT:
        raise InvalidArgument(
            f"scheduler {name!r}: weight {weight} not in {MIN_WEIGHT}..{MAX_WEIGHT}"
        )


# -- the root's default delegation (scx_qmap's hierarchical demo) -------------


@attrs.frozen
class Split:
    """Contiguous exclusive CPU ranges per participant, and the shared pool."""

    exclusive: dict[str, tuple[int, ...]]
    pool: tuple[int, ...]


def proportional_split(cpus: Sequence[int], participants: Sequence[tuple[str, int]]) -> Split:
    """Split ``cpus`` among ``participants`` (self first) by weight.

    Each gets ``floor(n * w / W)`` contiguous CPUs, in order; what is left over
    is the shared pool. A participant that would get no CPU is an error naming
    it, so a parent refuses a child it cannot give an exclusive CPU.
    """
    if not participants:
        raise InvalidArgument("a split needs at least one participant")
    n = len(cpus)
    total = sum(weight for _, weight in participants)
    exclusive: dict[str, tuple[int, ...]] = {}
    start = 0
    for name, weight in participants:
        count = n * weight // total
        if count == 0:
            raise InvalidArgument(
                f"scheduler {name!r} (weight {weight} of {total}) would get no CPU of {n}"
            )
        exclusive[name] = tuple(cpus[start : start + count])
        start += count
    return Split(exclusive, tuple(cpus[start:]))


def pool_holder(children: Sequence[str], now_ns: int, rotation_ns: int) -> str | None:
    """Who holds the shared pool at ``now_ns``: the children in turn, one
    rotation period each (None when there are no children)."""
    if rotation_ns < MIN_POOL_ROTATION_NS:
        raise InvalidArgument(
            f"pool rotation {rotation_ns} ns is below the minimum {MIN_POOL_ROTATION_NS} ns"
        )
    if not children:
        return None
    return children[(now_ns // rotation_ns) % len(children)]
