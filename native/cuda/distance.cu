/*
 * distance.cu -- row-wise distances on the GPU (SPEC 2.2), float and double:
 * the math of native/src/distance_t.inc.
 *
 * mhc_dist_<T>(manifold, x, x_rs, c, c_rs, out, rows, d, pair_m, K, mode, flag, L)
 *   row r is the pair (x row i, c row j): i = j = r, or with pair_m > 0 (the
 *   pairwise distance, x (N, d) against c (pair_m, d)) i = r / pair_m,
 *   j = r % pair_m. Row strides in elements (0: one point for every row).
 *   manifold MHC_EUCLIDEAN, MHC_POINCARE or MHC_SPHERICAL; mode MHC_DOM_RAISE
 *   (a point outside the domain gives NaN and sets *flag = 1), MHC_DOM_NAN or
 *   MHC_DOM_CLIP (mhc_constants.h); flag is only written under MHC_DOM_RAISE.
 *
 * Layout: a row is read by a segment of L lanes (L a power of two dividing the
 * block; the launch chooses it: backends/cupy.py, _lanes): L <= 32 -- a warp,
 * or part of one for short rows -- reduces by warp shuffles alone (no shared
 * memory, no barrier); L > 32 (long rows too few to fill the GPU) adds one
 * exchange of the warps' totals through shared memory (mhc_seg_reduce_shfl,
 * DIST_SCRATCH * blockDim.x / 32 doubles). Where both row starts are 16-byte aligned the
 * lanes load float4 / double2 (the last d mod 4 (2) terms one at a time);
 * other rows load scalars. The reductions fold in a fixed order: the results
 * do not depend on timing.
 *
 * Each row takes one pass over its data: the plain sums (float input: double
 * sums, exact products of float terms, that cannot over- or underflow; double
 * input: double-double sums and the maxima |x - c|, |x|, |c| that a rescale
 * needs). Only the rows that need it take a second pass (a warp runs it when
 * any of its rows does -- its shuffles need every lane -- and a wide segment
 * always runs its reduction):
 *   euclidean  |x - c|; non-finite sums (which terms were NaN or inf) and, for
 *              double, squares that over/underflow: rescaled by a power of two
 *   poincare   log1p(z + sqrt(z (z + 2))) / sqrt(K), z = 2K|x-c|^2 / den,
 *              den = (1 - K|x|^2)(1 - K|c|^2) from the norms' sums with the
 *              rounding of K|p|^2 kept (no cancellation near the boundary:
 *              double sums of float terms, double-double for double); tiny z: 2|x - c| / sqrt(den),
 *              whose squares are rescaled only for double where they
 *              underflow; clip: points beyond radius (1 - MHC_CLIP_MARGIN) /
 *              sqrt(K) scaled back to it (a second pass of |sx x - sc c|^2)
 *   spherical  2 atan2(|x^ - c^|, |x^ + c^|): from the cosine away from 0 and
 *              pi, else (two more passes) the stable form
 *              x^ -+ c^ = (x -+ c)/|x| +- c g, g = (|c| - |x|)/(|x||c|),
 *              |c| - |x| = sum (c-x)(c+x)/(|c|+|x|), divided by the larger
 *              norm; double norms that over- or underflow: both vectors
 *              rescaled (the angle is scale-invariant) and the sums redone.
 */
#include "mhc_cuda.cuh"

/* the 16-byte vector of each type */
template <typename T> struct dist_vec;
template <> struct dist_vec<float> {
    struct alignas(16) type {
        float v[4];
    };
};
template <> struct dist_vec<double> {
    struct alignas(16) type {
        double v[2];
    };
};

/* the sums of a row: float input in one double each (products of floats are
 * exact in double and neither over- nor underflows it), double input in
 * double-double (hi, lo) */
