"""CpuDelegation over Cap'n Proto: authority over one scheduler node (trio half).

Two halves, one per thread, meeting only through plain data:

* the trio side (``Node``, ``DelegationOwner`` and the ``op_*`` operations)
  owns every latch and the subscription table; each operation checks the
  node's latches (the manifest grant it derives from, its parent nodes, and
  whether its scheduler is still alive) right before it reads or mutates
  scheduling state, so a revoke or a kill applied earlier in the same thread
  is always seen;
* the RPC side (``delegation_server.py``: ``CpuDelegationServer``,
  ``SubscriptionServer`` and ``SubscriptionHub``) decodes parameters, submits
  operations through the bridge, encodes answers and sends notifications to
  listeners.

Fail closed (docs/capabilities.md): a grant of caps the node does not hold is
``denied``; naming a scheduler that is not a direct child is
``invalidArgument``; once the manifest grant is revoked every call is
``disconnected: revoked: ...``; once the node's scheduler was killed,
``disconnected: stale: ...``.

Notifications: the host calls ``DelegationOwner.on_notifications`` (trio
thread) with the core's ``CpuNotification`` values; it keeps those addressed
to a subscribed node, as plain ``Note`` values, and publishes them through the
bridge to the RPC loop, where each subscription has a bounded queue and one
sender task. A listener that is slow (its queue overflows) or fails (a call
errors or takes longer than ``LISTENER_CALL_TIMEOUT_S``) loses its own
subscription and nothing else. Dropping the ``Subscription`` capability (or
closing the connection) ends it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import structlog

from capos_sched.core.delegation import CpuCap, parse_caps

from .errors import wire_error
from .grants import Grant, Latch, stale_latch

log = structlog.get_logger("capos_sched.rpc")


# ------------------------------------------------------------ plain data


@attrs.frozen
class Holding:
    """One CPU of a node, as plain data (wire cap names)."""

    cpu: int
    held: tuple[str, ...]
    effective: tuple[str, ...]


@attrs.frozen
class Note:
    """One notification for one listener: ``kind`` is ``capsUpdated``
    (``cpus``), ``effectiveCapsUpdated`` (``cpu``, ``before``, ``after``) or
    ``idle`` (``cpu``)."""

    kind: str
    cpus: tuple[int, ...] = ()
    cpu: int = 0
    before: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


NOTE_KINDS = ("capsUpdated", "effectiveCapsUpdated", "idle")


def cap_names(caps: Any) -> tuple[str, ...]:
    """Wire names of a CpuCap (or of a list of them)."""
    if isinstance(caps, (list, tuple)):
        value = CpuCap.NONE
        for item in caps:
            value |= CpuCap(int(item))
        caps = value
    return tuple(CpuCap(int(caps)).names)


def note_of(notification: Any) -> Note | None:
    """The plain Note for a core ``CpuNotification`` (None for an unknown kind)."""
    kind = getattr(notification, "kind", None)
    if kind not in NOTE_KINDS:
        return None
    cpu = getattr(notification, "cpu", None)
    return Note(
        kind,
        tuple(int(c) for c in (getattr(notification, "cpus", None) or ())),
        0 if cpu is None else int(cpu),
        cap_names(getattr(notification, "before", None) or CpuCap.NONE),
        cap_names(getattr(notification, "after", None) or CpuCap.NONE),
    )


# ------------------------------------------------------------- trio side


@attrs.define(eq=False)
class Node:
    """Authority over scheduler ``scheduler`` (trio thread owns the latches).

    Invariants: ``closed`` goes from None to a Latch once and never back;
    a node is usable only while its manifest grant (``grant``, None for the
    operator's root node) and every ancestor node are usable and its
    scheduler is alive. The RPC thread reads only ``scheduler``.

    Known limit: schedulers are named, not generation-counted, in the core's
    API. A node latches stale when it sees its scheduler dead, and a kill
    through a node latches the child nodes it handed out; but a node of
    another grant that makes no call between a kill and a later load that
    attaches a scheduler of the same name would reach the new one.
    """

    scheduler: str
    grant: Grant | None
    parent: Node | None = None
    closed: Latch | None = None
    children: dict[str, Node] = attrs.Factory(dict)
    """Nodes handed down by ``child(name)``, one per name (stable identity)."""

    def check(self, host: Any) -> None:
        """Fail closed: revoked (the grant, or an ancestor's), or stale."""
        if self.grant is not None:
            self.grant.check()
        if self.parent is not None:
            self.parent.check(host)
        if self.closed is None and not host.scheduler_alive(self.scheduler):
            self.closed = stale_latch(f"scheduler {self.scheduler} was killed")
        if self.closed is not None:
            raise wire_error("disconnected", self.closed.text)

    def usable(self, host: Any) -> bool:
        try:
            self.check(host)
        except Exception:
            return False
        return True


class DelegationOwner:
    """The delegation state the trio thread owns: subscriptions, and where
    notifications go (``publish``: the bridge, to the RPC loop).

    Invariant: ``subscriptions`` maps a subscription id to a node that was
    usable when it was added; a notification reaches a subscription only
    while its node is still usable.
    """

    def __init__(self, host: Any) -> None:
        self.host = host
        self.subscriptions: dict[int, Node] = {}
        self.publish: Callable[[list[tuple[int, Note | None]]], None] | None = None
        self._attached = False
        self.root = Node("root", None)
        """The operator's node (Admin.cpuDelegation)."""
        self.grant_nodes: dict[Grant, Node] = {}
        """The node of each manifest grant (Grant hashes by identity)."""
        self.killed: dict[str, str] = {}
        """Schedulers killed through a node while the daemon ran: name -> parent."""

    def attach(self) -> None:
        if not self._attached:
            self._attached = True
            self.host.add_notification_sink(self.on_notifications)

    def on_notifications(self, notifications: Sequence[Any]) -> None:
        """The host's sink (trio thread): route each to the subscribed nodes."""
        if not notifications or not self.subscriptions:
            return
        out: list[tuple[int, Note | None]] = []
        ended: list[int] = []
        for sub_id, node in self.subscriptions.items():
            if not node.usable(self.host):
                ended.append(sub_id)
                continue
            for notification in notifications:
                if getattr(notification, "scheduler", None) != node.scheduler:
                    continue
                note = note_of(notification)
                if note is not None:
                    out.append((sub_id, note))
        for sub_id in ended:
            del self.subscriptions[sub_id]
            out.append((sub_id, None))  # None: the subscription is over
        if out and self.publish is not None:
            self.publish(out)


def _state(owner: Any) -> DelegationOwner:
    return owner.delegation  # type: ignore[no-any-return]


def _direct_child(owner: Any, node: Node, child: str) -> None:
    if child not in owner.host.scheduler_children(node.scheduler):
        raise wire_error(
            "invalidArgument", f"{child!r} is not a direct child of scheduler {node.scheduler!r}"
        )


def _holdings(owner: Any, name: str) -> list[Holding]:
    return _holdings_of(owner.host, name)


def _holdings_of(host: Any, name: str) -> list[Holding]:
    return [
        Holding(int(h.cpu), cap_names(h.held), cap_names(h.effective))
        for h in host.cpu_holdings(name)
    ]


def op_holdings(owner: Any, node: Node) -> list[Holding]:
    node.check(owner.host)
    return _holdings(owner, node.scheduler)


def op_children(owner: Any, node: Node) -> list[str]:
    node.check(owner.host)
    return list(owner.host.scheduler_children(node.scheduler))


def op_child_holdings(owner: Any, node: Node, child: str) -> list[Holding]:
    node.check(owner.host)
    _direct_child(owner, node, child)
    return _holdings(owner, child)


def op_grant(
    owner: Any, node: Node, child: str, cpus: tuple[int, ...], caps: tuple[str, ...]
) -> list[int]:
    node.check(owner.host)
    _direct_child(owner, node, child)
    wanted = parse_caps(caps)
    denied = owner.host.grant_cpus(node.scheduler, child, list(cpus), wanted, owner.now_ns())
    owner.applied += 1
    log.info("cpus granted", parent=node.scheduler, child=child, cpus=list(cpus), caps=list(caps))
    return [int(c) for c in denied]


def op_revoke(
    owner: Any, node: Node, child: str, cpus: tuple[int, ...], caps: tuple[str, ...]
) -> None:
    node.check(owner.host)
    _direct_child(owner, node, child)
    owner.host.revoke_cpus(node.scheduler, child, list(cpus), parse_caps(caps), owner.now_ns())
    owner.applied += 1
    log.info("cpus revoked", parent=node.scheduler, child=child, cpus=list(cpus), caps=list(caps))


def op_kill(owner: Any, node: Node, child: str, reason: str) -> None:
    node.check(owner.host)
    _direct_child(owner, node, child)
    doomed = _subtree_parents(owner.host, node.scheduler, child)
    owner.host.kill_scheduler(node.scheduler, child, reason, owner.now_ns())
    _state(owner).killed.update(doomed)
    owner.applied += 1
    gone = node.children.pop(child, None)
    if gone is not None:
        gone.closed = stale_latch(f"scheduler {child} was killed by {node.scheduler}")
    log.info("scheduler killed", parent=node.scheduler, child=child, reason=reason)


def _subtree_parents(host: Any, parent: str, child: str) -> dict[str, str]:
    """``child``'s subtree, each name mapped to its parent (preorder)."""
    out, todo = {}, [(child, parent)]
    while todo:
        name, up = todo.pop()
        out[name] = up
        todo += [(c, name) for c in reversed(host.scheduler_children(name))]
    return out


@attrs.frozen
class SchedulerRow:
    """One scheduler for ``Admin.schedulers`` (plain data)."""

    name: str
    parent: str
    alive: bool
    holdings: tuple[Holding, ...]
    rejected_inserts: int = 0
    forced_admits: int = 0
    denied_kicks: int = 0
    denied_preempts: int = 0
    evictions: int = 0
    allocated: tuple[tuple[int, int], ...] = ()
    exit_kind: str = ""
    exit_message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "parent": self.parent or None,
            "alive": self.alive,
            "holdings": [attrs.asdict(h) for h in self.holdings],
            "rejected_inserts": self.rejected_inserts,
            "forced_admits": self.forced_admits,
            "denied_kicks": self.denied_kicks,
            "denied_preempts": self.denied_preempts,
            "evictions": self.evictions,
            "allocated_ns": {str(cpu): ns for cpu, ns in self.allocated},
            "exit": None
            if not self.exit_kind
            else {"kind": self.exit_kind, "message": self.exit_message},
        }


def _scheduler_row(host: Any, name: str, parent: str, alive: bool) -> SchedulerRow:
    holdings = tuple(_holdings_of(host, name)) if alive else ()
    try:
        stats = host.scheduler_stats(name)
    except Exception:  # a killed scheduler the core no longer reports on
        return SchedulerRow(name, parent, alive, holdings)
    allocated = getattr(stats, "allocated_ns", None) or {}
    exit_record = getattr(stats, "exit", None)
    return SchedulerRow(
        name,
        parent,
        alive,
        holdings,
        int(getattr(stats, "rejected_inserts", 0)),
        int(getattr(stats, "forced_admits", 0)),
        int(getattr(stats, "denied_kicks", 0)),
        int(getattr(stats, "denied_preempts", 0)),
        int(getattr(stats, "evictions", 0)),
        tuple(sorted((int(c), int(ns)) for c, ns in dict(allocated).items())),
        "" if exit_record is None else str(getattr(exit_record, "kind", "parentKill")),
        "" if exit_record is None else str(getattr(exit_record, "message", "")),
    )


def op_schedulers(owner: Any) -> list[SchedulerRow]:
    """Every live scheduler (root first, preorder), then the killed ones."""
    host = owner.host
    live = _subtree_parents(host, "", "root") if host.scheduler_alive("root") else {}
    rows = [_scheduler_row(host, n, p, True) for n, p in live.items()]
    for name, parent in _state(owner).killed.items():
        if name not in live:
            rows.append(_scheduler_row(host, name, parent, False))
    return rows


def op_child(owner: Any, node: Node, name: str) -> Node:
    node.check(owner.host)
    _direct_child(owner, node, name)
    down = node.children.get(name)
    if down is None or down.closed is not None:
        down = node.children[name] = Node(name, None, node)
    return down


def op_subscribe(owner: Any, node: Node, sub_id: int) -> None:
    node.check(owner.host)
    state = _state(owner)
    state.attach()
    state.subscriptions[sub_id] = node


def op_unsubscribe(owner: Any, sub_id: int) -> None:
    _state(owner).subscriptions.pop(sub_id, None)


def op_root(owner: Any) -> Node:
    return _state(owner).root


def op_node_for(owner: Any, grant: Grant) -> Node:
    """The node of a manifest ``cpuDelegation`` grant (one per grant)."""
    grant.check()
    nodes = _state(owner).grant_nodes
    node = nodes.get(grant)
    if node is None:
        assert grant.target is not None
        node = nodes[grant] = Node(grant.target, grant)
    return node
