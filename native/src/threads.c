/*
 * threads.c -- the pool of helper threads and mhc_run_chunks (threads.h).
 */
#include <pthread.h>
#include <time.h>
#include "threads.h"

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

int mhc_run_chunks(mhc_chunk_fn fn, const void *ctx, int64_t count, int64_t align, int nth,
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
    *j = (mhc_job){.fn = fn, .ctx = ctx, .count = count, .chunk = per * align,
                   .nchunks = (units + per - 1) / per, .next = 0, .refs = 1};
    j->bad_chunk = j->nchunks;
    j->status = MHC_OK;
    j->err = -1;
    if (pthread_mutex_init(&j->lock, NULL) || pthread_cond_init(&j->all_done, NULL)) {
        mhc_free(j);
        return mhc_run_chunks(fn, ctx, count, align, 1, err_index);
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