template <bool DD> struct dist_acc;
template <> struct dist_acc<false> {
    static const int N = 1;
    static __device__ __forceinline__ void add(double *s, double a, double b) { s[0] = fma(a, b, s[0]); }
    static __device__ __forceinline__ void fold(double *a, const double *b) { a[0] += b[0]; }
    static __device__ __forceinline__ double lo(const double *) { return 0; }
    static __device__ __forceinline__ double val(const double *s) { return s[0]; }
};
template <> struct dist_acc<true> {
    static const int N = 2;
    static __device__ __forceinline__ void add(double *s, double a, double b) { dd_addprod(s[0], s[1], a, b); }
    static __device__ __forceinline__ void fold(double *a, const double *b) { dd_add(a[0], a[1], b[0], b[1]); }
    static __device__ __forceinline__ double lo(const double *s) { return s[1]; }
    static __device__ __forceinline__ double val(const double *s) { return s[0] + s[1]; }
};

/* the reductions' fold: NS sums, then maxima (NaN kept, as dist_max) */
template <class A, int NS>
struct dist_fold {
    template <int W> __device__ void operator()(double (&a)[W], const double (&b)[W]) const
    {
        for (int k = 0; k < NS; k++)
            A::fold(a + k * A::N, b + k * A::N);
        for (int k = NS * A::N; k < W; k++)
            a[k] = (b[k] > a[k] || b[k] != b[k]) ? b[k] : a[k];
    }
};

/* m = max(m, |u|); a NaN stays (it marks a NaN term) */
static __device__ __forceinline__ void dist_max(double &m, double u)
{
    const double a = u < 0 ? -u : u;
    m = (a > m || a != a) ? a : m;
}

/* f(x[e], c[e]) (as doubles) for the terms e of the row that lane `lane` of L
 * holds: 16-byte vectors (two at a time) where both rows are aligned, the
 * remaining terms one at a time; lane l takes terms l, l + L, ... of each part
 * (consecutive lanes, consecutive addresses), always in the same order */
template <typename T, class F>
static __device__ __forceinline__ void dist_walk(const T *__restrict__ px,
                                                 const T *__restrict__ pc, i64 d, int L,
                                                 int lane, F &&f)
{
    typedef typename dist_vec<T>::type V;
    const int NV = 16 / (int)sizeof(T);
    i64 e = lane;
    if ((((unsigned long long)px | (unsigned long long)pc) & 15) == 0) {
        const V *vx = (const V *)px, *vc = (const V *)pc;
        const i64 nv = d / NV;
        i64 q = lane;
        for (; q + L < nv; q += 2 * L) {           /* two loads in flight per lane */
            const V a0 = vx[q], b0 = vc[q], a1 = vx[q + L], b1 = vc[q + L];
            for (int k = 0; k < NV; k++)
                f((double)a0.v[k], (double)b0.v[k]);
            for (int k = 0; k < NV; k++)
                f((double)a1.v[k], (double)b1.v[k]);
        }
        if (q < nv) {
            const V a0 = vx[q], b0 = vc[q];
            for (int k = 0; k < NV; k++)
                f((double)a0.v[k], (double)b0.v[k]);
        }
        e = nv * NV + lane;
    }
    for (; e < d; e += L)
        f((double)px[e], (double)pc[e]);
}

/* the most values a reduction below folds per thread (the spherical sums of
 * double input: three double-double sums and two maxima); the launch gives a
 * segment of several warps DIST_SCRATCH doubles of shared memory per warp
 * (backends/cupy.py: DIST_SCRATCH, the same number) */
#define DIST_SCRATCH 8

template <int W, class Op>
static __device__ __forceinline__ void dist_reduce(double (&v)[W], int L, Op op)
{
    static_assert(W <= DIST_SCRATCH, "more values than the launch's shared memory holds");
    mhc_seg_reduce_shfl(mhc_smem, v, L, op);
}

/* whether the warp runs an optional pass: any of its segments needs it (its
 * shuffles need every lane); a segment of several warps always does (its
 * reduction synchronises the block) */
static __device__ __forceinline__ int dist_run(int need, int L)
{
    return L > 32 || mhc_warp_any(need);
}

