/*
 * dispatch.c -- the public mhc_* kernels: argument validation at the ABI,
 * ISA resolution (one kernel table per level), splitting over threads
 * (threads.h). The type-generic ABI functions are in one file per family,
 * each included once for float and once for double:
 *   sinkhorn_abi_t.inc  mhc_sinkhorn_*, mhc_sinkhorn_backward_*
 *   distance_abi_t.inc  mhc_distance_*, mhc_pairwise_*
 *   mhc_abi_t.inc       mhc_hc_pre_*, mhc_hc_post_*
 * and, double only, ot_abi.inc (mhc_ot_w1_f64, optimal transport for curvature).
 */
#include <pthread.h>
#include <stdlib.h>
#include "mhc_internal.h"
#include "checked.h"
#include "threads.h"

/* Thread only above ~50 us of single-thread work (a post to the pool costs a
 * few us): Sinkhorn in element iterations (~0.1 ns each for 4x4 matrices),
 * distances in element visits weighted by manifold_cost (~0.1 ns per unit). */
#define MHC_SK_PAR_WORK (1 << 19)
#define MHC_DIST_PAR_WORK (1 << 19)
/* Sinkhorn workspaces up to this many bytes live on the stack. */
#define MHC_STACK_WS 16384

/* The kernel table of one ISA level, each member set by name (MHC_KERNEL_LIST). */
#define MHC_KERNEL_ENTRY(isa, name, ret, params) .name = mhc_##name##_##isa,
#define MHC_TABLE(isa) {.name = #isa, MHC_KERNEL_LIST(MHC_KERNEL_ENTRY, isa)}

/* Indexed by mhc_isa; levels this build lacks fall back to portable. */
static const mhc_kernel_table g_tables[4] = {
    MHC_TABLE(portable),
#if MHC_X86
    MHC_TABLE(sse), MHC_TABLE(avx2), MHC_TABLE(avx512),
#else
    MHC_TABLE(portable), MHC_TABLE(portable), MHC_TABLE(portable),
#endif
};

/* auto (a negative level): the best level's table, with the kernel families that
 * lose to a narrower level on this CPU taken from that level (rules measured and
 * recorded in docs/performance.md). On AVX-512 executed on 256-bit units (AMD
 * Zen 4) the large-matrix Sinkhorn, a stream over the matrices with a few FMAs per
 * element, ran 15-24 % slower at AVX-512 than at AVX2 (8 x 512 x 1024, 10
 * iterations: 6.6-7.2 ms against 5.6-6.1 ms): it runs AVX2's there. So does the
 * float32 mHC projection with phi in rows (the paper's layout): AVX2's tile of 4
 * tokens x 3 vectors took 0.91-0.98x the time of AVX-512's 8 tokens x 1.5 vectors
 * there (1 to 512 tokens of 16,384 values, both in one process); V4's fn layout
 * (trans) keeps AVX-512's, 0.80x AVX2's time on the same CPU. */
static mhc_kernel_table g_auto;
static int g_auto_rules;
static pthread_once_t g_auto_once = PTHREAD_ONCE_INIT;

#if MHC_X86
static void hc_proj_f32_half_width(const float *v, int64_t vs, int64_t tb, int64_t L,
                                   const float *w, int64_t ldw, int64_t K, int trans,
                                   float *acc, double *ss, double *dd)
{
    g_tables[trans ? MHC_ISA_AVX512 : MHC_ISA_AVX2].hc_proj_f32(v, vs, tb, L, w, ldw, K, trans,
                                                                acc, ss, dd);
}
#endif

static void init_auto(void)
{
    g_auto = g_tables[mhc_best_isa()];
#if MHC_X86
    if (mhc_avx512_half_width()) {
        g_auto.sk_large_f32 = g_tables[MHC_ISA_AVX2].sk_large_f32;
        g_auto.sk_large_f64 = g_tables[MHC_ISA_AVX2].sk_large_f64;
        g_auto_rules |= MHC_RULE_SK_LARGE_AVX2;
        g_auto.hc_proj_f32 = hc_proj_f32_half_width;
        g_auto_rules |= MHC_RULE_HC_ROWS_AVX2;
    }
#endif
}

int mhc_auto_rules(void)
{
    pthread_once(&g_auto_once, init_auto);
    return g_auto_rules;
}

