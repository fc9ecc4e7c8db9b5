/*
 * distance.cu -- row-wise distances on the GPU (SPEC 2.2), float and double:
 * the math of native/src/distance_t.inc.
 *
 * mhc_dist_<T>(manifold, x, x_rs, c, c_rs, out, rows, d, pair_m, K, mode, flag)
 *   row r is the pair (x row i, c row j): i = j = r, or with pair_m > 0 (the
 *   pairwise distance, x (N, d) against c (pair_m, d)) i = r / pair_m,
 *   j = r % pair_m. Row strides in elements (0: one point for every row).
 *   manifold MHC_EUCLIDEAN, MHC_POINCARE or MHC_SPHERICAL; mode MHC_DOM_RAISE
 *   (a point outside the domain gives NaN and sets *flag = 1), MHC_DOM_NAN or
 *   MHC_DOM_CLIP (mhc_constants.h).
 *
 * A row is handled by a segment of L lanes of a block (mhc_lanes: L ~ d / 4),
 * blockDim.x / L rows at a time; its sums are reduced by a fixed tree
 * (mhc_seg_reduce). Sums are kept in double (exact products of float terms)
 * and, for double input, in double-double, so that float64 results stay
 * within 1e-12 without long double:
 *   euclidean  |x - c| (rescaled by a power of two when squares over/underflow)
 *   poincare   log1p(z + sqrt(z (z + 2))) / sqrt(K), z = 2K|x-c|^2 / den,
 *              den = (1 - K|x|^2)(1 - K|c|^2) from double-double norms; tiny
 *              z: 2|x - c| / sqrt(den); clip: points beyond radius
 *              (1 - MHC_CLIP_MARGIN)/sqrt(K) scaled back to it
 *   spherical  2 atan2(|x^ - c^|, |x^ + c^|): from the cosine away from 0 and
 *              pi, else the stable form x^ -+ c^ = (x -+ c)/|x| +- c g,
 *              g = (|c| - |x|)/(|x||c|), |c| - |x| = sum (c-x)(c+x)/(|c|+|x|),
 *              divided by the larger norm; norms rescaled when they over- or
 *              underflow.
 */
#include "mhc_cuda.cuh"

/* folds for the reductions: double-double pairs (sum), then maxima */
template <int NDD>
struct dist_op {
    template <int W> __device__ void operator()(double (&a)[W], const double (&b)[W]) const
    {
        for (int k = 0; k < NDD; k++)
            dd_add(a[2 * k], a[2 * k + 1], b[2 * k], b[2 * k + 1]);
        for (int k = 2 * NDD; k < W; k++)
            a[k] = a[k] > b[k] ? a[k] : b[k];
    }
};

static __device__ __forceinline__ double dmax(double a, double b) { return a > b ? a : b; }

/* sum ((sx x - sc c) k)^2 over the lanes' terms of a row (double-double) */
template <typename T>
static __device__ __forceinline__ void dist_scaled_pass(double *scratch, const T *px, const T *pc,
                                                        i64 d, int L, int lane, int need,
                                                        double sx, double sc, double k,
                                                        double &hi, double &lo)
{
    double v[2] = {0, 0};
    if (need)
        for (i64 e = lane; e < d; e += L) {
            const double u = ((double)px[e] * sx - (double)pc[e] * sc) * k;
            dd_addprod(v[0], v[1], u, u);
        }
    mhc_seg_reduce<2>(scratch, v, L, dist_op<1>());
    hi = v[0];
    lo = v[1];
}

