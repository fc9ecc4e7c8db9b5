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

/* Matrices with n*m <= this go to the SoA kernel (one SIMD lane per matrix). */
#define MHC_SK_SMALL_MAX 256

/* Poincare clip radius factor: points with sqrt(K)|p| >= this are scaled to it. */
#define MHC_CLIP_RADIUS (1.0 - 1e-5)

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
 * Kernels of one ISA level:
 *  sk_small(a, b0, b1)       matrices [b0, b1) with n*m <= MHC_SK_SMALL_MAX
 *  sk_large(a, b0, b1, ws)   matrices [b0, b1), ws holds n + 2m elements
 *  dist(a, r0, r1)           rows [r0, r1); returns the first row with a
 *                            domain error in MHC_DOM_RAISE mode, else -1
 *  sk_bwd(a, b0, b1, ws)     Sinkhorn backward of matrices [b0, b1), ws holds
 *                            MHC_SK_BWD_WS(n, m, iters) * 64 / sizeof(T) + 64 /
 *                            sizeof(T) elements (vectors of up to 64 bytes, aligned
 *                            by the kernel)
 *  ot_w1(a, b0, b1, ws)      optimal transport problems [b0, b1) (ot_t.inc), ws
 *                            holds MHC_OT_TEAM parts of a->ws_per doubles, each
 *                            MHC_OT_WS(max rows, max cols, 8)
 */
typedef struct {
    const char *name;
    void (*sk_small_f32)(const mhc_sk_args_f32 *, int64_t, int64_t);
    void (*sk_large_f32)(const mhc_sk_args_f32 *, int64_t, int64_t, float *);
    int64_t (*dist_f32)(const mhc_dist_args_f32 *, int64_t, int64_t);
    void (*sk_bwd_f32)(const mhc_sk_bwd_args_f32 *, int64_t, int64_t, float *);
    void (*sk_small_f64)(const mhc_sk_args_f64 *, int64_t, int64_t);
    void (*sk_large_f64)(const mhc_sk_args_f64 *, int64_t, int64_t, double *);
    int64_t (*dist_f64)(const mhc_dist_args_f64 *, int64_t, int64_t);
    void (*sk_bwd_f64)(const mhc_sk_bwd_args_f64 *, int64_t, int64_t, double *);
    /* the mHC connection (see mhc_t.inc) */
    void (*hc_proj_f32)(const float *, int64_t, int64_t, int64_t, const float *, int64_t, float *,
                        double *);
    void (*hc_mix_f32)(const float *, int64_t, int64_t, int64_t, int64_t, const float *, float *,
                       int64_t);
    void (*hc_post_f32)(const float *, int64_t, const float *, int64_t, const float *,
                        const float *, float *, int64_t, int64_t, int64_t, int64_t, int);
    void (*hc_proj_f64)(const double *, int64_t, int64_t, int64_t, const double *, int64_t,
                        double *, double *);
    void (*hc_mix_f64)(const double *, int64_t, int64_t, int64_t, int64_t, const double *,
                       double *, int64_t);
    void (*hc_post_f64)(const double *, int64_t, const double *, int64_t, const double *,
                        const double *, double *, int64_t, int64_t, int64_t, int64_t, int);
    /* the backward of the mHC pre step */
    void (*hc_dots_f32)(const float *, int64_t, int64_t, int64_t, int64_t, const float *, int64_t,
                        double *);
    void (*hc_gx_f32)(const float *, int64_t, int64_t, int64_t, int64_t, const float *, int64_t,
                      const float *, const float *, const float *, const float *, int64_t,
                      float *, int64_t);
    void (*hc_dots_f64)(const double *, int64_t, int64_t, int64_t, int64_t, const double *,
                        int64_t, double *);
    void (*hc_gx_f64)(const double *, int64_t, int64_t, int64_t, int64_t, const double *, int64_t,
                      const double *, const double *, const double *, const double *, int64_t,
                      double *, int64_t);
    /* the backward of the mHC post step */
    void (*hc_post_bwd_f32)(const float *, int64_t, const float *, int64_t, const float *,
                            const float *, const float *, int64_t, int64_t, int64_t, int64_t,
                            float *, int64_t, float *, float *, float *);
    void (*hc_post_bwd_f64)(const double *, int64_t, const double *, int64_t, const double *,
                            const double *, const double *, int64_t, int64_t, int64_t, int64_t,
                            double *, int64_t, double *, double *, double *);
    /* optimal transport of small problems (curvature), double only */
    void (*ot_w1_f64)(const mhc_ot_args *, int64_t, int64_t, double *);
} mhc_kernel_table;

