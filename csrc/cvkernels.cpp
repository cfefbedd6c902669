// Every cvkernels C++/CUDA operator schema, in one place. Kernels register their
// implementations per dispatch key in csrc/cpu/<op>.cpp and csrc/cuda/<op>_binding.cpp.
#include <torch/library.h>

TORCH_LIBRARY(cvkernels, m) {
  // Fused BatchNorm(+residual add)+ReLU. Tensors are viewed as (N, C, S): (N, C) inputs
  // have S = 1, (N, C, *spatial) inputs flatten the spatial dims into S.
  //   training: batch statistics, running_mean/var updated in place when given
  //             (running = (1 - momentum) * running + momentum * batch, unbiased var);
  //   eval:     running statistics.
  // Returns the output and the per-channel fp32 (fp64 for fp64 input) mean and invstd that
  // were used, which bn_relu_backward consumes.
  m.def(
      "bn_relu_forward(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, "
      "Tensor(a!)? running_mean, Tensor(b!)? running_var, bool training, float momentum, "
      "float eps) -> (Tensor, Tensor, Tensor)");
  // Gradients through ReLU(BN(x) [+ residual]). `output` is the forward's output (its
  // sign is the ReLU mask). Returns grad_input, grad_weight, grad_bias (per-channel, in
  // weight's dtype, zeros-shaped (C,) even without weight), and grad_residual (same shape
  // as input; an empty tensor when has_residual is false).
  m.def(
      "bn_relu_backward(Tensor grad_output, Tensor output, Tensor input, Tensor? weight, "
      "Tensor save_mean, Tensor save_invstd, bool training, bool has_residual) "
      "-> (Tensor, Tensor, Tensor, Tensor)");

  // Depthwise conv2d with channel multiplier M (CUDA only; the CPU path is F.conv2d): input
  // (N, C_in, H, W), weight (C_out, 1, KH, KW) with C_out = M * C_in, output channel co reads input
  // channel co / M (F.conv2d with groups = C_in). Padding is symmetric per dim ('same' with an even
  // kernel is pre-padded by the caller). float32/float16/bfloat16, all tensors one dtype; float32
  // accumulation. Outputs come in the input's suggested memory format (channels_last stays
  // channels_last).
  //   forward: act(conv2d(input, weight) + bias), activation 0 none, 1 ReLU, 2 ReLU6, 3 SiLU.
  m.def(
      "depthwise_conv2d_forward(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] dilation, int activation) -> Tensor");
  //   backward_input: the gradient of conv2d (no bias, no activation) with respect to an input of
  //   size input_size, given grad_output; in grad_output's dtype and memory format.
  m.def(
      "depthwise_conv2d_backward_input(Tensor grad_output, Tensor weight, int[] input_size, int[2] stride, "
      "int[2] padding, int[2] dilation) -> Tensor");
  //   backward_weight: the gradient with respect to a weight of size weight_size (C_out, 1, KH, KW),
  //   a deterministic reduction over N*OH*OW in float32, returned contiguous in the input's dtype.
  //   grad_bias is grad_output summed over (N, H, W), done by the caller.
  m.def(
      "depthwise_conv2d_backward_weight(Tensor grad_output, Tensor input, int[] weight_size, int[2] stride, "
      "int[2] padding, int[2] dilation) -> Tensor");
}