static const mhc_kernel_table *table_for(int isa)
{
    if (isa < 0) {
        pthread_once(&g_auto_once, init_auto);
        return &g_auto;
    }
    return &g_tables[mhc_resolve_isa(isa)];
}

int mhc_vector_lanes(int isa, int elem_bytes)
{
    static const int vector_bytes[4] = {0, 16, 32, 64};  /* indexed by mhc_isa */
    if (elem_bytes != 4 && elem_bytes != 8)
        return 0;
    const int level = mhc_resolve_isa(isa);
    return level == MHC_ISA_PORTABLE ? 1 : vector_bytes[level] / elem_bytes;
}

/* relative cost per element of a distance (Euclidean = 1) */
static int64_t manifold_cost(int manifold)
{
    return manifold == MHC_EUCLIDEAN ? 1 : manifold == MHC_POINCARE ? 2 : 3;
}

/* Names of one dtype in the *_abi_t.inc: TFN(x) = x_<SFX>. */
#define DCAT_(a, b) a##_##b
#define DCAT(a, b) DCAT_(a, b)
#define TFN(base) DCAT(base, SFX)
/* A pointer not aligned to T (C forbids dereferencing it as T *). */
#define MISALIGNED(p) (((uintptr_t)(const void *)(p)) % sizeof(T) != 0)

#define T float
#define SFX f32
#include "sinkhorn_abi_t.inc"
#include "distance_abi_t.inc"
#include "mhc_abi_t.inc"
#undef T
#undef SFX

#define T double
#define SFX f64
#include "sinkhorn_abi_t.inc"
#include "distance_abi_t.inc"
#include "mhc_abi_t.inc"
#include "ot_abi.inc"
#undef T
#undef SFX

/* ---- mhc_hc_post on bfloat16 streams ------------------------------------ */

typedef struct {
    const uint16_t *x; int64_t x_tstride; const uint16_t *f; int64_t f_tstride;
    const float *h_post; int64_t p_tstride; const float *h_res; int64_t r_tstride, r_istride,
    r_jstride; uint16_t *out; int64_t out_tstride, n, C;
    const mhc_kernel_table *kt;
} hc_post_bf16_ctx;

static int hc_post_bf16_chunk(const void *vctx, int64_t lo, int64_t hi, int64_t *err)
{
    const hc_post_bf16_ctx *c = vctx;
    (void)err;
    c->kt->hc_post_bf16_f32(c->x + lo * c->x_tstride, c->x_tstride, c->f + lo * c->f_tstride,
                            c->f_tstride, c->h_post + lo * c->p_tstride, c->p_tstride,
                            c->h_res + lo * c->r_tstride, c->r_tstride, c->r_istride,
                            c->r_jstride, c->out + lo * c->out_tstride, c->out_tstride, hi - lo,
                            c->n, c->C);
    return MHC_OK;
}

int mhc_hc_post_bf16(const uint16_t *x, int64_t x_tstride, const uint16_t *f,
                     int64_t f_tstride, const float *h_post, int64_t p_tstride,
                     const float *h_res, int64_t r_tstride, int64_t r_istride,
                     int64_t r_jstride, uint16_t *out, int64_t out_tstride, int64_t tokens,
                     int64_t n, int64_t C, int isa, int n_threads)
{
    int64_t L, ext, work;
    if (!x || !f || !h_post || !h_res || !out)
        return MHC_ERR_NULL_POINTER;
    if (((uintptr_t)x | (uintptr_t)f | (uintptr_t)out) % sizeof(uint16_t) ||
        ((uintptr_t)h_post | (uintptr_t)h_res) % sizeof(float))
        return MHC_ERR_MISALIGNED;
    if (tokens < 0 || n < 1 || n > MHC_HC_MAX_STREAMS || C < 1 || n_threads < 0 || f_tstride < 0 ||
        p_tstride < 0 || r_tstride < 0 || r_istride < 0 || r_jstride < 0)
        return MHC_ERR_INVALID_DIMENSION;
    if (__builtin_mul_overflow(n, C, &L))
        return MHC_ERR_INVALID_DIMENSION;
    if (tokens == 0)
        return MHC_OK;
    ext = L;
    if (x_tstride < L || out_tstride < L || !add_extent(&ext, tokens, x_tstride))
        return MHC_ERR_INVALID_DIMENSION;
    ext = L;
    if (!add_extent(&ext, tokens, out_tstride))
        return MHC_ERR_INVALID_DIMENSION;
    ext = C;
    if ((f_tstride && f_tstride < C) || !add_extent(&ext, tokens, f_tstride))
        return MHC_ERR_INVALID_DIMENSION;
    /* the coefficients' extents (n <= MHC_HC_MAX_STREAMS: the in-matrix ones fit) */
    ext = n;
    if (!add_extent(&ext, tokens, p_tstride))
        return MHC_ERR_INVALID_DIMENSION;
    ext = 1;
    if (!add_extent(&ext, n, r_istride) || !add_extent(&ext, n, r_jstride) ||
        !add_extent(&ext, tokens, r_tstride))
        return MHC_ERR_INVALID_DIMENSION;
    /* out is x itself (same strides) or apart from it, as for mhc_hc_post */
    if (out != x && (const uint16_t *)out < x + (tokens - 1) * x_tstride + L &&
        x < (const uint16_t *)out + (tokens - 1) * out_tstride + L)
        return MHC_ERR_INVALID_DIMENSION;
    if (out == x && out_tstride != x_tstride)
        return MHC_ERR_INVALID_DIMENSION;
    work = sat_mul(sat_mul(tokens, L), n + 1);
    const hc_post_bf16_ctx ctx = {x, x_tstride, f, f_tstride, h_post, p_tstride, h_res,
                                  r_tstride, r_istride, r_jstride, out, out_tstride, n, C,
                                  table_for(isa)};
    return mhc_run_chunks(hc_post_bf16_chunk, &ctx, tokens, 1,
                          threads_for(n_threads, work, MHC_DIST_PAR_WORK), NULL);
}

