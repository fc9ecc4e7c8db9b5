/*
 * alloc.c -- the heap blocks of the library: mhc_malloc / mhc_realloc /
 * mhc_free and the test-only fault hooks of mhc_native.h.
 */
#include <stdlib.h>
#include "mhc_internal.h"

/* ---- allocation (with the test-only fault hook) ---------------------------
 * Every heap block of the library goes through mhc_malloc / mhc_realloc /
 * mhc_free, so that a test can make allocations fail
 * (mhc_debug_fail_allocs_after) and count the blocks still held
 * (mhc_debug_live_allocs). Both counters are atomics, inert unless a test
 * arms them. */
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
