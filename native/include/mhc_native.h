/*
 * mhc_native.h -- the C ABI of mhc_array's native backend.
 *
 * Conventions
 *  - Every function returns an mhc_status; it never aborts and never prints.
 *  - Sizes and strides are int64_t, strides counted in ELEMENTS (not bytes).
 *    The last axis of every array is contiguous (element stride 1).
 *  - Pointers are aligned to their element type (4 bytes for float, 8 for
 *    double), as C requires; no larger (vector) alignment is needed. A
 *    pointer that is not is MHC_ERR_MISALIGNED (nothing is read or written).
 *  - `isa` is the requested instruction-set level (mhc_isa); the library clamps
 *    it to the best level this CPU and OS support, so an unsupported level is
 *    never executed.
 *  - `n_threads` <= 1 runs on the calling thread; larger values may split the
 *    batch over that many threads when the work is large enough to pay for it.
 *  - `err_index` (may be NULL) receives the flat index of the first offending
 *    element when MHC_ERR_DOMAIN is returned, else -1.
 *  - Global mutable state: the CPU feature table (filled once), the pool of
 *    helper threads (started on demand by calls with n_threads > 1, kept for
 *    the life of the process, restarted empty in a forked child) and the two
 *    test-only allocation counters below (inert unless a test arms them).
 *
 * The constants shared with the CUDA kernels and Python (flags, codes, limits)
 * are in mhc_constants.h, included below.
 *
 * build_ffi.py turns this file (with mhc_constants.h) into the cffi cdef: keep
 * it plain C declarations, `typedef enum` with literal values and integer
 * #defines.
 */
#ifndef MHC_NATIVE_H
#define MHC_NATIVE_H
#include <stdint.h>
#include "../cuda/mhc_constants.h" /* installed beside the CUDA sources */

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    MHC_OK = 0,
    MHC_ERR_OUT_OF_MEMORY = 1,
    MHC_ERR_INVALID_DIMENSION = 2,
    MHC_ERR_NULL_POINTER = 3,
    MHC_ERR_COMPUTATION = 4,
    MHC_ERR_DOMAIN = 5,
    MHC_ERR_MISALIGNED = 6
} mhc_status;

typedef enum {
    MHC_ISA_PORTABLE = 0,
    MHC_ISA_SSE = 1,     /* SSE4.1 (SSE2 baseline on x86-64) */
    MHC_ISA_AVX2 = 2,    /* AVX2 + FMA */
    MHC_ISA_AVX512 = 3   /* AVX-512 F/DQ/BW/VL */
} mhc_isa;

/* CPU feature bits reported by mhc_cpu_feature_bits(). */
#define MHC_CPU_SSE2      (1u << 0)
#define MHC_CPU_SSE41     (1u << 1)
#define MHC_CPU_AVX       (1u << 2)
#define MHC_CPU_AVX2      (1u << 3)
#define MHC_CPU_FMA       (1u << 4)
#define MHC_CPU_AVX512F   (1u << 5)
#define MHC_CPU_AVX512DQ  (1u << 6)
#define MHC_CPU_AVX512BW  (1u << 7)
#define MHC_CPU_AVX512VL  (1u << 8)
#define MHC_CPU_OS_AVX    (1u << 9)   /* XGETBV: OS saves YMM state */
#define MHC_CPU_OS_AVX512 (1u << 10)  /* XGETBV: OS saves ZMM/opmask state */
#define MHC_CPU_AVX512BF16 (1u << 11) /* VCVTNEPS2BF16: float to bfloat16 in one instruction */

uint32_t mhc_cpu_feature_bits(void);  /* detected once, then constant */
int mhc_best_isa(void);               /* best mhc_isa usable here */
int mhc_resolve_isa(int requested);   /* min(requested, best); <0 -> best */
/* A negative `isa` (auto) runs the best level's kernels, except where a rule of
 * this CPU takes a kernel family from a narrower level that is measured faster on
 * it; mhc_auto_rules() says which rules apply (0: none). */
