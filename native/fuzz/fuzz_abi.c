/*
 * fuzz_abi.c -- libFuzzer harness for the C ABI of mhc_native.h.
 *
 * Each input picks a kernel family (MHC_FUZZ_FAMILY fixes one: 0 Sinkhorn
 * (forward and backward),
 * 1 distances (rows and pairwise), 2 the mHC connection (pre and post), 3 the
 * curvature kernels (transport, graph and point costs); -1 or unset: all), then a kernel
 * of that family,
 * a dtype, an ISA level, a thread count, sizes, strides, flags and options,
 * and fills the arrays with raw bit patterns from the input (NaN, inf,
 * denormals, huge values included). Every array is a heap block of exactly
 * the extent the ABI's contract addresses, so AddressSanitizer reports any
 * read or write outside it; UndefinedBehaviorSanitizer reports UB. A few
 * inputs pass NULL, misaligned or negative arguments instead.
 *
 * Checked on every call: the status is one of mhc_status; the read-only
 * inputs are bit-for-bit unchanged; a domain error sets err_index inside the
 * batch; on MHC_OK the Euclidean distances are >= 0 or NaN and Sinkhorn of
 * finite non-negative data gives non-negative or NaN entries.
 *
 * Build and run: native/fuzz/run.sh (clang with -fsanitize=fuzzer).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "mhc_native.h"

typedef struct {
    const uint8_t *p;
    size_t n;
} src_t;

static uint64_t take(src_t *s, int bytes)
{
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++) {
        v = v << 8 | (s->n ? *s->p : 0);
        if (s->n) {
            s->p++;
            s->n--;
        }
    }
    return v;
}

static int64_t pick(src_t *s, int64_t lo, int64_t hi) /* in [lo, hi] */
{
    return lo + (int64_t)(take(s, 2) % (uint64_t)(hi - lo + 1));
}

#define FAIL(...)                                                   \
    do {                                                            \
        fprintf(stderr, "fuzz_abi: " __VA_ARGS__);                  \
        fputc('\n', stderr);                                        \
        abort();                                                    \
    } while (0)

/* An array of `count` elements of size `es`, filled from the input. A
 * count of 0 still gets a (1-byte-past) pointer of its own. `mis` shifts it by
 * one byte (misaligned) inside an allocation one byte longer. */
typedef struct {
    unsigned char *block, *data, *copy;
    size_t bytes;
} arr_t;

static arr_t arr_new(src_t *s, int64_t count, int es, int mis, int nonneg)
{
    arr_t a;
    a.bytes = (size_t)count * (size_t)es;
    a.block = malloc(a.bytes + (mis ? 1 : 0) + 1);
    a.data = a.block + (mis ? 1 : 0);
    for (size_t i = 0; i < a.bytes; i += (size_t)es) {
        if (es == 2) {                  /* bfloat16: the high half of a float */
            uint32_t b = (uint32_t)take(s, 1);
            uint16_t h;
            if (b < 200) {
                float f = (float)(take(s, 1) % 64) / 8.0f - (nonneg ? 0.0f : 4.0f);
                uint32_t bits;
                memcpy(&bits, &f, 4);
                h = (uint16_t)(bits >> 16);
            } else {
                h = (uint16_t)take(s, 2);
            }
            memcpy(a.data + i, &h, 2);
        } else if (es == 4) {
            uint32_t b = (uint32_t)take(s, 1);
            float f;
            /* mostly ordinary values, sometimes raw bit patterns */
            if (b < 200)
                f = (float)(take(s, 1) % 64) / 8.0f - (nonneg ? 0.0f : 4.0f);
            else {
                uint32_t bits = (uint32_t)take(s, 4);
                memcpy(&f, &bits, 4);
            }
            memcpy(a.data + i, &f, 4);
        } else {
            uint32_t b = (uint32_t)take(s, 1);
            double f;
            if (b < 200)
                f = (double)(take(s, 1) % 64) / 8.0 - (nonneg ? 0.0 : 4.0);
            else {
                uint64_t bits = take(s, 8);
                memcpy(&f, &bits, 8);
            }
            memcpy(a.data + i, &f, 8);
        }
    }
    a.copy = malloc(a.bytes + 1);
    memcpy(a.copy, a.data, a.bytes);
    return a;
}

static void arr_same(const arr_t *a, const char *what)
{
    if (memcmp(a->copy, a->data, a->bytes) != 0)
        FAIL("read-only input %s was modified", what);
}

static void arr_free(arr_t *a)
{
    free(a->block);
    free(a->copy);
}

/* elements addressed by (count, stride) rows of `len`: (count-1)*stride + len */
static int64_t extent(int64_t count, int64_t stride, int64_t len)
{
    return count == 0 || len == 0 ? 0 : (count - 1) * stride + len;
}

static void check_status(int st)
{
    if (st < MHC_OK || st > MHC_ERR_MISALIGNED)
        FAIL("status %d is not an mhc_status", st);
}

