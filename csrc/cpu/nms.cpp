// Greedy non-maximum suppression on CPU: cvkernels::nms_padded (schema in csrc/cvkernels.cpp).
//
// torchvision's CPU algorithm: boxes visited in score order (stable sort, descending), a box is
// kept unless an earlier kept box overlaps it with IoU > iou_threshold, where
//   inter = max(0, min(x2) - max(x1)) * max(0, min(y2) - max(y1)),  area = (x2 - x1) * (y2 - y1),
//   IoU = inter / (area_i + area_j - inter)        (degenerate boxes use the same formula)
// computed in the boxes' dtype for float32/float64 and compared with the threshold in double
// (torchvision's CPU kernel). float16/bfloat16 boxes follow torchvision's CUDA arithmetic: widths
// and heights rounded to the boxes' dtype, areas and IoU in float, compared with float(threshold).
// With idxs, only boxes of the same category suppress each other (batched NMS). Boxes whose score
// is not > score_threshold (when given) are dropped; at most max_output (>= 0) boxes are kept.
// Returns keep (N,) int64: the kept indices in score order, then -1; and num_kept, a 0-d int64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cvk_checks.h"
#include "cvk_roi_checks.h"

namespace cvk {
namespace {

using at::Tensor;

template <typename T>
struct LowpIoU {
  static float rnd(float v) { return static_cast<float>(static_cast<T>(v)); }
};

std::tuple<Tensor, Tensor> nms_padded_cpu(const Tensor& boxes, const Tensor& scores, const std::optional<Tensor>& idxs,
                                          double iou_threshold, std::optional<double> score_threshold,
                                          int64_t max_output) {
  constexpr const char* op = "nms";
  roi::check_nms_args(op, boxes, scores, idxs, iou_threshold, max_output);
  check_cpu(op, "boxes", boxes);
  const int64_t N = boxes.size(0);
  Tensor keep = at::full({N}, -1, boxes.options().dtype(at::kLong));
  Tensor num = at::zeros({}, boxes.options().dtype(at::kLong));
  if (N == 0) return {keep, num};
  const Tensor order = std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true)).contiguous();
  const bool batched = idxs.has_value() && idxs->defined();
  const Tensor cls = batched ? idxs->to(at::kLong).contiguous() : Tensor();
  const int64_t limit = max_output < 0 ? N : std::min(max_output, N);
  const bool lowp = boxes.scalar_type() == at::kHalf || boxes.scalar_type() == at::kBFloat16;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, boxes.scalar_type(), "nms_cpu", [&] {
    using T = scalar_t;
    using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
    const Tensor b = boxes.to(c10::CppTypeToScalarType<A>::value).contiguous();
    const Tensor s = scores.to(at::kDouble).contiguous();
    const A* bx = b.const_data_ptr<A>();
    const double* sc = s.const_data_ptr<double>();
    const int64_t* ord = order.const_data_ptr<int64_t>();
    const int64_t* cl = batched ? cls.const_data_ptr<int64_t>() : nullptr;
    std::vector<A> area(N);
    for (int64_t i = 0; i < N; ++i) {
      const A* bi = bx + i * 4;
      // float16/bfloat16: torchvision's CUDA area, (float(x2) - x1) * (y2 - y1 rounded to the dtype)
      area[i] = lowp ? (bi[2] - bi[0]) * static_cast<A>(LowpIoU<T>::rnd(static_cast<float>(bi[3] - bi[1])))
                     : (bi[2] - bi[0]) * (bi[3] - bi[1]);
    }
    std::vector<uint8_t> removed(N, 0);
    int64_t* kp = keep.mutable_data_ptr<int64_t>();
    int64_t count = 0;
    const float thr_f = static_cast<float>(iou_threshold);
    for (int64_t oi = 0; oi < N && count < limit; ++oi) {
      const int64_t i = ord[oi];
      if (removed[i]) continue;
      if (score_threshold.has_value() && !(sc[i] > *score_threshold)) continue;
      kp[count++] = i;
      const A* bi = bx + i * 4;
      for (int64_t oj = oi + 1; oj < N; ++oj) {
        const int64_t j = ord[oj];
        if (removed[j]) continue;
        if (cl && cl[j] != cl[i]) continue;
        const A* bj = bx + j * 4;
        const A xx1 = std::max(bi[0], bj[0]), yy1 = std::max(bi[1], bj[1]);
        const A xx2 = std::min(bi[2], bj[2]), yy2 = std::min(bi[3], bj[3]);
        if (lowp) {
          const float w = LowpIoU<T>::rnd(std::max(static_cast<float>(xx2 - xx1), 0.f));
          const float h = LowpIoU<T>::rnd(std::max(static_cast<float>(yy2 - yy1), 0.f));
          const float inter = w * h;
          const float iou = inter / (static_cast<float>(area[i]) + static_cast<float>(area[j]) - inter);
          if (iou > thr_f) removed[j] = 1;
        } else {
          const A w = std::max(A(0), xx2 - xx1), h = std::max(A(0), yy2 - yy1);
          const A inter = w * h;
          const A ovr = inter / (area[i] + area[j] - inter);
          if (static_cast<double>(ovr) > iou_threshold) removed[j] = 1;
        }
      }
    }
    num.fill_(count);
  });
  return {keep, num};
}

}  // namespace

TORCH_LIBRARY_IMPL(cvkernels, CPU, m) { m.impl("nms_padded", TORCH_FN(nms_padded_cpu)); }

}  // namespace cvk
