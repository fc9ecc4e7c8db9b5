/* kernels_avx512.c -- kernels.inc compiled for the avx512 level (x86 only). */
#include "mhc_internal.h"

#if MHC_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512dq,avx512bw,avx512vl,avx2,fma")
#endif
#define MHC_ISA avx512
#define MHC_NF 16
#define MHC_ND 8
/* 4x4 Sinkhorn: four groups of 16 matrices interleaved (measured on an AMD EPYC with
 * AVX-512 on 256-bit units: 3 groups 157 us, 4 groups 152 us, AVX2 147 us for 4096
 * matrices, 20 iterations; 2, 5 and 6 groups slower) */
#define SK44_GMAX 4
#include "kernels.inc"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int mhc_avx512_unused; /* not x86: this level is not built */
#endif