#define MHC_RULE_SK_LARGE_AVX2 1   /* Sinkhorn of large matrices: AVX2's kernels */
#define MHC_RULE_HC_ROWS_AVX2 2    /* mHC projection, phi in rows (float32): AVX2's */
int mhc_auto_rules(void);
/* 1 when this CPU runs AVX-512 on 256-bit units (AMD family 19h, Zen 4) */
int mhc_avx512_half_width(void);
const char *mhc_build_info(void);     /* compiler and flags, static string */
const char *mhc_version(void);        /* package version compiled in */
/* Elements of elem_bytes bytes (4: float, 8: double) in one vector of the
 * kernels at the level `isa` resolves to (mhc_resolve_isa): portable 1, sse 16
 * bytes, avx2 32, avx512 64 (e.g. avx2: 8 floats, 4 doubles). 0 for another
 * elem_bytes. */
int mhc_vector_lanes(int isa, int elem_bytes);

/* ---- Sinkhorn-Knopp ------------------------------------------------------
 * For b in [0, batch): the matrix M_b (n x m) is read from
 *   x + b*x_bstride + i*x_rstride + j          (i < n, j < m)
 * and the result written to out + b*out_bstride + i*out_rstride + j.
 * out may alias x exactly (in place); other overlaps are undefined.
 * flags: MHC_SK_LOGITS -> start from exp(x - max over the matrix);
 *        else the start is x and a negative entry is MHC_ERR_DOMAIN (err_index
 *        = b*n*m + i*m + j of the first one, nothing is written).
 *        MHC_SK_COLS_FIRST -> each iteration normalises columns, then rows.
 * One iteration (rows-first): row i *= r_i / (rowsum_i + tau), then column j
 * *= c_j / (colsum_j + tau). A sum + tau == 0 leaves that row/column at 0.
 * row_sums: NULL -> every target 1, else r_i = row_sums[b*rs_bstride + i].
 * col_sums: NULL -> every target n/m, else c_j = col_sums[b*cs_bstride + j].
 * (bstride 0 broadcasts one target vector over the batch.)
 * (MHC_SK_* are in mhc_constants.h.)
 */

int mhc_sinkhorn_f32(const float *x, int64_t x_bstride, int64_t x_rstride,
                     float *out, int64_t out_bstride, int64_t out_rstride,
                     int64_t batch, int64_t n, int64_t m,
                     const float *row_sums, int64_t rs_bstride,
                     const float *col_sums, int64_t cs_bstride,
                     int64_t iterations, double tau, int flags,
                     int isa, int n_threads, int64_t *err_index);
int mhc_sinkhorn_f64(const double *x, int64_t x_bstride, int64_t x_rstride,
                     double *out, int64_t out_bstride, int64_t out_rstride,
                     int64_t batch, int64_t n, int64_t m,
                     const double *row_sums, int64_t rs_bstride,
                     const double *col_sums, int64_t cs_bstride,
                     int64_t iterations, double tau, int flags,
                     int isa, int n_threads, int64_t *err_index);

/* ---- Sinkhorn-Knopp, backward -------------------------------------------
 * grad_x = d<grad_out, sinkhorn(x)>/dx: the exact gradient of the unrolled
 * iterations of mhc_sinkhorn_* with the same x, batch, n, m, targets,
 * iterations, tau and flags (gradients w.r.t. the targets are not computed).
 * grad_out (the upstream gradient) is read from
 *   grad_out + b*g_bstride + i*g_rstride + j
 * and grad_x written to grad_x + b*gx_bstride + i*gx_rstride + j; grad_x must
 * not overlap x, grad_out or the targets. The forward is recomputed per
 * matrix (its scaling vectors kept in a per-thread workspace of about
 * (2*iterations + 3)*(n + m) + 2*n*m elements; MHC_ERR_OUT_OF_MEMORY if it
 * cannot be had), then propagated backward: a row (column) whose sum + tau is
 * 0 passes no gradient. With MHC_SK_LOGITS the max's term goes to the first
 * maximal entry in C order; without it a negative x is MHC_ERR_DOMAIN as in
 * mhc_sinkhorn_* (nothing written).
 */
