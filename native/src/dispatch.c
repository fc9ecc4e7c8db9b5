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

#define MHC_MAX_THREADS 256
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
typedef struct {
    mhc_chunk_fn fn;
    const void *ctx;
    int64_t lo, hi, err;
    int status;
} mhc_chunk;

static void *chunk_main(void *p)
{
    mhc_chunk *ch = p;
    ch->err = -1;
    ch->status = ch->fn(ch->ctx, ch->lo, ch->hi, &ch->err);
    return NULL;
}

/* Run fn over [0, count) in nth chunks (boundaries multiples of align); the
 * first failing chunk in index order gives the status and err_index, so a
 * domain error reports the globally first offending index. */
static int run_chunks(mhc_chunk_fn fn, const void *ctx, int64_t count, int64_t align, int nth,
                      int64_t *err_index)
{
    mhc_chunk ch[MHC_MAX_THREADS];
    pthread_t tid[MHC_MAX_THREADS];
    int started[MHC_MAX_THREADS];
    const int64_t units = (count + align - 1) / align;
    if (nth > units)
        nth = (int)units;
    if (nth < 1)
        nth = 1;
    for (int t = 0; t < nth; t++) {
        int64_t lo = units * t / nth * align, hi = units * (t + 1) / nth * align;
        ch[t] = (mhc_chunk){fn, ctx, lo, hi < count ? hi : count, -1, MHC_OK};
    }
    for (int t = 1; t < nth; t++)
        started[t] = pthread_create(&tid[t], NULL, chunk_main, &ch[t]) == 0;
    chunk_main(&ch[0]);
    for (int t = 1; t < nth; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            chunk_main(&ch[t]);             /* could not spawn: run it here */
    }
    for (int t = 0; t < nth; t++) {
        if (ch[t].status != MHC_OK) {
            if (err_index)
                *err_index = ch[t].err;
            return ch[t].status;
        }
    }
    return MHC_OK;
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