static void fuzz_sinkhorn(src_t *s, int f64, int isa, int nth, int mis, int backward)
{
    const int64_t batch = pick(s, 0, 40), n = pick(s, 0, 12), m = pick(s, 0, 12);
    const int64_t xr = m + pick(s, 0, 3), xb = n * xr + pick(s, 0, 5) * (pick(s, 0, 3) != 0);
    const int inplace = !backward && (int)pick(s, 0, 3) == 0;
    const int64_t orr = inplace ? xr : m + pick(s, 0, 2), ob = inplace ? xb : n * orr + pick(s, 0, 2);
    const int flags = (int)pick(s, 0, 3);
    const int targets = (int)pick(s, 0, 2); /* 0 none, 1 per matrix, 2 broadcast */
    const int64_t iters = pick(s, 0, 25);
    const double tau = pick(s, 0, 3) == 0 ? (double)pick(s, 0, 100) / 50.0 : 0.0;
    const int es = f64 ? 8 : 4;
    arr_t x = arr_new(s, extent(batch, xb, extent(n, xr, m)), es, mis == 1, !(flags & 1));
    arr_t o = inplace ? x : arr_new(s, extent(batch, ob, extent(n, orr, m)), es, mis == 2, 0);
    const int64_t tb = targets == 2 ? 0 : n, tcb = targets == 2 ? 0 : m;
    arr_t rs = arr_new(s, targets ? extent(targets == 2 ? 1 : batch, tb, n) : 0, es, 0, 1);
    arr_t cs = arr_new(s, targets ? extent(targets == 2 ? 1 : batch, tcb, m) : 0, es, 0, 1);
    /* backward: the upstream gradient in x's layout, the gradient written to o */
    arr_t g = arr_new(s, backward ? extent(batch, xb, extent(n, xr, m)) : 0, es, mis == 3, 0);
    int64_t err = -7;
    int st;
    if (backward && f64)
        st = mhc_sinkhorn_backward_f64((const double *)x.data, xb, xr, (const double *)g.data, xb,
                                       xr, (double *)o.data, ob, orr, batch, n, m,
                                       targets ? (const double *)rs.data : NULL, tb,
                                       targets ? (const double *)cs.data : NULL, tcb, iters,
                                       tau, flags, isa, nth, &err);
    else if (backward)
        st = mhc_sinkhorn_backward_f32((const float *)x.data, xb, xr, (const float *)g.data, xb,
                                       xr, (float *)o.data, ob, orr, batch, n, m,
                                       targets ? (const float *)rs.data : NULL, tb,
                                       targets ? (const float *)cs.data : NULL, tcb, iters,
                                       tau, flags, isa, nth, &err);
    else if (f64)
        st = mhc_sinkhorn_f64((const double *)x.data, xb, xr, (double *)o.data, ob, orr, batch,
                              n, m, targets ? (const double *)rs.data : NULL, tb,
                              targets ? (const double *)cs.data : NULL, tcb, iters, tau, flags,
                              isa, nth, &err);
    else
        st = mhc_sinkhorn_f32((const float *)x.data, xb, xr, (float *)o.data, ob, orr, batch, n,
                              m, targets ? (const float *)rs.data : NULL, tb,
                              targets ? (const float *)cs.data : NULL, tcb, iters, tau, flags,
                              isa, nth, &err);
    check_status(st);
    if ((mis == 1 || (mis == 2 && !inplace) || (mis == 3 && backward)) &&
        st != MHC_ERR_MISALIGNED)
        FAIL("misaligned sinkhorn pointer accepted (status %d)", st);
    if (st == MHC_ERR_DOMAIN && (err < 0 || err >= batch * n * m))
        FAIL("sinkhorn domain error index %lld outside the batch", (long long)err);
    if (st != MHC_ERR_DOMAIN && err != -1)
        FAIL("sinkhorn err_index %lld without a domain error", (long long)err);
    if (!inplace || st != MHC_OK)
        arr_same(&x, "x");
    arr_same(&rs, "row_sums");
    arr_same(&cs, "col_sums");
    arr_same(&g, "grad_out");
    arr_free(&g);
    arr_free(&x);
    if (!inplace)
        arr_free(&o);
    arr_free(&rs);
    arr_free(&cs);
}

static void fuzz_distance(src_t *s, int f64, int isa, int nth, int mis, int pairwise)
{
    const int manifold = (int)pick(s, 0, 2), mode = (int)pick(s, 0, 2);
    const double K = pick(s, 0, 7) == 0 ? 1.0 : (double)pick(s, 1, 400) / 100.0;
    const int64_t d = pick(s, 0, 80), rows = pick(s, 0, 40), rows2 = pick(s, 0, 9);
    const int64_t xr = d + pick(s, 0, 3);
    const int64_t cr = pick(s, 0, 1) ? 0 : d + pick(s, 0, 2);
    const int es = f64 ? 8 : 4;
    arr_t x = arr_new(s, extent(rows, xr, d), es, mis == 1, 0);
    arr_t c = arr_new(s, pairwise ? extent(rows2, cr ? cr : d, d) : extent(rows, cr, d), es,
                      mis == 2, 0);
    const int64_t nout = pairwise ? rows * rows2 : rows;
    arr_t o = arr_new(s, nout, es, mis == 3, 0);
    int64_t err = -7;
    int st;
    if (!pairwise && f64)
        st = mhc_distance_f64(manifold, (const double *)x.data, xr, (const double *)c.data, cr,
                              (double *)o.data, rows, d, K, mode, isa, nth, &err);
    else if (!pairwise)
        st = mhc_distance_f32(manifold, (const float *)x.data, xr, (const float *)c.data, cr,
                              (float *)o.data, rows, d, K, mode, isa, nth, &err);
    else if (f64)
        st = mhc_pairwise_f64(manifold, (const double *)x.data, rows, xr, (const double *)c.data,
                              rows2, cr ? cr : d, d, (double *)o.data, K, mode, isa, nth, &err);
    else
        st = mhc_pairwise_f32(manifold, (const float *)x.data, rows, xr, (const float *)c.data,
                              rows2, cr ? cr : d, d, (float *)o.data, K, mode, isa, nth, &err);
    check_status(st);
    if (mis && st != MHC_ERR_MISALIGNED)
        FAIL("misaligned distance pointer accepted (status %d)", st);
    if (st == MHC_ERR_DOMAIN && (err < 0 || err >= nout))
        FAIL("distance domain error index %lld outside [0, %lld)", (long long)err,
             (long long)nout);
    if (st == MHC_OK && manifold == MHC_EUCLIDEAN)
        for (int64_t r = 0; r < nout; r++) {
            const double v = f64 ? ((double *)o.data)[r] : ((float *)o.data)[r];
            if (v < 0)
                FAIL("negative Euclidean distance %g", v);
        }
    arr_same(&x, "x");
    arr_same(&c, "c");
    arr_free(&x);
    arr_free(&c);
    arr_free(&o);
}

