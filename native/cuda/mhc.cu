/*
 * mhc.cu -- the mHC connection on the GPU (SPEC 2.3), float and double: the
 * math of native/src/mhc_t.inc and backends/array_api.py.
 *
 * mhc_pre_<T>(x, tokens, n, C, w, b, alpha, variant, iters, norm_eps, hc_eps,
 *             h_in, h_pre, h_post, h_res)
 *   one block per token (grid-stride); x (tokens, n, C) contiguous;
 *   variant MHC_HC_PAPER: w = phi (nC, K), y = (v . phi) rsqrt(mean(v^2) +
 *     eps),
 *     h_pre = sigmoid(a0 y + b), h_post = 2 sigmoid(a1 y + b),
 *     h_res = sinkhorn(a2 y + b, logits, cols-first, iters);
 *   variant MHC_HC_DEEPSEEK_V4: w = fn (K, nC), mix = (v rsqrt(...)) . fn,
 *     pre = sigmoid(...) + hc_eps, post = 2 sigmoid(...), comb = row softmax
 *     + hc_eps, column, then (row, column) x (iters - 1), denominators
 *     sum + hc_eps; h_res = comb^T;
 *   h_in = sum_i h_pre[i] x[i, :].
 *   K = (2 + n) n, n <= MHC_HC_MAX_STREAMS. The projection's terms are split
 *   over the block and summed in double by a fixed tree; the coefficients are
 *   computed in double by one thread.
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

#define MHC_HC_MAX_K ((2 + MHC_HC_MAX_STREAMS) * MHC_HC_MAX_STREAMS)

static __device__ __forceinline__ double hc_sig(double z) { return 1 / (1 + exp(-z)); }

/* Row softmax of the n x n matrix z into p (p may be z itself). */
static __device__ __forceinline__ void hc_row_softmax(const double *z, int n, double *p)
{
    for (int i = 0; i < n; i++) {
        double mx = z[i * n];
        for (int j = 1; j < n; j++)
            mx = z[i * n + j] > mx ? z[i * n + j] : mx;
        double s = 0;
        for (int j = 0; j < n; j++) {
            p[i * n + j] = exp(z[i * n + j] - mx);
            s += p[i * n + j];
        }
        for (int j = 0; j < n; j++)
            p[i * n + j] = p[i * n + j] / s;
    }
}

/* the coefficients of one token from its projection y (K values, normalised):
 * into sh_pre (n), sh_post (n), sh_res (n n) */
static __device__ void hc_coefficients(const double *y, int n, int variant, int iters,
                                       double hc_eps, const double *bias, const double *alpha,
                                       double *pre, double *post, double *res)
{
    for (int i = 0; i < n; i++) {
        if (variant == MHC_HC_PAPER) {
            pre[i] = hc_sig(alpha[0] * y[i] + bias[i]);
            post[i] = 2 * hc_sig(alpha[1] * y[n + i] + bias[n + i]);
        } else {
            pre[i] = hc_sig(y[i] * alpha[0] + bias[i]) + hc_eps;
            post[i] = 2 * hc_sig(y[n + i] * alpha[1] + bias[n + i]);
        }
    }
    double *A = res;
    for (int e = 0; e < n * n; e++)
        A[e] = variant == MHC_HC_PAPER ? alpha[2] * y[2 * n + e] + bias[2 * n + e]
                                       : y[2 * n + e] * alpha[2] + bias[2 * n + e];
    if (variant == MHC_HC_PAPER) {       /* logits, cols-first, targets 1 */
        double mx = A[0];
        bool bad = A[0] != A[0];
        for (int e = 1; e < n * n; e++) {
            mx = A[e] > mx ? A[e] : mx;
            bad |= A[e] != A[e];
        }
        if (bad)
            mx = mhc_nan();
        for (int e = 0; e < n * n; e++)
            A[e] = exp(A[e] - mx);
        for (int it = 0; it < iters; it++) {
            for (int j = 0; j < n; j++) {
                double s = A[j];
                for (int i = 1; i < n; i++)
                    s += A[i * n + j];
                const double f = s != 0 ? 1 / s : 0;
                for (int i = 0; i < n; i++)
                    A[i * n + j] *= f;
            }
            for (int i = 0; i < n; i++) {
                double s = A[i * n];
                for (int j = 1; j < n; j++)
                    s += A[i * n + j];
                const double f = s != 0 ? 1 / s : 0;
                for (int j = 0; j < n; j++)
                    A[i * n + j] *= f;
            }
        }
        return;
    }
    /* DeepSeek-V4: row softmax + eps, column, (row, column) x (iters - 1) */
    hc_row_softmax(A, n, A);
    for (int e = 0; e < n * n; e++)
        A[e] += hc_eps;
    const int passes = iters > 0 ? 2 * iters - 1 : 1;  /* the first column step always */
    for (int p = 0; p < passes; p++) {
        const int rows = p % 2 == 1;     /* column, then row, column, ... */
        for (int k = 0; k < n; k++) {
            double s = 0;
            for (int q = 0; q < n; q++)
                s += rows ? A[k * n + q] : A[q * n + k];
            const double den = s + hc_eps;
            for (int q = 0; q < n; q++) {
                double &a = rows ? A[k * n + q] : A[q * n + k];
                a = a / den;
            }
        }
    }
    for (int i = 0; i < n; i++)          /* comb^T */
        for (int j = i + 1; j < n; j++) {
            const double t = A[i * n + j];
            A[i * n + j] = A[j * n + i];
            A[j * n + i] = t;
        }
}

