/*
 * sinkhorn.cu -- batched Sinkhorn-Knopp on the GPU (SPEC 2.1), forward and
 * backward, float and double. The math of native/src/sinkhorn_t.inc and
 * sinkhorn_bwd_t.inc:
 *
 *   start     M = x, or exp(x - max(x)) with logits (NaN anywhere -> NaN matrix)
 *   row step  every row scaled by target / (sum + tau); 0 where sum + tau == 0
 *   col step  likewise; "rows-first" does rows then columns, MHC_SK_COLS_FIRST
 *             the reverse
 *
 * Matrices are C-contiguous (batch stride n*m). Targets: rs (count or 1, n)
 * and cs (count or 1, m) with batch strides rs_b / cs_b (0: one vector for
 * every matrix), or NULL for the defaults 1 and n/m.
 *
 * Kernels (extern "C", suffix _f32 / _f64):
 *   mhc_sk_small   one thread per matrix, n*m <= MHC_CUDA_SK_SMALL_MAX, the
 *                  matrix in the thread's slab of shared memory
 *   mhc_sk_4x4     one thread per 4x4 matrix (the mHC case), in registers
 *   mhc_sk_block   one block per matrix (grid-stride), any size: the factored
 *                  form diag(r) K diag(c), scalings in shared memory (or in
 *                  `ws` when they do not fit), sums by segmented reduction
 *   mhc_sk_bwd     one block per matrix: the gradient of sum(g * sinkhorn(x))
 *                  w.r.t. x, forward recomputed in factored form with every
 *                  step's scalings and denominators in `ws`, steps undone in
 *                  reverse (sinkhorn_bwd_t.inc)
 *   mhc_sk_small_bwd, mhc_sk_4x4_bwd   the same gradient, one thread per matrix
 *                  (n*m <= MHC_CUDA_SK_SMALL_MAX; 4x4 in registers): sk1_bwd of
 *                  mhc_cuda.cuh, the denominators in `ws` (T, iters (n + m) per
 *                  matrix, SoA)
 * Flags: MHC_SK_LOGITS, MHC_SK_COLS_FIRST (mhc_constants.h).
 */
#include "mhc_cuda.cuh"

/* ---- one thread per matrix ------------------------------------------------
 * Fixed sizes (NF, MF: the 4x4 of mHC) keep the matrix in registers; any size
 * keeps it in the thread's slab of shared memory (nm values, the stride odd so
 * that a warp's threads hit distinct banks), never in local memory. */

static __device__ __forceinline__ int sk_slab_stride(int nm) { return nm % 2 ? nm : nm + 1; }

template <typename T, int NF, int MF>
static __device__ __forceinline__ void sk_thread(const T *__restrict__ x, T *out, const T *rs,
                                                 i64 rs_b, const T *cs, i64 cs_b, i64 count,
                                                 int n_, int m_, int iters, double tau_d,
                                                 int flags)
{
    const int n = NF ? NF : n_, m = MF ? MF : m_, nm = n * m;
    const T tau = (T)tau_d, cdef = (T)((double)n / (double)m);
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < count;
         b += (i64)gridDim.x * blockDim.x) {
        T Ar[NF ? NF * MF : 1];
        T *A = Ar;
        if constexpr (NF == 0)
            A = (T *)mhc_smem + threadIdx.x * sk_slab_stride(nm);
        const T *xb = x + b * nm;
        for (int e = 0; e < nm; e++)
            A[e] = xb[e];
        if (flags & MHC_SK_LOGITS) {
            T mx = A[0];
            bool bad = A[0] != A[0];
            for (int e = 1; e < nm; e++) {
                mx = A[e] > mx ? A[e] : mx;
                bad |= A[e] != A[e];
            }
            if (bad)
                mx = (T)mhc_nan();               /* NaN anywhere -> NaN matrix */
            for (int e = 0; e < nm; e++)
                A[e] = mhc_exp(A[e] - mx);
        }
        const T *r = rs ? rs + b * rs_b : 0, *c = cs ? cs + b * cs_b : 0;
        for (int it = 0; it < iters; it++) {
            for (int pass = 0; pass < 2; pass++) {
                if ((pass == 0) == !(flags & MHC_SK_COLS_FIRST)) {
                    for (int i = 0; i < n; i++) {
                        T s = A[i * m];
                        for (int j = 1; j < m; j++)
                            s += A[i * m + j];
                        const T den = s + tau;
                        const T f = den != 0 ? (r ? r[i] : (T)1) / den : (T)0;
                        for (int j = 0; j < m; j++)
                            A[i * m + j] *= f;
                    }
                } else {
                    for (int j = 0; j < m; j++) {
                        T s = A[j];
                        for (int i = 1; i < n; i++)
                            s += A[i * m + j];
                        const T den = s + tau;
                        const T f = den != 0 ? (c ? c[j] : cdef) / den : (T)0;
                        for (int i = 0; i < n; i++)
                            A[i * m + j] *= f;
                    }
                }
            }
        }
        T *ob = out + b * nm;
        for (int e = 0; e < nm; e++)
            ob[e] = A[e];
    }
}