/* After a post step (mhc_hc_post_bf16, mhc_hc_post_pre): its status is one of the
 * ABI's and not a domain error, x (unless written in place) and f are unchanged;
 * x, f and, when it is another array, o are freed. */
static void post_done(int st, const char *name, int inplace, arr_t *x, arr_t *f, arr_t *o)
{
    check_status(st);
    if (st == MHC_ERR_DOMAIN)
        FAIL("%s returned a domain error", name);
    if (!inplace || st != MHC_OK)
        arr_same(x, "x");
    arr_same(f, "f");
    arr_free(x);
    arr_free(f);
    if (!inplace)
        arr_free(o);
}

static void fuzz_hc(src_t *s, int f64, int isa, int nth, int mis, int post)
{
    const int64_t tokens = pick(s, 0, 12), n = pick(s, 0, 17), C = pick(s, 0, 70);
    const int64_t xt = n * C + pick(s, 0, 3) * (pick(s, 0, 1) != 0);
    const int es = f64 ? 8 : 4;
    if (post) {
        const int64_t ft = pick(s, 0, 1) ? 0 : C + pick(s, 0, 2);
        const int inplace = pick(s, 0, 3) == 0;
        arr_t x = arr_new(s, extent(tokens, xt, n * C), es, mis == 1, 0);
        arr_t f = arr_new(s, extent(tokens, ft, C), es, mis == 2, 0);
        arr_t hp = arr_new(s, tokens * n, es, 0, 0), hr = arr_new(s, tokens * n * n, es, 0, 0);
        const int64_t ot = inplace ? xt : n * C;
        arr_t o = inplace ? x : arr_new(s, extent(tokens, ot, n * C), es, mis == 3, 0);
        int st = f64 ? mhc_hc_post_f64((const double *)x.data, xt, (const double *)f.data, ft,
                                       (const double *)hp.data, (const double *)hr.data,
                                       (double *)o.data, ot, tokens, n, C, isa, nth)
                     : mhc_hc_post_f32((const float *)x.data, xt, (const float *)f.data, ft,
                                       (const float *)hp.data, (const float *)hr.data,
                                       (float *)o.data, ot, tokens, n, C, isa, nth);
        check_status(st);
        if (st == MHC_ERR_DOMAIN)
            FAIL("mhc_hc_post returned a domain error");
        if (!inplace || st != MHC_OK)
            arr_same(&x, "x");
        arr_same(&f, "f");
        arr_same(&hp, "h_post");
        arr_same(&hr, "h_res");
        if (!f64) {   /* the same step on bfloat16 streams, float coefficients */
            arr_t xb = arr_new(s, extent(tokens, xt, n * C), 2, mis == 1, 0);
            arr_t fb = arr_new(s, extent(tokens, ft, C), 2, mis == 2, 0);
            arr_t ob = inplace ? xb : arr_new(s, extent(tokens, ot, n * C), 2, mis == 3, 0);
            /* h_res read as stored (strides n, 1) or as its transpose (1, n) */
            const int tr = pick(s, 0, 1);
            int stb = mhc_hc_post_bf16((const uint16_t *)xb.data, xt, (const uint16_t *)fb.data,
                                       ft, (const float *)hp.data, n, (const float *)hr.data,
                                       n * n, tr ? 1 : n, tr ? n : 1, (uint16_t *)ob.data, ot,
                                       tokens, n, C, isa, nth);
            arr_same(&hp, "h_post (bf16 step)");
            post_done(stb, "mhc_hc_post_bf16", inplace, &xb, &fb, &ob);
        }
        /* the backward of the same step */
        const int64_t gt = n * C + pick(s, 0, 3) * (pick(s, 0, 1) != 0);
        arr_t g = arr_new(s, extent(tokens, gt, n * C), es, 0, 0);
        arr_t gx = arr_new(s, extent(tokens, n * C, n * C), es, 0, 0);
        arr_t gf = arr_new(s, tokens * C, es, 0, 0), gp = arr_new(s, tokens * n, es, 0, 0);
        arr_t gr = arr_new(s, tokens * n * n, es, 0, 0);
        st = f64 ? mhc_hc_post_backward_f64((const double *)x.data, xt, (const double *)f.data,
                                            ft, (const double *)hp.data,
                                            (const double *)hr.data, (const double *)g.data, gt,
                                            tokens, n, C, (double *)gx.data, n * C,
                                            (double *)gf.data, (double *)gp.data,
                                            (double *)gr.data, isa, nth)
                 : mhc_hc_post_backward_f32((const float *)x.data, xt, (const float *)f.data, ft,
                                            (const float *)hp.data, (const float *)hr.data,
                                            (const float *)g.data, gt, tokens, n, C,
                                            (float *)gx.data, n * C, (float *)gf.data,
                                            (float *)gp.data, (float *)gr.data, isa, nth);
        check_status(st);
        if (st == MHC_ERR_DOMAIN)
            FAIL("mhc_hc_post_backward returned a domain error");
        arr_same(&f, "f");
        arr_same(&g, "g");
        arr_t *all[] = {&x, &f, &hp, &hr, &g, &gx, &gf, &gp, &gr};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            arr_free(all[i]);
        if (!inplace)
            arr_free(&o);
        return;
    }
    /* paper, V4, or V4 with its projection in the rows layout (MHC_HC_ROWS; the
     * backward refuses that flag: an error status, checked like the others) */
    const int vpick = (int)pick(s, 0, 2);
    const int variant = vpick == 2 ? (MHC_HC_DEEPSEEK_V4 | MHC_HC_ROWS) : vpick;
    const int trans = variant == MHC_HC_DEEPSEEK_V4;
    /* the projection in the variant's layout: phi (n*C, K) or fn (K, n*C), rows of
     * stride Kp >= their length */
    const int64_t K = (2 + n) * n, Kp = (trans ? n * C : K) + pick(s, 0, 3);
    const int64_t iters = pick(s, 0, 22);
    const int use_ws = (int)pick(s, 0, 1);
    arr_t x = arr_new(s, extent(tokens, xt, n * C), es, mis == 1, 0);
    arr_t phi = arr_new(s, (trans ? K : n * C) * Kp, es, mis == 2, 0);
    arr_t b = arr_new(s, K, es, 0, 0), al = arr_new(s, 3, es, 0, 0);
    arr_t hin = arr_new(s, tokens * C, es, mis == 3, 0), hpre = arr_new(s, tokens * n, es, 0, 0);
    arr_t hpost = arr_new(s, tokens * n, es, 0, 0), hres = arr_new(s, tokens * n * n, es, 0, 0);
    mhc_hc_ws *ws = use_ws ? mhc_hc_ws_create() : NULL;
    int st = f64 ? mhc_hc_pre_f64((const double *)x.data, xt, tokens, n, C,
                                  (const double *)phi.data, Kp, (const double *)b.data,
                                  (const double *)al.data, variant, iters, 1e-6, 1e-6,
                                  (double *)hin.data, (double *)hpre.data, (double *)hpost.data,
                                  (double *)hres.data, ws, isa, nth)
                 : mhc_hc_pre_f32((const float *)x.data, xt, tokens, n, C,
                                  (const float *)phi.data, Kp, (const float *)b.data,
                                  (const float *)al.data, variant, iters, 1e-6, 1e-6,
                                  (float *)hin.data, (float *)hpre.data, (float *)hpost.data,
                                  (float *)hres.data, ws, isa, nth);
    check_status(st);
    if (!f64) {   /* the same step on bfloat16 streams (x and h_in bfloat16) */
        arr_t xb = arr_new(s, extent(tokens, xt, n * C), 2, mis == 1, 0);
        arr_t hb = arr_new(s, tokens * C, 2, mis == 3, 0);
        const int stb = mhc_hc_pre_bf16((const uint16_t *)xb.data, xt, tokens, n, C,
                                        (const float *)phi.data, Kp, (const float *)b.data,
                                        (const float *)al.data, variant, iters, 1e-6, 1e-6,
                                        (uint16_t *)hb.data, (float *)hpre.data,
                                        (float *)hpost.data, (float *)hres.data, ws, isa, nth);
        check_status(stb);
        if (stb == MHC_ERR_DOMAIN)
            FAIL("mhc_hc_pre_bf16 returned a domain error");
        arr_same(&xb, "x (bf16 step)");
        arr_free(&xb);
        arr_free(&hb);
    }
    {   /* the fused boundary: the post step of x (in place or into another array) with
         * the coefficients just computed (or garbage), then the pre step */
        const int64_t ft = pick(s, 0, 1) ? 0 : C + pick(s, 0, 2);
        const int inplace = pick(s, 0, 3) == 0, same_coef = pick(s, 0, 3) == 0;
        arr_t xc = arr_new(s, extent(tokens, xt, n * C), es, 0, 0);
        arr_t f = arr_new(s, extent(tokens, ft, C), es, mis == 4, 0);
        const int64_t ot = inplace ? xt : n * C;
        arr_t o = inplace ? xc : arr_new(s, extent(tokens, ot, n * C), es, mis == 3, 0);
        arr_t h2[4] = {arr_new(s, tokens * C, es, 0, 0), arr_new(s, tokens * n, es, 0, 0),
                       same_coef ? hpost : arr_new(s, tokens * n, es, 0, 0),
                       same_coef ? hres : arr_new(s, tokens * n * n, es, 0, 0)};
        const int st2 =
            f64 ? mhc_hc_post_pre_f64((const double *)xc.data, xt, (const double *)f.data, ft,
                                      (const double *)hpost.data, (const double *)hres.data,
                                      (double *)o.data, ot, tokens, n, C,
                                      (const double *)phi.data, Kp, (const double *)b.data,
                                      (const double *)al.data, variant, iters, 1e-6, 1e-6,
                                      (double *)h2[0].data, (double *)h2[1].data,
                                      (double *)h2[2].data, (double *)h2[3].data, ws, isa, nth)
                : mhc_hc_post_pre_f32((const float *)xc.data, xt, (const float *)f.data, ft,
                                      (const float *)hpost.data, (const float *)hres.data,
                                      (float *)o.data, ot, tokens, n, C,
                                      (const float *)phi.data, Kp, (const float *)b.data,
                                      (const float *)al.data, variant, iters, 1e-6, 1e-6,
                                      (float *)h2[0].data, (float *)h2[1].data,
                                      (float *)h2[2].data, (float *)h2[3].data, ws, isa, nth);
        post_done(st2, "mhc_hc_post_pre", inplace, &xc, &f, &o);
        for (int i = 0; i < 4; i++)
            if (!(same_coef && i >= 2))
                arr_free(&h2[i]);
        if (!f64) {   /* the same boundary on bfloat16 streams (x, f, x_next, h_in) */
            arr_t xb = arr_new(s, extent(tokens, xt, n * C), 2, 0, 0);
            arr_t fb = arr_new(s, extent(tokens, ft, C), 2, mis == 4, 0);
            arr_t ob = inplace ? xb : arr_new(s, extent(tokens, ot, n * C), 2, mis == 3, 0);
            arr_t hb = arr_new(s, tokens * C, 2, 0, 0);
            arr_t c2[3] = {arr_new(s, tokens * n, es, 0, 0),
                           same_coef ? hpost : arr_new(s, tokens * n, es, 0, 0),
                           same_coef ? hres : arr_new(s, tokens * n * n, es, 0, 0)};
            const int st3 = mhc_hc_post_pre_bf16(
                (const uint16_t *)xb.data, xt, (const uint16_t *)fb.data, ft,
                (const float *)hpost.data, (const float *)hres.data, (uint16_t *)ob.data, ot,
                tokens, n, C, (const float *)phi.data, Kp, (const float *)b.data,
                (const float *)al.data, variant, iters, 1e-6, 1e-6, (uint16_t *)hb.data,
                (float *)c2[0].data, (float *)c2[1].data, (float *)c2[2].data, ws, isa, nth);
            post_done(st3, "mhc_hc_post_pre_bf16", inplace, &xb, &fb, &ob);
            arr_free(&hb);
            for (int i = 0; i < 3; i++)
                if (!(same_coef && i >= 1))
                    arr_free(&c2[i]);
        }
    }
    mhc_hc_ws_destroy(ws);
    /* the backward of the same call, each upstream gradient present or NULL */
    const int64_t gxt = n * C + pick(s, 0, 3) * (pick(s, 0, 1) != 0);
    const int have = (int)pick(s, 0, 31);   /* bits: which gradients, and gw */
    arr_t pt = arr_new(s, K * n * C, es, mis == 2, 0);
    arr_t gi = arr_new(s, tokens * C, es, 0, 0), gpr = arr_new(s, tokens * n, es, 0, 0);
    arr_t gpo = arr_new(s, tokens * n, es, 0, 0), grs = arr_new(s, tokens * n * n, es, 0, 0);
    arr_t gx = arr_new(s, extent(tokens, gxt, n * C), es, mis == 3, 0);
    arr_t gz = arr_new(s, tokens * K, es, 0, 0), yy = arr_new(s, tokens * K, es, 0, 0);
    arr_t gp = arr_new(s, tokens * K, es, 0, 0), gw = arr_new(s, K * n * C, es, 0, 0);
#define HC_G(a, bit) ((have >> (bit)) & 1 ? (a).data : NULL)
    st = f64 ? mhc_hc_pre_backward_f64(
                   (const double *)x.data, xt, tokens, n, C, (const double *)phi.data, Kp,
                   (const double *)pt.data, (const double *)b.data, (const double *)al.data,
                   variant, iters, 1e-6, 1e-6, (const double *)HC_G(gi, 0),
                   (const double *)HC_G(gpr, 1), (const double *)HC_G(gpo, 2),
                   (const double *)HC_G(grs, 3), (double *)gx.data, gxt, (double *)gz.data,
                   (double *)yy.data, (double *)gp.data, (double *)HC_G(gw, 4), isa, nth)
             : mhc_hc_pre_backward_f32(
                   (const float *)x.data, xt, tokens, n, C, (const float *)phi.data, Kp,
                   (const float *)pt.data, (const float *)b.data, (const float *)al.data,
                   variant, iters, 1e-6, 1e-6, (const float *)HC_G(gi, 0),
                   (const float *)HC_G(gpr, 1), (const float *)HC_G(gpo, 2),
                   (const float *)HC_G(grs, 3), (float *)gx.data, gxt, (float *)gz.data,
                   (float *)yy.data, (float *)gp.data, (float *)HC_G(gw, 4), isa, nth);
#undef HC_G
    check_status(st);
    if (st == MHC_ERR_DOMAIN)
        FAIL("mhc_hc_pre_backward returned a domain error");
    arr_same(&x, "x");
    arr_same(&phi, "phi");
    arr_same(&b, "bias");
    arr_same(&al, "alpha");
    arr_same(&pt, "phi_t");
    arr_same(&gi, "g_in");
    arr_same(&grs, "g_res");
    arr_t *all[] = {&x, &phi, &b, &al, &hin, &hpre, &hpost, &hres, &pt, &gi, &gpr, &gpo,
                    &grs, &gx, &gz, &yy, &gp, &gw};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        arr_free(all[i]);
}

