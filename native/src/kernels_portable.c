/* kernels_portable.c -- kernels.inc with one lane per vector and no
 * auto-vectorisation: a true fallback that runs on any CPU. */
#include "mhc_internal.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-tree-vectorize")
#endif
#define MHC_ISA portable
#define MHC_NF 1
#define MHC_ND 1
#include "kernels.inc"
