/*
 * threads.h -- splitting one call's range over threads (threads.c).
 *
 * A call whose estimated single-thread work is large posts its chunks to a
 * pool of helper threads (started on demand, kept), works on them itself and
 * waits only for chunks a helper has claimed; small calls stay on the calling
 * thread.
 */
#ifndef MHC_THREADS_H
#define MHC_THREADS_H
#include <stdint.h>
#include "mhc_internal.h"

#define MHC_MAX_THREADS 256  /* cap on threads of one call */

/* A chunk [lo, hi) of a call; fn returns a status and sets *err (or -1). */
typedef int (*mhc_chunk_fn)(const void *ctx, int64_t lo, int64_t hi, int64_t *err);

/* Run fn over [0, count) on up to nth threads (chunk boundaries multiples of
 * align). The first failing chunk in index order gives the status and
 * err_index (may be NULL), so a domain error reports the globally first
 * offending index. */
MHC_HIDDEN int mhc_run_chunks(mhc_chunk_fn fn, const void *ctx, int64_t count, int64_t align,
                              int nth, int64_t *err_index);

/* Threads for a call of `work` units: 1 up to threshold, else n_threads
 * (at most MHC_MAX_THREADS). */
static inline int threads_for(int n_threads, int64_t work, int64_t threshold)
{
    if (n_threads <= 1 || work <= threshold)
        return 1;
    return n_threads > MHC_MAX_THREADS ? MHC_MAX_THREADS : n_threads;
}

#endif /* MHC_THREADS_H */