/* ---- mhc_hc_pre on bfloat16 streams ------------------------------------- */

/* The float pre step (hc_pre_chunk_f32) per sub-block of tokens, its streams
 * widened from bfloat16 into a scratch that stays in the cache (the float
 * kernel's sub-block, ~512 KB), h_in computed into a scratch and rounded once
 * to bfloat16: the float kernel's values on the widened streams, with no float
 * copy of the whole input. */
typedef struct {
    hc_pre_ctx_f32 f;                  /* x, h_in unused: the per-sub-block scratch */
    const uint16_t *x; int64_t x_tstride;
    uint16_t *h_in;
} hc_pre_bf16_ctx;

static int hc_pre_bf16_chunk(const void *vctx, int64_t lo, int64_t hi, int64_t *err)
{
    const hc_pre_bf16_ctx *c = vctx;
    const int64_t n = c->f.n, C = c->f.C, L = c->f.L, SB = hc_sub_block_f32(L);
    int slot;
    float *xs = mhc_ws_take(c->f.ws, sizeof(float) * (size_t)(SB * (L + C)), &slot);
    if (!xs)
        return MHC_ERR_OUT_OF_MEMORY;
    float *hs = xs + SB * L;
    hc_pre_ctx_f32 sub = c->f;
    sub.x = xs;
    sub.x_tstride = L;
    sub.h_in = hs;
    int st = MHC_OK;
    for (int64_t t0 = lo; t0 < hi && st == MHC_OK; t0 += SB) {
        const int64_t tb = hi - t0 < SB ? hi - t0 : SB;
        c->f.kt->bf16_widen_f32(c->x + t0 * c->x_tstride, c->x_tstride, xs, L, tb, L);
        sub.h_pre = c->f.h_pre + t0 * n;
        sub.h_post = c->f.h_post + t0 * n;
        sub.h_res = c->f.h_res + t0 * n * n;
        st = hc_pre_chunk_f32(&sub, 0, tb, err);
        if (st == MHC_OK)
            c->f.kt->bf16_narrow_f32(hs, C, c->h_in + t0 * C, C, tb, C);
    }
    mhc_ws_give(c->f.ws, slot, xs);
    return st;
}