template <typename T>
static __device__ __forceinline__ double dist_euclidean(const T *__restrict__ px,
                                                        const T *__restrict__ pc, i64 d, int L,
                                                        int lane, int valid)
{
    const bool DD = sizeof(T) == 8;
    typedef dist_acc<DD> A;
    const int N = A::N, NM = DD ? 1 : 0, IM = DD ? N : 0;  /* IM: the maximum (double) */
    double v[N + NM] = {};                       /* |x - c|^2, max |x - c| (double) */
    if (valid)
        dist_walk(px, pc, d, L, lane, [&](double a, double b) {
            const double u = a - b;
            A::add(v, u, u);
            if (DD)
                dist_max(v[IM], u);
        });
    dist_reduce(v, L, dist_fold<A, 1>());
    double val = sqrt(A::val(v));
    /* float: only a non-finite term makes the sum non-finite; double: also
     * squares that over- or underflow (then rescaled by k) */
    const int need = valid && (!mhc_finite(val) ||
                               (DD && !(val >= 1e-140 && val < 1e140) && v[IM] > 0));
    if (dist_run(need, L)) {
        const double k = DD ? mhc_pow2_scale(v[IM]) : 1;
        double w[N + 2] = {};                    /* |x - c|^2 k^2, a NaN, an inf */
        if (need)
            dist_walk(px, pc, d, L, lane, [&](double a, double b) {
                const double u = (a - b) * k;
                A::add(w, u, u);
                if (a != a || b != b)
                    w[N] = 1;
                else if (!mhc_finite(a) || !mhc_finite(b))
                    w[N + 1] = 1;
            });
        dist_reduce(w, L, dist_fold<A, 1>());
        if (need)
            val = w[N] != 0 ? mhc_nan() : w[N + 1] != 0 ? mhc_inf() : sqrt(A::val(w)) / k;
    }
    return val;
}

template <typename T>
static __device__ __forceinline__ double dist_poincare(const T *__restrict__ px,
                                                       const T *__restrict__ pc, i64 d, int L,
                                                       int lane, int valid, double K, int mode,
                                                       int *flag)
{
    const bool DD = sizeof(T) == 8;
    typedef dist_acc<DD> A;
    const int N = A::N, NM = DD ? 1 : 0, IM = DD ? 3 * N : 0;
    double v[3 * N + NM] = {};                   /* |x-c|^2, |x|^2, |c|^2, max |x-c| */
    if (valid)
        dist_walk(px, pc, d, L, lane, [&](double a, double b) {
            const double u = a - b;
            A::add(v, u, u);
            A::add(v + N, a, a);
            A::add(v + 2 * N, b, b);
            if (DD)
                dist_max(v[IM], u);
        });
    dist_reduce(v, L, dist_fold<A, 3>());
    double dd = A::val(v);
    const double kx = K * A::val(v + N), kc = K * A::val(v + 2 * N);
    const double R2 = (1 - MHC_CLIP_MARGIN) * (1 - MHC_CLIP_MARGIN); /* clip radius^2 */
    const int bad = !mhc_finite(kx) || !mhc_finite(kc) || !mhc_finite(dd);
    const int outside = !bad && mode != MHC_DOM_CLIP && (kx >= 1 || kc >= 1);
    const int clip = !bad && mode == MHC_DOM_CLIP && (kx >= R2 || kc >= R2);
    /* 1 - K|p|^2 from the double-double norm: no cancellation near the boundary */
    double ox, oc;
    {
        double p = K * v[N], pe = fma(K, v[N], -p);
        ox = ((1 - p) - pe) - K * A::lo(v + N);
        p = K * v[2 * N];
        pe = fma(K, v[2 * N], -p);
        oc = ((1 - p) - pe) - K * A::lo(v + 2 * N);
    }
    const double sx = kx >= R2 ? sqrt(R2 / kx) : 1, sc = kc >= R2 ? sqrt(R2 / kc) : 1;
    if (clip) {
        if (kx >= R2)
            ox = 1 - R2;
        if (kc >= R2)
            oc = 1 - R2;
    }
    const double den = ox * oc;
    const int tiny = !bad && !outside && !clip && !(2 * K * dd / den >= 1e-30);
    /* a second pass: the clipped points' |sx x - sc c|^2, or (double) a tiny
     * |x - c|^2 whose squares underflow, rescaled by k */
    const int under = DD && tiny && dd < 1e-280 && v[IM] > 0;
    const int need = valid && (clip || under);
    double k = 1;
    if (dist_run(need, L)) {
        k = under ? mhc_pow2_scale(v[IM]) : 1;
        const double ax = clip ? sx : 1, ac = clip ? sc : 1;
        double w[N] = {};
        if (need)
            dist_walk(px, pc, d, L, lane, [&](double a, double b) {
                const double u = (a * ax - b * ac) * k;
                A::add(w, u, u);
            });
        dist_reduce(w, L, dist_fold<A, 1>());
        if (need)
            dd = A::val(w);
    }
    double val;
    if (bad || outside) {
        val = mhc_nan();
        if (outside && mode == MHC_DOM_RAISE && valid && lane == 0)
            atomicExch(flag, 1);
    } else if (tiny) {
        val = 2 * (sqrt(dd) / k) / sqrt(den);
    } else {
        const double z = 2 * K * dd / den;
        val = log1p(z + sqrt(z * (z + 2))) / sqrt(K);
    }
    return val;
}

