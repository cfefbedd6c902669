// RoI Align / RoI Pool on CUDA: cvkernels::roi_align_forward / _backward, roi_align_multilevel_forward /
// _backward, roi_pool_forward / _backward (schemas in csrc/cvkernels.cpp; kernels in
// csrc/cuda/roi_align.cu, contract in csrc/include/cvk_roi_cuda.h).
//
// This side checks the arguments, converts rois to the accumulation type, reads the input through
// its strides (channels_last needs no copy), allocates outputs, and picks the backward kernel:
// the gather (no atomics, bitwise reproducible) when `deterministic`, the atomic scatter otherwise.
// Gradients accumulate in float (double for float64) and are cast to grad's dtype and the requested
// memory format at the end. Batch indices and levels are not read on the host (no synchronization):
// a RoI whose index is outside [0, N) or whose level is outside [0, L) reads nothing and gives zeros
// (the Python wrapper reports a bad batch index). Every op is one launch over a table of levels
// (the one-level ops: a table of one).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <tuple>
#include <vector>

#include "cvk_checks.h"
#include "cvk_roi.h"
#include "cvk_roi_checks.h"
#include "cvk_roi_cuda.h"

namespace cvk {

// Declared here, not in cvk_roi_cuda.h / cvk_roi_checks.h, which this change does not own.
namespace roi_cuda {
// csrc/cuda/roi_align.cu: the multi-level launchers (the contract is written there).
cudaError_t forward_multilevel(DType dtype, const Problem* levels, int count, const void* const* inputs,
                               const int64_t* level_of, const void* rois, void* out, int32_t* argmax,
                               cudaStream_t stream);
cudaError_t backward_atomic_multilevel(DType dtype, const Problem* levels, int count, const int64_t* level_of,
                                       const void* grad, const void* rois, const int32_t* argmax,
                                       void* const* grad_inputs, cudaStream_t stream);
cudaError_t backward_gather_multilevel(DType dtype, const Problem* levels, int count, const void* grad,
                                       const void* rois, const int32_t* argmax, const int64_t* order,
                                       const int64_t* group_start, void* const* grad_inputs, cudaStream_t stream);
}  // namespace roi_cuda

namespace roi {
// csrc/cpu/roi_align.cpp: the multi-level argument checks shared with the CPU kernels.
void check_multilevel_forward_args(const char* op, at::TensorList features, const at::Tensor& rois,
                                   const at::Tensor& levels, at::ArrayRef<double> scales, int64_t PH, int64_t PW,
                                   int64_t mode);
void check_multilevel_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                    const at::Tensor& levels, at::ArrayRef<double> scales, int64_t PH, int64_t PW,
                                    int64_t N, int64_t C, at::IntArrayRef heights, at::IntArrayRef widths,
                                    int64_t num_channels_last, int64_t mode);
}  // namespace roi

namespace {

using at::Tensor;

roi_cuda::DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return roi_cuda::DType::kFloat32;
    case at::kDouble: return roi_cuda::DType::kFloat64;
    case at::kHalf: return roi_cuda::DType::kFloat16;
    case at::kBFloat16: return roi_cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, "roi_align: unsupported dtype ", dtype_name(t));
  }
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

