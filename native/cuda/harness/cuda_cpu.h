/*
 * cuda_cpu.h -- the CUDA built-ins the kernels of native/cuda/ (the .cu files) use, for
 * g++ (C++20): the sources compile as C++ and run on the CPU, so that CI
 * without a GPU checks their results (tests/test_cuda_harness.py).
 *
 *   __global__ / __device__ / __shared__ / __forceinline__   defined away
 *   threadIdx, blockIdx                 per OS thread (thread_local)
 *   blockDim, gridDim                   per launch
 *   __syncthreads()                     a std::barrier of the block's threads
 *   atomicExch, __longlong_as_double    the same semantics on the CPU
 *
 * A launch (harness.cpp) runs one OS thread per CUDA thread of a block; the
 * threads walk the grid's blocks together, one block at a time, so that the
 * block's shared memory (mhc_smem, one static buffer) is the block's own.
 */
#ifndef MHC_CUDA_CPU_H
#define MHC_CUDA_CPU_H

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __shared__
#define __forceinline__ inline
#define __restrict__ __restrict

struct mhc_dim3 {
    unsigned x = 0, y = 0, z = 0;
};

extern thread_local mhc_dim3 threadIdx, blockIdx;
extern mhc_dim3 blockDim, gridDim;
extern std::barrier<> *mhc_block_barrier;

#ifdef MHC_HARNESS_BROKEN_BARRIER
/* tests only: a barrier broken on purpose, which ThreadSanitizer must report
 * (tests/test_cuda_harness.py: test_harness_under_thread_sanitizer) */
inline void __syncthreads() {}
#else
inline void __syncthreads() { mhc_block_barrier->arrive_and_wait(); }
#endif

inline double __longlong_as_double(long long v)
{
    double d;
    std::memcpy(&d, &v, sizeof d);
    return d;
}

inline int atomicExch(int *p, int v) { return std::atomic_ref<int>(*p).exchange(v); }

using std::atan2;
using std::exp;
using std::fma;
using std::frexp;
using std::ldexp;
using std::log1p;
using std::sqrt;

#endif /* MHC_CUDA_CPU_H */
