// Fused IGC backward on CUDA: gradients of x, w1, b1, w2, b2 for every shape (DESIGN section 2).
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
// Kernels:
// 1. igc_bwd_mid_kernel: a fixed grid of blocks walks tiles of P output pixels; per tile it stages
//    gs, y1 and gy1 of all channels in shared memory, writes gy1 to a fp32 workspace when grad_x
//    is wanted, and adds the tile's weight/bias-gradient terms into the block's own row of a
//    partials buffer. Each entry of that row belongs to one thread, so there are no atomics and
//    the sums do not depend on scheduling: the backward is deterministic on a given device.
// 2. igc_reduce_partials_kernel: sums the rows in a fixed order into grad_w1, b1, w2, b2.
// 3. igc_bwd_input_kernel: grad_x by gathering gy1 from the workspace (no atomics either).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <climits>

#include "igc_conv_cuda.h"

namespace igc {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kSmemBudget = 48 * 1024;  // no opt-in needed on any architecture

// Layout of one partials row: [grad_w2 | grad_b2 | grad_w1 | grad_b1]; an unrequested gradient
// has an empty segment.
struct Segments {
  int end_w2, end_b2, end_w1, K;  // K = end_b1
  bool need_y1;                   // grad_w2 needs the recomputed primary output
  bool need_gy1;                  // grad_x, grad_w1 and grad_b1 need the gradient of y1
};

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    igc_bwd_mid_kernel(KernelShape s, Segments seg, int P, int64_t num_tiles, const scalar_t* __restrict__ gout,
                       Strides4 gst, const scalar_t* __restrict__ outp, Strides4 ost, const scalar_t* __restrict__ x,
                       Strides4 xst, const float* __restrict__ w1, const float* __restrict__ b1,
                       const float* __restrict__ w2, float* __restrict__ ws, float* __restrict__ partial) {
  extern __shared__ __align__(16) unsigned char smem[];
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
        if (seg.need_y1) y = primary_at(s, x, xst, w1, b1, n, c, poh[pp], pow_[pp]);  // c as c1
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
  const scalar_t v = static_cast<scalar_t>(acc);
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
    gx[offset4(gxst, n, cin, ih, iw)] = static_cast<scalar_t>(acc);
  }
}

