/* autooffload._parcopy: memcpy split over a small pool of native threads, without the GIL.
 *
 * Why: the copy engine's host-side copies (pageable <-> pinned) are bound by how many cores copy
 * at once (one thread ~10 GB/s on the H100 machine, 16 threads ~40). Python worker threads
 * cost ~0.1 ms per hand-off (futures, queue, GIL), which ate the gain below ~32 MiB. Native
 * threads parked on a condition variable take a part of a copy in a few microseconds.
 *
 * copy(dst, src, nbytes, threads, min_part): copies nbytes from address src to address dst
 * (the ranges must not overlap) using up to `threads` threads, the caller included, with parts
 * of at least `min_part` bytes; copy(..., nontemporal, split) cuts it into up to `split` (1-64)
 * parts a thread, taken as threads come, so one that wakes late holds the copy up by one part.
 * One copy uses the pool at a time. A call that finds it busy copies alone on its own thread if
 * it is small (below WAIT_MIN_BYTES: never blocked behind another caller), and waits for the
 * pool if it is larger: alone it would run at one core's speed while the pool's copy has the
 * memory bandwidth. Measured on the H200 machine
 * (tools/transfer_diag.py --both-ways, 1 GiB each way from two threads): copying alone when busy
 * took 128 ms for both against 60 ms for the two one after the other; a streamed call's loader
 * and unloader copy at the same time on every chunk.
 * Workers start on first use and live for the process; after fork() the child starts afresh.
 *
 * copy(..., spin_us): after a copy, the workers that took part in it (at most its threads less
 * one) spin that long for the next copy before parking on the condition variable, and the caller
 * spins for the others' last parts; never where the pool has more threads than the usable cores.
 * A staged copy hands the pool one piece after another with gaps of tens of microseconds, shorter
 * than a wake-up from the condition variable on these VMs: on the H200, 300 us made staged first copies 3-16% faster
 * at 16-64 MiB (benchmarks/results/h200-session19/transfer.run2.md).
 *
 * copy(..., nontemporal=1) writes with non-temporal (streaming) stores on x86-64: the lines go to
 * memory, not into the copying cores' caches. Why: a DMA that reads pinned memory the host copy
 * has just written runs slower while those lines sit modified in the cores' caches. Measured on
 * the H200 machine (tools/staged_probe.py, session 9): one DMA of 16 MiB from pinned memory
 * 0.41-0.59 ms right after a host copy wrote it, 0.32 ms from pinned memory no copy had written recently
 * (a fit of 1-32 MiB: 83-147 us a DMA against 12 us). Elsewhere (no SSE2), plain memcpy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <unistd.h>
#include <string.h>
#include <time.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_WORKERS 63
#define PART_ALIGN 4096
/* 4 MiB alone on one core (~10 GB/s) takes ~0.4 ms: about what a busy pool's piece takes. */
#define WAIT_MIN_BYTES (4u << 20)

typedef struct {
    char *dst;
    const char *src;
    size_t nbytes;
    size_t part;    /* bytes per part (the last may be shorter) */
    int parts;
    int next;       /* next part to take (atomic) */
    int left;       /* parts not yet copied (atomic) */
    int users;      /* workers holding this job (under mu) */
    int nontemporal; /* streaming stores (see the top) */
} job_t;

static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER; /* one job in the pool at a time */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;       /* guards the fields below */
static pthread_cond_t cv_work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t cv_done = PTHREAD_COND_INITIALIZER;
static job_t *current = NULL;
static unsigned long generation = 0;
static int n_workers = 0;
static unsigned long long jobs_shared = 0, jobs_alone = 0, jobs_waited = 0;
/* Nanoseconds a worker spins for the next job after one ends, and the caller for the last part of
 * its own, before parking on the condition variable (0: park at once); set by each copy. */
static long long spin_ns = 0;
/* How many workers may still spin after the current job: those it asked for (its threads less the
 * caller); 0 where the pool has more threads than the usable cores (parallel_copy). */
