/* Optional compiled accelerator for the ordered DSQ (runqueue.VirtualFinishQueue).
 *
 * The pure-Python class in runqueue.py is the reference; this is the same
 * min-heap with lazy deletion, with the heap held as a C array of
 * (key, seq, seq object) instead of a list of Python ints. Semantics match
 * the reference exactly:
 * order by (key, seq), dead entries (seq absent from _entries) skipped at the
 * front, compaction when the heap exceeds 2 * live + 1. tests/core/test_accel.py
 * checks parity on random operation sequences.
 *
 * Keys must fit a signed 64-bit integer (the scheduler refuses others for both
 * implementations); seqs are the scheduler's enqueue counter (non-negative).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <structmember.h> /* PyMemberDef (in Python.h itself from 3.12 on) */

typedef struct {
    long long key;
    unsigned long long seq;
    PyObject *seqobj; /* strong reference; also the key of _entries while live */
} Entry;

struct HeapQueue {
    PyObject_HEAD
    Entry *heap;
    Py_ssize_t size;
    Py_ssize_t cap;
    PyObject *entries; /* dict: seq -> thread, the live entries */
};

static PyObject *str_queue_seq;

typedef struct HeapQueue HeapQueue;
static int heap_push(HeapQueue *q, PyObject *thread, long long key, unsigned long long seq,
                     PyObject *seqobj, Py_ssize_t seq_slot);

static inline int
entry_lt(const Entry *a, const Entry *b)
{
    return a->key < b->key || (a->key == b->key && a->seq < b->seq);
}

static void
sift_up(Entry *heap, Py_ssize_t pos)
{
    Entry item = heap[pos];
    while (pos > 0) {
        Py_ssize_t parent = (pos - 1) >> 1;
        if (!entry_lt(&item, &heap[parent]))
            break;
        heap[pos] = heap[parent];
        pos = parent;
    }
    heap[pos] = item;
}

static void
sift_down(Entry *heap, Py_ssize_t size, Py_ssize_t pos)
{
    Entry item = heap[pos];
    for (;;) {
        Py_ssize_t child = 2 * pos + 1;
        if (child >= size)
            break;
        if (child + 1 < size && entry_lt(&heap[child + 1], &heap[child]))
            child++;
        if (!entry_lt(&heap[child], &item))
            break;
        heap[pos] = heap[child];
        pos = child;
    }
    heap[pos] = item;
}

/* Remove the front entry; returns its seq object (a new reference to the caller). */
static PyObject *
heap_pop_front(HeapQueue *q)
{
    PyObject *seqobj = q->heap[0].seqobj;
    q->size--;
    if (q->size > 0) {
        q->heap[0] = q->heap[q->size];
        sift_down(q->heap, q->size, 0);
    }
    return seqobj;
}

/* Drop dead entries at the front. Returns the live front or NULL (empty);
 * *thread (if given) gets its thread, a borrowed reference. One dict lookup
 * per entry looked at. */
static Entry *
live_front(HeapQueue *q, PyObject **thread)
{
    while (q->size > 0) {
        PyObject *held = PyDict_GetItemWithError(q->entries, q->heap[0].seqobj);
        if (held != NULL) {
            if (thread != NULL)
                *thread = held;
            return &q->heap[0];
        }
        PyErr_Clear(); /* int keys: lookups cannot fail */
        Py_DECREF(heap_pop_front(q));
    }
    return NULL;
}

static PyObject *
HeapQueue_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    HeapQueue *q = (HeapQueue *)type->tp_alloc(type, 0);
    if (q == NULL)
        return NULL;
    q->entries = PyDict_New();
    if (q->entries == NULL) {
        Py_DECREF(q);
        return NULL;
    }
    q->heap = NULL;
    q->size = q->cap = 0;
    return (PyObject *)q;
}

static int
HeapQueue_traverse(HeapQueue *q, visitproc visit, void *arg)
{
    Py_VISIT(q->entries);
    return 0; /* seq objects are ints: no cycles through them */
}

static int
HeapQueue_clear(HeapQueue *q)
{
    Py_CLEAR(q->entries);
    return 0;
}

static void
HeapQueue_dealloc(HeapQueue *q)
{
    PyObject_GC_UnTrack(q);
    HeapQueue_clear(q);
    for (Py_ssize_t i = 0; i < q->size; i++)
        Py_DECREF(q->heap[i].seqobj);
    PyMem_Free(q->heap);
    q->heap = NULL;
    q->size = 0;
    Py_TYPE(q)->tp_free((PyObject *)q); /* a subclass's dealloc drops its type */
}

/* Compact: keep only live entries, re-heapify. */
static void
compact(HeapQueue *q)
{
    Py_ssize_t kept = 0;
    for (Py_ssize_t i = 0; i < q->size; i++) {
        if (PyDict_Contains(q->entries, q->heap[i].seqobj) > 0)
            q->heap[kept++] = q->heap[i];
        else
            Py_DECREF(q->heap[i].seqobj);
    }
    q->size = kept;
    for (Py_ssize_t i = kept / 2 - 1; i >= 0; i--)
        sift_down(q->heap, kept, i);
}

static int
discard_thread(HeapQueue *q, PyObject *thread)
{
    PyObject *qs = PyObject_GetAttr(thread, str_queue_seq);
    if (qs == NULL)
        return -1;
    PyObject *held = PyDict_GetItemWithError(q->entries, qs);
    if (held != thread) {
        Py_DECREF(qs);
        return PyErr_Occurred() ? -1 : 0;
    }
    int rc = PyDict_DelItem(q->entries, qs);
    Py_DECREF(qs);
    if (rc < 0)
        return -1;
    if (q->size > 2 * PyDict_GET_SIZE(q->entries) + 1)
        compact(q);
    return 0;
}