at::Tensor to_float_contig(const at::Tensor& t) { return t.contiguous().to(at::kFloat); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> igc_conv_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& w1, const c10::optional<at::Tensor>& b1,
    const at::Tensor& w2, const c10::optional<at::Tensor>& out, int64_t groups, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, bool shuffle, int64_t activation,
    std::array<bool, 5> output_mask) {
  const IGCConvParams p = make_params(x, w1, b1, w2, c10::nullopt, c10::nullopt, groups, stride, padding, dilation,
                                      shuffle, activation);
  check_backward_args(p, grad_out, out, x);
  check_cuda_supported(p, x);
  const c10::cuda::CUDAGuard guard(x.device());

  const bool need_gx = output_mask[0], need_w1 = output_mask[1], need_b1 = output_mask[2];
  const bool need_w2 = output_mask[3], need_b2 = output_mask[4];
  // Unrequested gradients: distinct 0-element tensors (outputs of an op must not alias).
  const auto empty = [&] { return at::empty({0}, x.options()); };
  const auto contig = at::MemoryFormat::Contiguous;
  at::Tensor gx = need_gx ? at::empty(x.sizes(), x.options().memory_format(x.suggest_memory_format())) : empty();
  at::Tensor gw1 = need_w1 ? at::empty(w1.sizes(), w1.options().memory_format(contig)) : empty();
  at::Tensor gb1 = need_b1 ? at::empty({p.C_out}, x.options()) : empty();
  at::Tensor gw2 = need_w2 ? at::empty(w2.sizes(), w2.options().memory_format(contig)) : empty();
  at::Tensor gb2 = need_b2 ? at::empty({p.C_out}, x.options()) : empty();
  const auto result = [&] { return std::make_tuple(gx, gw1, gb1, gw2, gb2); };
  if (!(need_gx || need_w1 || need_b1 || need_w2 || need_b2)) return result();

  const KernelShape s = kernel_shape(p);
  if (s.total_pix == 0) {  // empty batch: every gradient is a sum over nothing
    for (at::Tensor* t : {&gx, &gw1, &gb1, &gw2, &gb2}) {
      if (t->numel() > 0) t->zero_();
    }
    return result();
  }

  TORCH_CHECK(2 * p.C_out * (p.L + 1) + w1.numel() < INT_MAX,
              "igc_conv_backward (CUDA): too many weights for the CUDA kernel (", w1.numel(), " in w1)");
  Segments seg;
  seg.end_w2 = need_w2 ? s.C_out * s.L : 0;
  seg.end_b2 = seg.end_w2 + (need_b2 ? s.C_out : 0);
  seg.end_w1 = seg.end_b2 + (need_w1 ? static_cast<int>(w1.numel()) : 0);
  seg.K = seg.end_w1 + (need_b1 ? s.C_out : 0);
  seg.need_y1 = need_w2;
  seg.need_gy1 = need_gx || need_w1 || need_b1;

  // P pixels per tile: three [C][P+1] fp32 arrays plus 3 ints per pixel within the static budget.
  auto smem_for = [&](int P) { return (3 * s.C_out * (P + 1) + 3 * P) * 4; };
  TORCH_CHECK(smem_for(1) <= kSmemBudget, "igc_conv_backward (CUDA): w1.shape[0] (L*M) must be <= 2046 for the ",
              "CUDA kernel, got ", s.C_out);
  int P = 64;
  while (P > 1 && smem_for(P) > kSmemBudget) P /= 2;
  const int64_t num_tiles = (s.total_pix + P - 1) / P;
  // A fixed number of blocks (a few per SM) keeps the partials buffer small.
  const auto* props = at::cuda::getCurrentDeviceProperties();
  const int rows = static_cast<int>(std::min<int64_t>(num_tiles, 4 * static_cast<int64_t>(props->multiProcessorCount)));

  const at::Tensor w1f = to_float_contig(w1), w2f = to_float_contig(w2);
  const at::Tensor b1f = b1.has_value() ? to_float_contig(*b1) : at::Tensor();
  const float* b1p = b1f.defined() ? b1f.data_ptr<float>() : nullptr;
  const auto fopts = x.options().dtype(at::kFloat);
  at::Tensor partial = seg.K > 0 ? at::zeros({rows, seg.K}, fopts) : at::Tensor();
  at::Tensor ws = need_gx ? at::empty({s.C_out, s.total_pix}, fopts) : at::Tensor();
  const at::Tensor out_t = out.has_value() ? *out : at::Tensor();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  IGC_DISPATCH_CUDA_TYPES(x.scalar_type(), "igc_conv_backward_cuda", [&] {
    const scalar_t* outp = out_t.defined() ? out_t.const_data_ptr<scalar_t>() : nullptr;
    const Strides4 ost = out_t.defined() ? strides_of(out_t) : Strides4{};
    igc_bwd_mid_kernel<scalar_t><<<rows, kThreads, smem_for(P), stream>>>(
        s, seg, P, num_tiles, grad_out.const_data_ptr<scalar_t>(), strides_of(grad_out), outp, ost,
        x.const_data_ptr<scalar_t>(), strides_of(x), w1f.data_ptr<float>(), b1p, w2f.data_ptr<float>(),
        ws.defined() ? ws.data_ptr<float>() : nullptr, partial.defined() ? partial.data_ptr<float>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();

    if (seg.K > 0) {
      auto ptr = [](at::Tensor& t) { return t.numel() > 0 ? t.mutable_data_ptr<scalar_t>() : nullptr; };
      igc_reduce_partials_kernel<scalar_t><<<(seg.K + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          partial.data_ptr<float>(), rows, seg, ptr(gw2), ptr(gb2), ptr(gw1), ptr(gb1));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }

    if (need_gx && gx.numel() > 0) {
      const int64_t numel = gx.numel();
      const int blocks = static_cast<int>(std::min<int64_t>((numel + kThreads - 1) / kThreads, 1 << 20));
      igc_bwd_input_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(s, numel, w1f.data_ptr<float>(),
                                                                      ws.data_ptr<float>(),
                                                                      gx.mutable_data_ptr<scalar_t>(), strides_of(gx));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return result();
}

}  // namespace cuda
}  // namespace igc
