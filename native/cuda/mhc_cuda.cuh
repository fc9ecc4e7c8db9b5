/*
 * mhc_cuda.cuh -- what the CUDA kernels of native/cuda/ (the .cu files) share: integer
 * types, IEEE constants, double-double sums and the block-wide segmented
 * reduction (deterministic: a fixed tree in shared memory, no atomics, no
 * warp shuffles).
 *
 * Written for NVRTC (CuPy's RawModule): no standard headers, only the CUDA
 * built-ins. The CPU test harness (native/cuda/harness/cuda_cpu.h) defines
 * the same built-ins for g++, so that these sources also run on the CPU.
 */
#ifndef MHC_CUDA_CUH
#define MHC_CUDA_CUH

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

#endif /* MHC_CUDA_CUH */