static PyObject *
HeapQueue_discard(HeapQueue *q, PyObject *thread)
{
    if (discard_thread(q, thread) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
HeapQueue_push(HeapQueue *q, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "push(thread, key, seq) takes 3 arguments");
        return NULL;
    }
    PyObject *thread = args[0], *keyobj = args[1], *seqobj = args[2];
    int overflow = 0;
    long long key = PyLong_AsLongLongAndOverflow(keyobj, &overflow);
    if (key == -1 && PyErr_Occurred())
        return NULL;
    if (overflow) {
        PyErr_SetString(PyExc_OverflowError, "ordered DSQ key outside the signed 64-bit range");
        return NULL;
    }
    unsigned long long seq = PyLong_AsUnsignedLongLong(seqobj);
    if (seq == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (heap_push(q, thread, key, seq, seqobj, -1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* push(thread, key, seq) once the arguments are C values: 0, or -1 with an
 * exception set. seq_slot: the offset of thread.queue_seq's slot (the fast
 * cycle knows it), or -1 to go through the attribute. */
static int
heap_push(HeapQueue *q, PyObject *thread, long long key, unsigned long long seq, PyObject *seqobj,
          Py_ssize_t seq_slot)
{
    /* A thread already live here moves (the reference: discard, then push).
     * The fast cycle (seq_slot >= 0) pushes a thread that was running, which
     * no DSQ holds (the ownership invariant): nothing to look up. */
    if (seq_slot < 0) {
        PyObject *qs = PyObject_GetAttr(thread, str_queue_seq);
        if (qs == NULL)
            return -1;
        int present = PyDict_Contains(q->entries, qs);
        Py_DECREF(qs);
        if (present < 0 || (present && discard_thread(q, thread) < 0))
            return -1;
    }
    if (q->size == q->cap) {
        Py_ssize_t cap = q->cap ? q->cap * 2 : 16;
        Entry *heap = PyMem_Realloc(q->heap, cap * sizeof(Entry));
        if (heap == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        q->heap = heap;
        q->cap = cap;
    }
    if (seq_slot < 0) {
        if (PyObject_SetAttr(thread, str_queue_seq, seqobj) < 0)
            return -1;
    }
    else {
        PyObject **p = (PyObject **)((char *)thread + seq_slot), *old = *p;
        *p = Py_NewRef(seqobj);
        Py_XDECREF(old);
    }
    if (PyDict_SetItem(q->entries, seqobj, thread) < 0)
        return -1;
    Py_INCREF(seqobj);
    Entry *e = &q->heap[q->size];
    e->key = key;
    e->seq = seq;
    e->seqobj = seqobj;
    sift_up(q->heap, q->size++);
    return 0;
}

/* entries.pop(seq, None) as a new reference (threads are never None). */
static inline PyObject *
dict_pop(PyObject *entries, PyObject *seqobj)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *value;
    if (PyDict_Pop(entries, seqobj, &value) < 0)
        return NULL;
    return value == NULL ? Py_NewRef(Py_None) : value;
#else
    return _PyDict_Pop(entries, seqobj, Py_None);
#endif
}

static PyObject *
HeapQueue_pop(HeapQueue *q, PyObject *unused)
{
    while (q->size > 0) {
        PyObject *seqobj = heap_pop_front(q);
        PyObject *thread = dict_pop(q->entries, seqobj); /* one lookup, not two */
        Py_DECREF(seqobj);
        if (thread == NULL)
            return NULL;
        if (thread != Py_None) {
            if (q->size > 2 * PyDict_GET_SIZE(q->entries) + 1)
                compact(q); /* dead entries left behind by discards */
            return thread;
        }
        Py_DECREF(thread);
    }
    Py_RETURN_NONE;
}

static PyObject *
HeapQueue_head_key(HeapQueue *q, PyObject *unused)
{
    Entry *e = live_front(q, NULL);
    if (e == NULL)
        Py_RETURN_NONE;
    return PyLong_FromLongLong(e->key);
}

static PyObject *
HeapQueue_front(HeapQueue *q, PyObject *unused)
{
    PyObject *thread;
    if (live_front(q, &thread) == NULL)
        Py_RETURN_NONE;
    return Py_NewRef(thread);
}

static PyObject *
HeapQueue_head(HeapQueue *q, PyObject *unused)
{
    PyObject *thread;
    Entry *e = live_front(q, &thread);
    if (e == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("(LO)", e->key, thread);
}

static PyObject *
HeapQueue_heap_size(HeapQueue *q, PyObject *unused)
{
    return PyLong_FromSsize_t(q->size);
}

/* (key, seq) of the heap slot ``index`` (array order; dead ones included). */
static PyObject *
HeapQueue_heap_at(HeapQueue *q, PyObject *arg)
{
    Py_ssize_t index = PyLong_AsSsize_t(arg);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (index < 0 || index >= q->size) {
        PyErr_SetString(PyExc_IndexError, "heap index out of range");
        return NULL;
    }
    return Py_BuildValue("(LO)", q->heap[index].key, q->heap[index].seqobj);
}

static Py_ssize_t
HeapQueue_len(HeapQueue *q)
{
    return PyDict_GET_SIZE(q->entries);
}

static PyObject *
HeapQueue_get_entries(HeapQueue *q, void *closure)
{
    return Py_NewRef(q->entries);
}

static PyMethodDef HeapQueue_methods[] = {
    {"push", (PyCFunction)(void (*)(void))HeapQueue_push, METH_FASTCALL,
     "push(thread, key, seq): queue thread at (key, seq); a live thread moves."},
    {"pop", (PyCFunction)HeapQueue_pop, METH_NOARGS, "The front thread, taken out (None when empty)."},
    {"head", (PyCFunction)HeapQueue_head, METH_NOARGS, "(key, thread) of the front, or None."},
    {"front", (PyCFunction)HeapQueue_front, METH_NOARGS, "The front thread, or None."},
    {"head_key", (PyCFunction)HeapQueue_head_key, METH_NOARGS, "The front's key, or None."},
    {"discard", (PyCFunction)HeapQueue_discard, METH_O, "Take thread out if live here."},
    {"_heap_size", (PyCFunction)HeapQueue_heap_size, METH_NOARGS, "Heap slots, dead included."},
    {"_heap_at", (PyCFunction)HeapQueue_heap_at, METH_O, "(key, seq) of a heap slot."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef HeapQueue_getset[] = {
    {"_entries", (getter)HeapQueue_get_entries, NULL, "seq -> thread of the live entries", NULL},
    {NULL},
};

static PySequenceMethods HeapQueue_as_sequence = {
    .sq_length = (lenfunc)HeapQueue_len,
};

static PyTypeObject HeapQueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "capos_sched.core._accel.HeapQueue",
    .tp_basicsize = sizeof(HeapQueue),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Min-heap of threads by (key, seq) with lazy deletion (see runqueue.py).",
    .tp_new = HeapQueue_new,
    .tp_dealloc = (destructor)HeapQueue_dealloc,
    .tp_traverse = (traverseproc)HeapQueue_traverse,
    .tp_clear = (inquiry)HeapQueue_clear,
    .tp_methods = HeapQueue_methods,
    .tp_getset = HeapQueue_getset,
    .tp_as_sequence = &HeapQueue_as_sequence,
};

/* ===================================================================== */
/* WfqCycle: the dispatch cycle of the built-in WFQ policy, accelerated.
 *
 * The accelerated twin of Scheduler.preempt_current and Scheduler.pick_next
 * (scheduler.py) with WfqPolicy's callbacks (policies/wfq.py: stopping,
 * enqueue with ctx.insert, dispatch with the steal/pull walk over the heap of
 * fronts and move_to_local, running). The Python code is the reference.
 *
 * Scheduler._bind_fast_cycle builds one per policy install of the built-in
 * WFQ on these queues and binds its two methods on the scheduler; _install
 * unbinds them before any other policy takes over, and so does a
 * sub-scheduler's first attach (subsched._route): the callbacks are WFQ's
 * whenever these run. Each call then checks the rest of the common case (no
 * kill pending, no IPC slot, nothing in the local or global DSQ, no kicks
 * left to reset, the policy's queues list not replaced, every integer within
 * 64 bits ...) and otherwise calls the Python method, before changing
 * anything. In the common case it makes the same writes the Python code makes,
 * to the same objects, in the same data structures (the heap of fronts stays a
 * Python list kept as _heapq keeps it), so either path may follow the other.
 * tests/core/test_accel.py drives both with the same random sequences and
 * compares the results and the whole state after every step.
 *
 * It reads the slotted attrs classes (Thread, Cpu, Dispatch, FifoQueue) through
 * their member-descriptor offsets, and the scheduler's and the policy's
 * attributes in their instance dicts: what the attribute lookups of the
 * reference come down to, without the lookups.
 */

enum {
    /* Thread slots */
    T_TID, T_NAME, T_WEIGHT, T_LATENCY_CLASS, T_RUNTIME, T_VRUNTIME, T_LAST_STARTED, T_STATE,
    T_LAST_CPU, T_RUNNABLE_SINCE, T_CONTEXT_SWITCHES, T_PREEMPTIONS, T_MIGRATIONS, T_OWNER,
    T_SLICE, T_DISPATCH_SOURCE, T_WAIT_MARK, T_REF, T_REMAINDER, T_QUEUE_SEQ,
    /* Cpu slots */
    C_LOCAL, C_RUNNING_TAG, C_CURRENT, C_IPC_SLOT, C_LAST_TID, C_RUNNING_FINISH, C_IDLE,
    /* Dispatch slots */
    D_CPU, D_THREAD, D_NAME, D_BUDGET, D_FINISH, D_SOURCE,
    /* FifoQueue slot */
    F_ENTRIES,
    NSLOTS
};

static const char *const slot_names[NSLOTS] = {
    "tid", "name", "weight", "latency_class", "runtime_ns", "virtual_runtime_ns",
    "last_started_ns", "state", "last_cpu", "runnable_since_ns", "context_switches",
    "preemptions", "migrations", "owner", "slice_ns", "dispatch_source", "wait_mark_ns", "ref",
    "_vruntime_remainder", "queue_seq",
    "local", "running_tag", "current", "ipc_slot", "last_tid", "running_finish", "idle",
    "cpu", "thread", "name", "budget_ns", "virtual_finish_ns", "source",
    "_entries",
};

/* Interned names of the scheduler's and the policy's instance attributes. */
enum {
    S_ROUTED, S_POLICY, S_EPOCH, S_CB_STOPPING, S_CB_ENQUEUE, S_CB_DISPATCH, S_CB_RUNNING,
    S_KILL_PENDING, S_CHARGED, S_NR_BUSY, S_NOW, S_IDLE_ACC, S_NR_IDLE, S_IDLE_CHANGED,
    S_ENQUEUE_SEQ, S_FX, S_KICKS, S_HANDOFF, S_DISPATCHING, S_SLICE,
    P_VTIME, P_SLICE, P_CLASS_SLICE, P_QUEUES, P_FRONTS, P_BITS, P_MASK, P_DIRTY, P_PULL,
    NNAMES
};

static const char *const attr_names[NNAMES] = {
    "_routed", "_policy", "_epoch", "_cb_stopping", "_cb_enqueue", "_cb_dispatch",
    "_cb_running", "_kill_pending", "_charged_ns", "_nr_busy", "now_ns", "_idle_acc_ns",
    "_nr_idle", "_idle_changed_ns", "_enqueue_seq", "_fx", "_kicks", "_handoff",
    "_dispatching", "slice_ns",
    "vtime", "slice_ns", "class_slice", "queues", "_fronts", "_bits", "_mask", "_dirty",
    "pull_threshold_ns",
};

static PyObject *attr_str[NNAMES];
static PyObject *str_steal, *str_pull, *str_queue, *str_rebuild_fronts;

typedef struct {
    PyObject_HEAD
    PyObject *sched, *sched_dict, *policy, *policy_dict;
    PyObject *cpus;                   /* list of Cpu */
    PyObject *global_entries_owner;   /* the global FifoQueue */
    PyObject *thread_type, *cpu_type, *dispatch_type, *fifo_type;
    PyObject *running_state, *runnable_state, *interactive, *batch;
    PyObject *fallback_preempt, *fallback_pick;   /* Scheduler.preempt_current, .pick_next */
    /* Set once (in Scheduler.__init__ and WfqPolicy.init) and never rebound:
     * read when this object is built. */
    PyObject *kill_pending, *kicks;                   /* the scheduler's set and list */
    PyObject *vtime, *queues, *dirty, *class_slice, *bits_obj, *mask_obj; /* the policy's */
    long long bits, mask, slice, pull, sched_slice;
    PyObject *class_keys[4], *class_values[4]; /* class_slice's items (borrowed from it) */
    Py_ssize_t nr_cpus;
    Py_ssize_t calls, fallbacks; /* calls made, and how many ran the Python methods */
    long long ref_weight, interactive_divisor, batch_multiplier;
    Py_ssize_t off[NSLOTS];
    Py_ssize_t attr_off[NNAMES]; /* slot offsets of the attributes, -1: in __dict__ */
} WfqCycle;

#define SLOT(obj, self, i) (*(PyObject **)((char *)(obj) + (self)->off[i]))

static inline void
set_slot(WfqCycle *self, PyObject *obj, int i, PyObject *value)
{
    PyObject **p = (PyObject **)((char *)obj + self->off[i]);
    PyObject *old = *p;
    Py_INCREF(value);
    *p = value;
    Py_XDECREF(old);
}

/* set_slot with a new reference (stolen); -1 if value is NULL. */
static inline int
set_slot_new(WfqCycle *self, PyObject *obj, int i, PyObject *value)
{
    if (value == NULL)
        return -1;
    PyObject **p = (PyObject **)((char *)obj + self->off[i]);
    PyObject *old = *p;
    *p = value;
    Py_XDECREF(old);
    return 0;
}

/* An exact int that fits 64 bits: 1 and *out, else 0 (no error set). */
static inline __attribute__((always_inline)) int
as_ll(PyObject *o, long long *out)
{
    if (o == NULL || !PyLong_CheckExact(o))
        return 0;
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)o)) {
        *out = (long long)PyUnstable_Long_CompactValue((PyLongObject *)o);
        return 1;
    }
#else
    /* Up to two 30-bit digits (|value| < 2**60): what PyLong_AsLongLong
     * computes, without its call and overflow checks (the hot path). */
    Py_ssize_t size = Py_SIZE(o);
    const digit *d = ((PyLongObject *)o)->ob_digit;
    if (size >= -2 && size <= 2) {
        long long v = size == 0 ? 0
                      : (size == 1 || size == -1)
                          ? (long long)d[0]
                          : (long long)d[0] | ((long long)d[1] << PyLong_SHIFT);
        *out = size < 0 ? -v : v;
        return 1;
    }
#endif
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    *out = v;
    return 1;
}

/* The scheduler's and the policy's attributes: a slot (attr_off >= 0: the
 * counters the cycle changes are __slots__ of Scheduler and WfqPolicy, read
 * here as their member descriptors would) or an entry of the instance dict. */
static inline PyObject *
sched_get(WfqCycle *self, int name)
{
    if (self->attr_off[name] >= 0)
        return *(PyObject **)((char *)self->sched + self->attr_off[name]); /* borrowed */
    return PyDict_GetItemWithError(self->sched_dict, attr_str[name]);
}

static inline PyObject *
policy_get(WfqCycle *self, int name)
{
    if (self->attr_off[name] >= 0)
        return *(PyObject **)((char *)self->policy + self->attr_off[name]);
    return PyDict_GetItemWithError(self->policy_dict, attr_str[name]);
}

/* self.<name> = value (a borrowed value) */
static inline int
sched_set(WfqCycle *self, int name, PyObject *value)
{
    if (self->attr_off[name] >= 0) {
        PyObject **p = (PyObject **)((char *)self->sched + self->attr_off[name]), *old = *p;
        *p = Py_NewRef(value);
        Py_XDECREF(old);
        return 0;
    }
    return PyDict_SetItem(self->sched_dict, attr_str[name], value);
}

/* sched_set with a new reference (stolen); -1 if value is NULL. */
static inline int
sched_set_new(WfqCycle *self, int name, PyObject *value)
{
    if (value == NULL)
        return -1;
    int rc = sched_set(self, name, value);
    Py_DECREF(value);
    return rc;
}

/* The borrowed thread object at the front of a HeapQueue, or NULL (empty). */
static PyObject *
queue_front_thread(HeapQueue *q)
{
    PyObject *thread = NULL;
    return live_front(q, &thread) == NULL ? NULL : thread;
}

/* vruntime + budget * REF // weight, exactly (64-bit fast, Python ints else). */
static PyObject *
virtual_finish(WfqCycle *self, PyObject *vr, PyObject *budget, PyObject *weight)
{
    long long v, b, w, scaled, finish;
    if (as_ll(vr, &v) && as_ll(budget, &b) && as_ll(weight, &w) && w > 0 && b >= 0
        && !__builtin_mul_overflow(b, self->ref_weight, &scaled)
        && !__builtin_add_overflow(v, scaled / w, &finish))
        return PyLong_FromLongLong(finish);
    PyObject *ref = PyLong_FromLongLong(self->ref_weight);
    if (ref == NULL)
        return NULL;
    PyObject *product = PyNumber_Multiply(budget, ref);
    Py_DECREF(ref);
    if (product == NULL)
        return NULL;
    PyObject *quotient = PyNumber_FloorDivide(product, weight);
    Py_DECREF(product);
    if (quotient == NULL)
        return NULL;
    PyObject *sum = PyNumber_Add(vr, quotient);
    Py_DECREF(quotient);
    return sum;
}

/* obj + delta as a new Python int. */
static PyObject *
add_ll(PyObject *obj, long long delta)
{
    long long v, r;
    if (as_ll(obj, &v) && !__builtin_add_overflow(v, delta, &r))
        return PyLong_FromLongLong(r);
    PyObject *d = PyLong_FromLongLong(delta);
    if (d == NULL)
        return NULL;
    PyObject *sum = PyNumber_Add(obj, d);
    Py_DECREF(d);
    return sum;
}

static PyObject *
call_fallback(WfqCycle *self, PyObject *fn, PyObject *const *args, size_t nargsf,
              PyObject *kwnames)
{
    self->fallbacks++;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    PyObject *small[8];
    PyObject **stack = small;
    if (total + 1 > 8) {
        stack = PyMem_Malloc((total + 1) * sizeof(PyObject *));
        if (stack == NULL)
            return PyErr_NoMemory();
    }
    stack[0] = self->sched;
    for (Py_ssize_t i = 0; i < total; i++)
        stack[i + 1] = args[i];
    PyObject *result = PyObject_Vectorcall(fn, stack, nargs + 1, kwnames);
    if (stack != small)
        PyMem_Free(stack);
    return result;
}

/* The heap of fronts: a Python list of ints, kept by the algorithm of the
 * _heapq module (heappush, heappop, heapreplace), so that the list is the same
 * slot for slot whichever path changed it. Entries are exact ints: compared
 * in C when they fit 64 bits. */
static inline int
fronts_lt(PyObject *a, PyObject *b)
{
    long long x, y;
    if (as_ll(a, &x) && as_ll(b, &y))
        return x < y;
    return PyObject_RichCompareBool(a, b, Py_LT);
}

/* _heapq's siftdown: move arr[pos] up towards startpos. */
static int
fronts_siftdown(PyObject *heap, Py_ssize_t startpos, Py_ssize_t pos)
{
    PyObject **arr = ((PyListObject *)heap)->ob_item;
    PyObject *newitem = arr[pos];
    while (pos > startpos) {
        Py_ssize_t parentpos = (pos - 1) >> 1;
        PyObject *parent = arr[parentpos];
        int lt = fronts_lt(newitem, parent);
        if (lt < 0)
            return -1;
        if (!lt)
            break;
        arr[parentpos] = newitem;
        arr[pos] = parent;
        pos = parentpos;
    }
    return 0;
}

/* _heapq's siftup: the smaller child rises to pos until a leaf, then siftdown. */
static int
fronts_siftup(PyObject *heap, Py_ssize_t pos)
{
    Py_ssize_t endpos = PyList_GET_SIZE(heap), startpos = pos, limit = endpos >> 1;
    PyObject **arr = ((PyListObject *)heap)->ob_item;
    while (pos < limit) {
        Py_ssize_t childpos = 2 * pos + 1;
        if (childpos + 1 < endpos) {
            int lt = fronts_lt(arr[childpos], arr[childpos + 1]);
            if (lt < 0)
                return -1;
            childpos += lt ^ 1;
        }
        PyObject *tmp = arr[childpos];
        arr[childpos] = arr[pos];
        arr[pos] = tmp;
        pos = childpos;
    }
    return fronts_siftdown(heap, startpos, pos);
}

static int
fronts_push(PyObject *heap, PyObject *item)
{
    if (PyList_Append(heap, item) < 0)
        return -1;
    return fronts_siftdown(heap, 0, PyList_GET_SIZE(heap) - 1);
}

/* heappop: a new reference to the smallest entry (the list is not empty). */
static PyObject *
fronts_pop(PyObject *heap)
{
    Py_ssize_t n = PyList_GET_SIZE(heap);
    PyObject *last = PyList_GET_ITEM(heap, n - 1);
    Py_INCREF(last);
    if (PyList_SetSlice(heap, n - 1, n, NULL) < 0) {
        Py_DECREF(last);
        return NULL;
    }
    if (n == 1)
        return last;
    PyObject *top = PyList_GET_ITEM(heap, 0);
    PyList_SET_ITEM(heap, 0, last); /* the list's reference to top is now ours */
    if (fronts_siftup(heap, 0) < 0) {
        Py_DECREF(top);
        return NULL;
    }
    return top;
}

/* heapreplace: the smallest entry is dropped and item pushed. */
static int
fronts_replace(PyObject *heap, PyObject *item)
{
    PyObject *top = PyList_GET_ITEM(heap, 0);
    Py_INCREF(item);
    PyList_SET_ITEM(heap, 0, item);
    Py_DECREF(top);
    return fronts_siftup(heap, 0);
}

/* The policy's side structures, as one call sees them (borrowed). */
typedef struct {
    PyObject *vtime, *queues, *fronts, *dirty, *class_slice, *bits_obj, *mask_obj;
    long long bits, mask, slice, pull;
} PolicyView;

/* The policy's side structures. WfqPolicy rebinds only _fronts (its
 * _rebuild_fronts); queues is checked because tests wrap it (and then the
 * Python methods run). */
static int
policy_view(WfqCycle *self, PolicyView *pv)
{
    if (policy_get(self, P_QUEUES) != self->queues)
        return 0;
    pv->fronts = policy_get(self, P_FRONTS);
    if (pv->fronts == NULL || !PyList_CheckExact(pv->fronts))
        return 0;
    pv->vtime = self->vtime;
    pv->queues = self->queues;
    pv->dirty = self->dirty;
    pv->class_slice = self->class_slice;
    pv->bits_obj = self->bits_obj;
    pv->mask_obj = self->mask_obj;
    pv->bits = self->bits;
    pv->mask = self->mask;
    pv->slice = self->slice;
    pv->pull = self->pull;
    return 1;
}

static PyObject *
WfqCycle_preempt_current(WfqCycle *self, PyObject *const *args, size_t nargsf,
                         PyObject *kwnames)
{
    self->calls++;
    if (kwnames != NULL || PyVectorcall_NARGS(nargsf) != 3)
        goto fallback;
    long long cpu_id, now, elapsed;
    if (!as_ll(args[0], &cpu_id) || cpu_id < 0 || cpu_id >= self->nr_cpus
        || !as_ll(args[1], &now) || !as_ll(args[2], &elapsed) || elapsed < 0
        || elapsed > (1LL << 40))
        goto fallback;
    if (PySet_GET_SIZE(self->kill_pending) != 0)
        goto fallback;
    PyObject *cpu = PyList_GET_ITEM(self->cpus, cpu_id);
    PyObject *thread = SLOT(cpu, self, C_CURRENT);
    if (thread == NULL || Py_TYPE(thread) != (PyTypeObject *)self->thread_type)
        goto fallback;
    PolicyView pv;
    if (!policy_view(self, &pv))
        goto fallback;
    /* Everything read and computed before anything is written. */
    long long runtime, remainder, weight, vr, preemptions, last_cpu;
    long long charged, nr_busy, idle_acc, nr_idle, idle_changed, seq, vtime;
    if (!as_ll(SLOT(thread, self, T_RUNTIME), &runtime)
        || !as_ll(SLOT(thread, self, T_REMAINDER), &remainder)
        || !as_ll(SLOT(thread, self, T_WEIGHT), &weight) || weight < 1
        || !as_ll(SLOT(thread, self, T_VRUNTIME), &vr)
        || !as_ll(SLOT(thread, self, T_PREEMPTIONS), &preemptions)
        || !as_ll(SLOT(thread, self, T_LAST_CPU), &last_cpu) || last_cpu < 0
        || last_cpu >= self->nr_cpus || !as_ll(sched_get(self, S_CHARGED), &charged)
        || !as_ll(sched_get(self, S_NR_BUSY), &nr_busy)
        || !as_ll(sched_get(self, S_IDLE_ACC), &idle_acc)
        || !as_ll(sched_get(self, S_NR_IDLE), &nr_idle)
        || !as_ll(sched_get(self, S_IDLE_CHANGED), &idle_changed)
        || !as_ll(sched_get(self, S_ENQUEUE_SEQ), &seq) || seq < 0
        || !as_ll(PyList_GET_ITEM(pv.vtime, last_cpu), &vtime))
        goto fallback;
    PyObject *budget_obj = NULL, *cls = SLOT(thread, self, T_LATENCY_CLASS);
    for (int c = 0; c < 4; c++)
        if (self->class_keys[c] == cls)
            budget_obj = self->class_values[c];
    long long budget;
    if (budget_obj == NULL || !as_ll(budget_obj, &budget) || budget < 0)
        goto fallback;
    HeapQueue *queue = (HeapQueue *)PyList_GET_ITEM(pv.queues, last_cpu);
    PyObject *dsqs = NULL; /* ctx.insert's _dsqs[cpu] is the policy's queue (checked at build) */
    (void)dsqs;
    long long new_runtime, scaled, new_vr, new_charged, wait_mark, floor, scaled_budget, finish;
    if (__builtin_add_overflow(runtime, elapsed, &new_runtime)
        || __builtin_mul_overflow(elapsed, self->ref_weight, &scaled)
        || __builtin_add_overflow(scaled, remainder, &scaled) || scaled < 0
        || __builtin_add_overflow(vr, scaled / weight, &new_vr)
        || __builtin_add_overflow(charged, elapsed, &new_charged)
        || __builtin_sub_overflow(vtime, pv.slice, &floor)
        || __builtin_mul_overflow(budget, self->ref_weight, &scaled_budget))
        goto fallback;
    long long new_remainder = scaled % weight;
    long long idle_part = 0;
    if (nr_idle) {
        long long span;
        if (__builtin_sub_overflow(now, idle_changed, &span)
            || __builtin_mul_overflow(nr_idle, span, &idle_part))
            goto fallback;
    }
    if (__builtin_add_overflow(new_charged, idle_acc, &wait_mark)
        || __builtin_add_overflow(wait_mark, idle_part, &wait_mark))
        goto fallback;
    if (new_vr < floor)
        new_vr = floor; /* ctx.raise_vruntime: the lag clamp */
    if (__builtin_add_overflow(new_vr, scaled_budget / weight, &finish))
        goto fallback;
    /* A new front pushes finish << bits | cpu onto the heap of fronts. */
    PyObject *front_key = NULL;
    long long old_front = 0;
    Entry *front_entry = live_front(queue, NULL);
    if (front_entry != NULL)
        old_front = front_entry->key;
    int new_front = front_entry == NULL || finish < old_front;
    long long front_entry_value = 0;
    if (new_front) {
        long long limit = LLONG_MAX >> pv.bits;
        if (finish > limit || finish < -limit - 1)
            goto fallback;
        front_entry_value = (long long)((unsigned long long)finish << pv.bits) | last_cpu;
    }

    /* charge_runtime and the mechanism's stop */
    PyObject *last_cpu_obj = SLOT(thread, self, T_LAST_CPU);
    Py_INCREF(thread);
    Py_INCREF(last_cpu_obj);
    PyObject *result = NULL;
    if (set_slot_new(self, thread, T_RUNTIME, PyLong_FromLongLong(new_runtime)) < 0
        || set_slot_new(self, thread, T_REMAINDER, PyLong_FromLongLong(new_remainder)) < 0
        || sched_set_new(self, S_CHARGED, PyLong_FromLongLong(new_charged)) < 0)
        goto done;
    set_slot(self, cpu, C_CURRENT, Py_None);
    if (sched_set_new(self, S_NR_BUSY, PyLong_FromLongLong(nr_busy - 1)) < 0)
        goto done;
    set_slot(self, thread, T_OWNER, Py_None);
    set_slot(self, thread, T_STATE, self->runnable_state);
    if (set_slot_new(self, thread, T_PREEMPTIONS, PyLong_FromLongLong(preemptions + 1)) < 0
        || sched_set(self, S_NOW, args[1]) < 0)
        goto done;
    /* stopping: the CPU's load changed */
    if (PySet_Add(pv.dirty, last_cpu_obj) < 0)
        goto done;
    set_slot(self, thread, T_RUNNABLE_SINCE, args[1]);
    if (set_slot_new(self, thread, T_WAIT_MARK, PyLong_FromLongLong(wait_mark)) < 0)
        goto done;
    /* enqueue(ENQ_PREEMPTED): lag clamp, virtual finish, ctx.insert */
    if (set_slot_new(self, thread, T_VRUNTIME, PyLong_FromLongLong(new_vr)) < 0)
        goto done;
    set_slot(self, thread, T_SLICE, budget_obj);
    PyObject *seqobj = PyLong_FromLongLong(seq + 1);
    if (seqobj == NULL)
        goto done;
    if (sched_set(self, S_ENQUEUE_SEQ, seqobj) < 0
        || heap_push(queue, thread, finish, (unsigned long long)(seq + 1), seqobj,
                     self->off[T_QUEUE_SEQ]) < 0) {
        Py_DECREF(seqobj);
        goto done;
    }
    Py_DECREF(seqobj);
    set_slot(self, thread, T_OWNER, (PyObject *)queue);
    /* (enqueue marks last_cpu dirty again: stopping just did) */
    if (new_front) {
        front_key = PyLong_FromLongLong(front_entry_value);
        if (front_key == NULL)
            goto done;
        int rc = fronts_push(pv.fronts, front_key);
        Py_DECREF(front_key);
        if (rc < 0)
            goto done;
        if (PyList_GET_SIZE(pv.fronts) > 4 * self->nr_cpus + 16) {
            PyObject *r = PyObject_CallMethodNoArgs(self->policy, str_rebuild_fronts);
            if (r == NULL)
                goto done;
            Py_DECREF(r);
        }
    }
    result = Py_NewRef(SLOT(thread, self, T_REF));
done:
    Py_DECREF(last_cpu_obj);
    Py_DECREF(thread);
    return result;
fallback:
    if (PyErr_Occurred())
        return NULL;
    return call_fallback(self, self->fallback_preempt, args, nargsf, kwnames);
}

/* (front key, CPU) of the lowest sibling front, as WfqPolicy._lowest_sibling:
 * 1 found, 0 none, -1 error. Repairs stale entries exactly as it does. */
static int
lowest_sibling(WfqCycle *self, PolicyView *pv, long long cpu, Entry *own_front,
               long long *key_out, long long *k_out)
{
    PyObject *fronts = pv->fronts;
    PyObject *own = NULL;
    int found = 0;
    while (PyList_GET_SIZE(fronts) > 0) {
        PyObject *entry = PyList_GET_ITEM(fronts, 0);
        long long e, k, key = 0;
        int key_fits;
        if (as_ll(entry, &e)) {
            k = e & pv->mask;
            key = e >> pv->bits; /* arithmetic: floors, as Python's >> */
            key_fits = 1;
        }
        else {
            PyObject *kobj = PyNumber_And(entry, pv->mask_obj);
            if (kobj == NULL)
                goto error;
            k = PyLong_AsLongLong(kobj);
            Py_DECREF(kobj);
            PyObject *keyobj = PyNumber_Rshift(entry, pv->bits_obj);
            if (keyobj == NULL)
                goto error;
            key_fits = as_ll(keyobj, &key);
            Py_DECREF(keyobj);
        }
        if (k < 0 || k >= self->nr_cpus) {
            PyErr_SetString(PyExc_IndexError, "list index out of range");
            goto error;
        }
        /* (the walk changes no queue: our own front is the one dispatch saw) */
        Entry *true_front =
            k == cpu ? own_front : live_front((HeapQueue *)PyList_GET_ITEM(pv->queues, k), NULL);
        if (true_front == NULL || !key_fits || true_front->key != key) {
            if (true_front == NULL) {
                PyObject *r = fronts_pop(fronts);
                if (r == NULL)
                    goto error;
                Py_DECREF(r);
            }
            else {
                long long tk = true_front->key, limit = LLONG_MAX >> pv->bits;
                PyObject *replacement;
                if (tk <= limit && tk >= -limit - 1)
                    replacement = PyLong_FromLongLong(
                        (long long)((unsigned long long)tk << pv->bits) | k);
                else {
                    PyObject *tkobj = PyLong_FromLongLong(tk), *kobj = PyLong_FromLongLong(k);
                    PyObject *shifted =
                        tkobj == NULL ? NULL : PyNumber_Lshift(tkobj, pv->bits_obj);
                    replacement = shifted == NULL || kobj == NULL ? NULL
                                                                  : PyNumber_Or(shifted, kobj);
                    Py_XDECREF(tkobj);
                    Py_XDECREF(kobj);
                    Py_XDECREF(shifted);
                }
                if (replacement == NULL)
                    goto error;
                int rc = fronts_replace(fronts, replacement);
                Py_DECREF(replacement);
                if (rc < 0)
                    goto error;
            }
        }
        else if (k == cpu) {
            if (own == NULL && (own = PyList_New(0)) == NULL)
                goto error;
            PyObject *r = fronts_pop(fronts);
            if (r == NULL)
                goto error;
            int rc = PyList_Append(own, r);
            Py_DECREF(r);
            if (rc < 0)
                goto error;
        }
        else {
            *key_out = key;
            *k_out = k;
            found = 1;
            break;
        }
    }
    if (own != NULL) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(own); i++)
            if (fronts_push(fronts, PyList_GET_ITEM(own, i)) < 0)
                goto error;
        Py_DECREF(own);
    }
    return found;
error:
    Py_XDECREF(own);
    return -1;
}

