/*
 * mhc_cuda.cuh -- what the CUDA kernels of native/cuda/ (the .cu files) share: integer
 * types, IEEE constants, double-double sums, the block-wide segmented
 * reduction (deterministic: a fixed tree in shared memory, no atomics, no
 * warp shuffles), its warp-shuffle form (mhc_seg_reduce_shfl: as
 * deterministic, no shared memory within a warp) and the Sinkhorn backward of one matrix in one thread
 * (sk1_bwd: sinkhorn.cu's small-matrix backward and mhc.cu's h_res gradient),
 * and includes mhc_constants.h.
 *
 * Written for NVRTC (CuPy's RawModule): no standard headers, only the CUDA
 * built-ins. The CPU test harness (native/cuda/harness/cuda_cpu.h) defines
 * the same built-ins for g++, so that these sources also run on the CPU.
 */
#ifndef MHC_CUDA_CUH
#define MHC_CUDA_CUH

#include "mhc_constants.h" /* the flags, codes and limits shared with C and Python */

typedef long long i64;

/* dynamic shared memory of every kernel (the launch sizes it) */
extern __shared__ double mhc_smem[];

#define MHC_DBL_MAX 1.7976931348623157e308

static __device__ __forceinline__ double mhc_inf() { return __longlong_as_double(0x7ff0000000000000LL); }
static __device__ __forceinline__ double mhc_nan() { return __longlong_as_double(0x7ff8000000000000LL); }
static __device__ __forceinline__ int mhc_finite(double v) { return v - v == 0.0; }

static __device__ __forceinline__ float mhc_exp(float v) { return expf(v); }
static __device__ __forceinline__ double mhc_exp(double v) { return exp(v); }

/* 2**-e with |v| = f 2**e, f in [0.5, 1): multiplying by it is exact and brings
 * |v| into [0.5, 1) (1 for v == 0 or not finite). */
static __device__ __forceinline__ double mhc_pow2_scale(double v)
{
    if (!(v > 0) || !mhc_finite(v))
        return 1.0;
    int e;
    frexp(v, &e);
    if (e < -1000)
        e = -1000;                  /* subnormal: as near as 2**1000 brings it */
    return ldexp(1.0, -e);
}

/* ---- double-double sums: (hi, lo) with |lo| <= ulp(hi)/2 ---------------- */

static __device__ __forceinline__ void dd_add(double &hi, double &lo, double bh, double bl)
{
    const double s = hi + bh, bb = s - hi;
    const double e = (hi - (s - bb)) + (bh - bb) + lo + bl;
    hi = s + e;
    lo = e - (hi - s);
}

/* (hi, lo) += a * b, the product's rounding error kept (fma) */
static __device__ __forceinline__ void dd_addprod(double &hi, double &lo, double a, double b)
{
    const double p = a * b;
    dd_add(hi, lo, p, fma(a, b, -p));
}

/* ---- block-wide segmented reduction ---------------------------------------
 * The block's threads form segments of L consecutive threads (L a power of two
 * dividing blockDim.x). Each thread brings W values; op(a, b) folds b into a.
 * On return every thread holds its segment's total (the same in every lane, so
 * that decisions taken on it are uniform within a segment). The tree is fixed:
 * the result does not depend on timing. Every thread of the block must call it
 * (it synchronises); it uses W * blockDim.x doubles of mhc_smem from `sh`. */
template <int W, class Op>
static __device__ __forceinline__ void mhc_seg_reduce(double *sh, double (&v)[W], int L, Op op)
{
    const int t = threadIdx.x, B = blockDim.x;
    for (int w = 0; w < W; w++)
        sh[w * B + t] = v[w];
    __syncthreads();
    const int lane = t & (L - 1);
    for (int s = L >> 1; s > 0; s >>= 1) {
        if (lane < s) {
            double a[W], b[W];
            for (int w = 0; w < W; w++) {
                a[w] = sh[w * B + t];
                b[w] = sh[w * B + t + s];
            }
            op(a, b);
            for (int w = 0; w < W; w++)
                sh[w * B + t] = a[w];
        }
        __syncthreads();
    }
    const int first = t & ~(L - 1);
    for (int w = 0; w < W; w++)
        v[w] = sh[w * B + first];
    __syncthreads();
}

struct mhc_op_add {
    template <int W> __device__ void operator()(double (&a)[W], const double (&b)[W]) const
    {
        for (int w = 0; w < W; w++)
            a[w] += b[w];
    }
};

/* the lanes per line of a segmented reduction over lines of `len` terms:
 * a power of two <= blockDim.x, about len / 4 (every lane sums >= 4 terms) */
static __device__ __forceinline__ int mhc_lanes(i64 len)
{
    int L = 1;
    while (L < (int)blockDim.x && (i64)L * 4 < len)
        L <<= 1;
    return L;
}