/* Kernels are internal to the module: hidden from the dynamic symbol table. */
#define MHC_HIDDEN __attribute__((visibility("hidden")))
#define MHC_DECLARE_KERNELS(isa)                                                        \
    MHC_HIDDEN void mhc_sk_small_f32_##isa(const mhc_sk_args_f32 *, int64_t, int64_t);             \
    MHC_HIDDEN void mhc_sk_large_f32_##isa(const mhc_sk_args_f32 *, int64_t, int64_t, float *);    \
    MHC_HIDDEN int64_t mhc_dist_f32_##isa(const mhc_dist_args_f32 *, int64_t, int64_t);            \
    MHC_HIDDEN void mhc_sk_bwd_f32_##isa(const mhc_sk_bwd_args_f32 *, int64_t, int64_t, float *);  \
    MHC_HIDDEN void mhc_sk_small_f64_##isa(const mhc_sk_args_f64 *, int64_t, int64_t);             \
    MHC_HIDDEN void mhc_sk_large_f64_##isa(const mhc_sk_args_f64 *, int64_t, int64_t, double *);   \
    MHC_HIDDEN int64_t mhc_dist_f64_##isa(const mhc_dist_args_f64 *, int64_t, int64_t);            \
    MHC_HIDDEN void mhc_sk_bwd_f64_##isa(const mhc_sk_bwd_args_f64 *, int64_t, int64_t, double *); \
    MHC_HIDDEN void mhc_hc_proj_f32_##isa(const float *, int64_t, int64_t, int64_t, const float *,  \
                                          int64_t, float *, double *);                              \
    MHC_HIDDEN void mhc_hc_mix_f32_##isa(const float *, int64_t, int64_t, int64_t, int64_t,         \
                                         const float *, float *, int64_t);                          \
    MHC_HIDDEN void mhc_hc_post_f32_##isa(const float *, int64_t, const float *, int64_t,           \
                                          const float *, const float *, float *, int64_t, int64_t,  \
                                          int64_t, int64_t, int);                                   \
    MHC_HIDDEN void mhc_hc_proj_f64_##isa(const double *, int64_t, int64_t, int64_t,                \
                                          const double *, int64_t, double *, double *);             \
    MHC_HIDDEN void mhc_hc_mix_f64_##isa(const double *, int64_t, int64_t, int64_t, int64_t,        \
                                         const double *, double *, int64_t);                        \
    MHC_HIDDEN void mhc_hc_post_f64_##isa(const double *, int64_t, const double *, int64_t,         \
                                          const double *, const double *, double *, int64_t,        \
                                          int64_t, int64_t, int64_t, int);                          \
    MHC_HIDDEN void mhc_hc_dots_f32_##isa(const float *, int64_t, int64_t, int64_t, int64_t,        \
                                          const float *, int64_t, double *);                        \
    MHC_HIDDEN void mhc_hc_gx_f32_##isa(const float *, int64_t, int64_t, int64_t, int64_t,          \
                                        const float *, int64_t, const float *, const float *,       \
                                        const float *, const float *, int64_t, float *, int64_t);   \
    MHC_HIDDEN void mhc_hc_dots_f64_##isa(const double *, int64_t, int64_t, int64_t, int64_t,       \
                                          const double *, int64_t, double *);                       \
    MHC_HIDDEN void mhc_hc_gx_f64_##isa(const double *, int64_t, int64_t, int64_t, int64_t,         \
                                        const double *, int64_t, const double *, const double *,    \
                                        const double *, const double *, int64_t, double *,          \
                                        int64_t);                                                   \
    MHC_HIDDEN void mhc_hc_post_bwd_f32_##isa(const float *, int64_t, const float *, int64_t,       \
                                              const float *, const float *, const float *, int64_t, \
                                              int64_t, int64_t, int64_t, float *, int64_t, float *, \
                                              float *, float *);                                    \
    MHC_HIDDEN void mhc_hc_post_bwd_f64_##isa(const double *, int64_t, const double *, int64_t,     \
                                              const double *, const double *, const double *,       \
                                              int64_t, int64_t, int64_t, int64_t, double *,         \
                                              int64_t, double *, double *, double *);         \
    MHC_HIDDEN void mhc_ot_w1_f64_##isa(const mhc_ot_args *, int64_t, int64_t, double *);

MHC_DECLARE_KERNELS(portable)
#if MHC_X86
MHC_DECLARE_KERNELS(sse)
MHC_DECLARE_KERNELS(avx2)
MHC_DECLARE_KERNELS(avx512)
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