/* The curvature kernels: batched transport (masses and costs from raw bits: any
 * problem with a NaN, a negative mass or unequal totals must be a domain error)
 * and graph costs (a random CSR graph, its lengths from raw bits; ragged
 * supports, some vertices out of range). */
static void fuzz_curvature(src_t *s, int isa, int nth, int mis, int graph)
{
    int64_t err = -7;
    if (!graph) {
        const int64_t batch = pick(s, 0, 20), a = pick(s, 0, 19), b = pick(s, 0, 19);
        arr_t C = arr_new(s, batch * a * b, 8, mis == 1, 1);
        arr_t mu = arr_new(s, batch * a, 8, mis == 2, 1), mv = arr_new(s, batch * b, 8, 0, 1);
        /* ragged: problem k has a - (k % 3) rows and b - (k % 2) columns (>= 0) */
        int64_t *rptr = malloc((size_t)(batch + 1) * 8), *cptr = malloc((size_t)(batch + 1) * 8);
        rptr[0] = cptr[0] = 0;
        int64_t used = 0;
        for (int64_t k = 0; k < batch; k++) {
            const int64_t ra = a - k % 3 > 0 ? a - k % 3 : 0, cb = b - k % 2 > 0 ? b - k % 2 : 0;
            rptr[k + 1] = rptr[k] + ra;
            cptr[k + 1] = cptr[k] + cb;
            used += ra * cb;
        }
        (void)used;   /* <= batch * a * b: C, mu, mv are large enough */
        /* most problems get equal totals, so that the solver runs (mu aligned) */
        for (int64_t k = 0; k < batch && mis != 2 && pick(s, 0, 3) != 0; k++) {
            double *r = (double *)mu.data + rptr[k], *c = (double *)mv.data + cptr[k];
            const int64_t ra = rptr[k + 1] - rptr[k], cb = cptr[k + 1] - cptr[k];
            double sr = 0, sc = 0;
            for (int64_t i = 0; i < ra; i++)
                sr += r[i];
            for (int64_t j = 0; j < cb; j++)
                sc += c[j];
            if (sr > 0 && sc > 0 && isfinite(sr) && isfinite(sc))
                for (int64_t j = 0; j < cb; j++)
                    c[j] *= sr / sc;
            memcpy(mv.copy + cptr[k] * 8, c, (size_t)cb * 8);
        }
        arr_t w = arr_new(s, batch, 8, mis == 3, 0), it = arr_new(s, batch, 8, 0, 0);
        const double reg = pick(s, 0, 4) == 0 ? 1e-4 : 0.01 * (double)pick(s, 1, 100);
        const int st = mhc_ot_w1_f64((const double *)C.data, (const double *)mu.data,
                                     (const double *)mv.data, rptr, cptr, batch, reg,
                                     pick(s, 1, 300), (double)pick(s, 0, 100) * 1e-4,
                                     (int)pick(s, 0, 1), (double *)w.data,
                                     pick(s, 0, 1) ? (int64_t *)it.data : NULL, isa, nth, &err);
        /* the same problems, exact (metric or not) */
        arr_t we = arr_new(s, batch, 8, 0, 0);
        int64_t err2 = -7;
        const int ste = mhc_ot_exact_f64((const double *)C.data, (const double *)mu.data,
                                         (const double *)mv.data, rptr, cptr, batch,
                                         (int)pick(s, 0, 1), (double *)we.data, nth, &err2);
        check_status(ste);
        if ((ste == MHC_ERR_DOMAIN || ste == MHC_ERR_COMPUTATION) && (err2 < 0 || err2 >= batch))
            FAIL("ot_exact error index %lld outside the batch", (long long)err2);
        if (ste == MHC_OK)
            for (int64_t k = 0; k < batch; k++)
                if (!isfinite(((double *)we.data)[k]))
                    FAIL("ot_exact gave a W1 that is not finite for problem %lld", (long long)k);
        arr_free(&we);
        free(rptr);
        free(cptr);
        check_status(st);
        if (st == MHC_ERR_DOMAIN && (err < 0 || err >= batch))
            FAIL("ot_w1 domain error index %lld outside the batch", (long long)err);
        if (st == MHC_OK)
            for (int64_t k = 0; k < batch; k++)
                if (isnan(((double *)w.data)[k]))   /* +-inf: a W1 beyond double range */
                    FAIL("ot_w1 gave a NaN W1 for problem %lld", (long long)k);
        arr_same(&C, "cost");
        arr_same(&mu, "mu");
        arr_same(&mv, "mv");
        arr_t *all[] = {&C, &mu, &mv, &w, &it};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            arr_free(all[i]);
        return;
    }
    const int64_t n = pick(s, 1, 40), deg = pick(s, 0, 6), edges = pick(s, 0, 30);
    int64_t *indptr = malloc((size_t)(n + 1) * 8), *indices = malloc((size_t)(n * deg + 1) * 8);
    indptr[0] = 0;
    for (int64_t v = 0; v < n; v++) {
        const int64_t d = pick(s, 0, deg);
        for (int64_t k = 0; k < d; k++)
            indices[indptr[v] + k] = pick(s, 0, n - (pick(s, 0, 50) != 0));   /* rarely n */
        indptr[v + 1] = indptr[v] + d;
    }
    arr_t wts = arr_new(s, indptr[n], 8, mis == 1, 1);
    int64_t *xptr = malloc((size_t)(edges + 1) * 8), *yptr = malloc((size_t)(edges + 1) * 8);
    xptr[0] = yptr[0] = 0;
    for (int64_t e = 0; e < edges; e++) {
        xptr[e + 1] = xptr[e] + pick(s, 0, 5);
        yptr[e + 1] = yptr[e] + pick(s, 0, 5);
    }
    int64_t *X = malloc((size_t)(xptr[edges] + 1) * 8), *Y = malloc((size_t)(yptr[edges] + 1) * 8);
    int64_t total = 0;
    for (int64_t k = 0; k < xptr[edges]; k++)
        X[k] = pick(s, 0, n - 1);
    for (int64_t k = 0; k < yptr[edges]; k++)
        Y[k] = pick(s, -(pick(s, 0, 80) == 0), n - 1);                      /* rarely -1 */
    for (int64_t e = 0; e < edges; e++)
        total += (xptr[e + 1] - xptr[e]) * (yptr[e + 1] - yptr[e]);
    arr_t out = arr_new(s, total, 8, mis == 2, 0);
    const int st = mhc_graph_costs_f64(indptr, indices, (const double *)wts.data, n, X, xptr,
                                       Y, yptr, edges, (double *)out.data, nth, &err);
    check_status(st);
    if (st == MHC_ERR_DOMAIN && (err < 0 || err >= indptr[n]))
        FAIL("graph_costs domain error index %lld outside the graph", (long long)err);
    if (st == MHC_OK)
        for (int64_t k = 0; k < total; k++)
            if (!(((double *)out.data)[k] >= 0))
                FAIL("graph_costs gave a negative or NaN distance");
    arr_same(&wts, "weights");
    /* the same graph as unit lengths: exact W1 of edges (U, V), mostly real edges */
    {
        int64_t *U = malloc((size_t)(edges + 1) * 8), *V = malloc((size_t)(edges + 1) * 8);
        double *wu = malloc((size_t)(edges + 1) * 8);
        for (int64_t e = 0; e < edges; e++) {
            U[e] = pick(s, 0, n - 1);
            const int64_t du = indptr[U[e] + 1] - indptr[U[e]];
            V[e] = du && pick(s, 0, 5) ? indices[indptr[U[e]] + pick(s, 0, du - 1)]
                                       : pick(s, 0, n - 1);
        }
        const double alpha = pick(s, 0, 20) == 0 ? 1.0 : (double)pick(s, 0, 9) / 10;
        int64_t err3 = -7;
        const int stu = mhc_unit_w1_f64(indptr, indices, n, U, V, edges, alpha, wu, nth, &err3);
        check_status(stu);
        if (stu == MHC_ERR_DOMAIN && (err3 < 0 || err3 >= edges))
            FAIL("unit_w1 domain error index %lld outside the edges", (long long)err3);
        if (stu == MHC_OK)
            for (int64_t e = 0; e < edges; e++)
                if (!(wu[e] >= 0 && wu[e] <= 3 + 1e-9))
                    FAIL("unit_w1 gave W1 %g outside [0, 3]", wu[e]);
        free(U);
        free(V);
        free(wu);
    }
    /* the same supports on a point cloud: manifold distances */
    const int64_t d = pick(s, 0, 9), manifold = pick(s, 0, 2);
    arr_t pts = arr_new(s, n * d, 8, mis == 3, 0);
    int st2 = mhc_point_costs_f64((int)manifold, (const double *)pts.data, n, d,
                                  0.5 + (double)pick(s, 0, 8), X, xptr, Y, yptr, edges,
                                  (double *)out.data, isa, nth);
    check_status(st2);
    if (st2 == MHC_OK && manifold == MHC_EUCLIDEAN)
        for (int64_t k = 0; k < total; k++)
            if (((double *)out.data)[k] < 0)
                FAIL("point_costs gave a negative Euclidean distance");
    arr_same(&pts, "points");
    /* the same supports as transport problems with costs from an n x n table:
     * masses from the input, most problems scaled to equal totals */
    {
        arr_t tab = arr_new(s, n * n, 8, mis == 1, 1);
        arr_t ma = arr_new(s, xptr[edges], 8, mis == 2, 1), mb = arr_new(s, yptr[edges], 8, 0, 1);
        for (int64_t e = 0; e < edges && mis != 2 && pick(s, 0, 3) != 0; e++) {
            double *r = (double *)ma.data + xptr[e], *c = (double *)mb.data + yptr[e], sr = 0,
                   sc = 0;
            for (int64_t i = 0; i < xptr[e + 1] - xptr[e]; i++)
                sr += r[i];
            for (int64_t j = 0; j < yptr[e + 1] - yptr[e]; j++)
                sc += c[j];
            if (sr > 0 && sc > 0 && isfinite(sr) && isfinite(sc))
                for (int64_t j = 0; j < yptr[e + 1] - yptr[e]; j++)
                    c[j] *= sr / sc;
            memcpy(mb.copy + yptr[e] * 8, c, (size_t)(yptr[e + 1] - yptr[e]) * 8);
        }
        double *wt = malloc((size_t)(edges + 1) * 8);
        int64_t err4 = -7;
        const int stt = mhc_ot_exact_table_f64((const double *)tab.data, n, X, Y,
                                               (const double *)ma.data, (const double *)mb.data,
                                               xptr, yptr, edges, (int)pick(s, 0, 1), wt, nth,
                                               &err4);
        check_status(stt);
        if ((stt == MHC_ERR_DOMAIN || stt == MHC_ERR_COMPUTATION) && (err4 < 0 || err4 >= edges))
            FAIL("ot_exact_table error index %lld outside the batch", (long long)err4);
        if (stt == MHC_OK)
            for (int64_t e = 0; e < edges; e++)
                if (!isfinite(wt[e]))   /* the table's entries may be negative: any sign */
                    FAIL("ot_exact_table gave W1 %g for problem %lld", wt[e], (long long)e);
        arr_same(&tab, "table");
        arr_same(&ma, "mu");
        arr_same(&mb, "mv");
        arr_free(&tab);
        arr_free(&ma);
        arr_free(&mb);
        free(wt);
    }
    arr_free(&pts);
    arr_free(&wts);
    arr_free(&out);
    free(indptr);
    free(indices);
    free(xptr);
    free(yptr);
    free(X);
    free(Y);
}

