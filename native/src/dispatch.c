/*
 * dispatch.c -- the public mhc_* kernels: argument validation at the ABI,
 * ISA resolution (one kernel table per level), splitting over threads.
 *
 * Threads: no pool. A call whose estimated single-thread work is large
 * spawns n_threads-1 pthreads, runs the first chunk itself and joins; small
 * calls stay on the calling thread.
 */
#include <pthread.h>
#include <stdlib.h>
#include "mhc_internal.h"

#define MHC_MAX_THREADS 256  /* cap on threads of one call */
/* Thread only above ~200 us of single-thread work: Sinkhorn in element
 * iterations (~0.3 ns each), distances in element visits weighted by
 * manifold_cost (~0.1 ns per unit). */
#define MHC_SK_PAR_WORK (1 << 20)
#define MHC_DIST_PAR_WORK (2 << 20)
/* Sinkhorn workspaces up to this many bytes live on the stack. */
#define MHC_STACK_WS 16384

#define MHC_TABLE(isa)                                                                 \
    {#isa, mhc_sk_small_f32_##isa, mhc_sk_large_f32_##isa, mhc_dist_f32_##isa,        \
     mhc_sk_small_f64_##isa, mhc_sk_large_f64_##isa, mhc_dist_f64_##isa}

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
 * caller and the workers claim them from an atomic counter. The caller waits
 * only for chunks a worker has claimed, never for a worker that has not been
 * scheduled yet (on a shared machine that wait could be a whole time slice):
 * a late worker finds nothing left and exits. Workers are detached and the
 * job lives on the heap with a reference count, so a late worker never
 * touches the caller's stack; fn and ctx are used only for claimed chunks,
 * all of which finish before the caller returns.
 */
typedef struct {
    mhc_chunk_fn fn;
    const void *ctx;
    int64_t count, chunk, nchunks;
    int64_t next;        /* atomic: next chunk to claim */
    int refs;            /* atomic: caller + workers still holding the job */
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
        free(j);
    }
}

static void *job_worker(void *p)
{
    job_work(p);
    job_release(p);
    return NULL;
}

/* Run fn over [0, count) on up to nth threads (chunk boundaries multiples of
 * align). The first failing chunk in index order gives the status and
 * err_index, so a domain error reports the globally first offending index. */
static int run_chunks(mhc_chunk_fn fn, const void *ctx, int64_t count, int64_t align, int nth,
                      int64_t *err_index)
{
    const int64_t units = (count + align - 1) / align;
    mhc_job *j = nth > 1 && units > 1 ? malloc(sizeof *j) : NULL;
    if (!j) {                                /* one thread (or no memory to share) */
        int64_t err = -1;
        const int status = count ? fn(ctx, 0, count, &err) : MHC_OK;
        if (status != MHC_OK && err_index)
            *err_index = err;
        return status;
    }
    const int64_t pieces = units < (int64_t)nth * 16 ? units : (int64_t)nth * 16;
    const int64_t per = (units + pieces - 1) / pieces;
    *j = (mhc_job){fn, ctx, count, per * align, (units + per - 1) / per, 0, 1};
    j->bad_chunk = j->nchunks;
    j->status = MHC_OK;
    j->err = -1;
    if (pthread_mutex_init(&j->lock, NULL) || pthread_cond_init(&j->all_done, NULL)) {
        free(j);
        return run_chunks(fn, ctx, count, align, 1, err_index);
    }
    pthread_attr_t attr;
    const int have_attr = pthread_attr_init(&attr) == 0 &&
                          pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0;
    for (int t = 1; have_attr && t < nth && t < j->nchunks; t++) {
        pthread_t tid;
        __atomic_add_fetch(&j->refs, 1, __ATOMIC_RELAXED);
        if (pthread_create(&tid, &attr, job_worker, j) != 0) {
            __atomic_sub_fetch(&j->refs, 1, __ATOMIC_RELAXED);
            break;                           /* the caller does the rest */
        }
    }
    if (have_attr)
        pthread_attr_destroy(&attr);
    job_work(j);
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