/* ---- the Sinkhorn backward of one matrix in one thread ----------------------
 * The gradient of sum(G * sinkhorn(x)) w.r.t. x for one n x m matrix, computed
 * by one thread in the compute type W: A and G hold n*m values (registers when
 * n, m are compile-time, NF and MF; local memory otherwise).
 *
 *   on entry  A = x (the start before exp for logits), G = the upstream gradient
 *   on return G = the gradient w.r.t. x; A is clobbered
 *
 * The forward (flags: 1 logits, 2 cols-first; tau; targets tr (n), tc (m) or
 * NULL for 1 and n/m) stores only each step's denominators D = sum + tau, slot
 * s at h[s * hs] (hs: the number of threads of the launch, so that consecutive
 * threads touch consecutive addresses: ws[s * count + b] for matrix b);
 * iters * (n + m) slots. The backward walks the steps in reverse. A row step
 * B = diag(t / D) A gives
 *   dA_ij = (t_i dB_ij - sum_k dB_ik B_ik) / D_i     (0 where D_i == 0)
 * and A_ij = B_ij D_i / t_i recovers the step's input from its output: a pure
 * per-line scaling, exact up to a rounding per step (a line with D_i == 0 was
 * zero and stays zero). Columns likewise. A zero target loses its line, so a
 * matrix with one (ANY_TARGET, checked per matrix) recomputes each step's
 * output from x instead (O(steps^2), only for such matrices): x is then read
 * again. Logits: dx = dK * K, and -sum(dK * K) at the first maximal entry. */
template <typename W>
static __device__ __forceinline__ int sk1_start(W *A, int nm, int logits)
{
    int arg = 0;
    if (logits) {
        W mx = A[0];
        bool bad = A[0] != A[0];
        for (int e = 1; e < nm; e++) {
            if (A[e] > mx) {
                mx = A[e];
                arg = e;
            }
            bad |= A[e] != A[e];
        }
        if (bad)
            mx = (W)mhc_nan();                /* NaN anywhere -> NaN matrix */
        for (int e = 0; e < nm; e++)
            A[e] = mhc_exp(A[e] - mx);
    }
    return arg;
}

/* one forward step of A (n x m, row or column); the denominators into h when
 * h is not NULL */
template <typename W, typename S, int NF, int MF>
static __device__ __forceinline__ void sk1_step(W *A, int n_, int m_, int rows, W tau,
                                                const S *tr, const S *tc, W *h, i64 hs)
{
    const int n = NF ? NF : n_, m = MF ? MF : m_;
    if (rows) {
        for (int i = 0; i < n; i++) {
            W s = A[i * m];
            for (int j = 1; j < m; j++)
                s += A[i * m + j];
            const W d = s + tau;
            if (h)
                h[(i64)i * hs] = d;
            const W f = d != 0 ? (tr ? (W)tr[i] : (W)1) / d : (W)0;
            for (int j = 0; j < m; j++)
                A[i * m + j] *= f;
        }
    } else {
        const W cdef = (W)((double)n / (double)m);
        for (int j = 0; j < m; j++) {
            W s = A[j];
            for (int i = 1; i < n; i++)
                s += A[i * m + j];
            const W d = s + tau;
            if (h)
                h[(i64)j * hs] = d;
            const W f = d != 0 ? (tc ? (W)tc[j] : cdef) / d : (W)0;
            for (int i = 0; i < n; i++)
                A[i * m + j] *= f;
        }
    }
}