/* The sums of one token's streams v (n x C, L = n C values), by the whole
 * block: dst[k] = v . w[:, k] (k < K; w as phi (L, K) for MHC_HC_PAPER, as
 * fn (K, L) for MHC_HC_DEEPSEEK_V4), dst[K] = v . v and, with DOTS, dst[K + 1 + i] =
 * v[i, :] . g (g: C values). Each thread sums its share in double, the block
 * by a fixed tree; thread 0 writes dst. Every thread of the block must call it. */
template <typename T, bool DOTS>
static __device__ __forceinline__ void hc_sums(const T *v, int n, int C, const T *w,
                                               int variant, const T *g, double *scratch,
                                               double *dst)
{
    const int B = blockDim.x, K = (2 + n) * n, KA = DOTS ? K + 1 + n : K + 1;
    const i64 L = (i64)n * C;
    double acc[MHC_HC_MAX_K + 1 + (DOTS ? MHC_HC_MAX_STREAMS : 0)];
    for (int k = 0; k < KA; k++)
        acc[k] = 0;
    for (i64 j = threadIdx.x; j < L; j += B) {
        const double vj = (double)v[j];
        acc[K] += vj * vj;
        if (variant == MHC_HC_PAPER) {
            const T *row = w + j * K;
            for (int k = 0; k < K; k++)
                acc[k] += vj * (double)row[k];
        } else {
            for (int k = 0; k < K; k++)
                acc[k] += vj * (double)w[(i64)k * L + j];
        }
        if (DOTS)
            acc[K + 1 + (int)(j / C)] += vj * (double)g[j % C];
    }
    for (int k0 = 0; k0 < KA; k0 += MHC_CUDA_HC_CHUNK) {
        double part[MHC_CUDA_HC_CHUNK];
        for (int q = 0; q < MHC_CUDA_HC_CHUNK; q++)
            part[q] = k0 + q < KA ? acc[k0 + q] : 0;
        mhc_seg_reduce<MHC_CUDA_HC_CHUNK>(scratch, part, B, mhc_op_add());
        if (threadIdx.x == 0)
            for (int q = 0; q < MHC_CUDA_HC_CHUNK && k0 + q < KA; q++)
                dst[k0 + q] = part[q];
    }
}

/* shared memory: B * MHC_CUDA_HC_CHUNK scratch | y K | pre n | post n | res n n |
 * bias K | alpha 3 */
