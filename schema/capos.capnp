@0x8db5bf4e4e3164e4;
# capos-sched ABI: the Phase D scheduling-policy capabilities.
#
# This file is the contract. Clients in any language build against it, so
# ordinals never change: new enumerants, fields and methods are appended.
# Errors travel as text whose first word is an ExceptionType name followed by
# a colon, e.g. "invalidArgument: weight 0 outside [1, 10000]" (pycapnp always
# delivers server exceptions as FAILED, so the type rides in the message).

# ---------------------------------------------------------------------------
# Phase D constants. The Python core mirrors these (capos_sched/core/constants.py)
# and a test checks that both agree.

const referenceWeight :UInt16 = 1024;
# The weight at which virtual time runs at wall-clock speed:
# vruntime += elapsed * referenceWeight / weight. 1024 is Linux's nice-0
# weight, so capos weights read like Linux load weights (2048 = twice the share).

const defaultWeight :UInt16 = 1024;
# New threads start at the reference weight: a thread nobody tuned accrues
# virtual time at wall-clock speed.

const minWeight :UInt16 = 1;
# Zero would mean infinite virtual time per nanosecond (division by zero), so 1
# is the smallest meaningful weight: 1/1024 of a default thread's share.

const maxWeight :UInt16 = 10000;
# 10000 : 1 is the widest ratio we accept (the same ceiling sched_ext
# schedulers use for task weights). A larger ratio makes the light thread's
# virtual finish so far out that it waits many seconds per slice, which is
# starvation in all but name. Kept below 65535 so UInt16 can never alias it.

const sliceNs :UInt64 = 4000000;
# 4 ms. A dispatch round trip to a worker process costs 60-85 us at p50
# (shared/notes/measurements.md), so a 4 ms slice keeps dispatch overhead near
# 2% while three hogs still rotate ~80 times a second (share error over a 3 s
# window is O(N * slice / T) = 0.4%).

const interactiveSliceDivisor :UInt16 = 4;
# Interactive threads get slice / 4 = 1 ms: an earlier virtual finish, so a
# waking interactive thread sorts ahead of hogs, and a short slice, so it
# cannot use that head start to hold the CPU. 1 ms is also the wake-latency
# goal for the interactive class.

const batchSliceMultiplier :UInt16 = 4;
# Batch threads get slice * 4 = 16 ms: fewer context switches for throughput
# work, paid for by a later virtual finish (they yield to everyone else first).

# ---------------------------------------------------------------------------

enum ExceptionType {
  failed @0;
  overloaded @1;
  disconnected @2;
  unimplemented @3;
  invalidArgument @4;   # appended: the first four ordinals match Cap'n Proto's
}

enum LatencyClass {
  interactive @0;
  normal @1;
  batch @2;
  ipcServer @3;
}

enum ThreadState {
  runnable @0;
  running @1;
  blocked @2;
  exited @3;
}

interface ThreadHandle {
  # A reference to one scheduler thread, fixed to its (id, generation). It
  # carries no authority to change the thread: that needs a
  # SchedulingPolicyCap as well.

  describe @0 () -> (name :Text, threadId :UInt32, generation :UInt32, state :ThreadState);
  # Identity and state of the thread. Fails with "disconnected: ... stale"
  # when the thread has exited or its id was reused (generation mismatch).

  isLive @1 () -> (live :Bool);
  # Never fails on a stale handle: answers false instead, so a client can
  # tell a live handle from a stale one without provoking an error.
}

interface SchedulingPolicyCap {
  setWeight @0 (thread :ThreadHandle, weight :UInt16) -> ();
  # weight must lie in [minWeight, maxWeight]; anything else is
  # invalidArgument and changes nothing. Nothing is clamped.

  setLatencyClass @1 (thread :ThreadHandle, class :LatencyClass) -> ();

  snapshot @2 (thread :ThreadHandle)
      -> (weight :UInt16, class :LatencyClass, runtimeNs :UInt64, virtualRuntimeNs :UInt64);
  # Deliberately narrow: scheduling counters (context switches, preemptions,
  # voluntary blocks, migrations) are reported by stats and benchmarks only.
}
