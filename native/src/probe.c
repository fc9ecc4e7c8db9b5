/*
 * probe.c -- measurements of this machine's floors, for the benchmark only:
 * how fast one core reads memory and how many vector FMAs it retires.
 * The benchmark times these in the same run as the kernels and prints each
 * kernel's fraction of the floor that binds it.
 */
#include "mhc_internal.h"

typedef float v8f __attribute__((vector_size(32)));

/* Sum of x[0..n) read once with 8 independent accumulators (a read-bandwidth
 * floor: the loop does one add per 8 floats, far below the core's peak). */
#if MHC_X86
__attribute__((target("avx2,fma")))
static double read_avx2(const float *x, int64_t n)
{
    v8f acc[8] = {{0}};
    int64_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 8; k++) {
            v8f v;
            memcpy(&v, x + i + 8 * k, sizeof v);
            acc[k] += v;
        }
    double s = 0;
    for (int k = 0; k < 8; k++)
        for (int l = 0; l < 8; l++)
            s += acc[k][l];
    for (; i < n; i++)
        s += x[i];
    return s;
}

/* iters rounds of 8 independent 8-lane FMA chains: 64 lane-FMAs per round.
 * (Floating-point chains cannot be folded by the compiler, so all are kept.) */
__attribute__((target("avx2,fma")))
static double fma_avx2(int64_t iters)
{
    const v8f m = {1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f,
                   1.0000001f, 1.0000001f, 1.0000001f, 1.0000001f};
    const v8f b = m - 1.0f;
    v8f a0 = m, a1 = m * 2, a2 = m * 3, a3 = m * 4, a4 = m * 5, a5 = m * 6, a6 = m * 7,
        a7 = m * 8;
    for (int64_t i = 0; i < iters; i++) {
        a0 = a0 * m + b; a1 = a1 * m + b; a2 = a2 * m + b; a3 = a3 * m + b;
        a4 = a4 * m + b; a5 = a5 * m + b; a6 = a6 * m + b; a7 = a7 * m + b;
    }
    v8f s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    return (double)s[0] + s[7];
}
#endif

static double read_portable(const float *x, int64_t n)
{
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += x[i];
    return s;
}

double mhc_probe_read_f32(const float *x, int64_t n)
{
    if (!x || n < 0)
        return 0;
#if MHC_X86
    if (mhc_best_isa() >= MHC_ISA_AVX2)
        return read_avx2(x, n);
#endif
    return read_portable(x, n);
}

int mhc_probe_fma_lanes(void)
{
#if MHC_X86
    if (mhc_best_isa() >= MHC_ISA_AVX2)
        return 64;
#endif
    return 0;
}

double mhc_probe_fma(int64_t iters)
{
#if MHC_X86
    if (mhc_best_isa() >= MHC_ISA_AVX2)
        return fma_avx2(iters);
#endif
    (void)iters;
    return 0;
}
