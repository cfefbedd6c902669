// NMS on CUDA: cvkernels::nms_padded (schema in csrc/cvkernels.cpp; kernels in csrc/cuda/nms.cu,
// contract in csrc/include/cvk_nms_cuda.h).
//
// Sorts the scores (stable, descending) on the device, gathers the boxes (and categories) in that
// order in the accumulation type, allocates the bitmask and the keep list, and launches the mask and
// reduce kernels. Nothing is copied to the host and nothing synchronizes: the kept count stays on the
// device (num_kept).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "cvk_checks.h"
#include "cvk_nms_cuda.h"
#include "cvk_roi_checks.h"

namespace cvk {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor> nms_padded_cuda(const Tensor& boxes, const Tensor& scores, const std::optional<Tensor>& idxs,
                                           double iou_threshold, std::optional<double> score_threshold,
                                           int64_t max_output) {
  constexpr const char* op = "nms";
  roi::check_nms_args(op, boxes, scores, idxs, iou_threshold, max_output);
  CVK_CHECK_VALUE(boxes.is_cuda(), op, "boxes must be a CUDA tensor, got one on ", boxes.device());
  c10::cuda::CUDAGuard guard(boxes.device());
  const int64_t n = boxes.size(0);
  Tensor keep = at::full({n}, -1, boxes.options().dtype(at::kLong));
  Tensor num = at::zeros({}, boxes.options().dtype(at::kLong));
  if (n == 0) return {keep, num};
  const int64_t cbs = nms_cuda::col_blocks(n);
  CVK_CHECK_VALUE(cbs <= 65535, op, "at most ", int64_t(65535) * nms_cuda::kBlock, " boxes, got ", n);
  const bool is_double = boxes.scalar_type() == at::kDouble;
  const at::ScalarType acc = is_double ? at::kDouble : at::kFloat;
  const int rounding = boxes.scalar_type() == at::kHalf ? 1 : (boxes.scalar_type() == at::kBFloat16 ? 2 : 0);
  auto sorted = scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true);
  const Tensor order = std::get<1>(sorted).contiguous();
  const Tensor sorted_scores = std::get<0>(sorted).to(acc).contiguous();
  const Tensor b = boxes.index_select(0, order).to(acc).contiguous();
  Tensor cls;
  if (idxs.has_value() && idxs->defined()) cls = idxs->index_select(0, order).to(at::kLong).contiguous();
  Tensor mask = at::empty({n * cbs}, boxes.options().dtype(at::kLong));
  Tensor removed = at::empty({cbs}, boxes.options().dtype(at::kLong));
  auto* mask_p = reinterpret_cast<unsigned long long*>(mask.mutable_data_ptr<int64_t>());
  auto* removed_p = reinterpret_cast<unsigned long long*>(removed.mutable_data_ptr<int64_t>());
  C10_CUDA_CHECK(nms_cuda::nms(is_double, rounding, n, b.const_data_ptr(), sorted_scores.const_data_ptr(),
                               cls.defined() ? cls.const_data_ptr<int64_t>() : nullptr, order.const_data_ptr<int64_t>(),
                               iou_threshold, score_threshold.has_value(), score_threshold.value_or(0.0), max_output,
                               mask_p, removed_p, keep.mutable_data_ptr<int64_t>(), num.mutable_data_ptr<int64_t>(),
                               c10::cuda::getCurrentCUDAStream().stream()));
  return {keep, num};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvkernels, CUDA, m) { m.impl("nms_padded", TORCH_FN(nms_padded_cuda)); }

}  // namespace cvk
