/*
 * mhc_internal.h -- private declarations shared by dispatch.c and the per-ISA
 * kernel files (kernels_<isa>.c, which all compile kernels.inc).
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
#define MHC_SK_SMALL_MAX 64
/* Streams of the native mHC kernels (SPEC 2.3 uses 4). */
#define MHC_HC_MAX_N 16

/* Poincare clip radius factor: points with sqrt(K)|p| >= this are scaled to it. */
#define MHC_CLIP_RADIUS (1.0 - 1e-5)

/* Arguments of one Sinkhorn call (already validated, one dtype). */
#define MHC_SK_ARGS(T)                                                      \
    struct {                                                                \
        const T *x; int64_t xb, xr;                                         \
        T *out; int64_t ob, orr;                                            \
        int64_t n, m;                                                       \
        const T *rs; int64_t rsb;                                           \
        const T *cs; int64_t csb;                                           \
        int64_t iters; T tau; int flags;                                    \
    }
typedef MHC_SK_ARGS(float) mhc_sk_args_f32;
typedef MHC_SK_ARGS(double) mhc_sk_args_f64;

/* Arguments of one row-wise distance call: out[r] = dist(x + r*xr, c + r*cr). */
#define MHC_DIST_ARGS(T)                                                    \
    struct {                                                                \
        int manifold; const T *x; int64_t xr;                               \
        const T *c; int64_t cr; T *out;                                     \
        int64_t d; double K; int mode;                                      \
    }
typedef MHC_DIST_ARGS(float) mhc_dist_args_f32;
typedef MHC_DIST_ARGS(double) mhc_dist_args_f64;

/*
 * Kernels of one ISA level:
 *  sk_small(a, b0, b1)       matrices [b0, b1) with n*m <= MHC_SK_SMALL_MAX
 *  sk_large(a, b0, b1, ws)   matrices [b0, b1), ws holds n + 2m elements
 *  dist(a, r0, r1)           rows [r0, r1); returns the first row with a
 *                            domain error in MHC_DOM_RAISE mode, else -1
 */
typedef struct {
    const char *name;
    void (*sk_small_f32)(const mhc_sk_args_f32 *, int64_t, int64_t);
    void (*sk_large_f32)(const mhc_sk_args_f32 *, int64_t, int64_t, float *);
    int64_t (*dist_f32)(const mhc_dist_args_f32 *, int64_t, int64_t);
    void (*sk_small_f64)(const mhc_sk_args_f64 *, int64_t, int64_t);
    void (*sk_large_f64)(const mhc_sk_args_f64 *, int64_t, int64_t, double *);
    int64_t (*dist_f64)(const mhc_dist_args_f64 *, int64_t, int64_t);
    /* the mHC connection (see kernels_t.inc) */
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
} mhc_kernel_table;

/* Kernels are internal to the module: hidden from the dynamic symbol table. */
#define MHC_HIDDEN __attribute__((visibility("hidden")))
#define MHC_DECLARE_KERNELS(isa)                                                        \
    MHC_HIDDEN void mhc_sk_small_f32_##isa(const mhc_sk_args_f32 *, int64_t, int64_t);             \
    MHC_HIDDEN void mhc_sk_large_f32_##isa(const mhc_sk_args_f32 *, int64_t, int64_t, float *);    \
    MHC_HIDDEN int64_t mhc_dist_f32_##isa(const mhc_dist_args_f32 *, int64_t, int64_t);            \
    MHC_HIDDEN void mhc_sk_small_f64_##isa(const mhc_sk_args_f64 *, int64_t, int64_t);             \
    MHC_HIDDEN void mhc_sk_large_f64_##isa(const mhc_sk_args_f64 *, int64_t, int64_t, double *);   \
    MHC_HIDDEN int64_t mhc_dist_f64_##isa(const mhc_dist_args_f64 *, int64_t, int64_t);            \
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
                                          int64_t, int64_t, int64_t, int);

MHC_DECLARE_KERNELS(portable)
#if MHC_X86
MHC_DECLARE_KERNELS(sse)
MHC_DECLARE_KERNELS(avx2)
MHC_DECLARE_KERNELS(avx512)
#endif

/* Heap blocks of the library (dispatch.c): malloc/realloc/free with the
 * test-only fault hook and live-block counter of mhc_native.h. */
#include <stddef.h>
void *mhc_malloc(size_t size);
void *mhc_realloc(void *old, size_t size);
void mhc_free(void *p);

#endif /* MHC_INTERNAL_H */
