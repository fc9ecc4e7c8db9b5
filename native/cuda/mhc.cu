/*
 * mhc.cu -- the mHC connection on the GPU (SPEC 2.3), float and double: the
 * math of native/src/mhc_t.inc and backends/array_api.py.
 *
 * The forward, mhc_pre = mhc_proj + mhc_mix (below: the tiles, the grid):
 *   x (tokens, n, C) contiguous, L = n C, K = (2 + n) n, n <= MHC_HC_MAX_STREAMS;
 *   variant MHC_HC_PAPER: w = phi (L, K), y = (v . phi) rsqrt(mean(v^2) + eps),
 *     h_pre = sigmoid(a0 y + b), h_post = 2 sigmoid(a1 y + b),
 *     h_res = sinkhorn(a2 y + b, logits, cols-first, iters);
 *   variant MHC_HC_DEEPSEEK_V4: w = fn (K, L), pre = sigmoid(...) + hc_eps,
 *     post = 2 sigmoid(...), comb = row softmax + hc_eps, column, then (row,
 *     column) x (iters - 1), denominators sum + hc_eps; h_res = comb^T;
 *   h_in = sum_i h_pre[i] x[i, :].
 * mhc_post_pre = mhc_proj with the post step fused (x_next written once,
 *   projected from registers) + mhc_mix on x_next.
 *
 * mhc_post_<T>(x, f, f_ts, hp, hp_ts, hr, hr_ts, out, tokens, n, C)
 *   out[t, i, c] = sum_j hr[t, i, j] x[t, j, c] + hp[t, i] f[t, c]; token
 *   strides f_ts, hp_ts, hr_ts (0: one for every token). Every x[t, :, c] is
 *   read before out[t, :, c] is written: out may be x.
 *
 * The backward (native/src/mhc_abi_t.inc's mhc_hc_pre_backward and
 * mhc_hc_post_backward, backends/array_api.py's mhc_pre_backward and
 * mhc_post_backward): mhc_pre_bwd_sums, _coef and _gx give (g_x, gz, y, gp),
 * mhc_post_bwd (g_x, g_f, g_post, g_res); every output per token (the caller
 * sums over tokens), every sum over a token's values by a fixed tree: no
 * atomics, the results do not depend on timing.
 */
#include "mhc_cuda.cuh"


/* ---- the forward: a tiled projection, then the coefficients and the collapse ----
 *
 * mhc_proj_<T>: the projection as a GEMM over a tile of tokens. CTA (bx, g) takes
 * the tokens [bx TM, bx TM + TM) (grid-stride over tiles), TM = 4 TG, and the
 * columns [g Cg, g Cg + Cg) of every stream. Per chunk of TC columns it stages
 * x's tile (n TC values per token, transposed: xs[l][token], l = i TC + c) and
 * the projection's tile (ws[l][k], k < KP = K rounded up to 8, zeros beyond K and
 * beyond the last column) in shared memory -- read once per tile of tokens, not
 * per token -- and each thread accumulates a 4 tokens x 8 outputs register tile
 * over the lines l = s, s + S, ... of the chunk (slice s of S), with the sums of
 * squares of its 4 tokens fused (threads of the first output group). The S
 * slices of a tile are S consecutive lanes of a warp: a fixed butterfly of
 * shuffles sums them (no atomics: the result does not depend on timing); lane 0
 * writes part[(g tokens + t) (K + 1) + k] (k < K, and the sum of squares at K).
 * Row strides of xs and ws are multiples of 4 whose quarter is odd (hc_pad):
 * the 16-byte loads of a quarter-warp hit distinct banks. Where the tiles of
 * the CTA (TG KG, KG = KP / 8) outnumber B / S, passes over the chunks take
 * them in turn. Shared memory (T): xs LC XS | ws LC KS [| raw TM LC], LC = n TC.
 *
 *   With f (the post step fused, mhc_post_pre): the chunk of x is first staged
 *   as it is (raw), then x_next = sum_j hr[i, j] x[j] + hp[i] f is written to xo
 *   (which may be x: a CTA reads its columns of every stream before any is
 *   written, and no other CTA touches them) and projected from registers --
 *   x_next is never read back by this kernel.
 *
 * mhc_mix_<T> / mhc_mix4_<T> (n = 4: the coefficients in registers): CTA (bx, g)
 * takes TM2 tokens; the CTA sums their G partials in a fixed order (a warp per
 * value when G is large, as at decode), then a thread per token normalises
 * (rsqrt(mean(v^2) + norm_eps)) and computes the coefficients (CTAs with g = 0
 * write h_pre, h_post, h_res), then the CTA writes h_in for the columns
 * [g Cg2, g Cg2 + Cg2). Shared (T): h_pre TM2 n | y TM2 (K + 1) [| NF = 0: a
 * slab per coefficient thread, pre n | post n | M n n].
 *
 * mhc_post_<T> / mhc_post4_<T>: a thread per (token, column): the n values of x
 * at that column in registers (n = 4) or in the thread's shared slab (B n), so
 * that out may be x.
 *
 * The coefficients are computed in T (float32 for float32 input, SPEC 2.3).
 */

static __device__ __forceinline__ int hc_pad(int v)
{
    v = (v + 3) / 4 * 4;
    return (v / 4) % 2 == 0 ? v + 4 : v;
}

