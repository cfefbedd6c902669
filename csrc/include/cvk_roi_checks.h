// Argument checks shared by the RoI Align / RoI Pool / NMS CPU kernels and CUDA bindings (torch-facing).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <optional>

#include "cvk_checks.h"

namespace cvk {
namespace roi {

// input (N, C, H, W) floating; rois (K, 5) floating on input's device; positive pooled sizes;
// spatial_scale finite and >= 0; mode 0 (avg) or 1 (max).
inline void check_forward_args(const char* op, const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                               int64_t PH, int64_t PW, int64_t mode) {
  CVK_CHECK_VALUE(input.dim() == 4, op, "input must be 4-D (N, C, H, W), got shape ", input.sizes());
  check_kernel_float(op, "input", input);
  CVK_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, op,
                  "rois must have shape (K, 5) (batch index, x1, y1, x2, y2), got ", rois.sizes());
  CVK_CHECK_TYPE(rois.is_floating_point(), op, "rois must be floating point, got ", dtype_name(rois.scalar_type()));
  check_same_device(op, "rois", rois, "input", input);
  CVK_CHECK_VALUE(PH > 0 && PW > 0, op, "output_size must be positive, got (", PH, ", ", PW, ")");
  CVK_CHECK_VALUE(std::isfinite(spatial_scale) && spatial_scale >= 0, op,
                  "spatial_scale must be finite and non-negative, got ", spatial_scale);
  CVK_CHECK_VALUE(mode == 0 || mode == 1, op, "mode must be 0 (avg) or 1 (max), got ", mode);
  CVK_CHECK_VALUE(input.size(2) < (int64_t(1) << 31) && input.size(3) < (int64_t(1) << 31) && PH < (int64_t(1) << 31) &&
                      PW < (int64_t(1) << 31),
                  op, "spatial sizes must fit 32-bit ints");
}

inline void check_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois, int64_t PH, int64_t PW,
                                int64_t N, int64_t C, int64_t H, int64_t W) {
  CVK_CHECK_VALUE(rois.dim() == 2 && rois.size(1) == 5, op, "rois must have shape (K, 5), got ", rois.sizes());
  check_kernel_float(op, "grad", grad);
  check_same_device(op, "rois", rois, "grad", grad);
  CVK_CHECK_VALUE(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == C && grad.size(2) == PH &&
                      grad.size(3) == PW,
                  op, "grad must have shape (", rois.size(0), ", ", C, ", ", PH, ", ", PW, "), got ", grad.sizes());
  CVK_CHECK_VALUE(N >= 0 && C >= 0 && H > 0 && W > 0, op, "bad input size (", N, ", ", C, ", ", H, ", ", W, ")");
}

// Batch indices of CPU rois in [0, N) (reads the rois: CPU only).
inline void check_batch_indices_cpu(const char* op, const at::Tensor& rois_a, int64_t N) {
  if (rois_a.size(0) == 0) return;
  const at::Tensor idx = rois_a.select(1, 0);
  const double lo = idx.min().item<double>(), hi = idx.max().item<double>();
  CVK_CHECK_VALUE(lo >= 0 && hi < static_cast<double>(N) && std::isfinite(lo) && std::isfinite(hi), op,
                  "rois[:, 0] (batch index) must be in [0, ", N, ") for an input of batch size ", N,
                  ", got values in [", lo, ", ", hi, "]");
}

// boxes (N, 4), scores (N,) of boxes' dtype and device, idxs (N,) integer or absent.
inline void check_nms_args(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                           const std::optional<at::Tensor>& idxs,
                    double iou_threshold, int64_t max_output) {
  CVK_CHECK_VALUE(boxes.dim() == 2 && boxes.size(1) == 4, op, "boxes must have shape (N, 4) (x1, y1, x2, y2), got ",
                  boxes.sizes());
  CVK_CHECK_VALUE(scores.dim() == 1 && scores.size(0) == boxes.size(0), op, "scores must have shape (",
                  boxes.size(0), ",) (one per box), got ", scores.sizes());
  check_kernel_float(op, "boxes", boxes);
  check_same_dtype(op, "scores", scores, "boxes", boxes);
  check_same_device(op, "scores", scores, "boxes", boxes);
  if (idxs.has_value() && idxs->defined()) {
    CVK_CHECK_VALUE(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), op, "idxs must have shape (", boxes.size(0),
                    ",) (one category per box), got ", idxs->sizes());
    CVK_CHECK_TYPE(!idxs->is_floating_point() && !idxs->is_complex() && idxs->scalar_type() != at::kBool, op,
                   "idxs must be an integer tensor, got ", dtype_name(idxs->scalar_type()));
    check_same_device(op, "idxs", *idxs, "boxes", boxes);
  }
  CVK_CHECK_VALUE(!std::isnan(iou_threshold), op, "iou_threshold must not be NaN");
  CVK_CHECK_VALUE(max_output >= -1, op, "max_output must be >= 0, or -1 for no limit, got ", max_output);
}

}  // namespace roi
}  // namespace cvk
