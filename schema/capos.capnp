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

  prove @2 (nonce :Data) -> (mac :Data);
  # Appended. HMAC-SHA256 of `nonce` under the secret of the grant this handle
  # was obtained through. The secret never leaves the daemon, so only the
  # daemon's own handles can answer; it is how the daemon recognises one of
  # its handles relayed through another connection (see docs/capabilities.md).
  # Never fails, on a stale or revoked handle either (it proves identity,
  # not authority).
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

# ---------------------------------------------------------------------------
# The capability surface of the daemon (capos-sched serve). Appended; the
# ordinals above are unchanged.

interface CapSet {
  # A process's granted capabilities, by the grant names of its manifest.

  get @0 (name :Text) -> (cap :Capability);
  # The capability granted under `name`: a SchedulingPolicyCap or a
  # ThreadHandle. Fails "disconnected: revoked ..." once the grant is revoked
  # and "invalidArgument: ..." for a name the process was never granted.

  list @1 () -> (names :List(Text));
  # The names of the grants not yet revoked, sorted.
}

interface Restorer {
  # The bootstrap capability of the daemon's --listen socket. Nothing else is
  # reachable there without a token.

  restore @0 (token :Data) -> (caps :CapSet);
  # The CapSet of the process whose token this is. Any other token (unknown,
  # or of a process whose grants are all revoked) fails with
  # "disconnected: ..." and says nothing about which tokens exist.
}

interface Admin {
  # The operator's capability, served on a Unix socket of mode 0600: whoever
  # can open the socket is the operator.

  enum GrantState {
    granted @0;   # usable
    revoked @1;   # revoked by the operator or by a load that dropped it
    stale @2;     # a thread grant whose thread exited or was removed
  }

  struct Grant {
    process @0 :Text;
    name @1 :Text;
    kind @2 :Text;          # "schedulingPolicy" or "thread"
    target @3 :Text;        # full thread name for "thread", "" otherwise
    state @4 :GrantState;
    sessions @5 :UInt32;    # CapSets restored for this grant's process
  }

  struct ThreadStats {
    name @0 :Text;          # process/thread
    threadId @1 :UInt32;
    generation @2 :UInt32;
    state @3 :ThreadState;
    weight @4 :UInt16;
    class @5 :LatencyClass;
    cpu @6 :Int32;          # -1 when the thread has never been placed
    runtimeNs @7 :UInt64;
    virtualRuntimeNs @8 :UInt64;
    contextSwitches @9 :UInt64;
    preemptions @10 :UInt64;
    voluntaryBlocks @11 :UInt64;
    migrations @12 :UInt64;
  }

  struct RpcStats {
    connections @0 :UInt32;     # open client connections (both sockets)
    callsApplied @1 :UInt64;    # mutations applied by the owner thread
    callsRefused @2 :UInt64;    # typed errors returned to clients
    overloaded @3 :UInt64;      # calls refused by a connection's bound
    internalErrors @4 :UInt64;  # "failed: internal error" answers
  }

  load @0 (source :Text, name :Text)
      -> (added :List(Text), removed :List(Text), kept :List(Text), revoked :List(Text));
  # Replace the running plan with the manifest `source` (`name` is used in
  # diagnostics only). Atomic: an invalid manifest changes nothing and fails
  # "invalidArgument: <file:line:col diagnostics>". `revoked` lists the grants
  # ("process.grant") revoked because the new manifest dropped them.

  revoke @1 (process :Text, grant :Text) -> (revoked :List(Text));
  # Revoke one grant, or every grant and the token of `process` when `grant`
  # is empty. Returns once the revocation is in force: no call applied after
  # that point succeeds through the revoked grants.

  grants @2 () -> (grants :List(Grant), policy :PolicyState);
  # `policy` appended: the scheduling policy in force (as in stats).

  stats @3 () -> (threads :List(ThreadStats), rpc :RpcStats, plan :Text, policy :PolicyState);
  # Every thread of the running plan with its counters; `plan` names the
  # manifest in force; `policy` (appended) the scheduling policy in force.

  struct PolicyExit {
    # The record a policy ejection leaves (docs/policies.md, "safety net").
    kind @0 :Text;          # "error", "timeout", "stall" or "invalid"
    policy @1 :Text;        # the ejected policy
    callback @2 :Text;      # the callback that failed; "" for a watchdog stall
    message @3 :Text;
    atNs @4 :UInt64;        # on the daemon's clock, ns since the run started
  }

  struct PolicyBypass {
    # The watchdog's last stall bypass: `policy` was replaced by the fallback.
    policy @0 :Text;
    thread @1 :Text;        # the thread whose stall triggered it
    waitedNs @2 :UInt64;    # its judged wait
    atNs @3 :UInt64;
    active @4 :Bool;        # false once it ended (by itself or by the operator)
    endedNs @5 :UInt64;     # 0 while active
  }