static __device__ __forceinline__ void hc_ld4(const float *p, float (&r)[4])
{
    const float4 q = *reinterpret_cast<const float4 *>(p);
    r[0] = q.x;
    r[1] = q.y;
    r[2] = q.z;
    r[3] = q.w;
}

static __device__ __forceinline__ void hc_ld4(const double *p, double (&r)[4])
{
    const double2 a = *reinterpret_cast<const double2 *>(p);
    const double2 b = *reinterpret_cast<const double2 *>(p + 2);
    r[0] = a.x;
    r[1] = a.y;
    r[2] = b.x;
    r[3] = b.y;
}

static __device__ __forceinline__ float hc_rsqrt(float v) { return 1.0f / sqrtf(v); }
static __device__ __forceinline__ double hc_rsqrt(double v) { return 1.0 / sqrt(v); }

template <typename T>
static __device__ __forceinline__ void hc_proj(const T *x, const T *f, i64 f_ts, const T *hp,
                                               i64 hp_ts, const T *hr, i64 hr_ts, T *xo,
                                               i64 tokens, int n, int C, const T *w,
                                               int variant, int TG, int S, int TC, int Cg,
                                               T *part)
{
    const int B = blockDim.x, tid = threadIdx.x, K = (2 + n) * n, KG = (K + 7) / 8;
    const int KP = 8 * KG, TM = 4 * TG, LC = n * TC, XS = hc_pad(TM), KS = hc_pad(KP);
    const int tiles = TG * KG, per_pass = B / S, s = tid % S;
    const i64 L = (i64)n * C;
    T *xs = (T *)mhc_smem, *ws = xs + LC * XS, *raw = ws + LC * KS;
    const int cb = (int)blockIdx.y * Cg, ce = cb + Cg < C ? cb + Cg : C;
    for (i64 t0 = (i64)blockIdx.x * TM; t0 < tokens; t0 += (i64)gridDim.x * TM) {
        for (int tile0 = 0; tile0 < tiles; tile0 += per_pass) {
            const int tile = tile0 + tid / S, tg = tile % TG, kg = tile / TG;
            const bool active = tile < tiles;
            /* the post step on the first pass; later passes read x_next back */
            const bool post = f && tile0 == 0;
            const T *src = f ? xo : x;
            T acc[4][8], sq[4];
#pragma unroll
            for (int a = 0; a < 4; a++) {
                sq[a] = 0;
#pragma unroll
                for (int b = 0; b < 8; b++)
                    acc[a][b] = 0;
            }
            for (int c0 = cb; c0 < ce; c0 += TC) {
                const int tc = ce - c0 < TC ? ce - c0 : TC;
                /* x's tile (post fused: x_next's, written to xo on the first pass) */
                if (post) {
                    for (int e = tid; e < TM * LC; e += B) {
                        const int tok = e / LC, l = e % LC, i = l / TC, cc = l % TC;
                        const i64 t = t0 + tok;
                        raw[e] = t < tokens && cc < tc ? x[t * L + (i64)i * C + c0 + cc] : (T)0;
                    }
                    __syncthreads();
                }
                for (int e = tid; e < TM * LC; e += B) {
                    const int tok = e / LC, l = e % LC, i = l / TC, cc = l % TC;
                    const i64 t = t0 + tok;
                    T v = 0;
                    if (t < tokens && cc < tc) {
                        if (post) {
                            const T *rt = hr + t * hr_ts + i * n, *rw = raw + tok * LC + cc;
                            v = hp[t * hp_ts + i] * f[t * f_ts + c0 + cc];
                            for (int j = 0; j < n; j++)
                                v += rt[j] * rw[j * TC];
                            xo[t * L + (i64)i * C + c0 + cc] = v;
                        } else {
                            v = src[t * L + (i64)i * C + c0 + cc];
                        }
                    }
                    xs[l * XS + tok] = v;
                }
                /* the projection's tile: phi (L, K) rows, or fn (K, L) columns */
                for (int e = tid; e < LC * KP; e += B) {
                    const int paper = variant == MHC_HC_PAPER;
                    const int l = paper ? e / KP : e % LC, k = paper ? e % KP : e / LC;
                    const int i = l / TC, cc = l % TC;
                    const i64 j = (i64)i * C + c0 + cc;
                    T v = 0;
                    if (k < K && cc < tc)
                        v = paper ? w[j * K + k] : w[(i64)k * L + j];
                    ws[l * KS + k] = v;
                }
                __syncthreads();
                if (active)
                    for (int l = s; l < LC; l += S) {
                        T xv[4], wa[4], wb[4];
                        hc_ld4(xs + l * XS + 4 * tg, xv);
                        hc_ld4(ws + l * KS + 8 * kg, wa);
                        hc_ld4(ws + l * KS + 8 * kg + 4, wb);
#pragma unroll
                        for (int a = 0; a < 4; a++) {
#pragma unroll
                            for (int b = 0; b < 4; b++) {
                                acc[a][b] += xv[a] * wa[b];
                                acc[a][4 + b] += xv[a] * wb[b];
                            }
                            if (kg == 0)
                                sq[a] += xv[a] * xv[a];
                        }
                    }
                __syncthreads();
            }
            for (int off = S / 2; off > 0; off >>= 1) {
#pragma unroll
                for (int a = 0; a < 4; a++) {
                    sq[a] += __shfl_xor_sync(0xffffffffu, sq[a], off);
#pragma unroll
                    for (int b = 0; b < 8; b++)
                        acc[a][b] += __shfl_xor_sync(0xffffffffu, acc[a][b], off);
                }
            }
            if (active && s == 0)
#pragma unroll
                for (int a = 0; a < 4; a++) {
                    const i64 t = t0 + 4 * tg + a;
                    if (t >= tokens)
                        continue;
                    T *pt = part + ((i64)blockIdx.y * tokens + t) * (K + 1);
#pragma unroll
                    for (int b = 0; b < 8; b++)
                        if (8 * kg + b < K)
                            pt[8 * kg + b] = acc[a][b];
                    if (kg == 0)
                        pt[K] = sq[a];
                }
        }
    }
}

