// The memory of the CPU op's outputs (forward out, backward grad_x): a cache of freed blocks.
//
// Why: an activation of a training patch batch or a 256x256 image is 8-25 MB. PyTorch's CPU
// tensors come from glibc's malloc, which hands blocks that big back to the operating system when
// they are freed (unmapped, or trimmed off the top of the heap), so the next layer's output maps
// fresh pages and pays a page fault and the zeroing of a page for every 4 KiB the kernels write.
// In a 20-layer IGC-VDSR training step on 16x1x36x36 patches that was 12,000-25,000 faults per step
// (most of them in the backward's grad_x stores) and 152-181 ms per step against 128-129 ms with
// this cache (2 threads, Intel Xeon CI machine). The cache keeps the blocks of freed outputs and
// gives them to later outputs of the same size, as PyTorch's CUDA caching allocator does on GPUs.
//
// Only outputs of at least kCachedMinBytes use it (smaller ones come from torch's CPU allocator).
// Blocks are page-aligned, and those of 2 MiB and more are aligned to 2 MiB and marked for
// transparent huge pages. The cache holds at most a limit of idle bytes: the environment variable
// IGC_KERNELS_CPU_OUTPUT_CACHE_MB at first use (default 1024; 0 turns caching off), or
// set_output_cache_limit(); past the limit the least recently freed blocks go back to the system.
// Outputs are ordinary resizable CPU tensors (only their storage's allocator differs).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace igc {
namespace cpu {

constexpr int64_t kCachedMinBytes = int64_t(1) << 20;

// An uninitialised CPU tensor, as at::empty(sizes, options.memory_format(format)).
at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options, at::MemoryFormat format);

struct OutputCacheStats {
  int64_t cached_bytes;  // idle blocks held now
  int64_t limit_bytes;
  int64_t reused;        // outputs served from the cache
  int64_t fresh;         // outputs that needed a new block
};
OutputCacheStats output_cache_stats();
// Sets the most idle bytes the cache may hold (>= 0) and frees blocks past it; returns the old limit.
int64_t set_output_cache_limit(int64_t bytes);

}  // namespace cpu
}  // namespace igc