template <typename T>
static __device__ __forceinline__ double dist_spherical(const T *__restrict__ px,
                                                        const T *__restrict__ pc, i64 d, int L,
                                                        int lane, int valid, int mode, int *flag)
{
    const bool DD = sizeof(T) == 8;
    typedef dist_acc<DD> A;
    const int N = A::N, NM = DD ? 2 : 0, IM = DD ? 3 * N : 0;  /* IM, IM + 1: the maxima */
    double v[3 * N + NM] = {};                   /* |x|^2 |c|^2 x.c, max |x|, max |c| */
    if (valid)
        dist_walk(px, pc, d, L, lane, [&](double a, double b) {
            A::add(v, a, a);
            A::add(v + N, b, b);
            A::add(v + 2 * N, a, b);
            if (DD) {
                dist_max(v[IM], a);
                dist_max(v[IM + 1], b);
            }
        });
    dist_reduce(v, L, dist_fold<A, 3>());
    double xx = A::val(v), cc = A::val(v + N), p = A::val(v + 2 * N);
    /* float: a norm is non-finite or zero only for such terms; double: the
     * maxima tell (squares may over- or underflow) */
    const double mx = DD ? v[IM] : xx, mc = DD ? v[IM + 1] : cc;
    const int bad = !mhc_finite(mx) || !mhc_finite(mc);
    const int zero = !bad && (mx == 0 || mc == 0);
    /* double norms that over- or underflow: both vectors rescaled (the angle
     * is scale-invariant) and the sums redone */
    const int rescale = DD && valid && !bad && !zero &&
                        !(xx > 1e-280 && xx < 1e280 && cc > 1e-280 && cc < 1e280);
    const double ix = rescale ? mhc_pow2_scale(mx) : 1, ic = rescale ? mhc_pow2_scale(mc) : 1;
    if (DD && dist_run(rescale, L)) {
        double w[3 * N] = {};
        if (rescale)
            dist_walk(px, pc, d, L, lane, [&](double a, double b) {
                a *= ix;
                b *= ic;
                A::add(w, a, a);
                A::add(w + N, b, b);
                A::add(w + 2 * N, a, b);
            });
        dist_reduce(w, L, dist_fold<A, 3>());
        if (rescale) {
            xx = A::val(w);
            cc = A::val(w + N);
            p = A::val(w + 2 * N);
        }
    }
    const double t = (bad || zero) ? 0 : p / (sqrt(xx) * sqrt(cc));
    double dm = 2 - 2 * t, dp = 2 + 2 * t;
    const int near = valid && !bad && !zero && (dm < 1e-2 || dp < 1e-2);
    if (dist_run(near, L)) {
        /* near 0 or pi: s = |c|^2 - |x|^2 as sum (c - x)(c + x), then
         * |x^ - c^|^2 and |x^ + c^|^2 dividing by the larger norm */
        const int swap = cc > xx;
        const T *pa = swap ? pc : px, *pb = swap ? px : pc;
        const double ia = swap ? ic : ix, ib = swap ? ix : ic;
        double s2[N] = {};
        if (near)
            dist_walk(pa, pb, d, L, lane, [&](double a, double b) {
                a *= ia;
                b *= ib;
                A::add(s2, b - a, b + a);
            });
        dist_reduce(s2, L, dist_fold<A, 1>());
        const double na = sqrt(swap ? cc : xx), nb = sqrt(swap ? xx : cc);
        const double g = A::val(s2) / (nb + na) / (na * nb), ina = 1 / na;
        double q[2 * N] = {};
        if (near)
            dist_walk(pa, pb, d, L, lane, [&](double a, double b) {
                a *= ia;
                b *= ib;
                const double u = (a - b) * ina + b * g, w = (a + b) * ina - b * g;
                A::add(q, u, u);
                A::add(q + N, w, w);
            });
        dist_reduce(q, L, dist_fold<A, 2>());
        if (near) {
            dm = A::val(q);
            dp = A::val(q + N);
        }
    }
    double val;
    if (bad) {
        val = mhc_nan();
    } else if (zero) {
        val = mhc_nan();
        if (mode == MHC_DOM_RAISE && valid && lane == 0)
            atomicExch(flag, 1);
    } else {
        val = 2 * atan2(sqrt(dm), sqrt(dp));
    }
    return val;
}