int mhc_sinkhorn_backward_f32(const float *x, int64_t x_bstride, int64_t x_rstride,
                              const float *grad_out, int64_t g_bstride, int64_t g_rstride,
                              float *grad_x, int64_t gx_bstride, int64_t gx_rstride,
                              int64_t batch, int64_t n, int64_t m,
                              const float *row_sums, int64_t rs_bstride,
                              const float *col_sums, int64_t cs_bstride,
                              int64_t iterations, double tau, int flags,
                              int isa, int n_threads, int64_t *err_index);
int mhc_sinkhorn_backward_f64(const double *x, int64_t x_bstride, int64_t x_rstride,
                              const double *grad_out, int64_t g_bstride, int64_t g_rstride,
                              double *grad_x, int64_t gx_bstride, int64_t gx_rstride,
                              int64_t batch, int64_t n, int64_t m,
                              const double *row_sums, int64_t rs_bstride,
                              const double *col_sums, int64_t cs_bstride,
                              int64_t iterations, double tau, int flags,
                              int isa, int n_threads, int64_t *err_index);

/* ---- Distances ----------------------------------------------------------
 * out[r] = dist(x + r*x_rstride, c + r*c_rstride) for r < rows, vectors of
 * length d (a stride of 0 repeats one vector). out is contiguous.
 * manifold: MHC_EUCLIDEAN | MHC_POINCARE (ball of curvature -K) | MHC_SPHERICAL.
 * on_domain_error: MHC_DOM_RAISE (MHC_ERR_DOMAIN, err_index = r of the first
 * bad row; out contents then unspecified), MHC_DOM_NAN (NaN at that row),
 * MHC_DOM_CLIP (Poincare: points at or beyond radius (1-m)/sqrt(K), i.e.
 * K|p|^2 >= (1-m)^2, scaled to that radius, m = MHC_CLIP_MARGIN; spherical:
 * zero vectors give NaN). (The codes are in mhc_constants.h.)
 * Poincare domain error: K|x|^2 >= 1 or K|c|^2 >= 1. Spherical: |x| == 0 or
 * |c| == 0. Non-finite input is not a domain error: it gives NaN.
 */

int mhc_distance_f32(int manifold, const float *x, int64_t x_rstride,
                     const float *c, int64_t c_rstride, float *out,
                     int64_t rows, int64_t d, double curvature,
                     int on_domain_error, int isa, int n_threads,
                     int64_t *err_index);
int mhc_distance_f64(int manifold, const double *x, int64_t x_rstride,
                     const double *c, int64_t c_rstride, double *out,
                     int64_t rows, int64_t d, double curvature,
                     int on_domain_error, int isa, int n_threads,
                     int64_t *err_index);

/* out[i*ny + j] = dist(x_i, y_j); err_index = i*ny + j of the first bad pair. */
int mhc_pairwise_f32(int manifold, const float *x, int64_t nx, int64_t x_rstride,
                     const float *y, int64_t ny, int64_t y_rstride, int64_t d,
                     float *out, double curvature, int on_domain_error,
                     int isa, int n_threads, int64_t *err_index);
int mhc_pairwise_f64(int manifold, const double *x, int64_t nx, int64_t x_rstride,
                     const double *y, int64_t ny, int64_t y_rstride, int64_t d,
                     double *out, double curvature, int on_domain_error,
                     int isa, int n_threads, int64_t *err_index);

