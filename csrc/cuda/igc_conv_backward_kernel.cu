// Fused IGC backward kernels on CUDA: gradients of x, w1, b1, w2, b2 for every shape (DESIGN section 2).
//
// With g = grad_out (times the ReLU mask out > 0), gs[m*L + j] = g[out_channel(m, j)] and
// y1 the primary output (recomputed here, never saved by the forward):
//   grad_b2[c2]           = sum_pixels gs[c2]
//   grad_w2[m*L + j, l]   = sum_pixels gs[m*L + j] * y1[l*M + m]
//   gy1[l*M + m]          = sum_j w2[m*L + j, l] * gs[m*L + j]          (grad of y1)
//   grad_b1[c1]           = sum_pixels gy1[c1]
//   grad_w1[c1, ci, kh, kw] = sum_pixels gy1[c1] * x[l*M_in + ci, oh*sH - pH + kh*dH, ...]
//   grad_x = transposed grouped conv of gy1 with w1
//
// Kernels, in launch order:
// 0. (fast path, with grad_w2) fast_bwd::igc_bwd_fast_y1_kernel: y1 recomputed from 8x32 output
//    tiles with the input tile + halo in shared memory, into a fp32 workspace [C_mid, pixels].
// 1. igc_bwd_mid_kernel: a fixed grid of blocks walks tiles of P output pixels; per tile it stages
//    gs, y1 and gy1 of all channels in shared memory, writes gy1 to a fp32 workspace when grad_x
//    (or, on the fast path, grad_w1) needs it, and adds the tile's weight/bias-gradient terms into
//    the block's own row of a partials buffer. Each entry of that row belongs to one thread, so
//    there are no atomics and the sums do not depend on scheduling: the backward is deterministic
//    on a given device.
// 2. (fast path, with grad_w1) fast_bwd::igc_bwd_fast_w1_kernel: grad_w1 from 8x32 tiles of gy1
//    and the staged input, into the grad_w1 segment of the same partials rows.
// 3. igc_reduce_partials_kernel: sums the rows in a fixed order into grad_w1, b1, w2, b2.
// 4. igc_bwd_input_kernel: grad_x by gathering gy1 from the workspace (no atomics either).
//
// Work per output pixel of the paper's layer: y1 recompute 3,456 MAC, gy1 2,304, grad_w2 2,304,
// grad_w1 3,456, grad_x 3,456 (15 k MAC, 2.6x the forward); memory: read x, grad_out (and out
// for ReLU) once, and the fp32 workspaces (gy1, and y1 for grad_w2) are written once and read
// once or twice. The workspaces trade memory traffic (about 2 KB per pixel in fp32) for simple,
// atomic-free kernels; fusing grad_x into the tile kernels would remove the gy1 round trip.
#include <algorithm>
#include <climits>
#include <type_traits>

#include "igc_conv_device.cuh"
#include "paper_tile.cuh"

