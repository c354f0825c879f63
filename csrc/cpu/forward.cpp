// The forward of the fused CPU op (igc_kernels::igc_conv): see layer.h for the scheme.
#include <algorithm>
#include <vector>

#include "layer.h"

namespace igc {
namespace cpu {
namespace {

template <typename T, typename S>
Tensor forward_impl(const IGCConvParams& p, const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1,
                    const Tensor& w2, const c10::optional<Tensor>& b2, const c10::optional<Tensor>& residual) {
  Tensor out = at::empty({p.N, p.C_out, p.H_out, p.W_out}, x.options().memory_format(x.suggest_memory_format()));
  if (out.numel() == 0) return out;
  const Kernels<S>& kern = kernels<S>();
  const Layer<S> g(p, w1, b1, w2, b2);
  const int64_t L = p.L, M = p.M, C = p.C_out, K1 = g.K1;
  const T* xp = x.data_ptr<T>();
  const Str xs = strides_of(x), os = strides_of(out);
  T* op = out.data_ptr<T>();
  const T* rp = residual ? residual->data_ptr<T>() : nullptr;
  const Str rs = residual ? strides_of(*residual) : Str{0, 0, 0, 0};
  // Direct stores from the kernel when the output (and residual) rows are contiguous in S.
  const bool direct = std::is_same<T, S>::value && os.w == 1 && (!rp || rs.w == 1);
  const bool relu = p.activation == kActRelu;
  const bool stream = direct && out.nbytes() >= kStreamBytes;
  const int64_t rows = p.N * p.H_out;

  at::parallel_for(0, rows, grain_for(p.W_out * C * (K1 + L)), [&](int64_t begin, int64_t end) {
    RowCache<S> cache(g, kern);
    RowPrefetch<T> next;  // the input row the next output row adds to the cache
    const std::vector<const S*>& src = cache.src;
    LineVec<S> y1(L > 1 ? C * kSegF : 0, S(0)), st(direct ? 0 : C * kSegF, S(0));  // L == 1: no y1 tile
    std::vector<const S*> y1src(C), res(C);
    std::vector<S*> y1dst(C), dst(C);
    for (int64_t l = 0; l < L && L > 1; ++l)
      for (int64_t m = 0; m < M; ++m) {
        y1dst[l * M + m] = y1.data() + (l * M + m) * kSegF;
        y1src[m * L + l] = y1.data() + (l * M + m) * kSegF;
      }
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / p.H_out, oy = row % p.H_out;
      cache.template prepare<T>(xp, xs, n, oy);
      next.set(xp, xs, p.C_in, p.H, p.W, n, row + 1 < end && oy + 1 < p.H_out ? (oy + 1) * p.sH - p.pH + (p.kH - 1) * p.dH : -1,
               p.sW);
      for (int64_t p0 = 0; p0 < p.W_out; p0 += kSegF) {
        const int64_t len = std::min(kSegF, p.W_out - p0);
        if (L > 1) {
          primary_segment(g, kern, src.data(), y1dst.data(), p0, len, [&](int64_t l) { next.fetch(p0, len, l, L); });
        } else {
          next.fetch(p0, len, 0, 1);
        }
        for (int64_t oc = 0; oc < C; ++oc) {
          const int64_t c2 = g.c2_of_oc[oc];
          if (direct) {
            dst[c2] = reinterpret_cast<S*>(op + n * os.n + oc * os.c + oy * os.h + p0);
            if (rp) res[c2] = reinterpret_cast<const S*>(rp + n * rs.n + oc * rs.c + oy * rs.h + p0);
          } else {
            dst[c2] = st.data() + oc * kSegF;  // the tile in output-channel order
          }
        }
        RowsArgs<S> b;  // the output rows: shared fields, then the GEMM(s) that write them
        b.P = len;
        b.relu = relu && (direct || !rp);  // else the epilogue adds the residual, then the ReLU
        b.stream = stream;
        if (L == 1) {  // one GEMM straight from the packed input: K1 taps -> M output rows
          b.MB = M;
          b.K = K1;
          b.ldw = M;
          b.soff = p0;
          b.w = g.w1f.data();
          b.bias = g.bf.data();
          b.src = src.data();
          b.dst = dst.data();
          b.res = direct && rp ? res.data() : nullptr;
          kern.rows(b);
        } else {  // the secondary, per group m, from the y1 tile
          b.MB = L;
          b.K = L;
          b.ldw = L;
          b.soff = 0;
          for (int64_t m = 0; m < M; ++m) {
            b.w = g.w2T.data() + m * L * L;
            b.bias = g.b2.empty() ? nullptr : g.b2.data() + m * L;
            b.src = y1src.data() + m * L;
            b.dst = dst.data() + m * L;
            b.res = direct && rp ? res.data() + m * L : nullptr;
            kern.rows(b);
          }
        }
        if (direct) continue;
        // General epilogue from the tile: residual, activation, rounding to T, any output strides.
        const bool late_relu = relu && rp;
        auto finish = [&](S v, int64_t oc, int64_t i) {
          if (rp) v += S(rp[n * rs.n + oc * rs.c + oy * rs.h + (p0 + i) * rs.w]);
          if (late_relu) v = v < S(0) ? S(0) : v;
          return T(v);
        };
        if (os.w == 1) {
          for (int64_t oc = 0; oc < C; ++oc) {
            T* o = op + n * os.n + oc * os.c + oy * os.h + p0;
            const S* t = st.data() + oc * kSegF;
            for (int64_t i = 0; i < len; ++i) o[i] = finish(t[i], oc, i);
          }
        } else if (os.c == 1 && std::is_same<T, S>::value && (!rp || rs.c == 1)) {  // channels_last: a transpose
          S* o = reinterpret_cast<S*>(op + n * os.n + oy * os.h + p0 * os.w);
          TransposeArgs<S> a;
          a.R = C;
          a.C = len;
          a.src = st.data();
          a.lds = kSegF;
          a.dst = o;
          a.ldd = os.w;
          kern.transpose(a);
          if (rp) {
            for (int64_t i = 0; i < len; ++i) {
              S* oi = o + i * os.w;
              const S* r = reinterpret_cast<const S*>(rp + n * rs.n + oy * rs.h + (p0 + i) * rs.w);
              for (int64_t oc = 0; oc < C; ++oc) {
                const S v = oi[oc] + r[oc];
                oi[oc] = late_relu && v < S(0) ? S(0) : v;
              }
            }
          }
        } else {
          for (int64_t i = 0; i < len; ++i)
            for (int64_t oc = 0; oc < C; ++oc)
              op[n * os.n + oc * os.c + oy * os.h + (p0 + i) * os.w] = finish(st[oc * kSegF + i], oc, i);
        }
      }
    }
    if (stream) kern.store_fence();
  });
  return out;
}

}  // namespace

Tensor forward(const IGCConvParams& p, const Tensor& x, const Tensor& w1, const c10::optional<Tensor>& b1,
               const Tensor& w2, const c10::optional<Tensor>& b2, const c10::optional<Tensor>& residual) {
  IGC_CPU_DISPATCH(x.scalar_type(), "igc_conv", [&] { return forward_impl<T, S>(p, x, w1, b1, w2, b2, residual); })
}

}  // namespace cpu
}  // namespace igc
