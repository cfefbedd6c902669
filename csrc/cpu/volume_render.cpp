// Volume rendering on CPU: cvkernels::volume_render_forward / _backward (schemas in
// csrc/cvkernels.cpp, quadrature and gradient derivation in csrc/include/cvk_volume_render.h).
//
// Parallel over rays; each ray is one sequential pass over its samples (forward) or a reverse pass
// for Q followed by a forward pass (backward), accumulating in float (double for float64). The
// transmittance is the running product T_{i+1} = T_i (1 - alpha_i) (one exp per sample; the CUDA
// kernel takes exp of its scanned prefix instead, equal up to rounding). The
// summation order is fixed per ray, so results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "cvk_checks.h"
#include "cvk_volume_render.h"
#include "cvk_volume_render_checks.h"

namespace cvk {
namespace {

using at::Tensor;

template <typename T>
void forward_impl(const Tensor& sigmas, const Tensor& features, const Tensor& t_starts, const Tensor& t_ends,
                  const int64_t* offsets, int64_t spr, int64_t R, const Tensor& background, double threshold,
                  Tensor& color, Tensor& opacity, Tensor& depth, Tensor& expected, Tensor& weights, Tensor& kept) {
  using A = at::opmath_type<T>;
  const int64_t n = sigmas.size(0), F = features.size(1);
  const T* sig = sigmas.const_data_ptr<T>();
  const T* feat = features.const_data_ptr<T>();
  const A* ts = t_starts.const_data_ptr<A>();
  const A* te = t_ends.const_data_ptr<A>();
  const T* bg = background.defined() ? background.const_data_ptr<T>() : nullptr;
  const int64_t bg_stride = background.defined() && background.dim() == 2 ? F : 0;
  T* out_c = color.mutable_data_ptr<T>();
  T* out_o = opacity.mutable_data_ptr<T>();
  A* out_d = depth.mutable_data_ptr<A>();
  A* out_e = expected.mutable_data_ptr<A>();
  T* out_w = weights.defined() ? weights.mutable_data_ptr<T>() : nullptr;
  int64_t* out_k = kept.mutable_data_ptr<int64_t>();
  const A thr = static_cast<A>(threshold);

  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    std::vector<A> acc(F);
    for (int64_t r = r0; r < r1; ++r) {
      int64_t b, e;
      vr::ray_range(offsets, spr, r, n, &b, &e);
      std::fill(acc.begin(), acc.end(), A(0));
      A trans = 1, o = 0, d = 0;  // T_i as the running product of (1 - alpha): one exp per sample
      int64_t i = b;
      for (; i < e; ++i) {
        if (trans < thr) break;
        const A alpha = vr::alpha_of(static_cast<A>(sig[i]) * (te[i] - ts[i]));
        const A w = trans * alpha;
        o += w;
        d += w * (A(0.5) * (ts[i] + te[i]));
        const T* c = feat + i * F;
        for (int64_t f = 0; f < F; ++f) acc[f] += w * static_cast<A>(c[f]);
        if (out_w) out_w[i] = static_cast<T>(w);
        trans *= A(1) - alpha;
      }
      out_k[r] = i - b;
      if (out_w)
        for (int64_t j = i; j < e; ++j) out_w[j] = T(0);
      for (int64_t f = 0; f < F; ++f) {
        const A bgf = bg ? static_cast<A>(bg[r * bg_stride + f]) : A(0);
        out_c[r * F + f] = static_cast<T>(acc[f] + (A(1) - o) * bgf);
      }
      out_o[r] = static_cast<T>(o);
      out_d[r] = d;
      out_e[r] = o > A(0) ? d / o : A(0);
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> volume_render_forward_cpu(
    const Tensor& sigmas, const Tensor& features, const Tensor& t_starts, const Tensor& t_ends,
    const std::optional<Tensor>& offsets, int64_t num_rays, const std::optional<Tensor>& background,
    double transmittance_threshold, bool return_weights) {
  constexpr const char* op = "volume_render";
  const int64_t spr = vr::check_forward_args(op, sigmas, features, t_starts, t_ends, offsets, num_rays, background,
                                             transmittance_threshold);
  check_cpu(op, "sigmas", sigmas);
  const int64_t R = num_rays, F = features.size(1), n = sigmas.size(0);
  const auto opts = sigmas.options();
  const auto acc_opts = opts.dtype(vr::acc_type(sigmas.scalar_type()));
  Tensor color = at::empty({R, F}, opts), opacity = at::empty({R}, opts), depth = at::empty({R}, acc_opts);
  Tensor expected = at::empty({R}, acc_opts);
  // weights of samples outside every ray (only with malformed offsets) stay 0
  Tensor weights = return_weights ? at::zeros({n}, opts) : at::empty({0}, opts);
  Tensor kept = at::empty({R}, opts.dtype(at::kLong));
  const Tensor bg = vr::background_or_empty(background);
  const int64_t* off = offsets.has_value() && offsets->defined() ? offsets->const_data_ptr<int64_t>() : nullptr;
  Tensor w_out = return_weights ? weights : Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sigmas.scalar_type(), "volume_render_forward_cpu", [&] {
    forward_impl<scalar_t>(sigmas, features, t_starts, t_ends, off, spr, R, bg, transmittance_threshold, color,
                           opacity, depth, expected, w_out, kept);
  });
  return {color, opacity, depth, expected, weights, kept};
}

template <typename T>
void backward_impl(const Tensor& g_color, const Tensor& g_opacity, const Tensor& g_depth, const Tensor& g_expected,
                   const Tensor& g_weights, const Tensor& sigmas, const Tensor& features, const Tensor& t_starts,
                   const Tensor& t_ends, const int64_t* offsets, int64_t spr, int64_t R, const Tensor& background,
                   const Tensor& opacity, const Tensor& depth, const Tensor& kept, Tensor& g_sig, Tensor& g_feat,
                   Tensor& g_ts, Tensor& g_te) {
  using A = at::opmath_type<T>;
  const int64_t n = sigmas.size(0), F = features.size(1);
  const T* sig = sigmas.const_data_ptr<T>();
  const T* feat = features.const_data_ptr<T>();
  const A* ts = t_starts.const_data_ptr<A>();
  const A* te = t_ends.const_data_ptr<A>();
  const T* bg = background.defined() ? background.const_data_ptr<T>() : nullptr;
  const int64_t bg_stride = background.defined() && background.dim() == 2 ? F : 0;
  const T* gc = g_color.const_data_ptr<T>();
  const T* go = g_opacity.const_data_ptr<T>();
  const A* gd = g_depth.const_data_ptr<A>();
  const A* ge = g_expected.const_data_ptr<A>();
  const T* gw = g_weights.defined() ? g_weights.const_data_ptr<T>() : nullptr;
  const T* op_ = opacity.const_data_ptr<T>();
  const A* dp = depth.const_data_ptr<A>();
  const int64_t* kp = kept.const_data_ptr<int64_t>();
  T* gs = g_sig.mutable_data_ptr<T>();
  T* gf = g_feat.mutable_data_ptr<T>();
  A* gts = g_ts.defined() ? g_ts.mutable_data_ptr<A>() : nullptr;
  A* gte = g_te.defined() ? g_te.mutable_data_ptr<A>() : nullptr;

  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    std::vector<A> q, v, gcr(F);
    for (int64_t r = r0; r < r1; ++r) {
      int64_t b, e;
      vr::ray_range(offsets, spr, r, n, &b, &e);
      int64_t k = kp[r];
      k = k < 0 ? 0 : (k > e - b ? e - b : k);
      const vr::RayGrad<A> rg = vr::ray_grad<A>(static_cast<A>(go[r]), gd[r], ge[r], static_cast<A>(op_[r]), dp[r]);
      A base = rg.base;
      for (int64_t f = 0; f < F; ++f) {
        gcr[f] = static_cast<A>(gc[r * F + f]);
        if (bg) base -= gcr[f] * static_cast<A>(bg[r * bg_stride + f]);
      }
      // v_i, then Q_i by the reverse recurrence (q[k] = 0 past the last kept sample)
      v.resize(k);
      q.assign(k + 1, A(0));
      for (int64_t j = 0; j < k; ++j) {
        const int64_t i = b + j;
        const T* c = feat + i * F;
        A vi = base + rg.t_factor * (A(0.5) * (ts[i] + te[i]));
        for (int64_t f = 0; f < F; ++f) vi += gcr[f] * static_cast<A>(c[f]);
        if (gw) vi += static_cast<A>(gw[i]);
        v[j] = vi;
      }
      for (int64_t j = k - 1; j >= 0; --j) {
        const int64_t i = b + j;
        const A alpha = vr::alpha_of(static_cast<A>(sig[i]) * (te[i] - ts[i]));
        q[j] = v[j] * alpha + (A(1) - alpha) * q[j + 1];
      }
      A trans = 1;
      for (int64_t j = 0; j < k; ++j) {
        const int64_t i = b + j;
        const A s = static_cast<A>(sig[i]), delta = te[i] - ts[i];
        const A alpha = vr::alpha_of(s * delta);
        const A w = trans * alpha;
        trans *= A(1) - alpha;  // T_{i+1}
        const A g_tau = trans * (v[j] - q[j + 1]);
        gs[i] = static_cast<T>(delta * g_tau);
        for (int64_t f = 0; f < F; ++f) gf[i * F + f] = static_cast<T>(w * gcr[f]);
        if (gts) {
          const A g_mid = A(0.5) * w * rg.t_factor;
          gts[i] = -s * g_tau + g_mid;
          gte[i] = s * g_tau + g_mid;
        }
      }
      for (int64_t i = b + k; i < e; ++i) {
        gs[i] = T(0);
        for (int64_t f = 0; f < F; ++f) gf[i * F + f] = T(0);
        if (gts) gts[i] = gte[i] = A(0);
      }
    }
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor> volume_render_backward_cpu(
    const Tensor& grad_color, const Tensor& grad_opacity, const Tensor& grad_depth, const Tensor& grad_expected_depth,
    const std::optional<Tensor>& grad_weights, const Tensor& sigmas, const Tensor& features, const Tensor& t_starts,
    const Tensor& t_ends, const std::optional<Tensor>& offsets, int64_t num_rays,
    const std::optional<Tensor>& background, const Tensor& opacity, const Tensor& depth, const Tensor& num_kept,
    bool t_grad) {
  constexpr const char* op = "volume_render_backward";
  const int64_t spr = vr::check_forward_args(op, sigmas, features, t_starts, t_ends, offsets, num_rays, background,
                                             0.0);
  check_cpu(op, "sigmas", sigmas);
  const int64_t R = num_rays, F = features.size(1);
  vr::check_backward_grads(op, grad_color, grad_opacity, grad_depth, grad_expected_depth, grad_weights, sigmas,
                           opacity, depth, num_kept, R, F);
  const bool has_gw = grad_weights.has_value() && grad_weights->defined();
  const bool packed = offsets.has_value() && offsets->defined();
  vr::BackwardOutputs g = vr::backward_outputs(sigmas, features, t_starts, packed, t_grad);
  Tensor &g_sig = g.sigmas, &g_feat = g.features, &g_ts = g.t_starts, &g_te = g.t_ends;
  Tensor gts_arg = t_grad ? g_ts : Tensor(), gte_arg = t_grad ? g_te : Tensor();
  const Tensor bg = vr::background_or_empty(background);
  const Tensor gw = has_gw ? *grad_weights : Tensor();
  const int64_t* off = packed ? offsets->const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, sigmas.scalar_type(), "volume_render_backward_cpu", [&] {
    backward_impl<scalar_t>(grad_color, grad_opacity, grad_depth, grad_expected_depth, gw, sigmas, features, t_starts,
                            t_ends, off, spr, R, bg, opacity, depth, num_kept, g_sig, g_feat, gts_arg, gte_arg);
  });
  return {g_sig, g_feat, g_ts, g_te};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvkernels, CPU, m) {
  m.impl("volume_render_forward", TORCH_FN(volume_render_forward_cpu));
  m.impl("volume_render_backward", TORCH_FN(volume_render_backward_cpu));
}

}  // namespace cvk
