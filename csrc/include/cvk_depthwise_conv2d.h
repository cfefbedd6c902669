// Depthwise conv2d CUDA launchers (csrc/cuda/depthwise_conv2d.cu), shared by the kernels and their
// torch binding (csrc/cuda/depthwise_conv2d_binding.cpp). Plain C++ and the CUDA runtime API only:
// no torch, so nvcc compiles the kernels anywhere.
//
// A depthwise convolution with channel multiplier M: weight (C_out, 1, KH, KW), C_out = M * C_in,
// output channel co reads input channel co / M. Padding is symmetric per dim.
//   forward:         y[n,co,oh,ow]  = act(bias[co] + sum_{kh,kw} x[n,co/M,oh*SH-PH+kh*DH,ow*SW-PW+kw*DW] * w[co,kh,kw])
//   backward_input:  gx[n,ci,ih,iw] = sum_{m,kh,kw} gy[n,ci*M+m,oh,ow] * w[ci*M+m,kh,kw]
//                                     over oh*SH = ih+PH-kh*DH, ow*SW = iw+PW-kw*DW (exact, in range)
//   backward_weight: gw[co,kh,kw]   = sum_{n,oh,ow} gy[n,co,oh,ow] * x[n,co/M,oh*SH-PH+kh*DH,ow*SW-PW+kw*DW]
// Activation codes: 0 none, 1 ReLU, 2 ReLU6, 3 SiLU (forward epilogue only).
//
// Tensors are dense, all in one layout per call: NCHW-contiguous, or channels_last (NHWC) when
// Geometry::channels_last. Activations/gradients are float32, float16 or bfloat16 (DType); the
// kernels accumulate in float32. The weight the forward and backward_input kernels read is a float32
// buffer laid out as
//   channels_last: [KH][KW][C_out]   (channel fastest, so the NHWC kernels load channel vectors)
//   NCHW:          [C_out][KH][KW]   (torch's layout of the (C_out, 1, KH, KW) weight)
// bias is float32 [C_out] or nullptr. backward_weight writes grad_weight [C_out][KH][KW] in DType.
// Every launcher returns the launch's cudaError_t (cudaSuccess when nothing was wrong); it launches
// nothing when the problem is empty.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace cvk {
namespace dwconv {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct Geometry {
  int64_t N = 0;
  int64_t C_in = 0;
  int64_t M = 1;            // channel multiplier: C_out = C_in * M
  int64_t H = 0, W = 0;     // input spatial size
  int64_t OH = 0, OW = 0;   // output spatial size (conv_output_size of H, W)
  int64_t KH = 1, KW = 1;
  int64_t SH = 1, SW = 1;   // stride  >= 1
  int64_t PH = 0, PW = 0;   // padding >= 0 (symmetric)
  int64_t DH = 1, DW = 1;   // dilation >= 1
  bool channels_last = false;

  int64_t C_out() const { return C_in * M; }
};

// Output size of a convolution along one dim; 0 when the dilated kernel does not fit the padded input.
inline int64_t conv_output_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d) {
  const int64_t span = in + 2 * p - d * (k - 1);
  return span <= 0 ? 0 : (span - 1) / s + 1;
}

// The largest per-dim size or channel count the kernels index with 32-bit ints (element offsets
// into the tensors are 64-bit, so a tensor may exceed 2^31 elements).
constexpr int64_t kMaxDim = (int64_t(1) << 31) - 1;

// True when every size of g is one the launchers accept (positive sizes within kMaxDim, M >= 1,
// strides/dilations >= 1, paddings >= 0, OH/OW consistent with the input size).
bool geometry_ok(const Geometry& g);

cudaError_t forward(DType dtype, const Geometry& g, const void* input, const float* weight, const float* bias,
                    int activation, void* output, cudaStream_t stream);

cudaError_t backward_input(DType dtype, const Geometry& g, const void* grad_output, const float* weight,
                           void* grad_input, cudaStream_t stream);

// grad_weight is reduced over N*OH*OW in two deterministic stages: `splits` slices of the positions
// each write a float32 partial sum per weight into `workspace` (splits * C_out * KH * KW floats,
// backward_weight_workspace_bytes), then one pass sums the slices in order and casts. The split count
// depends only on the geometry and the device's SM count, so results are bitwise reproducible.
int64_t backward_weight_splits(const Geometry& g, int num_sms);
size_t backward_weight_workspace_bytes(const Geometry& g, int64_t splits);
cudaError_t backward_weight(DType dtype, const Geometry& g, const void* grad_output, const void* input,
                            int64_t splits, float* workspace, void* grad_weight, cudaStream_t stream);

}  // namespace dwconv
}  // namespace cvk
