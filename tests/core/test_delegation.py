"""The CPU-delegation authority table: rules 1-4 and 8 of the delegation model."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from capos_sched.core.delegation import (
    ALL,
    MAX_DEPTH,
    ROOT,
    CpuCap,
    DelegationTree,
    implied,
    implying,
    parse_caps,
    pool_holder,
    proportional_split,
)
from capos_sched.core.errors import InvalidArgument

E, Q, P = CpuCap.ENQ_IMMED, CpuCap.ENQ, CpuCap.PREEMPT


def tree(nr_cpus: int = 4) -> DelegationTree:
    t = DelegationTree(nr_cpus)
    t.attach("a", ROOT, 100)
    t.attach("b", "a", 100)
    return t


def test_implication_chain() -> None:
    assert implied(P) == E | Q | P
    assert implied(Q) == E | Q
    assert implied(E) == E
    assert implying(E) == E | Q | P
    assert implying(Q) == Q | P
    assert implying(P) == P


def test_wire_names_round_trip() -> None:
    assert (E | P).names == ["enqImmed", "preempt"]
    assert parse_caps(["preempt", "enqImmed"]) == E | P
    with pytest.raises(InvalidArgument, match="unknown CPU cap 'turbo'"):
        parse_caps(["turbo"])


def test_root_holds_everything_and_a_new_child_nothing() -> None:
    t = tree()
    assert all(t.held(ROOT, cpu) == ALL for cpu in range(4))
    assert all(t.effective("a", cpu) == CpuCap.NONE for cpu in range(4))


def test_grant_only_to_a_direct_child() -> None:
    t = tree()
    with pytest.raises(InvalidArgument, match="'b' is not a direct child of scheduler 'root'"):
        t.grant(ROOT, "b", [0], E)
    assert t.held("b", 0) == CpuCap.NONE


def test_grant_is_all_or_nothing_per_cpu_and_returns_denied() -> None:
    t = tree()
    assert t.grant(ROOT, "a", [0, 1], Q) == []
    # a holds enq literally on 0 and 1; enq|preempt is refused on both, enq on 2 too
    assert t.grant("a", "b", [0, 1, 2], Q | P) == [0, 1, 2]
    assert t.held("b", 0) == CpuCap.NONE
    assert t.grant("a", "b", [1, 2], Q) == [2]
    assert t.held("b", 1) == Q and t.held("b", 2) == CpuCap.NONE


def test_implied_caps_are_usable_but_not_delegable() -> None:
    t = tree()
    t.grant(ROOT, "a", [0], P)
    assert t.effective("a", 0) == E | Q | P
    assert t.grant("a", "b", [0], E) == [0]  # a holds enqImmed only by implication
    assert t.grant("a", "b", [0], P) == []


def test_revoke_clears_the_whole_subtree() -> None:
    t = tree()
    t.attach("c", "b", 1)
    t.grant(ROOT, "a", [0, 1], E | Q)
    t.grant("a", "b", [0, 1], E | Q)
    t.grant("b", "c", [0], E)
    assert t.revoke(ROOT, "a", [0], E) == ["a", "b", "c"]
    for name in ("a", "b", "c"):
        assert t.effective(name, 0) == CpuCap.NONE
    assert t.held("b", 1) == E | Q  # other CPUs untouched
    t.check_invariants()


def test_revoking_a_lower_cap_clears_the_caps_implying_it() -> None:
    t = tree()
    t.grant(ROOT, "a", [0], Q)
    t.revoke(ROOT, "a", [0], E)
    assert t.effective("a", 0) == CpuCap.NONE


def test_refused_calls_change_nothing() -> None:
    t = tree()
    t.grant(ROOT, "a", [0], E)
    before = {name: dict(node.held) for name, node in t.nodes.items()}
    for call in (
        lambda: t.grant(ROOT, "a", [9], E),
        lambda: t.grant(ROOT, "nobody", [0], E),
        lambda: t.revoke("a", "a", [0], E),
        lambda: t.grant(ROOT, "a", [0], CpuCap.NONE),
        lambda: t.kill("b", "a", "no"),
    ):
        with pytest.raises(InvalidArgument):
            call()
    assert {name: dict(node.held) for name, node in t.nodes.items()} == before


def test_depth_is_bounded() -> None:
    t = DelegationTree(1)
    parent = ROOT
    for depth in range(1, MAX_DEPTH + 1):
        t.attach(f"s{depth}", parent, 1)
        parent = f"s{depth}"
    with pytest.raises(InvalidArgument, match="depth would exceed 4"):
        t.attach("too-deep", parent, 1)
    assert "too-deep" not in t.nodes


def test_kill_tears_down_the_subtree_and_leaves_a_record() -> None:
    t = tree()
    t.attach("c", "b", 1)
    record = t.kill(ROOT, "a", "misbehaved")
    assert record.kind == "parentKill" and record.message == "misbehaved"
    assert record.removed == ("a", "b", "c")
    assert set(t.nodes) == {ROOT}
    t.check_invariants()


def test_in_subtree() -> None:
    t = tree()
    assert t.in_subtree("b", "a") and t.in_subtree("b", ROOT) and t.in_subtree("a", "a")
    assert not t.in_subtree("a", "b")


def test_proportional_split_is_contiguous_self_first_with_a_pool() -> None:
    split = proportional_split(range(10), [(ROOT, 100), ("x", 200), ("y", 100)])
    assert split.exclusive == {ROOT: (0, 1), "x": (2, 3, 4, 5, 6), "y": (7, 8)}
    assert split.pool == (9,)


def test_a_participant_without_a_cpu_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"'tiny' .* would get no CPU of 4"):
        proportional_split(range(4), [(ROOT, 100), ("tiny", 1)])


def test_pool_rotates_one_holder_at_a_time() -> None:
    period = 200_000_000
    holders = [pool_holder(["x", "y"], t * period + 5, period) for t in range(4)]
    assert holders == ["x", "y", "x", "y"]
    assert pool_holder([], 0, period) is None
    with pytest.raises(InvalidArgument, match="below the minimum"):
        pool_holder(["x"], 0, 9_999_999)


CAPS = st.sampled_from([E, Q, P, E | Q, Q | P, E | Q | P])


class DelegationMachine(RuleBasedStateMachine):
    """Random trees, grants, revokes and kills; the subset invariant after each."""

    def __init__(self) -> None:
        super().__init__()
        self.tree = DelegationTree(4)
        self.count = 0

    def names(self) -> list[str]:
        return sorted(self.tree.nodes)

    @rule(data=st.data(), weight=st.integers(1, 10000))
    def attach(self, data: st.DataObject, weight: int) -> None:
        parent = data.draw(st.sampled_from(self.names()))
        self.count += 1
        name = f"s{self.count}"
        if self.tree.nodes[parent].depth == MAX_DEPTH:
            with pytest.raises(InvalidArgument):
                self.tree.attach(name, parent, weight)
        else:
            self.tree.attach(name, parent, weight)

    @precondition(lambda self: len(self.tree.nodes) > 1)
    @rule(data=st.data(), caps=CAPS, cpus=st.lists(st.integers(0, 3), max_size=4))
    def grant(self, data: st.DataObject, caps: CpuCap, cpus: list[int]) -> None:
        child = data.draw(st.sampled_from([n for n in self.names() if n != ROOT]))
        parent = self.tree.nodes[child].parent
        assert parent is not None
        denied = self.tree.grant(parent, child, cpus, caps)
        for cpu in cpus:
            granted = not caps & ~self.tree.held(parent, cpu)
            assert (cpu in denied) != granted
            if granted:
                assert caps & self.tree.held(child, cpu) == caps

    @precondition(lambda self: len(self.tree.nodes) > 1)
    @rule(data=st.data(), caps=CAPS, cpus=st.lists(st.integers(0, 3), max_size=4))
    def revoke(self, data: st.DataObject, caps: CpuCap, cpus: list[int]) -> None:
        child = data.draw(st.sampled_from([n for n in self.names() if n != ROOT]))
        parent = self.tree.nodes[child].parent
        assert parent is not None
        self.tree.revoke(parent, child, cpus, caps)
        for name in self.tree.subtree(child):
            for cpu in cpus:
                assert not self.tree.effective(name, cpu) & caps

    @precondition(lambda self: len(self.tree.nodes) > 1)
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        child = data.draw(st.sampled_from([n for n in self.names() if n != ROOT]))
        parent = self.tree.nodes[child].parent
        assert parent is not None
        doomed = set(self.tree.subtree(child))
        record = self.tree.kill(parent, child, "test")
        assert set(record.removed) == doomed and not doomed & set(self.tree.nodes)

    @invariant()
    def subset_invariant_holds(self) -> None:
        self.tree.check_invariants()


TestDelegationMachine = DelegationMachine.TestCase