void check_cuda(const char* op, const char* name, const Tensor& t) {
  CVK_CHECK_VALUE(t.is_cuda(), op, name, " must be a CUDA tensor, got one on ", t.device());
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Per-level problems for the launchers: the shared fields in every entry, each level's H, W,
// (forward) strides and spatial scale.
std::vector<roi_cuda::Problem> level_problems(int64_t N, int64_t C, int64_t K, int64_t PH, int64_t PW, int64_t sr,
                                              bool aligned, int kind, at::ArrayRef<double> scales,
                                              at::IntArrayRef heights, at::IntArrayRef widths,
                                              at::TensorList inputs) {
  std::vector<roi_cuda::Problem> levels(scales.size());
  for (size_t l = 0; l < levels.size(); ++l) {
    roi_cuda::Problem& p = levels[l];
    p.N = N;
    p.C = C;
    p.K = K;
    p.H = static_cast<int>(heights[l]);
    p.W = static_cast<int>(widths[l]);
    p.PH = static_cast<int>(PH);
    p.PW = static_cast<int>(PW);
    if (!inputs.empty()) {
      p.sN = inputs[l].stride(0);
      p.sC = inputs[l].stride(1);
      p.sH = inputs[l].stride(2);
      p.sW = inputs[l].stride(3);
    }
    p.spatial_scale = scales[l];
    p.sampling_ratio = static_cast<int>(sr);
    p.aligned = aligned;
    p.kind = kind;
  }
  return levels;
}

// The forward over `inputs` (levels undefined: one level, every RoI on it), arguments checked.
std::tuple<Tensor, Tensor> forward_levels(const char* op, at::TensorList inputs, at::ArrayRef<double> scales,
                                          const Tensor& rois, const Tensor& levels, int64_t PH, int64_t PW, int64_t sr,
                                          bool aligned, int kind) {
  for (const Tensor& f : inputs) check_cuda(op, "input", f);
  const Tensor& x0 = inputs[0];
  c10::cuda::CUDAGuard guard(x0.device());
  const int64_t K = rois.size(0), C = x0.size(1);
  Tensor out = at::empty({K, C, PH, PW}, x0.options());
  const bool has_arg = kind != roi::kAvg;
  Tensor argmax = at::empty(has_arg ? at::IntArrayRef({K, C, PH, PW}) : at::IntArrayRef({0}),
                            x0.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  std::vector<int64_t> heights, widths;
  for (const Tensor& f : inputs) {
    CVK_CHECK_VALUE(f.size(2) > 0 && f.size(3) > 0, op, "input must have a positive height and width, got ",
                    f.sizes());
    CVK_CHECK_VALUE(kind != 2 || f.size(2) * f.size(3) < (int64_t(1) << 31), op,
                    "input height * width must fit 32-bit argmax indices");
    heights.push_back(f.size(2));
    widths.push_back(f.size(3));
  }
  const Tensor rois_a = rois.to(acc_type(x0.scalar_type())).contiguous();
  const Tensor level_t = levels.defined() ? levels.contiguous() : Tensor();
  const auto problems =
      level_problems(x0.size(0), C, K, PH, PW, sr, aligned, kind, scales, heights, widths, inputs);
  std::vector<const void*> ptrs;
  for (const Tensor& f : inputs) ptrs.push_back(f.const_data_ptr());
  C10_CUDA_CHECK(roi_cuda::forward_multilevel(
      kernel_dtype(x0.scalar_type()), problems.data(), static_cast<int>(problems.size()), ptrs.data(),
      level_t.defined() ? level_t.const_data_ptr<int64_t>() : nullptr, rois_a.const_data_ptr(),
      out.mutable_data_ptr(), has_arg ? argmax.mutable_data_ptr<int32_t>() : nullptr, stream()));
  return {out, argmax};
}

// The backward: one gradient per level (levels undefined: one level, every RoI on it), arguments
// checked. The deterministic gather walks the RoIs sorted by level * N + batch index; a RoI whose
// level or batch index is out of range gets key -1 and is walked by no block.
std::vector<Tensor> backward_levels(const char* op, const Tensor& grad, const Tensor& rois, const Tensor& levels,
                                    const Tensor& argmax, at::ArrayRef<double> scales, int64_t PH, int64_t PW,
                                    int64_t N, int64_t C, at::IntArrayRef heights, at::IntArrayRef widths, int64_t sr,
                                    bool aligned, int kind, const std::vector<bool>& channels_last,
                                    bool deterministic) {
  check_cuda(op, "grad", grad);
  if (kind != roi::kAvg) {
    CVK_CHECK_VALUE(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt, op,
                    "argmax must be int32 with grad's shape ", grad.sizes(), ", got ", argmax.sizes());
    check_same_device(op, "argmax", argmax, "grad", grad);
  }
  c10::cuda::CUDAGuard guard(grad.device());
  const int64_t L = static_cast<int64_t>(scales.size());
  const at::ScalarType at_ = acc_type(grad.scalar_type());
  std::vector<Tensor> gin(L);
  const auto fmt = [&](int64_t l) {
    return channels_last[l] ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  };
  if (grad.numel() == 0 || N * C == 0) {
    for (int64_t l = 0; l < L; ++l)
      gin[l] = at::zeros({N, C, heights[l], widths[l]}, grad.options()).contiguous(fmt(l));
    return gin;
  }
  const Tensor rois_a = rois.to(at_).contiguous();
  const Tensor g = grad.contiguous();
  const Tensor am = kind != roi::kAvg ? argmax.contiguous() : Tensor();
  const Tensor level_t = levels.defined() ? levels.contiguous() : Tensor();
  const auto problems = level_problems(N, C, rois.size(0), PH, PW, sr, aligned, kind, scales, heights, widths, {});
  const int32_t* amp = am.defined() ? am.const_data_ptr<int32_t>() : nullptr;
  std::vector<void*> ptrs(L);
  for (int64_t l = 0; l < L; ++l) {
    const auto opts = grad.options().dtype(at_);
    const std::array<int64_t, 4> size = {N, C, heights[l], widths[l]};
    gin[l] = deterministic ? at::empty(size, opts) : at::zeros(size, opts);  // the gather writes every element
    ptrs[l] = gin[l].mutable_data_ptr();
  }
  const auto dtype = kernel_dtype(grad.scalar_type());
  if (deterministic) {
    Tensor key = rois_a.select(1, 0).to(at::kLong);
    if (level_t.defined()) {
      const Tensor valid = key.ge(0).logical_and(key.lt(N)).logical_and(level_t.ge(0)).logical_and(level_t.lt(L));
      key = at::where(valid, level_t * N + key, at::full({}, -1, key.options()));
    }
    auto sorted = key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
    const Tensor order = std::get<1>(sorted).contiguous();
    const Tensor group_start =
        at::searchsorted(std::get<0>(sorted).contiguous(), at::arange(L * N + 1, key.options())).contiguous();
    C10_CUDA_CHECK(roi_cuda::backward_gather_multilevel(dtype, problems.data(), static_cast<int>(L), g.const_data_ptr(),
                                                        rois_a.const_data_ptr(), amp, order.const_data_ptr<int64_t>(),
                                                        group_start.const_data_ptr<int64_t>(), ptrs.data(), stream()));
  } else {
    C10_CUDA_CHECK(roi_cuda::backward_atomic_multilevel(
        dtype, problems.data(), static_cast<int>(L), level_t.defined() ? level_t.const_data_ptr<int64_t>() : nullptr,
        g.const_data_ptr(), rois_a.const_data_ptr(), amp, ptrs.data(), stream()));
  }
  for (int64_t l = 0; l < L; ++l) gin[l] = gin[l].to(grad.scalar_type()).contiguous(fmt(l));
  return gin;
}

std::tuple<Tensor, Tensor> roi_align_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                  int64_t PH, int64_t PW, int64_t sampling_ratio, bool aligned,
                                                  int64_t mode) {
  roi::check_forward_args("roi_align", input, rois, spatial_scale, PH, PW, mode);
  return forward_levels("roi_align", {input}, {spatial_scale}, rois, Tensor(), PH, PW, sampling_ratio, aligned,
                        static_cast<int>(mode));
}

Tensor roi_align_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                               int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                               int64_t sampling_ratio, bool aligned, int64_t mode, bool channels_last,
                               bool deterministic) {
  constexpr const char* op = "roi_align_backward";
  roi::check_backward_args(op, grad, rois, PH, PW, N, C, H, W);
  CVK_CHECK_VALUE(mode == 0 || mode == 1, op, "mode must be 0 (avg) or 1 (max), got ", mode);
  return backward_levels(op, grad, rois, Tensor(), argmax, {spatial_scale}, PH, PW, N, C, {H}, {W}, sampling_ratio,
                         aligned, static_cast<int>(mode), {channels_last}, deterministic)[0];
}