template <typename T>
static __device__ __forceinline__ void dist_rows(int manifold, const T *__restrict__ x, i64 x_rs,
                                                 const T *__restrict__ c, i64 c_rs, T *out,
                                                 i64 rows, i64 d, i64 pair_m, double K,
                                                 int mode, int *flag, int L)
{
    const int lane = threadIdx.x & (L - 1), per = blockDim.x / L;
    /* every thread of the block takes the same number of rounds: the
     * reductions need every lane (and, for L > 32, every thread) */
    for (i64 base = (i64)blockIdx.x * per; base < rows; base += (i64)gridDim.x * per) {
        const i64 r = base + threadIdx.x / L;
        const int valid = r < rows;
        const i64 xi = pair_m ? r / pair_m : r, ci = pair_m ? r % pair_m : r;
        const T *px = x + (valid ? xi * x_rs : 0), *pc = c + (valid ? ci * c_rs : 0);
        double val;
        if (manifold == MHC_EUCLIDEAN)
            val = dist_euclidean<T>(px, pc, d, L, lane, valid);
        else if (manifold == MHC_POINCARE)
            val = dist_poincare<T>(px, pc, d, L, lane, valid, K, mode, flag);
        else
            val = dist_spherical<T>(px, pc, d, L, lane, valid, mode, flag);
        if (valid && lane == 0)
            out[r] = (T)val;
    }
}

#define MHC_DIST_KERNELS(T, SUF)                                                               \
    extern "C" __global__ void mhc_dist##SUF(int manifold, const T *__restrict__ x, i64 x_rs, \
                                             const T *__restrict__ c, i64 c_rs, T *out,       \
                                             i64 rows, i64 d, i64 pair_m, double K, int mode, \
                                             int *flag, int L)                                \
    {                                                                                          \
        dist_rows<T>(manifold, x, x_rs, c, c_rs, out, rows, d, pair_m, K, mode, flag, L);     \
    }

MHC_DIST_KERNELS(float, _f32)
MHC_DIST_KERNELS(double, _f64)
