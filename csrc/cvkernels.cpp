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
}