static int spin_slots = 0;

static int
usable_cpus(void)
{
#if defined(__linux__) && defined(CPU_COUNT)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static long long
now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline void
cpu_relax(void)
{
#if defined(__SSE2__)
    _mm_pause();
#endif
}

/* One pause of a spin that ends at `deadline`; returns whether it has passed. Reads the clock every
 * 64 pauses (a few microseconds), so a spin ends within that of its deadline. */
static inline int
spin_step(unsigned i, long long deadline)
{
    cpu_relax();
    return (i & 63) == 0 && now_ns() >= deadline;
}

/* Spin until *word != seen or `ns` have passed. */
static void
spin_while_equal(const unsigned long *word, unsigned long seen, long long ns)
{
    long long deadline = now_ns() + ns;
    for (unsigned i = 1; __atomic_load_n(word, __ATOMIC_ACQUIRE) == seen && !spin_step(i, deadline); i++)
        ;
}

/* memcpy with non-temporal stores: the destination's lines bypass the caches. The sfence makes
 * the stores visible before the part is counted done (the caller then queues a DMA of them). */
static void
copy_nontemporal(char *dst, const char *src, size_t n)
{
#if defined(__SSE2__)
    size_t head = (16 - ((uintptr_t)dst & 15)) & 15;
    if (head > n)
        head = n;
    memcpy(dst, src, head);
    dst += head;
    src += head;
    n -= head;
    for (; n >= 64; n -= 64, dst += 64, src += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)src);
        __m128i b = _mm_loadu_si128((const __m128i *)(src + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + 48));
        _mm_stream_si128((__m128i *)dst, a);
        _mm_stream_si128((__m128i *)(dst + 16), b);
        _mm_stream_si128((__m128i *)(dst + 32), c);
        _mm_stream_si128((__m128i *)(dst + 48), d);
    }
    memcpy(dst, src, n);
    _mm_sfence();
#else
    memcpy(dst, src, n);
#endif
}

static void
copy_part(char *dst, const char *src, size_t n, int nontemporal)
{
    if (nontemporal)
        copy_nontemporal(dst, src, n);
    else
        memcpy(dst, src, n);
}

/* Copies parts of `job` until none is left; returns whether it copied any. */
static int
run_parts(job_t *job)
{
    for (int took = 0;; took = 1) {
        int i = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
        if (i >= job->parts)
            return took;
        size_t lo = (size_t)i * job->part;
        size_t n = job->nbytes - lo < job->part ? job->nbytes - lo : job->part;
        copy_part(job->dst + lo, job->src + lo, n, job->nontemporal);
        if (__atomic_sub_fetch(&job->left, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&mu);
            pthread_cond_broadcast(&cv_done);
            pthread_mutex_unlock(&mu);
        }
    }
}

static void *
worker_main(void *arg)
{
    (void)arg;
    unsigned long seen = 0;
    int ran = 0; /* this worker took part in the job just ended: only such a worker may spin */
    pthread_mutex_lock(&mu);
    seen = generation;
    for (;;) {
        long long spin = __atomic_load_n(&spin_ns, __ATOMIC_RELAXED);
        if (ran && generation == seen && spin > 0 && __atomic_sub_fetch(&spin_slots, 1, __ATOMIC_RELAXED) >= 0) {
            /* The next piece of a staged copy usually comes within tens of microseconds: waking
             * from the condition variable costs more than that on these VMs (see the top). */
            pthread_mutex_unlock(&mu);
            spin_while_equal(&generation, seen, spin);
            pthread_mutex_lock(&mu);
        }
        ran = 0;
        while (generation == seen)
            pthread_cond_wait(&cv_work, &mu);
        seen = generation;
        job_t *job = current;
        if (job == NULL)
            continue;
        job->users++;
        pthread_mutex_unlock(&mu);
        ran = run_parts(job);
        pthread_mutex_lock(&mu);
        /* The caller returns (and its job goes away) only once no worker holds it. */
        if (--job->users == 0 && __atomic_load_n(&job->left, __ATOMIC_ACQUIRE) == 0)
            pthread_cond_broadcast(&cv_done);
    }
    return NULL;
}

