/*
 * mhc_internal.h -- private declarations shared by the C sources:
 *   dispatch.c (+ *_abi_t.inc)  the public kernels: validation, ISA, threads
 *   kernels_<isa>.c             kernels.inc compiled per ISA level
 *   alloc.c                     mhc_malloc & co. (test-only fault hooks)
 *   threads.c / threads.h       the helper-thread pool, mhc_run_chunks
 *   workspace.c                 the mHC workspaces (mhc_hc_ws)
 *   checked.h                   overflow-checked size arithmetic
 */
#ifndef MHC_INTERNAL_H
#define MHC_INTERNAL_H
#include <stdint.h>
#include <math.h>
#include <string.h>
#include "mhc_native.h"

#if defined(__x86_64__) || defined(__i386__)
#define MHC_X86 1
#else
#define MHC_X86 0
#endif

/* Arguments of one Sinkhorn call (already validated, one dtype). */
#define MHC_SK_ARGS(T)                                                      \
    struct {                                                                \
        const T *x; int64_t x_bstride, x_rstride;   /* matrix b, row i */    \
        T *out; int64_t out_bstride, out_rstride;                           \
        int64_t n, m;                                                       \
        const T *rs; int64_t rs_bstride;   /* row targets, NULL: all 1 */    \
        const T *cs; int64_t cs_bstride;   /* column targets, NULL: n/m */   \
        int64_t iters; T tau; int flags;   /* flags: MHC_SK_* */             \
    }
typedef MHC_SK_ARGS(float) mhc_sk_args_f32;
typedef MHC_SK_ARGS(double) mhc_sk_args_f64;

/* Arguments of one Sinkhorn backward call: the forward's (out unused) plus the
 * upstream gradient g and the result gx, matrix b, row i. */
#define MHC_SK_BWD_ARGS(T)                                                  \
    struct {                                                                \
        MHC_SK_ARGS(T) f;                                                   \
        const T *g; int64_t g_bstride, g_rstride;                           \
        T *gx; int64_t gx_bstride, gx_rstride;                              \
    }
typedef MHC_SK_BWD_ARGS(float) mhc_sk_bwd_args_f32;
typedef MHC_SK_BWD_ARGS(double) mhc_sk_bwd_args_f64;
/* Workspace elements of sk_bwd for one matrix (the ABI checks it for overflow). */
#define MHC_SK_BWD_WS(n, m, iters) (2 * (n) * (m) + (2 * (iters) + 3) * ((n) + (m)))

/* Arguments of one row-wise distance call:
 * out[r] = dist(x + r*x_rstride, c + r*c_rstride). */
#define MHC_DIST_ARGS(T)                                                    \
    struct {                                                                \
        int manifold; const T *x; int64_t x_rstride;                        \
        const T *c; int64_t c_rstride; T *out;                              \
        int64_t d; double K; int mode;                                      \
    }
typedef MHC_DIST_ARGS(float) mhc_dist_args_f32;
typedef MHC_DIST_ARGS(double) mhc_dist_args_f64;

/* Arguments of one batched optimal-transport call (mhc_ot_w1_f64): problem b has
 * rows rptr[b] .. rptr[b+1] (masses mu[...]), columns cptr[b] .. cptr[b+1]
 * (masses mv[...]) and costs at cost + coff[b] (C-contiguous rows x cols);
 * results w[b] and, when iters is not NULL, iters[b]. */
typedef struct {
    const double *cost, *mu, *mv;
    const int64_t *rptr, *cptr, *coff;
    double *w; int64_t *iters;
    int64_t max_iter, ws_per;   /* ws_per: workspace elements of one problem */
    double reg, tol;
    int relax;
} mhc_ot_args;
/* Problems the kernel keeps in flight at once (their iterations interleaved). */
#define MHC_OT_TEAM 4
/* Workspace elements of one ot_w1 problem with vectors of `lanes` elements. */
#define MHC_OT_RUP(x, lanes) (((x) + (lanes) - 1) / (lanes) * (lanes))
#define MHC_OT_WS(n, m, lanes)                                                      \
    ((n) * MHC_OT_RUP(m, lanes) + (m) * MHC_OT_RUP(n, lanes) +                      \
     4 * (MHC_OT_RUP(n, lanes) + MHC_OT_RUP(m, lanes)))

/*
 * The kernels of one ISA level, listed once: X(isa, name, return type,
 * parameters) per kernel, `isa` passed through. From this list come the members
 * of mhc_kernel_table, the hidden declarations of each level's functions
 * mhc_<name>_<isa> (defined in the family files as KFN(mhc_<base>), kernels.inc)
 * and the tables of dispatch.c (filled by name). MHC_KERNELS_T lists the
 * kernels of one element type T (names <base>_<SFX>); T is float or double.
 */