/* ---- one block per matrix: lines summed by a segmented reduction ----------- */

/* For lines q < nq of np terms term(q, p): s_q = sum_p term(q, p), then
 * done(q, s_q) by one lane of the line's segment. Lines are spread over the
 * block (L lanes each, blockDim.x / L lines at a time). */
template <class Term, class Done>
static __device__ __forceinline__ void sk_lines(double *scratch, int nq, int np, Term term,
                                                Done done)
{
    const int B = blockDim.x;
    int L = 1;
    while (L * 2 <= B && (i64)L * 2 * nq <= B && (i64)L * 4 < np)
        L <<= 1;
    const int per = B / L, lane = threadIdx.x & (L - 1);
    for (int q0 = 0; q0 < nq; q0 += per) {
        const int q = q0 + (int)threadIdx.x / L;
        double v[1] = {0};
        if (q < nq)
            for (int p = lane; p < np; p += L)
                v[0] += term(q, p);
        mhc_seg_reduce<1>(scratch, v, L, mhc_op_add());
        if (q < nq && lane == 0)
            done(q, v[0]);
    }
    __syncthreads();
}

/* max of the nm entries of a (NaN if any is NaN) and, with want_arg, the first
 * (C order) index of the largest entry. Every thread gets both. */
template <typename T>
static __device__ __forceinline__ double sk_block_max(double *scratch, const T *a, i64 nm,
                                                      i64 *arg)
{
    double v[3] = {-mhc_inf(), 0, (double)nm};      /* max, NaN seen, first index */
    for (i64 e = threadIdx.x; e < nm; e += blockDim.x) {
        const double y = (double)a[e];
        if (y != y)
            v[1] = 1;
        else if (y > v[0] || (y == v[0] && (double)e < v[2])) {
            v[0] = y;
            v[2] = (double)e;
        }
    }
    struct {
        __device__ void operator()(double (&p)[3], const double (&q)[3]) const
        {
            p[1] = p[1] > q[1] ? p[1] : q[1];
            if (q[0] > p[0] || (q[0] == p[0] && q[2] < p[2])) {
                p[0] = q[0];
                p[2] = q[2];
            }
        }
    } op;
    mhc_seg_reduce<3>(scratch, v, blockDim.x, op);
    if (arg)
        *arg = v[2] < (double)nm ? (i64)v[2] : 0;
    return v[1] != 0 ? mhc_nan() : v[0];
}