namespace igc {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    igc_bwd_mid_kernel(KernelShape s, Segments seg, int P, int64_t num_tiles, const scalar_t* __restrict__ gout,
                       Strides4 gst, const scalar_t* __restrict__ outp, Strides4 ost, const scalar_t* __restrict__ x,
                       Strides4 xst, const float* __restrict__ w1, const float* __restrict__ b1,
                       const float* __restrict__ w2, const float* __restrict__ y1ws, float* __restrict__ ws,
                       float* __restrict__ partial) {
  IGC_DYNAMIC_SMEM(smem);
  const int PS = P + 1;  // odd row stride (P is a power of two): fewer bank conflicts across rows
  float* gsm = reinterpret_cast<float*>(smem);  // [C_out][PS], secondary channel order c2 = m*L + j
  float* y1s = gsm + s.C_out * PS;              // [C_mid][PS]
  float* gy1s = y1s + s.C_out * PS;             // [C_mid][PS]
  int* pn = reinterpret_cast<int*>(gy1s + s.C_out * PS);  // per tile pixel: n (-1 past the end), oh, ow
  int* poh = pn + P;
  int* pow_ = poh + P;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int CP = s.C_out * P;
  float* prow = partial != nullptr ? partial + static_cast<int64_t>(blockIdx.x) * seg.K : nullptr;

  for (int64_t tile = blockIdx.x; tile < num_tiles; tile += gridDim.x) {
    const int64_t pix0 = tile * P;
    for (int pp = tid; pp < P; pp += nt) {
      const int64_t pix = pix0 + pp;
      if (pix < s.total_pix) {
        const PixelPos q = decode_pixel(s, pix);
        pn[pp] = q.n;
        poh[pp] = q.oh;
        pow_[pp] = q.ow;
      } else {
        pn[pp] = -1;
        poh[pp] = 0;
        pow_[pp] = 0;
      }
    }
    __syncthreads();

    // gs and (for grad_w2) y1; pixels past the end hold 0 so they add nothing below.
    for (int i = tid; i < CP; i += nt) {
      const int c = i / P, pp = i - c * P;
      const int n = pn[pp];
      float g = 0.f, y = 0.f;
      if (n >= 0) {
        const int m = c / s.L, j = c - m * s.L;  // c as secondary channel c2 = m*L + j
        const int o = out_channel(s, m, j);
        const int64_t off = offset4(gst, n, o, poh[pp], pow_[pp]);
        g = to_f(gout[off]);
        // ReLU backward as torch's threshold_backward: zero where out <= 0.
        if (s.relu && to_f(outp[offset4(ost, n, o, poh[pp], pow_[pp])]) <= 0.f) g = 0.f;
        if (seg.need_y1) {  // c as c1
          y = y1ws != nullptr ? y1ws[static_cast<int64_t>(c) * s.total_pix + pix0 + pp]
                              : primary_at(s, x, xst, w1, b1, n, c, poh[pp], pow_[pp]);
        }
      }
      gsm[c * PS + pp] = g;
      y1s[c * PS + pp] = y;
    }
    __syncthreads();

    if (seg.need_gy1) {
      for (int i = tid; i < CP; i += nt) {
        const int c1 = i / P, pp = i - c1 * P;
        const int l = c1 / s.M, m = c1 - l * s.M;
        const float* wcol = w2 + static_cast<int64_t>(m) * s.L * s.L + l;  // w2[(m*L + j)*L + l] = wcol[j*L]
        const float* gcol = gsm + m * s.L * PS + pp;                        // gs[m*L + j] = gcol[j*PS]
        float acc = 0.f;
        for (int j = 0; j < s.L; ++j) acc = fmaf(wcol[j * s.L], gcol[j * PS], acc);
        gy1s[c1 * PS + pp] = acc;
        if (ws != nullptr && pn[pp] >= 0) ws[static_cast<int64_t>(c1) * s.total_pix + pix0 + pp] = acc;
      }
      __syncthreads();
    }

    if (prow != nullptr) {
      const int taps = s.kH * s.kW;
      for (int k = tid; k < seg.K; k += nt) {
        float acc = 0.f;
        if (k < seg.end_w2) {
          const int c2 = k / s.L, l = k - c2 * s.L, m = c2 / s.L;
          const float* a = gsm + c2 * PS;
          const float* b = y1s + (l * s.M + m) * PS;
          for (int pp = 0; pp < P; ++pp) acc = fmaf(a[pp], b[pp], acc);
        } else if (k < seg.end_b2) {
          const float* a = gsm + (k - seg.end_w2) * PS;
          for (int pp = 0; pp < P; ++pp) acc += a[pp];
        } else if (k < seg.end_w1) {
          if (!seg.w1_in_mid) continue;  // igc_bwd_fast_w1_kernel owns this segment
          const int kk = k - seg.end_b2;  // ((c1*M_in + ci)*kH + kh)*kW + kw, as w1 is stored
          const int kw = kk % s.kW, kh = (kk / s.kW) % s.kH;
          const int t = kk / taps, ci = t % s.M_in, c1 = t / s.M_in;
          const int64_t xc = static_cast<int64_t>(c1 / s.M) * s.M_in + ci;
          const float* a = gy1s + c1 * PS;
          for (int pp = 0; pp < P; ++pp) {
            const int n = pn[pp];
            if (n < 0) break;  // pixels past the end are at the tail of the tile
            const int ih = poh[pp] * s.sH - s.pH + kh * s.dH;
            const int iw = pow_[pp] * s.sW - s.pW + kw * s.dW;
            if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) acc = fmaf(a[pp], to_f(x[offset4(xst, n, xc, ih, iw)]), acc);
          }
        } else {
          const float* a = gy1s + (k - seg.end_w1) * PS;
          for (int pp = 0; pp < P; ++pp) acc += a[pp];
        }
        prow[k] += acc;
      }
    }
    __syncthreads();  // the next tile rewrites the shared arrays
  }
}