template <typename W, int NF, int MF, bool ANY_TARGET, typename S>
static __device__ __forceinline__ void sk1_bwd(const S *x, W *A, W *G, int n_, int m_,
                                               int iters, W tau, int flags, const S *tr,
                                               const S *tc, W *h, i64 hs)
{
    const int n = NF ? NF : n_, m = MF ? MF : m_, nm = n * m;
    const int logits = flags & MHC_SK_LOGITS, cols_first = (flags & MHC_SK_COLS_FIRST) != 0;
    const W cdef = (W)((double)n / (double)m);
    bool exact = true;
    if (ANY_TARGET) {
        for (int i = 0; i < n; i++)
            exact &= !(tr && tr[i] == 0);
        for (int j = 0; j < m; j++)
            exact &= !(tc && tc[j] == 0);
    }
    const int arg = sk1_start<W>(A, nm, logits);
    const int P = 2 * iters;
    i64 off = 0;
    for (int p = 0; p < P; p++) {
        const int rows = (p % 2 == 0) != cols_first;
        sk1_step<W, S, NF, MF>(A, n, m, rows, tau, tr, tc, h + off * hs, hs);
        off += rows ? n : m;
    }
    for (int p = P - 1; p >= 0; p--) {
        const int rows = (p % 2 == 0) != cols_first;
        off -= rows ? n : m;
        const W *D = h + off * hs;
        if (ANY_TARGET && !exact) {           /* A = the output of step p, from x */
            for (int e = 0; e < nm; e++)
                A[e] = (W)x[e];
            sk1_start<W>(A, nm, logits);
            for (int q = 0; q <= p; q++)
                sk1_step<W, S, NF, MF>(A, n, m, (q % 2 == 0) != cols_first, tau, tr, tc,
                                       (W *)0, 0);
        }
        if (rows) {
            for (int i = 0; i < n; i++) {
                const W d = D[(i64)i * hs], t = tr ? (W)tr[i] : (W)1;
                W acc = 0;
                for (int j = 0; j < m; j++)
                    acc += G[i * m + j] * A[i * m + j];
                const W inv = d != 0 ? (W)1 / d : (W)0, u = d / t;
                for (int j = 0; j < m; j++) {
                    G[i * m + j] = d != 0 ? (t * G[i * m + j] - acc) * inv : (W)0;
                    if (exact && d != 0)
                        A[i * m + j] *= u;
                }
            }
        } else {
            for (int j = 0; j < m; j++) {
                const W d = D[(i64)j * hs], t = tc ? (W)tc[j] : cdef;
                W acc = 0;
                for (int i = 0; i < n; i++)
                    acc += G[i * m + j] * A[i * m + j];
                const W inv = d != 0 ? (W)1 / d : (W)0, u = d / t;
                for (int i = 0; i < n; i++) {
                    G[i * m + j] = d != 0 ? (t * G[i * m + j] - acc) * inv : (W)0;
                    if (exact && d != 0)
                        A[i * m + j] *= u;
                }
            }
        }
    }
    if (logits) {
        if (ANY_TARGET && !exact) {
            for (int e = 0; e < nm; e++)
                A[e] = (W)x[e];
            sk1_start<W>(A, nm, logits);
        }
        W s = 0;
        for (int e = 0; e < nm; e++) {
            G[e] *= A[e];
            s += G[e];
        }
        for (int e = 0; e < nm; e++)          /* no dynamic index: G stays in registers */
            G[e] -= e == arg ? s : (W)0;
    }
}

/* ---- warp-shuffle reductions -------------------------------------------------
 * mhc_seg_reduce's contract (segments of L consecutive threads, L a power of two
 * dividing blockDim.x; W values per thread; op(a, b) folds b into a; every
 * thread gets its segment's total) without shared memory or a barrier when
 * L <= 32: a butterfly of __shfl_xor_sync in which each pair folds the lower
 * lane's values with the higher lane's, in that order, so that both lanes get
 * the same bits -- the total is uniform in the segment and does not depend on
 * timing (op need not be commutative: double-double sums are not). Every lane
 * of the warp must call it. For L > 32 (a segment of several warps) each
 * warp's total goes to shared memory and every thread folds its segment's
 * warps in order; then every thread of the block must call it (two
 * __syncthreads) and it uses W * blockDim.x / 32 doubles of `sh`. */
template <int W, class Op>
static __device__ __forceinline__ void mhc_seg_reduce_shfl(double *sh, double (&v)[W], int L,
                                                           Op op)
{
    const int lane = threadIdx.x & 31;
    for (int o = (L < 32 ? L : 32) >> 1; o > 0; o >>= 1) {
        double a[W], b[W];
        for (int w = 0; w < W; w++) {
            const double t = __shfl_xor_sync(0xffffffffu, v[w], o);
            a[w] = (lane & o) ? t : v[w];
            b[w] = (lane & o) ? v[w] : t;
        }
        op(a, b);
        for (int w = 0; w < W; w++)
            v[w] = a[w];
    }
    if (L > 32) {
        const int warp = threadIdx.x >> 5, nw = blockDim.x >> 5, per = L >> 5;
        if (lane == 0)
            for (int w = 0; w < W; w++)
                sh[w * nw + warp] = v[w];
        __syncthreads();
        const int first = warp & ~(per - 1);
        for (int w = 0; w < W; w++)
            v[w] = sh[w * nw + first];
        for (int k = 1; k < per; k++) {
            double b[W];
            for (int w = 0; w < W; w++)
                b[w] = sh[w * nw + first + k];
            op(v, b);
        }
        __syncthreads();
    }
}

/* non-zero in every lane of the warp when p is non-zero in any (every lane
 * must call it): a decision that shuffles may depend on */
static __device__ __forceinline__ int mhc_warp_any(int p)
{
    for (int o = 16; o > 0; o >>= 1)
        p |= __shfl_xor_sync(0xffffffffu, p, o);
    return p;
}

#endif /* MHC_CUDA_CUH */
