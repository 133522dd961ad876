"""The ABI: names, ordinals and constants of schema/capos.capnp, and the core's mirror."""

import capnp
import pytest

from capos_sched.core import constants
from capos_sched.core.thread import LatencyClass, ThreadState
from capos_sched.paths import CAPOS_SCHEMA

SCHEMA = CAPOS_SCHEMA


@pytest.fixture(scope="module")
def schema():
    return capnp.load(str(SCHEMA))


def enumerants(enum_type) -> dict[str, int]:
    return dict(enum_type.schema.enumerants)


def test_exception_type_ordinals(schema):
    assert enumerants(schema.ExceptionType) == {
        "failed": 0,
        "overloaded": 1,
        "disconnected": 2,
        "unimplemented": 3,
        "invalidArgument": 4,
    }


def test_latency_class_ordinals_match_core(schema):
    wire = enumerants(schema.LatencyClass)
    assert wire == {"interactive": 0, "normal": 1, "batch": 2, "ipcServer": 3}
    assert {c.wire_name: c.value for c in LatencyClass} == wire


def test_thread_state_ordinals_match_core(schema):
    assert enumerants(schema.ThreadState) == {s.name.lower(): s.value for s in ThreadState}


def test_policy_cap_methods(schema):
    methods = schema.SchedulingPolicyCap.schema.methods
    assert set(methods) >= {"setWeight", "setLatencyClass", "snapshot"}
    snapshot = methods["snapshot"]
    assert [f for f in snapshot.result_type.fieldnames] == [
        "weight",
        "class",
        "runtimeNs",
        "virtualRuntimeNs",
    ]
    assert list(methods["setWeight"].param_type.fieldnames) == ["thread", "weight"]
    assert list(methods["setLatencyClass"].param_type.fieldnames) == ["thread", "class"]


def test_thread_handle_can_tell_stale(schema):
    assert {"describe", "isLive"} <= set(schema.ThreadHandle.schema.methods)


@pytest.mark.parametrize(
    ("schema_name", "core_name"),
    [
        ("referenceWeight", "REFERENCE_WEIGHT"),
        ("defaultWeight", "DEFAULT_WEIGHT"),
        ("minWeight", "MIN_WEIGHT"),
        ("maxWeight", "MAX_WEIGHT"),
        ("sliceNs", "SLICE_NS"),
        ("interactiveSliceDivisor", "INTERACTIVE_SLICE_DIVISOR"),
        ("batchSliceMultiplier", "BATCH_SLICE_MULTIPLIER"),
    ],
)
def test_constants_match_core(schema, schema_name, core_name):
    assert getattr(schema, schema_name) == getattr(constants, core_name)


def test_weight_bounds_are_ordered(schema):
    assert 1 <= schema.minWeight <= schema.defaultWeight <= schema.maxWeight < 65535
    assert schema.sliceNs % schema.interactiveSliceDivisor == 0


def test_cpu_caps_match_the_core_mirror(schema):
    from capos_sched.core.delegation import CpuCap, parse_caps

    wire = enumerants(schema.CpuCap)
    assert wire == {"enqImmed": 0, "enq": 1, "preempt": 2}
    assert {name: parse_caps([name]).value for name in wire} == {n: 1 << o for n, o in wire.items()}
    assert CpuCap(0b111).names == list(wire)


def ordinal_names(interface) -> list[str]:
    """Method names by ordinal (the node's list is indexed by ordinal)."""
    return [m.name for m in interface.schema.node.interface.methods]


def test_cpu_delegation_methods_keep_their_ordinals(schema):
    assert ordinal_names(schema.CpuDelegation) == [
        "holdings",
        "children",
        "grant",
        "revoke",
        "childHoldings",
        "subscribe",
        "kill",
        "child",
    ]
    methods = schema.CpuDelegation.schema.methods
    assert list(methods["grant"].param_type.fieldnames) == ["child", "cpus", "caps"]
    assert list(methods["grant"].result_type.fieldnames) == ["denied"]
    assert ordinal_names(schema.CpuListener) == ["capsUpdated", "effectiveCapsUpdated", "idle"]
    assert list(schema.CpuHolding.schema.fieldnames) == ["cpu", "held", "effective"]


def test_admin_set_policy_is_appended_and_reports_the_policy_state(schema):
    methods = schema.Admin.schema.methods
    # Appended: the first four keep their ordinals; setPolicy comes after them
    # (ordinal 4 on this branch; methods appended concurrently may precede it).
    ordered = ordinal_names(schema.Admin)
    assert ordered[:4] == ["load", "revoke", "grants", "stats"]
    assert ordered.index("setPolicy") >= 4
    set_policy = methods["setPolicy"]
    assert list(set_policy.param_type.fieldnames) == ["name", "source"]
    assert list(set_policy.result_type.fieldnames) == ["state"]
    # The policy state is appended to stats and grants results, after their fields.
    assert list(methods["stats"].result_type.fieldnames) == ["threads", "rpc", "plan", "policy"]
    assert list(methods["grants"].result_type.fieldnames) == ["grants", "policy"]
    assert list(schema.Admin.PolicyState.schema.fieldnames) == [
        "active",
        "builtin",
        "hasBypass",
        "bypass",
        "exits",
    ]
    assert list(schema.Admin.PolicyExit.schema.fieldnames) == [
        "kind",
        "policy",
        "callback",
        "message",
        "atNs",
    ]
    assert list(schema.Admin.PolicyBypass.schema.fieldnames) == [
        "policy",
        "thread",
        "waitedNs",
        "atNs",
        "active",
        "endedNs",
    ]


def test_admin_cpu_delegation_and_schedulers_are_appended_after_set_policy(schema):
    assert ordinal_names(schema.Admin)[4:] == ["setPolicy", "cpuDelegation", "schedulers"]
    methods = schema.Admin.schema.methods
    assert list(methods["cpuDelegation"].param_type.fieldnames) == []
    assert list(methods["cpuDelegation"].result_type.fieldnames) == ["node"]
    assert list(methods["schedulers"].result_type.fieldnames) == ["schedulers"]
    assert list(schema.Admin.SchedulerStats.schema.fieldnames) == [
        "name",
        "parent",
        "alive",
        "holdings",
        "rejectedInserts",
        "forcedAdmits",
        "deniedKicks",
        "deniedPreempts",
        "evictions",
        "allocated",
        "exitKind",
        "exitMessage",
    ]
    assert list(schema.Admin.CpuTime.schema.fieldnames) == ["cpu", "ns"]
