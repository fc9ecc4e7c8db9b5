/*
 * dispatch.c -- the public mhc_* kernels: argument validation at the ABI,
 * ISA resolution (one kernel table per level), splitting over threads.
 *
 * Threads: a call whose estimated single-thread work is large posts its
 * chunks to a pool of helper threads (started on demand, kept), works on
 * them itself and waits only for chunks a helper has claimed; small calls
 * stay on the calling thread.
 */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include "mhc_internal.h"

/* ---- allocation (with the test-only fault hook) ---------------------------
 * Every heap block of the library goes through mhc_malloc / mhc_realloc /
 * mhc_free, so that a test can make allocations fail
 * (mhc_debug_fail_allocs_after) and count the blocks still held
 * (mhc_debug_live_allocs). Both counters are atomics: the only global mutable
 * state besides the CPU feature table, and inert unless a test arms them. */
static int64_t fail_after = -1;   /* allocations left before failing; -1: never */
static int64_t live_blocks;

static int alloc_refused(void)
{
    int64_t left = __atomic_load_n(&fail_after, __ATOMIC_RELAXED);
    while (left >= 0) {
        if (left == 0)
            return 1;
        if (__atomic_compare_exchange_n(&fail_after, &left, left - 1, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return 0;
    }
    return 0;
}

void *mhc_malloc(size_t size)
{
    void *p = alloc_refused() ? NULL : malloc(size);
    if (p)
        __atomic_add_fetch(&live_blocks, 1, __ATOMIC_RELAXED);
    return p;
}

void *mhc_realloc(void *old, size_t size)
{
    if (!old)
        return mhc_malloc(size);
    return alloc_refused() ? NULL : realloc(old, size);
}

void mhc_free(void *p)
{
    if (p) {
        __atomic_sub_fetch(&live_blocks, 1, __ATOMIC_RELAXED);
        free(p);
    }
}

void mhc_debug_fail_allocs_after(int64_t count)
{
    __atomic_store_n(&fail_after, count < 0 ? -1 : count, __ATOMIC_RELAXED);
}

int64_t mhc_debug_live_allocs(void) { return __atomic_load_n(&live_blocks, __ATOMIC_RELAXED); }

#define MHC_MAX_THREADS 256  /* cap on threads of one call */
/* Thread only above ~50 us of single-thread work (a post to the pool costs a
 * few us): Sinkhorn in element iterations (~0.1 ns each for 4x4 matrices),
 * distances in element visits weighted by manifold_cost (~0.1 ns per unit). */
#define MHC_SK_PAR_WORK (1 << 19)
#define MHC_DIST_PAR_WORK (1 << 19)
/* Sinkhorn workspaces up to this many bytes live on the stack. */
#define MHC_STACK_WS 16384

#define MHC_TABLE(isa)                                                                 \
    {#isa, mhc_sk_small_f32_##isa, mhc_sk_large_f32_##isa, mhc_dist_f32_##isa,        \
     mhc_sk_small_f64_##isa, mhc_sk_large_f64_##isa, mhc_dist_f64_##isa,               \
     mhc_hc_proj_f32_##isa, mhc_hc_mix_f32_##isa, mhc_hc_post_f32_##isa,               \
     mhc_hc_proj_f64_##isa, mhc_hc_mix_f64_##isa, mhc_hc_post_f64_##isa}

/* Indexed by mhc_isa; levels this build lacks fall back to portable. */
static const mhc_kernel_table g_tables[4] = {
    MHC_TABLE(portable),
#if MHC_X86
    MHC_TABLE(sse), MHC_TABLE(avx2), MHC_TABLE(avx512),
#else
    MHC_TABLE(portable), MHC_TABLE(portable), MHC_TABLE(portable),
#endif
};

static const mhc_kernel_table *table_for(int isa) { return &g_tables[mhc_resolve_isa(isa)]; }

/* ---- threads ------------------------------------------------------------ */

/* A chunk [lo, hi) of a call; fn returns a status and sets *err (or -1). */
typedef int (*mhc_chunk_fn)(const void *ctx, int64_t lo, int64_t hi, int64_t *err);

/*
 * One threaded call. The range is cut into several chunks per thread; the
 * caller and the helpers claim them from an atomic counter. The caller waits
 * only for chunks a helper has claimed, never for a helper that has not been
 * scheduled yet (on a shared machine that wait could be a whole time slice):
 * a late helper finds nothing left. The job lives on the heap with a
 * reference count (the caller, the pool's slot, each helper in it), so a late
 * helper never touches freed memory; fn and ctx are used only for claimed
 * chunks, all of which finish before the caller returns. Correctness never
 * depends on a helper showing up: the caller alone can do every chunk.
 */
typedef struct {
    mhc_chunk_fn fn;
    const void *ctx;
    int64_t count, chunk, nchunks;
    int64_t next;        /* atomic: next chunk to claim */
    int refs;            /* atomic: holders of the job */
    int seats;           /* helpers still wanted (under g_pool.lock) */
    pthread_mutex_t lock;
    pthread_cond_t all_done;
    int64_t finished;    /* chunks done (under lock) */
    int64_t bad_chunk;   /* lowest failing chunk, nchunks if none (under lock) */
    int status;
    int64_t err;
} mhc_job;

static void job_work(mhc_job *j)
{
    for (;;) {
        const int64_t k = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (k >= j->nchunks)
            return;
        const int64_t lo = k * j->chunk;
        const int64_t hi = lo + j->chunk < j->count ? lo + j->chunk : j->count;
        int64_t err = -1;
        const int status = j->fn(j->ctx, lo, hi, &err);
        pthread_mutex_lock(&j->lock);
        if (status != MHC_OK && k < j->bad_chunk) {  /* chunks are in index order */
            j->bad_chunk = k;
            j->status = status;
            j->err = err;
        }
        if (++j->finished == j->nchunks)
            pthread_cond_signal(&j->all_done);
        pthread_mutex_unlock(&j->lock);
    }
}

static void job_release(mhc_job *j)
{
    if (__atomic_sub_fetch(&j->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        pthread_cond_destroy(&j->all_done);
        pthread_mutex_destroy(&j->lock);
        mhc_free(j);
    }
}

/*
 * The helper pool: threads started on demand (never more than a call asked
 * for, at most MHC_MAX_THREADS - 1), kept for the life of the process. A
 * call posts its job in the one slot; helpers take a seat in it, work, and
 * then spin briefly (MHC_SPIN_NS) for the next job before sleeping on the
 * condition variable, so that back-to-back calls start at once without a
 * busy core between bursts. Concurrent calls replace each other in the slot;
 * a call that loses its slot finishes its own chunks.
 */
#define MHC_SPIN_NS 50000
static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    mhc_job *job;        /* posted job (holds a reference) or NULL */
    uint64_t gen;        /* bumped at every post; read atomically by spinners */
    int started;         /* helpers running */
} g_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0};
static pthread_once_t g_pool_once = PTHREAD_ONCE_INIT;

static void pool_after_fork_child(void)
{
    /* the child has none of the parent's helper threads: start afresh */
    pthread_mutex_init(&g_pool.lock, NULL);
    pthread_cond_init(&g_pool.wake, NULL);
    g_pool.job = NULL;
    g_pool.started = 0;
}

static void pool_init_once(void) { pthread_atfork(NULL, NULL, pool_after_fork_child); }

static inline void cpu_relax(void)
{
#if MHC_X86
    __builtin_ia32_pause();
#endif
}

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *pool_helper(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&g_pool.lock);
    for (;;) {
        mhc_job *j = g_pool.job;
        if (j && j->seats > 0) {                 /* take a seat in the posted job */
            j->seats--;
            __atomic_add_fetch(&j->refs, 1, __ATOMIC_RELAXED);
            const uint64_t seen = g_pool.gen;
            pthread_mutex_unlock(&g_pool.lock);
            job_work(j);
            job_release(j);
            const uint64_t t0 = now_ns();        /* a next call often follows at once */
            while (__atomic_load_n(&g_pool.gen, __ATOMIC_ACQUIRE) == seen &&
                   now_ns() - t0 < MHC_SPIN_NS)
                for (int k = 0; k < 64; k++)
                    cpu_relax();
            pthread_mutex_lock(&g_pool.lock);
            continue;
        }
        const uint64_t gen = g_pool.gen;         /* nothing for us: sleep until a post */
        while (g_pool.gen == gen)
            pthread_cond_wait(&g_pool.wake, &g_pool.lock);
    }
    return NULL;
}

/* Post j for nth - 1 helpers, starting helpers up to that number. */
static void pool_post(mhc_job *j, int helpers)
{
    pthread_once(&g_pool_once, pool_init_once);
    pthread_mutex_lock(&g_pool.lock);
    while (g_pool.started < helpers && g_pool.started < MHC_MAX_THREADS - 1) {
        pthread_attr_t attr;
        pthread_t tid;
        int ok = pthread_attr_init(&attr) == 0;
        ok = ok && pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0;
        ok = ok && pthread_create(&tid, &attr, pool_helper, NULL) == 0;
        pthread_attr_destroy(&attr);
        if (!ok)
            break;                           /* fewer helpers: the caller does the rest */
        g_pool.started++;
    }
    mhc_job *old = g_pool.job;
    j->seats = helpers;
    __atomic_add_fetch(&j->refs, 1, __ATOMIC_RELAXED);  /* the slot's reference */
    g_pool.job = j;
    __atomic_add_fetch(&g_pool.gen, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&g_pool.wake);
    pthread_mutex_unlock(&g_pool.lock);
    if (old)
        job_release(old);
}

/* Take j out of the slot if it is still there. */
static void pool_unpost(mhc_job *j)
{
    int held = 0;
    pthread_mutex_lock(&g_pool.lock);
    if (g_pool.job == j) {
        g_pool.job = NULL;
        held = 1;
    }
    pthread_mutex_unlock(&g_pool.lock);
    if (held)
        job_release(j);
}

/* Run fn over [0, count) on up to nth threads (chunk boundaries multiples of
 * align). The first failing chunk in index order gives the status and
 * err_index, so a domain error reports the globally first offending index. */
static int run_chunks(mhc_chunk_fn fn, const void *ctx, int64_t count, int64_t align, int nth,
                      int64_t *err_index)
{
    const int64_t units = (count + align - 1) / align;
    mhc_job *j = nth > 1 && units > 1 ? mhc_malloc(sizeof *j) : NULL;
    if (!j) {                                /* one thread (or no memory to share) */
        int64_t err = -1;
        const int status = count ? fn(ctx, 0, count, &err) : MHC_OK;
        if (status != MHC_OK && err_index)
            *err_index = err;
        return status;
    }
    const int64_t pieces = units < (int64_t)nth * 8 ? units : (int64_t)nth * 8;
    const int64_t per = (units + pieces - 1) / pieces;
    *j = (mhc_job){fn, ctx, count, per * align, (units + per - 1) / per, 0, 1};
    j->bad_chunk = j->nchunks;
    j->status = MHC_OK;
    j->err = -1;
    if (pthread_mutex_init(&j->lock, NULL) || pthread_cond_init(&j->all_done, NULL)) {
        mhc_free(j);
        return run_chunks(fn, ctx, count, align, 1, err_index);
    }
    const int helpers = (int64_t)(nth - 1) < j->nchunks - 1 ? nth - 1 : (int)(j->nchunks - 1);
    pool_post(j, helpers);
    job_work(j);
    pool_unpost(j);
    pthread_mutex_lock(&j->lock);
    while (j->finished < j->nchunks)
        pthread_cond_wait(&j->all_done, &j->lock);
    const int status = j->status;
    if (status != MHC_OK && err_index)
        *err_index = j->err;
    pthread_mutex_unlock(&j->lock);
    job_release(j);
    return status;
}

/* ---- workspaces of the mHC kernels ---------------------------------------
 * An mhc_hc_ws (owned by a Python MHCLayer, freed with it) keeps one buffer per
 * concurrent chunk, grown on demand and reused by every later call, so that a
 * layer's forward allocates nothing once warm. A chunk takes a free slot
 * atomically; with no workspace, all slots busy or no memory, it mallocs. */
#define MHC_WS_SLOTS 64
struct mhc_hc_ws {
    struct {
        void *buf;
        size_t size;
        int busy; /* atomic */
    } slot[MHC_WS_SLOTS];
};

mhc_hc_ws *mhc_hc_ws_create(void)
{
    mhc_hc_ws *w = mhc_malloc(sizeof *w);
    if (w)
        memset(w, 0, sizeof *w);
    return w;
}

void mhc_hc_ws_destroy(mhc_hc_ws *w)
{
    if (!w)
        return;
    for (int i = 0; i < MHC_WS_SLOTS; i++)
        mhc_free(w->slot[i].buf);
    mhc_free(w);
}

static void *ws_take(mhc_hc_ws *w, size_t size, int *slot)
{
    *slot = -1;
    for (int i = 0; w && i < MHC_WS_SLOTS; i++) {
        int idle = 0;
        if (!__atomic_compare_exchange_n(&w->slot[i].busy, &idle, 1, 0, __ATOMIC_ACQUIRE,
                                         __ATOMIC_RELAXED))
            continue;
        if (w->slot[i].size < size) {
            void *p = mhc_realloc(w->slot[i].buf, size);
            if (!p) {
                __atomic_store_n(&w->slot[i].busy, 0, __ATOMIC_RELEASE);
                break;
            }
            w->slot[i].buf = p;
            w->slot[i].size = size;
        }
        *slot = i;
        return w->slot[i].buf;
    }
    return mhc_malloc(size);
}

static void ws_give(mhc_hc_ws *w, int slot, void *buf)
{
    if (slot >= 0)
        __atomic_store_n(&w->slot[slot].busy, 0, __ATOMIC_RELEASE);
    else
        mhc_free(buf);
}

static int threads_for(int n_threads, int64_t work, int64_t threshold)
{
    if (n_threads <= 1 || work <= threshold)
        return 1;
    return n_threads > MHC_MAX_THREADS ? MHC_MAX_THREADS : n_threads;
}

/* ---- overflow-checked size arithmetic ------------------------------------ */

/* *acc += (count-1) * |stride|  (count >= 1); returns 0 on overflow. */
static int add_extent(int64_t *acc, int64_t count, int64_t stride)
{
    int64_t e;
    if (stride == INT64_MIN)
        return 0;
    if (__builtin_mul_overflow(count - 1, stride < 0 ? -stride : stride, &e))
        return 0;
    return !__builtin_add_overflow(*acc, e, acc);
}

/* a*b for a, b >= 0, saturating at INT64_MAX (work estimates only) */
static int64_t sat_mul(int64_t a, int64_t b)
{
    int64_t r;
    return (b < 0 || __builtin_mul_overflow(a, b, &r)) ? INT64_MAX : r;
}

/* relative cost per element of a distance (Euclidean = 1) */
static int64_t manifold_cost(int manifold)
{
    return manifold == MHC_EUCLIDEAN ? 1 : manifold == MHC_POINCARE ? 2 : 3;
}

#define T float
#define SFX f32
#include "dispatch_t.inc"
#undef T
#undef SFX

#define T double
#define SFX f64
#include "dispatch_t.inc"