#define MHC_KERNELS_T(X, isa, T, SFX)                                                      \
    /* sk_small(a, b0, b1): matrices [b0, b1) with n*m <= MHC_SK_SMALL_MAX */              \
    X(isa, sk_small_##SFX, void, (const mhc_sk_args_##SFX *, int64_t, int64_t))            \
    /* sk_large(a, b0, b1, ws): matrices [b0, b1), ws holds n + 2m elements */             \
    X(isa, sk_large_##SFX, void, (const mhc_sk_args_##SFX *, int64_t, int64_t, T *))       \
    /* dist(a, r0, r1): rows [r0, r1); returns the first row with a domain error in        \
     * MHC_DOM_RAISE mode, else -1 */                                                      \
    X(isa, dist_##SFX, int64_t, (const mhc_dist_args_##SFX *, int64_t, int64_t))           \
    /* sk_bwd(a, b0, b1, ws): Sinkhorn backward of matrices [b0, b1), ws holds             \
     * MHC_SK_BWD_WS(n, m, iters) * 64 / sizeof(T) + 64 / sizeof(T) elements (vectors      \
     * of up to 64 bytes, aligned by the kernel) */                                        \
    X(isa, sk_bwd_##SFX, void, (const mhc_sk_bwd_args_##SFX *, int64_t, int64_t, T *))     \
    /* the mHC connection (see mhc_t.inc) */                                               \
    X(isa, hc_proj_##SFX, void,                                                            \
      (const T *, int64_t, int64_t, int64_t, const T *, int64_t, int64_t, int, T *,        \
       double *, double *))                                                                \
    X(isa, hc_mix_##SFX, void,                                                             \
      (const T *, int64_t, int64_t, int64_t, int64_t, const T *, T *, int64_t, int))       \
    X(isa, hc_post_##SFX, void,                                                            \
      (const T *, int64_t, const T *, int64_t, const T *, const T *, T *, int64_t,         \
       int64_t, int64_t, int64_t, int))                                                    \
    /* the backward of the mHC pre step */                                                 \
    X(isa, hc_dots_##SFX, void,                                                            \
      (const T *, int64_t, int64_t, int64_t, int64_t, const T *, int64_t, double *))       \
    X(isa, hc_gx_##SFX, void,                                                              \
      (const T *, int64_t, int64_t, int64_t, int64_t, const T *, int64_t, const T *,       \
       const T *, const T *, const T *, int64_t, T *, int64_t))                            \
    X(isa, hc_gw_##SFX, void,                                                              \
      (const T *, int64_t, int64_t, int64_t, const T *, int64_t, T *, int64_t))            \
    /* the backward of the mHC post step */                                                \
    X(isa, hc_post_bwd_##SFX, void,                                                        \
      (const T *, int64_t, const T *, int64_t, const T *, const T *, const T *, int64_t,   \
       int64_t, int64_t, int64_t, T *, int64_t, T *, T *, T *))

#define MHC_KERNEL_LIST(X, isa)                                                            \
    MHC_KERNELS_T(X, isa, float, f32)                                                      \
    MHC_KERNELS_T(X, isa, double, f64)                                                     \
    /* optimal transport of small problems (curvature), double only: ot_w1(a, b0, b1,      \
     * ws), problems [b0, b1) (ot_t.inc), ws holds MHC_OT_TEAM parts of a->ws_per         \
     * doubles, each MHC_OT_WS(max rows, max cols, 8) */                                   \
    X(isa, ot_w1_f64, void, (const mhc_ot_args *, int64_t, int64_t, double *))            \
    /* hc_post on bfloat16 streams (uint16_t bits), float coefficients (mhc_t.inc) */      \
    X(isa, hc_post_bf16_f32, void,                                                         \
      (const uint16_t *, int64_t, const uint16_t *, int64_t, const float *, int64_t,       \
       const float *, int64_t, int64_t, int64_t, uint16_t *, int64_t, int64_t, int64_t,    \
       int64_t))                                                                           \
    /* rows of bfloat16 widened to float / float rounded to bfloat16 (src, its row         \
     * stride, dst, its row stride, rows, length): the pre step on bfloat16 streams */     \
    X(isa, bf16_widen_f32, void, (const uint16_t *, int64_t, float *, int64_t, int64_t,    \
                                  int64_t))                                                \
    X(isa, bf16_narrow_f32, void, (const float *, int64_t, uint16_t *, int64_t, int64_t,   \
                                   int64_t))

#define MHC_KERNEL_MEMBER(isa, name, ret, params) ret(*name) params;
typedef struct {
    const char *name; /* the ISA level */
    MHC_KERNEL_LIST(MHC_KERNEL_MEMBER, ) /* no ISA: the members */
} mhc_kernel_table;

/* Kernels are internal to the module: hidden from the dynamic symbol table. */
#define MHC_HIDDEN __attribute__((visibility("hidden")))
#define MHC_KERNEL_DECLARE(isa, name, ret, params) MHC_HIDDEN ret mhc_##name##_##isa params;
MHC_KERNEL_LIST(MHC_KERNEL_DECLARE, portable)
#if MHC_X86
MHC_KERNEL_LIST(MHC_KERNEL_DECLARE, sse)
MHC_KERNEL_LIST(MHC_KERNEL_DECLARE, avx2)
MHC_KERNEL_LIST(MHC_KERNEL_DECLARE, avx512)
#endif

/* Heap blocks of the library (alloc.c): malloc/realloc/free with the
 * test-only fault hook and live-block counter of mhc_native.h. */
#include <stddef.h>
MHC_HIDDEN void *mhc_malloc(size_t size);
MHC_HIDDEN void *mhc_realloc(void *old, size_t size);
MHC_HIDDEN void mhc_free(void *p);

/* Workspaces of the mHC kernels (workspace.c): a buffer of at least size
 * bytes from a free slot of w (grown on demand, kept), or from the heap when w
 * is NULL, all its slots are busy or it cannot grow; NULL when out of memory.
 * *slot says which, for mhc_ws_give (which frees a heap buffer). */
MHC_HIDDEN void *mhc_ws_take(mhc_hc_ws *w, size_t size, int *slot);
MHC_HIDDEN void mhc_ws_give(mhc_hc_ws *w, int slot, void *buf);

#endif /* MHC_INTERNAL_H */