template <typename T>
static __device__ __forceinline__ void hc_pre(const T *x, i64 tokens, int n, int C, const T *w,
                                              const T *bias, const T *alpha, int variant,
                                              int iters, double norm_eps, double hc_eps,
                                              T *h_in, T *h_pre, T *h_post, T *h_res)
{
    const int B = blockDim.x, K = (2 + n) * n;
    const i64 L = (i64)n * C;
    double *scratch = mhc_smem, *y = scratch + B * MHC_CUDA_HC_CHUNK, *pre = y + K;
    double *post = pre + n, *res = post + n, *sb = res + n * n, *sa = sb + K;
    for (int k = threadIdx.x; k < K; k += B)
        sb[k] = (double)bias[k];
    if (threadIdx.x < 3)
        sa[threadIdx.x] = (double)alpha[threadIdx.x];
    for (i64 t = blockIdx.x; t < tokens; t += gridDim.x) {
        const T *v = x + t * L;
        hc_sums<T, false>(v, n, C, w, variant, (const T *)0, scratch, y);
        if (threadIdx.x == 0) {
            const double rs = 1 / sqrt(y[K] / (double)L + norm_eps);
            for (int k = 0; k < K; k++)
                y[k] *= rs;
            hc_coefficients(y, n, variant, iters, hc_eps, sb, sa, pre, post, res);
            for (int i = 0; i < n; i++) {
                h_pre[t * n + i] = (T)pre[i];
                h_post[t * n + i] = (T)post[i];
            }
            for (int e = 0; e < n * n; e++)
                h_res[t * n * n + e] = (T)res[e];
        }
        __syncthreads();
        for (int c = threadIdx.x; c < C; c += B) {
            double s = 0;
            for (int i = 0; i < n; i++)
                s += pre[i] * (double)v[(i64)i * C + c];
            h_in[t * C + c] = (T)s;
        }
        __syncthreads();
    }
}

template <typename T>
static __device__ __forceinline__ void hc_post(const T *x, const T *f, i64 f_ts, const T *hp,
                                               i64 hp_ts, const T *hr, i64 hr_ts, T *out,
                                               i64 tokens, int n, int C)
{
    const i64 total = tokens * C;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 t = e / C;
        const int c = (int)(e % C);
        const T *xt = x + t * n * C, *rt = hr + t * hr_ts, *pt = hp + t * hp_ts;
        T xs[MHC_HC_MAX_STREAMS];
        for (int j = 0; j < n; j++)
            xs[j] = xt[(i64)j * C + c];
        const T fv = f[t * f_ts + c];
        T *ot = out + t * n * C;
        for (int i = 0; i < n; i++) {
            T s = pt[i] * fv;
            for (int j = 0; j < n; j++)
                s += rt[i * n + j] * xs[j];
            ot[(i64)i * C + c] = s;
        }
    }
}

/* ---- the backward of mhc_pre ------------------------------------------------
 * Three kernels (the math of native/src/mhc_abi_t.inc's hc_bwd_chunk):
 *   mhc_pre_bwd_sums   a block per token: acc[t] = (v . phi (K), v . v,
 *                      v[i, :] . g_in[t] (n, with g_in)), double, (tokens, K+1+n)
 *   mhc_pre_bwd_coef   a thread per token (mhc_pre_bwd_coef4: n = 4 in registers):
 *                      from acc, the coefficients again and the
 *                      gradients gz, y, gp (T, (tokens, K)), and aux[t] = (cv,
 *                      h_pre (n), gp (K)) in double for the next kernel; the
 *                      Sinkhorn part by sk1_bwd (mhc_cuda.cuh) in double, its
 *                      denominators in ws (iters' * 2n per token, slot s of token t
 *                      at ws[s * tokens + t]; iters' = iters, V4 iters - 1)
 *   mhc_pre_bwd_gx     a thread per (token, stream value): g_x[t, j] =
 *                      sum_k gp[t, k] w(j, k) + cv[t] x[t, j] + h_pre[t, i] g_in[t, c]
 */

/* DeepSeek-V4's start from the logits z (n x n): P = row softmax and the
 * denominators of its first column step, D[j] = colsum(P + eps)[j] + eps */
