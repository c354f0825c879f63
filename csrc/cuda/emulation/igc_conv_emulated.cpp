// The CUDA kernels of igc_conv_kernel.cu and igc_conv_backward_kernel.cu compiled for the CPU
// emulation (cuda_emulation.h), behind a C interface that tests/test_cuda.py loads with ctypes.
// The launch geometry mirrors igc_conv_cuda.cpp; the caller may shrink the grid (max_blocks) so
// that the grid-stride loops and the multi-row partial sums are exercised on small inputs.
#define IGC_CUDA_EMULATION 1

#include <algorithm>
#include <cstdint>

#include "../igc_conv_backward_kernel.cu"
#include "../igc_conv_kernel.cu"

using namespace igc::cuda;

namespace {

// params: N, C_in, H, W, C_out, H_out, W_out, L, M_in, M, kH, kW, sH, sW, pH, pW, dH, dW, shuffle, relu
KernelShape shape_from(const int64_t* q) {
  KernelShape s;
  int* f[] = {&s.N, &s.C_in, &s.H, &s.W, &s.C_out, &s.H_out, &s.W_out, &s.L, &s.M_in,
              &s.M, &s.kH, &s.kW, &s.sH, &s.sW, &s.pH, &s.pW, &s.dH, &s.dW};
  for (int i = 0; i < 18; ++i) *f[i] = static_cast<int>(q[i]);
  s.shuffle = q[18] != 0;
  s.relu = q[19] != 0;
  s.total_pix = static_cast<int64_t>(s.N) * s.H_out * s.W_out;
  return s;
}

Strides4 strides_from(const int64_t* q) { return q ? Strides4{q[0], q[1], q[2], q[3]} : Strides4{}; }

template <typename F>
int with_dtype(int dtype, F&& f) {
  if (dtype == 0) return f(static_cast<float*>(nullptr));
  if (dtype == 1) return f(static_cast<__half*>(nullptr));
  if (dtype == 2) return f(static_cast<__nv_bfloat16*>(nullptr));
  return 1;
}

}  // namespace

extern "C" {

// Returns 0 on success, 1 on a bad argument, 2 when the fast kernel does not apply.
int igc_emu_forward(const int64_t* params, int dtype, int fast_path, int max_blocks, const void* x,
                    const int64_t* xst, const float* w1, const float* b1, const float* w2, const float* b2,
                    const void* res, const int64_t* rst, void* out, const int64_t* ost) {
  const KernelShape s = shape_from(params);
  return with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = static_cast<const T*>(x);
    const T* rp = static_cast<const T*>(res);
    T* op = static_cast<T*>(out);
    if (fast_path) {
      if (!fast_forward_applies(s)) return 2;
      const dim3 grid((s.W_out + paper::kTW - 1) / paper::kTW, (s.H_out + paper::kTH - 1) / paper::kTH, s.N);
      igc_emu::launch(grid, dim3(paper::kTileThreads), fast::smem_bytes<T>(), [&] {
        fast::igc_fwd_fast_kernel<T>(s, xp, strides_from(xst), w1, b1, w2, b2, rp, strides_from(rst), op,
                                     strides_from(ost));
      });
      return 0;
    }
    const int P = general_forward_pixels_per_block(s.C_out);
    if (P == 0) return 1;
    const int64_t tiles = (s.total_pix + P - 1) / P;
    const int grid = static_cast<int>(std::min<int64_t>(tiles, max_blocks));
    igc_emu::launch(dim3(grid), dim3(kGeneralThreads), s.C_out * P * 4, [&] {
      igc_fwd_general_kernel<T>(s, P, tiles, xp, strides_from(xst), w1, b1, w2, b2, rp, strides_from(rst), op,
                                strides_from(ost));
    });
    return 0;
  });
}

// seg: end_w2, end_b2, end_w1, K, need_y1, need_gy1. partial: [rows, K] zeros with rows =
// min(tiles, max_blocks); ws: [C_out, total_pix] (with gx or, when fast, grad_w1); y1ws: the same
// size, fast path with grad_w2 only. Returns 2 when fast is asked for and does not apply.
int igc_emu_backward(const int64_t* params, int dtype, const int64_t* segq, int fast, int max_blocks,
                     const void* gout, const int64_t* gst, const void* outp, const int64_t* ost, const void* x,
                     const int64_t* xst, const float* w1, const float* b1, const float* w2, float* y1ws, float* ws,
                     float* partial, void* gw2, void* gb2, void* gw1, void* gb1, void* gx, const int64_t* gxst,
                     int64_t gx_numel) {
  const KernelShape s = shape_from(params);
  if (fast && !fast_backward_applies(s)) return 2;
  Segments seg{static_cast<int>(segq[0]), static_cast<int>(segq[1]), static_cast<int>(segq[2]),
               static_cast<int>(segq[3]), segq[4] != 0, segq[5] != 0, fast == 0};
  const int P = backward_pixels_per_tile(s.C_out);
  if (P == 0) return 1;
  const int64_t tiles = (s.total_pix + P - 1) / P;
  const int rows = static_cast<int>(std::min<int64_t>(tiles, max_blocks));
  return with_dtype(dtype, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xp = static_cast<const T*>(x);
    if (fast && y1ws != nullptr) {
      const dim3 grid((s.W_out + paper::kTW - 1) / paper::kTW, (s.H_out + paper::kTH - 1) / paper::kTH, s.N);
      igc_emu::launch(grid, dim3(paper::kTileThreads), fast_bwd::kY1Smem, [&] {
        fast_bwd::igc_bwd_fast_y1_kernel<T>(s, xp, strides_from(xst), w1, b1, y1ws);
      });
    }
    igc_emu::launch(dim3(rows), dim3(kThreads), mid_smem_bytes(s.C_out, P), [&] {
      igc_bwd_mid_kernel<T>(s, seg, P, tiles, static_cast<const T*>(gout), strides_from(gst),
                            static_cast<const T*>(outp), strides_from(ost), xp, strides_from(xst), w1, b1, w2,
                            fast ? y1ws : nullptr, ws, partial);
    });
    if (!seg.w1_in_mid && seg.end_w1 > seg.end_b2) {
      igc_emu::launch(dim3(rows), dim3(paper::kTileThreads), fast_bwd::kW1GradSmem, [&] {
        fast_bwd::igc_bwd_fast_w1_kernel<T>(s, seg, xp, strides_from(xst), ws, partial);
      });
    }
    if (seg.K > 0) {
      igc_emu::launch(dim3((seg.K + kThreads - 1) / kThreads), dim3(kThreads), 0, [&] {
        igc_reduce_partials_kernel<T>(partial, rows, seg, static_cast<T*>(gw2), static_cast<T*>(gb2),
                                      static_cast<T*>(gw1), static_cast<T*>(gb1));
      });
    }
    if (gx != nullptr && gx_numel > 0) {
      const int blocks = static_cast<int>(std::min<int64_t>((gx_numel + kThreads - 1) / kThreads, max_blocks));
      igc_emu::launch(dim3(blocks), dim3(kThreads), 0, [&] {
        igc_bwd_input_kernel<T>(s, gx_numel, w1, ws, static_cast<T*>(gx), strides_from(gxst));
      });
    }
    return 0;
  });
}

// Rows of the partials buffer the caller must allocate for igc_emu_backward.
int64_t igc_emu_backward_rows(const int64_t* params, int max_blocks) {
  const KernelShape s = shape_from(params);
  const int P = backward_pixels_per_tile(s.C_out);
  if (P == 0) return 0;
  return std::min<int64_t>((s.total_pix + P - 1) / P, max_blocks);
}

}  // extern "C"