int mhc_hc_pre_bf16(const uint16_t *x, int64_t x_tstride, int64_t tokens, int64_t n, int64_t C,
                    const float *phi, int64_t ldp, const float *bias, const float *alpha,
                    int variant, int64_t iterations, double norm_eps, double hc_eps,
                    uint16_t *h_in, float *h_pre, float *h_post, float *h_res, mhc_hc_ws *ws,
                    int isa, int n_threads)
{
    int64_t L, ext, work;
    if (!x || !h_in)
        return MHC_ERR_NULL_POINTER;
    if (((uintptr_t)x | (uintptr_t)h_in) % sizeof(uint16_t))
        return MHC_ERR_MISALIGNED;
    /* the float checks of the other arguments (h_pre stands in for h_in, checked above) */
    const int st = hc_pre_args_f32(tokens, n, C, phi, ldp, bias, alpha, variant, iterations,
                                   norm_eps, hc_eps, h_pre, h_pre, h_post, h_res, n_threads, &L,
                                   &work);
    if (st != MHC_OK || tokens == 0)
        return st;
    ext = L;
    if (x_tstride < L || !add_extent(&ext, tokens, x_tstride))
        return MHC_ERR_INVALID_DIMENSION;
    const hc_pre_bf16_ctx ctx = {
        {NULL, 0, n, C, L, ldp, phi, bias, alpha, (variant & ~MHC_HC_ROWS) == MHC_HC_DEEPSEEK_V4,
         variant == MHC_HC_DEEPSEEK_V4, iterations, norm_eps, hc_eps, NULL, h_pre, h_post,
         h_res, ws, table_for(isa), NULL, 0, NULL, 0, NULL, NULL},
        x, x_tstride, h_in};
    return mhc_run_chunks(hc_pre_bf16_chunk, &ctx, tokens, 1,
                          threads_for(n_threads, work, MHC_HC_PAR_WORK), NULL);
}

/* ---- mhc_hc_post_pre on bfloat16 streams -------------------------------- */

/* The float fused boundary (hc_pre_chunk_f32 with its post step) per sub-block of
 * tokens: x and f widened from bfloat16 into cached scratches, x_next computed
 * into a float scratch and projected from it (the pre step sees x_next before
 * its rounding, as mhc_hc_post_pre_f32 on widened streams does), then x_next
 * and h_in rounded once to bfloat16. x is read a sub-block ahead of its
 * writes, so out may be x itself. */
typedef struct {
    hc_pre_ctx_f32 f;                  /* x, px, pf, h_in: the per-sub-block scratch */
    const uint16_t *x; int64_t x_tstride; const uint16_t *fo; int64_t f_tstride;
    uint16_t *out; int64_t out_tstride; uint16_t *h_in;
} hc_post_pre_bf16_ctx;

static int hc_post_pre_bf16_chunk(const void *vctx, int64_t lo, int64_t hi, int64_t *err)
{
    const hc_post_pre_bf16_ctx *c = vctx;
    const int64_t n = c->f.n, C = c->f.C, L = c->f.L, SB = hc_sub_block_f32(L);
    int slot;
    float *xs = mhc_ws_take(c->f.ws, sizeof(float) * (size_t)(SB * (2 * L + 2 * C)), &slot);
    if (!xs)
        return MHC_ERR_OUT_OF_MEMORY;
    float *ns = xs + SB * L, *fs = ns + SB * L, *hs = fs + SB * C;
    hc_pre_ctx_f32 sub = c->f;
    sub.x = ns;
    sub.x_tstride = L;
    sub.h_in = hs;
    sub.px = xs;
    sub.px_tstride = L;
    sub.pf = fs;
    sub.pf_tstride = c->f_tstride ? C : 0;
    int st = MHC_OK;
    for (int64_t t0 = lo; t0 < hi && st == MHC_OK; t0 += SB) {
        const int64_t tb = hi - t0 < SB ? hi - t0 : SB;
        c->f.kt->bf16_widen_f32(c->x + t0 * c->x_tstride, c->x_tstride, xs, L, tb, L);
        c->f.kt->bf16_widen_f32(c->fo + t0 * c->f_tstride, c->f_tstride, fs, C,
                                c->f_tstride ? tb : 1, C);
        sub.php = c->f.php + t0 * n;
        sub.phr = c->f.phr + t0 * n * n;
        sub.h_pre = c->f.h_pre + t0 * n;
        sub.h_post = c->f.h_post + t0 * n;
        sub.h_res = c->f.h_res + t0 * n * n;
        st = hc_pre_chunk_f32(&sub, 0, tb, err);
        if (st == MHC_OK) {
            c->f.kt->bf16_narrow_f32(ns, L, c->out + t0 * c->out_tstride, c->out_tstride, tb, L);
            c->f.kt->bf16_narrow_f32(hs, C, c->h_in + t0 * C, C, tb, C);
        }
    }
    mhc_ws_give(c->f.ws, slot, xs);
    return st;
}

