/*
 * checked.h -- overflow-checked size arithmetic of the ABI's argument checks
 * (dispatch.c and its *_abi_t.inc).
 */
#ifndef MHC_CHECKED_H
#define MHC_CHECKED_H
#include <stdint.h>

/* *acc += (count-1) * |stride|  (count >= 1); returns 0 on overflow. */
static inline int add_extent(int64_t *acc, int64_t count, int64_t stride)
{
    int64_t e;
    if (stride == INT64_MIN)
        return 0;
    if (__builtin_mul_overflow(count - 1, stride < 0 ? -stride : stride, &e))
        return 0;
    return !__builtin_add_overflow(*acc, e, acc);
}

/* a*b for a, b >= 0, saturating at INT64_MAX (work estimates only) */
static inline int64_t sat_mul(int64_t a, int64_t b)
{
    int64_t r;
    return (b < 0 || __builtin_mul_overflow(a, b, &r)) ? INT64_MAX : r;
}

/* a+b for a, b >= 0, saturating at INT64_MAX (work estimates only) */
static inline int64_t sat_add(int64_t a, int64_t b)
{
    int64_t r;
    return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

#endif /* MHC_CHECKED_H */