template <typename T>
static __device__ __forceinline__ void sk_block(const T *x, T *out, const T *rs, i64 rs_b,
                                                const T *cs, i64 cs_b, i64 count, int n, int m,
                                                int iters, double tau, int flags, double *ws)
{
    const i64 nm = (i64)n * m;
    const int B = blockDim.x;
    const double cdef = (double)n / (double)m;
    double *scratch = mhc_smem;                       /* MHC_CUDA_SK_SCRATCH B doubles */
    for (i64 b = blockIdx.x; b < count; b += gridDim.x) {
        double *r = ws ? ws + b * (n + m) : mhc_smem + MHC_CUDA_SK_SCRATCH * B, *c = r + n;
        const T *xb = x + b * nm;
        T *ob = out + b * nm;
        const T *K = xb;
        if (flags & MHC_SK_LOGITS) {
            const double mx = sk_block_max(scratch, xb, nm, (i64 *)0);
            for (i64 e = threadIdx.x; e < nm; e += B)
                ob[e] = (T)exp((double)xb[e] - mx);
            K = ob;
        }
        for (int i = threadIdx.x; i < n; i += B)
            r[i] = 1;
        for (int j = threadIdx.x; j < m; j += B)
            c[j] = 1;
        __syncthreads();
        const T *tr = rs ? rs + b * rs_b : 0, *tc = cs ? cs + b * cs_b : 0;
        for (int it = 0; it < iters; it++) {
            for (int pass = 0; pass < 2; pass++) {
                if ((pass == 0) == !(flags & MHC_SK_COLS_FIRST)) {
                    sk_lines(scratch, n, m,
                             [&](int i, int j) { return (double)K[(i64)i * m + j] * c[j]; },
                             [&](int i, double s) {
                                 const double d = r[i] * s + tau;
                                 r[i] = d != 0 ? r[i] * ((tr ? (double)tr[i] : 1.0) / d) : 0;
                             });
                } else {
                    sk_lines(scratch, m, n,
                             [&](int j, int i) { return (double)K[(i64)i * m + j] * r[i]; },
                             [&](int j, double s) {
                                 const double d = c[j] * s + tau;
                                 c[j] = d != 0 ? c[j] * ((tc ? (double)tc[j] : cdef) / d) : 0;
                             });
                }
            }
        }
        for (i64 e = threadIdx.x; e < nm; e += B)
            ob[e] = (T)(r[e / m] * (double)K[e] * c[e % m]);
        __syncthreads();
    }
}

/* ---- backward: one block per matrix ----------------------------------------
 * ws per matrix (doubles): G nm | RH (iters+1) n | CH (iters+1) m | DR iters n |
 * DC iters m [| max(n, m) line accumulators where they do not fit in shared
 * memory: acc_global]; shared: MHC_CUDA_SK_SCRATCH B scratch [+ the max(n, m)
 * accumulators]. */