/* NULL pointers and negative sizes: refused before any access. */
static void fuzz_bad_args(src_t *s, int isa)
{
    float one = 1;
    int64_t err;
    const int64_t neg = -(int64_t)pick(s, 1, 1000);
    int st = mhc_sinkhorn_f32(NULL, 16, 4, &one, 16, 4, 1, 4, 4, NULL, 0, NULL, 0, 1, 0, 0,
                              isa, 1, &err);
    if (st != MHC_ERR_NULL_POINTER)
        FAIL("NULL x accepted by sinkhorn (status %d)", st);
    st = mhc_sinkhorn_f32(&one, 1, 1, &one, 1, 1, neg, 1, 1, NULL, 0, NULL, 0, 1, 0, 0, isa, 1,
                          &err);
    if (st != MHC_ERR_INVALID_DIMENSION)
        FAIL("negative batch accepted by sinkhorn (status %d)", st);
    st = mhc_distance_f32(0, &one, 1, NULL, 0, &one, 1, 1, 1.0, 0, isa, 1, &err);
    if (st != MHC_ERR_NULL_POINTER)
        FAIL("NULL c accepted by distance (status %d)", st);
    st = mhc_distance_f32((int)pick(s, 3, 1000), &one, 1, &one, 0, &one, 1, 1, 1.0, 0, isa, 1,
                          &err);
    if (st != MHC_ERR_INVALID_DIMENSION)
        FAIL("unknown manifold accepted (status %d)", st);
    st = mhc_pairwise_f32(0, &one, neg, 1, &one, 1, 1, 1, &one, 1.0, 0, isa, 1, &err);
    if (st != MHC_ERR_INVALID_DIMENSION)
        FAIL("negative nx accepted by pairwise (status %d)", st);
    st = mhc_hc_post_f32(&one, 1, &one, 0, &one, &one, &one, 1, 1, neg, 1, isa, 1);
    if (st != MHC_ERR_INVALID_DIMENSION)
        FAIL("negative n accepted by hc_post (status %d)", st);
    {
        uint16_t h1 = 0x3F80;   /* 1.0 */
        st = mhc_hc_post_bf16(&h1, 1, NULL, 0, &one, 1, &one, 1, 1, 1, &h1, 1, 1, 1, 1, isa, 1);
        if (st != MHC_ERR_NULL_POINTER)
            FAIL("NULL f accepted by hc_post_bf16 (status %d)", st);
        st = mhc_hc_post_bf16(&h1, 1, &h1, 0, &one, 1, &one, 1, 1, 1, &h1, 1, 1, neg, 1, isa, 1);
        if (st != MHC_ERR_INVALID_DIMENSION)
            FAIL("negative n accepted by hc_post_bf16 (status %d)", st);
        st = mhc_hc_post_bf16(&h1, 1, &h1, 0, &one, 1, &one, 1, neg, 1, &h1, 1, 1, 1, 1, isa, 1);
        if (st != MHC_ERR_INVALID_DIMENSION)
            FAIL("negative h_res stride accepted by hc_post_bf16 (status %d)", st);
    }
    st = mhc_hc_pre_f32(&one, 1, 1, 1, 1, NULL, 3, &one, &one, 0, 1, 1e-6, 1e-6, &one, &one,
                        &one, &one, NULL, isa, 1);
    if (st != MHC_ERR_NULL_POINTER)
        FAIL("NULL phi accepted by hc_pre (status %d)", st);
    double d1 = 1;
    int64_t zero = 0;
    int64_t ptr1[2] = {0, 1};
    st = mhc_ot_w1_f64(&d1, NULL, &d1, ptr1, ptr1, 1, 0.1, 1, 0, 0, &d1, NULL, isa, 1, &err);
    if (st != MHC_ERR_NULL_POINTER)
        FAIL("NULL mu accepted by ot_w1 (status %d)", st);
    st = mhc_ot_w1_f64(&d1, &d1, &d1, ptr1, ptr1, neg, 0.1, 1, 0, 0, &d1, NULL, isa, 1, &err);
    if (st != MHC_ERR_INVALID_DIMENSION)
        FAIL("negative batch accepted by ot_w1 (status %d)", st);
    st = mhc_graph_costs_f64(&zero, NULL, NULL, neg, NULL, &zero, NULL, &zero, 0, &d1, 1, &err);
    if (st != MHC_ERR_INVALID_DIMENSION)
        FAIL("negative n accepted by graph_costs (status %d)", st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int family = -2;
    if (family == -2) {
        const char *e = getenv("MHC_FUZZ_FAMILY");
        family = e ? atoi(e) : -1;
    }
    src_t s = {data, size};
    const int head = (int)take(&s, 1);
    const int fam = family >= 0 ? family : head % 4;
    const int sub = (head >> 4) & 1;
    const int f64 = (int)take(&s, 1) & 1;
    const int isa = (int)pick(&s, -1, 3);
    const int nth = (int)pick(&s, 0, 3);
    const int64_t r = pick(&s, 0, 31);
    const int mis = r < 3 ? (int)r + 1 : 0; /* 1 input in ~10: one misaligned pointer */
    if (r == 31) {
        fuzz_bad_args(&s, isa);
        return 0;
    }
    switch (fam) {
    case 0: fuzz_sinkhorn(&s, f64, isa, nth, mis, sub); break;
    case 1: fuzz_distance(&s, f64, isa, nth, mis, sub); break;
    case 2: fuzz_hc(&s, f64, isa, nth, mis, sub); break;
    default: fuzz_curvature(&s, isa, nth, mis, sub); break;
    }
    return 0;
}
