// Runs the CUDA kernels of csrc/cuda/ on the CPU, for testing on machines without a GPU.
//
// The kernels use only the block-level CUDA model: threadIdx/blockIdx/blockDim/gridDim, dynamic
// shared memory and __syncthreads (no warp shuffles, no atomics). That model is emulated exactly:
// every CUDA thread of a block is a std::thread, __syncthreads is a std::barrier, and blocks run
// one after another. Shared memory is filled with NaN before each block, so a read of an entry no
// thread wrote shows up in the results. Compiled with -DIGC_CUDA_EMULATION by a host compiler
// (C++20) with the CUDA toolkit's headers on the include path (for __half, __nv_bfloat16, float4).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <barrier>
#include <cmath>
#include <thread>
#include <vector>

// The CUDA headers give these attributes meanings a host compiler warns about; here they are no-ops.
#undef __global__
#define __global__
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __align__
#define __align__(n) alignas(n)

inline thread_local uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace igc_emu {
inline std::barrier<>* block_barrier = nullptr;
inline unsigned char* block_smem = nullptr;
inline unsigned char* shared_memory() { return block_smem; }

// kernel(): one call per CUDA thread; grid and block as in <<<grid, block, smem_bytes>>>.
template <typename Kernel>
void launch(dim3 grid, dim3 block, size_t smem_bytes, Kernel&& kernel) {
  std::vector<float4> smem(smem_bytes / sizeof(float4) + 1);
  gridDim = grid;
  blockDim = block;
  const unsigned threads = block.x * block.y * block.z;
  for (unsigned bz = 0; bz < grid.z; ++bz) {
    for (unsigned by = 0; by < grid.y; ++by) {
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        for (float4& v : smem) v = make_float4(NAN, NAN, NAN, NAN);
        block_smem = reinterpret_cast<unsigned char*>(smem.data());
        std::barrier<> barrier(threads);
        block_barrier = &barrier;
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            threadIdx = make_uint3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            blockIdx = make_uint3(bx, by, bz);
            kernel();
          });
        }
        for (std::thread& th : pool) th.join();
      }
    }
  }
}
}  // namespace igc_emu

inline void __syncthreads() { igc_emu::block_barrier->arrive_and_wait(); }