std::tuple<Tensor, Tensor> roi_align_multilevel_forward_cuda(at::TensorList features, const Tensor& rois,
                                                             const Tensor& levels, at::ArrayRef<double> spatial_scales,
                                                             int64_t PH, int64_t PW, int64_t sampling_ratio,
                                                             bool aligned, int64_t mode) {
  constexpr const char* op = "roi_align_multilevel";
  roi::check_multilevel_forward_args(op, features, rois, levels, spatial_scales, PH, PW, mode);
  return forward_levels(op, features, spatial_scales, rois, levels, PH, PW, sampling_ratio, aligned,
                        static_cast<int>(mode));
}

std::vector<Tensor> roi_align_multilevel_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& levels,
                                                       const Tensor& argmax, at::ArrayRef<double> spatial_scales,
                                                       int64_t PH, int64_t PW, int64_t N, int64_t C,
                                                       at::IntArrayRef heights, at::IntArrayRef widths,
                                                       int64_t sampling_ratio, bool aligned, int64_t mode,
                                                       const c10::List<bool>& channels_last, bool deterministic) {
  constexpr const char* op = "roi_align_multilevel_backward";
  roi::check_multilevel_backward_args(op, grad, rois, levels, spatial_scales, PH, PW, N, C, heights, widths,
                                      static_cast<int64_t>(channels_last.size()), mode);
  return backward_levels(op, grad, rois, levels, argmax, spatial_scales, PH, PW, N, C, heights, widths,
                         sampling_ratio, aligned, static_cast<int>(mode), channels_last.vec(), deterministic);
}

std::tuple<Tensor, Tensor> roi_pool_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                 int64_t PH, int64_t PW) {
  roi::check_forward_args("roi_pool", input, rois, spatial_scale, PH, PW, 0);
  return forward_levels("roi_pool", {input}, {spatial_scale}, rois, Tensor(), PH, PW, 0, false, 2);
}

Tensor roi_pool_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                              int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, bool channels_last,
                              bool deterministic) {
  constexpr const char* op = "roi_pool_backward";
  roi::check_backward_args(op, grad, rois, PH, PW, N, C, H, W);
  return backward_levels(op, grad, rois, Tensor(), argmax, {spatial_scale}, PH, PW, N, C, {H}, {W}, 0, false, 2,
                         {channels_last}, deterministic)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(cvkernels, CUDA, m) {
  m.impl("roi_align_forward", TORCH_FN(roi_align_forward_cuda));
  m.impl("roi_align_backward", TORCH_FN(roi_align_backward_cuda));
  m.impl("roi_align_multilevel_forward", TORCH_FN(roi_align_multilevel_forward_cuda));
  m.impl("roi_align_multilevel_backward", TORCH_FN(roi_align_multilevel_backward_cuda));
  m.impl("roi_pool_forward", TORCH_FN(roi_pool_forward_cuda));
  m.impl("roi_pool_backward", TORCH_FN(roi_pool_backward_cuda));
}

}  // namespace cvk