  struct PolicyState {
    active @0 :Text;        # the policy in force: "wfq", "fifo", "eevdf" or a user policy's name
    builtin @1 :Bool;
    hasBypass @2 :Bool;     # `bypass` is set (a bypass happened since the start)
    bypass @3 :PolicyBypass;
    exits @4 :List(PolicyExit);   # ejections, oldest first (the last few)
  }

  setPolicy @4 (name :Text, source :Text) -> (state :PolicyState);
  # Switch the scheduling policy now, atomically: no thread is lost or runs
  # twice, run time and virtual run time carry over; ends a bypass. `name` is
  # a built-in ("wfq", "fifo", "eevdf") with an empty `source`, or the file
  # name of a user policy whose Python module text is `source` (at most
  # 256 KiB; it runs in the daemon, as the operator's code). A bad name or
  # source fails "invalidArgument: ..." and changes nothing. A user policy
  # that fails while taking over is ejected at once: `state` then shows the
  # fallback and the exit record.

  struct CpuTime {
    cpu @0 :UInt16;
    ns @1 :UInt64;
  }

  struct SchedulerStats {
    # One scheduler of the delegation tree (docs/delegation.md).
    name @0 :Text;
    parent @1 :Text;                # "" for the root
    alive @2 :Bool;                 # false once killed: `exitKind` says why
    holdings @3 :List(CpuHolding);
    rejectedInserts @4 :UInt64;
    forcedAdmits @5 :UInt64;
    deniedKicks @6 :UInt64;
    deniedPreempts @7 :UInt64;
    evictions @8 :UInt64;
    allocated @9 :List(CpuTime);    # CPU time allocated to it, per CPU
    exitKind @10 :Text;             # "" while alive; "parentKill" once killed
    exitMessage @11 :Text;
  }

  cpuDelegation @5 () -> (node :CpuDelegation);
  # The root scheduler's node: the operator's authority over CPU delegation.

  schedulers @6 () -> (schedulers :List(SchedulerStats));
  # Every scheduler (the root first, then the tree in preorder), and those
  # killed while the daemon ran, with their exit records.
}

# ---------------------------------------------------------------- CPU delegation
# Sub-schedulers hold CPUs as capabilities (the sched_ext sub-scheduler model;
# docs/delegation.md). A scheduler's caps on a CPU: `enqImmed` is needed to use
# the CPU at all; `enq` lets it queue any of its threads there (implies
# enqImmed); `preempt` lets it cut short a thread of a scheduler outside its
# own subtree (implies enq). Implied caps may be used but not re-delegated.
# The core's mirror is capos_sched/core/delegation.py (CpuCap, bit = ordinal).

enum CpuCap {
  enqImmed @0;
  enq @1;
  preempt @2;
}

struct CpuHolding {
  cpu @0 :UInt16;
  held @1 :List(CpuCap);       # the caps held literally (the ones it may grant)
  effective @2 :List(CpuCap);  # in force on that CPU now, implied caps included
}

interface CpuListener {
  capsUpdated @0 (cpus :List(UInt16));
  # Coalesced; says which CPUs changed, not how: query `holdings`.

  effectiveCapsUpdated @1 (cpu :UInt16, before :List(CpuCap), after :List(CpuCap));
  # Sent once a change is in effect on `cpu` (within one dispatch there).

  idle @2 (cpu :UInt16);
  # `cpu`, on which the scheduler holds enqImmed, went idle; sent again when
  # the scheduler gains a CPU that is sitting idle.
}

interface Subscription {
  # Dropping the last reference ends the subscription.
}

interface CpuDelegation {
  # Authority over one scheduler node and its direct children. Every call
  # fails closed: naming a scheduler that is not a direct child is
  # "invalidArgument"; after the grant is revoked, "disconnected: revoked";
  # once this node's scheduler is killed, "disconnected: stale".

  holdings @0 () -> (cpus :List(CpuHolding));
  children @1 () -> (names :List(Text));

  grant @2 (child :Text, cpus :List(UInt16), caps :List(CpuCap)) -> (denied :List(UInt16));
  # All or nothing per CPU, only caps this node holds literally; `denied`
  # lists the CPUs refused.

  revoke @3 (child :Text, cpus :List(UInt16), caps :List(CpuCap)) -> ();
  # Clears `caps` (and the caps that imply them) from `child` and its whole
  # subtree; queued and running threads there are evicted.

  childHoldings @4 (child :Text) -> (cpus :List(CpuHolding));
  subscribe @5 (listener :CpuListener) -> (handle :Subscription);

  kill @6 (child :Text, reason :Text) -> ();
  # Tears down `child`'s subtree; its threads re-home to this node with their
  # accounting intact, leaving a `parentKill` exit record.

  child @7 (name :Text) -> (node :CpuDelegation);
  # The child's node, so authority can be handed down one level.
}
