// RoI Align / RoI Pool on CUDA: cvkernels::roi_align_forward / _backward, roi_pool_forward / _backward
// (schemas in csrc/cvkernels.cpp; kernels in csrc/cuda/roi_align.cu, contract in
// csrc/include/cvk_roi_cuda.h).
//
// This side checks the arguments, converts rois to the accumulation type, reads the input through
// its strides (channels_last needs no copy), allocates outputs, and picks the backward kernel:
// the gather (no atomics, bitwise reproducible) when `deterministic`, the atomic scatter otherwise.
// Gradients accumulate in float (double for float64) and are cast to grad's dtype and the requested
// memory format at the end. Batch indices are not read on the host (no synchronization): a RoI
// whose index is outside [0, N) reads nothing and gives zeros (the Python wrapper reports it).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "cvk_checks.h"
#include "cvk_roi.h"
#include "cvk_roi_checks.h"
#include "cvk_roi_cuda.h"

namespace cvk {
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

std::tuple<Tensor, Tensor> forward_common(const char* op, const Tensor& input, const Tensor& rois, double scale,
                                          int64_t PH, int64_t PW, int64_t sr, bool aligned, int kind) {
  roi::check_forward_args(op, input, rois, scale, PH, PW, kind == 2 ? 0 : kind);
  check_cuda(op, "input", input);
  c10::cuda::CUDAGuard guard(input.device());
  const int64_t K = rois.size(0), C = input.size(1);
  Tensor out = at::empty({K, C, PH, PW}, input.options());
  const bool has_arg = kind != roi::kAvg;
  Tensor argmax = at::empty(has_arg ? at::IntArrayRef({K, C, PH, PW}) : at::IntArrayRef({0}),
                            input.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  CVK_CHECK_VALUE(input.size(2) > 0 && input.size(3) > 0, op, "input must have a positive height and width, got ",
                  input.sizes());
  CVK_CHECK_VALUE(kind != 2 || input.size(2) * input.size(3) < (int64_t(1) << 31), op,
                  "input height * width must fit 32-bit argmax indices");
  const Tensor rois_a = rois.to(acc_type(input.scalar_type())).contiguous();
  roi_cuda::Problem p;
  p.N = input.size(0);
  p.C = C;
  p.K = K;
  p.H = static_cast<int>(input.size(2));
  p.W = static_cast<int>(input.size(3));
  p.PH = static_cast<int>(PH);
  p.PW = static_cast<int>(PW);
  p.sN = input.stride(0);
  p.sC = input.stride(1);
  p.sH = input.stride(2);
  p.sW = input.stride(3);
  p.spatial_scale = scale;
  p.sampling_ratio = static_cast<int>(sr);
  p.aligned = aligned;
  p.kind = kind;
  C10_CUDA_CHECK(roi_cuda::forward(kernel_dtype(input.scalar_type()), p, input.const_data_ptr(),
                                   rois_a.const_data_ptr(), out.mutable_data_ptr(),
                                   has_arg ? argmax.mutable_data_ptr<int32_t>() : nullptr, stream()));
  return {out, argmax};
}

Tensor backward_common(const char* op, const Tensor& grad, const Tensor& rois, const Tensor& argmax, double scale,
                       int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sr, bool aligned,
                       int kind, bool channels_last, bool deterministic) {
  roi::check_backward_args(op, grad, rois, PH, PW, N, C, H, W);
  check_cuda(op, "grad", grad);
  if (kind != roi::kAvg) {
    CVK_CHECK_VALUE(argmax.sizes() == grad.sizes() && argmax.scalar_type() == at::kInt, op,
                    "argmax must be int32 with grad's shape ", grad.sizes(), ", got ", argmax.sizes());
    check_same_device(op, "argmax", argmax, "grad", grad);
  }
  c10::cuda::CUDAGuard guard(grad.device());
  const at::ScalarType at_ = acc_type(grad.scalar_type());
  const at::MemoryFormat fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (grad.numel() == 0 || N * C == 0) return at::zeros({N, C, H, W}, grad.options()).contiguous(fmt);
  const Tensor rois_a = rois.to(at_).contiguous();
  const Tensor g = grad.contiguous();
  const Tensor am = kind != roi::kAvg ? argmax.contiguous() : Tensor();
  roi_cuda::Problem p;
  p.N = N;
  p.C = C;
  p.K = rois.size(0);
  p.H = static_cast<int>(H);
  p.W = static_cast<int>(W);
  p.PH = static_cast<int>(PH);
  p.PW = static_cast<int>(PW);
  p.spatial_scale = scale;
  p.sampling_ratio = static_cast<int>(sr);
  p.aligned = aligned;
  p.kind = kind;
  const int32_t* amp = am.defined() ? am.const_data_ptr<int32_t>() : nullptr;
  Tensor gin;
  if (deterministic) {
    gin = at::empty({N, C, H, W}, grad.options().dtype(at_));
    const Tensor idx = rois_a.select(1, 0).to(at::kLong);
    auto sorted = idx.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
    const Tensor order = std::get<1>(sorted).contiguous();
    const Tensor image_start =
        at::searchsorted(std::get<0>(sorted).contiguous(), at::arange(N + 1, idx.options())).contiguous();
    C10_CUDA_CHECK(roi_cuda::backward_gather(kernel_dtype(grad.scalar_type()), p, g.const_data_ptr(),
                                             rois_a.const_data_ptr(), amp, order.const_data_ptr<int64_t>(),
                                             image_start.const_data_ptr<int64_t>(), gin.mutable_data_ptr(), stream()));
  } else {
    gin = at::zeros({N, C, H, W}, grad.options().dtype(at_));
    C10_CUDA_CHECK(roi_cuda::backward_atomic(kernel_dtype(grad.scalar_type()), p, g.const_data_ptr(),
                                             rois_a.const_data_ptr(), amp, gin.mutable_data_ptr(), stream()));
  }
  return gin.to(grad.scalar_type()).contiguous(fmt);
}

std::tuple<Tensor, Tensor> roi_align_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                  int64_t PH, int64_t PW, int64_t sampling_ratio, bool aligned,
                                                  int64_t mode) {
  CVK_CHECK_VALUE(mode == 0 || mode == 1, "roi_align", "mode must be 0 (avg) or 1 (max), got ", mode);
  return forward_common("roi_align", input, rois, spatial_scale, PH, PW, sampling_ratio, aligned,
                        static_cast<int>(mode));
}

Tensor roi_align_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                               int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W,
                               int64_t sampling_ratio, bool aligned, int64_t mode, bool channels_last,
                               bool deterministic) {
  CVK_CHECK_VALUE(mode == 0 || mode == 1, "roi_align_backward", "mode must be 0 (avg) or 1 (max), got ", mode);
  return backward_common("roi_align_backward", grad, rois, argmax, spatial_scale, PH, PW, N, C, H, W, sampling_ratio,
                         aligned, static_cast<int>(mode), channels_last, deterministic);
}

std::tuple<Tensor, Tensor> roi_pool_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                 int64_t PH, int64_t PW) {
  return forward_common("roi_pool", input, rois, spatial_scale, PH, PW, 0, false, 2);
}

Tensor roi_pool_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                              int64_t PH, int64_t PW, int64_t N, int64_t C, int64_t H, int64_t W, bool channels_last,
                              bool deterministic) {
  return backward_common("roi_pool_backward", grad, rois, argmax, spatial_scale, PH, PW, N, C, H, W, 0, false, 2,
                         channels_last, deterministic);
}

}  // namespace

TORCH_LIBRARY_IMPL(cvkernels, CUDA, m) {
  m.impl("roi_align_forward", TORCH_FN(roi_align_forward_cuda));
  m.impl("roi_align_backward", TORCH_FN(roi_align_backward_cuda));
  m.impl("roi_pool_forward", TORCH_FN(roi_pool_forward_cuda));
  m.impl("roi_pool_backward", TORCH_FN(roi_pool_backward_cuda));
}

}  // namespace cvk