/* Scheduler._go_idle */
static int
go_idle(WfqCycle *self, PyObject *cpu, PyObject *now)
{
    if (PyObject_IsTrue(SLOT(cpu, self, C_IDLE)))
        return 0;
    PyObject *nr_idle = sched_get(self, S_NR_IDLE);
    PyObject *span = PyNumber_Subtract(now, sched_get(self, S_IDLE_CHANGED));
    if (span == NULL)
        return -1;
    long long sp;
    if (!as_ll(span, &sp) || sp < 0) {
        Py_DECREF(span);
        span = PyLong_FromLong(0); /* max(0, now - changed) */
        if (span == NULL)
            return -1;
    }
    PyObject *part = PyNumber_Multiply(nr_idle, span);
    Py_DECREF(span);
    if (part == NULL)
        return -1;
    PyObject *acc = PyNumber_Add(sched_get(self, S_IDLE_ACC), part);
    Py_DECREF(part);
    if (sched_set_new(self, S_IDLE_ACC, acc) < 0
        || sched_set(self, S_IDLE_CHANGED, now) < 0
        || sched_set_new(self, S_NR_IDLE, add_ll(nr_idle, 1)) < 0)
        return -1;
    set_slot(self, cpu, C_IDLE, Py_True);
    return 0;
}