template <typename T>
static __device__ __forceinline__ T hc_sigm(T z) { return (T)1 / ((T)1 + mhc_exp(-z)); }

/* the row softmax of the n x n matrix z into p (p may be z) */
template <typename T, int NF>
static __device__ __forceinline__ void hc_row_softmax(const T *z, int n_, T *p)
{
    const int n = NF ? NF : n_;
#pragma unroll
    for (int i = 0; i < n; i++) {
        T mx = z[i * n];
#pragma unroll
        for (int j = 1; j < n; j++)
            mx = z[i * n + j] > mx ? z[i * n + j] : mx;
        T s = 0;
#pragma unroll
        for (int j = 0; j < n; j++) {
            p[i * n + j] = mhc_exp(z[i * n + j] - mx);
            s += p[i * n + j];
        }
#pragma unroll
        for (int j = 0; j < n; j++)
            p[i * n + j] = p[i * n + j] / s;
    }
}

/* The coefficients of one token from its projection y (K values and the sum of
 * squares at K, in shared memory): pre, post (n) and M (the n x n h_res, paper
 * orientation) are the caller's registers (NF) or shared slab (NF = 0). */
template <typename T, int NF>
static __device__ __forceinline__ void hc_coef(const T *y, int n_, int C, const T *bias,
                                               const T *alpha, int variant, int iters,
                                               T norm_eps, T hc_eps, T *pre, T *post, T *M)
{
    const int n = NF ? NF : n_, nn = n * n, K = (2 + n) * n;
    const T rs = hc_rsqrt(y[K] / ((T)n * (T)C) + norm_eps);
    const T a0 = alpha[0], a1 = alpha[1], a2 = alpha[2];
    const int v4 = variant == MHC_HC_DEEPSEEK_V4;
#pragma unroll
    for (int i = 0; i < n; i++) {
        pre[i] = hc_sigm<T>(a0 * (y[i] * rs) + bias[i]) + (v4 ? hc_eps : (T)0);
        post[i] = 2 * hc_sigm<T>(a1 * (y[n + i] * rs) + bias[n + i]);
    }
#pragma unroll
    for (int e = 0; e < nn; e++)
        M[e] = a2 * (y[2 * n + e] * rs) + bias[2 * n + e];
    if (!v4) {                          /* logits, cols-first, targets 1 */
        T mx = M[0];
        bool bad = false;
#pragma unroll
        for (int e = 0; e < nn; e++) {
            mx = M[e] > mx ? M[e] : mx;
            bad |= M[e] != M[e];
        }
        if (bad)
            mx = (T)mhc_nan();
#pragma unroll
        for (int e = 0; e < nn; e++)
            M[e] = mhc_exp(M[e] - mx);
        for (int it = 0; it < iters; it++) {
#pragma unroll
            for (int j = 0; j < n; j++) {
                T s = 0;
#pragma unroll
                for (int i = 0; i < n; i++)
                    s += M[i * n + j];
                const T r = s != 0 ? 1 / s : 0;
#pragma unroll
                for (int i = 0; i < n; i++)
                    M[i * n + j] *= r;
            }
#pragma unroll
            for (int i = 0; i < n; i++) {
                T s = 0;
#pragma unroll
                for (int j = 0; j < n; j++)
                    s += M[i * n + j];
                const T r = s != 0 ? 1 / s : 0;
#pragma unroll
                for (int j = 0; j < n; j++)
                    M[i * n + j] *= r;
            }
        }
        return;
    }
    /* DeepSeek-V4: row softmax + eps, a column step, (row, column) x (iters - 1),
     * every denominator sum + eps; h_res = comb^T */
    hc_row_softmax<T, NF>(M, n, M);
#pragma unroll
    for (int e = 0; e < nn; e++)
        M[e] += hc_eps;
    /* the first column step always, then (row, column) x (iters - 1); the indices
     * are compile-time for NF (registers, no local memory) */
    for (int it = 0; it < (iters > 0 ? iters : 1); it++) {
        if (it > 0)
#pragma unroll
            for (int i = 0; i < n; i++) {
                T s = 0;
#pragma unroll
                for (int j = 0; j < n; j++)
                    s += M[i * n + j];
                const T den = s + hc_eps;
#pragma unroll
                for (int j = 0; j < n; j++)
                    M[i * n + j] = M[i * n + j] / den;
            }
#pragma unroll
        for (int j = 0; j < n; j++) {
            T s = 0;
#pragma unroll
            for (int i = 0; i < n; i++)
                s += M[i * n + j];
            const T den = s + hc_eps;
#pragma unroll
            for (int i = 0; i < n; i++)
                M[i * n + j] = M[i * n + j] / den;
        }
    }
#pragma unroll
    for (int i = 0; i < n; i++)
#pragma unroll
        for (int j = i + 1; j < n; j++) {
            const T t = M[i * n + j];
            M[i * n + j] = M[j * n + i];
            M[j * n + i] = t;
        }
}

