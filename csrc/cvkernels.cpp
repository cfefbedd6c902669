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

  // RoI Align (torchvision.ops.roi_align; mode 1 = mmcv's pool_mode='max') and RoI Pool
  // (torchvision.ops.roi_pool). Semantics: csrc/include/cvk_roi.h. input (N, C, H, W) in any layout;
  // rois (K, 5) = (batch index, x1, y1, x2, y2), any floating dtype, batch index in [0, N).
  // Outputs (K, C, PH, PW) contiguous in input's dtype, plus argmax (K, C, PH, PW) int32: for
  // roi_align max mode the sample index iy * grid_w + ix of each bin's maximum, for roi_pool the
  // flat h * W + w (-1: no sample); roi_align avg mode returns an empty argmax.
  m.def(
      "roi_align_forward(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width, "
      "int sampling_ratio, bool aligned, int mode) -> (Tensor, Tensor)");
  // Gradient with respect to an input of size (batch_size, channels, height, width), in grad's
  // dtype, channels_last when asked. `deterministic`: on CUDA the gather kernel (no atomics) instead
  // of the atomic scatter; the CPU kernels are always deterministic.
  m.def(
      "roi_align_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height, "
      "int pooled_width, int batch_size, int channels, int height, int width, int sampling_ratio, bool aligned, "
      "int mode, bool channels_last, bool deterministic) -> Tensor");
  // RoI Align over FPN levels in one launch (MultiScaleRoIAlign): features = 1 to 8 levels of one
  // N, C and dtype (H, W and layout may differ); RoI r reads features[levels[r]] (levels int64 (K,))
  // at spatial_scales[levels[r]]. Outputs as roi_align_forward's. A RoI whose level is outside
  // [0, len(features)) is an error on the CPU; on CUDA (no host sync) it reads nothing and gives zeros.
  m.def(
      "roi_align_multilevel_forward(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, "
      "int pooled_height, int pooled_width, int sampling_ratio, bool aligned, int mode) -> (Tensor, Tensor)");
  // One gradient per level, (batch_size, channels, heights[l], widths[l]) in grad's dtype,
  // channels_last[l] as asked; `deterministic` as roi_align_backward's.
  m.def(
      "roi_align_multilevel_backward(Tensor grad, Tensor rois, Tensor levels, Tensor argmax, "
      "float[] spatial_scales, int pooled_height, int pooled_width, int batch_size, int channels, int[] heights, "
      "int[] widths, int sampling_ratio, bool aligned, int mode, bool[] channels_last, bool deterministic) "
      "-> Tensor[]");
  m.def(
      "roi_pool_forward(Tensor input, Tensor rois, float spatial_scale, int pooled_height, int pooled_width) "
      "-> (Tensor, Tensor)");
  m.def(
      "roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, int pooled_height, "
      "int pooled_width, int batch_size, int channels, int height, int width, bool channels_last, "
      "bool deterministic) -> Tensor");

  // Greedy NMS (torchvision.ops.nms; with idxs, batched_nms with exact per-category IoU). boxes
  // (N, 4) x1, y1, x2, y2 and scores (N,) of one floating dtype. Boxes whose score is not >
  // score_threshold (when given) are dropped; max_output >= 0 caps the kept count (-1: no cap).
  // Returns keep (N,) int64 (kept indices in descending score order, ties by index, then -1) and
  // num_kept (0-d int64): no host synchronization inside the op.
  m.def(
      "nms_padded(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, float? score_threshold, "
      "int max_output) -> (Tensor, Tensor)");

  // Volume rendering (NeRF quadrature; semantics and gradients: csrc/include/cvk_volume_render.h).
  // sigmas (N,) and features (N, F) of one floating dtype; t_starts / t_ends (N,) in float32 (float64
  // for float64 samples); packed rays: offsets (num_rays + 1,) int64, ray r owning samples
  // offsets[r] .. offsets[r + 1]; dense rays: offsets None and N / num_rays samples per ray.
  // background None, (F,) or (num_rays, F). Samples are kept while the transmittance before them is
  // >= transmittance_threshold. Returns color (R, F) and opacity (R,) in the samples' dtype, depth
  // (R,) and expected_depth (R,) in the intervals' dtype, weights (N,) (samples' dtype; empty unless
  // return_weights; 0 for dropped samples) and num_kept (R,) int64.
  m.def(
      "volume_render_forward(Tensor sigmas, Tensor features, Tensor t_starts, Tensor t_ends, Tensor? offsets, "
      "int num_rays, Tensor? background, float transmittance_threshold, bool return_weights) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Gradients for sigmas, features and (t_grad) t_starts / t_ends (empty otherwise), given the
  // upstream gradients of the four per-ray outputs (zeros where unused) and of the weights (None when
  // unused), and the forward's opacity, depth and num_kept.
  m.def(
      "volume_render_backward(Tensor grad_color, Tensor grad_opacity, Tensor grad_depth, "
      "Tensor grad_expected_depth, Tensor? grad_weights, Tensor sigmas, Tensor features, Tensor t_starts, "
      "Tensor t_ends, Tensor? offsets, int num_rays, Tensor? background, Tensor opacity, Tensor depth, "
      "Tensor num_kept, bool t_grad) -> (Tensor, Tensor, Tensor, Tensor)");
}
