// NMS CUDA launcher (csrc/cuda/nms.cu), shared with its torch binding (csrc/cuda/nms_binding.cpp).
// Plain C++ and the CUDA runtime API only.
//
// Inputs are already in descending score order (the binding sorts, stably):
//   boxes   A [n][4] (A = float for float32/float16/bfloat16 boxes, double for float64)
//   scores  A [n] (read only with a score threshold), classes int64 [n] or nullptr (batched NMS),
//   order   int64 [n]: the original index of each sorted box.
// rounding: 0 none, 1 float16, 2 bfloat16 — torchvision's CUDA IoU rounds widths/heights to the
// boxes' dtype (see csrc/cpu/nms.cpp). Two kernels on `stream`, no host synchronization:
//   1. mask:   for each pair i < j (j in 64-box column blocks) bit j of mask[i][j / 64] says
//              IoU(i, j) > float(iou_threshold) (and same class);
//   2. reduce: one block walks the column blocks in order, keeps the unsuppressed boxes (scan of
//              the 64 diagonal words in shared memory) and ORs their mask rows into `removed`;
//              writes keep[0..num) = original indices (keep must be prefilled with -1) and *num.
// Workspaces: mask n * col_blocks words, removed col_blocks words (zeroed by the launcher).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace cvk {
namespace nms_cuda {

constexpr int kBlock = 64;

#if defined(__CUDACC__)
__host__ __device__
#endif
inline int64_t col_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

cudaError_t nms(bool is_double, int rounding, int64_t n, const void* boxes, const void* scores,
                const int64_t* classes, const int64_t* order, double iou_threshold, bool has_score_threshold,
                double score_threshold, int64_t max_output, unsigned long long* mask, unsigned long long* removed,
                int64_t* keep, int64_t* num, cudaStream_t stream);

}  // namespace nms_cuda
}  // namespace cvk