template <typename T>
static __device__ __forceinline__ void sk_bwd(const T *x, const T *g, T *gx, const T *rs,
                                              i64 rs_b, const T *cs, i64 cs_b, i64 count, int n,
                                              int m, int iters, double tau, int flags,
                                              double *ws, int acc_global)
{
    const i64 nm = (i64)n * m;
    const int B = blockDim.x;
    const int cols_first = (flags & MHC_SK_COLS_FIRST) != 0;
    const double cdef = (double)n / (double)m;
    const i64 per = nm + (i64)(2 * iters + 1) * (n + m) + (acc_global ? (n > m ? n : m) : 0);
    double *scratch = mhc_smem;
    for (i64 b = blockIdx.x; b < count; b += gridDim.x) {
        double *G = ws + b * per, *RH = G + nm, *CH = RH + (i64)(iters + 1) * n;
        double *DR = CH + (i64)(iters + 1) * m, *DC = DR + (i64)iters * n;
        double *acc = acc_global ? DC + (i64)iters * m : mhc_smem + MHC_CUDA_SK_SCRATCH * B;
        const T *xb = x + b * nm, *gb = g + b * nm;
        T *ob = gx + b * nm;
        const T *K = xb;
        i64 arg = 0;
        if (flags & MHC_SK_LOGITS) {              /* K = exp(x - max) kept in gx */
            const double mx = sk_block_max(scratch, xb, nm, &arg);
            for (i64 e = threadIdx.x; e < nm; e += B)
                ob[e] = (T)exp((double)xb[e] - mx);
            K = ob;
        }
        for (int i = threadIdx.x; i < n; i += B)
            RH[i] = 1;
        for (int j = threadIdx.x; j < m; j += B)
            CH[j] = 1;
        __syncthreads();
        const T *tr = rs ? rs + b * rs_b : 0, *tc = cs ? cs + b * cs_b : 0;
        /* forward: the scalings and denominators of every step */
        int kr = 0, kc = 0;
        for (int p = 0; p < 2 * iters; p++) {
            const int rows = (p % 2 == 0) != cols_first;
            const double *r = RH + (i64)kr * n, *c = CH + (i64)kc * m;
            if (rows) {
                double *rn = RH + (i64)(kr + 1) * n, *D = DR + (i64)kr * n;
                sk_lines(scratch, n, m,
                         [&](int i, int j) { return (double)K[(i64)i * m + j] * c[j]; },
                         [&](int i, double s) {
                             const double d = r[i] * s + tau;
                             D[i] = d;
                             rn[i] = d != 0 ? r[i] * ((tr ? (double)tr[i] : 1.0) / d) : 0;
                         });
                kr++;
            } else {
                double *cn = CH + (i64)(kc + 1) * m, *D = DC + (i64)kc * m;
                sk_lines(scratch, m, n,
                         [&](int j, int i) { return (double)K[(i64)i * m + j] * r[i]; },
                         [&](int j, double s) {
                             const double d = c[j] * s + tau;
                             D[j] = d;
                             cn[j] = d != 0 ? c[j] * ((tc ? (double)tc[j] : cdef) / d) : 0;
                         });
                kc++;
            }
        }
        /* backward */
        for (i64 e = threadIdx.x; e < nm; e += B)
            G[e] = (double)gb[e];
        __syncthreads();
        for (int p = 2 * iters - 1; p >= 0; p--) {
            const int rows = (p % 2 == 0) != cols_first;
            if (rows) {
                kr--;
                const double *rn = RH + (i64)(kr + 1) * n, *c = CH + (i64)kc * m;
                const double *D = DR + (i64)kr * n;
                /* acc[i] = rn_i sum_j G_ij K_ij c_j, then G_ij = (t_i G_ij - acc_i) / D_i */
                sk_lines(scratch, n, m,
                         [&](int i, int j) {
                             const i64 e = (i64)i * m + j;
                             return G[e] * ((double)K[e] * c[j]);
                         },
                         [&](int i, double s) { acc[i] = s * rn[i]; });
                for (i64 e = threadIdx.x; e < nm; e += B) {
                    const int i = (int)(e / m);
                    const double t = tr ? (double)tr[i] : 1.0;
                    G[e] = D[i] == 0 ? 0 : (t * G[e] - acc[i]) / D[i];
                }
            } else {
                kc--;
                const double *cn = CH + (i64)(kc + 1) * m, *r = RH + (i64)kr * n;
                const double *D = DC + (i64)kc * m;
                sk_lines(scratch, m, n,
                         [&](int j, int i) {
                             const i64 e = (i64)i * m + j;
                             return G[e] * (r[i] * (double)K[e]);
                         },
                         [&](int j, double s) { acc[j] = s * cn[j]; });
                for (i64 e = threadIdx.x; e < nm; e += B) {
                    const int j = (int)(e % m);
                    const double t = tc ? (double)tc[j] : cdef;
                    G[e] = D[j] == 0 ? 0 : (t * G[e] - acc[j]) / D[j];
                }
            }
            __syncthreads();
        }
        /* the start: logits dx = G K, minus sum(G K) at the first maximal entry */
        if (flags & MHC_SK_LOGITS) {
            double v[1] = {0};
            for (i64 e = threadIdx.x; e < nm; e += B) {
                G[e] *= (double)K[e];
                v[0] += G[e];
            }
            mhc_seg_reduce<1>(scratch, v, B, mhc_op_add());
            if (threadIdx.x == 0)
                G[arg] -= v[0];
            __syncthreads();
        }
        for (i64 e = threadIdx.x; e < nm; e += B)
            ob[e] = (T)G[e];
        __syncthreads();
    }
}

/* ---- backward: one thread per small matrix ----------------------------------
 * n*m <= MHC_CUDA_SK_SMALL_MAX (4x4 unrolled in registers): sk1_bwd of
 * mhc_cuda.cuh in T; ws (T) holds iters * (n + m) denominators per matrix,
 * slot s of matrix b at ws[s * count + b] (coalesced across the threads). */
