/*
 * mhc_constants.h -- the constants that the C kernels, the CUDA kernels and the
 * Python backends share, each stated once:
 *   C       native/include/mhc_native.h includes this file: the C sources and
 *           the compiled module (lib.MHC_*) see these definitions
 *   CUDA    mhc_cuda.cuh includes it (backends/cupy.py's source() inlines it
 *           into the text NVRTC compiles; nvcc and the CPU harness find it
 *           beside the .cu files)
 *   Python  backends/_constants.py: from the compiled module, or from this
 *           text where there is none (installed with the .cu files as
 *           mhc_array._cuda)
 *
 * Every line is `#define MHC_<NAME> <value>`, the value an integer or a decimal
 * floating literal (build_ffi.py declares a floating one to cffi as a
 * `static const double`, backends/_constants.py parses both).
 */
#ifndef MHC_CONSTANTS_H
#define MHC_CONSTANTS_H

/* Sinkhorn flags (mhc_sinkhorn_*, the Sinkhorn kernels of sinkhorn.cu) */
#define MHC_SK_LOGITS 1      /* start from exp(x - max over the matrix) */
#define MHC_SK_COLS_FIRST 2  /* each iteration normalises columns, then rows */

/* Sinkhorn matrices with n*m <= MHC_SK_SMALL_MAX run in the C SoA kernel (one
 * SIMD lane per matrix), those with n*m <= MHC_CUDA_SK_SMALL_MAX in a CUDA
 * thread per matrix (sinkhorn.cu, and its backward) */
#define MHC_SK_SMALL_MAX 256
#define MHC_CUDA_SK_SMALL_MAX 64
/* threads per block of the CUDA launches (kernels with __launch_bounds__ are
 * compiled for it) */
#define MHC_CUDA_BLOCK 256
/* the block-per-matrix Sinkhorn kernels (sinkhorn.cu) reduce up to this many
 * values per thread at once (the maximum, a NaN seen, its index): their shared
 * memory starts with block size * MHC_CUDA_SK_SCRATCH doubles of scratch */
#define MHC_CUDA_SK_SCRATCH 3

/* Distances: the manifold codes and the on_domain_error modes */
#define MHC_EUCLIDEAN 0
#define MHC_POINCARE 1
#define MHC_SPHERICAL 2
#define MHC_DOM_RAISE 0
#define MHC_DOM_NAN 1
#define MHC_DOM_CLIP 2
/* "clip": Poincare points with sqrt(K)|p| >= 1 - MHC_CLIP_MARGIN are scaled to
 * radius (1 - MHC_CLIP_MARGIN)/sqrt(K) */
#define MHC_CLIP_MARGIN 1e-5

/* The mHC connection: the variants (paper, DeepSeek-V4), the largest number of
 * streams n, and the sums mhc.cu's backward reduces per round (its launches'
 * shared memory: block size * MHC_CUDA_HC_CHUNK doubles) */
#define MHC_HC_PAPER 0
#define MHC_HC_DEEPSEEK_V4 1
/* a flag on MHC_HC_DEEPSEEK_V4 (mhc_hc_pre, mhc_hc_post_pre): its projection given in
 * the paper's rows layout (n*C, K), as a module prepares it once for many tokens */
#define MHC_HC_ROWS 16
#define MHC_HC_MAX_STREAMS 16
#define MHC_CUDA_HC_CHUNK 8

/* Curvature: epsilon scaling of the optimal transport starts at this
 * regularisation (relative to the problem's cost range). At the default reg
 * 0.01, starting at 0.02 (two stages) measured 30 % faster than at 0.1 (four
 * stages) on both benchmark graphs, W1 as accurate. */
#define MHC_OT_REG_START 0.02

#endif /* MHC_CONSTANTS_H */