template <typename scalar_t>
__global__ void igc_reduce_partials_kernel(const float* __restrict__ partial, int rows, Segments seg,
                                           scalar_t* __restrict__ gw2, scalar_t* __restrict__ gb2,
                                           scalar_t* __restrict__ gw1, scalar_t* __restrict__ gb1) {
  const int k = blockIdx.x * blockDim.x + threadIdx.x;
  if (k >= seg.K) return;
  float acc = 0.f;
  for (int r = 0; r < rows; ++r) acc += partial[static_cast<int64_t>(r) * seg.K + k];  // fixed order
  const scalar_t v = from_f<scalar_t>(acc);
  if (k < seg.end_w2) {
    gw2[k] = v;
  } else if (k < seg.end_b2) {
    gb2[k - seg.end_w2] = v;
  } else if (k < seg.end_w1) {
    gw1[k - seg.end_b2] = v;
  } else {
    gb1[k - seg.end_w1] = v;
  }
}

// grad_x[n, l*M_in + ci, ih, iw] = sum over m, kh, kw with ih = oh*sH - pH + kh*dH (and the same
// for w) of w1[l*M + m, ci, kh, kw] * gy1[l*M + m, n, oh, ow].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    igc_bwd_input_kernel(KernelShape s, int64_t numel, const float* __restrict__ w1, const float* __restrict__ ws,
                         scalar_t* __restrict__ gx, Strides4 gxst) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < numel;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t t = idx;
    const int iw = static_cast<int>(t % s.W);
    t /= s.W;
    const int ih = static_cast<int>(t % s.H);
    t /= s.H;
    const int cin = static_cast<int>(t % s.C_in);
    const int n = static_cast<int>(t / s.C_in);
    const int l = cin / s.M_in, ci = cin - l * s.M_in;
    float acc = 0.f;
    for (int kh = 0; kh < s.kH; ++kh) {
      const int th = ih + s.pH - kh * s.dH;
      if (th < 0 || th % s.sH != 0) continue;
      const int oh = th / s.sH;
      if (oh >= s.H_out) continue;
      for (int kw = 0; kw < s.kW; ++kw) {
        const int tw = iw + s.pW - kw * s.dW;
        if (tw < 0 || tw % s.sW != 0) continue;
        const int ow = tw / s.sW;
        if (ow >= s.W_out) continue;
        const int64_t pix = (static_cast<int64_t>(n) * s.H_out + oh) * s.W_out + ow;
        for (int m = 0; m < s.M; ++m) {
          const int c1 = l * s.M + m;
          acc = fmaf(w1[((static_cast<int64_t>(c1) * s.M_in + ci) * s.kH + kh) * s.kW + kw],
                     ws[static_cast<int64_t>(c1) * s.total_pix + pix], acc);
        }
      }
    }
    gx[offset4(gxst, n, cin, ih, iw)] = from_f<scalar_t>(acc);
  }
}

// ---------------------------------------------------------------------------------------------
// Fast path of the paper's layer (k=3, stride 1, dilation 1, L=24, M=M_in=4): the two parts of the
// backward that gather input pixels (the y1 recompute and grad_w1) run on 8x32 output tiles whose
// input tile + halo is staged in shared memory with the fast forward's code (paper_tile.cuh).
namespace fast_bwd {
// paper_tile.cuh's names, unqualified in this namespace only. Its thread count is named
// kTileThreads, so the mid kernel's kThreads (a separate choice) is neither hidden nor hiding.
using namespace paper;

constexpr int kY1Smem = kW1Bytes + kC * 4 + kXBytes;
constexpr int kGS = kTileThreads + 1;        // row stride of the staged gy1 tile
constexpr int kW1GradSmem = kXBytes + kChunkC * kGS * 4;
constexpr int kWeightsPerChunk = kChunkC * kMi * 9;  // grad_w1 entries of one chunk of 8 groups
constexpr int kPerThread = (kWeightsPerChunk + kTileThreads - 1) / kTileThreads;
static_assert((kW1Bytes + kC * 4) % 16 == 0, "staged input must stay 16-byte aligned");

// y1 (bias included) of every channel and output pixel into y1ws[c1][pixel]. Grid as the fast forward.
template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads)
    igc_bwd_fast_y1_kernel(KernelShape s, const scalar_t* __restrict__ x, Strides4 xst,
                           const float* __restrict__ w1, const float* __restrict__ b1, float* __restrict__ y1ws) {
  IGC_DYNAMIC_SMEM(smem);
  float4* w1s = reinterpret_cast<float4*>(smem);
  float* b1s = reinterpret_cast<float*>(smem + kW1Bytes);
  float* xs = reinterpret_cast<float*>(smem + kW1Bytes + kC * 4);
  const int tid = threadIdx.x;
  const int n = blockIdx.z, oh0 = blockIdx.y * kTH, ow0 = blockIdx.x * kTW;
  stage_w1(w1s, w1);
  for (int i = tid; i < kC; i += kTileThreads) b1s[i] = b1 != nullptr ? b1[i] : 0.f;
  const int ty = tid / kTW, tx = tid - ty * kTW;
  const int oh = oh0 + ty, ow = ow0 + tx;
  const bool valid = oh < s.H_out && ow < s.W_out;
  const int64_t pix = (static_cast<int64_t>(n) * s.H_out + oh) * s.W_out + ow;
#pragma unroll 1
  for (int chunk = 0; chunk < kChunks; ++chunk) {
    __syncthreads();  // the previous chunk's readers are done with xs
    load_x_chunk(s, x, xst, xs, n, oh0, ow0, chunk);
    __syncthreads();
#pragma unroll 1
    for (int g = 0; g < kGroupsPerChunk; ++g) {
      const int l = chunk * kGroupsPerChunk + g;
      const float4 a = primary_group4(xs, w1s, b1s, ty, tx, chunk, g);
      if (valid) {
        y1ws[static_cast<int64_t>(l * kM + 0) * s.total_pix + pix] = a.x;
        y1ws[static_cast<int64_t>(l * kM + 1) * s.total_pix + pix] = a.y;
        y1ws[static_cast<int64_t>(l * kM + 2) * s.total_pix + pix] = a.z;
        y1ws[static_cast<int64_t>(l * kM + 3) * s.total_pix + pix] = a.w;
      }
    }
  }
}

