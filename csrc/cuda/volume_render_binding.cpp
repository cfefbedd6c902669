// Volume rendering on CUDA: cvkernels::volume_render_forward / _backward (schemas in
// csrc/cvkernels.cpp; kernels in csrc/cuda/volume_render.cu, contract in
// csrc/include/cvk_volume_render_cuda.h). Checks the arguments (the same checks as the CPU kernels),
// allocates the outputs and launches; nothing synchronizes with the host.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "cvk_checks.h"
#include "cvk_volume_render_checks.h"
#include "cvk_volume_render_cuda.h"

namespace cvk {
namespace {

using at::Tensor;

vr_cuda::DType dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return vr_cuda::DType::kFloat64;
    case at::kHalf: return vr_cuda::DType::kFloat16;
    case at::kBFloat16: return vr_cuda::DType::kBFloat16;
    default: return vr_cuda::DType::kFloat32;
  }
}

vr_cuda::Problem problem_of(const char* op, const Tensor& sigmas, const Tensor& features,
                            const std::optional<Tensor>& offsets, int64_t num_rays, int64_t spr,
                            const Tensor& background, double threshold) {
  CVK_CHECK_VALUE(sigmas.is_cuda(), op, "sigmas must be a CUDA tensor, got one on ", sigmas.device());
  CVK_CHECK_VALUE(features.size(1) <= vr_cuda::kMaxFeatures, op, "at most ", vr_cuda::kMaxFeatures,
                  " features per sample on CUDA, got ", features.size(1));
  vr_cuda::Problem p;
  p.N = sigmas.size(0);
  p.R = num_rays;
  p.F = features.size(1);
  p.samples_per_ray = spr;
  p.offsets = offsets.has_value() && offsets->defined() ? offsets->const_data_ptr<int64_t>() : nullptr;
  p.bg_per_ray = background.defined() && background.dim() == 2;
  p.threshold = threshold;
  return p;
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> volume_render_forward_cuda(
    const Tensor& sigmas, const Tensor& features, const Tensor& t_starts, const Tensor& t_ends,
    const std::optional<Tensor>& offsets, int64_t num_rays, const std::optional<Tensor>& background,
    double transmittance_threshold, bool return_weights) {
  constexpr const char* op = "volume_render";
  const int64_t spr = vr::check_forward_args(op, sigmas, features, t_starts, t_ends, offsets, num_rays, background,
                                             transmittance_threshold);
  const Tensor bg = vr::background_or_empty(background);
  c10::cuda::CUDAGuard guard(sigmas.device());
  const vr_cuda::Problem p = problem_of(op, sigmas, features, offsets, num_rays, spr, bg, transmittance_threshold);
  const auto opts = sigmas.options();
  const int64_t R = num_rays, F = features.size(1), n = sigmas.size(0);
  const auto acc_opts = opts.dtype(vr::acc_type(sigmas.scalar_type()));
  Tensor color = at::empty({R, F}, opts), opacity = at::empty({R}, opts), depth = at::empty({R}, acc_opts);
  Tensor expected = at::empty({R}, acc_opts), kept = at::empty({R}, opts.dtype(at::kLong));
  // packed: weights of samples outside every ray (malformed offsets) are not written
  Tensor weights = !return_weights ? at::empty({0}, opts) : (p.offsets ? at::zeros({n}, opts) : at::empty({n}, opts));
  C10_CUDA_CHECK(vr_cuda::forward(dtype_of(sigmas), p, sigmas.const_data_ptr(), features.const_data_ptr(),
                                  t_starts.const_data_ptr(), t_ends.const_data_ptr(),
                                  bg.defined() ? bg.const_data_ptr() : nullptr, color.mutable_data_ptr(),
                                  opacity.mutable_data_ptr(), depth.mutable_data_ptr(), expected.mutable_data_ptr(),
                                  return_weights ? weights.mutable_data_ptr() : nullptr,
                                  kept.mutable_data_ptr<int64_t>(), c10::cuda::getCurrentCUDAStream().stream()));
  return {color, opacity, depth, expected, weights, kept};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> volume_render_backward_cuda(
    const Tensor& grad_color, const Tensor& grad_opacity, const Tensor& grad_depth, const Tensor& grad_expected_depth,
    const std::optional<Tensor>& grad_weights, const Tensor& sigmas, const Tensor& features, const Tensor& t_starts,
    const Tensor& t_ends, const std::optional<Tensor>& offsets, int64_t num_rays,
    const std::optional<Tensor>& background, const Tensor& opacity, const Tensor& depth, const Tensor& num_kept,
    bool t_grad) {
  constexpr const char* op = "volume_render_backward";
  const int64_t spr = vr::check_forward_args(op, sigmas, features, t_starts, t_ends, offsets, num_rays, background,
                                             0.0);
  const int64_t R = num_rays, F = features.size(1), n = sigmas.size(0);
  vr::check_backward_grads(op, grad_color, grad_opacity, grad_depth, grad_expected_depth, grad_weights, sigmas,
                           opacity, depth, num_kept, R, F);
  const bool has_gw = grad_weights.has_value() && grad_weights->defined();

  const Tensor bg = vr::background_or_empty(background);
  c10::cuda::CUDAGuard guard(sigmas.device());
  const vr_cuda::Problem p = problem_of(op, sigmas, features, offsets, num_rays, spr, bg, 0.0);
  vr::BackwardOutputs g = vr::backward_outputs(sigmas, features, t_starts, p.offsets != nullptr, t_grad);
  Tensor &g_sig = g.sigmas, &g_feat = g.features, &g_ts = g.t_starts, &g_te = g.t_ends;
  // v_i - Q_{i+1} per sample in the accumulation type: grad_sigmas itself when it has that type
  const at::ScalarType acc = vr::acc_type(sigmas.scalar_type());
  Tensor workspace = sigmas.scalar_type() == acc ? g_sig : at::empty({n}, sigmas.options().dtype(acc));
  C10_CUDA_CHECK(vr_cuda::backward(
      dtype_of(sigmas), p, grad_color.const_data_ptr(), grad_opacity.const_data_ptr(), grad_depth.const_data_ptr(),
      grad_expected_depth.const_data_ptr(), has_gw ? grad_weights->const_data_ptr() : nullptr,
      sigmas.const_data_ptr(), features.const_data_ptr(), t_starts.const_data_ptr(), t_ends.const_data_ptr(),
      bg.defined() ? bg.const_data_ptr() : nullptr, opacity.const_data_ptr(), depth.const_data_ptr(),
      num_kept.const_data_ptr<int64_t>(), workspace.mutable_data_ptr(), g_sig.mutable_data_ptr(),
      g_feat.mutable_data_ptr(), t_grad ? g_ts.mutable_data_ptr() : nullptr,
      t_grad ? g_te.mutable_data_ptr() : nullptr, c10::cuda::getCurrentCUDAStream().stream()));
  return {g_sig, g_feat, g_ts, g_te};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvkernels, CUDA, m) {
  m.impl("volume_render_forward", TORCH_FN(volume_render_forward_cuda));
  m.impl("volume_render_backward", TORCH_FN(volume_render_backward_cuda));
}

}  // namespace cvk