template <typename T, int NF, int MF>
static __device__ __forceinline__ void sk_thread_bwd(const T *x, const T *g, T *gx,
                                                     const T *rs, i64 rs_b, const T *cs,
                                                     i64 cs_b, i64 count, int n_, int m_,
                                                     int iters, double tau, int flags, T *ws)
{
    const int n = NF ? NF : n_, m = MF ? MF : m_, nm = n * m;
    for (i64 b = (i64)blockIdx.x * blockDim.x + threadIdx.x; b < count;
         b += (i64)gridDim.x * blockDim.x) {
        T Ar[NF ? NF * MF : 1], Gr[NF ? NF * MF : 1];
        T *A = Ar, *G = Gr;
        if constexpr (NF == 0) {
            A = (T *)mhc_smem + threadIdx.x * sk_slab_stride(nm);
            G = A + blockDim.x * sk_slab_stride(nm);
        }
        const T *xb = x + b * nm, *gb = g + b * nm;
        for (int e = 0; e < nm; e++) {
            A[e] = xb[e];
            G[e] = gb[e];
        }
        sk1_bwd<T, NF, MF, true, T>(xb, A, G, n, m, iters, (T)tau, flags,
                                    rs ? rs + b * rs_b : (const T *)0,
                                    cs ? cs + b * cs_b : (const T *)0, ws + b, count);
        T *ob = gx + b * nm;
        for (int e = 0; e < nm; e++)
            ob[e] = G[e];
    }
}

#define MHC_SK_KERNELS(T, SUF)                                                                  \
    extern "C" __global__ void mhc_sk_small##SUF(const T *x, T *out, const T *rs, i64 rs_b,    \
                                                 const T *cs, i64 cs_b, i64 count, int n,     \
                                                 int m, int iters, double tau, int flags)     \
    {                                                                                           \
        sk_thread<T, 0, 0>(x, out, rs, rs_b, cs, cs_b, count, n, m, iters, tau, flags);        \
    }                                                                                           \
    extern "C" __global__ void mhc_sk_4x4##SUF(const T *x, T *out, const T *rs, i64 rs_b,      \
                                               const T *cs, i64 cs_b, i64 count, int n, int m, \
                                               int iters, double tau, int flags)               \
    {                                                                                           \
        sk_thread<T, 4, 4>(x, out, rs, rs_b, cs, cs_b, count, n, m, iters, tau, flags);        \
    }                                                                                           \
    extern "C" __global__ void mhc_sk_block##SUF(const T *x, T *out, const T *rs, i64 rs_b,    \
                                                 const T *cs, i64 cs_b, i64 count, int n,     \
                                                 int m, int iters, double tau, int flags,     \
                                                 double *ws)                                   \
    {                                                                                           \
        sk_block<T>(x, out, rs, rs_b, cs, cs_b, count, n, m, iters, tau, flags, ws);           \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(MHC_CUDA_BLOCK, 2) mhc_sk_bwd##SUF(const T *x, const T *g, T *gx, const T *rs,     \
                                               i64 rs_b, const T *cs, i64 cs_b, i64 count,     \
                                               int n, int m, int iters, double tau, int flags, \
                                               double *ws, int acc_global)                     \
    {                                                                                           \
        sk_bwd<T>(x, g, gx, rs, rs_b, cs, cs_b, count, n, m, iters, tau, flags, ws,            \
                  acc_global);                                                                  \
    }                                                                                           \
    extern "C" __global__ void mhc_sk_small_bwd##SUF(const T *x, const T *g, T *gx,             \
                                                     const T *rs, i64 rs_b, const T *cs,        \
                                                     i64 cs_b, i64 count, int n, int m,         \
                                                     int iters, double tau, int flags, T *ws)   \
    {                                                                                           \
        sk_thread_bwd<T, 0, 0>(x, g, gx, rs, rs_b, cs, cs_b, count, n, m, iters, tau, flags,   \
                               ws);                                                             \
    }                                                                                           \
    extern "C" __global__ void mhc_sk_4x4_bwd##SUF(const T *x, const T *g, T *gx, const T *rs, \
                                                   i64 rs_b, const T *cs, i64 cs_b, i64 count, \
                                                   int n, int m, int iters, double tau,        \
                                                   int flags, T *ws)                           \
    {                                                                                           \
        sk_thread_bwd<T, 4, 4>(x, g, gx, rs, rs_b, cs, cs_b, count, n, m, iters, tau, flags,   \
                               ws);                                                             \
    }

MHC_SK_KERNELS(float, _f32)
MHC_SK_KERNELS(double, _f64)