template <typename T, int NF>
static __device__ __forceinline__ void hc_mix(const T *x, i64 tokens, int n_, int C,
                                              const T *part, int G, const T *bias,
                                              const T *alpha, int variant, int iters,
                                              double norm_eps, double hc_eps, int TM2, int Cg2,
                                              T *h_in, T *h_pre, T *h_post, T *h_res)
{
    const int n = NF ? NF : n_, K = (2 + n) * n, nn = n * n, B = blockDim.x;
    const int lane = threadIdx.x & 31, warps = B >> 5, items = TM2 * (K + 1);
    const i64 L = (i64)n * C;
    T *spre = (T *)mhc_smem, *ys = spre + TM2 * n, *slab = ys + items;
    const int cb = (int)blockIdx.y * Cg2, ce = cb + Cg2 < C ? cb + Cg2 : C, wc = ce - cb;
    for (i64 t0 = (i64)blockIdx.x * TM2; t0 < tokens; t0 += (i64)gridDim.x * TM2) {
        /* y of the tile's tokens: the G partials summed in a fixed order, by a
         * thread per value (few partials) or a warp per value (many: decode) */
        if (G <= 4 || warps == 0) {
            for (int it = threadIdx.x; it < items; it += B) {
                const i64 t = t0 + it / (K + 1);
                T v = 0;
                if (t < tokens)
                    for (int g = 0; g < G; g++)
                        v += part[((i64)g * tokens + t) * (K + 1) + it % (K + 1)];
                ys[it] = v;
            }
        } else {
            for (int it = threadIdx.x >> 5; it < items; it += warps) {
                const i64 t = t0 + it / (K + 1);
                T v = 0;
                if (t < tokens)
                    for (int g = lane; g < G; g += 32)
                        v += part[((i64)g * tokens + t) * (K + 1) + it % (K + 1)];
                for (int off = 16; off > 0; off >>= 1)
                    v += __shfl_xor_sync(0xffffffffu, v, off);
                if (lane == 0)
                    ys[it] = v;
            }
        }
        __syncthreads();
        for (int j = threadIdx.x; j < TM2; j += B) {
            const i64 t = t0 + j;
            if (t >= tokens)
                continue;
            T pr[NF ? NF : 1], po[NF ? NF : 1], Mr[NF ? NF * NF : 1];
            T *pre = pr, *post = po, *M = Mr;
            if constexpr (NF == 0) {
                pre = slab + j * (2 * n + nn);
                post = pre + n;
                M = post + n;
            }
            hc_coef<T, NF>(ys + j * (K + 1), n, C, bias, alpha, variant, iters, (T)norm_eps,
                           (T)hc_eps, pre, post, M);
#pragma unroll
            for (int i = 0; i < n; i++)
                spre[j * n + i] = pre[i];
            if (blockIdx.y == 0) {
#pragma unroll
                for (int i = 0; i < n; i++) {
                    h_pre[t * n + i] = pre[i];
                    h_post[t * n + i] = post[i];
                }
#pragma unroll
                for (int e = 0; e < nn; e++)
                    h_res[t * nn + e] = M[e];
            }
        }
        __syncthreads();
        for (int e = threadIdx.x; e < TM2 * wc; e += B) {
            const int j = e / wc, c = cb + e % wc;
            const i64 t = t0 + j;
            if (t >= tokens)
                continue;
            const T *v = x + t * L + c;
            T s = 0;
#pragma unroll
            for (int i = 0; i < n; i++)
                s += spre[j * n + i] * v[(i64)i * C];
            h_in[t * C + c] = s;
        }
        __syncthreads();
    }
}

template <typename T, int NF>
static __device__ __forceinline__ void hc_post(const T *x, const T *f, i64 f_ts, const T *hp,
                                               i64 hp_ts, const T *hr, i64 hr_ts, T *out,
                                               i64 tokens, int n_, int C)
{
    const int n = NF ? NF : n_;
    const i64 total = tokens * C;
    T xr[NF ? NF : 1];
    T *xv = xr;
    if constexpr (NF == 0)
        xv = (T *)mhc_smem + threadIdx.x * n;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 t = e / C;
        const int c = (int)(e % C);
        const T *xt = x + t * n * C, *rt = hr + t * hr_ts, *pt = hp + t * hp_ts;
#pragma unroll
        for (int j = 0; j < n; j++)
            xv[j] = xt[(i64)j * C + c];
        const T fv = f[t * f_ts + c];
        T *ot = out + t * n * C;
#pragma unroll
        for (int i = 0; i < n; i++) {
            T s = pt[i] * fv;
#pragma unroll
            for (int j = 0; j < n; j++)
                s += rt[i * n + j] * xv[j];
            ot[(i64)i * C + c] = s;
        }
    }
}

