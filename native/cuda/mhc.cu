/*
 * mhc.cu -- the mHC connection on the GPU (SPEC 2.3), float and double: the
 * math of native/src/mhc_t.inc and backends/array_api.py.
 *
 * mhc_pre_<T>(x, tokens, n, C, w, b, alpha, variant, iters, norm_eps, hc_eps,
 *             h_in, h_pre, h_post, h_res)
 *   one block per token (grid-stride); x (tokens, n, C) contiguous;
 *   variant 0 "paper": w = phi (nC, K), y = (v . phi) rsqrt(mean(v^2) + eps),
 *     h_pre = sigmoid(a0 y + b), h_post = 2 sigmoid(a1 y + b),
 *     h_res = sinkhorn(a2 y + b, logits, cols-first, iters);
 *   variant 1 "deepseek-v4": w = fn (K, nC), mix = (v rsqrt(...)) . fn,
 *     pre = sigmoid(...) + hc_eps, post = 2 sigmoid(...), comb = row softmax
 *     + hc_eps, column, then (row, column) x (iters - 1), denominators
 *     sum + hc_eps; h_res = comb^T;
 *   h_in = sum_i h_pre[i] x[i, :].
 *   K = (2 + n) n, n <= 16. The projection's terms are split over the block
 *   and summed in double by a fixed tree; the coefficients are computed in
 *   double by one thread.
 *
 * mhc_post_<T>(x, f, f_ts, hp, hp_ts, hr, hr_ts, out, tokens, n, C)
 *   out[t, i, c] = sum_j hr[t, i, j] x[t, j, c] + hp[t, i] f[t, c]; token
 *   strides f_ts, hp_ts, hr_ts (0: one for every token). Every x[t, :, c] is
 *   read before out[t, :, c] is written: out may be x.
 */
#include "mhc_cuda.cuh"

#define MHC_HC_MAX_STREAMS 16
#define MHC_HC_MAX_K ((2 + MHC_HC_MAX_STREAMS) * MHC_HC_MAX_STREAMS)
#define MHC_HC_CHUNK 8            /* sums reduced per round */

static __device__ __forceinline__ double hc_sig(double z) { return 1 / (1 + exp(-z)); }

/* the coefficients of one token from its projection y (K values, normalised):
 * into sh_pre (n), sh_post (n), sh_res (n n) */
static __device__ void hc_coefficients(const double *y, int n, int variant, int iters,
                                       double hc_eps, const double *bias, const double *alpha,
                                       double *pre, double *post, double *res)
{
    for (int i = 0; i < n; i++) {
        if (variant == 0) {
            pre[i] = hc_sig(alpha[0] * y[i] + bias[i]);
            post[i] = 2 * hc_sig(alpha[1] * y[n + i] + bias[n + i]);
        } else {
            pre[i] = hc_sig(y[i] * alpha[0] + bias[i]) + hc_eps;
            post[i] = 2 * hc_sig(y[n + i] * alpha[1] + bias[n + i]);
        }
    }
    double *A = res;
    for (int e = 0; e < n * n; e++)
        A[e] = variant == 0 ? alpha[2] * y[2 * n + e] + bias[2 * n + e]
                            : y[2 * n + e] * alpha[2] + bias[2 * n + e];
    if (variant == 0) {                  /* logits, cols-first, targets 1 */
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
    for (int i = 0; i < n; i++) {
        double mx = A[i * n];
        for (int j = 1; j < n; j++)
            mx = A[i * n + j] > mx ? A[i * n + j] : mx;
        double s = 0;
        for (int j = 0; j < n; j++) {
            A[i * n + j] = exp(A[i * n + j] - mx);
            s += A[i * n + j];
        }
        for (int j = 0; j < n; j++)
            A[i * n + j] = A[i * n + j] / s + hc_eps;
    }
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

/* shared memory: B * MHC_HC_CHUNK scratch | y K | pre n | post n | res n n |
 * bias K | alpha 3 */
template <typename T>
static __device__ __forceinline__ void hc_pre(const T *x, i64 tokens, int n, int C, const T *w,
                                              const T *bias, const T *alpha, int variant,
                                              int iters, double norm_eps, double hc_eps,
                                              T *h_in, T *h_pre, T *h_post, T *h_res)
{
    const int B = blockDim.x, K = (2 + n) * n;
    const i64 L = (i64)n * C;
    double *scratch = mhc_smem, *y = scratch + B * MHC_HC_CHUNK, *pre = y + K;
    double *post = pre + n, *res = post + n, *sb = res + n * n, *sa = sb + K;
    for (int k = threadIdx.x; k < K; k += B)
        sb[k] = (double)bias[k];
    if (threadIdx.x < 3)
        sa[threadIdx.x] = (double)alpha[threadIdx.x];
    for (i64 t = blockIdx.x; t < tokens; t += gridDim.x) {
        const T *v = x + t * L;
        double acc[MHC_HC_MAX_K + 1];
        for (int k = 0; k <= K; k++)
            acc[k] = 0;
        for (i64 j = threadIdx.x; j < L; j += B) {
            const double vj = (double)v[j];
            acc[K] += vj * vj;
            if (variant == 0) {
                const T *row = w + j * K;
                for (int k = 0; k < K; k++)
                    acc[k] += vj * (double)row[k];
            } else {
                for (int k = 0; k < K; k++)
                    acc[k] += vj * (double)w[(i64)k * L + j];
            }
        }
        for (int k0 = 0; k0 <= K; k0 += MHC_HC_CHUNK) {
            double part[MHC_HC_CHUNK];
            for (int q = 0; q < MHC_HC_CHUNK; q++)
                part[q] = k0 + q <= K ? acc[k0 + q] : 0;
            mhc_seg_reduce<MHC_HC_CHUNK>(scratch, part, B, mhc_op_add());
            if (threadIdx.x == 0)
                for (int q = 0; q < MHC_HC_CHUNK && k0 + q <= K; q++)
                    y[k0 + q] = part[q];           /* y[K]: the sum of squares */
        }
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
    }

MHC_HC_KERNELS(float, _f32)
MHC_HC_KERNELS(double, _f64)
