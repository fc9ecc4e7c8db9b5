/* kernels_sse.c -- kernels.inc compiled for the sse level (x86 only). */
#include "mhc_internal.h"

#if MHC_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("sse4.1"))), apply_to = function)
#else
#pragma GCC target("sse4.1")
#endif
#define MHC_ISA sse
#define MHC_NF 4
#define MHC_ND 2
#include "kernels.inc"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
typedef int mhc_sse_unused; /* not x86: this level is not built */
#endif