/* ---- the backward of mhc_pre ------------------------------------------------
 * The math of native/src/mhc_abi_t.inc's hc_bwd_chunk, in T (float32 for float32):
 *   mhc_proj           (the forward's kernel) the partials of v . phi and v . v
 *   mhc_pre_bwd_dots   with g_in: a warp per (token, stream): d[t, i] =
 *                      x[t, i, :] . g_in[t, :] (a fixed shuffle butterfly)
 *   mhc_pre_bwd_coef   a thread per token (mhc_pre_bwd_coef4: n = 4 in registers;
 *                      any n: its arrays in a shared slab per thread): the
 *                      coefficients again and the gradients gz, y, gp ((tokens, K)),
 *                      and aux[t] = (cv, h_pre (n), gp (K)) for the next kernel;
 *                      the Sinkhorn part by sk1_bwd (mhc_cuda.cuh), its
 *                      denominators in ws (iters' * 2n per token, slot s of token
 *                      t at ws[s * tokens + t]; iters' = iters, V4 iters - 1)
 *   mhc_pre_bwd_gx     g_x[t, j] = sum_k gp[t, k] w(j, k) + cv[t] x[t, j] +
 *                      h_pre[t, i] g_in[t, c], tiled over 4 tokens (below)
 */

template <typename T>
static __device__ __forceinline__ void hc_dots(const T *x, const T *g_in, i64 tokens, int n,
                                               int C, T *dots)
{
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    const i64 rows = tokens * n;
    /* r is the same in every lane of a warp: the warp shuffles together */
    for (i64 r = (i64)blockIdx.x * warps + (threadIdx.x >> 5); r < rows;
         r += (i64)gridDim.x * warps) {
        const T *v = x + r * C, *g = g_in + (r / n) * C;
        T s = 0;
        for (int c = lane; c < C; c += 32)
            s += v[c] * g[c];
        for (int off = 16; off > 0; off >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, off);
        if (lane == 0)
            dots[r] = s;
    }
}

/* DeepSeek-V4's start from the logits z (n x n): P = row softmax and the
 * denominators of its first column step, D[j] = colsum(P + eps)[j] + eps */
template <typename T, int NF>
static __device__ __forceinline__ void hc_v4_start(const T *z, int n_, T eps, T *P, T *D)
{
    const int n = NF ? NF : n_;
    hc_row_softmax<T, NF>(z, n, P);
#pragma unroll
    for (int j = 0; j < n; j++) {
        T cs = eps;
#pragma unroll
        for (int i = 0; i < n; i++)
            cs += P[i * n + j] + eps;
        D[j] = cs;
    }
}

/* the arrays of one token's coefficient gradients: registers (NF) or a slab */
template <typename T, int NF>
struct hc_bwd_arrays {
    static constexpr int K = NF ? (2 + NF) * NF : 1, NN = NF ? NF * NF : 1, N = NF ? NF : 1;
    T at[K + 1], A[NN], G[NN], P[NN], D[N];
};

/* T values of the slab per coefficient thread for any n (NF = 0) */
static __device__ __forceinline__ int hc_bwd_slab(int n) { return (2 + n) * n + 1 + 3 * n * n + n; }

/* One token's coefficient gradients. Each output is written as soon as it is
 * known (the pre and post part first, then h_res's), so that few values stay
 * live: V4's softmax P and column denominators D are computed again after the
 * Sinkhorn backward rather than kept across it. */
