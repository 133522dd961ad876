"""bench/delegation.py: the eviction measure and its rule check can fail."""

from __future__ import annotations

import pytest

from bench.delegation import eviction_latencies, runtime_eviction_latencies


def test_every_revoke_takes_effect_by_the_next_dispatch_and_cuts_the_slice_at_once():
    latencies, within_one = eviction_latencies(revokes=10, seed=3)
    assert len(latencies) == 10
    assert within_one
    assert max(latencies) == 0  # virtual time: the running slice ends at the revoke


def test_the_measure_sees_a_revoke_that_does_not_preempt(monkeypatch):
    from capos_sched.core import subsched

    original = subsched.Delegation._changed

    def no_preempt(self, before):  # the revoke's preempt dropped: the slice runs out
        original(self, before)
        self.sched._preempts.clear()

    monkeypatch.setattr(subsched.Delegation, "_changed", no_preempt)
    latencies, _ = eviction_latencies(revokes=5, seed=3)
    assert max(latencies) > 0


@pytest.mark.slow
def test_the_runtime_measure_pairs_every_revoke_with_its_eviction_mark():
    from bench.delegation import RUNTIME_PERIOD_NS

    latencies = runtime_eviction_latencies(1.0)
    revokes = int((1.0e9 - 100_000_000) // RUNTIME_PERIOD_NS)
    assert revokes - 1 <= len(latencies) <= revokes  # the last may end with the run
    assert all(ns >= 0 for ns in latencies)
