// The weight and bias gradients of the fused CPU backward (backward.cpp, backward_plane.cpp).
//
// Each chunk of work sums into float accumulators with one entry per vector lane (the NT kernel's
// layout, kernels.h), folded into double every kFlushPixels pixels so that long sums keep float32
// accuracy; the chunks' double sums are then added in chunk order, so results do not depend on
// which thread ran which chunk.
#pragma once

#include <algorithm>
#include <array>
#include <tuple>
#include <vector>

#include "layer.h"

namespace igc {
namespace cpu {

// NT kernel arguments for an MA x NB sum over P pixels (one segment, result rows of NB entries).
template <typename S>
NtArgs<S> nt_sum(int64_t MA, int64_t NB, int64_t P) {
  NtArgs<S> a;
  a.MA = MA;
  a.NB = NB;
  a.P = P;
  a.ld = NB;
  return a;
}

template <typename S>
struct GradSums {
  std::vector<double> w1, b1, w2, b2;     // folded sums, in the layout of w1, b1, w2, b2
  LineVec<S> accw1, accb1, accw2, accb2;  // lane sums: entry e's lanes at [e * lanes, (e + 1) * lanes)
  int64_t lanes = 0, pending = 0;

  // Sizes for the gradients `mask` asks for (mask[1..4]: w1, b1, w2, b2).
  void init(const IGCConvParams& p, int64_t K1, int64_t lanes_, const std::array<bool, 5>& mask) {
    const int64_t C = p.C_out;
    lanes = lanes_;
    w1.assign(mask[1] ? C * K1 : 0, 0.0);
    b1.assign(mask[2] ? C : 0, 0.0);
    w2.assign(mask[3] ? C * p.L : 0, 0.0);
    b2.assign(mask[4] ? C : 0, 0.0);
    accw1.assign(w1.size() * lanes, S(0));
    accb1.assign(b1.size() * lanes, S(0));
    accw2.assign(w2.size() * lanes, S(0));
    accb2.assign(b2.size() * lanes, S(0));
  }
  // Count `pixels` more summed pixels; fold the lanes into double when enough have gathered.
  void added(int64_t pixels) {
    pending += pixels;
    if (pending >= kFlushPixels) flush();
  }
  void flush() {
    fold(accw1, w1);
    fold(accb1, b1);
    fold(accw2, w2);
    fold(accb2, b2);
    pending = 0;
  }

 private:
  void fold(LineVec<S>& acc, std::vector<double>& dst) {
    for (size_t e = 0; e < dst.size(); ++e) {
      double s = 0;
      for (int64_t v = 0; v < lanes; ++v) s += double(acc[e * lanes + v]);
      dst[e] += s;
    }
    std::fill(acc.begin(), acc.end(), S(0));
  }
};

// grad_w1, grad_b1, grad_w2, grad_b2 from the chunks' (flushed) sums, in x's dtype; 0-element
// tensors for those `mask` does not ask for.
template <typename S>
std::tuple<Tensor, Tensor, Tensor, Tensor> reduce_grad_sums(const std::vector<GradSums<S>>& sums, const Tensor& x,
                                                           const Tensor& w1, const Tensor& w2,
                                                           const std::array<bool, 5>& mask) {
  auto reduce = [&](std::vector<double> GradSums<S>::*field, at::IntArrayRef sizes) {
    Tensor r = at::zeros(sizes, x.options().dtype(at::kDouble));
    double* rp = r.data_ptr<double>();
    for (const auto& A : sums)
      for (int64_t e = 0; e < r.numel(); ++e) rp[e] += (A.*field)[e];
    return r.to(x.scalar_type());
  };
  Tensor empty = at::empty({0}, x.options());
  const int64_t C = w1.size(0);
  return {mask[1] ? reduce(&GradSums<S>::w1, w1.sizes()) : empty, mask[2] ? reduce(&GradSums<S>::b1, {C}) : empty,
          mask[3] ? reduce(&GradSums<S>::w2, w2.sizes()) : empty, mask[4] ? reduce(&GradSums<S>::b2, {C}) : empty};
}

}  // namespace cpu
}  // namespace igc
