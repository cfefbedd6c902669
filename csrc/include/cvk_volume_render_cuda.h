// Volume-rendering CUDA launchers (csrc/cuda/volume_render.cu), shared with their torch binding
// (csrc/cuda/volume_render_binding.cpp). Plain C++ and the CUDA runtime API only.
//
// Semantics: csrc/include/cvk_volume_render.h. T = the samples' dtype, A = float (double for
// float64). All arrays contiguous:
//   sigmas T [N], features T [N][F], t_starts / t_ends A [N], offsets int64 [R + 1] or nullptr
//   (dense: samples_per_ray each), background T [F] (bg_per_ray false) or [R][F] or nullptr;
//   forward outputs color T [R][F], opacity T [R], depth / expected A [R], weights T [N] or
//   nullptr, num_kept int64 [R];
//   backward inputs: the four per-ray gradients (colour / opacity in T, depths in A; zeros where
//   unused), grad_weights T [N] or nullptr, the forward's opacity (T), depth (A) and num_kept; outputs grad_sigmas T [N], grad_features
//   T [N][F], grad_t_starts / grad_t_ends A [N] or nullptr; `workspace` A [N] (may alias
//   grad_sigmas when T == A). With packed rays the caller zeroes the outputs first (samples outside
//   every ray are not written).
// One warp per ray: a chunk of 32 samples at a time, warp scans for the transmittance prefix
// (forward) and for the reverse recurrence Q (backward). F <= kMaxFeatures. Every launcher returns
// the launch's cudaError_t and launches nothing for an empty problem.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace cvk {
namespace vr_cuda {

enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

constexpr int64_t kMaxFeatures = 128;

struct Problem {
  int64_t N = 0, R = 0, F = 0;
  int64_t samples_per_ray = 0;  // dense rays (offsets == nullptr)
  const int64_t* offsets = nullptr;
  bool bg_per_ray = false;
  double threshold = 0.0;
};

cudaError_t forward(DType dtype, const Problem& p, const void* sigmas, const void* features, const void* t_starts,
                    const void* t_ends, const void* background, void* color, void* opacity, void* depth,
                    void* expected, void* weights, int64_t* num_kept, cudaStream_t stream);

cudaError_t backward(DType dtype, const Problem& p, const void* grad_color, const void* grad_opacity,
                     const void* grad_depth, const void* grad_expected, const void* grad_weights, const void* sigmas,
                     const void* features, const void* t_starts, const void* t_ends, const void* background,
                     const void* opacity, const void* depth, const int64_t* num_kept, void* workspace,
                     void* grad_sigmas, void* grad_features, void* grad_t_starts, void* grad_t_ends,
                     cudaStream_t stream);

}  // namespace vr_cuda
}  // namespace cvk