/* ---- The mHC connection (SPEC 2.3) --------------------------------------
 * mhc_hc_pre: for each of `tokens` tokens, x_t = x + t*x_tstride holds n streams
 * of C values (n*C contiguous). The projection is read in the caller's layout,
 * never copied: variant MHC_HC_PAPER: phi (n*C, K), K = (2+n)n, rows of stride
 * ldp >= K, columns [pre | post | res] (column 2n + i*n + j -> H_res[i, j]);
 * variant MHC_HC_DEEPSEEK_V4: V4's fn (K, n*C), rows of stride ldp >= n*C, rows
 * in the same order. y = (v . phi) *
 * rsqrt(|v|^2 / (n*C) + norm_eps); variant MHC_HC_PAPER: h_pre = sigmoid(a0
 * y_pre + b), h_post = 2 sigmoid(a1 y_post + b), h_res = Sinkhorn (logits,
 * columns first, `iterations`) of a2 y_res + b; variant MHC_HC_DEEPSEEK_V4:
 * h_pre += hc_eps, comb = row softmax + hc_eps, columns, then (rows, columns) x
 * (iterations - 1), each denominator + hc_eps, and h_res = comb^T. h_in[t] =
 * sum_i h_pre[t, i] x_t[i, :]. Outputs are contiguous: h_in (tokens, C),
 * h_pre and h_post (tokens, n), h_res (tokens, n, n). 1 <= n <=
 * MHC_HC_MAX_STREAMS.
 * ws: a workspace from mhc_hc_ws_create (reused by every call, safe to share
 * between concurrent calls) or NULL (buffers allocated per call).
 * mhc_hc_post: out_t[i, :] = sum_j h_res[t, i, j] x_t[j, :] + h_post[t, i] f_t,
 * f_t = f + t*f_tstride (0: one f for all); out may be x (same strides), else
 * it must not overlap x.
 */
typedef struct mhc_hc_ws mhc_hc_ws;
mhc_hc_ws *mhc_hc_ws_create(void);   /* NULL when out of memory */
void mhc_hc_ws_destroy(mhc_hc_ws *ws); /* NULL is a no-op */
int mhc_hc_pre_f32(const float *x, int64_t x_tstride, int64_t tokens, int64_t n, int64_t C,
                   const float *phi, int64_t ldp, const float *bias, const float *alpha,
                   int variant, int64_t iterations, double norm_eps, double hc_eps,
                   float *h_in, float *h_pre, float *h_post, float *h_res, mhc_hc_ws *ws,
                   int isa, int n_threads);
int mhc_hc_pre_f64(const double *x, int64_t x_tstride, int64_t tokens, int64_t n, int64_t C,
                   const double *phi, int64_t ldp, const double *bias, const double *alpha,
                   int variant, int64_t iterations, double norm_eps, double hc_eps,
                   double *h_in, double *h_pre, double *h_post, double *h_res, mhc_hc_ws *ws,
                   int isa, int n_threads);
int mhc_hc_post_f32(const float *x, int64_t x_tstride, const float *f, int64_t f_tstride,
                    const float *h_post, const float *h_res, float *out, int64_t out_tstride,
                    int64_t tokens, int64_t n, int64_t C, int isa, int n_threads);
/* mhc_hc_post on bfloat16 streams (x, f_out, out: the bfloat16 bits as uint16_t),
 * float32 coefficients; each sum computed in float32 as mhc_hc_post_f32 does and
 * rounded once to bfloat16 (to nearest even). Checks and strides of x, f and out as
 * mhc_hc_post. The coefficients in any layout of non-negative strides (elements):
 * h_post[t, i] at h_post[t p_tstride + i], h_res[t, i, j] at
 * h_res[t r_tstride + i r_istride + j r_jstride] -- DeepSeek-V4's comb, whose
 * transpose is h_res, read in place (r_istride 1, r_jstride n). */
int mhc_hc_post_bf16(const uint16_t *x, int64_t x_tstride, const uint16_t *f,
                     int64_t f_tstride, const float *h_post, int64_t p_tstride,
                     const float *h_res, int64_t r_tstride, int64_t r_istride,
                     int64_t r_jstride, uint16_t *out, int64_t out_tstride, int64_t tokens,
                     int64_t n, int64_t C, int isa, int n_threads);
/* mhc_hc_pre on bfloat16 streams (x and h_in: the bfloat16 bits as uint16_t), float32
 * parameters and coefficients: the values of mhc_hc_pre_f32 on x widened to float32
 * (exact), h_in rounded once to bfloat16 (to nearest even). x is widened a sub-block
 * of tokens at a time into a scratch in the cache (no float32 copy of x). Checks and
 * strides as mhc_hc_pre; h_in is contiguous (tokens, C). */