/* Start workers until there are `want` (under job_lock). Returns how many there are. */
static int
ensure_workers(int want)
{
    if (want > MAX_WORKERS)
        want = MAX_WORKERS;
    while (n_workers < want) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        int rc = pthread_create(&t, &attr, worker_main, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        pthread_mutex_lock(&mu);
        n_workers++;
        pthread_mutex_unlock(&mu);
    }
    return n_workers;
}

static void
after_fork_child(void)
{
    /* The child has none of the parent's threads: start again from nothing. */
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    job_lock = m;
    mu = m;
    cv_work = c;
    cv_done = c;
    current = NULL;
    generation = 0;
    n_workers = 0;
}

static void
parallel_copy(char *dst, const char *src, size_t nbytes, int threads, size_t min_part, int nontemporal, int split,
              long long spin_us)
{
    if (split < 1)
        split = 1;
    if (split > 64)
        split = 64;
    if (min_part < PART_ALIGN)
        min_part = PART_ALIGN;
    size_t max_parts = nbytes / min_part;
    if (threads > MAX_WORKERS + 1)
        threads = MAX_WORKERS + 1;
    if ((size_t)threads > max_parts)
        threads = (int)max_parts;
    if (threads <= 1) {
        copy_part(dst, src, nbytes, nontemporal);
        return;
    }
    if (pthread_mutex_trylock(&job_lock) != 0) {
        if (nbytes < WAIT_MIN_BYTES) {
            copy_part(dst, src, nbytes, nontemporal); /* another copy has the pool: a small one does not wait */
            __atomic_add_fetch(&jobs_alone, 1, __ATOMIC_RELAXED);
            return;
        }
        pthread_mutex_lock(&job_lock); /* a large one waits for the pool (see the top) */
        __atomic_add_fetch(&jobs_waited, 1, __ATOMIC_RELAXED);
    }
    int workers = ensure_workers(threads - 1);
    if (workers + 1 < threads)
        threads = workers + 1;
    if (threads <= 1) {
        pthread_mutex_unlock(&job_lock);
        copy_part(dst, src, nbytes, nontemporal);
        return;
    }
    /* `split` parts per thread (1: one each, as before): threads take parts as they come (run_parts),
     * so a thread that wakes late takes fewer instead of holding the whole copy up. */
    size_t want = (size_t)threads * (size_t)split;
    size_t part = (nbytes + want - 1) / want;
    if (split > 1 && part < min_part)
        part = min_part;
    part = (part + PART_ALIGN - 1) / PART_ALIGN * PART_ALIGN;
    job_t job = {dst, src, nbytes, part, (int)((nbytes + part - 1) / part), 0, 0, 0, nontemporal};
    job.left = job.parts;
    static int cpus = 0;
    if (cpus == 0)
        cpus = usable_cpus();
    /* Every copy wakes every worker: where the pool has more threads than the usable cores, those
     * already contend for them, and a spinner would only take a core from a thread with work. */
    if (workers + 1 > cpus)
        spin_us = 0;
    __atomic_store_n(&spin_ns, spin_us * 1000LL, __ATOMIC_RELAXED);
    __atomic_store_n(&spin_slots, spin_us > 0 ? threads - 1 : 0, __ATOMIC_RELAXED);
    pthread_mutex_lock(&mu);
    current = &job;
    __atomic_add_fetch(&generation, 1, __ATOMIC_RELEASE); /* spinning workers read it unlocked */
    pthread_cond_broadcast(&cv_work);
    pthread_mutex_unlock(&mu);
    run_parts(&job);
    if (spin_us > 0) {
        /* The caller's own parts are done: the others' last parts end within microseconds (and
         * each holds a core of its own, or the caller would be taking one from them). */
        long long deadline = now_ns() + spin_us * 1000LL;
        for (unsigned i = 1; __atomic_load_n(&job.left, __ATOMIC_ACQUIRE) != 0 && !spin_step(i, deadline); i++)
            ;
    }
    pthread_mutex_lock(&mu);
    while (__atomic_load_n(&job.left, __ATOMIC_ACQUIRE) != 0 || job.users != 0)
        pthread_cond_wait(&cv_done, &mu);
    current = NULL;
    pthread_mutex_unlock(&mu);
    __atomic_add_fetch(&jobs_shared, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&job_lock);
}