template <typename T, int NF>
static __device__ __forceinline__ void hc_bwd_coef(i64 t, i64 tokens, const T *part, int Gp,
                                                   const T *dots, int n_, int C, const T *bias,
                                                   const T *alpha, int variant, int iters,
                                                   T norm_eps, T hc_eps, const T *g_pre,
                                                   const T *g_post, const T *g_res, T *gz, T *y,
                                                   T *gp, T *ax, T *ws)
{
    const int n = NF ? NF : n_, nn = n * n, K = (2 + n) * n;
    hc_bwd_arrays<T, NF> reg;
    T *at = reg.at, *A = reg.A, *G = reg.G, *P = reg.P, *D = reg.D;
    if constexpr (NF == 0) {
        at = (T *)mhc_smem + (i64)threadIdx.x * hc_bwd_slab(n);
        A = at + K + 1;
        G = A + nn;
        P = G + nn;
        D = P + nn;
    }
#pragma unroll
    for (int k = 0; k <= K; k++) {
        T v = 0;
        for (int g = 0; g < Gp; g++)
            v += part[((i64)g * tokens + t) * (K + 1) + k];
        at[k] = v;
    }
    const T L = (T)n * (T)C;
    const T r = hc_rsqrt(at[K] / L + norm_eps);
    const T a0 = alpha[0], a1 = alpha[1], a2 = alpha[2];
    T g_r = 0;
    /* output k: gz = d/dz, y = at r, gp = a gz r (the projection's gradient), and
     * the norm's share g_r += a gz at */
    auto emit = [&](int k, T gd, T a) {
        const T gy = gd * a;
        gz[t * K + k] = gd;
        y[t * K + k] = at[k] * r;
        gp[t * K + k] = gy * r;
        ax[1 + n + k] = gy * r;
        g_r += gy * at[k];
    };
#pragma unroll
    for (int i = 0; i < n; i++) {
        const T s = hc_sigm<T>(a0 * (at[i] * r) + bias[i]);
        const T q = hc_sigm<T>(a1 * (at[n + i] * r) + bias[n + i]);
        const T gpre = (g_pre ? g_pre[t * n + i] : (T)0) + (dots ? dots[t * n + i] : (T)0);
        ax[1 + i] = s + (variant == MHC_HC_DEEPSEEK_V4 ? hc_eps : (T)0);
        emit(i, gpre * s * (1 - s), a0);
        emit(n + i, (g_post ? g_post[t * n + i] : (T)0) * 2 * q * (1 - q), a1);
    }
    if (g_res) {
        const T *gr = g_res + t * nn;
#pragma unroll
        for (int e = 0; e < nn; e++)
            A[e] = a2 * (at[2 * n + e] * r) + bias[2 * n + e];
        if (variant == MHC_HC_PAPER) { /* logits, cols-first, no tau, targets 1 */
#pragma unroll
            for (int e = 0; e < nn; e++)
                G[e] = gr[e];
            sk1_bwd<T, NF, NF, false, T>((const T *)0, A, G, n, n, iters, (T)0,
                                         MHC_SK_LOGITS | MHC_SK_COLS_FIRST, (const T *)0,
                                         (const T *)0, ws + t, tokens);
        } else {                       /* softmax + eps, a column step, then Sinkhorn */
            hc_v4_start<T, NF>(A, n, hc_eps, P, D);
#pragma unroll
            for (int i = 0; i < n; i++)
#pragma unroll
                for (int j = 0; j < n; j++) {
                    A[i * n + j] = (P[i * n + j] + hc_eps) / D[j];
                    G[i * n + j] = gr[j * n + i];       /* h_res = comb^T */
                }
            if (iters > 1)
                sk1_bwd<T, NF, NF, false, T>((const T *)0, A, G, n, n, iters - 1, hc_eps, 0,
                                             (const T *)0, (const T *)0, ws + t, tokens);
#pragma unroll
            for (int e = 0; e < nn; e++)   /* the start again (A was clobbered) */
                A[e] = a2 * (at[2 * n + e] * r) + bias[2 * n + e];
            hc_v4_start<T, NF>(A, n, hc_eps, P, D);
#pragma unroll
            for (int j = 0; j < n; j++) {  /* undo the column step */
                T dot = 0;
#pragma unroll
                for (int i = 0; i < n; i++)
                    dot += G[i * n + j] * ((P[i * n + j] + hc_eps) / D[j]);
#pragma unroll
                for (int i = 0; i < n; i++)
                    G[i * n + j] = (G[i * n + j] - dot) / D[j];
            }
#pragma unroll
            for (int i = 0; i < n; i++) {  /* and the row softmax */
                T dot = 0;
#pragma unroll
                for (int j = 0; j < n; j++)
                    dot += G[i * n + j] * P[i * n + j];
#pragma unroll
                for (int j = 0; j < n; j++)
                    G[i * n + j] = P[i * n + j] * (G[i * n + j] - dot);
            }
        }
    }
#pragma unroll
    for (int e = 0; e < nn; e++)
        emit(2 * n + e, g_res ? G[e] : (T)0, a2);
    ax[0] = -g_r * r * r * r / L;
}

/* mhc_pre_bwd_gx: g_x = gp w^T + cv x + h_pre g_in, as a GEMM over a tile of
 * tokens: CTA (bx, by) takes the tokens [bx TM, bx TM + TM), TM = 4, and the
 * stream values [by LC, by LC + LC) (grid-stride over tiles of tokens). It
 * stages w's tile (wt[l][k], row stride K | 1: a warp's lanes, on consecutive
 * l, hit distinct banks) once, then for each tile of tokens their aux (gp
 * transposed: gq[k][4], one 16-byte load gives the four tokens' values) and a
 * thread per value l computes it for the four tokens -- w read once per CTA,
 * not per token (grid-stride over tiles of values, then of tokens). Shared (T): wt LC (K | 1) | gq 4 K | cv 4 | h_pre 4 n. */
template <typename T>
static __device__ __forceinline__ void hc_pre_bwd_gx(const T *x, i64 tokens, int n, int C,
                                                     const T *w, int variant, const T *g_in,
                                                     const T *aux, int LC, T *g_x)
{
    const int K = (2 + n) * n, AX = 1 + n + K, KS = K | 1, B = blockDim.x;
    const i64 L = (i64)n * C;
    T *wt = (T *)mhc_smem, *gq = wt + LC * KS, *cv = gq + 4 * K, *hpre = cv + 4;
    for (i64 l0 = (i64)blockIdx.y * LC; l0 < L; l0 += (i64)gridDim.y * LC) {
        const int lc = L - l0 < LC ? (int)(L - l0) : LC;
        for (int e = threadIdx.x; e < lc * K; e += B) {
            const int paper = variant == MHC_HC_PAPER;
            const int l = paper ? e / K : e % lc, k = paper ? e % K : e / lc;
            wt[l * KS + k] = paper ? w[(l0 + l) * K + k] : w[(i64)k * L + l0 + l];
        }
        for (i64 t0 = (i64)blockIdx.x * 4; t0 < tokens; t0 += (i64)gridDim.x * 4) {
            for (int e = threadIdx.x; e < 4 * AX; e += B) {
                const int a = e / AX, q = e % AX;
                const T v = t0 + a < tokens ? aux[(t0 + a) * AX + q] : (T)0;
                if (q == 0)
                    cv[a] = v;
                else if (q <= n)
                    hpre[a * n + q - 1] = v;
                else
                    gq[(q - 1 - n) * 4 + a] = v;
            }
            __syncthreads();
            for (int l = threadIdx.x; l < lc; l += B) {
                T s[4] = {0, 0, 0, 0};
                const T *wl = wt + l * KS;
                for (int k = 0; k < K; k++) {
                    T g4[4];
                    hc_ld4(gq + 4 * k, g4);
                    const T wv = wl[k];
#pragma unroll
                    for (int a = 0; a < 4; a++)
                        s[a] += g4[a] * wv;
                }
                const i64 j = l0 + l;
                const int i = (int)(j / C);
#pragma unroll
                for (int a = 0; a < 4; a++) {
                    const i64 t = t0 + a;
                    if (t >= tokens)
                        break;
                    T v = cv[a] * x[t * L + j] + s[a];
                    if (g_in)
                        v += hpre[a * n + i] * g_in[t * C + (j - (i64)i * C)];
                    g_x[t * L + j] = v;
                }
            }
            __syncthreads();
        }
    }
}