int mhc_hc_pre_bf16(const uint16_t *x, int64_t x_tstride, int64_t tokens, int64_t n, int64_t C,
                    const float *phi, int64_t ldp, const float *bias, const float *alpha,
                    int variant, int64_t iterations, double norm_eps, double hc_eps,
                    uint16_t *h_in, float *h_pre, float *h_post, float *h_res, mhc_hc_ws *ws,
                    int isa, int n_threads);
int mhc_hc_post_f64(const double *x, int64_t x_tstride, const double *f, int64_t f_tstride,
                    const double *h_post, const double *h_res, double *out, int64_t out_tstride,
                    int64_t tokens, int64_t n, int64_t C, int isa, int n_threads);

/* mhc_hc_post_pre: the layer boundary, mhc_hc_post then mhc_hc_pre of its
 * result, in one pass: per block of tokens, out_t = the post step of x_t, f_t,
 * h_post[t], h_res[t] (as mhc_hc_post; out may be x itself, else apart from it),
 * then the pre step of out_t (as mhc_hc_pre, with phi, ldp, bias, alpha,
 * variant, iterations, norm_eps, hc_eps) projected while out_t is in the
 * cache: x_next is written once and never read back from memory. The new
 * coefficients h_in, h_pre2, h_post2, h_res2 are contiguous like mhc_hc_pre's;
 * h_post2 / h_res2 may be h_post / h_res themselves (each token's are read
 * before they are written), no other output may overlap an input or another
 * output. */
int mhc_hc_post_pre_f32(const float *x, int64_t x_tstride, const float *f, int64_t f_tstride,
                        const float *h_post, const float *h_res, float *out,
                        int64_t out_tstride, int64_t tokens, int64_t n, int64_t C,
                        const float *phi, int64_t ldp, const float *bias, const float *alpha,
                        int variant, int64_t iterations, double norm_eps, double hc_eps,
                        float *h_in, float *h_pre2, float *h_post2, float *h_res2,
                        mhc_hc_ws *ws, int isa, int n_threads);
int mhc_hc_post_pre_f64(const double *x, int64_t x_tstride, const double *f,
                        int64_t f_tstride, const double *h_post, const double *h_res,
                        double *out, int64_t out_tstride, int64_t tokens, int64_t n, int64_t C,
                        const double *phi, int64_t ldp, const double *bias,
                        const double *alpha, int variant, int64_t iterations, double norm_eps,
                        double hc_eps, double *h_in, double *h_pre2, double *h_post2,
                        double *h_res2, mhc_hc_ws *ws, int isa, int n_threads);
/* mhc_hc_post_pre on bfloat16 streams (x, f, out and h_in: the bfloat16 bits as
 * uint16_t), float32 coefficients and parameters: the values of mhc_hc_post_pre_f32
 * on x and f widened to float32 (the pre step sees x_next before its rounding), x_next
 * and h_in rounded once to bfloat16 (to nearest even); widened a sub-block of tokens at
 * a time in the cache. Checks, strides and the aliasing allowed as mhc_hc_post_pre. */
int mhc_hc_post_pre_bf16(const uint16_t *x, int64_t x_tstride, const uint16_t *f,
                         int64_t f_tstride, const float *h_post, const float *h_res,
                         uint16_t *out, int64_t out_tstride, int64_t tokens, int64_t n, int64_t C,
                         const float *phi, int64_t ldp, const float *bias, const float *alpha,
                         int variant, int64_t iterations, double norm_eps, double hc_eps,
                         uint16_t *h_in, float *h_pre2, float *h_post2, float *h_res2,
                         mhc_hc_ws *ws, int isa, int n_threads);

