/*
 * harness.cpp -- runs the CUDA kernels of native/cuda/ (the .cu files) on the CPU.
 *
 * Built by tests/test_cuda_harness.py into a shared library:
 *   g++ -std=c++20 -O1 -shared -fPIC -I native/cuda -include cuda_cpu.h \
 *       native/cuda/harness/harness.cpp -o libmhc_cuda_cpu.so
 * and called through ctypes like cuLaunchKernel:
 *   mhc_harness_launch(name, grid, block, shared_bytes, args)
 *   mhc_harness_launch2(name, grid_x, grid_y, block, shared_bytes, args)
 * where args[k] points at the k-th kernel argument (a pointer's value, an
 * int, a double, ...). Returns 0, or -1 for an unknown kernel name, -2 for
 * more shared memory than the harness has, -3 for a block size of 0 or over
 * 1024, -4 when
 * the kernel wrote shared memory past the launch's allocation (every byte of
 * mhc_smem after shared_bytes holds a canary during the launch; a GPU would
 * fault or corrupt a neighbouring block's memory there).
 * mhc_harness_kernels() lists the names, space-separated.
 */
#include "cuda_cpu.h"

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

thread_local mhc_dim3 threadIdx, blockIdx;
mhc_dim3 blockDim, gridDim;
std::barrier<> *mhc_block_barrier;
thread_local std::barrier<> *mhc_warp_barrier;
unsigned long long mhc_shfl_slots[1024];  /* one per thread of the largest block */
alignas(64) double mhc_smem[1 << 16]; /* 512 KiB: larger than any GPU's block */

#include "../distance.cu"
#include "../mhc.cu"
#include "../sinkhorn.cu"

/* the harness's own check of its warp shuffles (tests/test_cuda_harness.py):
 * per thread t of a warp w, out[3 t .. 3 t + 2] = the warp's sum by an xor
 * butterfly, the sum by shuffles down (meaningful in lane 0), lane 0's value */
extern "C" __global__ void mhc_harness_shfl_check(const double *in, double *out)
{
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    double a = in[t], b = in[t];
    for (int s = 16; s > 0; s >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, s);
        b += __shfl_down_sync(0xffffffffu, b, (unsigned)s);
    }
    out[3 * t] = a;
    out[3 * t + 1] = b;
    out[3 * t + 2] = __shfl_sync(0xffffffffu, in[t], 0);
}

namespace {

using Invoker = std::function<void(void **)>;

template <class... A, std::size_t... I>
void call_with(void (*f)(A...), void **args, std::index_sequence<I...>)
{
    f(*static_cast<std::remove_reference_t<A> *>(args[I])...);
}

template <class... A>
Invoker invoker(void (*f)(A...))
{
    return [f](void **args) { call_with(f, args, std::index_sequence_for<A...>{}); };
}

constexpr unsigned char CANARY = 0xa5;

#define MHC_K(name) {#name, invoker(name)}

const std::map<std::string, Invoker> &kernels()
{
    static const std::map<std::string, Invoker> table = {
        MHC_K(mhc_sk_small_f32), MHC_K(mhc_sk_small_f64), MHC_K(mhc_sk_4x4_f32),
        MHC_K(mhc_sk_4x4_f64),   MHC_K(mhc_sk_block_f32), MHC_K(mhc_sk_block_f64),
        MHC_K(mhc_sk_bwd_f32),   MHC_K(mhc_sk_bwd_f64),   MHC_K(mhc_dist_f32),
        MHC_K(mhc_dist_f64),     MHC_K(mhc_proj_f32),     MHC_K(mhc_proj_f64),
        MHC_K(mhc_mix_f32),      MHC_K(mhc_mix_f64),      MHC_K(mhc_mix4_f32),
        MHC_K(mhc_mix4_f64),     MHC_K(mhc_post_f32),     MHC_K(mhc_post_f64),
        MHC_K(mhc_post4_f32),    MHC_K(mhc_post4_f64),     MHC_K(mhc_sk_small_bwd_f32),
        MHC_K(mhc_sk_small_bwd_f64), MHC_K(mhc_sk_4x4_bwd_f32), MHC_K(mhc_sk_4x4_bwd_f64),
        MHC_K(mhc_pre_bwd_dots_f32), MHC_K(mhc_pre_bwd_dots_f64), MHC_K(mhc_pre_bwd_coef_f32),
        MHC_K(mhc_pre_bwd_coef_f64), MHC_K(mhc_pre_bwd_gx_f32), MHC_K(mhc_pre_bwd_gx_f64),
        MHC_K(mhc_post_bwd_f32), MHC_K(mhc_post_bwd_f64), MHC_K(mhc_pre_bwd_coef4_f32),
        MHC_K(mhc_pre_bwd_coef4_f64), MHC_K(mhc_harness_shfl_check),
    };
    return table;
}

} // namespace

extern "C" int mhc_harness_launch2(const char *name, unsigned grid, unsigned grid_y,
                                   unsigned block, unsigned long long shared_bytes, void **args)
{
    const auto &table = kernels();
    const auto it = table.find(name);
    if (it == table.end())
        return -1;
    if (shared_bytes > sizeof mhc_smem)
        return -2;
    if (block == 0 || block > 1024)
        return -3;
    const Invoker &run = it->second;
    std::barrier<> bar((std::ptrdiff_t)block);
    mhc_block_barrier = &bar;
    gridDim = {grid, grid_y, 1};
    blockDim = {block, 1, 1};
    unsigned char *smem = reinterpret_cast<unsigned char *>(mhc_smem);
    std::memset(smem, 0xff, shared_bytes);  /* garbage, as a GPU's shared memory is */
    std::memset(smem + shared_bytes, CANARY, sizeof mhc_smem - shared_bytes);
    const unsigned warp = block < 32 ? block : 32, warps = (block + 31) / 32;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bars;
    for (unsigned w = 0; w < warps; w++)
        warp_bars.push_back(std::make_unique<std::barrier<>>(
            (std::ptrdiff_t)(w + 1 < warps ? warp : block - w * 32)));
    std::vector<std::thread> threads;
    threads.reserve(block);
    for (unsigned t = 0; t < block; t++)
        threads.emplace_back([&, t] {
            threadIdx = {t, 0, 0};
            mhc_warp_barrier = warp_bars[t / 32].get();
            for (unsigned by = 0; by < grid_y; by++)
                for (unsigned b = 0; b < grid; b++) {
                    blockIdx = {b, by, 0};
                    run(args);
                    bar.arrive_and_wait();  /* the block is done before the next starts */
                }
        });
    for (auto &th : threads)
        th.join();
    mhc_block_barrier = nullptr;
    for (std::size_t b = shared_bytes; b < sizeof mhc_smem; b++)
        if (smem[b] != CANARY)
            return -4;
    return 0;
}

extern "C" int mhc_harness_launch(const char *name, unsigned grid, unsigned block,
                                  unsigned long long shared_bytes, void **args)
{
    return mhc_harness_launch2(name, grid, 1, block, shared_bytes, args);
}

extern "C" const char *mhc_harness_kernels()
{
    static std::string names;
    if (names.empty())
        for (const auto &kv : kernels())
            names += kv.first + " ";
    return names.c_str();
}