// grad_w1 terms of the tiles this block walks (grid = the mid kernel's rows), added into the
// grad_w1 segment of the block's own partials row. Each thread owns kPerThread weights per chunk
// and sums them over the tile's 256 pixels from shared memory.
template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads)
    igc_bwd_fast_w1_kernel(KernelShape s, Segments seg, const scalar_t* __restrict__ x, Strides4 xst,
                           const float* __restrict__ ws, float* __restrict__ partial) {
  IGC_DYNAMIC_SMEM(smem);
  float* xs = reinterpret_cast<float*>(smem);
  float* gys = reinterpret_cast<float*>(smem + kXBytes);  // [32 channels][kGS], pixel p = ty*32 + tx
  const int tid = threadIdx.x;
  const int tiles_w = (s.W_out + kTW - 1) / kTW, tiles_h = (s.H_out + kTH - 1) / kTH;
  const int64_t num_tiles = static_cast<int64_t>(s.N) * tiles_h * tiles_w;
  float acc[kChunks * kPerThread];
#pragma unroll
  for (int i = 0; i < kChunks * kPerThread; ++i) acc[i] = 0.f;

  for (int64_t t = blockIdx.x; t < num_tiles; t += gridDim.x) {
    const int n = static_cast<int>(t / (static_cast<int64_t>(tiles_h) * tiles_w));
    const int r = static_cast<int>(t - static_cast<int64_t>(n) * tiles_h * tiles_w);
    const int oh0 = (r / tiles_w) * kTH, ow0 = (r % tiles_w) * kTW;
#pragma unroll
    for (int chunk = 0; chunk < kChunks; ++chunk) {
      __syncthreads();  // the previous readers are done with xs and gys
      load_x_chunk(s, x, xst, xs, n, oh0, ow0, chunk);
      for (int i = tid; i < kChunkC * kTileThreads; i += kTileThreads) {
        const int cl = i / kTileThreads, p = i - cl * kTileThreads;
        const int oh = oh0 + p / kTW, ow = ow0 + p % kTW;
        float v = 0.f;  // pixels outside the output add nothing
        if (oh < s.H_out && ow < s.W_out) {
          v = ws[static_cast<int64_t>(chunk * kChunkC + cl) * s.total_pix +
                 (static_cast<int64_t>(n) * s.H_out + oh) * s.W_out + ow];
        }
        gys[cl * kGS + p] = v;
      }
      __syncthreads();
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int kk = tid + i * kTileThreads;  // c1l*36 + ci*9 + kh*3 + kw within the chunk
        if (kk < kWeightsPerChunk) {
          const int c1l = kk / (kMi * 9), rr = kk - c1l * (kMi * 9);
          const int ci = rr / 9, kh = (rr % 9) / 3, kw = rr % 3;
          const float* gy = gys + c1l * kGS;
          const float* xb = xs + (kh * kIW + kw) * kXS + (c1l / kM) * kMi + ci;
          float a = 0.f;
          for (int p = 0; p < kTileThreads; ++p) a = fmaf(gy[p], xb[((p / kTW) * kIW + p % kTW) * kXS], a);
          acc[chunk * kPerThread + i] += a;
        }
      }
    }
  }
  float* prow = partial + static_cast<int64_t>(blockIdx.x) * seg.K + seg.end_b2;
