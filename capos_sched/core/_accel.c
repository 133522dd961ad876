/* Optional compiled accelerator for the ordered DSQ (runqueue.VirtualFinishQueue).
 *
 * The pure-Python class in runqueue.py is the reference; this is the same
 * min-heap with lazy deletion, with the heap held as a C array of
 * (key, seq, seq object) instead of a list of Python ints, plus the steal/pull
 * walk (balance_victim) in one C call. Semantics match the reference exactly:
 * order by (key, seq), dead entries (seq absent from _entries) skipped at the
 * front, compaction when the heap exceeds 2 * live + 1. tests/core/test_accel.py
 * checks parity on random operation sequences.
 *
 * Keys must fit a signed 64-bit integer (the scheduler refuses others for both
 * implementations); seqs are the scheduler's enqueue counter (non-negative).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    long long key;
    unsigned long long seq;
    PyObject *seqobj; /* strong reference; also the key of _entries while live */
} Entry;

typedef struct {
    PyObject_HEAD
    Entry *heap;
    Py_ssize_t size;
    Py_ssize_t cap;
    PyObject *entries; /* dict: seq -> thread, the live entries */
} HeapQueue;

static PyObject *str_queue_seq;
static PyObject *str_head_key;
static PyTypeObject HeapQueueType;

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
    /* A thread already live here moves (the reference: discard, then push). */
    PyObject *qs = PyObject_GetAttr(thread, str_queue_seq);
    if (qs == NULL)
        return NULL;
    int present = PyDict_Contains(q->entries, qs);
    Py_DECREF(qs);
    if (present < 0 || (present && discard_thread(q, thread) < 0))
        return NULL;
    if (q->size == q->cap) {
        Py_ssize_t cap = q->cap ? q->cap * 2 : 16;
        Entry *heap = PyMem_Realloc(q->heap, cap * sizeof(Entry));
        if (heap == NULL)
            return PyErr_NoMemory();
        q->heap = heap;
        q->cap = cap;
    }
    if (PyObject_SetAttr(thread, str_queue_seq, seqobj) < 0)
        return NULL;
    if (PyDict_SetItem(q->entries, seqobj, thread) < 0)
        return NULL;
    Py_INCREF(seqobj);
    Entry *e = &q->heap[q->size];
    e->key = key;
    e->seq = seq;
    e->seqobj = seqobj;
    sift_up(q->heap, q->size++);
    Py_RETURN_NONE;
}

static PyObject *
HeapQueue_pop(HeapQueue *q, PyObject *unused)
{
    while (q->size > 0) {
        PyObject *seqobj = heap_pop_front(q);
        PyObject *thread = PyDict_GetItemWithError(q->entries, seqobj);
        if (thread != NULL) {
            Py_INCREF(thread);
            int rc = PyDict_DelItem(q->entries, seqobj);
            Py_DECREF(seqobj);
            if (rc < 0) {
                Py_DECREF(thread);
                return NULL;
            }
            if (q->size > 2 * PyDict_GET_SIZE(q->entries) + 1)
                compact(q); /* dead entries left behind by discards */
            return thread;
        }
        Py_DECREF(seqobj);
        if (PyErr_Occurred())
            return NULL;
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

/* A sibling's live front key into *key; 0 when empty, -1 on error. */
static int
front_key(PyObject *queue, long long *key)
{
    if (PyObject_TypeCheck(queue, &HeapQueueType)) {
        Entry *e = live_front((HeapQueue *)queue, NULL);
        if (e == NULL)
            return 0;
        *key = e->key;
        return 1;
    }
    PyObject *k = PyObject_CallMethodNoArgs(queue, str_head_key);
    if (k == NULL)
        return -1;
    if (k == Py_None) {
        Py_DECREF(k);
        return 0;
    }
    *key = PyLong_AsLongLong(k);
    Py_DECREF(k);
    return (*key == -1 && PyErr_Occurred()) ? -1 : 1;
}

static PyObject *
balance_victim(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "balance_victim(queues, own, threshold)");
        return NULL;
    }
    PyObject *queues = args[0], *own = args[1];
    long long threshold = PyLong_AsLongLong(args[2]);
    if (threshold == -1 && PyErr_Occurred())
        return NULL;
    PyObject *seq = PySequence_Fast(queues, "balance_victim: queues must be a sequence");
    if (seq == NULL)
        return NULL;
    long long own_key = 0, best_key = 0, key;
    int has_own = front_key(own, &own_key);
    if (has_own < 0)
        goto fail;
    __int128 limit = (__int128)own_key - threshold;
    PyObject *victim = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *sibling = items[i];
        if (sibling == own)
            continue;
        int found = front_key(sibling, &key);
        if (found < 0)
            goto fail;
        if (!found)
            continue;
        if ((!has_own || (__int128)key <= limit) && (victim == NULL || key < best_key)) {
            best_key = key;
            victim = sibling;
        }
    }
    Py_DECREF(seq);
    PyObject *own_obj = has_own ? PyLong_FromLongLong(own_key) : Py_NewRef(Py_None);
    if (own_obj == NULL)
        return NULL;
    PyObject *result = PyTuple_New(2);
    if (result == NULL) {
        Py_DECREF(own_obj);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, own_obj);
    PyTuple_SET_ITEM(result, 1, Py_NewRef(victim ? victim : Py_None));
    return result;
fail:
    Py_DECREF(seq);
    return NULL;
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

static PyMethodDef module_methods[] = {
    {"balance_victim", (PyCFunction)(void (*)(void))balance_victim, METH_FASTCALL,
     "The steal/pull walk: (own front key, victim); see runqueue.balance_victim."},
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
    str_head_key = PyUnicode_InternFromString("head_key");
    if (str_queue_seq == NULL || str_head_key == NULL)
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
    return m;
}
