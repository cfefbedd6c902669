// Argument checks shared by the volume-rendering CPU kernels and CUDA binding (torch-facing).
// Layout contract (csrc/cvkernels.cpp): sigmas (N,), features (N, F) of one floating dtype T;
// t_starts / t_ends (N,) in the accumulation type A (float32, float64 when T is float64); offsets
// (R + 1,) int64 for packed rays or undefined for dense rays of N / R samples each; background
// undefined, (F,) or (R, F) in T. Everything contiguous and on one device.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <utility>

#include "cvk_checks.h"

namespace cvk {
namespace vr {

inline at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

inline void check_contiguous(const char* op, const char* name, const at::Tensor& t) {
  CVK_CHECK_VALUE(t.is_contiguous(), op, name, " must be contiguous");
}

// Returns the dense samples per ray (0 for packed input).
inline int64_t check_samples(const char* op, const at::Tensor& sigmas, const at::Tensor& features,
                             const at::Tensor& t_starts, const at::Tensor& t_ends,
                             const std::optional<at::Tensor>& offsets, int64_t num_rays) {
  CVK_CHECK_VALUE(sigmas.dim() == 1, op, "sigmas must be 1-D (N,), got shape ", sigmas.sizes());
  check_kernel_float(op, "sigmas", sigmas);
  const int64_t n = sigmas.size(0);
  CVK_CHECK_VALUE(features.dim() == 2 && features.size(0) == n, op, "features must have shape (", n,
                  ", F), got ", features.sizes());
  check_same_dtype(op, "features", features, "sigmas", sigmas);
  const at::ScalarType acc = acc_type(sigmas.scalar_type());
  for (const auto* t : {&t_starts, &t_ends}) {
    const char* name = t == &t_starts ? "t_starts" : "t_ends";
    CVK_CHECK_VALUE(t->dim() == 1 && t->size(0) == n, op, name, " must have shape (", n, ",), got ", t->sizes());
    CVK_CHECK_TYPE(t->scalar_type() == acc, op, name, " must be ", dtype_name(acc), " (the accumulation type of ",
                   dtype_name(sigmas.scalar_type()), " samples), got ", dtype_name(t->scalar_type()));
    check_same_device(op, name, *t, "sigmas", sigmas);
    check_contiguous(op, name, *t);
  }
  check_same_device(op, "features", features, "sigmas", sigmas);
  check_contiguous(op, "sigmas", sigmas);
  check_contiguous(op, "features", features);
  CVK_CHECK_VALUE(num_rays >= 0, op, "num_rays must be >= 0, got ", num_rays);
  if (offsets.has_value() && offsets->defined()) {
    CVK_CHECK_VALUE(offsets->dim() == 1 && offsets->size(0) == num_rays + 1, op, "offsets must have shape (",
                    num_rays + 1, ",) (num_rays + 1), got ", offsets->sizes());
    CVK_CHECK_TYPE(offsets->scalar_type() == at::kLong, op, "offsets must be int64, got ",
                   dtype_name(offsets->scalar_type()));
    check_same_device(op, "offsets", *offsets, "sigmas", sigmas);
    check_contiguous(op, "offsets", *offsets);
    return 0;
  }
  CVK_CHECK_VALUE((num_rays == 0 && n == 0) || (num_rays > 0 && n % num_rays == 0), op, "dense input: ", n,
                  " samples do not split into ", num_rays, " rays of equal length");
  return num_rays > 0 ? n / num_rays : 0;
}

inline void check_background(const char* op, const std::optional<at::Tensor>& background, const at::Tensor& features,
                             int64_t num_rays) {
  if (!background.has_value() || !background->defined()) return;
  const int64_t f = features.size(1);
  const at::Tensor& b = *background;
  CVK_CHECK_VALUE((b.dim() == 1 && b.size(0) == f) || (b.dim() == 2 && b.size(0) == num_rays && b.size(1) == f), op,
                  "background must have shape (", f, ",) or (", num_rays, ", ", f, "), got ", b.sizes());
  check_same_dtype(op, "background", b, "features", features);
  check_same_device(op, "background", b, "features", features);
  check_contiguous(op, "background", b);
}

// Per-ray gradient / saved tensors of shape (R,) (or (R, F) for the colour gradient).
inline void check_per_ray(const char* op, const char* name, const at::Tensor& t, int64_t num_rays, int64_t f,
                          const at::Tensor& ref) {
  if (f < 0) {
    CVK_CHECK_VALUE(t.dim() == 1 && t.size(0) == num_rays, op, name, " must have shape (", num_rays, ",), got ",
                    t.sizes());
  } else {
    CVK_CHECK_VALUE(t.dim() == 2 && t.size(0) == num_rays && t.size(1) == f, op, name, " must have shape (",
                    num_rays, ", ", f, "), got ", t.sizes());
  }
  check_same_device(op, name, t, "sigmas", ref);
  check_contiguous(op, name, t);
}

// All forward arguments; returns the dense samples per ray (0 for packed input).
inline int64_t check_forward_args(const char* op, const at::Tensor& sigmas, const at::Tensor& features,
                                  const at::Tensor& t_starts, const at::Tensor& t_ends,
                                  const std::optional<at::Tensor>& offsets, int64_t num_rays,
                                  const std::optional<at::Tensor>& background, double threshold) {
  const int64_t spr = check_samples(op, sigmas, features, t_starts, t_ends, offsets, num_rays);
  check_background(op, background, features, num_rays);
  CVK_CHECK_VALUE(threshold >= 0 && threshold <= 1, op, "transmittance_threshold must be in [0, 1], got ",
                  threshold);
  return spr;
}

// The backward's per-ray gradients and saved outputs and grad_weights.
inline void check_backward_grads(const char* op, const at::Tensor& grad_color, const at::Tensor& grad_opacity,
                                 const at::Tensor& grad_depth, const at::Tensor& grad_expected_depth,
                                 const std::optional<at::Tensor>& grad_weights, const at::Tensor& sigmas,
                                 const at::Tensor& opacity, const at::Tensor& depth, const at::Tensor& num_kept,
                                 int64_t num_rays, int64_t num_features) {
  check_per_ray(op, "grad_color", grad_color, num_rays, num_features, sigmas);
  check_same_dtype(op, "grad_color", grad_color, "sigmas", sigmas);
  const at::ScalarType acc = acc_type(sigmas.scalar_type());
  // colour and opacity in the samples' dtype, depths in the intervals' (accumulation) dtype
  const std::pair<const char*, const at::Tensor*> per_ray[] = {
      {"grad_opacity", &grad_opacity}, {"opacity", &opacity}, {"grad_depth", &grad_depth},
      {"grad_expected_depth", &grad_expected_depth}, {"depth", &depth}};
  for (const auto& [name, t] : per_ray) {
    check_per_ray(op, name, *t, num_rays, -1, sigmas);
    const at::ScalarType want = t == &grad_opacity || t == &opacity ? sigmas.scalar_type() : acc;
    CVK_CHECK_TYPE(t->scalar_type() == want, op, name, " must be ", dtype_name(want), ", got ",
                   dtype_name(t->scalar_type()));
  }
  check_per_ray(op, "num_kept", num_kept, num_rays, -1, sigmas);
  CVK_CHECK_TYPE(num_kept.scalar_type() == at::kLong, op, "num_kept must be int64, got ",
                 dtype_name(num_kept.scalar_type()));
  if (grad_weights.has_value() && grad_weights->defined()) {
    const int64_t n = sigmas.size(0);
    CVK_CHECK_VALUE(grad_weights->dim() == 1 && grad_weights->size(0) == n, op, "grad_weights must have shape (", n,
                    ",), got ", grad_weights->sizes());
    check_contiguous(op, "grad_weights", *grad_weights);
    check_same_dtype(op, "grad_weights", *grad_weights, "sigmas", sigmas);
    check_same_device(op, "grad_weights", *grad_weights, "sigmas", sigmas);
  }
}

// The backward's outputs: grad_sigmas (N,), grad_features (N, F), and grad_t_starts / grad_t_ends
// (N,) with t_grad, else empty. Zeroed for packed rays (samples outside every ray, possible only
// with malformed offsets, are not written by the kernels), uninitialized for dense ones.
struct BackwardOutputs {
  at::Tensor sigmas, features, t_starts, t_ends;
};

inline BackwardOutputs backward_outputs(const at::Tensor& sigmas, const at::Tensor& features,
                                        const at::Tensor& t_starts, bool packed, bool t_grad) {
  const int64_t n = sigmas.size(0), f = features.size(1);
  auto alloc = [&](at::IntArrayRef size, const at::TensorOptions& o) {
    return packed ? at::zeros(size, o) : at::empty(size, o);
  };
  const auto t_opts = t_starts.options();
  return {alloc({n}, sigmas.options()), alloc({n, f}, features.options()),
          t_grad ? alloc({n}, t_opts) : at::empty({0}, t_opts), t_grad ? alloc({n}, t_opts) : at::empty({0}, t_opts)};
}

inline at::Tensor background_or_empty(const std::optional<at::Tensor>& background) {
  return background.has_value() && background->defined() ? *background : at::Tensor();
}

}  // namespace vr
}  // namespace cvk
