"""scx_simple for capos-sched: one global queue ordered by virtual time.

Run it:
    capos-sched simulate manifests/system-thread-fairness.cue \
        --policy examples/policies/simple.py

Every CPU takes the thread with the lowest vtime from one shared DSQ. A
sleeper banks at most one slice of credit (vtime is raised to the queue's
vtime minus a slice), and the queue's vtime only moves forward.
"""

SHARED_DSQ = 0


class SimplePolicy:
    name = "simple"

    def init(self, ctx):
        ctx.create_dsq(SHARED_DSQ, ordered=True)
        self.vtime_now = 0

    def select_cpu(self, ctx, thread, prev_cpu):
        idle = ctx.pick_idle_cpu(prev_cpu)
        return idle if idle >= 0 else max(prev_cpu, 0)

    def enqueue(self, ctx, thread, flags):
        floor = self.vtime_now - ctx.slice_ns
        if thread.virtual_runtime_ns < floor:  # limit the credit a sleeper banks
            ctx.raise_vruntime(thread, floor)
        ctx.insert(thread, SHARED_DSQ, key=thread.virtual_runtime_ns)
        idle = ctx.pick_idle_cpu(thread.last_cpu if thread.last_cpu is not None else -1)
        if idle >= 0:
            ctx.kick(idle)

    def dispatch(self, ctx, cpu):
        ctx.move_to_local(SHARED_DSQ, cpu)

    def running(self, ctx, thread):
        if thread.virtual_runtime_ns > self.vtime_now:  # global vtime only moves forward
            self.vtime_now = thread.virtual_runtime_ns


POLICY = SimplePolicy