template <typename T>
static __device__ __forceinline__ void dist_rows(int manifold, const T *x, i64 x_rs, const T *c,
                                                 i64 c_rs, T *out, i64 rows, i64 d, i64 pair_m,
                                                 double K, int mode, int *flag)
{
    const int B = blockDim.x, L = mhc_lanes(d), per = B / L;
    const int lane = threadIdx.x & (L - 1);
    const bool wide = sizeof(T) == 8;       /* double input: squares may over/underflow */
    double *scratch = mhc_smem;
    for (i64 base = (i64)blockIdx.x * per; base < rows; base += (i64)gridDim.x * per) {
        const i64 r = base + threadIdx.x / L;
        const int valid = r < rows;
        const i64 xi = pair_m ? r / pair_m : r, ci = pair_m ? r % pair_m : r;
        const T *px = x + (valid ? xi * x_rs : 0), *pc = c + (valid ? ci * c_rs : 0);
        double val = 0;
        if (manifold == MHC_EUCLIDEAN) {                        /* ---- euclidean */
            double v[4] = {0, 0, 0, 0};                        /* |x-c|^2, max |x-c|, bad */
            if (valid)
                for (i64 e = lane; e < d; e += L) {
                    const double a = (double)px[e], b = (double)pc[e], u = a - b;
                    dd_addprod(v[0], v[1], u, u);
                    v[2] = dmax(v[2], u < 0 ? -u : u);
                    if (!mhc_finite(a) || !mhc_finite(b))
                        v[3] = (a != a || b != b) ? 2 : dmax(v[3], 1);
                }
            mhc_seg_reduce<4>(scratch, v, L, dist_op<1>());
            val = sqrt(v[0] + v[1]);
            const int need = valid && v[3] == 0 && !(val >= 1e-140 && val < 1e140) && v[2] > 0;
            const double k = mhc_pow2_scale(v[2]);
            double hi, lo;
            dist_scaled_pass(scratch, px, pc, d, L, lane, need && wide, 1, 1, k, hi, lo);
            if (need && wide)
                val = sqrt(hi + lo) / k;
            if (v[3] == 2)
                val = mhc_nan();
            else if (v[3] == 1)
                val = mhc_inf();
        } else if (manifold == MHC_POINCARE) {                  /* ---- poincare */
            double v[8] = {0, 0, 0, 0, 0, 0, 0, 0};  /* |x-c|^2, |x|^2, |c|^2, max|x-c|, bad */
            if (valid)
                for (i64 e = lane; e < d; e += L) {
                    const double a = (double)px[e], b = (double)pc[e], u = a - b;
                    dd_addprod(v[0], v[1], u, u);
                    dd_addprod(v[2], v[3], a, a);
                    dd_addprod(v[4], v[5], b, b);
                    v[6] = dmax(v[6], u < 0 ? -u : u);
                    if (!mhc_finite(a) || !mhc_finite(b))
                        v[7] = 1;
                }
            mhc_seg_reduce<8>(scratch, v, L, dist_op<3>());
            const double kx = K * (v[2] + v[3]), kc = K * (v[4] + v[5]);
            const double R2 = (1 - MHC_CLIP_MARGIN) * (1 - MHC_CLIP_MARGIN); /* clip radius^2 */
            int bad = v[7] != 0 || !mhc_finite(kx) || !mhc_finite(kc), outside = 0;
            if (!bad && mode != MHC_DOM_CLIP && (kx >= 1 || kc >= 1))
                outside = 1;
            const int clip = !bad && mode == MHC_DOM_CLIP && (kx >= R2 || kc >= R2);
            /* 1 - K|p|^2 from the double-double norm: no cancellation near the boundary */
            double ox, oc;
            {
                double p = K * v[2], pe = fma(K, v[2], -p);
                ox = ((1 - p) - pe) - K * v[3];
                p = K * v[4];
                pe = fma(K, v[4], -p);
                oc = ((1 - p) - pe) - K * v[5];
            }
            const double sx = kx >= R2 ? sqrt(R2 / kx) : 1, sc = kc >= R2 ? sqrt(R2 / kc) : 1;
            if (clip) {
                if (kx >= R2)
                    ox = 1 - R2;
                if (kc >= R2)
                    oc = 1 - R2;
            }
            const double den = ox * oc;
            double dd = v[0] + v[1];
            const double z0 = 2 * K * dd / den;
            const int tiny = !bad && !outside && !clip && !(z0 >= 1e-30);
            double hi, lo;
            dist_scaled_pass(scratch, px, pc, d, L, lane, valid && (clip || tiny),
                             clip ? sx : 1, clip ? sc : 1, tiny ? mhc_pow2_scale(v[6]) : 1, hi,
                             lo);
            if (bad || outside) {
                val = mhc_nan();
                if (outside && mode == MHC_DOM_RAISE && valid && lane == 0)
                    atomicExch(flag, 1);
            } else if (tiny) {
                val = 2 * (sqrt(hi + lo) / mhc_pow2_scale(v[6])) / sqrt(den);
            } else {
                if (clip)
                    dd = hi + lo;
                const double z = 2 * K * dd / den;
                val = log1p(z + sqrt(z * (z + 2))) / sqrt(K);
            }
        } else {                                                /* ---- spherical */
            double v[9] = {0, 0, 0, 0, 0, 0, 0, 0, 0};  /* |x|^2 |c|^2 x.c max|x| max|c| bad */
            if (valid)
                for (i64 e = lane; e < d; e += L) {
                    const double a = (double)px[e], b = (double)pc[e];
                    dd_addprod(v[0], v[1], a, a);
                    dd_addprod(v[2], v[3], b, b);
                    dd_addprod(v[4], v[5], a, b);
                    v[6] = dmax(v[6], a < 0 ? -a : a);
                    v[7] = dmax(v[7], b < 0 ? -b : b);
                    if (!mhc_finite(a) || !mhc_finite(b))
                        v[8] = 1;
                }
            mhc_seg_reduce<9>(scratch, v, L, dist_op<3>());
            const int bad = v[8] != 0, zero = !bad && (v[6] == 0 || v[7] == 0);
            double xx = v[0] + v[1], cc = v[2] + v[3], p = v[4] + v[5];
            /* norms that over- or underflow: both vectors rescaled (the angle is
             * scale-invariant) and the sums redone */
            const int rescale = wide && !bad && !zero &&
                                !(xx > 1e-280 && xx < 1e280 && cc > 1e-280 && cc < 1e280);
            const double ix = rescale ? mhc_pow2_scale(v[6]) : 1;
            const double ic = rescale ? mhc_pow2_scale(v[7]) : 1;
            {
                double w[6] = {0, 0, 0, 0, 0, 0};
                if (valid && rescale)
                    for (i64 e = lane; e < d; e += L) {
                        const double a = (double)px[e] * ix, b = (double)pc[e] * ic;
                        dd_addprod(w[0], w[1], a, a);
                        dd_addprod(w[2], w[3], b, b);
                        dd_addprod(w[4], w[5], a, b);
                    }
                mhc_seg_reduce<6>(scratch, w, L, dist_op<3>());
                if (rescale) {
                    xx = w[0] + w[1];
                    cc = w[2] + w[3];
                    p = w[4] + w[5];
                }
            }
            const double t = (bad || zero) ? 0 : p / (sqrt(xx) * sqrt(cc));
            double dm = 2 - 2 * t, dp = 2 + 2 * t;
            const int near = !bad && !zero && (dm < 1e-2 || dp < 1e-2);
            /* near 0 or pi: s = |c|^2 - |x|^2 as sum (c - x)(c + x), then
             * |x^ - c^|^2 and |x^ + c^|^2 dividing by the larger norm */
            const int swap = cc > xx;
            const T *pa = swap ? pc : px, *pb = swap ? px : pc;
            const double ia = swap ? ic : ix, ib = swap ? ix : ic;
            double s2[2] = {0, 0};
            if (valid && near)
                for (i64 e = lane; e < d; e += L) {
                    const double a = (double)pa[e] * ia, b = (double)pb[e] * ib;
                    dd_addprod(s2[0], s2[1], b - a, b + a);
                }
            mhc_seg_reduce<2>(scratch, s2, L, dist_op<1>());
            const double na = sqrt(swap ? cc : xx), nb = sqrt(swap ? xx : cc);
            const double g = (s2[0] + s2[1]) / (nb + na) / (na * nb), ina = 1 / na;
            double q[4] = {0, 0, 0, 0};
            if (valid && near)
                for (i64 e = lane; e < d; e += L) {
                    const double a = (double)pa[e] * ia, b = (double)pb[e] * ib;
                    const double u = (a - b) * ina + b * g, w = (a + b) * ina - b * g;
                    dd_addprod(q[0], q[1], u, u);
                    dd_addprod(q[2], q[3], w, w);
                }
            mhc_seg_reduce<4>(scratch, q, L, dist_op<2>());
            if (near) {
                dm = q[0] + q[1];
                dp = q[2] + q[3];
            }
            if (bad) {
                val = mhc_nan();
            } else if (zero) {
                val = mhc_nan();
                if (mode == MHC_DOM_RAISE && valid && lane == 0)
                    atomicExch(flag, 1);
            } else {
                val = 2 * atan2(sqrt(dm), sqrt(dp));
            }
        }
        if (valid && lane == 0)
            out[r] = (T)val;
    }
}

#define MHC_DIST_KERNELS(T, SUF)                                                               \
    extern "C" __global__ void mhc_dist##SUF(int manifold, const T *x, i64 x_rs, const T *c,  \
                                             i64 c_rs, T *out, i64 rows, i64 d, i64 pair_m,   \
                                             double K, int mode, int *flag)                   \
    {                                                                                          \
        dist_rows<T>(manifold, x, x_rs, c, c_rs, out, rows, d, pair_m, K, mode, flag);        \
    }

MHC_DIST_KERNELS(float, _f32)
MHC_DIST_KERNELS(double, _f64)
