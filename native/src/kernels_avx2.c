/* kernels_avx2.c -- kernels.inc compiled for the avx2 level (x86 only). */
#include "mhc_internal.h"

#if MHC_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC target("avx2,fma")
#endif
#define MHC_ISA avx2
#define MHC_NF 8
#define MHC_ND 4
#include "kernels.inc"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int mhc_avx2_unused; /* not x86: this level is not built */
#endif