/* [a, a + an) and [b, b + bn) overlap (bytes) */
static int bytes_overlap(const void *a, int64_t an, const void *b, int64_t bn)
{
    const char *p = a, *q = b;
    return p < q + bn && q < p + an;
}

int mhc_hc_post_pre_bf16(const uint16_t *x, int64_t x_tstride, const uint16_t *f,
                         int64_t f_tstride, const float *h_post, const float *h_res,
                         uint16_t *out, int64_t out_tstride, int64_t tokens, int64_t n, int64_t C,
                         const float *phi, int64_t ldp, const float *bias, const float *alpha,
                         int variant, int64_t iterations, double norm_eps, double hc_eps,
                         uint16_t *h_in, float *h_pre2, float *h_post2, float *h_res2,
                         mhc_hc_ws *ws, int isa, int n_threads)
{
    int64_t L, ext, work;
    if (!x || !f || !h_post || !h_res || !out || !h_in)
        return MHC_ERR_NULL_POINTER;
    if (((uintptr_t)x | (uintptr_t)f | (uintptr_t)out | (uintptr_t)h_in) % sizeof(uint16_t) ||
        ((uintptr_t)h_post | (uintptr_t)h_res) % sizeof(float))
        return MHC_ERR_MISALIGNED;
    /* the float checks of the other arguments (h_pre2 stands in for h_in) */
    const int st = hc_pre_args_f32(tokens, n, C, phi, ldp, bias, alpha, variant, iterations,
                                   norm_eps, hc_eps, h_pre2, h_pre2, h_post2, h_res2, n_threads,
                                   &L, &work);
    if (st != MHC_OK)
        return st;
    if (f_tstride < 0)
        return MHC_ERR_INVALID_DIMENSION;
    if (tokens == 0)
        return MHC_OK;
    ext = L;
    if (x_tstride < L || out_tstride < L || !add_extent(&ext, tokens, x_tstride))
        return MHC_ERR_INVALID_DIMENSION;
    ext = L;
    if (!add_extent(&ext, tokens, out_tstride))
        return MHC_ERR_INVALID_DIMENSION;
    ext = C;
    if ((f_tstride && f_tstride < C) || !add_extent(&ext, tokens, f_tstride))
        return MHC_ERR_INVALID_DIMENSION;
    /* as mhc_hc_post_pre_f32, in bytes: out is x itself or apart from it, the new
     * coefficients apart from the old ones unless the same arrays, no output
     * overlapping the streams or another output */
    const int64_t nn = n * n, xb = 2 * ((tokens - 1) * x_tstride + L),
                  ob = 2 * ((tokens - 1) * out_tstride + L);
    if ((out != x && bytes_overlap(out, ob, x, xb)) || (out == x && out_tstride != x_tstride) ||
        (h_post2 != h_post && bytes_overlap(h_post2, 4 * tokens * n, h_post, 4 * tokens * n)) ||
        (h_res2 != h_res && bytes_overlap(h_res2, 4 * tokens * nn, h_res, 4 * tokens * nn)))
        return MHC_ERR_INVALID_DIMENSION;
    const void *outs[5] = {out, h_in, h_pre2, h_post2, h_res2};
    const int64_t lens[5] = {ob, 2 * tokens * C, 4 * tokens * n, 4 * tokens * n,
                             4 * tokens * nn};
    for (int i = 1; i < 5; i++)
        for (int j = 0; j < i; j++)
            if (bytes_overlap(outs[i], lens[i], outs[j], lens[j]) ||
                bytes_overlap(outs[i], lens[i], x, xb))
                return MHC_ERR_INVALID_DIMENSION;
    const hc_post_pre_bf16_ctx ctx = {
        {NULL, 0, n, C, L, ldp, phi, bias, alpha, (variant & ~MHC_HC_ROWS) == MHC_HC_DEEPSEEK_V4,
         variant == MHC_HC_DEEPSEEK_V4, iterations, norm_eps, hc_eps, NULL, h_pre2, h_post2,
         h_res2, ws, table_for(isa), NULL, 0, NULL, 0, h_post, h_res},
        x, x_tstride, f, f_tstride, out, out_tstride, h_in};
    work = sat_add(work, sat_mul(sat_mul(tokens, L), n + 1));
    return mhc_run_chunks(hc_post_pre_bf16_chunk, &ctx, tokens, 1,
                          threads_for(n_threads, work, MHC_HC_PAR_WORK), NULL);
}