template <int NF>
static __device__ __forceinline__ void hc_v4_start(const double *z, int n_, double eps,
                                                   double *P, double *D)
{
    const int n = NF ? NF : n_;
    hc_row_softmax(z, n, P);
    for (int j = 0; j < n; j++) {
        double cs = eps;
        for (int i = 0; i < n; i++)
            cs += P[i * n + j] + eps;
        D[j] = cs;
    }
}

template <typename T, int NF>
static __device__ __forceinline__ void hc_bwd_coef(i64 t, i64 tokens, const double *at, int n_,
                                                   int C, const T *bias, const T *alpha,
                                                   int variant, int iters, double norm_eps,
                                                   double hc_eps, const T *g_pre,
                                                   const T *g_post, const T *g_res,
                                                   int has_g_in, T *gz, T *y, T *gp,
                                                   double *ax, double *ws)
{
    const int n = NF ? NF : n_, nn = n * n, K = (2 + n) * n;
    const double L = (double)n * (double)C;
    const double r = 1 / sqrt(at[K] / L + norm_eps);
    const double a0 = (double)alpha[0], a1 = (double)alpha[1], a2 = (double)alpha[2];
    double gd[NF ? (2 + NF) * NF : MHC_HC_MAX_K];
    for (int i = 0; i < n; i++) {
        const double s = hc_sig(a0 * (at[i] * r) + (double)bias[i]);
        const double q = hc_sig(a1 * (at[n + i] * r) + (double)bias[n + i]);
        const double gpre = (g_pre ? (double)g_pre[t * n + i] : 0) +
                            (has_g_in ? at[K + 1 + i] : 0);
        ax[1 + i] = s + (variant == MHC_HC_DEEPSEEK_V4 ? hc_eps : 0);
        gd[i] = gpre * s * (1 - s);
        gd[n + i] = (g_post ? (double)g_post[t * n + i] : 0) * 2 * q * (1 - q);
    }
    if (!g_res) {
        for (int e = 0; e < nn; e++)
            gd[2 * n + e] = 0;
    } else {
        double A[NF ? NF * NF : MHC_HC_MAX_STREAMS * MHC_HC_MAX_STREAMS];
        double G[NF ? NF * NF : MHC_HC_MAX_STREAMS * MHC_HC_MAX_STREAMS];
        const T *gr = g_res + t * nn;
        for (int e = 0; e < nn; e++)
            A[e] = a2 * (at[2 * n + e] * r) + (double)bias[2 * n + e];
        if (variant == MHC_HC_PAPER) { /* logits, cols-first, no tau, targets 1 */
            for (int e = 0; e < nn; e++)
                G[e] = (double)gr[e];
            sk1_bwd<double, NF, NF, false, double>((const double *)0, A, G, n, n, iters, 0.0,
                                                   MHC_SK_LOGITS | MHC_SK_COLS_FIRST,
                                                   (const double *)0, (const double *)0,
                                                   ws + t, tokens);
            for (int e = 0; e < nn; e++)
                gd[2 * n + e] = G[e];
        } else {                       /* softmax + eps, a column step, then Sinkhorn */
            double P[NF ? NF * NF : MHC_HC_MAX_STREAMS * MHC_HC_MAX_STREAMS];
            double D[NF ? NF : MHC_HC_MAX_STREAMS];
            hc_v4_start<NF>(A, n, hc_eps, P, D);
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++) {
                    A[i * n + j] = (P[i * n + j] + hc_eps) / D[j];
                    G[i * n + j] = (double)gr[j * n + i];       /* h_res = comb^T */
                }
            if (iters > 1)
                sk1_bwd<double, NF, NF, false, double>((const double *)0, A, G, n, n,
                                                       iters - 1, hc_eps, 0,
                                                       (const double *)0, (const double *)0,
                                                       ws + t, tokens);
            for (int j = 0; j < n; j++) {  /* undo the column step */
                double dot = 0;
                for (int i = 0; i < n; i++)
                    dot += G[i * n + j] * ((P[i * n + j] + hc_eps) / D[j]);
                for (int i = 0; i < n; i++)
                    G[i * n + j] = (G[i * n + j] - dot) / D[j];
            }
            for (int i = 0; i < n; i++) {  /* and the row softmax */
                double dot = 0;
                for (int j = 0; j < n; j++)
                    dot += G[i * n + j] * P[i * n + j];
                for (int j = 0; j < n; j++)
                    gd[2 * n + i * n + j] = P[i * n + j] * (G[i * n + j] - dot);
            }
        }
    }
    double g_r = 0;
    for (int k = 0; k < K; k++) {
        const double a = k < n ? a0 : k < 2 * n ? a1 : a2;
        const double gy = gd[k] * a;
        gz[t * K + k] = (T)gd[k];
        y[t * K + k] = (T)(at[k] * r);
        gp[t * K + k] = (T)(gy * r);
        ax[1 + n + k] = gy * r;
        g_r += gy * at[k];
    }
    ax[0] = -g_r * r * r * r / L;
}

