// RoI Align / RoI Pool CUDA launchers (csrc/cuda/roi_align.cu), shared with their torch binding
// (csrc/cuda/roi_align_binding.cpp). Plain C++ and the CUDA runtime API only.
//
// Semantics: csrc/include/cvk_roi.h. T = the input's dtype, A = float (double for float64).
//   input   T, any strides (sN, sC, sH, sW) in elements
//   rois    A [K][5] contiguous (batch index, x1, y1, x2, y2)
//   out     T [K][C][PH][PW] contiguous;  argmax int32, same shape (max mode / RoI Pool)
//   grad    T [K][C][PH][PW] contiguous;  grad_input A [N][C][H][W] contiguous (the binding casts)
// Backward kernels:
//   *_backward_atomic: one thread per output element scatters with atomicAdd into a zeroed
//     grad_input (fast, not reproducible bit for bit);
//   backward_gather: one thread per input pixel (and a block of channels) sums the contributions
//     of the RoIs of its image in a fixed order; writes every grad_input element (no zeroing, no
//     atomics, bitwise reproducible). `order` (int64 [K]) lists RoI indices sorted by batch index
//     (stable), `image_start` (int64 [N + 1]) the start of each image's run in `order`.
// kind: 0 RoI Align avg, 1 RoI Align max, 2 RoI Pool. Every launcher returns the launch's
// cudaError_t and launches nothing for an empty problem. A RoI whose batch index is outside [0, N)
// reads nothing and contributes nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace cvk {
namespace roi_cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

struct Problem {
  int64_t N = 0, C = 0, K = 0;
  int H = 0, W = 0, PH = 1, PW = 1;
  int64_t sN = 0, sC = 0, sH = 0, sW = 0;  // input strides (forward)
  double spatial_scale = 1.0;
  int sampling_ratio = -1;
  bool aligned = false;
  int kind = 0;
};

cudaError_t forward(DType dtype, const Problem& p, const void* input, const void* rois, void* out, int32_t* argmax,
                    cudaStream_t stream);

cudaError_t backward_atomic(DType dtype, const Problem& p, const void* grad, const void* rois, const int32_t* argmax,
                            void* grad_input, cudaStream_t stream);

cudaError_t backward_gather(DType dtype, const Problem& p, const void* grad, const void* rois, const int32_t* argmax,
                            const int64_t* order, const int64_t* image_start, void* grad_input, cudaStream_t stream);

}  // namespace roi_cuda
}  // namespace cvk