/* ---- the backward of mhc_post ------------------------------------------------
 * mhc_post_bwd: a block per token; per column c (threads striding over C):
 *   g_x[t, j, c] = sum_i hr[t, i, j] g[t, i, c],  g_f[t, c] = sum_i hp[t, i] g[t, i, c]
 * then, MHC_CUDA_HC_CHUNK outputs at a time (registers), summed over the columns
 * by a fixed tree (in double),
 *   g_post[t, i] = g[t, i, :] . f[t, :],  g_res[t, i, j] = g[t, i, :] . x[t, j, :]
 * (per token; f, hp, hr with token strides as mhc_post's). Shared: B * CHUNK doubles. */
template <typename T>
static __device__ __forceinline__ void hc_post_bwd(const T *x, const T *f, i64 f_ts,
                                                   const T *hp, i64 hp_ts, const T *hr,
                                                   i64 hr_ts, const T *g, i64 tokens, int n,
                                                   int C, T *g_x, T *g_f, T *g_post,
                                                   T *g_res)
{
    const int B = blockDim.x, nn = n * n, KA = n + nn;
    double *scratch = mhc_smem;
    for (i64 t = blockIdx.x; t < tokens; t += gridDim.x) {
        const T *xt = x + t * n * C, *gt = g + t * n * C, *ft = f + t * f_ts;
        const T *pt = hp + t * hp_ts, *rt = hr + t * hr_ts;
        for (int c = threadIdx.x; c < C; c += B) {
            T sf = 0;
            for (int i = 0; i < n; i++)
                sf += pt[i] * gt[(i64)i * C + c];
            g_f[t * C + c] = sf;
            for (int j = 0; j < n; j++) {
                T s = 0;
                for (int i = 0; i < n; i++)
                    s += rt[i * n + j] * gt[(i64)i * C + c];
                g_x[t * n * C + (i64)j * C + c] = s;
            }
        }
        for (int k0 = 0; k0 < KA; k0 += MHC_CUDA_HC_CHUNK) {
            T acc[MHC_CUDA_HC_CHUNK];
#pragma unroll
            for (int q = 0; q < MHC_CUDA_HC_CHUNK; q++)
                acc[q] = 0;
            for (int c = threadIdx.x; c < C; c += B)
#pragma unroll
                for (int q = 0; q < MHC_CUDA_HC_CHUNK; q++) {
                    const int k = k0 + q;
                    if (k >= KA)
                        break;
                    const int i = k < n ? k : (k - n) / n;
                    const T other = k < n ? ft[c] : xt[(i64)((k - n) % n) * C + c];
                    acc[q] += gt[(i64)i * C + c] * other;
                }
            double part[MHC_CUDA_HC_CHUNK];
#pragma unroll
            for (int q = 0; q < MHC_CUDA_HC_CHUNK; q++)
                part[q] = (double)acc[q];
            mhc_seg_reduce<MHC_CUDA_HC_CHUNK>(scratch, part, B, mhc_op_add());
            if (threadIdx.x == 0)
                for (int q = 0; q < MHC_CUDA_HC_CHUNK && k0 + q < KA; q++) {
                    const int k = k0 + q;
                    if (k < n)
                        g_post[t * n + k] = (T)part[q];
                    else
                        g_res[t * nn + (k - n)] = (T)part[q];
                }
        }
    }
}

/* every token of mhc_pre_bwd_coef (NF = 0) or mhc_pre_bwd_coef4 (NF = 4) */
template <typename T, int NF>
static __device__ __forceinline__ void hc_bwd_coef_all(
    const T *part, int Gp, const T *dots, i64 tokens, int n, int C, const T *bias,
    const T *alpha, int variant, int iters, double norm_eps, double hc_eps, const T *g_pre,
    const T *g_post, const T *g_res, T *gz, T *y, T *gp, T *aux, T *ws)
{
    const int K = (2 + n) * n;
    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < tokens;
         t += (i64)gridDim.x * blockDim.x)
        hc_bwd_coef<T, NF>(t, tokens, part, Gp, dots, n, C, bias, alpha, variant, iters,
                           (T)norm_eps, (T)hc_eps, g_pre, g_post, g_res, gz, y, gp,
                           aux + t * (1 + n + K), ws);
}