#pragma unroll
  for (int chunk = 0; chunk < kChunks; ++chunk) {
#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int kk = tid + i * kTileThreads;
      if (kk < kWeightsPerChunk) prow[chunk * kWeightsPerChunk + kk] += acc[chunk * kPerThread + i];
    }
  }
}
}  // namespace fast_bwd

// Shared memory of igc_bwd_mid_kernel: three [C][P+1] fp32 arrays and three ints per pixel.
int64_t mid_smem_bytes(int C_out, int P) { return (3 * static_cast<int64_t>(C_out) * (P + 1) + 3 * P) * 4; }

}  // namespace

bool fast_backward_applies(const KernelShape& s) { return paper::tile_applies(s); }

int fast_backward_smem_bytes() { return std::max(fast_bwd::kY1Smem, fast_bwd::kW1GradSmem); }

int backward_pixels_per_tile(int C_out) {
  if (mid_smem_bytes(C_out, 1) > kSmemBudget) return 0;
  int P = 64;
  while (P > 1 && mid_smem_bytes(C_out, P) > kSmemBudget) P /= 2;
  return P;
}

#ifndef IGC_CUDA_EMULATION  // the emulation launches the kernels itself
cudaError_t launch_backward(const BackwardArgs& a, cudaStream_t stream) {
  const KernelShape& s = a.s;
  const Segments& seg = a.seg;
  if (a.P < 1 || mid_smem_bytes(s.C_out, a.P) > kSmemBudget) return cudaErrorInvalidValue;
  return dispatch_dtype(a.dtype, [&](auto* tag) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    const scalar_t* x = static_cast<const scalar_t*>(a.x);
    cudaError_t err = cudaSuccess;
    if (a.fast && a.y1ws != nullptr) {
      auto kernel = fast_bwd::igc_bwd_fast_y1_kernel<scalar_t>;
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, fast_bwd::kY1Smem);
      if (err != cudaSuccess) return err;
      const dim3 grid((s.W_out + paper::kTW - 1) / paper::kTW, (s.H_out + paper::kTH - 1) / paper::kTH, s.N);
      kernel<<<grid, paper::kTileThreads, fast_bwd::kY1Smem, stream>>>(s, x, a.xst, a.w1, a.b1, a.y1ws);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }
    igc_bwd_mid_kernel<scalar_t><<<a.rows, kThreads, static_cast<int>(mid_smem_bytes(s.C_out, a.P)), stream>>>(
        s, seg, a.P, a.num_tiles, static_cast<const scalar_t*>(a.gout), a.gst, static_cast<const scalar_t*>(a.out),
        a.ost, x, a.xst, a.w1, a.b1, a.w2, a.y1ws, a.ws, a.partial);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;

    if (!seg.w1_in_mid && seg.end_w1 > seg.end_b2) {
      auto kernel = fast_bwd::igc_bwd_fast_w1_kernel<scalar_t>;
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, fast_bwd::kW1GradSmem);
      if (err != cudaSuccess) return err;
      kernel<<<a.rows, paper::kTileThreads, fast_bwd::kW1GradSmem, stream>>>(s, seg, x, a.xst, a.ws, a.partial);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }

    if (seg.K > 0) {
      igc_reduce_partials_kernel<scalar_t><<<(seg.K + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          a.partial, a.rows, seg, static_cast<scalar_t*>(a.gw2), static_cast<scalar_t*>(a.gb2),
          static_cast<scalar_t*>(a.gw1), static_cast<scalar_t*>(a.gb1));
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
    }

    if (a.gx != nullptr && a.gx_numel > 0) {
      const int blocks = static_cast<int>(std::min<int64_t>((a.gx_numel + kThreads - 1) / kThreads, 1 << 20));
      igc_bwd_input_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(s, a.gx_numel, a.w1, a.ws,
                                                                      static_cast<scalar_t*>(a.gx), a.gxst);
      err = cudaGetLastError();
    }
    return err;
  });
}
#endif  // IGC_CUDA_EMULATION

}  // namespace cuda
}  // namespace igc
