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
 *   __shfl_xor/down/_sync, __syncwarp   through per-thread slots between barriers
 *                                       of the warp's threads
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
#define __launch_bounds__(...)
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

/* Warp shuffles: the lanes of a warp (32 consecutive threads, or the whole block
 * when it is smaller) exchange values through one slot per thread between two
 * barriers of the warp's threads. As on a GPU every lane of the warp must call
 * (the kernels pass the full mask); a lane outside the warp's width reads its
 * own value, as CUDA's __shfl_*_sync do. */
extern thread_local std::barrier<> *mhc_warp_barrier;
extern unsigned long long mhc_shfl_slots[];

template <class T>
inline T mhc_shfl(T v, int src_lane)
{
    static_assert(sizeof(T) <= sizeof(unsigned long long));
    const unsigned t = threadIdx.x, base = t & ~31u;
    unsigned long long bits = 0;
    std::memcpy(&bits, &v, sizeof v);
    mhc_shfl_slots[t] = bits;
    mhc_warp_barrier->arrive_and_wait();
    const unsigned src = base + (unsigned)src_lane;
    bits = src < blockDim.x ? mhc_shfl_slots[src] : bits;
    mhc_warp_barrier->arrive_and_wait();     /* every lane has read before the next write */
    T r;
    std::memcpy(&r, &bits, sizeof r);
    return r;
}

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32)
{
    const int lane = (int)(threadIdx.x & 31u), dst = lane ^ lane_mask;
    return mhc_shfl(v, (dst & ~(width - 1)) == (lane & ~(width - 1)) ? dst : lane);
}

template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32)
{
    const int lane = (int)(threadIdx.x & 31u), seg = lane % width;
    return mhc_shfl(v, seg + (int)delta < width ? lane + (int)delta : lane);
}

template <class T>
inline T __shfl_sync(unsigned, T v, int src, int width = 32)
{
    const int lane = (int)(threadIdx.x & 31u);
    return mhc_shfl(v, (lane & ~(width - 1)) + (src & (width - 1)));
}

inline void __syncwarp(unsigned = 0xffffffffu) { mhc_warp_barrier->arrive_and_wait(); }

/* CUDA's vector types the kernels load through (16-byte aligned, as on a GPU) */
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(16) double2 {
    double x, y;
};

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