/* mhc_hc_pre_backward: the gradients of mhc_hc_pre (same x, phi, ldp, bias, alpha,
 * variant, iterations, norm_eps, hc_eps) given the upstream gradients g_in
 * (tokens, C) of h_in, g_pre and g_post (tokens, n), g_res (tokens, n, n) of
 * h_res (each contiguous; NULL: zero). phi_t is the projection as (K, n*C)
 * rows, K = (2+n)n (DeepSeek-V4's fn itself; phi transposed for the paper's
 * variant). Writes g_x (tokens rows of n*C at g_x + t*gx_tstride; must not
 * overlap x) and, contiguous (tokens, K): gz, the gradient of the
 * pre-activations z = a*y + b (so grad bias = sum_t gz, grad alpha[g] = sum_t
 * of gz*y over group g's columns), y = the normalised projection, and gp,
 * the gradient of the raw projection v . phi (so grad phi = sum_t v_t^T gp_t);
 * gw (NULL: not computed) receives that sum as (K, n*C) rows, contiguous
 * (DeepSeek-V4's fn layout; phi's gradient transposed), summed while each block
 * of tokens is in cache, per thread over a fixed range of tokens, the ranges'
 * sums added in order (the result depends on the thread count, not the schedule).
 * The coefficients are recomputed from x (nothing of the forward is kept); the
 * Sinkhorn part is the exact gradient of the unrolled iterations. */
int mhc_hc_pre_backward_f32(const float *x, int64_t x_tstride, int64_t tokens, int64_t n,
                            int64_t C, const float *phi, int64_t ldp, const float *phi_t,
                            const float *bias, const float *alpha, int variant,
                            int64_t iterations, double norm_eps, double hc_eps,
                            const float *g_in, const float *g_pre, const float *g_post,
                            const float *g_res, float *g_x, int64_t gx_tstride, float *gz,
                            float *y, float *gp, float *gw, int isa, int n_threads);
int mhc_hc_pre_backward_f64(const double *x, int64_t x_tstride, int64_t tokens, int64_t n,
                            int64_t C, const double *phi, int64_t ldp, const double *phi_t,
                            const double *bias, const double *alpha, int variant,
                            int64_t iterations, double norm_eps, double hc_eps,
                            const double *g_in, const double *g_pre, const double *g_post,
                            const double *g_res, double *g_x, int64_t gx_tstride, double *gz,
                            double *y, double *gp, double *gw, int isa, int n_threads);

/* mhc_hc_post_backward: the gradients of mhc_hc_post (same x, f, h_post, h_res,
 * strides) given g, the upstream gradient of out (tokens rows of n*C at g +
 * t*g_tstride): g_x_t[j, :] = sum_i h_res[t, i, j] g_t[i, :] (rows at g_x +
 * t*gx_tstride) and, contiguous, g_f (tokens, C) = sum_i h_post[t, i] g_t[i, :],
 * g_post (tokens, n) = g_t[i, :] . f_t and g_res (tokens, n, n) = g_t[i, :] .
 * x_t[j, :] (per token: a caller that broadcast f, h_post or h_res sums them). */
int mhc_hc_post_backward_f32(const float *x, int64_t x_tstride, const float *f,
                             int64_t f_tstride, const float *h_post, const float *h_res,
                             const float *g, int64_t g_tstride, int64_t tokens, int64_t n,
                             int64_t C, float *g_x, int64_t gx_tstride, float *g_f,
                             float *g_post, float *g_res, int isa, int n_threads);
int mhc_hc_post_backward_f64(const double *x, int64_t x_tstride, const double *f,
                             int64_t f_tstride, const double *h_post, const double *h_res,
                             const double *g, int64_t g_tstride, int64_t tokens, int64_t n,
                             int64_t C, double *g_x, int64_t gx_tstride, double *g_f,
                             double *g_post, double *g_res, int isa, int n_threads);