static PyObject *
WfqCycle_pick_next(WfqCycle *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    self->calls++;
    if (kwnames != NULL || PyVectorcall_NARGS(nargsf) != 2)
        goto fallback;
    long long cpu_id, now;
    if (!as_ll(args[0], &cpu_id) || cpu_id < 0 || cpu_id >= self->nr_cpus
        || !as_ll(args[1], &now))
        goto fallback;
    PyObject *cpu = PyList_GET_ITEM(self->cpus, cpu_id);
    PyObject *local = SLOT(cpu, self, C_LOCAL);
    PyObject *kicks = self->kicks;
    PyObject *local_entries = SLOT(local, self, F_ENTRIES);
    PyObject *global_entries = SLOT(self->global_entries_owner, self, F_ENTRIES);
    /* _handoff and _dispatching are set only while a dispatch callback runs,
     * and WFQ's never calls pick_next. */
    if (SLOT(cpu, self, C_CURRENT) != Py_None || SLOT(cpu, self, C_IPC_SLOT) != Py_None
        || (PyList_GET_SIZE(kicks) && sched_get(self, S_FX) == Py_None)
        || local_entries == NULL || !PyDict_CheckExact(local_entries)
        || PyDict_GET_SIZE(local_entries) || global_entries == NULL
        || !PyDict_CheckExact(global_entries) || PyDict_GET_SIZE(global_entries))
        goto fallback;
    PolicyView pv;
    if (!policy_view(self, &pv))
        goto fallback;
    long long sched_slice = self->sched_slice;

    if (sched_set(self, S_NOW, args[1]) < 0)
        return NULL;
    /* WfqPolicy.dispatch: steal, pull, or our own front */
    HeapQueue *own = (HeapQueue *)PyList_GET_ITEM(pv.queues, cpu_id);
    PyObject *own_thread = NULL;
    Entry *own_front = live_front(own, &own_thread);
    long long own_key = own_front == NULL ? 0 : own_front->key;
    long long victim_key = 0, victim = -1;
    int found = lowest_sibling(self, &pv, cpu_id, own_front, &victim_key, &victim);
    if (found < 0)
        return NULL;
    HeapQueue *source_queue = NULL;
    PyObject *source = str_queue;
    if (found && (own_front == NULL || (__int128)victim_key <= (__int128)own_key - pv.pull)) {
        PyObject *v = PyLong_FromLongLong(victim);
        if (v == NULL || PySet_Add(pv.dirty, v) < 0) {
            Py_XDECREF(v);
            return NULL;
        }
        Py_DECREF(v);
        source_queue = (HeapQueue *)PyList_GET_ITEM(pv.queues, victim);
        source = own_front == NULL ? str_steal : str_pull;
    }
    else if (own_front != NULL) {
        if (PySet_Add(pv.dirty, args[0]) < 0)
            return NULL;
        source_queue = own; /* (running marks this CPU dirty again) */
    }
    PyObject *thread = NULL;
    if (source_queue != NULL) {
        thread = HeapQueue_pop(source_queue, NULL); /* new reference, or None */
        if (thread == NULL)
            return NULL;
        if (thread == Py_None)
            Py_CLEAR(thread);
    }
    if (thread == NULL) {
        if (go_idle(self, cpu, args[1]) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    if (Py_TYPE(thread) != (PyTypeObject *)self->thread_type) {
        Py_DECREF(thread);
        PyErr_SetString(PyExc_SystemError, "WfqCycle: a queued object is not a Thread");
        return NULL;
    }
    PyObject *result = NULL;
    PyObject *dispatch = NULL;
    /* move_to_local's hand-over (and pick_next's own _assign_cpu) */
    long long last_cpu;
    if (!as_ll(SLOT(thread, self, T_LAST_CPU), &last_cpu) || last_cpu != cpu_id) {
        PyObject *last = SLOT(thread, self, T_LAST_CPU);
        if (last != Py_None
            && set_slot_new(self, thread, T_MIGRATIONS,
                            add_ll(SLOT(thread, self, T_MIGRATIONS), 1)) < 0)
            goto done;
        set_slot(self, thread, T_LAST_CPU, args[0]);
    }
    set_slot(self, thread, T_DISPATCH_SOURCE, source);
    /* pick_next's tail */
    if (PyObject_IsTrue(SLOT(cpu, self, C_IDLE))) {
        PyObject *span = PyNumber_Subtract(args[1], sched_get(self, S_IDLE_CHANGED));
        if (span == NULL)
            goto done;
        long long sp;
        if (!as_ll(span, &sp) || sp < 0) {
            Py_DECREF(span);
            if ((span = PyLong_FromLong(0)) == NULL)
                goto done;
        }
        PyObject *nr_idle = sched_get(self, S_NR_IDLE);
        PyObject *part = PyNumber_Multiply(nr_idle, span);
        Py_DECREF(span);
        if (part == NULL)
            goto done;
        PyObject *acc = PyNumber_Add(sched_get(self, S_IDLE_ACC), part);
        Py_DECREF(part);
        if (sched_set_new(self, S_IDLE_ACC, acc) < 0
            || sched_set(self, S_IDLE_CHANGED, args[1]) < 0
            || sched_set_new(self, S_NR_IDLE, add_ll(nr_idle, -1)) < 0)
            goto done;
        set_slot(self, cpu, C_IDLE, Py_False);
    }
    PyObject *tid = SLOT(thread, self, T_TID);
    long long a, b;
    int same = as_ll(SLOT(cpu, self, C_LAST_TID), &a) && as_ll(tid, &b)
                   ? a == b
                   : PyObject_RichCompareBool(SLOT(cpu, self, C_LAST_TID), tid, Py_EQ);
    if (same < 0)
        goto done;
    if (!same) {
        if (set_slot_new(self, thread, T_CONTEXT_SWITCHES,
                         add_ll(SLOT(thread, self, T_CONTEXT_SWITCHES), 1)) < 0)
            goto done;
        set_slot(self, cpu, C_LAST_TID, tid);
    }
    set_slot(self, thread, T_STATE, self->running_state);
    set_slot(self, thread, T_OWNER, SLOT(cpu, self, C_RUNNING_TAG));
    set_slot(self, thread, T_LAST_STARTED, args[1]);
    set_slot(self, cpu, C_CURRENT, thread);
    if (sched_set_new(self, S_NR_BUSY, add_ll(sched_get(self, S_NR_BUSY), 1)) < 0)
        goto done;
    PyObject *budget = SLOT(thread, self, T_SLICE);
    PyObject *class_budget_obj = NULL;
    int truthy = PyObject_IsTrue(budget);
    if (truthy < 0)
        goto done;
    if (!truthy) { /* class_slice_ns(latency_class, slice_ns) */
        PyObject *cls = SLOT(thread, self, T_LATENCY_CLASS);
        long long b = sched_slice;
        if (cls == self->interactive)
            b = sched_slice / self->interactive_divisor; /* slice_ns >= 1 */
        else if (cls == self->batch && __builtin_mul_overflow(sched_slice, self->batch_multiplier, &b))
            b = LLONG_MAX; /* not reached: slice_ns is checked at Scheduler() */
        budget = class_budget_obj = PyLong_FromLongLong(b);
        if (budget == NULL)
            goto done;
    }
    PyObject *finish =
        virtual_finish(self, SLOT(thread, self, T_VRUNTIME), budget, SLOT(thread, self, T_WEIGHT));
    if (finish == NULL) {
        Py_XDECREF(class_budget_obj);
        goto done;
    }
    set_slot(self, cpu, C_RUNNING_FINISH, finish);
    /* WfqPolicy.running: the CPU's virtual time never decreases */
    {
        PyObject *c = SLOT(thread, self, T_LAST_CPU); /* == cpu_id */
        PyObject *vruntime = SLOT(thread, self, T_VRUNTIME);
        /* A steal or a pull left our queue as dispatch saw it. */
        PyObject *front = source_queue != own ? own_thread : queue_front_thread(own);
        int lower = 0;
        if (front != NULL) {
            lower = fronts_lt(SLOT(front, self, T_VRUNTIME), vruntime);
            if (lower < 0)
                goto running_failed;
            if (lower)
                vruntime = SLOT(front, self, T_VRUNTIME);
        }
        int higher = fronts_lt(PyList_GET_ITEM(pv.vtime, cpu_id), vruntime);
        if (higher < 0)
            goto running_failed;
        if (higher && PyList_SetItem(pv.vtime, cpu_id, Py_NewRef(vruntime)) < 0)
            goto running_failed;
        if (source_queue != own && PySet_Add(pv.dirty, c) < 0)
            goto running_failed;
    }
    dispatch = ((PyTypeObject *)self->dispatch_type)
                   ->tp_alloc((PyTypeObject *)self->dispatch_type, 0);
    if (dispatch == NULL)
        goto running_failed;
    set_slot(self, dispatch, D_CPU, args[0]);
    set_slot(self, dispatch, D_THREAD, SLOT(thread, self, T_REF));
    set_slot(self, dispatch, D_NAME, SLOT(thread, self, T_NAME));
    set_slot(self, dispatch, D_BUDGET, budget);
    set_slot(self, dispatch, D_FINISH, finish);
    set_slot(self, dispatch, D_SOURCE, source);
    result = dispatch;
running_failed:
    Py_DECREF(finish);
    Py_XDECREF(class_budget_obj);
done:
    Py_DECREF(thread);
    return result;
fallback:
    if (PyErr_Occurred())
        return NULL;
    return call_fallback(self, self->fallback_pick, args, nargsf, kwnames);
}

static int
member_offset(PyObject *type, const char *name, Py_ssize_t *out)
{
    PyObject *descr = PyObject_GetAttrString(type, name);
    if (descr == NULL)
        return -1;
    int ok = Py_IS_TYPE(descr, &PyMemberDescr_Type)
             && ((PyMemberDescrObject *)descr)->d_member->type == 16 /* T_OBJECT_EX */
             && ((PyMemberDescrObject *)descr)->d_common.d_type == (PyTypeObject *)type;
    if (ok)
        *out = ((PyMemberDescrObject *)descr)->d_member->offset;
    Py_DECREF(descr);
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "WfqCycle: %R.%s is not an object slot", type, name);
        return -1;
    }
    return 0;
}