template <typename T>
static __device__ __forceinline__ void hc_pre_bwd_gx(const T *x, i64 tokens, int n, int C,
                                                     const T *w, int variant, const T *g_in,
                                                     const double *aux, T *g_x)
{
    const int K = (2 + n) * n, AX = 1 + n + K;
    const i64 L = (i64)n * C, total = tokens * L;
    for (i64 e = (i64)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (i64)gridDim.x * blockDim.x) {
        const i64 t = e / L, j = e - t * L;
        const double *a = aux + t * AX, *gpd = a + 1 + n;
        double s = a[0] * (double)x[e];
        if (g_in) {
            const int i = (int)(j / C);
            s += a[1 + i] * (double)g_in[t * C + (j - (i64)i * C)];
        }
        if (variant == MHC_HC_PAPER) {
            const T *row = w + j * K;
            for (int k = 0; k < K; k++)
                s += gpd[k] * (double)row[k];
        } else {
            for (int k = 0; k < K; k++)
                s += gpd[k] * (double)w[(i64)k * L + j];
        }
        g_x[e] = (T)s;
    }
}

/* ---- the backward of mhc_post ------------------------------------------------
 * mhc_post_bwd: a block per token; per column c (threads striding over C):
 *   g_x[t, j, c] = sum_i hr[t, i, j] g[t, i, c],  g_f[t, c] = sum_i hp[t, i] g[t, i, c]
 * and, summed over the columns in double by a fixed tree,
 *   g_post[t, i] = g[t, i, :] . f[t, :],  g_res[t, i, j] = g[t, i, :] . x[t, j, :]
 * (per token; f, hp, hr with token strides as mhc_post's). Shared: B * CHUNK. */
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
        double acc[MHC_HC_MAX_STREAMS + MHC_HC_MAX_STREAMS * MHC_HC_MAX_STREAMS];
        for (int k = 0; k < KA; k++)
            acc[k] = 0;
        for (int c = threadIdx.x; c < C; c += B) {
            T gv[MHC_HC_MAX_STREAMS], xv[MHC_HC_MAX_STREAMS];
            for (int i = 0; i < n; i++) {
                gv[i] = gt[(i64)i * C + c];
                xv[i] = xt[(i64)i * C + c];
            }
            const T fv = ft[c];
            T sf = 0;
            for (int i = 0; i < n; i++) {
                sf += pt[i] * gv[i];
                acc[i] += (double)gv[i] * (double)fv;
                for (int j = 0; j < n; j++)
                    acc[n + i * n + j] += (double)gv[i] * (double)xv[j];
            }
            g_f[t * C + c] = sf;
            for (int j = 0; j < n; j++) {
                T s = 0;
                for (int i = 0; i < n; i++)
                    s += rt[i * n + j] * gv[i];
                g_x[t * n * C + (i64)j * C + c] = s;
            }
        }
        for (int k0 = 0; k0 < KA; k0 += MHC_CUDA_HC_CHUNK) {
            double part[MHC_CUDA_HC_CHUNK];
            for (int q = 0; q < MHC_CUDA_HC_CHUNK; q++)
                part[q] = k0 + q < KA ? acc[k0 + q] : 0;
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

/* every token of mhc_pre_bwd_coef (NF = 0: any n; its local arrays are sized for
 * n = 16) or mhc_pre_bwd_coef4 (NF = 4: in registers, no local memory for the
 * launch to reserve) */
template <typename T, int NF>
static __device__ __forceinline__ void hc_bwd_coef_all(
    const double *acc, i64 tokens, int n, int C, const T *bias, const T *alpha, int variant,
    int iters, double norm_eps, double hc_eps, const T *g_pre, const T *g_post, const T *g_res,
    int has_g_in, T *gz, T *y, T *gp, double *aux, double *ws)
{
    const int K = (2 + n) * n;
    for (i64 t = (i64)blockIdx.x * blockDim.x + threadIdx.x; t < tokens;
         t += (i64)gridDim.x * blockDim.x)
        hc_bwd_coef<T, NF>(t, tokens, acc + t * (K + 1 + n), n, C, bias, alpha, variant, iters,
                           norm_eps, hc_eps, g_pre, g_post, g_res, has_g_in, gz, y, gp,
                           aux + t * (1 + n + K), ws);
}

#define MHC_HC_COEF_PARAMS(T)                                                                  \
    const double *acc, i64 tokens, int n, int C, const T *bias, const T *alpha, int variant,   \
        int iters, double norm_eps, double hc_eps, const T *g_pre, const T *g_post,            \
        const T *g_res, int has_g_in, T *gz, T *y, T *gp, double *aux, double *ws
#define MHC_HC_COEF_ARGS                                                                       \
    acc, tokens, n, C, bias, alpha, variant, iters, norm_eps, hc_eps, g_pre, g_post, g_res,    \
        has_g_in, gz, y, gp, aux, ws

#define MHC_HC_KERNELS(T, SUF)                                                                 \
    extern "C" __global__ void mhc_pre##SUF(const T *x, i64 tokens, int n, int C, const T *w, \
                                            const T *bias, const T *alpha, int variant,       \
                                            int iters, double norm_eps, double hc_eps,         \
                                            T *h_in, T *h_pre, T *h_post, T *h_res)            \
    {                                                                                          \
        hc_pre<T>(x, tokens, n, C, w, bias, alpha, variant, iters, norm_eps, hc_eps, h_in,   \
                  h_pre, h_post, h_res);                                                       \
    }                                                                                          \
    extern "C" __global__ void mhc_post##SUF(const T *x, const T *f, i64 f_ts, const T *hp,   \
                                             i64 hp_ts, const T *hr, i64 hr_ts, T *out,        \
                                             i64 tokens, int n, int C)                         \
    {                                                                                          \
        hc_post<T>(x, f, f_ts, hp, hp_ts, hr, hr_ts, out, tokens, n, C);                      \
    }                                                                                          \
    extern "C" __global__ void mhc_pre_bwd_sums##SUF(const T *x, i64 tokens, int n, int C,    \
                                                     const T *w, int variant, const T *g_in,  \
                                                     double *acc)                             \
    {                                                                                          \
        const int KA = (2 + n) * n + 1 + n;                                                    \
        for (i64 t = blockIdx.x; t < tokens; t += gridDim.x) {                                 \
            if (g_in)                                                                          \
                hc_sums<T, true>(x + t * n * C, n, C, w, variant, g_in + t * C, mhc_smem,     \
                                 acc + t * KA);                                                \
            else                                                                               \
                hc_sums<T, false>(x + t * n * C, n, C, w, variant, (const T *)0, mhc_smem,    \
                                  acc + t * KA);                                               \
        }                                                                                      \
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
                                                   const double *aux, T *g_x)                 \
    {                                                                                          \
        hc_pre_bwd_gx<T>(x, tokens, n, C, w, variant, g_in, aux, g_x);                        \
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