/* ---- Curvature: optimal transport of small problems and their costs -----
 * mhc_ot_w1_f64: for b in [0, batch): problem b has rows rptr[b] .. rptr[b+1]
 * with masses r = mu[rptr[b] ...] and columns cptr[b] .. cptr[b+1] with masses
 * c = mv[cptr[b] ...] (rptr, cptr: offset tables from 0, non-decreasing), finite
 * and >= 0 with equal totals (1e-6 relative; a 0 is padding: that row or column
 * is not part of the problem), and costs C (rows x cols, row-major), the
 * problems' matrices one after the other in `cost`, finite wherever both masses
 * are > 0. Entropic optimal transport by Sinkhorn with epsilon scaling from
 * MHC_OT_REG_START down to `reg`, both relative to the problem's cost range
 * (stages at most 3x apart, each started from the last one's dual potentials,
 * so nothing underflows), at most `iterations` per stage; the last stage ends
 * when the plan's marginals are within `tolerance` (L1) of r and c. `relax` 1:
 * over-relaxed scalings (u <- u^(-1/2) (r / Kv)^(3/2), back to plain steps for
 * the rest of a stage when the error stops improving), 0: plain Sinkhorn.
 * Writes w[b] = <P, C> of the final plan rounded onto the exact marginals (an
 * upper bound of the exact W1, equal to it as reg -> 0) and, when iters is not
 * NULL, iters[b] = iterations done in all stages. MHC_ERR_DOMAIN (nothing
 * written) when a problem breaks the rules above: err_index = that problem's
 * b. Masses times costs beyond the double range give w[b] = +-inf, or
 * MHC_ERR_COMPUTATION (err_index = b) where they cancel to NaN. */
int mhc_ot_w1_f64(const double *cost, const double *mu, const double *mv, const int64_t *rptr,
                  const int64_t *cptr, int64_t batch, double reg, int64_t iterations,
                  double tolerance, int relax, double *w, int64_t *iters, int isa,
                  int n_threads, int64_t *err_index);

/* mhc_graph_costs_f64: the cost matrices of curvature on a given graph. The
 * undirected graph in CSR form, both directions stored: vertex v's neighbours
 * indices[indptr[v] .. indptr[v+1]) with lengths weights[...] (finite, > 0; else
 * MHC_ERR_DOMAIN with err_index = that entry), indptr[0] = 0, non-decreasing.
 * Edge e < edges has sources X[xptr[e] .. xptr[e+1]) (a_e of them) and targets
 * Y[yptr[e] .. yptr[e+1]) (b_e), xptr and yptr offset tables from 0; its a_e x b_e
 * matrix of shortest-path distances source -> target (INFINITY when unreachable)
 * is written row-major to out after those of the edges before it (out holds
 * sum_e a_e b_e doubles). One Dijkstra search per distinct source vertex,
 * stopped once every vertex asked of it is settled. A vertex index outside
 * [0, n) or an offset table that is not one is MHC_ERR_INVALID_DIMENSION. */
int mhc_graph_costs_f64(const int64_t *indptr, const int64_t *indices, const double *weights,
                        int64_t n, const int64_t *X, const int64_t *xptr, const int64_t *Y,
                        const int64_t *yptr, int64_t edges, double *out, int n_threads,
                        int64_t *err_index);

/* mhc_point_costs_f64: the cost matrices of curvature on a point cloud. points
 * (n x d, C-contiguous); edges laid out as in mhc_graph_costs_f64 (sources X,
 * targets Y, offset tables xptr, yptr from 0; vertex indices in [0, n), else
 * MHC_ERR_INVALID_DIMENSION); out[...] = the manifold distance (as
 * mhc_distance_f64 computes it, curvature K for MHC_POINCARE) between the points
 * of source and target; a point outside the manifold's domain gives NaN. */
int mhc_point_costs_f64(int manifold, const double *points, int64_t n, int64_t d,
                        double curvature, const int64_t *X, const int64_t *xptr,
                        const int64_t *Y, const int64_t *yptr, int64_t edges, double *out,
                        int isa, int n_threads);

/* mhc_ot_exact_f64: exact W1 of a ragged batch of transport problems, laid out
 * as in mhc_ot_w1_f64 (masses finite, >= 0, equal totals within 1e-6 relative,
 * costs finite where both masses are > 0; else MHC_ERR_DOMAIN, nothing written,
 * err_index = the problem). w[b] = min over plans P of <P, C>, by a network
 * simplex on real masses (successive shortest paths where it gives up; optimal
 * up to rounding; rows and columns of zero mass left out). metric 1: the costs are a (pseudo)metric
 * between the rows' and columns' points, so a zero-cost pair is one point and its
 * shared mass is cancelled before solving (W1 unchanged); 0: no such assumption.
 * A problem whose n + m exceeds 2^20 is MHC_ERR_OUT_OF_MEMORY; W1 beyond the
 * double range MHC_ERR_COMPUTATION (err_index = b). Threads split the problems. */