static PyObject *
WfqCycle_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *sched, *policy, *thread_type, *cpu_type, *dispatch_type, *fifo_type;
    PyObject *running_state, *runnable_state, *interactive, *batch, *fallback_preempt,
        *fallback_pick;
    long long ref_weight, interactive_divisor, batch_multiplier;
    if (!PyArg_ParseTuple(args, "OOO!O!O!O!OOOOOOLLL:WfqCycle", &sched, &policy, &PyType_Type,
                          &thread_type, &PyType_Type, &cpu_type, &PyType_Type, &dispatch_type,
                          &PyType_Type, &fifo_type, &running_state, &runnable_state,
                          &interactive, &batch, &fallback_preempt, &fallback_pick, &ref_weight,
                          &interactive_divisor, &batch_multiplier))
        return NULL;
    if (ref_weight < 1 || interactive_divisor < 1 || batch_multiplier < 1) {
        PyErr_SetString(PyExc_ValueError, "WfqCycle: constants must be positive");
        return NULL;
    }
    WfqCycle *self = (WfqCycle *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->ref_weight = ref_weight;
    self->interactive_divisor = interactive_divisor;
    self->batch_multiplier = batch_multiplier;
    PyObject *slot_types[NSLOTS];
    for (int i = 0; i < NSLOTS; i++)
        slot_types[i] = i < C_LOCAL ? thread_type
                        : i < D_CPU ? cpu_type
                        : i < F_ENTRIES ? dispatch_type
                                        : fifo_type;
    for (int i = 0; i < NSLOTS; i++)
        if (member_offset(slot_types[i], slot_names[i], &self->off[i]) < 0)
            goto fail;
    self->sched = Py_NewRef(sched);
    self->policy = Py_NewRef(policy);
    self->thread_type = Py_NewRef(thread_type);
    self->cpu_type = Py_NewRef(cpu_type);
    self->dispatch_type = Py_NewRef(dispatch_type);
    self->fifo_type = Py_NewRef(fifo_type);
    self->running_state = Py_NewRef(running_state);
    self->runnable_state = Py_NewRef(runnable_state);
    self->interactive = Py_NewRef(interactive);
    self->batch = Py_NewRef(batch);
    self->fallback_preempt = Py_NewRef(fallback_preempt);
    self->fallback_pick = Py_NewRef(fallback_pick);
    if ((self->sched_dict = PyObject_GenericGetDict(sched, NULL)) == NULL
        || (self->policy_dict = PyObject_GenericGetDict(policy, NULL)) == NULL)
        goto fail;
    for (int i = 0; i < NNAMES; i++) {
        PyTypeObject *owner = Py_TYPE(i < P_VTIME ? sched : policy);
        PyObject *descr = _PyType_Lookup(owner, attr_str[i]); /* borrowed */
        self->attr_off[i] = -1;
        if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)
            && ((PyMemberDescrObject *)descr)->d_member->type == 16 /* T_OBJECT_EX */)
            self->attr_off[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
#define TAKE(field, name)                                                     \
    if ((self->field = (name < P_VTIME ? sched_get : policy_get)(self, name)) == NULL) { \
        if (!PyErr_Occurred())                                                \
            PyErr_Format(PyExc_TypeError, "WfqCycle: no %s", attr_names[name]); \
        goto fail;                                                            \
    }                                                                         \
    Py_INCREF(self->field);
    TAKE(kill_pending, S_KILL_PENDING)
    TAKE(kicks, S_KICKS)
    TAKE(vtime, P_VTIME)
    TAKE(queues, P_QUEUES)
    TAKE(dirty, P_DIRTY)
    TAKE(class_slice, P_CLASS_SLICE)
    TAKE(bits_obj, P_BITS)
    TAKE(mask_obj, P_MASK)
#undef TAKE
    if (!PySet_CheckExact(self->kill_pending) || !PyList_CheckExact(self->kicks)
        || !PyList_CheckExact(self->vtime) || !PyList_CheckExact(self->queues)
        || !PySet_CheckExact(self->dirty) || !PyDict_CheckExact(self->class_slice)
        || !as_ll(self->bits_obj, &self->bits) || self->bits < 1 || self->bits > 16
        || !as_ll(self->mask_obj, &self->mask) || self->mask != (1LL << self->bits) - 1
        || !as_ll(policy_get(self, P_SLICE), &self->slice)
        || !as_ll(policy_get(self, P_PULL), &self->pull)
        || !as_ll(sched_get(self, S_SLICE), &self->sched_slice) || self->sched_slice < 1) {
        PyErr_SetString(PyExc_TypeError, "WfqCycle: unexpected policy layout");
        goto fail;
    }
    {
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        int c = 0;
        while (c < 4 && PyDict_Next(self->class_slice, &pos, &key, &value)) {
            self->class_keys[c] = key;
            self->class_values[c++] = value;
        }
        if (PyDict_GET_SIZE(self->class_slice) != c) {
            PyErr_SetString(PyExc_TypeError, "WfqCycle: class_slice is not the four classes");
            goto fail;
        }
    }
    if ((self->cpus = PyObject_GetAttrString(sched, "cpus")) == NULL
        || (self->global_entries_owner = PyObject_GetAttrString(sched, "_global")) == NULL)
        goto fail;
    if (!PyList_CheckExact(self->cpus)
        || !Py_IS_TYPE(self->global_entries_owner, (PyTypeObject *)fifo_type)) {
        PyErr_SetString(PyExc_TypeError, "WfqCycle: unexpected scheduler layout");
        goto fail;
    }
    self->nr_cpus = PyList_GET_SIZE(self->cpus);
    if (PyList_GET_SIZE(self->queues) != self->nr_cpus
        || PyList_GET_SIZE(self->vtime) != self->nr_cpus) {
        PyErr_SetString(PyExc_TypeError, "WfqCycle: unexpected policy layout");
        goto fail;
    }
    for (Py_ssize_t k = 0; k < self->nr_cpus; k++)
        if (!PyObject_TypeCheck(PyList_GET_ITEM(self->queues, k), &HeapQueueType)) {
            PyErr_SetString(PyExc_TypeError, "WfqCycle: a policy queue is not a HeapQueue");
            goto fail;
        }
    for (Py_ssize_t k = 0; k < self->nr_cpus; k++) {
        PyObject *cpu = PyList_GET_ITEM(self->cpus, k);
        if (!Py_IS_TYPE(cpu, (PyTypeObject *)cpu_type) || SLOT(cpu, self, C_LOCAL) == NULL
            || !Py_IS_TYPE(SLOT(cpu, self, C_LOCAL), (PyTypeObject *)fifo_type)) {
            PyErr_SetString(PyExc_TypeError, "WfqCycle: unexpected CPU layout");
            goto fail;
        }
    }
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static int
WfqCycle_traverse(WfqCycle *self, visitproc visit, void *arg)
{
    Py_VISIT(self->sched);
    Py_VISIT(self->sched_dict);
    Py_VISIT(self->policy);
    Py_VISIT(self->policy_dict);
    Py_VISIT(self->cpus);
    Py_VISIT(self->global_entries_owner);
    Py_VISIT(self->thread_type);
    Py_VISIT(self->cpu_type);
    Py_VISIT(self->dispatch_type);
    Py_VISIT(self->fifo_type);
    Py_VISIT(self->running_state);
    Py_VISIT(self->runnable_state);
    Py_VISIT(self->interactive);
    Py_VISIT(self->batch);
    Py_VISIT(self->fallback_preempt);
    Py_VISIT(self->fallback_pick);
    Py_VISIT(self->kill_pending);
    Py_VISIT(self->kicks);
    Py_VISIT(self->vtime);
    Py_VISIT(self->queues);
    Py_VISIT(self->dirty);
    Py_VISIT(self->class_slice);
    Py_VISIT(self->bits_obj);
    Py_VISIT(self->mask_obj);
    return 0;
}

static int
WfqCycle_clear(WfqCycle *self)
{
    Py_CLEAR(self->sched);
    Py_CLEAR(self->sched_dict);
    Py_CLEAR(self->policy);
    Py_CLEAR(self->policy_dict);
    Py_CLEAR(self->cpus);
    Py_CLEAR(self->global_entries_owner);
    Py_CLEAR(self->thread_type);
    Py_CLEAR(self->cpu_type);
    Py_CLEAR(self->dispatch_type);
    Py_CLEAR(self->fifo_type);
    Py_CLEAR(self->running_state);
    Py_CLEAR(self->runnable_state);
    Py_CLEAR(self->interactive);
    Py_CLEAR(self->batch);
    Py_CLEAR(self->fallback_preempt);
    Py_CLEAR(self->fallback_pick);
    Py_CLEAR(self->kill_pending);
    Py_CLEAR(self->kicks);
    Py_CLEAR(self->vtime);
    Py_CLEAR(self->queues);
    Py_CLEAR(self->dirty);
    Py_CLEAR(self->class_slice);
    Py_CLEAR(self->bits_obj);
    Py_CLEAR(self->mask_obj);
    return 0;
}

static void
WfqCycle_dealloc(WfqCycle *self)
{
    PyObject_GC_UnTrack(self);
    WfqCycle_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef WfqCycle_methods[] = {
    {"preempt_current", (PyCFunction)(void (*)(void))WfqCycle_preempt_current,
     METH_FASTCALL | METH_KEYWORDS,
     "Scheduler.preempt_current(cpu_id, now_ns, elapsed_ns), accelerated (see scheduler.py)."},
    {"pick_next", (PyCFunction)(void (*)(void))WfqCycle_pick_next, METH_FASTCALL | METH_KEYWORDS,
     "Scheduler.pick_next(cpu_id, now_ns), accelerated (see scheduler.py)."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef WfqCycle_members[] = {
    {"calls", T_PYSSIZET, offsetof(WfqCycle, calls), READONLY, "Calls of either method."},
    {"fallbacks", T_PYSSIZET, offsetof(WfqCycle, fallbacks), READONLY,
     "Calls outside the common case, run by the Python methods."},
    {NULL},
};

static PyTypeObject WfqCycleType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "capos_sched.core._accel.WfqCycle",
    .tp_basicsize = sizeof(WfqCycle),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The built-in WFQ policy's dispatch cycle in C, falling back to the Python "
              "reference outside the common case (see _accel.c).",
    .tp_new = WfqCycle_new,
    .tp_dealloc = (destructor)WfqCycle_dealloc,
    .tp_traverse = (traverseproc)WfqCycle_traverse,
    .tp_clear = (inquiry)WfqCycle_clear,
    .tp_methods = WfqCycle_methods,
    .tp_members = WfqCycle_members,
};

static int
init_cycle(PyObject *m)
{
    for (int i = 0; i < NNAMES; i++)
        if ((attr_str[i] = PyUnicode_InternFromString(attr_names[i])) == NULL)
            return -1;
    if ((str_steal = PyUnicode_InternFromString("steal")) == NULL
        || (str_pull = PyUnicode_InternFromString("pull")) == NULL
        || (str_queue = PyUnicode_InternFromString("queue")) == NULL
        || (str_rebuild_fronts = PyUnicode_InternFromString("_rebuild_fronts")) == NULL)
        return -1;
    if (PyType_Ready(&WfqCycleType) < 0)
        return -1;
    Py_INCREF(&WfqCycleType);
    if (PyModule_AddObject(m, "WfqCycle", (PyObject *)&WfqCycleType) < 0) {
        Py_DECREF(&WfqCycleType);
        return -1;
    }
    return 0;
}

static PyMethodDef module_methods[] = {
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef accel_module = {
    PyModuleDef_HEAD_INIT, "capos_sched.core._accel",
    "Optional C accelerator for the ordered DSQ (the reference is runqueue.py).", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__accel(void)
{
    str_queue_seq = PyUnicode_InternFromString("queue_seq");
    if (str_queue_seq == NULL)
        return NULL;
    if (PyType_Ready(&HeapQueueType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&accel_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&HeapQueueType);
    if (PyModule_AddObject(m, "HeapQueue", (PyObject *)&HeapQueueType) < 0) {
        Py_DECREF(&HeapQueueType);
        Py_DECREF(m);
        return NULL;
    }
    if (init_cycle(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