#define MHC_HC_COEF_PARAMS(T)                                                                  \
    const T *part, int Gp, const T *dots, i64 tokens, int n, int C, const T *bias,             \
        const T *alpha, int variant, int iters, double norm_eps, double hc_eps,                \
        const T *g_pre, const T *g_post, const T *g_res, T *gz, T *y, T *gp, T *aux, T *ws
#define MHC_HC_COEF_ARGS                                                                       \
    part, Gp, dots, tokens, n, C, bias, alpha, variant, iters, norm_eps, hc_eps, g_pre,        \
        g_post, g_res, gz, y, gp, aux, ws

#define MHC_HC_MIX_PARAMS(T)                                                                   \
    const T *x, i64 tokens, int n, int C, const T *part, int G, const T *bias, const T *alpha, \
        int variant, int iters, double norm_eps, double hc_eps, int TM2, int Cg2, T *h_in,     \
        T *h_pre, T *h_post, T *h_res
#define MHC_HC_MIX_ARGS                                                                        \
    x, tokens, n, C, part, G, bias, alpha, variant, iters, norm_eps, hc_eps, TM2, Cg2, h_in,   \
        h_pre, h_post, h_res

#define MHC_HC_KERNELS(T, SUF)                                                                 \
    extern "C" __global__ void mhc_proj##SUF(const T *x, const T *f, i64 f_ts, const T *hp,   \
                                             i64 hp_ts, const T *hr, i64 hr_ts, T *xo,         \
                                             i64 tokens, int n, int C, const T *w,             \
                                             int variant, int TG, int S, int TC, int Cg,       \
                                             T *part)                                          \
    {                                                                                          \
        hc_proj<T>(x, f, f_ts, hp, hp_ts, hr, hr_ts, xo, tokens, n, C, w, variant, TG, S, TC, \
                   Cg, part);                                                                  \
    }                                                                                          \
    extern "C" __global__ void mhc_mix##SUF(MHC_HC_MIX_PARAMS(T))                             \
    {                                                                                          \
        hc_mix<T, 0>(MHC_HC_MIX_ARGS);                                                         \
    }                                                                                          \
    extern "C" __global__ void mhc_mix4##SUF(MHC_HC_MIX_PARAMS(T))                            \
    {                                                                                          \
        hc_mix<T, 4>(MHC_HC_MIX_ARGS);                                                         \
    }                                                                                          \
    extern "C" __global__ void mhc_post##SUF(const T *x, const T *f, i64 f_ts, const T *hp,   \
                                             i64 hp_ts, const T *hr, i64 hr_ts, T *out,        \
                                             i64 tokens, int n, int C)                         \
    {                                                                                          \
        hc_post<T, 0>(x, f, f_ts, hp, hp_ts, hr, hr_ts, out, tokens, n, C);                   \
    }                                                                                          \
    extern "C" __global__ void mhc_post4##SUF(const T *x, const T *f, i64 f_ts, const T *hp,  \
                                              i64 hp_ts, const T *hr, i64 hr_ts, T *out,       \
                                              i64 tokens, int n, int C)                        \
    {                                                                                          \
        hc_post<T, 4>(x, f, f_ts, hp, hp_ts, hr, hr_ts, out, tokens, n, C);                   \
    }                                                                                          \
    extern "C" __global__ void mhc_pre_bwd_dots##SUF(const T *x, const T *g_in, i64 tokens,   \
                                                     int n, int C, T *dots)                    \
    {                                                                                          \
        hc_dots<T>(x, g_in, tokens, n, C, dots);                                               \
    }                                                                                          \
    extern "C" __global__ void mhc_pre_bwd_coef##SUF(MHC_HC_COEF_PARAMS(T))                  \
    {                                                                                          \
        hc_bwd_coef_all<T, 0>(MHC_HC_COEF_ARGS);                                               \
    }                                                                                          \
    extern "C" __global__ void mhc_pre_bwd_coef4##SUF(MHC_HC_COEF_PARAMS(T))                 \
    {                                                                                          \
        hc_bwd_coef_all<T, 4>(MHC_HC_COEF_ARGS);                                               \
    }                                                                                          \
    extern "C" __global__ void mhc_pre_bwd_gx##SUF(const T *x, i64 tokens, int n, int C,      \
                                                   const T *w, int variant, const T *g_in,    \
                                                   const T *aux, int LC, T *g_x)              \
    {                                                                                          \
        hc_pre_bwd_gx<T>(x, tokens, n, C, w, variant, g_in, aux, LC, g_x);                    \
    }                                                                                          \
    extern "C" __global__ void mhc_post_bwd##SUF(const T *x, const T *f, i64 f_ts,            \
                                                 const T *hp, i64 hp_ts, const T *hr,         \
                                                 i64 hr_ts, const T *g, i64 tokens, int n,    \
                                                 int C, T *g_x, T *g_f, T *g_post,            \
                                                 T *g_res)                                     \
    {                                                                                          \
        hc_post_bwd<T>(x, f, f_ts, hp, hp_ts, hr, hr_ts, g, tokens, n, C, g_x, g_f, g_post,   \
                       g_res);                                                                 \
    }

MHC_HC_KERNELS(float, _f32)
MHC_HC_KERNELS(double, _f64)