int mhc_ot_exact_f64(const double *cost, const double *mu, const double *mv, const int64_t *rptr,
                     const int64_t *cptr, int64_t batch, int metric, double *w, int n_threads,
                     int64_t *err_index);

/* mhc_ot_exact_table_f64: mhc_ot_exact_f64 with every problem's costs read from
 * one table (nt x nt, row-major: the distances between nt points or vertices):
 * problem b's rows are the points X[rptr[b] .. rptr[b+1]) with masses mu[...],
 * its columns Y[cptr[b] .. cptr[b+1]) with masses mv[...], its cost (i, j) =
 * table[X[.] nt + Y[.]] (indices in [0, nt), else MHC_ERR_INVALID_DIMENSION).
 * Masses checked first (as mhc_ot_exact_f64: MHC_ERR_DOMAIN, nothing written); a
 * needed cost (both masses > 0) that is not finite is MHC_ERR_DOMAIN with
 * err_index = the problem (w may be partly written). No cost matrix is stored:
 * each thread gathers its problem's into its own buffer. */
int mhc_ot_exact_table_f64(const double *table, int64_t nt, const int64_t *X, const int64_t *Y,
                           const double *mu, const double *mv, const int64_t *rptr,
                           const int64_t *cptr, int64_t batch, int metric, double *w,
                           int n_threads, int64_t *err_index);

/* mhc_unit_w1_f64: exact W1(m_u, m_v) of Ollivier-Ricci curvature for the edges
 * (U[e], V[e]), e < edges, of a graph whose every edge has length 1, in CSR form
 * with both directions stored (as in mhc_graph_costs_f64, no weights; indices in
 * [0, n), else MHC_ERR_INVALID_DIMENSION). m_x: mass alpha (0 <= alpha < 1, else
 * MHC_ERR_INVALID_DIMENSION) at x and (1 - alpha) / deg(x) on each neighbour.
 * Shared mass cancelled vertex by vertex, the costs between what is left (1, 2
 * or 3) read from adjacency and common neighbours, then the exact solver of
 * mhc_ot_exact_f64; w[e] = W1 (kappa = 1 - w[e]). An edge whose ends are not
 * adjacent, or whose first end has a self loop or a repeated neighbour, is
 * MHC_ERR_DOMAIN with err_index = e (w may be partly written). Threads split the
 * edges; each thread holds 24 bytes per vertex and its largest problem. */
int mhc_unit_w1_f64(const int64_t *indptr, const int64_t *indices, int64_t n, const int64_t *U,
                    const int64_t *V, int64_t edges, double alpha, double *w, int n_threads,
                    int64_t *err_index);

/* ---- Benchmark probes (not kernels) -------------------------------------
 * mhc_probe_read_f32: read x[0..n) once (sum): times a read-bandwidth floor.
 * mhc_probe_fma: iters rounds of mhc_probe_fma_lanes() independent lane-FMAs
 * (0 lanes: no probe on this CPU): times the core's vector FMA peak.
 */
double mhc_probe_read_f32(const float *x, int64_t n);
double mhc_probe_fma(int64_t iters);
int mhc_probe_fma_lanes(void);

/* ---- Test-only fault injection (not for production use) ------------------
 * mhc_debug_fail_allocs_after(k): after k more successful heap allocations,
 * every allocation of the library fails (the call then returns
 * MHC_ERR_OUT_OF_MEMORY, or runs on one thread where a thread job could not be
 * allocated); k < 0 switches failures off. mhc_debug_live_allocs(): heap
 * blocks the library holds now (workspaces included), to check for leaks. */
void mhc_debug_fail_allocs_after(int64_t count);
int64_t mhc_debug_live_allocs(void);

#ifdef __cplusplus
}
#endif
#endif /* MHC_NATIVE_H */