/* "O&" converter: a Python int in [0, 2**64), else OverflowError/TypeError (no silent wrap). */
static int
to_u64(PyObject *obj, void *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return 0;
    *(unsigned long long *)out = v;
    return 1;
}

static PyObject *
py_copy(PyObject *self, PyObject *args)
{
    unsigned long long dst, src, nbytes, min_part = 256 * 1024;
    int threads, nontemporal = 0, split = 1, spin_us = 0;
    if (!PyArg_ParseTuple(args, "O&O&O&i|O&pii:copy", to_u64, &dst, to_u64, &src, to_u64, &nbytes, &threads, to_u64,
                          &min_part, &nontemporal, &split, &spin_us))
        return NULL;
    if (spin_us < 0 || spin_us > 100000) {
        PyErr_Format(PyExc_ValueError, "copy: spin_us must be in [0, 100000]; got %d", spin_us);
        return NULL;
    }
    if (nbytes == 0)
        Py_RETURN_NONE;
    if (dst == 0 || src == 0) {
        PyErr_SetString(PyExc_ValueError, "copy: null address");
        return NULL;
    }
    if ((dst < src && dst + nbytes > src) || (src < dst && src + nbytes > dst) || src == dst) {
        PyErr_SetString(PyExc_ValueError, "copy: the source and destination ranges overlap");
        return NULL;
    }
    if (threads < 1) {
        PyErr_Format(PyExc_ValueError, "copy: threads must be >= 1; got %d", threads);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    parallel_copy((char *)(uintptr_t)dst, (const char *)(uintptr_t)src, (size_t)nbytes, threads, (size_t)min_part,
                  nontemporal, split, spin_us);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *
py_info(PyObject *self, PyObject *noargs)
{
    pthread_mutex_lock(&mu);
    int workers = n_workers;
    pthread_mutex_unlock(&mu);
    return Py_BuildValue("{s:i,s:K,s:K,s:K}", "workers", workers, "shared", __atomic_load_n(&jobs_shared, __ATOMIC_RELAXED),
                         "alone", __atomic_load_n(&jobs_alone, __ATOMIC_RELAXED),
                         "waited", __atomic_load_n(&jobs_waited, __ATOMIC_RELAXED));
}

static PyMethodDef methods[] = {
    {"copy", py_copy, METH_VARARGS,
     "copy(dst, src, nbytes, threads, min_part=262144, nontemporal=False, split=1, spin_us=0): memcpy between raw "
     "addresses split over up to `threads` native threads (the caller included), parts of at least min_part "
     "bytes, up to `split` (1-64) parts a thread taken as threads come; nontemporal: streaming stores that "
     "bypass the caches (x86-64); spin_us (0-100000): how long the pool's threads spin for the next copy, "
     "and the caller for its last part, before sleeping; releases the GIL. Positional arguments only."},
    {"info", py_info, METH_NOARGS,
     "{'workers', 'shared', 'alone', 'waited'}: pool threads; copies made by the pool (of which 'waited' "
     "waited for it), and alone."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_parcopy",
                                    "memcpy over a pool of native threads (see _parcopy.c)", -1, methods};

PyMODINIT_FUNC
PyInit__parcopy(void)
{
    static int atfork_done = 0;
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_done = 1;
    }
    return PyModule_Create(&module);
}
